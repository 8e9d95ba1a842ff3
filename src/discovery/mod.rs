//! Discovery on the LAN: which addresses announcements and queries go to, the UDP sockets they
//! use, and confinement to one interface or address.
//!
//! Each process has two UDP sockets: one bound to the shared discovery port (with address reuse,
//! so several processes on one host all hear broadcasts) and one on an ephemeral port, which
//! sends and receives unicast answers (a unicast datagram to a shared port reaches only one of
//! the processes bound to it).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::protocol::beacon::{Beacon, MAX_DATAGRAM};

/// Where discovery may go, as the user configured it.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryConfig {
    /// The UDP port for announcements and queries.
    pub port: u16,
    /// Confine everything to one interface, by name (`eth0`) or by one of its IPv4 addresses.
    pub interface: Option<String>,
    /// Peers reached by unicast where broadcast does not get through: `host[:port]`.
    pub peers: Vec<String>,
}

/// The resolved configuration: what to bind and where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub port: u16,
    /// The local address for TCP listeners, outgoing connections and unicast UDP.
    pub bind_ip: Ipv4Addr,
    /// Only beacons from this network are heard (plus `peers`); `None` means any.
    pub network: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Where announcements and queries go.
    pub targets: Vec<SocketAddr>,
    /// The unicast peers among `targets`.
    pub peers: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("no IPv4 interface is named or has the address {wanted:?}; available: {available}")]
    NoSuchInterface { wanted: String, available: String },
    #[error("cannot resolve peer {peer:?}: {reason}")]
    BadPeer { peer: String, reason: String },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(io::Error),
    #[error("cannot open a UDP socket on port {port}: {source}")]
    Bind { port: u16, source: io::Error },
}

fn broadcast_of(ip: Ipv4Addr, netmask: Ipv4Addr, given: Option<Ipv4Addr>) -> Ipv4Addr {
    given.unwrap_or_else(|| Ipv4Addr::from(u32::from(ip) | !u32::from(netmask)))
}

fn ipv4_interfaces() -> Result<Vec<(String, if_addrs::Ifv4Addr)>, DiscoveryError> {
    Ok(if_addrs::get_if_addrs()
        .map_err(DiscoveryError::Interfaces)?
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some((i.name, v4)),
            if_addrs::IfAddr::V6(_) => None,
        })
        .collect())
}

/// Resolves the configuration against this host's interfaces and the peers' names.
pub async fn resolve(cfg: &DiscoveryConfig) -> Result<Scope, DiscoveryError> {
    let interfaces = ipv4_interfaces()?;
    let mut targets = BTreeSet::new();
    let (bind_ip, network) = match &cfg.interface {
        Some(wanted) => {
            let by_addr = wanted.parse::<Ipv4Addr>().ok();
            let (_, v4) = interfaces
                .iter()
                .find(|(name, v4)| by_addr.map_or(name == wanted, |a| v4.ip == a))
                .ok_or_else(|| DiscoveryError::NoSuchInterface {
                    wanted: wanted.clone(),
                    available: interfaces
                        .iter()
                        .map(|(n, v4)| format!("{n} ({})", v4.ip))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let bcast = broadcast_of(v4.ip, v4.netmask, v4.broadcast);
            targets.insert(SocketAddr::from((bcast, cfg.port)));
            (v4.ip, Some((v4.ip, v4.netmask)))
        }
        None => {
            targets.insert(SocketAddr::from((Ipv4Addr::BROADCAST, cfg.port)));
            for (_, v4) in &interfaces {
                let bcast = broadcast_of(v4.ip, v4.netmask, v4.broadcast);
                // A /32 or point-to-point address has no broadcast of its own.
                if bcast != v4.ip {
                    targets.insert(SocketAddr::from((bcast, cfg.port)));
                }
            }
            (Ipv4Addr::UNSPECIFIED, None)
        }
    };
    let mut peers = Vec::new();
    for peer in &cfg.peers {
        let addr = resolve_peer(peer, cfg.port).await?;
        targets.insert(addr);
        peers.push(addr);
    }
    Ok(Scope {
        port: cfg.port,
        bind_ip,
        network,
        targets: targets.into_iter().collect(),
        peers,
    })
}

async fn resolve_peer(peer: &str, default_port: u16) -> Result<SocketAddr, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadPeer {
        peer: peer.to_owned(),
        reason,
    };
    let with_port = if peer.parse::<IpAddr>().is_ok() || !peer.contains(':') {
        format!("{peer}:{default_port}")
    } else {
        peer.to_owned()
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| bad(e.to_string()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| bad("no IPv4 address".into()))
}

impl Scope {
    /// Whether a datagram from `src` is within the configured confinement.
    pub fn admits(&self, src: SocketAddr) -> bool {
        let IpAddr::V4(ip) = src.ip() else {
            return false;
        };
        match self.network {
            None => true,
            Some((net, mask)) => {
                let m = u32::from(mask);
                u32::from(ip) & m == u32::from(net) & m
                    || self.peers.iter().any(|p| p.ip() == src.ip())
            }
        }
    }
}

/// A UDP socket with broadcast on; `shared` lets several processes bind the same port.
pub(crate) fn udp_socket(addr: SocketAddrV4, shared: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        s.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        s.set_reuse_port(true)?;
    }
    s.set_broadcast(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    UdpSocket::from_std(s.into())
}

/// The two discovery sockets of one process.
#[derive(Debug)]
pub struct Discovery {
    shared: UdpSocket,
    unicast: UdpSocket,
    scope: Scope,
}

impl Discovery {
    pub fn bind(scope: Scope) -> Result<Self, DiscoveryError> {
        let bind = |addr: SocketAddrV4, shared| {
            udp_socket(addr, shared).map_err(|source| DiscoveryError::Bind {
                port: addr.port(),
                source,
            })
        };
        // Broadcasts are only delivered to sockets bound to the wildcard address; `admits`
        // confines what is heard.
        let shared = bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, scope.port), true)?;
        let unicast = bind(SocketAddrV4::new(scope.bind_ip, 0), false)?;
        Ok(Self {
            shared,
            unicast,
            scope,
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Sends to every target. Returns how many sends succeeded; a target that is unreachable
    /// (no default route for 255.255.255.255, say) is not an error while another one works.
    pub async fn send_all(&self, beacon: &Beacon) -> usize {
        let bytes = beacon.encode();
        let mut ok = 0;
        for target in &self.scope.targets {
            match self.unicast.send_to(&bytes, target).await {
                Ok(_) => ok += 1,
                Err(e) => tracing::debug!("discovery send to {target} failed: {e}"),
            }
        }
        ok
    }

    pub async fn send_to(&self, beacon: &Beacon, to: SocketAddr) -> io::Result<()> {
        self.unicast.send_to(&beacon.encode(), to).await.map(|_| ())
    }

    /// The next well-formed beacon from an admitted source. Garbage, oversized datagrams and
    /// sources outside the confinement are dropped here.
    pub async fn recv(&self) -> (Beacon, SocketAddr) {
        // One byte more than the cap, so an oversized datagram is seen as such, not truncated.
        let mut a = [0u8; MAX_DATAGRAM + 1];
        let mut b = [0u8; MAX_DATAGRAM + 1];
        loop {
            let (res, buf) = tokio::select! {
                r = self.shared.recv_from(&mut a) => (r, &a[..]),
                r = self.unicast.recv_from(&mut b) => (r, &b[..]),
            };
            let Ok((n, src)) = res else {
                // ICMP errors surface here on some systems; they are not ours to act on.
                continue;
            };
            if !self.scope.admits(src) {
                continue;
            }
            match Beacon::decode(&buf[..n]) {
                Ok(beacon) => return (beacon, src),
                Err(e) => tracing::trace!("ignored datagram from {src}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id::PeerId;

    #[tokio::test]
    async fn confining_to_loopback_sends_only_to_its_broadcast() {
        let scope = resolve(&DiscoveryConfig {
            port: 40000,
            interface: Some("127.0.0.1".into()),
            peers: vec![],
        })
        .await
        .unwrap();
        assert_eq!(scope.bind_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(
            scope.targets,
            vec!["127.255.255.255:40000".parse().unwrap()]
        );
        assert!(scope.admits("127.0.0.5:1".parse().unwrap()));
        assert!(!scope.admits("10.1.2.3:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn peers_are_added_with_the_default_port() {
        let scope = resolve(&DiscoveryConfig {
            port: 40000,
            interface: Some("lo".into()),
            peers: vec![
                "127.0.0.9".into(),
                "127.0.0.8:5000".into(),
                "localhost".into(),
            ],
        })
        .await
        .unwrap();
        for want in ["127.0.0.9:40000", "127.0.0.8:5000", "127.0.0.1:40000"] {
            assert!(
                scope.targets.contains(&want.parse().unwrap()),
                "{want} in {:?}",
                scope.targets
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_interface_is_a_clear_error() {
        let e = resolve(&DiscoveryConfig {
            port: 1,
            interface: Some("nosuch0".into()),
            peers: vec![],
        })
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("nosuch0") && text.contains("lo (127.0.0.1)"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_default_scope_includes_the_limited_broadcast() {
        let scope = resolve(&DiscoveryConfig {
            port: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(
            scope
                .targets
                .contains(&"255.255.255.255:1".parse().unwrap())
        );
        assert_eq!(scope.network, None);
    }

    #[tokio::test]
    async fn two_processes_on_one_port_both_hear_a_broadcast_and_ignore_garbage() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let cfg = DiscoveryConfig {
            port,
            interface: Some("127.0.0.1".into()),
            peers: vec![],
        };
        let scope = resolve(&cfg).await.unwrap();
        let a = Discovery::bind(scope.clone()).unwrap();
        let b = Discovery::bind(scope.clone()).unwrap();
        let sender = Discovery::bind(scope).unwrap();
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.set_broadcast(true).unwrap();
        raw.send_to(b"garbage", ("127.255.255.255", port)).unwrap();
        raw.send_to(&[0u8; 500], ("127.255.255.255", port)).unwrap();
        let beacon = Beacon::Query {
            id: PeerId::random(),
        };
        assert_eq!(sender.send_all(&beacon).await, 1);
        for d in [&a, &b] {
            let (got, _) = tokio::time::timeout(std::time::Duration::from_secs(2), d.recv())
                .await
                .unwrap();
            assert_eq!(got, beacon);
        }
    }
}
