#![no_main]
//! Every message a room member can send inside a session (the plaintext of one record).
use deaddrop::protocol::message::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        if !matches!(r, Request::Unknown(_)) {
            assert_eq!(Request::decode(&b).unwrap(), r);
        }
    }
    if let Ok(r) = Reply::decode(data) {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        if !matches!(r, Reply::Unknown(_)) {
            assert_eq!(Reply::decode(&b).unwrap(), r);
        }
    }
});
