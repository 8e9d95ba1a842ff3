#![no_main]
//! Handshake messages from an unauthenticated peer: a ClientHello to a holder, a ServerHello to a
//! fetcher, and a ClientFinish after a real exchange.
use deaddrop::protocol::handshake::{Client, Server};
use deaddrop::protocol::id::PeerId;
use deaddrop::protocol::secret::Passphrase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pass = Passphrase::new("fuzz".into()).unwrap();
    let _ = Server::respond(&pass, PeerId([1; 16]), data);
    let (client, hello) = Client::start(&pass, PeerId([2; 16]));
    let _ = client.finish(data);
    if let Ok((server, _)) = Server::respond(&pass, PeerId([1; 16]), &hello) {
        assert!(server.finish(data).is_err() || data.len() == 33);
    }
});
