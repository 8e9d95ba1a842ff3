#![no_main]
//! What any host can send to a --legacy process: datagrams, request and reply lines, tokens.
//! Tokens are fuzzed twice: as raw text, and as bodies that carry a correct HMAC around
//! arbitrary ciphertext, so decryption and padding are reached, in one piece and streamed.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use deaddrop::legacy::{fernet, wire};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

fn streamed(key: &fernet::Key, token: &[u8], piece: usize) -> Result<Vec<u8>, fernet::InvalidToken> {
    let mut d = key.decryptor();
    let mut out = Vec::new();
    for chunk in token.chunks(piece.max(1)) {
        d.update(chunk, &mut out)?;
    }
    d.finish(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::Datagram::decode(data);
    let _ = wire::parse_request(data);
    let _ = wire::Reply::parse(data);
    let key = fernet::Key::from_base64(KEY).unwrap();
    let _ = key.decrypt(data, 499162800, Some(60));
    let piece = data.first().map_or(1, |b| usize::from(*b) + 1);
    assert_eq!(streamed(&key, data, piece), key.decrypt(data, 0, None));
    // A body with a valid tag: version, timestamp, IV, then the input as ciphertext (whole
    // blocks), signed with the key's signing half.
    let raw = URL_SAFE.decode(KEY).unwrap();
    let mut body = vec![0x80];
    body.extend([0u8; 8]);
    body.extend([9u8; 16]);
    body.extend(&data[..data.len() / 16 * 16]);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&raw[..16]).unwrap();
    mac.update(&body);
    body.extend(mac.finalize().into_bytes());
    let token = URL_SAFE.encode(&body);
    let whole = key.decrypt(token.as_bytes(), 0, None);
    if data.len() >= 16 {
        // The tag is right: only the padding can fail.
        assert_eq!(whole.is_ok(), streamed(&key, token.as_bytes(), 1).is_ok());
    }
    assert_eq!(streamed(&key, token.as_bytes(), piece), whole);
});
