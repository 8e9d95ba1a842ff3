#![no_main]
//! Record headers: the one field of a record read before authentication.
use deaddrop::record::{MAX_PLAINTEXT, TAG_LEN, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = <[u8; 4]>::try_from(data)
        && let Ok((len, _)) = parse_header(h)
    {
        assert!((TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&len));
    }
});
