//! `deaddrop doctor`: why devices do or don't see each other, in plain words. It looks at the
//! interfaces, listens and asks on every path for a few seconds, tries the room handshake with
//! each holder if it has the passphrase, and gives findings with fixes. [`run`] builds a
//! [`Report`] (data); the binary renders it as text or JSON.
//!
//! While it runs, a doctor asks on every path (query beacons, mDNS queries) and publishes a
//! `_deaddrop-doctor._udp` DNS-SD record, so two doctors on two hosts see each other and which
//! paths connect them, without posing as holders (nothing connects to a doctor).
//!
//! Anyone can announce ids, so a doctor is bounded like every role: it keeps at most
//! [`MAX_PEERS`] processes (counting the rest), tries the handshake with at most
//! [`MAX_HANDSHAKES`] holder endpoints (one per address and port, addresses taken in turn), each
//! charged to its address's guess budget (the same [`GuessBudget`] as `run`), all within
//! [`HANDSHAKE_TIME`]; holders it skipped are named, with why.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::interfaces::{self, NetInterface, left_out_by_default};
use super::mdns::{self, Mdns, Published};
use super::{Discovery, DiscoveryConfig, Heard, Path, Scope, resolve};
use crate::protocol::id::PeerId;
use crate::protocol::secret::Passphrase;
use crate::session::client::{ClientContext, HolderSession};
use crate::session::limit::{GuessBudget, HeldCharge, Settled};
use crate::session::transport::Timeouts;

/// At most this many processes are kept and shown; the rest are counted in
/// [`Report::not_listed`].
pub const MAX_PEERS: usize = 256;
/// At most this many holder endpoints get the room handshake.
pub const MAX_HANDSHAKES: usize = 16;
/// How many handshakes run at once.
const PARALLEL_HANDSHAKES: usize = 4;
/// Every handshake is done (or given up) within this time after listening ends.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(5);
/// Addresses kept per process (a spoofed id can be announced from anywhere).
const MAX_ADDRESSES: usize = 8;

/// What to check.
#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub discovery: DiscoveryConfig,
    /// How long to listen.
    pub wait: Duration,
    /// With the passphrase, the room handshake is tried with every holder seen.
    pub pass: Option<Passphrase>,
    /// How this process is shown to holders it handshakes with.
    pub name: String,
}

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// This doctor's id (as others see it, first 8 hex digits).
    pub me: String,
    pub wait_ms: u64,
    pub interfaces: Vec<InterfaceReport>,
    pub default_route: Vec<RouteReport>,
    /// The discovery paths in use.
    pub paths: Vec<String>,
    pub seen: Vec<PeerReport>,
    /// Processes heard beyond the [`MAX_PEERS`] kept.
    pub not_listed: usize,
    pub findings: Vec<Finding>,
    /// The room beyond the LAN, when an invite is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wide: Option<crate::wide::room::WideCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InterfaceReport {
    pub name: String,
    pub addresses: Vec<String>,
    pub used: bool,
    /// Why it is not used, if it is not.
    pub left_out: Option<String>,
    pub broadcast: Vec<String>,
    pub mdns_ipv4: bool,
    pub mdns_ipv6: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub interface: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Announces drops (`send-msg`, `send-file`).
    Holder,
    /// Another `deaddrop doctor`.
    Doctor,
    /// Asks for drops (`run`, `list`, `fetch`, or a doctor whose mDNS record did not arrive).
    Asker,
}

/// A deaddrop process heard while listening.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Its random id, first 8 hex digits.
    pub id: String,
    pub role: Role,
    pub addresses: Vec<String>,
    /// The paths it was heard on: broadcast, unicast, mdns-ipv4, mdns-ipv6.
    pub paths: Vec<String>,
    /// The interface it was heard through, if it is on one of ours.
    pub interface: Option<String>,
    /// The room handshake, with the passphrase: "ok, N drops on offer", or why not.
    pub handshake: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Works.
    Ok,
    /// Worth knowing; nothing to do.
    Info,
    /// Something does not work, and there is a fix.
    Problem,
}

/// One conclusion, in plain words, with what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub text: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(level: Level, text: impl Into<String>, fix: Option<&str>) -> Self {
        Finding {
            level,
            text: text.into(),
            fix: fix.map(str::to_owned),
        }
    }
}

/// Interface names of VPN tunnels.
fn is_tunnel(name: &str) -> bool {
    [
        "tun",
        "tap",
        "wg",
        "utun",
        "ppp",
        "ipsec",
        "tailscale",
        "zt",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The default routes (Linux: from /proc/net; elsewhere unknown).
fn default_routes() -> Vec<RouteReport> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
                // The kernel prints the address's four bytes as one native-endian number.
                let gw = u32::from_str_radix(f[2], 16)
                    .ok()
                    .map(|g| Ipv4Addr::from(g.to_ne_bytes()));
                out.push(RouteReport {
                    interface: f[0].to_owned(),
                    gateway: gw.filter(|g| !g.is_unspecified()).map(|g| g.to_string()),
                });
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 10 && f[0] == "0".repeat(32) && f[1] == "00" && f[9] != "lo" {
                let gw = u128::from_str_radix(f[4], 16).ok().map(Ipv6Addr::from);
                out.push(RouteReport {
                    interface: f[9].to_owned(),
                    gateway: gw.filter(|g| !g.is_unspecified()).map(|g| g.to_string()),
                });
            }
        }
    }
    out
}

/// Whether something answers at `gateway` within a second: a TCP connection accepted or refused
/// both prove it is there.
async fn answers(gateway: IpAddr, scope: &Scope) -> bool {
    let to = SocketAddr::new(gateway, 53);
    match crate::session::client::connect_tcp(scope.local_for(to), to, Duration::from_secs(1)).await
    {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[derive(Debug, Default)]
struct Peer {
    role: Option<Role>,
    addresses: Vec<SocketAddr>,
    paths: Vec<String>,
    holder_at: Option<SocketAddr>,
    /// In which order it was first heard.
    order: usize,
}

impl Peer {
    fn heard(&mut self, role: Role, from: SocketAddr, path: &str) {
        self.role = Some(self.role.map_or(role, |r| r.min(role)));
        if self.addresses.len() < MAX_ADDRESSES
            && !self.addresses.iter().any(|a| a.ip() == from.ip())
        {
            self.addresses.push(from);
        }
        if !self.paths.iter().any(|p| p == path) {
            self.paths.push(path.to_owned());
        }
    }
}

fn path_name(path: Path, from: SocketAddr) -> &'static str {
    match path {
        Path::Broadcast => "broadcast",
        Path::Unicast | Path::Forwarded => "unicast",
        Path::Mdns if from.is_ipv4() => "mdns-ipv4",
        Path::Mdns => "mdns-ipv6",
    }
}

fn short(id: PeerId) -> String {
    id.to_string()
}

/// The processes heard, at most [`MAX_PEERS`] of them.
#[derive(Debug, Default)]
struct Peers {
    kept: BTreeMap<PeerId, Peer>,
    /// Ids heard once the table was full.
    dropped: std::collections::HashSet<PeerId>,
}

/// Ids counted beyond the table (each is 16 bytes; the count stays exact up to this many).
const MAX_COUNTED: usize = 65_536;

impl Peers {
    /// The entry for `id`, or `None` when the table is full (the id is counted).
    fn entry(&mut self, id: PeerId) -> Option<&mut Peer> {
        let order = self.kept.len();
        if self.kept.len() >= MAX_PEERS && !self.kept.contains_key(&id) {
            if self.dropped.len() < MAX_COUNTED {
                self.dropped.insert(id);
            }
            return None;
        }
        Some(self.kept.entry(id).or_insert_with(|| Peer {
            order,
            ..Peer::default()
        }))
    }
}

/// Holders to try the handshake with: their ids and where.
type Plan = Vec<(PeerId, SocketAddr)>;

/// The holder endpoints to try the handshake with, in turn: the first one heard at each
/// address, then the second at each, and so on, so that one address announcing many ids or
/// ports cannot push the others out; one try per address and port (fresh ids at one endpoint
/// are one holder). Returns the ids to try, and the ids left out with why.
fn handshake_plan(peers: &BTreeMap<PeerId, Peer>) -> (Plan, Vec<(PeerId, String)>) {
    let mut holders: Vec<(&PeerId, &Peer, SocketAddr)> = peers
        .iter()
        .filter_map(|(id, p)| p.holder_at.map(|at| (id, p, at)))
        .collect();
    holders.sort_by_key(|(_, p, _)| p.order);
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    let mut rank: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut ranked: Vec<(usize, usize, PeerId, SocketAddr)> = Vec::new();
    let mut skipped = Vec::new();
    for (id, p, at) in holders {
        if endpoints.contains(&at) {
            skipped.push((*id, format!("not checked: another id at {at} was")));
            continue;
        }
        endpoints.push(at);
        let r = rank.entry(at.ip()).or_default();
        ranked.push((*r, p.order, *id, at));
        *r += 1;
    }
    ranked.sort();
    let mut plan = Vec::new();
    for (_, _, id, at) in ranked {
        if plan.len() < MAX_HANDSHAKES {
            plan.push((id, at));
        } else {
            skipped.push((
                id,
                format!("not checked: doctor tries at most {MAX_HANDSHAKES} holders"),
            ));
        }
    }
    (plan, skipped)
}

/// Runs the planned handshakes, [`PARALLEL_HANDSHAKES`] at a time, each charged to its
/// address's guess budget, all within [`HANDSHAKE_TIME`].
async fn handshakes(
    pass: &Passphrase,
    name: &str,
    scope: &Scope,
    plan: Plan,
) -> BTreeMap<PeerId, String> {
    let budget = Arc::new(std::sync::Mutex::new(GuessBudget::default()));
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL_HANDSHAKES));
    let deadline = Instant::now() + HANDSHAKE_TIME;
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = BTreeMap::new();
    for (id, at) in plan {
        out.insert(id, "not checked: out of time".to_owned());
        let (budget, gate) = (budget.clone(), gate.clone());
        let (pass, name, scope) = (pass.clone(), name.to_owned(), scope.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let Some(charge) = HeldCharge::start(&budget, at.ip(), std::time::Instant::now())
            else {
                return (
                    id,
                    "not checked: this address's guess budget is spent (as run would hold it)"
                        .to_owned(),
                );
            };
            let (text, how) = handshake(&pass, &name, &scope, at).await;
            charge.settle(how, std::time::Instant::now());
            (id, text)
        });
    }
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok((id, text)))) => {
                out.insert(id, text);
            }
            Ok(Some(Err(_))) => {}
            // All done, or out of time: what is left is aborted (its charge settles as a guess).
            Ok(None) | Err(_) => break,
        }
    }
    tasks.abort_all();
    out
}

/// Runs the checks (a little longer than `cfg.wait`, plus a handshake per holder).
pub async fn run(cfg: DoctorConfig) -> Report {
    let me = PeerId::random();
    let all = interfaces::list().unwrap_or_default();
    let mut findings = Vec::new();
    let default_route = default_routes();
    let scope = match resolve(&cfg.discovery).await {
        Ok(s) => Some(s),
        Err(e) => {
            findings.push(Finding::new(
                Level::Problem,
                e.to_string(),
                Some("name an interface from the list, or one of its addresses"),
            ));
            None
        }
    };
    let discovery = match scope.clone().map(Discovery::bind) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            findings.push(Finding::new(
                Level::Problem,
                e.to_string(),
                Some("another program holds the discovery port: choose another with --port (every device must use the same)"),
            ));
            None
        }
        None => None,
    };
    let doctor_mdns = scope
        .as_ref()
        .and_then(|s| Mdns::start(mdns::DOCTOR_SERVICE, &s.interfaces))
        .map(Arc::new);
    let mut heard = Peers::default();
    if let Some(d) = &discovery {
        listen(me, &cfg, d, doctor_mdns.clone(), &mut heard).await;
    }
    let peers = heard.kept;
    let scope_ref = scope.as_ref();
    let mut checked = BTreeMap::new();
    if let (Some(pass), Some(scope)) = (&cfg.pass, scope_ref) {
        let (plan, skipped) = handshake_plan(&peers);
        checked = handshakes(pass, &cfg.name, scope, plan).await;
        checked.extend(skipped);
    }
    let mut seen: Vec<PeerReport> = Vec::new();
    for (id, p) in &peers {
        let interface = p.addresses.iter().find_map(|a| {
            scope_ref
                .and_then(|s| s.interface_of(*a))
                .map(|i| i.name.clone())
        });
        let handshake = checked.remove(id);
        seen.push(PeerReport {
            id: short(*id),
            role: p.role.unwrap_or(Role::Asker),
            addresses: p.addresses.iter().map(|a| a.ip().to_string()).collect(),
            paths: p.paths.clone(),
            interface,
            handshake,
        });
    }
    let not_listed = heard.dropped.len();
    if not_listed > 0 {
        findings.push(Finding::new(
            Level::Info,
            format!(
                "{not_listed} more process(es) were heard than the {MAX_PEERS} listed: a busy network, or someone announcing many ids"
            ),
            None,
        ));
    }
    let unchecked = seen
        .iter()
        .filter(|p| {
            p.handshake
                .as_deref()
                .is_some_and(|h| h.starts_with("not checked"))
        })
        .count();
    if unchecked > 0 {
        findings.push(Finding::new(
            Level::Info,
            format!(
                "{unchecked} holder(s) not checked with the room handshake (at most {MAX_HANDSHAKES}, one per address and port, held to each address's guess budget, within {} s): see each one's line",
                HANDSHAKE_TIME.as_secs()
            ),
            None,
        ));
    }
    let mdns_paths = discovery.as_ref().map(|d| d.paths()).unwrap_or_default();
    let interfaces_report = report_interfaces(&all, scope_ref, &mdns_paths);
    findings.extend(conclude(&interfaces_report, &default_route, &seen, scope_ref).await);
    Report {
        me: short(me),
        wait_ms: cfg.wait.as_millis() as u64,
        interfaces: interfaces_report,
        default_route,
        paths: mdns_paths,
        seen,
        not_listed,
        findings,
        wide: None,
    }
}

/// Asks on every path every half second, and notes who is heard where, for `cfg.wait`.
async fn listen(
    me: PeerId,
    cfg: &DoctorConfig,
    d: &Discovery,
    doctor_mdns: Option<Arc<Mdns>>,
    peers: &mut Peers,
) {
    let (tx, mut rx) = mpsc::channel::<(mdns::Found, SocketAddr)>(256);
    let mut readers = Vec::new();
    if let Some(m) = &doctor_mdns {
        for v6 in [false, true] {
            if m.socket(v6).is_none() {
                continue;
            }
            let (m, tx) = (m.clone(), tx.clone());
            readers.push(tokio::spawn(async move {
                let socket = m.socket(v6).expect("checked");
                let mut buf = vec![0u8; mdns::READ_BUFFER];
                loop {
                    let Ok((n, src)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    for f in m.handle(&buf[..n], src, v6).await {
                        if tx.send((f, src)).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
    }
    let deadline = Instant::now() + cfg.wait;
    let mut next_ask = Instant::now();
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => break,
            _ = sleep_until(next_ask) => {
                d.query(me).await;
                if let Some(m) = &doctor_mdns {
                    m.publish(Published { id: me, port: d.scope().port, generation: 0 }).await;
                    m.query().await;
                }
                next_ask = Instant::now() + Duration::from_millis(500);
            }
            heard = d.recv() => match heard {
                Heard::Announce { endpoint, id, path, .. } if id != me => {
                    let Some(p) = peers.entry(id) else { continue };
                    p.heard(Role::Holder, endpoint, path_name(path, endpoint));
                    // The handshake goes over IPv4 where the holder was heard on it.
                    if p.holder_at.is_none_or(|a| a.is_ipv6() && endpoint.is_ipv4()) {
                        p.holder_at = Some(endpoint);
                    }
                }
                Heard::Query { id, reply_to, path } if id != me => {
                    if let Some(p) = peers.entry(id) {
                        p.heard(Role::Asker, reply_to, path_name(path, reply_to));
                    }
                }
                _ => {}
            },
            Some((found, src)) = rx.recv() => {
                if found.id != me && !found.goodbye
                    && let Some(p) = peers.entry(found.id)
                {
                    p.heard(Role::Doctor, src, path_name(Path::Mdns, src));
                }
            }
        }
    }
    for r in readers {
        r.abort();
    }
}

/// One room handshake with the holder at `at`: what to show, and how it settles the guess.
async fn handshake(
    pass: &Passphrase,
    name: &str,
    scope: &Scope,
    at: SocketAddr,
) -> (String, Settled) {
    let ctx = ClientContext {
        pass: pass.clone(),
        id: PeerId::random(),
        name: name.to_owned(),
        scope: Arc::new(scope.clone()),
        timeouts: Timeouts::default().for_stranger(),
        wide: None,
        device: None,
    };
    match HolderSession::open(&ctx, at.into(), ctx.timeouts).await {
        Ok(mut hs) => {
            let listed = hs.list().await;
            hs.close().await;
            let text = match listed {
                Ok(drops) => format!("ok, {} drop(s) on offer to us", drops.len()),
                Err(e) => format!("ok, but listing failed: {e}"),
            };
            (text, Settled::Member)
        }
        Err(e) if e.authenticated => (format!("ok, but then: {e}"), Settled::Member),
        Err(e) if e.error.is_rejection() => (REJECTED.into(), Settled::Guessed),
        Err(e) => (format!("could not connect to {at}: {e}"), Settled::NoGuess),
    }
}

const REJECTED: &str = "failed: wrong passphrase (another room), or someone interfered";

fn report_interfaces(
    all: &[NetInterface],
    scope: Option<&Scope>,
    paths: &[String],
) -> Vec<InterfaceReport> {
    all.iter()
        .map(|i| {
            let chosen = scope.and_then(|s| s.interfaces.iter().find(|c| c.name == i.name));
            let mdns_on = |family: &str| {
                paths
                    .iter()
                    .any(|p| p.starts_with(&format!("mDNS on {} (", i.name)) && p.contains(family))
            };
            InterfaceReport {
                name: i.name.clone(),
                addresses: i.addresses().map(|a| a.to_string()).collect(),
                used: chosen.is_some(),
                left_out: match chosen {
                    Some(_) => None,
                    None if scope.is_some_and(|s| s.confined) => {
                        Some("not named by --interface".into())
                    }
                    None => left_out_by_default(i).map(str::to_owned),
                },
                broadcast: chosen
                    .map(|c| {
                        c.v4.iter()
                            .filter_map(|a| a.broadcast)
                            .map(|b| b.to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
                mdns_ipv4: chosen.is_some() && mdns_on("IPv4"),
                mdns_ipv6: chosen.is_some() && mdns_on("IPv6"),
            }
        })
        .collect()
}

/// The findings, from what was seen.
async fn conclude(
    interfaces: &[InterfaceReport],
    routes: &[RouteReport],
    seen: &[PeerReport],
    scope: Option<&Scope>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(scope) = scope else { return out };
    let used: Vec<&InterfaceReport> = interfaces.iter().filter(|i| i.used).collect();
    if used.is_empty() {
        let left: Vec<String> = interfaces
            .iter()
            .filter(|i| !i.addresses.is_empty())
            .map(|i| i.name.clone())
            .collect();
        out.push(Finding::new(
            Level::Problem,
            format!(
                "no network interface is in use (left out: {})",
                left.join(", ")
            ),
            Some("connect to a network, or name an interface with --interface"),
        ));
    }
    let mut tunnels: Vec<&str> = Vec::new();
    for r in routes {
        if is_tunnel(&r.interface)
            && !used.iter().any(|i| i.name == r.interface)
            && !tunnels.contains(&r.interface.as_str())
        {
            tunnels.push(&r.interface);
            let names: Vec<&str> = used.iter().map(|i| i.name.as_str()).collect();
            out.push(Finding::new(
                Level::Info,
                format!(
                    "{} (a VPN tunnel) holds the default route; discovery uses {}",
                    r.interface,
                    if names.is_empty() {
                        "no interface".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
                None,
            ));
        }
    }
    // Per interface: which paths carried what was heard there.
    for i in &used {
        let here: Vec<&PeerReport> = seen
            .iter()
            .filter(|p| p.interface.as_deref() == Some(i.name.as_str()))
            .collect();
        if here.is_empty() {
            continue;
        }
        let on = |path: &str| here.iter().any(|p| p.paths.iter().any(|q| q == path));
        let (bcast, mdns4, mdns6) = (on("broadcast"), on("mdns-ipv4"), on("mdns-ipv6"));
        let mdns = mdns4 || mdns6;
        let text = match (bcast, mdns) {
            (true, true) => format!("broadcast and mDNS both work on {}: nothing to do", i.name),
            (false, true) if !i.broadcast.is_empty() && mdns4 => format!(
                "broadcast does not get through on {} (filtered), but mDNS carries discovery: nothing to do",
                i.name
            ),
            (false, true) => format!("mDNS carries discovery on {}: nothing to do", i.name),
            (true, false) if i.mdns_ipv4 || i.mdns_ipv6 => format!(
                "mDNS does not get through on {}, but broadcast carries discovery: nothing to do",
                i.name
            ),
            (true, false) => format!("broadcast carries discovery on {}: nothing to do", i.name),
            (false, false) => format!(
                "on {} only unicast (--peer) reaches the others: keep --peer",
                i.name
            ),
        };
        out.push(Finding::new(Level::Ok, text, None));
    }
    let unicast_only: Vec<&PeerReport> = seen.iter().filter(|p| p.interface.is_none()).collect();
    if !unicast_only.is_empty() {
        out.push(Finding::new(
            Level::Ok,
            format!(
                "{} process(es) beyond this network reached by unicast (--peer): keep --peer",
                unicast_only.len()
            ),
            None,
        ));
    }
    let handshakes: Vec<&str> = seen.iter().filter_map(|p| p.handshake.as_deref()).collect();
    let rejected = handshakes.iter().filter(|h| **h == REJECTED).count();
    if rejected > 0 && !handshakes.iter().any(|h| h.starts_with("ok")) {
        out.push(Finding::new(
            Level::Problem,
            format!("{rejected} holder(s) answered but none accepted the passphrase"),
            Some("check the room passphrase: every device must use exactly the same one"),
        ));
    }
    if seen.is_empty() && !used.is_empty() {
        let gateway = routes
            .iter()
            .find(|r| used.iter().any(|i| i.name == r.interface))
            .and_then(|r| r.gateway.as_ref())
            .and_then(|g| g.parse::<IpAddr>().ok());
        let finding = match gateway {
            Some(g) if answers(g, scope).await => Finding::new(
                Level::Problem,
                format!(
                    "no other deaddrop answered on any path, while the gateway ({g}) does: the access point probably isolates clients from each other (or no deaddrop runs nearby)"
                ),
                Some(
                    "run deaddrop on the other device too; if it is running, use --peer with the address of a host on a wire (e.g. deaddrop run --peer 192.168.1.20), or turn off client isolation on the access point",
                ),
            ),
            Some(g) => Finding::new(
                Level::Problem,
                format!("no other deaddrop answered, and the gateway ({g}) does not either"),
                Some("check this device's network connection"),
            ),
            None => Finding::new(
                Level::Problem,
                "no other deaddrop answered on any path",
                Some(
                    "start deaddrop (or deaddrop doctor) on the other device; if it is running, the network may isolate clients: use --peer with its address",
                ),
            ),
        };
        out.push(finding);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, used: bool, bcast: bool, m4: bool, m6: bool) -> InterfaceReport {
        InterfaceReport {
            name: name.into(),
            addresses: vec!["10.0.0.1".into()],
            used,
            left_out: None,
            broadcast: if bcast {
                vec!["10.0.0.255".into()]
            } else {
                vec![]
            },
            mdns_ipv4: m4,
            mdns_ipv6: m6,
        }
    }

    fn peer(paths: &[&str], interface: Option<&str>) -> PeerReport {
        PeerReport {
            id: "4a1b2c3d".into(),
            role: Role::Doctor,
            addresses: vec!["10.0.0.2".into()],
            paths: paths.iter().map(|p| p.to_string()).collect(),
            interface: interface.map(str::to_owned),
            handshake: None,
        }
    }

    async fn findings(seen: &[PeerReport], routes: &[RouteReport]) -> Vec<Finding> {
        let scope = Scope::loopback(1);
        conclude(
            &[
                iface("eth0", true, true, true, true),
                iface("docker0", false, false, false, false),
            ],
            routes,
            seen,
            Some(&scope),
        )
        .await
    }

    #[test]
    fn the_handshake_plan_takes_addresses_in_turn_and_each_endpoint_once() {
        let mut heard = Peers::default();
        let mut add = |ip: &str, port: u16| {
            let at: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let id = PeerId::random();
            let p = heard.entry(id).unwrap();
            p.heard(Role::Holder, at, "broadcast");
            p.holder_at = Some(at);
            id
        };
        // An attacker's address announces 40 holders (and one port twice) before a real one.
        let mut flood: Vec<PeerId> = (0..40).map(|i| add("10.0.0.66", 1000 + i)).collect();
        flood.push(add("10.0.0.66", 1000));
        let real = add("10.0.0.2", 48600);
        let (plan, skipped) = handshake_plan(&heard.kept);
        assert_eq!(plan.len(), MAX_HANDSHAKES);
        assert_eq!(plan[1].0, real, "the second address comes second: {plan:?}");
        assert_eq!(skipped.len(), 41 - MAX_HANDSHAKES + 1);
        let again = skipped.iter().find(|(id, _)| *id == flood[40]).unwrap();
        assert!(
            again.1.contains("another id at 10.0.0.66:1000"),
            "{again:?}"
        );
    }

    #[test]
    fn at_most_max_peers_are_kept_and_the_rest_counted() {
        let mut heard = Peers::default();
        for _ in 0..MAX_PEERS + 10 {
            let _ = heard.entry(PeerId::random());
        }
        assert_eq!(heard.kept.len(), MAX_PEERS);
        assert_eq!(heard.dropped.len(), 10);
    }

    #[tokio::test]
    async fn verdicts_name_the_path_that_works() {
        let f = findings(&[peer(&["broadcast", "mdns-ipv4"], Some("eth0"))], &[]).await;
        assert!(f[0].text.contains("both work on eth0"), "{f:?}");
        let f = findings(&[peer(&["mdns-ipv4", "mdns-ipv6"], Some("eth0"))], &[]).await;
        assert!(
            f[0].text.contains("broadcast does not get through on eth0"),
            "{f:?}"
        );
        assert!(f[0].text.contains("mDNS carries discovery"), "{f:?}");
        let f = findings(&[peer(&["broadcast"], Some("eth0"))], &[]).await;
        assert!(f[0].text.contains("mDNS does not get through"), "{f:?}");
        let f = findings(&[peer(&["unicast"], None)], &[]).await;
        assert!(f[0].text.contains("keep --peer"), "{f:?}");
    }

    #[tokio::test]
    async fn nobody_seen_is_a_problem_with_a_fix() {
        let f = findings(&[], &[]).await;
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Problem);
        assert!(f[0].fix.as_ref().unwrap().contains("--peer"), "{f:?}");
    }

    #[tokio::test]
    async fn a_tunnel_with_the_default_route_is_named() {
        let routes = [RouteReport {
            interface: "tun0".into(),
            gateway: None,
        }];
        let f = findings(&[peer(&["broadcast", "mdns-ipv4"], Some("eth0"))], &routes).await;
        assert!(
            f.iter()
                .any(|x| x.text
                    == "tun0 (a VPN tunnel) holds the default route; discovery uses eth0"),
            "{f:?}"
        );
    }
}
