#![no_main]
//! mDNS packets, as any host on the LAN can multicast them: parsed by a browser, answered by a
//! holder. Neither may panic; an answer must itself be a packet that names the holder.
use deaddrop::discovery::mdns::{self, Names, Published};
use deaddrop::protocol::id::PeerId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for service in [mdns::SERVICE, mdns::DOCTOR_SERVICE] {
        let _ = mdns::parse(service, data);
        let names = Names {
            label: "dd-0123456789abcdef".into(),
        };
        let p = Published {
            id: PeerId([7; 16]),
            port: 4242,
            generation: 9,
        };
        let addrs = ["10.0.0.5".parse().unwrap(), "fe80::5".parse().unwrap()];
        for port in [mdns::PORT, 40000] {
            if let Some((answer, _)) = mdns::respond(service, data, port, &names, &p, &addrs) {
                let _ = mdns::parse(service, &answer);
                assert!(answer.len() < 9000);
            }
        }
    }
});
