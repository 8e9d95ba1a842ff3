#![no_main]
//! What any host can send to a --legacy process: datagrams, request and reply lines, tokens.
use deaddrop::legacy::{fernet, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::Datagram::decode(data);
    let _ = wire::parse_request(data);
    let _ = wire::Reply::parse(data);
    let key = fernet::Key::from_base64("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").unwrap();
    let _ = key.decrypt(data, 499162800, Some(60));
});
