//! Messages inside an established session: each is the plaintext of one record, a kind byte
//! then fields. Requests go from the fetching side (client) to the holder (server), replies back.
//! Unknown kinds decode to `Unknown` so a newer peer's extra messages are skipped, not fatal.

use crate::protocol::codec::{DecodeError, Put, Reader};
use crate::protocol::id::{PeerId, Token};

/// Peer display names (`--name`) are cut to this many bytes.
pub const MAX_PEER_NAME: usize = 64;
/// Drop names (file names, or "message") are at most this many bytes.
pub const MAX_DROP_NAME: usize = 1024;
/// A listing carries at most this many drops.
pub const MAX_LISTING: usize = 2048;
/// A meeting point lists at most this many room members.
pub const MAX_MEMBERS: usize = 64;
/// `fetches_left` value meaning "every room member may fetch it once" (`--everyone`).
pub const EVERYONE: u32 = u32::MAX;

/// What a drop holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropKind {
    /// UTF-8 text shown by the receiver.
    Message,
    /// A single file.
    File,
    /// A directory tree, sent as one stream.
    Directory,
    /// A kind this build does not know (from a newer peer); listed, never fetched.
    #[serde(untagged)]
    Other(u8),
}

impl DropKind {
    fn to_byte(self) -> u8 {
        match self {
            DropKind::Message => 1,
            DropKind::File => 2,
            DropKind::Directory => 3,
            DropKind::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            1 => DropKind::Message,
            2 => DropKind::File,
            3 => DropKind::Directory,
            b => DropKind::Other(b),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropKind::Message => "message",
            DropKind::File => "file",
            DropKind::Directory => "directory",
            DropKind::Other(_) => "unknown",
        }
    }
}

/// A drop as a holder describes it to room members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropInfo {
    pub token: Token,
    pub kind: DropKind,
    /// Content length in bytes.
    pub size: u64,
    pub name: String,
    /// When the holder created it, seconds since the Unix epoch (holder's clock).
    pub created_unix: u64,
    /// Milliseconds until it expires.
    pub ttl_left_ms: u64,
    /// How many more receivers may fetch it, or [`EVERYONE`].
    pub fetches_left: u32,
    /// A single file that should be executable where it lands.
    pub executable: bool,
}

const FLAG_EXECUTABLE: u8 = 0x01;

impl DropInfo {
    fn put(&self, b: &mut Vec<u8>) {
        b.put_bytes(&self.token.0);
        b.put_u8(self.kind.to_byte());
        b.put_u64(self.size);
        b.put_string(&self.name, MAX_DROP_NAME);
        b.put_u64(self.created_unix);
        b.put_u64(self.ttl_left_ms);
        b.put_u32(self.fetches_left);
        b.put_u8(if self.executable { FLAG_EXECUTABLE } else { 0 });
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(DropInfo {
            token: Token(r.array()?),
            kind: DropKind::from_byte(r.u8()?),
            size: r.u64()?,
            name: r.string("drop name", MAX_DROP_NAME)?,
            created_unix: r.u64()?,
            ttl_left_ms: r.u64()?,
            fetches_left: r.u32()?,
            // Unknown flag bits are for later versions; ignore them.
            executable: r.u8()? & FLAG_EXECUTABLE != 0,
        })
    }
}

/// Why a holder will not hand over a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No such drop here (never was, expired, or burned).
    NotFound,
    /// Every allowed fetch is done or under way.
    Taken,
    /// This receiver already has it.
    AlreadyYours,
    /// The holder cannot produce the content (the file changed or could not be read).
    Unavailable,
    /// The sender withdrew the drop (Ctrl-C) while it was being fetched.
    Withdrawn,
    #[serde(untagged)]
    Other(u8),
}

impl Refusal {
    fn to_byte(self) -> u8 {
        match self {
            Refusal::NotFound => 1,
            Refusal::Taken => 2,
            Refusal::AlreadyYours => 3,
            Refusal::Unavailable => 4,
            Refusal::Withdrawn => 5,
            Refusal::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            1 => Refusal::NotFound,
            2 => Refusal::Taken,
            3 => Refusal::AlreadyYours,
            4 => Refusal::Unavailable,
            5 => Refusal::Withdrawn,
            b => Refusal::Other(b),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotFound => "no such drop (expired, burned, or never existed)",
            Refusal::Taken => "already taken by another receiver",
            Refusal::AlreadyYours => "already fetched by this receiver",
            Refusal::Unavailable => "the holder could not read the drop's content",
            Refusal::Withdrawn => "the sender withdrew the drop",
            Refusal::Other(_) => "refused by the holder",
        })
    }
}

/// Client-to-holder messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message of every session: how the client is shown to the holder.
    Hello {
        name: String,
    },
    /// "Which drops do you hold?"
    List,
    /// "Send me this drop's content from byte `offset`."
    Fetch {
        token: Token,
        offset: u64,
    },
    /// "I have a complete, verified copy": only this counts as a fetch.
    Ack {
        token: Token,
    },
    /// End of session.
    Bye,
    /// "I am still checking or saving what you sent; keep my reservation." Sent every few
    /// seconds between `End` and `Ack` while the receiver works (a large folder can take longer
    /// to unpack than a holder waits for a record). No reply; a holder that does not know it
    /// answers `Unsupported`.
    Wait,
    /// To a room's meeting point (wide-area rooms only): "I am here, holding drops of
    /// `generation` (None: holding none); answer with the members once your table is not at
    /// version `known` any more, or after a while." Only after [`Request::Member`] on the
    /// same session.
    Meet {
        generation: Option<u64>,
        known: u64,
    },
    /// "Count my fetches as this device's": a value persisted per device (derived from its
    /// device key), so a second process on the same device is the same receiver. Sent right
    /// after `Hello`, before anything is listed or fetched; no reply (a holder that does not
    /// know it answers `Unsupported`, and counts by the session's PeerId).
    Device {
        id: PeerId,
    },
    /// To a meeting point, first on every session: "list me as device endpoint `id`", with
    /// `proof`, the device key's Ed25519 signature over [`member_proof_message`] (this
    /// session's transcript hash and the id of the endpoint the connection comes from). A
    /// member dials meeting points from a throwaway endpoint, so a meeting point learns the
    /// device endpoint only once it has passed the room handshake. No reply.
    Member {
        id: [u8; 32],
        proof: [u8; 64],
    },
    Unknown(u8),
}

/// What a member's device key signs in [`Request::Member`]: a label, the session's transcript
/// hash (`binding`) and the endpoint id the meeting point sees the connection come from (`via`).
pub fn member_proof_message(binding: &[u8; 32], via: &[u8; 32]) -> Vec<u8> {
    let mut m = b"deaddrop/v1/meet/member".to_vec();
    m.extend_from_slice(binding);
    m.extend_from_slice(via);
    m
}

/// A room member as a meeting point lists it: its device endpoint id (an Ed25519 public key),
/// the process id it proved in the room handshake (the one its LAN beacons carry, so a receiver
/// that hears it on the LAN uses the LAN) and, if it holds drops, their generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: [u8; 32],
    pub peer: PeerId,
    pub generation: Option<u64>,
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const LIST: u8 = 0x02;
    pub const FETCH: u8 = 0x03;
    pub const ACK: u8 = 0x04;
    pub const BYE: u8 = 0x05;
    pub const WAIT: u8 = 0x06;
    pub const MEET: u8 = 0x07;
    pub const DEVICE: u8 = 0x08;
    pub const MEMBER: u8 = 0x09;
    pub const R_HELLO: u8 = 0x81;
    pub const R_LISTING: u8 = 0x82;
    pub const R_START: u8 = 0x83;
    pub const R_DATA: u8 = 0x84;
    pub const R_END: u8 = 0x85;
    pub const R_REFUSED: u8 = 0x86;
    pub const R_ACKED: u8 = 0x87;
    pub const R_UNSUPPORTED: u8 = 0x88;
    pub const R_ABORT: u8 = 0x89;
    pub const R_MEMBERS: u8 = 0x8a;
}

/// The kind byte of a data reply, for the transport's zero-copy send path.
pub const DATA_KIND: u8 = kind::R_DATA;

impl Request {
    /// The kind byte of [`Request::Meet`].
    pub const MEET_KIND: u8 = kind::MEET;
    /// The kind byte of [`Request::Device`].
    pub const DEVICE_KIND: u8 = kind::DEVICE;
    /// The kind byte of [`Request::Member`].
    pub const MEMBER_KIND: u8 = kind::MEMBER;

    pub fn encode_into(&self, b: &mut Vec<u8>) {
        match self {
            Request::Hello { name } => {
                b.put_u8(kind::HELLO);
                b.put_string(name, MAX_PEER_NAME);
            }
            Request::List => b.put_u8(kind::LIST),
            Request::Fetch { token, offset } => {
                b.put_u8(kind::FETCH);
                b.put_bytes(&token.0);
                b.put_u64(*offset);
            }
            Request::Ack { token } => {
                b.put_u8(kind::ACK);
                b.put_bytes(&token.0);
            }
            Request::Bye => b.put_u8(kind::BYE),
            Request::Wait => b.put_u8(kind::WAIT),
            Request::Meet { generation, known } => {
                b.put_u8(kind::MEET);
                put_generation(b, *generation);
                b.put_u64(*known);
            }
            Request::Device { id } => {
                b.put_u8(kind::DEVICE);
                b.put_bytes(&id.0);
            }
            Request::Member { id, proof } => {
                b.put_u8(kind::MEMBER);
                b.put_bytes(id);
                b.put_bytes(proof);
            }
            Request::Unknown(k) => b.put_u8(*k),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(bytes);
        let req = match r.u8()? {
            kind::HELLO => Request::Hello {
                name: r.string("peer name", MAX_PEER_NAME)?,
            },
            kind::LIST => Request::List,
            kind::FETCH => Request::Fetch {
                token: Token(r.array()?),
                offset: r.u64()?,
            },
            kind::ACK => Request::Ack {
                token: Token(r.array()?),
            },
            kind::BYE => Request::Bye,
            kind::WAIT => Request::Wait,
            kind::MEET => Request::Meet {
                generation: get_generation(&mut r)?,
                known: r.u64()?,
            },
            kind::DEVICE => Request::Device {
                id: PeerId(r.array()?),
            },
            kind::MEMBER => Request::Member {
                id: r.array()?,
                proof: r.array()?,
            },
            other => return Ok(Request::Unknown(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

/// Holder-to-client messages. `Data` borrows the record buffer it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    Hello {
        name: String,
    },
    Listing(Vec<DropInfo>),
    /// A fetch was granted: the content follows from `offset`, as `Data` then `End`.
    Start {
        info: DropInfo,
        offset: u64,
    },
    Data(&'a [u8]),
    /// End of the content, with the BLAKE3 hash of all of it (from byte 0).
    End {
        hash: [u8; 32],
    },
    Refused {
        token: Token,
        reason: Refusal,
    },
    /// The acknowledgement was counted.
    Acked {
        token: Token,
    },
    /// The holder does not understand a request kind.
    Unsupported {
        kind: u8,
    },
    /// The holder gave up on a transfer it had started.
    Abort {
        reason: Refusal,
    },
    /// A meeting point's members (at most [`MAX_MEMBERS`]) at table `version`.
    Members {
        version: u64,
        members: Vec<Member>,
    },
    Unknown(u8),
}

fn put_generation(b: &mut Vec<u8>, generation: Option<u64>) {
    match generation {
        Some(g) => {
            b.put_u8(1);
            b.put_u64(g);
        }
        None => b.put_u8(0),
    }
}

fn get_generation(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.u64()?)),
        _ => Err(DecodeError::Invalid("generation flag")),
    }
}

impl Reply<'_> {
    /// Whether this build knows a reply kind byte.
    pub fn is_known_kind(kind: u8) -> bool {
        (kind::R_HELLO..=kind::R_MEMBERS).contains(&kind)
    }

    pub fn encode_into(&self, b: &mut Vec<u8>) {
        match self {
            Reply::Hello { name } => {
                b.put_u8(kind::R_HELLO);
                b.put_string(name, MAX_PEER_NAME);
            }
            Reply::Listing(drops) => {
                // As many drops as fit in one record, in the order given (soonest deadline
                // first): the rest are listed once earlier ones are gone.
                let start = b.len();
                b.put_u8(kind::R_LISTING);
                b.put_u16(0);
                let mut n: u16 = 0;
                for d in drops.iter().take(MAX_LISTING) {
                    let before = b.len();
                    d.put(b);
                    if b.len() - start > crate::protocol::record::MAX_PLAINTEXT {
                        b.truncate(before);
                        break;
                    }
                    n += 1;
                }
                b[start + 1..start + 3].copy_from_slice(&n.to_be_bytes());
            }
            Reply::Start { info, offset } => {
                b.put_u8(kind::R_START);
                info.put(b);
                b.put_u64(*offset);
            }
            Reply::Data(bytes) => {
                b.put_u8(kind::R_DATA);
                b.put_bytes(bytes);
            }
            Reply::End { hash } => {
                b.put_u8(kind::R_END);
                b.put_bytes(hash);
            }
            Reply::Refused { token, reason } => {
                b.put_u8(kind::R_REFUSED);
                b.put_bytes(&token.0);
                b.put_u8(reason.to_byte());
            }
            Reply::Acked { token } => {
                b.put_u8(kind::R_ACKED);
                b.put_bytes(&token.0);
            }
            Reply::Unsupported { kind: k } => {
                b.put_u8(kind::R_UNSUPPORTED);
                b.put_u8(*k);
            }
            Reply::Abort { reason } => {
                b.put_u8(kind::R_ABORT);
                b.put_u8(reason.to_byte());
            }
            Reply::Members { version, members } => {
                b.put_u8(kind::R_MEMBERS);
                b.put_u64(*version);
                let members = &members[..members.len().min(MAX_MEMBERS)];
                b.put_u8(members.len() as u8);
                for m in members {
                    b.put_bytes(&m.id);
                    b.put_bytes(&m.peer.0);
                    put_generation(b, m.generation);
                }
            }
            Reply::Unknown(k) => b.put_u8(*k),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply<'_>, DecodeError> {
        let mut r = Reader::new(bytes);
        let reply = match r.u8()? {
            kind::R_HELLO => Reply::Hello {
                name: r.string("peer name", MAX_PEER_NAME)?,
            },
            kind::R_LISTING => {
                let n = usize::from(r.u16()?);
                if n > MAX_LISTING {
                    return Err(DecodeError::TooLong {
                        what: "listing",
                        len: n,
                        max: MAX_LISTING,
                    });
                }
                // Each entry is at least 48 bytes: never reserve more than the input can hold.
                let mut drops = Vec::with_capacity(n.min(r.remaining() / 48));
                for _ in 0..n {
                    drops.push(DropInfo::get(&mut r)?);
                }
                Reply::Listing(drops)
            }
            kind::R_START => Reply::Start {
                info: DropInfo::get(&mut r)?,
                offset: r.u64()?,
            },
            kind::R_DATA => Reply::Data(r.rest()),
            kind::R_END => Reply::End { hash: r.array()? },
            kind::R_REFUSED => Reply::Refused {
                token: Token(r.array()?),
                reason: Refusal::from_byte(r.u8()?),
            },
            kind::R_ACKED => Reply::Acked {
                token: Token(r.array()?),
            },
            kind::R_UNSUPPORTED => Reply::Unsupported { kind: r.u8()? },
            kind::R_ABORT => Reply::Abort {
                reason: Refusal::from_byte(r.u8()?),
            },
            kind::R_MEMBERS => {
                let version = r.u64()?;
                let n = usize::from(r.u8()?);
                if n > MAX_MEMBERS {
                    return Err(DecodeError::TooLong {
                        what: "member list",
                        len: n,
                        max: MAX_MEMBERS,
                    });
                }
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(Member {
                        id: r.array()?,
                        peer: PeerId(r.array()?),
                        generation: get_generation(&mut r)?,
                    });
                }
                Reply::Members { version, members }
            }
            other => return Ok(Reply::Unknown(other)),
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DropInfo {
        DropInfo {
            token: Token([0x11; 16]),
            kind: DropKind::Message,
            size: 13,
            name: "message".into(),
            created_unix: 1_700_000_000,
            ttl_left_ms: 12_000,
            fetches_left: 1,
            executable: false,
        }
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                name: "laptop".into(),
            },
            Request::List,
            Request::Fetch {
                token: Token([3; 16]),
                offset: 1 << 40,
            },
            Request::Ack {
                token: Token([4; 16]),
            },
            Request::Bye,
            Request::Wait,
            Request::Meet {
                generation: None,
                known: 0,
            },
            Request::Meet {
                generation: Some(7),
                known: u64::MAX,
            },
            Request::Device {
                id: PeerId([5; 16]),
            },
            Request::Member {
                id: [6; 32],
                proof: [7; 64],
            },
        ]
    }

    fn replies() -> Vec<Reply<'static>> {
        vec![
            Reply::Hello {
                name: "desk 🖥".into(),
            },
            Reply::Listing(vec![]),
            Reply::Listing(vec![
                info(),
                DropInfo {
                    kind: DropKind::Other(9),
                    fetches_left: EVERYONE,
                    ..info()
                },
            ]),
            Reply::Start {
                info: info(),
                offset: 5,
            },
            Reply::Data(b""),
            Reply::Data(b"Hello, team!"),
            Reply::End { hash: [7; 32] },
            Reply::Refused {
                token: Token([1; 16]),
                reason: Refusal::Taken,
            },
            Reply::Refused {
                token: Token([1; 16]),
                reason: Refusal::Other(200),
            },
            Reply::Acked {
                token: Token([2; 16]),
            },
            Reply::Members {
                version: 3,
                members: vec![
                    Member {
                        id: [5; 32],
                        peer: PeerId([1; 16]),
                        generation: None,
                    },
                    Member {
                        id: [6; 32],
                        peer: PeerId([2; 16]),
                        generation: Some(1 << 40),
                    },
                ],
            },
            Reply::Unsupported { kind: 0x42 },
            Reply::Abort {
                reason: Refusal::Unavailable,
            },
        ]
    }

    fn enc_req(r: &Request) -> Vec<u8> {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        b
    }

    fn enc_rep(r: &Reply<'_>) -> Vec<u8> {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        b
    }

    #[test]
    fn requests_round_trip() {
        for r in requests() {
            assert_eq!(Request::decode(&enc_req(&r)).unwrap(), r);
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in replies() {
            assert_eq!(Reply::decode(&enc_rep(&r)).unwrap(), r);
        }
    }

    #[test]
    fn golden_bytes() {
        assert_eq!(
            enc_req(&Request::Hello { name: "ab".into() }),
            [0x01, 0, 2, b'a', b'b']
        );
        assert_eq!(enc_req(&Request::Wait), [0x06]);
        let mut device = vec![0x08];
        device.extend([5; 16]);
        assert_eq!(
            enc_req(&Request::Device {
                id: PeerId([5; 16])
            }),
            device
        );
        let mut member = vec![0x09];
        member.extend([6; 32]);
        member.extend([7; 64]);
        assert_eq!(
            enc_req(&Request::Member {
                id: [6; 32],
                proof: [7; 64]
            }),
            member
        );
        let mut fetch = vec![0x03];
        fetch.extend([3; 16]);
        fetch.extend([0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(
            enc_req(&Request::Fetch {
                token: Token([3; 16]),
                offset: 1 << 40
            }),
            fetch
        );
        let mut start = vec![0x83];
        start.extend([0x11; 16]);
        start.push(1);
        start.extend(13u64.to_be_bytes());
        start.extend([0, 7]);
        start.extend(b"message");
        start.extend(1_700_000_000u64.to_be_bytes());
        start.extend(12_000u64.to_be_bytes());
        start.extend(1u32.to_be_bytes());
        start.push(0);
        start.extend(5u64.to_be_bytes());
        assert_eq!(
            enc_rep(&Reply::Start {
                info: info(),
                offset: 5
            }),
            start
        );
        assert_eq!(enc_rep(&Reply::Data(b"hi")), [0x84, b'h', b'i']);
    }

    #[test]
    fn every_truncation_is_rejected() {
        for r in replies() {
            let b = enc_rep(&r);
            if matches!(r, Reply::Data(_)) {
                continue; // data is "the rest": any prefix of it is valid data
            }
            for n in 0..b.len() {
                assert!(
                    Reply::decode(&b[..n]).is_err(),
                    "{r:?} accepted at {n} bytes"
                );
            }
        }
        for r in requests() {
            let b = enc_req(&r);
            for n in 0..b.len() {
                assert!(
                    Request::decode(&b[..n]).is_err(),
                    "{r:?} accepted at {n} bytes"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = enc_req(&Request::List);
        b.push(0);
        assert_eq!(Request::decode(&b), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn unknown_kinds_are_skippable_not_fatal() {
        assert_eq!(
            Request::decode(&[0x60, 1, 2, 3]).unwrap(),
            Request::Unknown(0x60)
        );
        assert_eq!(Reply::decode(&[0xe0, 1]).unwrap(), Reply::Unknown(0xe0));
    }

    #[test]
    fn oversized_fields_are_rejected() {
        let mut hello = vec![0x01];
        hello.put_u16(65);
        hello.extend([b'a'; 65]);
        assert!(matches!(
            Request::decode(&hello),
            Err(DecodeError::TooLong { .. })
        ));
        let mut listing = vec![0x82];
        listing.put_u16(MAX_LISTING as u16 + 1);
        assert!(matches!(
            Reply::decode(&listing),
            Err(DecodeError::TooLong { .. })
        ));
        // A listing that claims many entries but has no bytes fails without reserving memory.
        let mut listing = vec![0x82];
        listing.put_u16(MAX_LISTING as u16);
        assert_eq!(Reply::decode(&listing), Err(DecodeError::Truncated));
    }

    #[test]
    fn regression_a_listing_of_many_long_names_fits_one_record() {
        // 2048 drops with 1 KiB names made a 2.2 MB listing that could not be sealed: the
        // holder's every session failed and nothing it held could be listed.
        let drops: Vec<DropInfo> = (0..MAX_LISTING)
            .map(|i| DropInfo {
                token: Token([i as u8; 16]),
                kind: DropKind::File,
                size: 1,
                name: "n".repeat(MAX_DROP_NAME),
                created_unix: 0,
                ttl_left_ms: 1,
                fetches_left: 1,
                executable: false,
            })
            .collect();
        let bytes = enc_rep(&Reply::Listing(drops.clone()));
        assert!(
            bytes.len() <= crate::protocol::record::MAX_PLAINTEXT,
            "{}",
            bytes.len()
        );
        match Reply::decode(&bytes).unwrap() {
            Reply::Listing(got) => {
                assert!(got.len() > 900, "{}", got.len());
                assert_eq!(got[..], drops[..got.len()], "the first ones, in order");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_names_are_cut_on_encode() {
        let long = Request::Hello {
            name: "é".repeat(100),
        };
        match Request::decode(&enc_req(&long)).unwrap() {
            Request::Hello { name } => assert_eq!(name.len(), 64),
            other => panic!("{other:?}"),
        }
    }
}
