//! Checked byte reading and writing shared by every wire codec: every read checks the remaining
//! length first and every variable-length field has a cap, so no decoder allocates more than the
//! input it was given.

use thiserror::Error;

/// Why a peer's bytes were rejected. Decoders never panic; they return one of these.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message is truncated")]
    Truncated,
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("not a deaddrop message (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A UTF-8 string with a u16 length prefix, at most `max` bytes.
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        let raw = self.bytes(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(what))
    }

    /// Everything left, as one field (for the last field of a message).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes are left over: a message has exactly one valid encoding.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Appends big-endian fields to a buffer.
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, v: &[u8]);
    /// A string with a u16 length prefix. Callers cap lengths before encoding; this truncates
    /// at a character boundary rather than emit something the peer must reject.
    fn put_string(&mut self, v: &str, max: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
    fn put_string(&mut self, v: &str, max: usize) {
        let v = truncate_utf8(v, max.min(usize::from(u16::MAX)));
        self.put_u16(v.len() as u16);
        self.put_bytes(v.as_bytes());
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written() {
        let mut b = Vec::new();
        b.put_u8(7);
        b.put_u16(0x1234);
        b.put_u32(0xdead_beef);
        b.put_u64(u64::MAX - 1);
        b.put_string("héllo", 100);
        let mut r = Reader::new(&b);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.string("s", 100).unwrap(), "héllo");
        r.finish().unwrap();
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u64(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[0, 10, b'a']);
        assert_eq!(r.string("s", 100), Err(DecodeError::Truncated));
    }

    #[test]
    fn string_cap_is_checked_before_reading() {
        let mut r = Reader::new(&[0xff, 0xff]);
        assert!(matches!(
            r.string("name", 255),
            Err(DecodeError::TooLong { len: 65535, .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut r = Reader::new(&[0, 2, 0xc3, 0x28]);
        assert_eq!(r.string("name", 10), Err(DecodeError::InvalidUtf8("name")));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("aé", 3), "aé");
        let mut b = Vec::new();
        b.put_string("ééé", 5);
        assert_eq!(b, [0, 4, 0xc3, 0xa9, 0xc3, 0xa9]);
    }
}
