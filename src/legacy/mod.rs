//! `--legacy`: talking to peers that still run the original p2p_dead_drop.py script.
//!
//! This is deliberately a separate, weaker protocol, never mixed with the native one: its room id
//! is an unsalted hash of the passphrase (anyone on the LAN can test guesses offline), and anyone
//! on the LAN can fetch, and so burn, a drop. See SECURITY.md.
//!
//! - [`fernet`]: the payload encryption and key derivation.
//! - [`wire`]: datagrams, request and reply lines, payloads.
//! - [`net`]: the sender, the receiver and fetch by token.

pub mod fernet;
pub mod net;
pub mod wire;
