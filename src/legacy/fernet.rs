//! Fernet (spec version 0x80) and the original script's key derivation: what `--legacy` needs to
//! read and write p2p_dead_drop.py payloads. Written over RustCrypto's AES-CBC, HMAC-SHA256,
//! scrypt and base64 rather than the `fernet` crate, because the spec's "generate" vectors need a
//! caller-chosen IV and timestamp, which that crate does not take.
//!
//! ```text
//! token = base64url( 80 | timestamp u64 BE | iv[16] | AES-128-CBC-PKCS7(ciphertext) | HMAC-SHA256[32] )
//! key   = signing key[16] | encryption key[16]           (base64url of it is "the Fernet key")
//! ```

use aes::Aes128;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::protocol::secret::Passphrase;

const VERSION: u8 = 0x80;
/// How far in the future a timestamp may be when a TTL is checked (the spec's clock skew).
const MAX_CLOCK_SKEW: u64 = 60;
/// version + timestamp + IV + one block + HMAC.
const MIN_TOKEN_BYTES: usize = 1 + 8 + 16 + 16 + 32;

/// Any reason a token is refused. One variant: which check failed is no one's business.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("the legacy payload could not be decrypted (wrong passphrase, or damaged)")]
pub struct InvalidToken;

/// A Fernet key.
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// From the base64url text form.
    pub fn from_base64(text: &str) -> Option<Key> {
        let raw = Zeroizing::new(URL_SAFE.decode(text.trim()).ok()?);
        let raw: [u8; 32] = raw.as_slice().try_into().ok()?;
        Some(Key(Zeroizing::new(raw)))
    }

    /// The original script's key: scrypt(passphrase, salt, N = 2^14, r = 8, p = 1, 32 bytes).
    /// Costs about 16 MiB and tens of milliseconds, by design of scrypt.
    pub fn derive(pass: &Passphrase, salt: &[u8]) -> Key {
        let params = scrypt::Params::new(14, 8, 1).expect("valid scrypt parameters");
        let mut out = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(pass.expose(), salt, &params, out.as_mut())
            .expect("32-byte output is valid");
        Key(out)
    }

    /// The base64url text form (what Python's `Fernet(key)` takes).
    pub fn to_base64(&self) -> String {
        URL_SAFE.encode(self.0.as_ref())
    }

    fn signing(&self) -> &[u8] {
        &self.0[..16]
    }

    fn encryption(&self) -> &[u8] {
        &self.0[16..]
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(self.signing())
            .expect("HMAC takes any key length")
    }

    /// Encrypts `plaintext` at time `now` (Unix seconds) with `iv`; returns the token text.
    pub fn encrypt(&self, plaintext: &[u8], now: u64, iv: [u8; 16]) -> String {
        let enc = cbc::Encryptor::<Aes128>::new_from_slices(self.encryption(), &iv)
            .expect("16-byte key and IV");
        let ciphertext = enc.encrypt_padded_vec::<Pkcs7>(plaintext);
        let mut body = Vec::with_capacity(1 + 8 + 16 + ciphertext.len() + 32);
        body.push(VERSION);
        body.extend_from_slice(&now.to_be_bytes());
        body.extend_from_slice(&iv);
        body.extend_from_slice(&ciphertext);
        let mut mac = self.mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE.encode(body)
    }

    /// Encrypts with a fresh random IV at the current time.
    pub fn encrypt_now(&self, plaintext: &[u8]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.encrypt(plaintext, now, crate::protocol::id::random_array())
    }

    /// Checks and decrypts a token. With `ttl`, also refuses tokens older than `ttl` seconds or
    /// more than a minute in the future, as the spec says; `now` is Unix seconds.
    pub fn decrypt(
        &self,
        token: &[u8],
        now: u64,
        ttl: Option<u64>,
    ) -> Result<Vec<u8>, InvalidToken> {
        let body = URL_SAFE.decode(token).map_err(|_| InvalidToken)?;
        if body.len() < MIN_TOKEN_BYTES || body[0] != VERSION {
            return Err(InvalidToken);
        }
        let timestamp = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        if let Some(ttl) = ttl
            && (timestamp.saturating_add(ttl) < now
                || timestamp > now.saturating_add(MAX_CLOCK_SKEW))
        {
            return Err(InvalidToken);
        }
        let (signed, tag) = body.split_at(body.len() - 32);
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| InvalidToken)?;
        let iv = &signed[9..25];
        let ciphertext = &signed[25..];
        if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
            return Err(InvalidToken);
        }
        let dec = cbc::Decryptor::<Aes128>::new_from_slices(self.encryption(), iv)
            .map_err(|_| InvalidToken)?;
        dec.decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(|_| InvalidToken)
    }
}

impl Key {
    /// A decryptor for a token that arrives in pieces (without a TTL check).
    pub fn decryptor(&self) -> Decryptor {
        let mut enc = Zeroizing::new([0u8; 16]);
        enc.copy_from_slice(self.encryption());
        Decryptor {
            enc,
            mac: self.mac(),
            text: Vec::new(),
            body: Vec::new(),
            cbc: None,
            blocks: 0,
        }
    }
}

/// Bytes of decoded token held back until the end: the tag and the last ciphertext block
/// (which holds the padding).
const HELD_BACK: usize = 32 + 16;

/// Checks and decrypts a Fernet token that arrives in pieces, in constant memory: plaintext
/// comes out as it is decrypted, but only [`Decryptor::finish`] can say whether the token is
/// authentic (its tag is at the very end). Whoever takes the plaintext before then must keep it
/// out of sight and throw it away unless `finish` succeeds. Padding is looked at only after the
/// tag has been checked, so there is no padding oracle.
pub struct Decryptor {
    enc: Zeroizing<[u8; 16]>,
    mac: Hmac<Sha256>,
    /// Base64 text not decoded yet.
    text: Vec<u8>,
    /// Decoded bytes not processed yet.
    body: Vec<u8>,
    cbc: Option<cbc::Decryptor<Aes128>>,
    blocks: u64,
}

impl Decryptor {
    /// Takes the next piece of the token's text; appends the plaintext it frees to `out`.
    pub fn update(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidToken> {
        self.text.extend_from_slice(text);
        // The last quad may hold padding: decode only whole quads before it.
        let ready = self.text.len().saturating_sub(4) / 4 * 4;
        if ready > 0 {
            let decoded = URL_SAFE
                .decode(&self.text[..ready])
                .map_err(|_| InvalidToken)?;
            self.text.drain(..ready);
            self.body.extend_from_slice(&decoded);
        }
        self.process(self.body.len().saturating_sub(HELD_BACK), out)
    }

    /// MACs and decrypts the first `up_to` bytes of `body` (rounded down to whole blocks).
    fn process(&mut self, up_to: usize, out: &mut Vec<u8>) -> Result<(), InvalidToken> {
        if self.cbc.is_none() {
            if self.body.len() < 25 {
                return Ok(());
            }
            if self.body[0] != VERSION {
                return Err(InvalidToken);
            }
            let cbc =
                cbc::Decryptor::<Aes128>::new_from_slices(self.enc.as_ref(), &self.body[9..25])
                    .map_err(|_| InvalidToken)?;
            self.mac.update(&self.body[..25]);
            self.body.drain(..25);
            self.cbc = Some(cbc);
            return self.process(up_to.saturating_sub(25), out);
        }
        let n = up_to / 16 * 16;
        if n == 0 {
            return Ok(());
        }
        self.mac.update(&self.body[..n]);
        let cbc = self.cbc.as_mut().expect("set above");
        let start = out.len();
        out.extend_from_slice(&self.body[..n]);
        for block in out[start..].chunks_exact_mut(16) {
            cbc.decrypt_block(block.try_into().expect("16 bytes"));
        }
        self.body.drain(..n);
        self.blocks += (n / 16) as u64;
        Ok(())
    }

    /// The token is complete: checks its tag, then appends the last plaintext (unpadded).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), InvalidToken> {
        let rest = std::mem::take(&mut self.text);
        let decoded = URL_SAFE.decode(&rest).map_err(|_| InvalidToken)?;
        self.body.extend_from_slice(&decoded);
        self.process(self.body.len().saturating_sub(HELD_BACK), out)?;
        if self.cbc.is_none() || self.body.len() < HELD_BACK {
            return Err(InvalidToken);
        }
        let (last, tag) = self.body.split_at(self.body.len() - 32);
        if last.len() != 16 {
            return Err(InvalidToken);
        }
        self.mac.update(last);
        self.mac.verify_slice(tag).map_err(|_| InvalidToken)?;
        let mut block = [0u8; 16];
        block.copy_from_slice(last);
        self.cbc
            .as_mut()
            .expect("checked")
            .decrypt_block((&mut block[..]).try_into().expect("16 bytes"));
        let pad = usize::from(block[15]);
        if !(1..=16).contains(&pad) || block[16 - pad..].iter().any(|&b| usize::from(b) != pad) {
            return Err(InvalidToken);
        }
        out.extend_from_slice(&block[..16 - pad]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decrypts `token` in pieces of `piece` bytes.
    fn streamed(k: &Key, token: &[u8], piece: usize) -> Result<Vec<u8>, InvalidToken> {
        let mut d = k.decryptor();
        let mut out = Vec::new();
        for chunk in token.chunks(piece.max(1)) {
            d.update(chunk, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn streaming_agrees_with_whole_token_decryption_on_every_vector_and_piece_size() {
        for v in vectors("verify").into_iter().chain(vectors("invalid")) {
            let token = v["token"].as_str().unwrap().as_bytes();
            let whole = key(&v).decrypt(token, 0, None);
            for piece in [1, 2, 3, 4, 5, 7, 16, 33, 1000] {
                assert_eq!(
                    streamed(&key(&v), token, piece),
                    whole,
                    "{v} in pieces of {piece}"
                );
            }
        }
        let k = Key::derive(&Passphrase::new("p".into()).unwrap(), b"0123456789abcdef");
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 4096, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let token = k.encrypt_now(&plain);
            for piece in [1, 3, 64, 65_536] {
                assert_eq!(
                    streamed(&k, token.as_bytes(), piece).unwrap(),
                    plain,
                    "{len}/{piece}"
                );
            }
            // Any flipped character or cut is refused at the end.
            let mut bad = token.clone().into_bytes();
            let i = bad.len() / 2;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(streamed(&k, &bad, 100), Err(InvalidToken));
            assert_eq!(
                streamed(&k, &token.as_bytes()[..token.len() - 4], 100),
                Err(InvalidToken)
            );
        }
    }

    fn vectors(name: &str) -> Vec<serde_json::Value> {
        let path = format!(
            "{}/tests/vectors/fernet/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn unix(rfc3339: &serde_json::Value) -> u64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
            .unwrap()
            .timestamp() as u64
    }

    fn key(v: &serde_json::Value) -> Key {
        Key::from_base64(v["secret"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn spec_generate_vectors() {
        for v in vectors("generate") {
            let iv: Vec<u8> = v["iv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            let token = key(&v).encrypt(
                v["src"].as_str().unwrap().as_bytes(),
                unix(&v["now"]),
                iv.try_into().unwrap(),
            );
            assert_eq!(token, v["token"].as_str().unwrap());
        }
    }

    #[test]
    fn spec_verify_vectors() {
        for v in vectors("verify") {
            let ttl = v["ttl_sec"].as_u64();
            let plain = key(&v)
                .decrypt(
                    v["token"].as_str().unwrap().as_bytes(),
                    unix(&v["now"]),
                    ttl,
                )
                .unwrap();
            assert_eq!(plain, v["src"].as_str().unwrap().as_bytes());
        }
    }

    #[test]
    fn spec_invalid_vectors() {
        let all = vectors("invalid");
        assert_eq!(all.len(), 8);
        for v in all {
            let result = key(&v).decrypt(
                v["token"].as_str().unwrap().as_bytes(),
                unix(&v["now"]),
                v["ttl_sec"].as_u64(),
            );
            assert_eq!(result, Err(InvalidToken), "{}", v["desc"]);
        }
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let k = Key::derive(
            &Passphrase::new("secret123".into()).unwrap(),
            b"0123456789abcdef",
        );
        let token = k.encrypt_now(b"hi there");
        assert_eq!(k.decrypt(token.as_bytes(), 0, None).unwrap(), b"hi there");
        let other = Key::derive(
            &Passphrase::new("secret124".into()).unwrap(),
            b"0123456789abcdef",
        );
        assert_eq!(other.decrypt(token.as_bytes(), 0, None), Err(InvalidToken));
        assert_eq!(
            Key::from_base64(&k.to_base64()).unwrap().0.as_ref(),
            k.0.as_ref()
        );
    }

    #[test]
    fn garbage_never_panics() {
        let k = Key::from_base64("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").unwrap();
        for t in ["", "gA==", "====", "gAAAAAAdwJ6w", &"A".repeat(1000)] {
            assert!(k.decrypt(t.as_bytes(), 0, None).is_err());
        }
    }
}
