//! Random identifiers: the per-process [`PeerId`] that announcements and handshakes carry, and the
//! drop [`Token`] that only travels inside a session.

use std::fmt;
use std::str::FromStr;

/// Fills `buf` from the operating system's CSPRNG. (A library DRBG that seeds itself on first
/// use can cost tens of milliseconds at every process start: aws-lc's took 38 ms.)
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the system random number generator failed");
}

pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    random_bytes(&mut out);
    out
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// A random id chosen by each process at start. Public: it is in every announcement. It lets a
/// receiver tell processes apart when several share one host, and binds handshakes to both ends.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    pub fn random() -> Self {
        Self(random_array())
    }
}

impl fmt::Display for PeerId {
    /// The first 8 hex digits: enough to tell processes apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0[..4])
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

/// A drop's 128-bit random token. It names the drop for `fetch` and only ever travels inside an
/// authenticated session, so knowing it without the passphrase gains nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub [u8; 16]);

impl Token {
    pub fn random() -> Self {
        Self(random_array())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// The error for a token that is not 32 hexadecimal digits.
#[derive(Debug, thiserror::Error)]
#[error("a drop token is 32 hexadecimal digits, as printed by send-msg or list")]
pub struct BadToken;

impl FromStr for Token {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        parse_hex(s).map(Token).ok_or(BadToken)
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_round_trips() {
        let t = Token::random();
        let text = t.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Token>().unwrap(), t);
        assert_eq!(text.to_uppercase().parse::<Token>().unwrap(), t);
    }

    #[test]
    fn bad_tokens_are_rejected() {
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
            &"é".repeat(16),
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(PeerId::random(), PeerId::random());
        assert_ne!(Token::random(), Token::random());
    }
}
