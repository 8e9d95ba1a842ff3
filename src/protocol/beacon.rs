//! Discovery datagrams: who holds drops, and on which TCP port. Announcements carry nothing
//! derived from the passphrase and no drop metadata, so an eavesdropper learns only that a
//! deaddrop process exists and when its drops change.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::protocol::codec::{DecodeError, Put, Reader};
use crate::protocol::id::PeerId;

/// Every deaddrop datagram and TCP stream starts with these bytes.
pub const MAGIC: [u8; 4] = *b"DDRP";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The default UDP port for discovery.
pub const DEFAULT_PORT: u16 = 48557;
/// Datagrams longer than this are ignored without being parsed.
pub const MAX_DATAGRAM: usize = 64;

const KIND_ANNOUNCE: u8 = 0x01;
const KIND_QUERY: u8 = 0x02;
const KIND_FORWARDED: u8 = 0x03;
const ANNOUNCE_LEN: usize = 4 + 1 + 1 + 16 + 2 + 8;
const QUERY_LEN: usize = 4 + 1 + 1 + 16;
const FORWARDED_HEAD_LEN: usize = 4 + 1 + 1 + 16 + 2 + 4;

/// A discovery datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beacon {
    /// "Process `id` holds drops; connect to my address at `port`. My drops last changed at
    /// `generation`." Sent when drops change, periodically, and in answer to a query.
    Announce {
        id: PeerId,
        port: u16,
        generation: u64,
    },
    /// "Whoever holds drops, announce yourself to the sender of this datagram." Sent by receivers
    /// at start so drops made before they started are found at once.
    Query { id: PeerId },
}

impl Beacon {
    pub fn id(&self) -> PeerId {
        match *self {
            Beacon::Announce { id, .. } | Beacon::Query { id } => id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ANNOUNCE_LEN);
        b.put_bytes(&MAGIC);
        b.put_u8(VERSION);
        match *self {
            Beacon::Announce {
                id,
                port,
                generation,
            } => {
                b.put_u8(KIND_ANNOUNCE);
                b.put_bytes(&id.0);
                b.put_u16(port);
                b.put_u64(generation);
            }
            Beacon::Query { id } => {
                b.put_u8(KIND_QUERY);
                b.put_bytes(&id.0);
            }
        }
        debug_assert!(b.len() == ANNOUNCE_LEN || b.len() == QUERY_LEN);
        b
    }

    /// Parses one datagram. Anything but an exact, known encoding is an error, which callers
    /// treat as "ignore this packet".
    pub fn decode(datagram: &[u8]) -> Result<Beacon, DecodeError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong {
                what: "datagram",
                len: datagram.len(),
                max: MAX_DATAGRAM,
            });
        }
        let mut r = Reader::new(datagram);
        if r.array::<4>()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        let beacon = match kind {
            KIND_ANNOUNCE => {
                let id = PeerId(r.array()?);
                let port = r.u16()?;
                if port == 0 {
                    return Err(DecodeError::Invalid("port 0"));
                }
                let generation = r.u64()?;
                Beacon::Announce {
                    id,
                    port,
                    generation,
                }
            }
            KIND_QUERY => Beacon::Query {
                id: PeerId(r.array()?),
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(beacon)
    }
}

/// A beacon one process heard by unicast on the shared discovery port and passes on to the other
/// processes on its host (a unicast datagram to a shared port reaches only one of them). Sent
/// to the loopback broadcast address and accepted only from a loopback source.
///
/// ```text
/// "DDRP" 01 03 | origin ip[16] (IPv4 as ::ffff:a.b.c.d) | origin port u16 | scope id u32 | beacon
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Where the beacon came from (an IPv6 link-local origin keeps its scope id).
    pub origin: SocketAddr,
    /// The beacon itself (an announcement or a query, never another forwarded one).
    pub beacon: Beacon,
}

/// Any datagram on the discovery port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    Beacon(Beacon),
    Forwarded(Forwarded),
}

impl Forwarded {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FORWARDED_HEAD_LEN + ANNOUNCE_LEN);
        b.put_bytes(&MAGIC);
        b.put_u8(VERSION);
        b.put_u8(KIND_FORWARDED);
        let (ip, scope) = match self.origin {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), 0),
            SocketAddr::V6(a) => (*a.ip(), a.scope_id()),
        };
        b.put_bytes(&ip.octets());
        b.put_u16(self.origin.port());
        b.put_u32(scope);
        b.put_bytes(&self.beacon.encode());
        debug_assert!(b.len() <= MAX_DATAGRAM);
        b
    }
}

impl Datagram {
    /// Parses one datagram: a beacon, or a forwarded one. Anything else is an error.
    pub fn decode(datagram: &[u8]) -> Result<Datagram, DecodeError> {
        if datagram.len() > 5 && datagram[..4] == MAGIC && datagram[5] == KIND_FORWARDED {
            if datagram[4] != VERSION {
                return Err(DecodeError::UnsupportedVersion(datagram[4]));
            }
            let mut r = Reader::new(&datagram[6..]);
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let port = r.u16()?;
            let scope = r.u32()?;
            let origin = match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)),
            };
            let beacon = Beacon::decode(&datagram[FORWARDED_HEAD_LEN..])?;
            return Ok(Datagram::Forwarded(Forwarded { origin, beacon }));
        }
        Beacon::decode(datagram).map(Datagram::Beacon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce() -> Beacon {
        Beacon::Announce {
            id: PeerId([0xab; 16]),
            port: 0x1234,
            generation: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn golden_bytes() {
        let mut expected = b"DDRP\x01\x01".to_vec();
        expected.extend([0xab; 16]);
        expected.extend([0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(announce().encode(), expected);
        assert_eq!(expected.len(), ANNOUNCE_LEN);

        let mut expected = b"DDRP\x01\x02".to_vec();
        expected.extend([0xcd; 16]);
        assert_eq!(
            Beacon::Query {
                id: PeerId([0xcd; 16])
            }
            .encode(),
            expected
        );
    }

    #[test]
    fn round_trips() {
        for b in [
            announce(),
            Beacon::Query {
                id: PeerId::random(),
            },
        ] {
            assert_eq!(Beacon::decode(&b.encode()).unwrap(), b);
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = announce().encode();
        for n in 0..bytes.len() {
            assert!(Beacon::decode(&bytes[..n]).is_err(), "accepted {n} bytes");
        }
    }

    #[test]
    fn trailing_and_oversized_datagrams_are_rejected() {
        let mut bytes = announce().encode();
        bytes.push(0);
        assert_eq!(Beacon::decode(&bytes), Err(DecodeError::Trailing(1)));
        assert!(matches!(
            Beacon::decode(&[0u8; 65_507]),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn forwarded_golden_bytes_and_round_trips() {
        let f = Forwarded {
            origin: "10.0.0.7:41000".parse().unwrap(),
            beacon: announce(),
        };
        let mut expected = b"DDRP\x01\x03".to_vec();
        expected.extend([0; 10]);
        expected.extend([0xff, 0xff, 10, 0, 0, 7]);
        expected.extend(41000u16.to_be_bytes());
        expected.extend([0, 0, 0, 0]);
        expected.extend(announce().encode());
        assert_eq!(f.encode(), expected);
        assert!(expected.len() <= MAX_DATAGRAM);
        assert_eq!(Datagram::decode(&expected).unwrap(), Datagram::Forwarded(f));
        let v6 = Forwarded {
            origin: SocketAddr::V6(SocketAddrV6::new("fe80::7".parse().unwrap(), 9, 0, 3)),
            beacon: Beacon::Query {
                id: PeerId([1; 16]),
            },
        };
        assert_eq!(
            Datagram::decode(&v6.encode()).unwrap(),
            Datagram::Forwarded(v6)
        );
        assert_eq!(
            Datagram::decode(&announce().encode()).unwrap(),
            Datagram::Beacon(announce())
        );
        // A forwarded datagram never carries another, and every truncation fails.
        let mut nested = f.encode()[..FORWARDED_HEAD_LEN].to_vec();
        nested.extend(f.encode()[..32].to_vec());
        assert!(Datagram::decode(&nested).is_err());
        for n in 0..expected.len() {
            assert!(Datagram::decode(&expected[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            Beacon::decode(b"{\"t\":\"HELLO\"}"),
            Err(DecodeError::BadMagic)
        );
        let mut v2 = announce().encode();
        v2[4] = 2;
        assert_eq!(Beacon::decode(&v2), Err(DecodeError::UnsupportedVersion(2)));
        let mut unknown = announce().encode();
        unknown[5] = 0x7f;
        assert_eq!(
            Beacon::decode(&unknown),
            Err(DecodeError::UnknownKind(0x7f))
        );
        let mut port0 = announce().encode();
        port0[22] = 0;
        port0[23] = 0;
        assert!(Beacon::decode(&port0).is_err());
    }
}
