//! DNS-SD over multicast DNS (RFC 6762, RFC 6763), the discovery path that networks let through
//! most often (printers and AirPlay need it): a holder publishes a `_deaddrop._tcp.local.`
//! service; a receiver browses for it. Standard records, so any DNS-SD browser (avahi-browse,
//! python-zeroconf, Bonjour) sees them.
//!
//! A holder's records carry no more than its UDP beacon: a random instance name and a random host
//! name (never the host's or the user's name), the TCP port in SRV, and in TXT only the protocol
//! version, the process's random id and its generation:
//!
//! ```text
//! _deaddrop._tcp.local.                 PTR  dd-<16 hex>._deaddrop._tcp.local.
//! dd-<16 hex>._deaddrop._tcp.local.     SRV  0 0 <port> dd-<16 hex>.local.
//! dd-<16 hex>._deaddrop._tcp.local.     TXT  "v=1" "id=<32 hex>" "g=<decimal>"
//! dd-<16 hex>.local.                    A / AAAA  the addresses of the interface asked on
//! ```
//!
//! Written over the `simple-dns` codec rather than the `mdns-sd` daemon, which joins the mDNS
//! group on every interface of the host when it starts (before it can be told which to use, so
//! `--interface` could not confine it, and tests could not keep it off real interfaces), and
//! which probes for a new name for about a second before announcing it. deaddrop's names are
//! 64-bit random labels, so it announces at once without probing (a name conflict would need a
//! collision of random labels).
//!
//! The packet logic ([`query`], [`respond`], [`announcement`], [`parse`]) is pure; [`Mdns`] wraps
//! it in sockets.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use simple_dns::rdata::{A, AAAA, PTR, RData, SRV, TXT};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, ResourceRecord, TYPE};
use tokio::net::UdpSocket;

use super::interfaces::NetInterface;
use crate::protocol::beacon::VERSION;
use crate::protocol::id::{PeerId, random_array};

/// The service type holders publish.
pub const SERVICE: &str = "_deaddrop._tcp.local";
/// The service type `deaddrop doctor` publishes while it runs, so doctors see each other (the
/// port is the discovery port; nothing connects to it).
pub const DOCTOR_SERVICE: &str = "_deaddrop-doctor._udp.local";
/// The DNS-SD service-type enumeration name (RFC 6763 §9).
const SERVICES: &str = "_services._dns-sd._udp.local";
pub const PORT: u16 = 5353;
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// Record lifetime: holders live minutes, so caches should not keep them for long.
const TTL: u32 = 120;
/// The lifetime given in answers to a one-shot (legacy unicast) query (RFC 6762 §6.7).
const LEGACY_TTL: u32 = 10;
/// Packets larger than this are not read.
const MAX_PACKET: usize = 9000;
/// The same answer is multicast on an interface at most this often (RFC 6762 §6: once a
/// second per record; a little faster for the first answers to a new receiver's queries).
const ANSWER_EVERY: Duration = Duration::from_millis(250);
/// A unicast answer (to a one-shot query's source, which nothing verifies) is at most this
/// many times the query's size.
const MAX_UNICAST_GAIN: usize = 2;
/// Unicast answers to one source address: at most one per this interval.
const UNICAST_EVERY: Duration = Duration::from_millis(250);
/// Unicast answers in all (many spoofed sources): at most this many per second.
const UNICAST_PER_SECOND: u32 = 32;
/// Sources remembered for the unicast rate limit.
const UNICAST_SOURCES: usize = 256;

/// A holder's DNS-SD names, random per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `dd-<16 hex>`.
    pub label: String,
}

impl Names {
    pub fn random() -> Names {
        let bytes: [u8; 8] = random_array();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Names {
            label: format!("dd-{hex}"),
        }
    }

    pub fn instance(&self, service: &str) -> String {
        format!("{}.{service}", self.label)
    }

    pub fn host(&self) -> String {
        format!("{}.local", self.label)
    }
}

/// What a holder publishes: the same as its beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: PeerId,
    pub port: u16,
    pub generation: u64,
}

/// A holder found in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: PeerId,
    pub port: u16,
    pub generation: u64,
    /// A goodbye (TTL 0): the holder is leaving.
    pub goodbye: bool,
}

fn same_name(a: &Name, b: &str) -> bool {
    a.to_string()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A PTR query for `service`, as sent to the group.
pub fn query(service: &str) -> Vec<u8> {
    let mut p = Packet::new_query(0);
    p.questions.push(Question::new(
        Name::new_unchecked(service),
        QTYPE::TYPE(TYPE::PTR),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec_compressed().expect("a query builds")
}

/// The records of a holder; `which` picks them: PTR, SRV, TXT, addresses.
struct Records<'a> {
    service: &'a str,
    p: &'a Published,
    addrs: &'a [IpAddr],
    ttl: u32,
}

impl Records<'_> {
    fn ptr(&self, instance: &str) -> ResourceRecord<'static> {
        ResourceRecord::new(
            Name::new_unchecked(self.service).into_owned(),
            CLASS::IN,
            self.ttl,
            RData::PTR(PTR(Name::new_unchecked(instance).into_owned())),
        )
        .into_owned()
    }

    fn srv(&self, instance: &str, host: &str) -> ResourceRecord<'static> {
        ResourceRecord::new(
            Name::new_unchecked(instance).into_owned(),
            CLASS::IN,
            self.ttl,
            RData::SRV(SRV {
                priority: 0,
                weight: 0,
                port: self.p.port,
                target: Name::new_unchecked(host).into_owned(),
            }),
        )
        .with_cache_flush(true)
        .into_owned()
    }

    fn txt(&self, instance: &str) -> ResourceRecord<'static> {
        let mut txt = TXT::new();
        for s in [
            format!("v={VERSION}"),
            format!("id={}", hex(&self.p.id.0)),
            format!("g={}", self.p.generation),
        ] {
            txt.add_char_string(
                s.try_into()
                    .map(|c: simple_dns::CharacterString| c.into_owned())
                    .expect("short TXT strings"),
            );
        }
        ResourceRecord::new(
            Name::new_unchecked(instance).into_owned(),
            CLASS::IN,
            self.ttl,
            RData::TXT(txt.into_owned()),
        )
        .with_cache_flush(true)
        .into_owned()
    }

    fn addresses(&self, host: &str, want: Option<TYPE>) -> Vec<ResourceRecord<'static>> {
        self.addrs
            .iter()
            .filter_map(|ip| {
                let rdata = match ip {
                    IpAddr::V4(v4) if want.is_none_or(|t| t == TYPE::A) => RData::A(A::from(*v4)),
                    IpAddr::V6(v6) if want.is_none_or(|t| t == TYPE::AAAA) => {
                        RData::AAAA(AAAA::from(*v6))
                    }
                    _ => return None,
                };
                Some(
                    ResourceRecord::new(
                        Name::new_unchecked(host).into_owned(),
                        CLASS::IN,
                        self.ttl,
                        rdata,
                    )
                    .with_cache_flush(true)
                    .into_owned(),
                )
            })
            .collect()
    }
}

/// An unsolicited announcement of every record of `service` (a goodbye when `goodbye`: TTL 0),
/// with `addrs` the interface's addresses.
pub fn announcement(
    service: &str,
    names: &Names,
    p: &Published,
    addrs: &[IpAddr],
    goodbye: bool,
) -> Vec<u8> {
    let (instance, host) = (names.instance(service), names.host());
    let r = Records {
        service,
        p,
        addrs,
        ttl: if goodbye { 0 } else { TTL },
    };
    let mut out = Packet::new_reply(0);
    out.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    out.answers.push(r.ptr(&instance));
    out.answers.push(r.srv(&instance, &host));
    out.answers.push(r.txt(&instance));
    out.answers.extend(r.addresses(&host, None));
    out.build_bytes_vec_compressed()
        .expect("an announcement builds")
}

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// To the group, on the interface asked on.
    Multicast,
    /// To the asker only: a one-shot query from a port other than 5353 (RFC 6762 §6.7).
    Unicast,
}

/// The answer to a query, if it asks for any of our records: `None` for responses, garbage and
/// questions about other names. `addrs` are the addresses of the interface the query came on.
pub fn respond(
    service: &str,
    query: &[u8],
    from_port: u16,
    names: &Names,
    p: &Published,
    addrs: &[IpAddr],
) -> Option<(Vec<u8>, Reply)> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let legacy = from_port != PORT;
    let (instance, host) = (names.instance(service), names.host());
    let r = Records {
        service,
        p,
        addrs,
        ttl: if legacy { LEGACY_TTL } else { TTL },
    };
    // Known-answer suppression (RFC 6762 §7.1): an asker that already holds our PTR with more
    // than half its lifetime left does not need it again.
    let known_ptr = q.answers.iter().any(|a| {
        same_name(&a.name, service)
            && a.ttl > TTL / 2
            && matches!(&a.rdata, RData::PTR(PTR(n)) if same_name(n, &instance))
    });
    let mut out = Packet::new_reply(if legacy { q.id() } else { 0 });
    out.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    // Each record is answered once however often it is asked for (a query repeating one
    // question must not multiply the answer), and each question is echoed once.
    #[derive(Default)]
    struct Given {
        ptr: bool,
        services: bool,
        srv: bool,
        txt: bool,
        a: bool,
        aaaa: bool,
    }
    let mut given = Given::default();
    let mut with_records = false;
    let mut echoed: Vec<(String, QTYPE)> = Vec::new();
    for question in &q.questions {
        let t = question.qtype;
        let is = |ty: TYPE| t == QTYPE::TYPE(ty) || t == QTYPE::ANY;
        let before = out.answers.len();
        if same_name(&question.qname, service) && is(TYPE::PTR) {
            if !known_ptr && !given.ptr {
                given.ptr = true;
                out.answers.push(r.ptr(&instance));
                with_records = true;
            }
        } else if same_name(&question.qname, SERVICES) && is(TYPE::PTR) {
            if !given.services {
                given.services = true;
                out.answers.push(
                    ResourceRecord::new(
                        Name::new_unchecked(SERVICES),
                        CLASS::IN,
                        r.ttl,
                        RData::PTR(PTR(Name::new_unchecked(service))),
                    )
                    .into_owned(),
                );
            }
        } else if same_name(&question.qname, &instance) {
            if is(TYPE::SRV) && !given.srv {
                given.srv = true;
                out.answers.push(r.srv(&instance, &host));
            }
            if is(TYPE::TXT) && !given.txt {
                given.txt = true;
                out.answers.push(r.txt(&instance));
            }
            with_records = true;
        } else if same_name(&question.qname, &host) {
            let want = match t {
                QTYPE::TYPE(TYPE::A) => Some(TYPE::A),
                QTYPE::TYPE(TYPE::AAAA) => Some(TYPE::AAAA),
                QTYPE::ANY => None,
                _ => continue,
            };
            let a = want.is_none_or(|w| w == TYPE::A) && !given.a;
            let aaaa = want.is_none_or(|w| w == TYPE::AAAA) && !given.aaaa;
            given.a |= a;
            given.aaaa |= aaaa;
            out.answers.extend(
                r.addresses(&host, None)
                    .into_iter()
                    .filter(|rr| match rr.rdata {
                        RData::A(_) => a,
                        RData::AAAA(_) => aaaa,
                        _ => false,
                    }),
            );
        } else {
            continue;
        }
        if legacy && out.answers.len() > before {
            let key = (question.qname.to_string().to_ascii_lowercase(), t);
            if !echoed.contains(&key) {
                echoed.push(key);
                out.questions.push(question.clone());
            }
        }
    }
    if out.answers.is_empty() {
        return None;
    }
    if with_records {
        // What a browser needs next, so one packet resolves the instance (RFC 6763 §12).
        if !given.srv {
            out.additional_records.push(r.srv(&instance, &host));
        }
        if !given.txt {
            out.additional_records.push(r.txt(&instance));
        }
        out.additional_records
            .extend(
                r.addresses(&host, None)
                    .into_iter()
                    .filter(|rr| match rr.rdata {
                        RData::A(_) => !given.a,
                        RData::AAAA(_) => !given.aaaa,
                        _ => false,
                    }),
            );
    }
    if !legacy {
        // Multicast answers go to the group on the link they were asked on (rate-limited
        // there), never to the asker's (spoofable) address.
        return Some((out.build_bytes_vec_compressed().ok()?, Reply::Multicast));
    }
    // A one-shot query's answer goes to its source address, which nothing verifies: never
    // more than twice the query's size, so a spoofed query is no amplifier. What does not fit
    // is left out, additional records first, then answers from the end.
    let cap = query.len().saturating_mul(MAX_UNICAST_GAIN);
    loop {
        let bytes = out.build_bytes_vec_compressed().ok()?;
        if bytes.len() <= cap {
            return Some((bytes, Reply::Unicast));
        }
        if out.additional_records.pop().is_none() {
            out.answers.pop();
            if out.answers.is_empty() {
                return None;
            }
        }
    }
}

/// The instances of `service` a response names: each with its SRV port and a TXT of our version,
/// id and generation, in the same packet. Anything else (queries, other services, other
/// versions, malformed records) is left out.
pub fn parse(service: &str, packet: &[u8]) -> Vec<Found> {
    let Ok(p) = Packet::parse(packet) else {
        return Vec::new();
    };
    if !p.has_flags(PacketFlag::RESPONSE) {
        return Vec::new();
    }
    let records: Vec<&ResourceRecord> = p.answers.iter().chain(&p.additional_records).collect();
    let service = service.to_ascii_lowercase();
    // Instances of the service, by name: (port, ttl) from SRV, then the TXT fields.
    let mut ports: HashMap<String, (u16, u32)> = HashMap::new();
    for r in &records {
        if let RData::SRV(srv) = &r.rdata {
            let name = r
                .name
                .to_string()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if name.ends_with(&format!(".{service}")) && srv.port != 0 {
                ports.insert(name, (srv.port, r.ttl));
            }
        }
    }
    let mut found = Vec::new();
    for r in &records {
        let RData::TXT(txt) = &r.rdata else { continue };
        let name = r
            .name
            .to_string()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let Some(&(port, srv_ttl)) = ports.get(&name) else {
            continue;
        };
        let attrs = txt.attributes();
        let field = |k: &str| attrs.get(k).and_then(|v| v.as_deref());
        if field("v") != Some(&VERSION.to_string()) {
            continue;
        }
        let Some(id) = field("id").and_then(parse_id) else {
            continue;
        };
        let Some(generation) = field("g").and_then(|g| g.parse().ok()) else {
            continue;
        };
        found.push(Found {
            id,
            port,
            generation,
            goodbye: r.ttl == 0 || srv_ttl == 0,
        });
    }
    found
}

fn parse_id(text: &str) -> Option<PeerId> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(PeerId(id))
}

/// The interfaces mDNS runs on: the chosen ones that are not loopback (peers on this host are
/// reached by the loopback broadcast) and have an address of the family.
fn mdns_interfaces(chosen: &[NetInterface]) -> Vec<NetInterface> {
    chosen
        .iter()
        .filter(|i| !i.loopback && i.up && !i.point_to_point)
        .cloned()
        .collect()
}

/// The mDNS sockets of one process, joined to the group on the chosen interfaces only.
pub struct Mdns {
    service: &'static str,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    interfaces: Vec<NetInterface>,
    names: Names,
    state: Mutex<State>,
    /// Setting the outgoing interface and sending are one step.
    send: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    published: Option<Published>,
    /// The generation announced last, when, and how many times.
    announced: Option<(u64, Instant, u8)>,
    /// When each interface last got an answer (rate limit).
    answered: HashMap<(u32, bool), Instant>,
    unicast: UnicastLimit,
}

/// The rate limit on unicast answers: one per [`UNICAST_EVERY`] to each source address, and
/// [`UNICAST_PER_SECOND`] in all, with at most [`UNICAST_SOURCES`] sources remembered (when
/// full and none is old enough to forget, no new source is answered).
#[derive(Debug, Default)]
struct UnicastLimit {
    last: HashMap<IpAddr, Instant>,
    /// The current one-second window: when it began, and the answers in it.
    window: Option<(Instant, u32)>,
}

impl UnicastLimit {
    /// Whether an answer to `ip` may go now (and if so, counts it).
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self
            .last
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < UNICAST_EVERY)
        {
            return false;
        }
        let (began, count) = match self.window {
            Some((began, n)) if now.duration_since(began) < Duration::from_secs(1) => (began, n),
            _ => (now, 0),
        };
        if count >= UNICAST_PER_SECOND {
            return false;
        }
        if self.last.len() >= UNICAST_SOURCES && !self.last.contains_key(&ip) {
            self.last
                .retain(|_, t| now.duration_since(*t) < UNICAST_EVERY);
            if self.last.len() >= UNICAST_SOURCES {
                return false;
            }
        }
        self.last.insert(ip, now);
        self.window = Some((began, count + 1));
        true
    }
}

fn mdns_socket(v6: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, addr) = if v6 {
        (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
        )
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Other responders on the host (avahi, Bonjour, other deaddrop processes) share the port.
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true)?;
    if v6 {
        s.set_only_v6(true)?;
        s.set_multicast_hops_v6(255)?;
        s.set_multicast_loop_v6(true)?;
    } else {
        s.set_multicast_ttl_v4(255)?;
        s.set_multicast_loop_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

impl Mdns {
    /// Opens the mDNS sockets for `service` and joins the group on each of `chosen`'s eligible
    /// interfaces. `None` if there is none, or no socket could be had (the path is then simply
    /// absent).
    pub fn start(service: &'static str, chosen: &[NetInterface]) -> Option<Mdns> {
        let interfaces = mdns_interfaces(chosen);
        if interfaces.is_empty() {
            return None;
        }
        let open = |v6: bool| -> Option<UdpSocket> {
            let wanted = interfaces.iter().any(|i| {
                if v6 {
                    !i.v6.is_empty() && i.index != 0
                } else {
                    !i.v4.is_empty()
                }
            });
            if !wanted {
                return None;
            }
            let s = match mdns_socket(v6) {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!("no mDNS socket (IPv{}): {e}", if v6 { 6 } else { 4 });
                    return None;
                }
            };
            let mut joined = 0;
            for i in &interfaces {
                let r = if v6 {
                    if i.v6.is_empty() {
                        continue;
                    }
                    s.join_multicast_v6(&GROUP_V6, i.index)
                } else {
                    let Some(a) = i.v4.first() else { continue };
                    s.join_multicast_v4(&GROUP_V4, &a.ip)
                };
                match r {
                    Ok(()) => joined += 1,
                    Err(e) => tracing::debug!("mDNS: cannot join on {}: {e}", i.name),
                }
            }
            (joined > 0)
                .then(|| UdpSocket::from_std(s.into()).ok())
                .flatten()
        };
        let (v4, v6) = (open(false), open(true));
        if v4.is_none() && v6.is_none() {
            return None;
        }
        Some(Mdns {
            service,
            v4,
            v6,
            interfaces,
            names: Names::random(),
            state: Mutex::new(State::default()),
            send: tokio::sync::Mutex::new(()),
        })
    }

    /// The interfaces it runs on, and for each whether it has IPv4 and IPv6.
    pub fn paths(&self) -> Vec<(String, bool, bool)> {
        self.interfaces
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    self.v4.is_some() && !i.v4.is_empty(),
                    self.v6.is_some() && !i.v6.is_empty(),
                )
            })
            .collect()
    }

    pub fn socket(&self, v6: bool) -> Option<&UdpSocket> {
        if v6 {
            self.v6.as_ref()
        } else {
            self.v4.as_ref()
        }
    }

    fn addrs_of(i: &NetInterface) -> Vec<IpAddr> {
        i.addresses().collect()
    }

    async fn multicast(&self, i: &NetInterface, v6: bool, bytes: &[u8]) {
        let _one_at_a_time = self.send.lock().await;
        let (socket, to) = if v6 {
            (&self.v6, SocketAddr::from((GROUP_V6, PORT)))
        } else {
            (&self.v4, SocketAddr::from((GROUP_V4, PORT)))
        };
        let Some(socket) = socket else { return };
        let sock = socket2::SockRef::from(socket);
        let set = if v6 {
            if i.v6.is_empty() {
                return;
            }
            sock.set_multicast_if_v6(i.index)
        } else {
            let Some(a) = i.v4.first() else { return };
            sock.set_multicast_if_v4(&a.ip)
        };
        if let Err(e) = set {
            tracing::debug!("mDNS: cannot send on {}: {e}", i.name);
            return;
        }
        if let Err(e) = socket.send_to(bytes, to).await {
            tracing::debug!("mDNS: send on {} failed: {e}", i.name);
        }
    }

    /// Sends `bytes` to the group on every interface, both families.
    async fn multicast_all(&self, bytes: impl Fn(&NetInterface) -> Vec<u8>) {
        for i in &self.interfaces {
            let b = bytes(i);
            self.multicast(i, false, &b).await;
            self.multicast(i, true, &b).await;
        }
    }

    /// Asks every interface for holders.
    pub async fn query(&self) {
        let q = query(self.service);
        self.multicast_all(|_| q.clone()).await;
    }

    /// Publishes (or updates) what this holder offers, and announces it when it changed, then
    /// once more about a second later (RFC 6762 §8.3), at most every 250 ms. Call it often (the
    /// holder's announcement schedule does); it sends only when something is due.
    pub async fn publish(&self, p: Published) {
        let now = Instant::now();
        let due = {
            let mut st = self.state.lock().expect("mdns state");
            st.published = Some(p);
            let due = match st.announced {
                None => true,
                Some((g, at, _)) if g != p.generation => {
                    now.duration_since(at) >= Duration::from_millis(250)
                }
                Some((_, at, times)) => {
                    times < 2 && now.duration_since(at) >= Duration::from_millis(900)
                }
            };
            if due {
                let times = match st.announced {
                    Some((g, _, times)) if g == p.generation => times + 1,
                    _ => 1,
                };
                st.announced = Some((p.generation, now, times));
            }
            due
        };
        if due {
            let names = self.names.clone();
            let service = self.service;
            self.multicast_all(|i| announcement(service, &names, &p, &Self::addrs_of(i), false))
                .await;
        }
    }

    /// Handles one packet from `src` (on the v6 socket if `v6`): answers a query about our
    /// records, and returns the holders a response names.
    pub async fn handle(&self, packet: &[u8], src: SocketAddr, v6: bool) -> Vec<Found> {
        let Some(i) = self
            .interfaces
            .iter()
            .find(|i| i.reaches(super::canonical(src.ip()), super::scope_id(src)))
        else {
            // Not from a network we use.
            return Vec::new();
        };
        let published = self.state.lock().expect("mdns state").published;
        if let Some(p) = published
            && let Some((answer, how)) = respond(
                self.service,
                packet,
                src.port(),
                &self.names,
                &p,
                &Self::addrs_of(i),
            )
        {
            match how {
                Reply::Unicast => {
                    let allowed = {
                        let mut st = self.state.lock().expect("mdns state");
                        st.unicast.allow(src.ip(), Instant::now())
                    };
                    let socket = if v6 { &self.v6 } else { &self.v4 };
                    if let Some(s) = socket.as_ref().filter(|_| allowed) {
                        let _ = s.send_to(&answer, src).await;
                    }
                }
                Reply::Multicast => {
                    let now = Instant::now();
                    let allowed = {
                        let mut st = self.state.lock().expect("mdns state");
                        let last = st
                            .answered
                            .entry((i.index, v6))
                            .or_insert(now - ANSWER_EVERY);
                        let allowed = now.duration_since(*last) >= ANSWER_EVERY;
                        if allowed {
                            *last = now;
                        }
                        allowed
                    };
                    if allowed {
                        self.multicast(i, v6, &answer).await;
                    }
                }
            }
            return Vec::new();
        }
        parse(self.service, packet)
    }
}

impl Drop for Mdns {
    /// Says goodbye (TTL 0), so browsers forget this holder at once.
    fn drop(&mut self) {
        let Some(p) = self.state.lock().map(|s| s.published).unwrap_or(None) else {
            return;
        };
        for i in &self.interfaces {
            let bytes = announcement(self.service, &self.names, &p, &Self::addrs_of(i), true);
            if let (Some(s), Some(a)) = (&self.v4, i.v4.first()) {
                let sock = socket2::SockRef::from(s);
                if sock.set_multicast_if_v4(&a.ip).is_ok() {
                    let _ = s.try_send_to(&bytes, SocketAddr::from((GROUP_V4, PORT)));
                }
            }
            if let Some(s) = &self.v6
                && !i.v6.is_empty()
            {
                let sock = socket2::SockRef::from(s);
                if sock.set_multicast_if_v6(i.index).is_ok() {
                    let _ = s.try_send_to(&bytes, SocketAddr::from((GROUP_V6, PORT)));
                }
            }
        }
    }
}

/// Reads one packet's worth.
pub const READ_BUFFER: usize = MAX_PACKET;

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Published {
        Published {
            id: PeerId([0xab; 16]),
            port: 41234,
            generation: 77,
        }
    }

    fn addrs() -> Vec<IpAddr> {
        vec!["10.0.0.5".parse().unwrap(), "fe80::5".parse().unwrap()]
    }

    #[test]
    fn an_announcement_carries_only_what_a_beacon_does() {
        let names = Names::random();
        let bytes = announcement(SERVICE, &names, &published(), &addrs(), false);
        let p = Packet::parse(&bytes).unwrap();
        assert!(p.has_flags(PacketFlag::RESPONSE | PacketFlag::AUTHORITATIVE_ANSWER));
        let mut txt = Vec::new();
        for r in &p.answers {
            match &r.rdata {
                RData::PTR(PTR(n)) => assert!(same_name(n, &names.instance(SERVICE))),
                RData::SRV(s) => {
                    assert_eq!(s.port, 41234);
                    assert!(same_name(&s.target, &names.host()));
                }
                RData::TXT(t) => {
                    let mut a: Vec<(String, Option<String>)> = t.attributes().into_iter().collect();
                    a.sort();
                    txt = a;
                }
                RData::A(_) | RData::AAAA(_) => {}
                other => panic!("unexpected record {other:?}"),
            }
        }
        assert_eq!(
            txt,
            [
                ("g".into(), Some("77".into())),
                ("id".into(), Some("ab".repeat(16))),
                ("v".into(), Some("1".into())),
            ]
        );
        // The names are random labels, nothing of the host.
        assert!(names.label.starts_with("dd-") && names.label.len() == 19);
        assert_ne!(names, Names::random());
        assert_eq!(
            parse(SERVICE, &bytes),
            [Found {
                id: PeerId([0xab; 16]),
                port: 41234,
                generation: 77,
                goodbye: false
            }]
        );
        let bye = announcement(SERVICE, &names, &published(), &addrs(), true);
        assert!(parse(SERVICE, &bye)[0].goodbye);
    }

    #[test]
    fn a_browse_query_is_answered_with_everything_needed_to_connect() {
        let names = Names::random();
        let (answer, how) = respond(
            SERVICE,
            &query(SERVICE),
            PORT,
            &names,
            &published(),
            &addrs(),
        )
        .unwrap();
        assert_eq!(how, Reply::Multicast);
        let found = parse(SERVICE, &answer);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].port, found[0].generation), (41234, 77));
        let p = Packet::parse(&answer).unwrap();
        assert_eq!(p.answers.len(), 1, "the PTR");
        assert!(p.additional_records.len() >= 4, "SRV, TXT, A, AAAA");
    }

    #[test]
    fn queries_for_the_instance_the_host_and_the_service_list_are_answered() {
        let names = Names::random();
        for (qname, ty, want) in [
            (names.instance(SERVICE), TYPE::SRV, "SRV"),
            (names.instance(SERVICE), TYPE::TXT, "TXT"),
            (names.host(), TYPE::A, "A"),
            (names.host(), TYPE::AAAA, "AAAA"),
            (SERVICES.to_string(), TYPE::PTR, "PTR"),
        ] {
            let mut q = Packet::new_query(7);
            q.questions.push(Question::new(
                Name::new_unchecked(&qname),
                QTYPE::TYPE(ty),
                QCLASS::CLASS(CLASS::IN),
                true,
            ));
            let bytes = q.build_bytes_vec().unwrap();
            let (answer, _) = respond(SERVICE, &bytes, PORT, &names, &published(), &addrs())
                .unwrap_or_else(|| panic!("{qname} {want} unanswered"));
            let p = Packet::parse(&answer).unwrap();
            assert!(
                p.answers
                    .iter()
                    .all(|a| format!("{:?}", a.rdata).starts_with(want)),
                "{want}: {:?}",
                p.answers
            );
        }
        // Other names get no answer; neither do responses.
        let mut other = Packet::new_query(1);
        other.questions.push(Question::new(
            Name::new_unchecked("_http._tcp.local"),
            QTYPE::TYPE(TYPE::PTR),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let other = other.build_bytes_vec().unwrap();
        assert!(respond(SERVICE, &other, PORT, &names, &published(), &addrs()).is_none());
        let response = announcement(SERVICE, &names, &published(), &addrs(), false);
        assert!(respond(SERVICE, &response, PORT, &names, &published(), &addrs()).is_none());
    }

    #[test]
    fn a_one_shot_query_gets_a_unicast_answer_with_its_id() {
        let names = Names::random();
        let mut q = Packet::new_query(0x4242);
        q.questions.push(Question::new(
            Name::new_unchecked(SERVICE),
            QTYPE::TYPE(TYPE::PTR),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = q.build_bytes_vec().unwrap();
        let (answer, how) =
            respond(SERVICE, &bytes, 40000, &names, &published(), &addrs()).unwrap();
        assert_eq!(how, Reply::Unicast);
        let p = Packet::parse(&answer).unwrap();
        assert_eq!(p.id(), 0x4242);
        assert_eq!(p.questions.len(), 1);
        assert!(p.answers.iter().all(|a| a.ttl == LEGACY_TTL));
    }

    /// A one-shot query (from port 40000) of `questions`, each (name, type).
    fn one_shot(questions: &[(&str, TYPE)]) -> Vec<u8> {
        let mut q = Packet::new_query(7);
        for (name, t) in questions {
            q.questions.push(Question::new(
                Name::new_unchecked(name),
                QTYPE::TYPE(*t),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        q.build_bytes_vec_compressed().unwrap()
    }

    #[test]
    fn regression_a_one_shot_answer_is_at_most_twice_its_query_and_each_record_comes_once() {
        // Review finding (issue 26.3): repeated questions about the instance each added SRV
        // and TXT records, and the unicast answer went to the (spoofable) source: ~4 KB in
        // drew ~64 KB out.
        let names = Names::random();
        let instance = names.instance(SERVICE);
        let mut asked: Vec<(&str, TYPE)> = Vec::new();
        for _ in 0..50 {
            asked.push((&instance, TYPE::SRV));
            asked.push((&instance, TYPE::TXT));
        }
        let query = one_shot(&asked);
        let (answer, how) =
            respond(SERVICE, &query, 40000, &names, &published(), &addrs()).unwrap();
        assert_eq!(how, Reply::Unicast);
        assert!(
            answer.len() <= 2 * query.len(),
            "{} bytes answer {} bytes",
            answer.len(),
            query.len()
        );
        let p = Packet::parse(&answer).unwrap();
        let srv = p
            .answers
            .iter()
            .chain(&p.additional_records)
            .filter(|a| matches!(a.rdata, RData::SRV(_)))
            .count();
        assert_eq!(srv, 1, "{p:?}");
        assert!(
            p.questions.len() <= 2,
            "{} questions echoed",
            p.questions.len()
        );
        // A plain one-shot question about the instance still gets its port.
        let query = one_shot(&[(&instance, TYPE::SRV)]);
        let (answer, _) = respond(SERVICE, &query, 40000, &names, &published(), &addrs()).unwrap();
        assert!(answer.len() <= 2 * query.len());
        let p = Packet::parse(&answer).unwrap();
        assert!(
            p.answers.iter().any(|a| matches!(a.rdata, RData::SRV(_))),
            "{p:?}"
        );
        // A multicast query (from 5353) asking twice is answered once too.
        let bytes = one_shot(&[(SERVICE, TYPE::PTR), (SERVICE, TYPE::PTR)]);
        let (answer, how) = respond(SERVICE, &bytes, PORT, &names, &published(), &addrs()).unwrap();
        assert_eq!(how, Reply::Multicast);
        let p = Packet::parse(&answer).unwrap();
        let ptrs = p
            .answers
            .iter()
            .filter(|a| matches!(a.rdata, RData::PTR(_)))
            .count();
        assert_eq!(ptrs, 1);
    }

    #[test]
    fn unicast_answers_are_limited_per_source_and_in_all() {
        let mut l = UnicastLimit::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0 + Duration::from_millis(100)));
        assert!(l.allow(a, t0 + UNICAST_EVERY));
        // Many sources (spoofed) share one allowance per second.
        let many = (0..100u8)
            .filter(|i| l.allow(IpAddr::from([10, 1, 0, *i]), t0 + UNICAST_EVERY))
            .count();
        assert_eq!(many as u32, UNICAST_PER_SECOND - 2);
        assert!(l.allow(IpAddr::from([10, 1, 1, 1]), t0 + Duration::from_secs(2)));
        assert!(l.last.len() <= UNICAST_SOURCES);
    }

    #[test]
    fn a_known_answer_is_not_repeated() {
        let names = Names::random();
        let mut q = Packet::new_query(0);
        q.questions.push(Question::new(
            Name::new_unchecked(SERVICE),
            QTYPE::TYPE(TYPE::PTR),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.answers.push(
            ResourceRecord::new(
                Name::new_unchecked(SERVICE),
                CLASS::IN,
                TTL,
                RData::PTR(PTR(Name::new_unchecked(&names.instance(SERVICE)))),
            )
            .into_owned(),
        );
        let bytes = q.build_bytes_vec().unwrap();
        assert!(respond(SERVICE, &bytes, PORT, &names, &published(), &addrs()).is_none());
    }

    #[test]
    fn responses_of_other_services_versions_and_garbage_name_no_holder() {
        assert!(parse(SERVICE, b"\x00\x00garbage").is_empty());
        assert!(
            parse(SERVICE, &query(SERVICE)).is_empty(),
            "a query names nobody"
        );
        let names = Names::random();
        let ann = announcement(SERVICE, &names, &published(), &[], false);
        let mut bad = Packet::parse(&ann).unwrap();
        for r in bad.answers.iter_mut() {
            if let RData::TXT(_) = r.rdata {
                let mut t = TXT::new();
                t.add_char_string("v=2".try_into().unwrap());
                t.add_char_string(format!("id={}", "ab".repeat(16)).try_into().unwrap());
                t.add_char_string("g=1".try_into().unwrap());
                r.rdata = RData::TXT(t.into_owned());
            }
        }
        assert!(
            parse(SERVICE, &bad.build_bytes_vec().unwrap()).is_empty(),
            "version 2"
        );
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"0g".repeat(16)), None);
    }
}
