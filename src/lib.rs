//! deaddrop: a peer-to-peer dead drop for local networks.
//!
//! People on one LAN join a room by a shared passphrase. A holder offers a drop (a message or a
//! file); every running receiver in the room fetches it over an end-to-end encrypted session; the
//! drop is gone once fetched (once, by default) or when its time-to-live runs out.
//!
//! # Layout
//!
//! Pure protocol core (bytes and `now` in, bytes and decisions out):
//! - [`codec`]: checked big-endian reading and writing shared by every decoder.
//! - [`id`]: per-process [`id::PeerId`]s and drop [`id::Token`]s.
//! - [`secret`]: the passphrase type.
//! - [`beacon`]: discovery datagrams (announce, query).
//! - [`handshake`]: SPAKE2 with key confirmation and the HKDF key schedule.
//! - [`record`]: the AES-256-GCM record layer.
//! - [`message`]: the requests and replies inside a session.
//! - [`store`]: a holder's drops: fetch limits, burn-once, expiry.
//! - [`limit`]: the per-source rate limit on passphrase guesses.
//!
//! I/O shell (tokio):
//! - [`transport`]: a session over a stream: handshake with timeouts, then records.
//! - [`discovery`]: UDP sockets, broadcast targets, interface confinement.
//! - [`holder`]: serves drops to room members and announces them.
//! - [`client`]: one session with one holder: list, fetch, acknowledge.
//! - [`receiver`]: `run`: follows announcements and fetches every new drop.
//! - [`event`]: what the library reports to the program using it.
//! - [`fsx`]: opening without following symlinks, renaming without replacing.
//!
//! The library never prints, prompts or exits; the `deaddrop` binary does.

pub mod beacon;
pub mod client;
pub mod codec;
pub mod contacts;
pub mod discovery;
pub mod event;
pub mod fsx;
pub mod handshake;
pub mod holder;
pub mod id;
pub mod legacy;
pub mod limit;
pub mod message;
pub mod names;
#[cfg(test)]
mod properties;
pub mod receiver;
pub mod record;
pub mod secret;
pub mod sink;
pub mod source;
pub mod store;
pub mod transport;
pub mod tree;
pub mod units;
