#![no_main]
//! Folder streams: entry headers read one after another, as unpacking does.
use deaddrop::storage::tree::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..64 {
        match Header::read(&mut rest) {
            Ok(Header::End) | Err(_) => break,
            Ok(Header::File { size, .. }) => {
                let skip = (size.min(rest.len() as u64)) as usize;
                rest = &rest[skip..];
            }
            Ok(Header::Dir { .. }) => {}
        }
    }
});
