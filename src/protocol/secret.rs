//! The room passphrase as a type: zeroized on drop, never printed, only readable where the PAKE
//! needs it.

use std::fmt;
use zeroize::Zeroizing;

/// The room passphrase. `Debug` prints a placeholder so it cannot leak through logs or errors.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

/// Why a passphrase was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    #[error("the room passphrase is empty")]
    Empty,
    #[error("the room passphrase is longer than {max} bytes")]
    TooLong { max: usize },
}

impl Passphrase {
    pub const MAX_LEN: usize = 1024;

    /// Takes ownership of `text` (so no unzeroized copy is left behind by the caller's `String`),
    /// trimming a trailing newline from prompts or pipes.
    pub fn new(text: String) -> Result<Self, PassphraseError> {
        Self::from_zeroizing(Zeroizing::new(text))
    }

    /// From text that is already zeroized when dropped.
    pub fn from_zeroizing(mut text: Zeroizing<String>) -> Result<Self, PassphraseError> {
        while text.ends_with(['\n', '\r']) {
            text.pop();
        }
        if text.is_empty() {
            return Err(PassphraseError::Empty);
        }
        if text.len() > Self::MAX_LEN {
            return Err(PassphraseError::TooLong { max: Self::MAX_LEN });
        }
        Ok(Self(text))
    }

    /// The passphrase bytes, for the PAKE only.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_reveal_the_passphrase() {
        let p = Passphrase::new("secret123".into()).unwrap();
        assert!(!format!("{p:?}").contains("secret123"));
    }

    #[test]
    fn empty_and_overlong_passphrases_are_refused() {
        assert!(matches!(
            Passphrase::new("\n".into()),
            Err(PassphraseError::Empty)
        ));
        assert!(matches!(
            Passphrase::new("x".repeat(2000)),
            Err(PassphraseError::TooLong { .. })
        ));
        assert_eq!(Passphrase::new("abc\r\n".into()).unwrap().expose(), b"abc");
    }
}
