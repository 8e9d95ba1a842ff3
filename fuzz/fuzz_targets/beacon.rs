#![no_main]
//! Discovery datagrams, as any host on the LAN can send them.
use deaddrop::protocol::beacon::Beacon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Beacon::decode(data) {
        assert_eq!(Beacon::decode(&b.encode()), Ok(b));
    }
});
