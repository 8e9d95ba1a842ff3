//! Discovery on the LAN: which interfaces and addresses are used ([`Scope`]), and the UDP beacon
//! path: broadcasts on every chosen IPv4 network, unicast to named peers (IPv4 or IPv6), and the
//! sockets that carry them.
//!
//! Each process has:
//! - a *shared* socket per family on the discovery port (address reuse, so every process on a
//!   host hears broadcasts);
//! - a *catcher* per chosen address, bound to that address and the discovery port: a unicast
//!   datagram to the port lands there rather than on the shared socket, in one process of the
//!   host, which hands it to the others by the loopback broadcast as a [`Forwarded`] beacon;
//! - a *unicast* socket per family on an ephemeral port, which sends everything and receives
//!   answers.
//!
//! Everything heard arrives, checked against the scope, as [`Heard`] from [`Discovery::recv`].

pub mod doctor;
pub mod interfaces;
pub mod mdns;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::beacon::{Beacon, Datagram, Forwarded, MAX_DATAGRAM};
use crate::protocol::id::PeerId;
use interfaces::NetInterface;

/// Where discovery may go, as the user configured it.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryConfig {
    /// The UDP port for announcements and queries.
    pub port: u16,
    /// Confine everything to these interfaces, by name (`eth0`) or by one of their addresses.
    pub interfaces: Vec<String>,
    /// Peers reached by unicast where broadcast does not get through: `host[:port]`,
    /// `ipv6`, `[ipv6]:port`, `[fe80::1%eth0]:port`.
    pub peers: Vec<String>,
}

/// The resolved configuration: what to bind and where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub port: u16,
    /// The interfaces discovery and connections use.
    pub interfaces: Vec<NetInterface>,
    /// `--interface` was given: bind only the chosen addresses, hear only their networks.
    pub confined: bool,
    /// IPv4 broadcast targets.
    pub broadcast: Vec<SocketAddr>,
    /// Unicast peers.
    pub peers: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("no interface is named or has the address {wanted:?}; available: {available}")]
    NoSuchInterface { wanted: String, available: String },
    #[error("cannot resolve peer {peer:?}: {reason}")]
    BadPeer { peer: String, reason: String },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(io::Error),
    #[error("cannot open a UDP socket on port {port}: {source}")]
    Bind { port: u16, source: io::Error },
}

/// Resolves the configuration against this host's interfaces and the peers' names.
pub async fn resolve(cfg: &DiscoveryConfig) -> Result<Scope, DiscoveryError> {
    let all = interfaces::list().map_err(DiscoveryError::Interfaces)?;
    let chosen =
        interfaces::choose(&all, &cfg.interfaces).map_err(|e| DiscoveryError::NoSuchInterface {
            wanted: e.wanted,
            available: e.available,
        })?;
    let confined = !cfg.interfaces.is_empty();
    let mut broadcast: Vec<SocketAddr> = Vec::new();
    let mut add = |ip: Ipv4Addr| {
        let t = SocketAddr::from((ip, cfg.port));
        if !broadcast.contains(&t) {
            broadcast.push(t);
        }
    };
    if !confined {
        add(Ipv4Addr::BROADCAST);
        // Processes on this host, whatever else there is.
        for i in all.iter().filter(|i| i.loopback) {
            i.v4.iter().filter_map(|a| a.broadcast).for_each(&mut add);
        }
    }
    for i in &chosen {
        i.v4.iter().filter_map(|a| a.broadcast).for_each(&mut add);
    }
    let mut peers = Vec::new();
    for peer in &cfg.peers {
        let addr = resolve_peer(peer, cfg.port, &all).await?;
        if !peers.contains(&addr) {
            peers.push(addr);
        }
    }
    Ok(Scope {
        port: cfg.port,
        interfaces: chosen,
        confined,
        broadcast,
        peers,
    })
}

/// Parses `--peer`: `host`, `host:port`, `1.2.3.4[:port]`, `fe80::1%eth0`, `[fd00::1]:port`,
/// `[fe80::1%eth0]:port`. A zone names an interface (or is its index).
async fn resolve_peer(
    peer: &str,
    default_port: u16,
    all: &[NetInterface],
) -> Result<SocketAddr, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadPeer {
        peer: peer.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = peer.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("a '[' without ']'".into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad(format!("bad port {p:?}")))?,
            None if after.is_empty() => default_port,
            None => return Err(bad(format!("unexpected {after:?} after ']'"))),
        };
        (host, port)
    } else if peer.matches(':').count() > 1 {
        // A bare IPv6 address, no port.
        (peer, default_port)
    } else if let Some((host, port)) = peer.rsplit_once(':') {
        (
            host,
            port.parse()
                .map_err(|_| bad(format!("bad port {port:?}")))?,
        )
    } else {
        (peer, default_port)
    };
    let (addr, zone) = match host.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (host, None),
    };
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(v4) => SocketAddr::from((v4, port)),
            IpAddr::V6(v6) => {
                let scope = match zone {
                    None => 0,
                    Some(z) => match z.parse::<u32>() {
                        Ok(n) => n,
                        Err(_) => all
                            .iter()
                            .find(|i| i.name == z)
                            .map(|i| i.index)
                            .ok_or_else(|| bad(format!("no interface named {z:?}")))?,
                    },
                };
                if scope == 0 && v6.segments()[0] & 0xffc0 == 0xfe80 {
                    return Err(bad(
                        "a link-local address needs its interface: fe80::1%eth0".into(),
                    ));
                }
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
            }
        });
    }
    tokio::net::lookup_host((addr, port))
        .await
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn scope_id(addr: SocketAddr) -> u32 {
    match addr {
        SocketAddr::V6(a) => a.scope_id(),
        SocketAddr::V4(_) => 0,
    }
}

impl Scope {
    /// A scope on loopback only (for tests and examples).
    pub fn loopback(port: u16) -> Scope {
        let lo = NetInterface {
            name: "lo".into(),
            index: 1,
            v4: vec![interfaces::V4 {
                ip: Ipv4Addr::LOCALHOST,
                netmask: Ipv4Addr::new(255, 0, 0, 0),
                broadcast: Some(Ipv4Addr::new(127, 255, 255, 255)),
            }],
            v6: Vec::new(),
            loopback: true,
            point_to_point: false,
            up: true,
        };
        Scope {
            port,
            interfaces: vec![lo],
            confined: true,
            broadcast: vec![SocketAddr::from(([127, 255, 255, 255], port))],
            peers: Vec::new(),
        }
    }

    /// Every address datagrams go to: broadcasts, then peers.
    pub fn targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.broadcast.iter().chain(&self.peers).copied()
    }

    /// Whether a broadcast or multicast from `src` is heard: it must come from a network of a
    /// chosen interface (so a container bridge left out by default is not listened to even
    /// by a socket bound to the wildcard address), from this host, or from a named peer.
    /// Unicast datagrams are taken from anywhere: they were sent to an address of ours.
    pub fn admits(&self, src: SocketAddr) -> bool {
        let ip = canonical(src.ip());
        ip.is_loopback()
            || self.peers.iter().any(|p| canonical(p.ip()) == ip)
            || self.interface_of(src).is_some()
    }

    /// The interface a source belongs to, if it is on one of the chosen ones.
    pub fn interface_of(&self, src: SocketAddr) -> Option<&NetInterface> {
        let ip = canonical(src.ip());
        self.interfaces
            .iter()
            .find(|i| i.reaches(ip, scope_id(src)))
    }

    /// The local address a connection to `dst` leaves from, when confined (`None`: let the
    /// system choose).
    pub fn local_for(&self, dst: SocketAddr) -> Option<IpAddr> {
        if !self.confined {
            return None;
        }
        match canonical(dst.ip()) {
            IpAddr::V4(v4) => {
                let all = self.interfaces.iter().flat_map(|i| i.v4.iter());
                let mut first = None;
                for a in all {
                    if a.contains(v4) {
                        return Some(a.ip.into());
                    }
                    first.get_or_insert(a.ip);
                }
                first.map(IpAddr::V4)
            }
            IpAddr::V6(v6) => {
                let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
                let mut first = None;
                for i in &self.interfaces {
                    for a in &i.v6 {
                        if link_local && a.is_link_local() && i.index == scope_id(dst) {
                            return Some(a.ip.into());
                        }
                        if !link_local && !a.is_link_local() {
                            if a.contains(v6) {
                                return Some(a.ip.into());
                            }
                            first.get_or_insert(a.ip);
                        }
                    }
                }
                first.map(IpAddr::V6)
            }
        }
    }

    /// Where a holder listens: every chosen address when confined (IPv6 link-local ones with
    /// their scope), else one dual-stack wildcard.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if !self.confined {
            return vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))];
        }
        self.interfaces
            .iter()
            .flat_map(|i| {
                let v4 = i.v4.iter().map(|a| SocketAddr::from((a.ip, 0)));
                let v6 = i.v6.iter().map(move |a| {
                    let scope = if a.is_link_local() { i.index } else { 0 };
                    SocketAddr::V6(SocketAddrV6::new(a.ip, 0, 0, scope))
                });
                v4.chain(v6).collect::<Vec<_>>()
            })
            .collect()
    }

    /// The IPv4 address unicast sockets bind: the first chosen one when confined.
    pub fn bind_v4(&self) -> Ipv4Addr {
        if !self.confined {
            return Ipv4Addr::UNSPECIFIED;
        }
        self.interfaces
            .iter()
            .flat_map(|i| i.v4.iter())
            .map(|a| a.ip)
            .next()
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    fn has_v6(&self) -> bool {
        !self.confined
            || self.interfaces.iter().any(|i| !i.v6.is_empty())
            || self.peers.iter().any(SocketAddr::is_ipv6)
    }

    fn has_v4(&self) -> bool {
        !self.confined
            || self.interfaces.iter().any(|i| !i.v4.is_empty())
            || self.peers.iter().any(SocketAddr::is_ipv4)
    }
}

/// A UDP socket; `shared` lets several processes bind the same port.
///
/// Sharing differs by system. Linux and Android need SO_REUSEPORT for every process to get a
/// copy of each broadcast and multicast datagram, and macOS and the BSDs need it to bind twice
/// at all; a unicast datagram goes to one of them (hence the catchers and forwarding). On
/// Windows, SO_REUSEADDR alone lets sockets share the port (there is no SO_REUSEPORT), and
/// broadcast and multicast reach them all; SO_EXCLUSIVEADDRUSE, which Microsoft recommends
/// against port theft, would forbid the sharing, and a process of another user on the same
/// host is outside the threat model. Tested: Linux natively, Windows under Wine (which maps
/// these options to Linux's), Linux ARM64 under qemu-user; macOS is compiled only.
pub(crate) fn udp_socket(addr: SocketAddr, shared: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        s.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    } else {
        s.set_broadcast(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// How a beacon reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// An IPv4 broadcast.
    Broadcast,
    /// Unicast to this process (an answer, or a datagram to the shared port caught here).
    Unicast,
    /// Unicast to another process on this host, which passed it on.
    Forwarded,
    /// DNS-SD over multicast DNS.
    Mdns,
}

/// Something heard on the discovery paths, from an admitted source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A holder is at `endpoint` (its source address and announced port) with `generation`.
    Announce {
        endpoint: SocketAddr,
        id: PeerId,
        generation: u64,
        path: Path,
    },
    /// A receiver asks holders to announce themselves to `reply_to`.
    Query {
        id: PeerId,
        reply_to: SocketAddr,
        path: Path,
    },
}

impl Heard {
    fn of(beacon: Beacon, src: SocketAddr, path: Path) -> Heard {
        match beacon {
            Beacon::Announce {
                id,
                port,
                generation,
            } => {
                let mut endpoint = src;
                endpoint.set_ip(canonical(src.ip()));
                endpoint.set_port(port);
                Heard::Announce {
                    endpoint,
                    id,
                    generation,
                    path,
                }
            }
            Beacon::Query { id } => Heard::Query {
                id,
                reply_to: src,
                path,
            },
        }
    }
}

/// Datagrams heard but not yet taken: a flood waits here (and then in the sockets' buffers,
/// where the system drops the excess) instead of growing memory.
const QUEUE: usize = 1024;
/// Forwarded beacons this process sent, remembered so it does not hear them twice.
const RECENT_FORWARDS: usize = 32;

struct Sockets {
    mdns: Option<Arc<mdns::Mdns>>,
    unicast_v4: Option<Arc<UdpSocket>>,
    unicast_v6: Option<Arc<UdpSocket>>,
    forward: Option<UdpSocket>,
    forwarded: Mutex<VecDeque<(Instant, Forwarded)>>,
    scope: Scope,
}

/// The discovery sockets of one process. Dropping it stops its readers.
pub struct Discovery {
    sockets: Arc<Sockets>,
    heard: tokio::sync::Mutex<mpsc::Receiver<Heard>>,
    readers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("scope", &self.sockets.scope)
            .finish_non_exhaustive()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// What a socket's reader does with what arrives.
#[derive(Clone, Copy)]
enum Role {
    /// The shared port: broadcasts, and forwarded beacons from this host.
    Shared,
    /// A catcher: unicast to the shared port, passed on to the other local processes.
    Catcher,
    /// This process's own unicast socket: answers.
    Unicast,
}

impl Discovery {
    /// Opens the sockets for `scope` and starts reading them. Must run inside the runtime.
    pub fn bind(scope: Scope) -> Result<Self, DiscoveryError> {
        let port = scope.port;
        let bind_err = |port| move |source| DiscoveryError::Bind { port, source };
        let mut readers_of: Vec<(Arc<UdpSocket>, Role)> = Vec::new();
        // Broadcasts are only delivered to sockets bound to the wildcard address; `admits`
        // confines what is heard.
        if scope.has_v4() {
            let s = udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), true)
                .map_err(bind_err(port))?;
            readers_of.push((Arc::new(s), Role::Shared));
        }
        if scope.has_v6() {
            match udp_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), true) {
                Ok(s) => readers_of.push((Arc::new(s), Role::Shared)),
                // A host without IPv6 at all.
                Err(e) if !scope.confined => tracing::debug!("no IPv6 discovery socket: {e}"),
                Err(e) => return Err(bind_err(port)(e)),
            }
        }
        for i in &scope.interfaces {
            let v4 = i.v4.iter().map(|a| SocketAddr::from((a.ip, port)));
            let v6 = i.v6.iter().map(|a| {
                let scope_id = if a.is_link_local() { i.index } else { 0 };
                SocketAddr::V6(SocketAddrV6::new(a.ip, port, 0, scope_id))
            });
            for addr in v4.chain(v6) {
                match udp_socket(addr, true) {
                    Ok(s) => readers_of.push((Arc::new(s), Role::Catcher)),
                    Err(e) => tracing::debug!("no unicast catcher on {addr}: {e}"),
                }
            }
        }
        let unicast_v4 = scope
            .has_v4()
            .then(|| udp_socket(SocketAddr::from((scope.bind_v4(), 0)), false))
            .transpose()
            .map_err(bind_err(0))?
            .map(Arc::new);
        let unicast_v6 = if scope.has_v6() {
            match udp_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), false) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::debug!("no IPv6 unicast socket: {e}");
                    None
                }
            }
        } else {
            None
        };
        for s in [&unicast_v4, &unicast_v6].into_iter().flatten() {
            readers_of.push((s.clone(), Role::Unicast));
        }
        let forward = udp_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).ok();
        let mdns = mdns::Mdns::start(mdns::SERVICE, &scope.interfaces).map(Arc::new);
        let sockets = Arc::new(Sockets {
            mdns: mdns.clone(),
            unicast_v4,
            unicast_v6,
            forward,
            forwarded: Mutex::new(VecDeque::new()),
            scope,
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut readers: Vec<JoinHandle<()>> = readers_of
            .into_iter()
            .map(|(socket, role)| tokio::spawn(read(socket, role, sockets.clone(), tx.clone())))
            .collect();
        if let Some(m) = mdns {
            for v6 in [false, true] {
                if m.socket(v6).is_some() {
                    let task = read_mdns(m.clone(), v6, tx.clone());
                    readers.push(tokio::spawn(task));
                }
            }
        }
        Ok(Self {
            sockets,
            heard: tokio::sync::Mutex::new(rx),
            readers,
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.sockets.scope
    }

    /// Sends to every target. Returns how many sends succeeded; a target that is unreachable
    /// (no default route for 255.255.255.255, say) is not an error while another one works.
    pub async fn send_all(&self, beacon: &Beacon) -> usize {
        let bytes = beacon.encode();
        let mut ok = 0;
        for target in self.sockets.scope.targets() {
            match self.sockets.send(&bytes, target).await {
                Ok(()) => ok += 1,
                Err(e) => tracing::debug!("discovery send to {target} failed: {e}"),
            }
        }
        ok
    }

    pub async fn send_to(&self, beacon: &Beacon, to: SocketAddr) -> io::Result<()> {
        self.sockets.send(&beacon.encode(), to).await
    }

    /// Asks for holders on every path: a query beacon to every target, and an mDNS query.
    pub async fn query(&self, me: PeerId) {
        self.send_all(&Beacon::Query { id: me }).await;
        if let Some(m) = &self.sockets.mdns {
            m.query().await;
        }
    }

    /// Announces a holder on every path: the beacon to every target, and its DNS-SD records
    /// (sent when they changed, and once more a second later). Call it on the holder's
    /// announcement schedule.
    pub async fn announce(&self, id: PeerId, port: u16, generation: u64) -> usize {
        if let Some(m) = &self.sockets.mdns {
            m.publish(mdns::Published {
                id,
                port,
                generation,
            })
            .await;
        }
        self.send_all(&Beacon::Announce {
            id,
            port,
            generation,
        })
        .await
    }

    /// The paths in use, for people: broadcast targets, mDNS interfaces, peers.
    pub fn paths(&self) -> Vec<String> {
        let scope = &self.sockets.scope;
        let mut out: Vec<String> = scope
            .broadcast
            .iter()
            .map(|t| format!("broadcast {t}"))
            .collect();
        if let Some(m) = &self.sockets.mdns {
            for (name, v4, v6) in m.paths() {
                let families = match (v4, v6) {
                    (true, true) => "IPv4, IPv6",
                    (true, false) => "IPv4",
                    (false, true) => "IPv6",
                    (false, false) => continue,
                };
                out.push(format!("mDNS on {name} ({families})"));
            }
        }
        out.extend(scope.peers.iter().map(|p| format!("peer {p}")));
        out
    }

    /// The next thing heard from an admitted source. Garbage, oversized datagrams and sources
    /// outside the confinement never get here.
    pub async fn recv(&self) -> Heard {
        let mut rx = self.heard.lock().await;
        match rx.recv().await {
            Some(h) => h,
            // Every reader has stopped (it cannot happen while they loop forever).
            None => std::future::pending().await,
        }
    }
}

impl Sockets {
    async fn send(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        let socket = match to {
            SocketAddr::V4(_) => self.unicast_v4.as_ref(),
            SocketAddr::V6(_) => self.unicast_v6.as_ref(),
        };
        let socket = socket.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no socket for that address family",
            )
        })?;
        socket.send_to(bytes, to).await.map(|_| ())
    }

    /// Hands a beacon caught by unicast to the other processes on this host.
    async fn forward(&self, origin: SocketAddr, beacon: Beacon) {
        let Some(socket) = &self.forward else { return };
        let f = Forwarded { origin, beacon };
        {
            let mut recent = self.forwarded.lock().expect("forwarded lock");
            if recent.len() >= RECENT_FORWARDS {
                recent.pop_front();
            }
            recent.push_back((Instant::now(), f));
        }
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 255, 255, 255), self.scope.port);
        if let Err(e) = socket.send_to(&f.encode(), to).await {
            // Systems without a loopback broadcast (macOS's lo0 has no BROADCAST flag; Windows
            // may refuse it too; untested here) reach only the catching process: the others
            // still hear broadcasts and mDNS, and their own `--peer` queries.
            tracing::debug!("cannot pass a unicast beacon on to this host's processes: {e}");
        }
    }

    /// Whether `f` is one this process forwarded itself a moment ago.
    fn forwarded_by_me(&self, f: &Forwarded) -> bool {
        let mut recent = self.forwarded.lock().expect("forwarded lock");
        let now = Instant::now();
        recent.retain(|(at, _)| now.duration_since(*at) < Duration::from_secs(2));
        match recent.iter().position(|(_, mine)| mine == f) {
            Some(i) => {
                recent.remove(i);
                true
            }
            None => false,
        }
    }
}

async fn read_mdns(m: Arc<mdns::Mdns>, v6: bool, tx: mpsc::Sender<Heard>) {
    let socket = m.socket(v6).expect("checked before spawning");
    let mut buf = vec![0u8; mdns::READ_BUFFER];
    loop {
        let Ok((n, src)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // `handle` hears only the interfaces mDNS runs on.
        let found = m.handle(&buf[..n], src, v6).await;
        tracing::trace!("mDNS: {n} bytes from {src}: {} holder(s)", found.len());
        for found in found {
            if found.goodbye {
                continue;
            }
            let mut endpoint = src;
            endpoint.set_ip(canonical(src.ip()));
            endpoint.set_port(found.port);
            let heard = Heard::Announce {
                endpoint,
                id: found.id,
                generation: found.generation,
                path: Path::Mdns,
            };
            if tx.send(heard).await.is_err() {
                return;
            }
        }
    }
}

async fn read(socket: Arc<UdpSocket>, role: Role, s: Arc<Sockets>, tx: mpsc::Sender<Heard>) {
    // One byte more than the cap, so an oversized datagram is seen as such, not truncated.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    loop {
        let Ok((n, src)) = socket.recv_from(&mut buf).await else {
            // ICMP errors surface here on some systems; they are not ours to act on.
            continue;
        };
        let heard = match (Datagram::decode(&buf[..n]), role) {
            (Ok(Datagram::Beacon(b)), Role::Shared) if s.scope.admits(src) => {
                Heard::of(b, src, Path::Broadcast)
            }
            (Ok(Datagram::Beacon(b)), Role::Unicast) => Heard::of(b, src, Path::Unicast),
            (Ok(Datagram::Beacon(b)), Role::Catcher) => {
                s.forward(src, b).await;
                Heard::of(b, src, Path::Unicast)
            }
            (Ok(Datagram::Forwarded(f)), Role::Shared)
                if canonical(src.ip()).is_loopback() && !s.forwarded_by_me(&f) =>
            {
                Heard::of(f.beacon, f.origin, Path::Forwarded)
            }
            (Ok(_), _) => continue,
            (Err(e), _) => {
                tracing::trace!("ignored datagram from {src}: {e}");
                continue;
            }
        };
        if tx.send(heard).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(port: u16, interfaces: &[&str], peers: &[&str]) -> DiscoveryConfig {
        DiscoveryConfig {
            port,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            peers: peers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn confining_to_loopback_sends_only_to_its_broadcast() {
        let scope = resolve(&cfg(40000, &["127.0.0.1"], &[])).await.unwrap();
        assert_eq!(scope.bind_v4(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            scope.broadcast,
            vec!["127.255.255.255:40000".parse().unwrap()]
        );
        assert!(scope.admits("127.0.0.5:1".parse().unwrap()));
        assert!(!scope.admits("10.1.2.3:1".parse().unwrap()));
        assert!(!scope.admits("[fe80::1%1]:1".parse().unwrap()));
        assert_eq!(
            scope.listen_addrs(),
            vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            scope.local_for("127.0.0.9:5".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn peers_take_every_form() {
        let scope = resolve(&cfg(
            40000,
            &["lo"],
            &[
                "127.0.0.9",
                "127.0.0.8:5000",
                "localhost:7",
                "::1",
                "[::1]:6000",
                "fe80::1%1",
                "[fe80::2%lo]:7000",
            ],
        ))
        .await
        .unwrap();
        let lo_index = scope.interfaces[0].index;
        let want: Vec<SocketAddr> = vec![
            "127.0.0.9:40000".parse().unwrap(),
            "127.0.0.8:5000".parse().unwrap(),
            "[::1]:40000".parse().unwrap(),
            "[::1]:6000".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 40000, 0, 1)),
            SocketAddr::V6(SocketAddrV6::new(
                "fe80::2".parse().unwrap(),
                7000,
                0,
                lo_index,
            )),
        ];
        for w in want {
            assert!(scope.peers.contains(&w), "{w} in {:?}", scope.peers);
        }
        assert!(
            scope
                .peers
                .iter()
                .any(|p| p.port() == 7 && p.ip().is_loopback()),
            "{:?}",
            scope.peers
        );
        for bad in [
            "fe80::1",
            "[::1",
            "[::1]x",
            "1.2.3.4:notaport",
            "fe80::1%nosuch9",
        ] {
            assert!(
                resolve(&cfg(1, &["lo"], &[bad])).await.is_err(),
                "{bad} accepted"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_interface_is_a_clear_error() {
        let e = resolve(&cfg(1, &["nosuch0"], &[])).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("nosuch0") && text.contains("lo (127.0.0.1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_default_scope_includes_the_limited_and_loopback_broadcasts() {
        let scope = resolve(&cfg(1, &[], &[])).await.unwrap();
        assert!(
            scope
                .broadcast
                .contains(&"255.255.255.255:1".parse().unwrap())
        );
        assert!(
            scope
                .broadcast
                .contains(&"127.255.255.255:1".parse().unwrap())
        );
        assert!(!scope.confined);
        assert!(scope.interfaces.iter().all(|i| !i.loopback));
        assert_eq!(
            scope.listen_addrs(),
            vec!["[::]:0".parse::<SocketAddr>().unwrap()]
        );
    }

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn heard(d: &Discovery) -> Heard {
        tokio::time::timeout(Duration::from_secs(2), d.recv())
            .await
            .expect("heard something")
    }

    #[tokio::test]
    async fn two_processes_on_one_port_both_hear_a_broadcast_and_ignore_garbage() {
        let port = free_port();
        let scope = Scope::loopback(port);
        let a = Discovery::bind(scope.clone()).unwrap();
        let b = Discovery::bind(scope.clone()).unwrap();
        let sender = Discovery::bind(scope).unwrap();
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.set_broadcast(true).unwrap();
        raw.send_to(b"garbage", ("127.255.255.255", port)).unwrap();
        raw.send_to(&[0u8; 500], ("127.255.255.255", port)).unwrap();
        let id = PeerId::random();
        assert_eq!(sender.send_all(&Beacon::Query { id }).await, 1);
        for d in [&a, &b] {
            match heard(d).await {
                Heard::Query {
                    id: got,
                    path: Path::Broadcast,
                    ..
                } => assert_eq!(got, id),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_unicast_datagram_to_the_shared_port_reaches_every_process_on_the_host() {
        // Before: a unicast datagram to a shared port reached one process of the host only,
        // so `--peer` could reach one deaddrop process per host.
        let port = free_port();
        let scope = Scope::loopback(port);
        let procs: Vec<Discovery> = (0..3)
            .map(|_| Discovery::bind(scope.clone()).unwrap())
            .collect();
        let raw = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let beacon = Beacon::Announce {
            id: PeerId([7; 16]),
            port: 4242,
            generation: 9,
        };
        raw.send_to(&beacon.encode(), ("127.0.0.1", port)).unwrap();
        let mut paths = Vec::new();
        for d in &procs {
            match heard(d).await {
                Heard::Announce {
                    endpoint,
                    generation: 9,
                    path,
                    ..
                } => {
                    assert_eq!(endpoint, "127.0.0.2:4242".parse().unwrap());
                    paths.push(path);
                }
                other => panic!("{other:?}"),
            }
        }
        paths.sort_by_key(|p| *p as u8);
        assert_eq!(paths, [Path::Unicast, Path::Forwarded, Path::Forwarded]);
        // Nobody hears it twice.
        for d in &procs {
            assert!(
                tokio::time::timeout(Duration::from_millis(300), d.recv())
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test]
    async fn forwarded_beacons_are_accepted_only_from_this_host() {
        let port = free_port();
        let d = Discovery::bind(Scope::loopback(port)).unwrap();
        let f = Forwarded {
            origin: "127.0.0.3:9".parse().unwrap(),
            beacon: Beacon::Query {
                id: PeerId([1; 16]),
            },
        };
        // The only way to send from a non-loopback source here is to have none: a forwarded
        // beacon to a catcher (unicast) is not taken either.
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(&f.encode(), ("127.0.0.1", port)).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), d.recv())
                .await
                .is_err(),
            "a forwarded beacon sent by unicast is ignored"
        );
    }
}
