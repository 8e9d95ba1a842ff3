//! deaddrop: a peer-to-peer dead drop for local networks.
//!
//! People on one LAN join a room by a shared passphrase. A holder offers a drop (a message, a
//! file or a folder); every running receiver in the room fetches it over an end-to-end encrypted
//! session; the drop is gone once fetched (once, by default) or when its time-to-live runs out.
//!
//! # Layout
//!
//! The crate is in layers, each a folder; the pure parts take bytes and `now` in and give bytes
//! and decisions out, and the I/O shell around them is tokio.
//!
//! [`protocol`]: what goes on the wire, pure.
//! - [`protocol::codec`]: checked big-endian reading and writing shared by every decoder.
//! - [`protocol::id`]: per-process [`protocol::id::PeerId`]s and drop [`protocol::id::Token`]s.
//! - [`protocol::secret`]: the passphrase type.
//! - [`protocol::beacon`]: discovery datagrams (announce, query).
//! - [`protocol::handshake`]: SPAKE2 with key confirmation and the HKDF key schedule.
//! - [`protocol::record`]: the AES-256-GCM record layer.
//! - [`protocol::message`]: the requests and replies inside a session.
//!
//! [`discovery`]: how holders and receivers find each other: interfaces, UDP beacons (broadcast,
//! IPv6 multicast, unicast peers) and the sockets they use.
//!
//! [`session`]: sessions and the two roles.
//! - [`session::transport`]: a session over a stream: handshake with timeouts, then records.
//! - [`session::limit`]: the guess budget both roles use (pure).
//! - [`session::contacts`]: which holders a receiver contacts, when, in what order (pure).
//! - [`session::holder`]: serves drops to room members and announces them.
//! - [`session::client`]: one session with one holder (list, fetch, acknowledge); `list` and
//!   `fetch` across the room.
//! - [`session::receiver`]: `run`: follows announcements and fetches every new drop.
//!
//! [`storage`]: drops on disk and in memory.
//! - [`storage::store`]: a holder's drops: fetch limits, burn-once, expiry (pure).
//! - [`storage::source`]: a drop's content, streamed from memory or disk, checked for changes.
//! - [`storage::tree`]: the folder stream format and safe unpacking.
//! - [`storage::names`]: peer-supplied names made safe (pure).
//! - [`storage::sink`]: receiving into hidden partial files, verified, then published.
//! - [`storage::fsx`]: opening without following symlinks, renaming without replacing.
//!
//! [`wide`]: rooms beyond one LAN, over iroh (QUIC, hole punching, relays).
//! - [`wide::invite`]: invites (room id, relay, endpoints to start from) (pure).
//! - [`wide::config`]: the device key and joined rooms in the config folder.
//! - [`wide::relay`]: `deaddrop relay` and relay certificate pinning.
//! - [`wide::room`]: this device's endpoint, the room's meeting point, session streams.
//!
//! Beside them: [`legacy`] (the original script's protocol, for `--legacy`), [`event`] (what the
//! library reports to the program using it), [`units`] (sizes and durations for people) and
//! [`uri`] (the `deaddrop:` room link and QR codes).
//!
//! The library never prints, prompts or exits; the `deaddrop` binary does.

pub mod discovery;
pub mod event;
pub mod legacy;
#[cfg(test)]
mod properties;
pub mod protocol;
pub mod session;
pub mod storage;
pub mod units;
pub mod uri;
pub mod wide;
