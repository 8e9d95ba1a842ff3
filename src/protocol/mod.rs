//! What goes on the wire, with no I/O: datagrams, the handshake, records and session messages.

pub mod beacon;
pub mod codec;
pub mod handshake;
pub mod id;
pub mod message;
pub mod record;
pub mod secret;
