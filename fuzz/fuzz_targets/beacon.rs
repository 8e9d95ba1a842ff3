#![no_main]
//! Discovery datagrams, as any host on the LAN can send them: beacons and forwarded beacons.
use deaddrop::protocol::beacon::{Beacon, Datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Datagram::decode(data) {
        Ok(Datagram::Beacon(b)) => assert_eq!(Beacon::decode(&b.encode()), Ok(b)),
        Ok(Datagram::Forwarded(f)) => {
            assert_eq!(Datagram::decode(&f.encode()), Ok(Datagram::Forwarded(f)))
        }
        Err(_) => {}
    }
});
