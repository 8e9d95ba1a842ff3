//! What the library reports while it works. The binary renders these as human text or as JSON
//! lines; the library itself never prints.

use std::sync::Arc;

use serde::Serialize;

use crate::protocol::id::Token;
use crate::protocol::message::{DropKind, Refusal};

/// Which way a transfer's packets went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// TCP on the LAN.
    Lan,
    /// UDP straight between the two devices of a wide-area room (after hole punching, or
    /// on one network).
    Direct,
    /// Through the wide-area room's relay.
    Relayed,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Lan => "lan",
            Via::Direct => "direct",
            Via::Relayed => "relayed",
        }
    }
}

/// Which drop an event is about: a native token, or a token of the original script's protocol
/// (`--legacy`), which is any string. Serialized as text either way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DropId {
    Native(Token),
    Legacy(String),
}

impl From<Token> for DropId {
    fn from(t: Token) -> Self {
        DropId::Native(t)
    }
}

impl PartialEq<Token> for DropId {
    fn eq(&self, other: &Token) -> bool {
        matches!(self, DropId::Native(t) if t == other)
    }
}

impl std::fmt::Display for DropId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropId::Native(t) => t.fmt(f),
            DropId::Legacy(s) => f.write_str(s),
        }
    }
}

impl Serialize for DropId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Something that happened. Serialized with an `"event"` tag, e.g.
/// `{"event":"message","token":"…","from":"laptop","text":"Hello"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A receiver is listening for announcements.
    Listening {
        discovery_port: u16,
        /// The discovery paths in use ("broadcast 10.0.0.255:48557", "mDNS on eth0 (IPv4,
        /// IPv6)", "peer 10.0.5.7:48557").
        targets: Vec<String>,
        /// Where files and folders are saved (`None`: messages only).
        folder: Option<String>,
    },
    /// A holder is offering a drop.
    Offered {
        token: DropId,
        kind: DropKind,
        name: String,
        size: u64,
        ttl_ms: u64,
        /// `None` means every room member (`--everyone`).
        max_fetches: Option<u32>,
        /// The TCP address room members fetch from.
        address: String,
    },
    /// A receiver got a message.
    Message {
        token: DropId,
        from: String,
        address: String,
        /// Which way it came.
        via: Via,
        text: String,
        /// When the holder created it, Unix seconds (holder's clock).
        sent_unix: u64,
    },
    /// A receiver saw a drop it does not fetch automatically.
    Skipped {
        token: DropId,
        kind: DropKind,
        name: String,
        size: u64,
        from: String,
        reason: String,
    },
    /// A holder's drop was fetched and acknowledged.
    Fetched {
        token: DropId,
        by: String,
        address: String,
        /// Which way it went.
        via: Via,
        /// Receivers that have it now.
        delivered: u32,
    },
    /// A holder's drop reached its fetch limit and is gone.
    UsedUp { token: DropId, delivered: u32 },
    /// A holder's drop ran out of time and is gone.
    Expired { token: DropId, delivered: u32 },
    /// A receiver's fetch failed (the drop is not burned by a failed fetch).
    FetchFailed {
        token: DropId,
        kind: DropKind,
        name: String,
        from: String,
        /// What went wrong and what happens next.
        reason: String,
        /// Whether the receiver tries again by itself while the drop is on offer.
        retrying: bool,
    },
    /// A holder's transfer to a receiver stopped before the end (the drop stays on offer
    /// unless it was withdrawn).
    SendStopped {
        token: DropId,
        to: String,
        address: String,
        reason: String,
    },
    /// A fetch was refused by the holder.
    Refused { token: DropId, reason: Refusal },
    /// A peer failed the room handshake: it uses another passphrase, or someone interfered.
    Rejected { address: String },
    /// A receiver saved a file or folder drop.
    Received {
        token: DropId,
        kind: DropKind,
        /// Where it was saved.
        path: String,
        /// Bytes of content (for a folder: what its files hold).
        size: u64,
        /// Files saved (1 for a file drop).
        files: u64,
        from: String,
        address: String,
        /// Which way it came.
        via: Via,
    },
    /// A file or folder transfer is under way (a few per second at most, and one at the end;
    /// none for messages).
    Progress {
        token: DropId,
        /// The drop's name.
        name: String,
        /// The other end's name.
        peer: String,
        /// True on the holder's side.
        sending: bool,
        /// Bytes of content that were already there when this transfer began (resumed).
        resumed: u64,
        /// Bytes of content done, counting the resumed ones.
        done: u64,
        total: u64,
        /// Which way the bytes go now (beyond the LAN it changes from `relayed` to `direct`
        /// when a hole is punched).
        via: Via,
    },
    /// A non-fatal problem worth telling the user about.
    Warning { message: String },
    /// A problem that ended the command.
    Error { message: String },
}

/// Limits progress events to a few per second.
#[derive(Debug)]
pub struct Throttle {
    last: Option<std::time::Instant>,
}

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

    pub fn new() -> Self {
        Self { last: None }
    }

    /// Whether to report now: the first time, every [`Throttle::EVERY`], and when `finished`.
    pub fn ready(&mut self, finished: bool) -> bool {
        let now = std::time::Instant::now();
        if finished
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
        {
            self.last = Some(now);
            return true;
        }
        false
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// Where events go: a callback, called from whichever task produced the event.
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// An event sink that drops everything.
pub fn ignore() -> Events {
    Arc::new(|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Event::Message {
            token: Token([0xab; 16]).into(),
            from: "laptop".into(),
            address: "10.0.0.2:4000".into(),
            via: Via::Relayed,
            text: "Hello, team!".into(),
            sent_unix: 5,
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "message");
        assert_eq!(v["via"], "relayed");
        assert_eq!(v["token"], "ab".repeat(16));
        assert_eq!(v["text"], "Hello, team!");
        let v = serde_json::to_value(Event::Offered {
            token: Token([0; 16]).into(),
            kind: DropKind::Message,
            name: "message".into(),
            size: 1,
            ttl_ms: 12_000,
            max_fetches: None,
            address: "x".into(),
        })
        .unwrap();
        assert_eq!(v["kind"], "message");
        assert!(v["max_fetches"].is_null());
        let v = serde_json::to_value(Event::Refused {
            token: Token([0; 16]).into(),
            reason: Refusal::Taken,
        })
        .unwrap();
        assert_eq!(v["reason"], "taken");
    }
}
