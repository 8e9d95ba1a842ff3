//! The original script's wire format, as it behaves: JSON discovery datagrams, one JSON request
//! line and one JSON reply line over TCP, then a length-prefixed payload (salt and Fernet token).
//! Pure: bytes in, values out, with every length capped.

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::protocol::secret::Passphrase;

/// The original's discovery port (UDP broadcast).
pub const UDP_PORT: u16 = 48555;
/// The original's fetch port (TCP).
pub const TCP_PORT: u16 = 48556;
/// Datagrams longer than this are ignored.
pub const MAX_DATAGRAM: usize = 4096;
/// Request and reply lines longer than this are refused.
pub const MAX_LINE: usize = 4096;
/// Bytes of salt before the Fernet token in a payload.
pub const SALT_LEN: usize = 16;
/// A fetch arriving this long after `expires_at` finds nothing (the original's grace).
pub const EXPIRY_GRACE_SECS: f64 = 2.0;

/// The original's room id: the first 12 hex digits of SHA-256("room:" + passphrase). Anyone who
/// sees it can test passphrase guesses offline; that is why `--legacy` is opt-in.
pub fn room_id(pass: &Passphrase) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"room:");
    ctx.update(pass.expose());
    let hash = ctx.finish();
    hash.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a drop holds, as the original names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "msg")]
    Message,
    #[serde(rename = "file")]
    File,
}

/// A discovery datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Datagram {
    /// Sent every 5 s by every running node.
    #[serde(rename = "HELLO")]
    Hello { room: String, ip: String, port: u16 },
    /// Sent once by a sender for each new drop.
    #[serde(rename = "OFFER")]
    Offer {
        id: String,
        kind: Kind,
        name: String,
        port: u16,
        expires_at: f64,
        room: String,
    },
}

impl Datagram {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("datagrams serialize")
    }

    /// Parses one datagram; `None` for anything that is not one of ours (ignored, as the
    /// original does).
    pub fn decode(bytes: &[u8]) -> Option<Datagram> {
        if bytes.len() > MAX_DATAGRAM {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    pub fn room(&self) -> &str {
        match self {
            Datagram::Hello { room, .. } | Datagram::Offer { room, .. } => room,
        }
    }
}

/// The request line a fetcher sends.
pub fn fetch_request(token: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({"op": "fetch", "token": token}))
        .expect("serializes");
    line.push(b'\n');
    line
}

/// How a server reads a request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Fetch(String),
    /// Not JSON, or no string token.
    BadJson,
    /// JSON, but not a fetch.
    BadOp,
}

pub fn parse_request(line: &[u8]) -> Request {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return Request::BadJson;
    };
    if v.get("op").and_then(|o| o.as_str()) != Some("fetch") {
        return Request::BadOp;
    }
    match v.get("token").and_then(|t| t.as_str()) {
        Some(t) => Request::Fetch(t.to_owned()),
        None => Request::BadJson,
    }
}

/// The reply line a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Ok { ok: True, kind: Kind, name: String },
    Err { ok: False, err: String },
}

/// `true` in JSON, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct True;
/// `false` in JSON, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct False;

macro_rules! json_bool {
    ($t:ident, $v:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bool($v)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match bool::deserialize(d)? {
                    b if b == $v => Ok($t),
                    _ => Err(serde::de::Error::custom("unexpected boolean")),
                }
            }
        }
    };
}
json_bool!(True, true);
json_bool!(False, false);

impl Reply {
    pub fn ok(kind: Kind, name: &str) -> Reply {
        Reply::Ok {
            ok: True,
            kind,
            name: name.to_owned(),
        }
    }

    pub fn err(err: &str) -> Reply {
        Reply::Err {
            ok: False,
            err: err.to_owned(),
        }
    }

    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("replies serialize");
        line.push(b'\n');
        line
    }

    pub fn parse(line: &[u8]) -> Option<Reply> {
        serde_json::from_slice(line).ok()
    }
}

/// The payload for `plaintext`: a fresh random salt, then the Fernet token made with the key
/// derived from the passphrase and that salt. Blocking (scrypt).
pub fn seal_payload(pass: &Passphrase, plaintext: &[u8]) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = crate::protocol::id::random_array();
    let token = super::fernet::Key::derive(pass, &salt).encrypt_now(plaintext);
    let mut payload = Vec::with_capacity(SALT_LEN + token.len());
    payload.extend_from_slice(&salt);
    payload.extend_from_slice(token.as_bytes());
    payload
}

/// The plaintext of a payload. Blocking (scrypt).
pub fn open_payload(
    pass: &Passphrase,
    payload: &[u8],
) -> Result<Vec<u8>, super::fernet::InvalidToken> {
    if payload.len() <= SALT_LEN {
        return Err(super::fernet::InvalidToken);
    }
    let (salt, token) = payload.split_at(SALT_LEN);
    super::fernet::Key::derive(pass, salt).decrypt(token, 0, None)
}

/// The largest payload that can carry `plaintext` bytes: salt plus the base64 of the token.
pub fn max_payload(plaintext: u64) -> u64 {
    let token = 1 + 8 + 16 + (plaintext / 16 + 1) * 16 + 32;
    SALT_LEN as u64 + token.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    #[test]
    fn room_id_is_the_originals() {
        // hashlib.sha256(b"room:secret123").hexdigest()[:12]
        assert_eq!(room_id(&pass("secret123")), "2a533355063c");
        assert_ne!(room_id(&pass("secret123")), room_id(&pass("secret124")));
    }

    #[test]
    fn datagrams_parse_as_the_original_writes_them() {
        let hello = br#"{"t": "HELLO", "room": "abcdef012345", "ip": "10.0.0.2", "port": 48556}"#;
        assert_eq!(
            Datagram::decode(hello),
            Some(Datagram::Hello {
                room: "abcdef012345".into(),
                ip: "10.0.0.2".into(),
                port: 48556
            })
        );
        let offer = br#"{"t": "OFFER", "id": "tok", "kind": "file", "name": "a.txt", "port": 48556, "expires_at": 1700000000.5, "room": "r", "extra": 1}"#;
        match Datagram::decode(offer) {
            Some(Datagram::Offer {
                kind: Kind::File,
                expires_at,
                ..
            }) => assert_eq!(expires_at, 1_700_000_000.5),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"not json"[..],
            br#"{"t": "BYE"}"#,
            br#"{"t": "OFFER"}"#,
            br#"{"t":"HELLO","room":1,"ip":"x","port":1}"#,
        ] {
            assert_eq!(Datagram::decode(bad), None);
        }
        assert_eq!(Datagram::decode(&vec![b' '; MAX_DATAGRAM + 1]), None);
        let ours = Datagram::Offer {
            id: "t".into(),
            kind: Kind::Message,
            name: "message".into(),
            port: 1,
            expires_at: 2.5,
            room: "r".into(),
        };
        assert_eq!(Datagram::decode(&ours.encode()), Some(ours));
    }

    #[test]
    fn requests_and_replies() {
        assert_eq!(
            parse_request(&fetch_request("abc")),
            Request::Fetch("abc".into())
        );
        assert_eq!(
            parse_request(br#"{"op": "fetch", "token": "x"}"#),
            Request::Fetch("x".into())
        );
        assert_eq!(parse_request(b"garbage"), Request::BadJson);
        assert_eq!(
            parse_request(br#"{"op": "delete", "token": "x"}"#),
            Request::BadOp
        );
        assert_eq!(parse_request(br#"{"op": "fetch"}"#), Request::BadJson);
        assert_eq!(
            Reply::ok(Kind::Message, "message").line(),
            b"{\"ok\":true,\"kind\":\"msg\",\"name\":\"message\"}\n"
        );
        assert_eq!(
            Reply::err("notfound").line(),
            b"{\"ok\":false,\"err\":\"notfound\"}\n"
        );
        assert_eq!(
            Reply::parse(br#"{"ok": true, "kind": "file", "name": "a b"}"#),
            Some(Reply::ok(Kind::File, "a b"))
        );
        assert_eq!(
            Reply::parse(br#"{"ok": false, "err": "notfound"}"#),
            Some(Reply::err("notfound"))
        );
        assert_eq!(Reply::parse(br#"{"ok": true, "err": "x"}"#), None);
    }

    #[test]
    fn payloads_round_trip_and_the_cap_holds() {
        let p = pass("secret123");
        for len in [0usize, 1, 15, 16, 1000] {
            let plain = vec![7u8; len];
            let payload = seal_payload(&p, &plain);
            assert!(payload.len() as u64 <= max_payload(len as u64), "{len}");
            assert_eq!(open_payload(&p, &payload).unwrap(), plain);
        }
        assert!(open_payload(&pass("other"), &seal_payload(&p, b"x")).is_err());
        assert!(open_payload(&p, b"short").is_err());
    }
}
