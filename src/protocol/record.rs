//! The AEAD record layer that carries a session after the handshake: AES-256-GCM, one key per
//! direction, a counter nonce, and a final-record flag so that a cut connection is told apart from
//! a finished one. Pure: it seals and opens byte buffers; `transport` moves them.
//!
//! ```text
//! frame  = header[4] ciphertext[len]          header = u32 BE: bit 31 final, bits 0..31 len
//! nonce  = final[1] 00 00 00 counter[8]       counter = 0, 1, 2, ... per direction
//! ```
//!
//! The receiver accepts only the next counter, so reordered, replayed or dropped records fail to
//! open; the final flag is in the nonce, so an attacker cannot set or clear it.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::protocol::handshake::{RecvKey, SendKey};

/// Bytes before each record's ciphertext.
pub const HEADER_LEN: usize = 4;
/// The AEAD tag appended to each record.
pub const TAG_LEN: usize = 16;
/// The largest plaintext a record may carry. Checked against the header before allocating.
pub const MAX_PLAINTEXT: usize = 1 << 20;
const FINAL_BIT: u32 = 1 << 31;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("record failed authentication (modified, reordered or replayed)")]
    Tampered,
    #[error("record after the final record")]
    AfterFinal,
    #[error("record counter exhausted")]
    Exhausted,
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = u8::from(last);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 key is 32 bytes"))
}

/// A matching pair of record keys from one secret, for fuzz targets (built with `--cfg
/// fuzzing`) and tests: real keys only ever come from the handshake.
#[cfg(any(test, fuzzing))]
pub fn key_pair_for_fuzzing(secret: [u8; 32]) -> (SendKey, RecvKey) {
    use zeroize::Zeroizing;
    (
        SendKey(Zeroizing::new(secret)),
        RecvKey(Zeroizing::new(secret)),
    )
}

/// Seals outgoing records.
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
    finished: bool,
}

impl Sealer {
    pub fn new(key: SendKey) -> Self {
        Self {
            key: aead_key(&key.0),
            counter: 0,
            finished: false,
        }
    }

    /// `frame` holds [`HEADER_LEN`] bytes of room followed by the plaintext. Encrypts the
    /// plaintext in place, appends the tag and writes the header, so the frame goes out in one
    /// write.
    pub fn seal(&mut self, frame: &mut Vec<u8>, last: bool) -> Result<(), RecordError> {
        if self.finished {
            return Err(RecordError::AfterFinal);
        }
        let plain_len = frame.len() - HEADER_LEN;
        if plain_len > MAX_PLAINTEXT {
            return Err(RecordError::TooLong(plain_len));
        }
        if self.counter == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::empty(),
                &mut frame[HEADER_LEN..],
            )
            .map_err(|_| RecordError::TooLong(plain_len))?;
        frame.extend_from_slice(tag.as_ref());
        let header = (plain_len + TAG_LEN) as u32 | if last { FINAL_BIT } else { 0 };
        frame[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
        self.counter += 1;
        self.finished = last;
        Ok(())
    }
}

/// Parses a record header: the ciphertext length that follows and whether it is the final
/// record. Rejects lengths over the cap before anything is allocated for them.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<(usize, bool), RecordError> {
    let h = u32::from_be_bytes(header);
    let len = (h & !FINAL_BIT) as usize;
    if !(TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&len) {
        return Err(RecordError::TooLong(len));
    }
    Ok((len, h & FINAL_BIT != 0))
}

/// Opens incoming records, strictly in order.
pub struct Opener {
    key: LessSafeKey,
    counter: u64,
    finished: bool,
}

impl Opener {
    pub fn new(key: RecvKey) -> Self {
        Self {
            key: aead_key(&key.0),
            counter: 0,
            finished: false,
        }
    }

    /// Whether the peer has sent its final record.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Decrypts `ciphertext` (as announced by [`parse_header`]) in place and returns the
    /// plaintext.
    pub fn open<'a>(
        &mut self,
        ciphertext: &'a mut [u8],
        last: bool,
    ) -> Result<&'a mut [u8], RecordError> {
        if self.finished {
            return Err(RecordError::AfterFinal);
        }
        if self.counter == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let plain = self
            .key
            .open_in_place(nonce(self.counter, last), Aad::empty(), ciphertext)
            .map_err(|_| RecordError::Tampered)?;
        self.counter += 1;
        self.finished = last;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn pair() -> (Sealer, Opener) {
        let k = Zeroizing::new([9u8; 32]);
        (Sealer::new(SendKey(k.clone())), Opener::new(RecvKey(k)))
    }

    fn seal(s: &mut Sealer, msg: &[u8], last: bool) -> Vec<u8> {
        let mut f = vec![0; HEADER_LEN];
        f.extend_from_slice(msg);
        s.seal(&mut f, last).unwrap();
        f
    }

    fn open(o: &mut Opener, frame: &[u8]) -> Result<(Vec<u8>, bool), RecordError> {
        let (len, last) = parse_header(frame[..HEADER_LEN].try_into().unwrap())?;
        assert_eq!(len, frame.len() - HEADER_LEN);
        let mut ct = frame[HEADER_LEN..].to_vec();
        o.open(&mut ct, last).map(|p| (p.to_vec(), last))
    }

    #[test]
    fn records_round_trip_in_order() {
        let (mut s, mut o) = pair();
        let frames = [
            seal(&mut s, b"one", false),
            seal(&mut s, b"", false),
            seal(&mut s, b"end", true),
        ];
        assert_eq!(open(&mut o, &frames[0]).unwrap(), (b"one".to_vec(), false));
        assert_eq!(open(&mut o, &frames[1]).unwrap(), (vec![], false));
        assert_eq!(open(&mut o, &frames[2]).unwrap(), (b"end".to_vec(), true));
        assert!(o.finished());
    }

    #[test]
    fn reordering_is_rejected() {
        let (mut s, mut o) = pair();
        let _first = seal(&mut s, b"one", false);
        let second = seal(&mut s, b"two", false);
        assert_eq!(open(&mut o, &second), Err(RecordError::Tampered));
    }

    #[test]
    fn replay_is_rejected() {
        let (mut s, mut o) = pair();
        let first = seal(&mut s, b"one", false);
        open(&mut o, &first).unwrap();
        assert_eq!(open(&mut o, &first), Err(RecordError::Tampered));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let (mut s, _) = pair();
        let frame = seal(&mut s, b"hello world", false);
        for i in HEADER_LEN..frame.len() {
            for bit in 0..8 {
                let (_, mut o) = pair();
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                assert_eq!(
                    open(&mut o, &f),
                    Err(RecordError::Tampered),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn clearing_or_setting_the_final_flag_is_rejected() {
        let (mut s, mut o) = pair();
        let mut f = seal(&mut s, b"not the end", false);
        f[0] |= 0x80;
        assert_eq!(open(&mut o, &f), Err(RecordError::Tampered));
        let (mut s, mut o) = pair();
        let mut f = seal(&mut s, b"the end", true);
        f[0] &= 0x7f;
        assert_eq!(open(&mut o, &f), Err(RecordError::Tampered));
    }

    #[test]
    fn truncation_is_detectable() {
        // A stream cut after a non-final record leaves the opener unfinished.
        let (mut s, mut o) = pair();
        let f = seal(&mut s, b"one", false);
        let _ = seal(&mut s, b"bye", true);
        open(&mut o, &f).unwrap();
        assert!(!o.finished());
    }

    #[test]
    fn nothing_is_accepted_after_the_final_record() {
        let (mut s, mut o) = pair();
        let f = seal(&mut s, b"bye", true);
        open(&mut o, &f).unwrap();
        assert_eq!(open(&mut o, &f), Err(RecordError::AfterFinal));
        let mut extra = vec![0; HEADER_LEN];
        assert_eq!(s.seal(&mut extra, false), Err(RecordError::AfterFinal));
    }

    #[test]
    fn oversized_and_undersized_headers_are_rejected_before_reading() {
        let too_long = ((MAX_PLAINTEXT + TAG_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            parse_header(too_long),
            Err(RecordError::TooLong(_))
        ));
        assert!(matches!(
            parse_header([0x7f, 0xff, 0xff, 0xff]),
            Err(RecordError::TooLong(_))
        ));
        assert!(matches!(
            parse_header([0, 0, 0, 15]),
            Err(RecordError::TooLong(15))
        ));
        assert_eq!(parse_header([0x80, 0, 0, 16]), Ok((16, true)));
    }

    #[test]
    fn a_record_sealed_with_another_key_is_rejected() {
        let (mut s, _) = pair();
        let f = seal(&mut s, b"x", false);
        let mut o = Opener::new(RecvKey(Zeroizing::new([8u8; 32])));
        assert_eq!(open(&mut o, &f), Err(RecordError::Tampered));
    }

    #[test]
    fn oversized_plaintext_is_refused_by_the_sealer() {
        let (mut s, _) = pair();
        let mut f = vec![0; HEADER_LEN + MAX_PLAINTEXT + 1];
        assert!(matches!(
            s.seal(&mut f, false),
            Err(RecordError::TooLong(_))
        ));
    }
}
