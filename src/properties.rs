//! Property tests: every codec round-trips and never panics on arbitrary input; sanitized names
//! are always safe; the drop store delivers a limited drop at most its limit, each receiver once,
//! under any interleaving of fetch, acknowledgement, release and expiry.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::legacy::{fernet, wire};
use crate::protocol::beacon::Beacon;
use crate::protocol::handshake;
use crate::protocol::id::{PeerId, Token};
use crate::protocol::message::{
    DropInfo, DropKind, MAX_DROP_NAME, MAX_PEER_NAME, Refusal, Reply, Request,
};
use crate::protocol::record;
use crate::protocol::secret::Passphrase;
use crate::storage::names;
use crate::storage::store::{DropSpec, DropStore, FetchLimit, Gone};
use crate::storage::tree::Header;

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; 16]>().prop_map(Token)
}

fn peer() -> impl Strategy<Value = PeerId> {
    any::<[u8; 16]>().prop_map(PeerId)
}

fn kind() -> impl Strategy<Value = DropKind> {
    any::<u8>().prop_map(|b| match b % 4 {
        0 => DropKind::Message,
        1 => DropKind::File,
        2 => DropKind::Directory,
        _ => DropKind::Other(b.max(4)),
    })
}

fn refusal() -> impl Strategy<Value = Refusal> {
    (1u8..=255).prop_map(|b| match b {
        1 => Refusal::NotFound,
        2 => Refusal::Taken,
        3 => Refusal::AlreadyYours,
        4 => Refusal::Unavailable,
        5 => Refusal::Withdrawn,
        b => Refusal::Other(b),
    })
}

fn bounded_string(max_bytes: usize) -> impl Strategy<Value = String> {
    ".{0,40}"
        .prop_map(move |s: String| crate::protocol::codec::truncate_utf8(&s, max_bytes).to_owned())
}

fn drop_info() -> impl Strategy<Value = DropInfo> {
    (
        token(),
        kind(),
        any::<u64>(),
        bounded_string(MAX_DROP_NAME),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(token, kind, size, name, created_unix, ttl_left_ms, fetches_left, executable)| {
                DropInfo {
                    token,
                    kind,
                    size,
                    name,
                    created_unix,
                    ttl_left_ms,
                    fetches_left,
                    executable,
                }
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        bounded_string(MAX_PEER_NAME).prop_map(|name| Request::Hello { name }),
        Just(Request::List),
        (token(), any::<u64>()).prop_map(|(token, offset)| Request::Fetch { token, offset }),
        token().prop_map(|token| Request::Ack { token }),
        Just(Request::Bye),
    ]
}

fn reply() -> impl Strategy<Value = Reply<'static>> {
    prop_oneof![
        bounded_string(MAX_PEER_NAME).prop_map(|name| Reply::Hello { name }),
        prop::collection::vec(drop_info(), 0..8).prop_map(Reply::Listing),
        (drop_info(), any::<u64>()).prop_map(|(info, offset)| Reply::Start { info, offset }),
        any::<[u8; 32]>().prop_map(|hash| Reply::End { hash }),
        (token(), refusal()).prop_map(|(token, reason)| Reply::Refused { token, reason }),
        token().prop_map(|token| Reply::Acked { token }),
        any::<u8>().prop_map(|kind| Reply::Unsupported { kind }),
        refusal().prop_map(|reason| Reply::Abort { reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn beacons_round_trip(id in peer(), port in 1u16.., generation in any::<u64>(), query in any::<bool>()) {
        let b = if query { Beacon::Query { id } } else { Beacon::Announce { id, port, generation } };
        prop_assert_eq!(Beacon::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn beacon_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = Beacon::decode(&bytes);
    }

    #[test]
    fn requests_round_trip(r in request()) {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        prop_assert_eq!(Request::decode(&b).unwrap(), r);
    }

    #[test]
    fn replies_round_trip(r in reply()) {
        let mut b = Vec::new();
        r.encode_into(&mut b);
        prop_assert_eq!(Reply::decode(&b).unwrap(), r);
    }

    #[test]
    fn message_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Request::decode(&bytes);
        let _ = Reply::decode(&bytes);
    }

    #[test]
    fn handshake_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let pass = Passphrase::new("p".into()).unwrap();
        let _ = handshake::Server::respond(&pass, PeerId([0; 16]), &bytes);
        let (client, _) = handshake::Client::start(&pass, PeerId([1; 16]));
        let _ = client.finish(&bytes);
    }

    #[test]
    fn record_parsing_never_panics(header in any::<[u8; 4]>(), mut body in prop::collection::vec(any::<u8>(), 0..256), last in any::<bool>()) {
        let _ = record::parse_header(header);
        let mut opener = record::Opener::new(handshake::RecvKey(zeroize::Zeroizing::new([3; 32])));
        prop_assert!(opener.open(&mut body, last).is_err());
    }

    #[test]
    fn tree_headers_round_trip(path in "[a-z ./é]{0,60}", size in any::<u64>(), executable in any::<bool>(), dir in any::<bool>()) {
        let h = if dir { Header::Dir { path } } else { Header::File { path, size, executable } };
        prop_assert_eq!(Header::read(&mut h.encode().as_slice()).unwrap(), h);
    }

    #[test]
    fn tree_header_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Header::read(&mut bytes.as_slice());
    }

    #[test]
    fn sanitized_names_are_always_one_safe_component(name in any::<String>()) {
        let s = names::sanitize_component(&name);
        prop_assert!(!s.is_empty() && s != "." && s != "..");
        prop_assert!(s.len() <= names::MAX_COMPONENT);
        prop_assert!(!s.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|']));
        prop_assert!(!s.chars().any(char::is_control));
        prop_assert!(!s.ends_with(['.', ' ']));
        prop_assert!(!s.starts_with(' '));
    }

    #[test]
    fn top_level_names_are_safe_and_never_hidden(name in "[.]{0,3}\\PC{0,20}") {
        let s = names::sanitize_top_level(&name);
        prop_assert!(!s.starts_with('.'));
        prop_assert!(s.len() <= names::MAX_COMPONENT);
        prop_assert!(!s.contains(['/', '\\']) && !s.ends_with(['.', ' ']) && !s.is_empty());
    }

    #[test]
    fn accepted_relative_paths_stay_inside(path in "[a-z./\\\\:]{0,30}") {
        if let Ok(parts) = names::sanitize_relative(&path) {
            for p in parts {
                prop_assert!(p != "." && p != ".." && !p.is_empty() && !p.contains(['/', '\\']));
            }
        }
    }

    #[test]
    fn legacy_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = wire::Datagram::decode(&bytes);
        let _ = wire::parse_request(&bytes);
        let _ = wire::Reply::parse(&bytes);
        let key = fernet::Key::from_base64("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").unwrap();
        let _ = key.decrypt(&bytes, 0, Some(60));
    }
}

/// One step of a fetcher against a holder's store.
#[derive(Debug, Clone)]
enum Op {
    Begin(usize),
    Complete(usize),
    Release(usize),
    Advance(u64),
    Expire,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..6).prop_map(Op::Begin),
            (0usize..6).prop_map(Op::Complete),
            (0usize..6).prop_map(Op::Release),
            (0u64..5000).prop_map(Op::Advance),
            Just(Op::Expire),
        ],
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_drop_is_delivered_at_most_its_limit_and_once_per_receiver(
        limit in prop_oneof![(1u32..4).prop_map(FetchLimit::Max), Just(FetchLimit::Everyone)],
        ttl_ms in 1u64..20_000,
        steps in ops(),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut store = DropStore::new();
        let spec = DropSpec {
            kind: DropKind::Message,
            name: "m".into(),
            size: 1,
            ttl: Duration::from_millis(ttl_ms),
            limit,
            executable: false,
        };
        let t = store.insert(spec, (), now, 0).unwrap();
        let peers: Vec<PeerId> = (0..6u8).map(|i| PeerId([i; 16])).collect();
        let mut granted = [false; 6];
        let mut delivered = [false; 6];
        let mut gone = false;
        for op in steps {
            match op {
                Op::Begin(i) => {
                    if store.begin(t, peers[i], now).is_ok() {
                        prop_assert!(!gone, "granted after the drop was gone");
                        // Asking again while holding a reservation takes it over (a reconnect).
                        prop_assert!(!delivered[i], "granted to a receiver that has it");
                        prop_assert!(now < start + Duration::from_millis(ttl_ms), "granted after the TTL");
                        granted[i] = true;
                    }
                }
                Op::Complete(i) => match store.complete_current(t, peers[i], now) {
                    Ok(c) => {
                        prop_assert!(granted[i], "an acknowledgement without a grant counted");
                        granted[i] = false;
                        delivered[i] = true;
                        if c.gone.is_some() {
                            gone = true;
                        }
                        if c.gone == Some(Gone::UsedUp) {
                            prop_assert_eq!(FetchLimit::Max(c.delivered), limit);
                        }
                    }
                    Err(_) => prop_assert!(!granted[i] || gone),
                },
                Op::Release(i) => {
                    if store.release_current(t, peers[i], now).is_some() {
                        gone = true;
                    }
                    granted[i] = false;
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Expire => {
                    if !store.expire(now).is_empty() {
                        gone = true;
                    }
                }
            }
            let count = delivered.iter().filter(|d| **d).count() as u32;
            let in_flight = granted.iter().filter(|g| **g).count() as u32;
            if let FetchLimit::Max(n) = limit {
                prop_assert!(count <= n, "delivered {count} of a drop limited to {n}");
                prop_assert!(count + in_flight <= n, "{count} delivered + {in_flight} in flight > {n}");
            }
        }
    }
}
