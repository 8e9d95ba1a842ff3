//! A wide-area room: this device's iroh endpoint, the room's meeting point, and sessions over
//! QUIC streams. PROTOCOL.md ("Rooms beyond the LAN") describes the design; in short:
//!
//! - Every member dials the room's **meeting endpoint**, whose key every member derives from
//!   the room id, through the room's relay, from a throwaway relay-only endpoint of its
//!   process. Whoever holds that key answers; the first member online finds nobody and binds
//!   it itself. Over the connection the member runs the room handshake (SPAKE2 with key
//!   confirmation, as on the LAN) before anything else, then proves its device endpoint id
//!   (signed over the session's transcript), says which generation of drops it holds and
//!   long-polls for the member list. Someone holding the meeting key without the passphrase
//!   sees neither the device endpoint id nor an address.
//! - Members reach each other's **device endpoints** (ALPN `deaddrop/1`) for sessions: one
//!   bi-directional stream, the same handshake and records as over TCP. iroh punches holes
//!   where it can and relays where it cannot.
//! - Two members that bound the meeting key at once heal: the relay forwards to the newest,
//!   and a holder of the key checks every [`CHECK_EVERY`] from a fresh endpoint who answers
//!   there; if it is someone else, it lets go.
//! - Members remember the device endpoints of members they met. Long-running members also
//!   answer the meeting ALPN on their device endpoint (a meeting point of their own, listing
//!   themselves and whoever registers). When the room's meeting point fails the room handshake
//!   (someone with the invite but not the passphrase holds the meeting key), members meet at
//!   the members they remember instead.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use iroh::endpoint::{Connection, RecvStream, SendStream, WeakConnectionHandle, presets};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, RelayUrl, SecretKey, Watcher};
use iroh_relay::{RelayConfig, RelayMap, RelayQuicConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::event::Via;
use crate::protocol::id::PeerId;
use crate::protocol::message::{MAX_MEMBERS, Member, Reply, Request, member_proof_message};
use crate::protocol::secret::Passphrase;
use crate::session::limit::{GuessBudget, HeldCharge, Settled, SourceKey};
use crate::session::transport::{self, Session, SessionError, Timeouts};
use crate::wide::config::Peers;
use crate::wide::invite::{Invite, Relay};
use crate::wide::relay::PinnedCert;

/// ALPN of sessions with a member's device endpoint.
pub const ALPN_SESSION: &[u8] = b"deaddrop/1";
/// ALPN of the meeting point.
pub const ALPN_MEET: &[u8] = b"deaddrop/meet/2";
/// Connecting through a relay takes a few round trips more than a LAN connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial to the meeting endpoint may take before this member concludes nobody
/// holds it and may take it itself (a dial through the relay to a holder takes a relay round
/// trip or two: milliseconds on a LAN, a few hundred on slow links). Too short a wait on a
/// slow link only means this process takes the key over: the relay forwards to the newest
/// holder, and the one before it lets go when it notices (see [`keeper`]).
const MEET_NOBODY_AFTER: Duration = Duration::from_millis(800);
/// How long a member goes on dialling the meeting endpoint (one dial every
/// [`MEET_DIAL_EVERY`], the first answer wins) before it starts over.
const MEET_DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// A new dial to the meeting endpoint this often while none answered: once someone binds it,
/// members reach it within this (and at once when this process bound it), not when an earlier
/// dial's retransmission happens to arrive.
const MEET_DIAL_EVERY: Duration = Duration::from_millis(250);
/// Dials to the meeting endpoint in flight at once.
const MEET_DIALS: usize = 4;
/// How long a new endpoint may take to reach the relay before it is used anyway.
const ONLINE_WAIT: Duration = Duration::from_secs(3);
/// After taking the meeting key, a holder first checks this soon (plus up to 0.3 s at
/// random) whether another member took it at the same time.
const CHECK_FIRST: Duration = Duration::from_millis(700);
/// The longest a meeting point holds a member's request before answering.
const MEET_WAIT: Duration = Duration::from_secs(10);
/// A member says it is still here this often, besides whenever its drops change.
const REGISTER_EVERY: Duration = Duration::from_secs(10);
/// A holder of the meeting key checks this often that it is the one the relay forwards to.
pub const CHECK_EVERY: Duration = Duration::from_secs(15);
/// ...and this often in its first minute, when two members that started together may both
/// have taken it.
const CHECK_EVERY_AT_FIRST: Duration = Duration::from_secs(4);
/// Connections a meeting point serves at once.
const MAX_MEET_CONNECTIONS: usize = 2 * MAX_MEMBERS;
/// Streams (sessions) per connection to the meeting point: one to watch, one to register.
const MEET_STREAMS: usize = 2;
/// How long the relay may take to answer before the user is told it does not.
const RELAY_PATIENCE: Duration = Duration::from_secs(8);
/// QUIC handshakes on the device endpoint at once; more incoming connections are refused.
const MAX_INCOMING: usize = 64;
/// Streams a peer may have open at once on one connection: a session is one stream, and a
/// meeting connection two ([`MEET_STREAMS`]). No unidirectional streams.
const MAX_STREAMS: u32 = MEET_STREAMS as u32;
/// Bytes a peer may have in flight on one stream (QUIC's default: 100 Mbit/s at 100 ms).
const STREAM_WINDOW: u32 = 1_250_000;
/// ...and on a whole connection: a session uses one stream at a time, so one stream's window
/// and a little. A connection that never authenticates buffers at most this much until it is
/// closed (QUIC's default is unlimited).
const CONNECTION_WINDOW: u32 = STREAM_WINDOW + 64 * 1024;
/// After a meeting point failed the passphrase check, dial it again after this long, doubling
/// up to ten minutes: a squatter on the meeting key gets no guess oracle.
const REJECTED_BACKOFF_FIRST: Duration = Duration::from_secs(30);
const REJECTED_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Members remembered that are dialled at once when the room's meeting point fails the room
/// handshake.
const PEER_POINTS: usize = 8;
/// A remembered member that did not answer is dialled again after this long.
const PEER_RETRY: Duration = Duration::from_secs(10);
/// ...and one that failed the room handshake (the passphrase changed) after this long.
const PEER_REJECTED_RETRY: Duration = Duration::from_secs(120);
/// How long leaving the room may hold up a process's exit.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// How often an endpoint's connection to the room's relay is looked at.
const RELAY_POLL: Duration = Duration::from_secs(2);
/// An endpoint that was connected to the relay and has been without it this long is bound
/// anew as soon as the relay accepts connections again: iroh retries a lost relay on a backoff
/// that grows to 16 s plus as much jitter, which nothing outside it can cut short, while a
/// new endpoint connects at once.
const REBIND_AFTER: Duration = Duration::from_secs(3);
/// ...and one that never reached the relay, this long (doubling, up to `REBIND_AFTER_MAX`, for
/// each endpoint in a row that never reaches it: a relay that takes TCP connections but not
/// ours is not hammered).
const REBIND_AFTER_UNCONNECTED: Duration = Duration::from_secs(10);
const REBIND_AFTER_MAX: Duration = Duration::from_secs(300);
/// A session connection that can only go through the room's relay is closed once its endpoint
/// has been without the relay this long: nothing can arrive, and the fetch says so (resumable)
/// at once instead of after QUIC's idle timeout of 30 s.
const RELAY_LOST: Duration = Duration::from_secs(5);
/// The QUIC application close code of a connection closed for that.
const CLOSE_RELAY_LOST: u32 = 1;
/// How long the check that the relay accepts connections again may take.
const RELAY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a wide-area room starts.
#[derive(Debug, Clone)]
pub struct WideOptions {
    pub invite: Invite,
    /// This device's endpoint secret key (kept in the config folder).
    pub device_key: [u8; 32],
    /// Addresses to bind the endpoint's UDP sockets to (confinement); empty: every address.
    pub bind: Vec<IpAddr>,
    /// This process's id in room handshakes: the one its LAN beacons carry (a holder's id, or
    /// a receiver's), so receivers on the LAN can tell it is the same process.
    pub me: PeerId,
    /// Where the members this device met in the room are kept ([`Peers`]); `None`: in memory
    /// only.
    pub peers_file: Option<PathBuf>,
    /// Whether this process may hold the room's meeting point when nobody does: yes for the
    /// long-running `run` and `send-*`, no for `list` and `fetch`, which come and go.
    pub may_host: bool,
    pub timeouts: Timeouts,
}

/// The path a connection uses now.
pub fn via(conn: &Connection) -> Via {
    let paths = conn.paths();
    let selected = paths.iter().find(|p| p.is_selected());
    match selected {
        Some(p) if p.is_ip() => Via::Direct,
        _ => Via::Relayed,
    }
}

/// A session stream to a member: one QUIC bi-directional stream, with its connection kept
/// open as long as the stream is used.
pub struct WideLink {
    conn: Connection,
    io: tokio::io::Join<RecvStream, SendStream>,
}

impl WideLink {
    pub fn new(conn: Connection, send: SendStream, recv: RecvStream) -> Self {
        WideLink {
            conn,
            io: tokio::io::join(recv, send),
        }
    }

    pub fn via(&self) -> Via {
        via(&self.conn)
    }

    /// What tells the path at any later time (it changes when a hole is punched).
    pub fn via_now(&self) -> impl Fn() -> Via + Send + Sync + 'static {
        let conn = self.conn.clone();
        move || via(&conn)
    }

    pub fn remote(&self) -> [u8; 32] {
        *self.conn.remote_id().as_bytes()
    }
}

impl AsyncRead for WideLink {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WideLink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A running wide-area room. Dropping the last handle stops its tasks.
pub struct WideRoom {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    incoming: Mutex<Option<mpsc::Receiver<Connection>>>,
}

impl std::fmt::Debug for WideRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WideRoom")
            .field("id", &self.inner.id.fmt_short().to_string())
            .finish_non_exhaustive()
    }
}

impl Drop for WideRoom {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let endpoint = self.inner.endpoint();
        let meet = self.inner.meet_endpoint();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { tokio::join!(endpoint.close(), meet.close()) });
        }
    }
}

struct Inner {
    /// This device's endpoint: replaced by a new one with the same key when the relay comes
    /// back after an outage (see [`REBIND_AFTER`]).
    endpoint: watch::Sender<Endpoint>,
    /// Its id (the same for every endpoint bound with the device key).
    id: EndpointId,
    /// The endpoint this process dials meeting points from: a fresh key, relay only, so that
    /// a meeting point learns this device's endpoint id (in [`Request::Member`]) only after
    /// the room handshake, and never an address. Bound anew (a new key) with the device
    /// endpoint.
    meet: watch::Sender<Endpoint>,
    /// The ALPNs the device endpoint answers.
    alpns: Vec<Vec<u8>>,
    /// The session connections on the device endpoint (dialled or accepted), to tell whether
    /// one is open on a direct path.
    sessions: Mutex<Vec<WeakConnectionHandle>>,
    opts: WideOptions,
    pass: Passphrase,
    /// This process's id in room handshakes over the wide-area path.
    me: PeerId,
    meeting: EndpointAddr,
    /// The members every meeting point this process is at lists, this device left out.
    members: watch::Sender<Arc<Vec<Member>>>,
    /// Each meeting point's list, by where it came from; `members` is their union.
    lists: Mutex<BTreeMap<Source, Vec<Member>>>,
    /// The members this device met in the room.
    peers: Mutex<Peers>,
    /// This process's own meeting point on its device endpoint (long-running members only).
    personal: Option<Arc<watch::Sender<Table>>>,
    /// The generation of drops this process holds, if it holds any.
    generation: watch::Sender<Option<u64>>,
    /// The meeting point this process is registered with (its handshake id), if any.
    at_meeting: watch::Sender<Option<PeerId>>,
    /// Dials to the meeting endpoint that nobody answered, in a row.
    unanswered: watch::Sender<u32>,
    /// The last meeting point reached failed the passphrase check.
    rejected: watch::Sender<bool>,
    /// The meeting endpoint, while this process holds it (closed with the device endpoint
    /// when the process exits).
    held: Mutex<Option<Endpoint>>,
    /// How many times this process bound the meeting endpoint (members dialling it dial at
    /// once when it changes).
    bound: watch::Sender<u64>,
    /// Guesses at meeting points, both as the one dialling and as the one holding it.
    budget: Mutex<GuessBudget>,
}

impl Inner {
    /// This device's endpoint now.
    fn endpoint(&self) -> Endpoint {
        self.endpoint.borrow().clone()
    }

    /// The endpoint meeting points are dialled from now.
    fn meet_endpoint(&self) -> Endpoint {
        self.meet.borrow().clone()
    }

    /// Keeps an eye on session connection `conn`: remembered (see `direct_session_open`), and
    /// closed when it can only go through the room's relay and that is gone (see
    /// [`RELAY_LOST`]).
    fn track(&self, conn: &Connection) {
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            sessions.retain(|w| w.upgrade().is_some_and(|c| c.close_reason().is_none()));
            sessions.push(conn.weak_handle());
        }
        // With iroh's public relays a connection may go through another relay than this
        // endpoint's home relay: left to QUIC's idle timeout.
        if matches!(self.opts.invite.relay, Relay::Url { .. }) {
            tokio::spawn(close_when_relay_lost(self.endpoint(), conn.weak_handle()));
        }
    }

    /// Whether a session is open on a direct path (which works without the relay: binding
    /// the endpoint anew would cut it).
    fn direct_session_open(&self) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter_map(WeakConnectionHandle::upgrade)
            .any(|c| c.close_reason().is_none() && via(&c) == Via::Direct)
    }
}

fn relay_url(invite: &Invite) -> io::Result<Option<RelayUrl>> {
    match &invite.relay {
        Relay::Public => Ok(None),
        Relay::Url { url, .. } => url
            .parse()
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}"))),
    }
}

/// Binds an endpoint with `key`, for the room's relay, answering `alpns`.
async fn bind(opts: &WideOptions, key: SecretKey, alpns: Vec<Vec<u8>>) -> io::Result<Endpoint> {
    endpoint(&opts.invite, &opts.bind, key, alpns).await
}

/// An iroh endpoint as a room uses it: `key`, the invite's relay (its certificate pinned) or,
/// when the invite asks for them, iroh's public relays; no port mapping; its UDP sockets on
/// `bind` (empty: every address). Public so that the benchmark's iroh floor program
/// (`examples/iroh_floor.rs`) measures the same engine setup.
pub async fn endpoint(
    invite: &Invite,
    bind: &[IpAddr],
    key: SecretKey,
    alpns: Vec<Vec<u8>>,
) -> io::Result<Endpoint> {
    let mut builder = builder(invite, key, alpns)?;
    if !bind.is_empty() {
        builder = builder.clear_ip_transports();
        for ip in bind {
            builder = builder
                .bind_addr(SocketAddr::new(*ip, 0))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
    }
    finish_bind(builder).await
}

/// A throwaway endpoint (a fresh key, answering nothing) that reaches others only through the
/// relay: no UDP socket of its own, so whoever it dials learns no address of this host.
async fn relay_only(invite: &Invite) -> io::Result<Endpoint> {
    relay_only_with(invite, SecretKey::generate(), Vec::new()).await
}

/// An endpoint with `key` answering `alpns` through the relay only (no UDP socket): it learns
/// and tells no address, and it is at the relay as soon as it has connected there (no
/// address probes first).
async fn relay_only_with(
    invite: &Invite,
    key: SecretKey,
    alpns: Vec<Vec<u8>>,
) -> io::Result<Endpoint> {
    let builder = builder(invite, key, alpns)?.clear_ip_transports();
    finish_bind(builder).await
}

async fn finish_bind(builder: iroh::endpoint::Builder) -> io::Result<Endpoint> {
    builder
        .bind()
        .await
        .map_err(|e| io::Error::other(format!("cannot start the wide-area endpoint: {e}")))
}

/// An endpoint builder for the invite's relay with `key`, answering `alpns`.
fn builder(
    invite: &Invite,
    key: SecretKey,
    alpns: Vec<Vec<u8>>,
) -> io::Result<iroh::endpoint::Builder> {
    let builder = match &invite.relay {
        // Asked for: iroh's public relays, and its DNS lookup to find endpoints' relays.
        Relay::Public => Endpoint::builder(presets::N0),
        Relay::Url { url, pin } => {
            let url: RelayUrl = url
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}")))?;
            let port = url.port().unwrap_or(443);
            let map = RelayMap::from(RelayConfig::new(url, Some(RelayQuicConfig::new(port))));
            // No captive-portal check: on the first report it holds up choosing the relay
            // (and so being reachable there) by 200 ms, and this relay is the room's own.
            let mut report = iroh::endpoint::NetReportConfig::default();
            report.captive_portal_check = false;
            let mut b = Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Custom(map))
                .net_report_config(report);
            if let Some(pin) = *pin {
                b = b.ca_tls_config(iroh_relay::tls::CaTlsConfig::custom_server_cert_verifier(
                    Arc::new(move |provider| {
                        Ok(Arc::new(PinnedCert::new(pin, provider))
                            as Arc<dyn rustls::client::danger::ServerCertVerifier>)
                    }),
                ));
            }
            b
        }
    };
    // Bounded before anyone authenticates: what a peer with an endpoint id (which costs
    // nothing) can make this endpoint hold is a couple of streams and one window per
    // connection, not 100 streams of 1.25 MB each.
    let transport = iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .build();
    Ok(builder
        .secret_key(key)
        .alpns(alpns)
        .transport_config(transport)
        .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled))
}

/// The address of the room's meeting point: the meeting key's id and the invite's relay.
fn meeting_addr(invite: &Invite) -> io::Result<EndpointAddr> {
    let id = SecretKey::from_bytes(&invite.room.meeting_secret()).public();
    let mut addr = EndpointAddr::new(id);
    if let Some(url) = relay_url(invite)? {
        addr = addr.with_relay_url(url);
    }
    Ok(addr)
}

/// The room's relay, for people: its URL, or "iroh's public relays".
fn relay_name(invite: &Invite) -> String {
    match &invite.relay {
        Relay::Url { url, .. } => url.clone(),
        Relay::Public => "iroh's public relays".into(),
    }
}

/// Why `endpoint` has no relay connection, as iroh says.
fn relay_error(endpoint: &Endpoint) -> String {
    let statuses = endpoint.home_relay_status().get();
    statuses
        .iter()
        .find_map(|s| s.last_error().map(|e| e.to_string()))
        .unwrap_or_else(|| "no answer".into())
}

/// The address to dial member `id` at: its id and the invite's relay.
pub fn member_addr(invite: &Invite, id: [u8; 32]) -> io::Result<EndpointAddr> {
    let key = EndpointId::from_bytes(&id)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not an endpoint id"))?;
    let mut addr = EndpointAddr::new(key);
    if let Some(url) = relay_url(invite)? {
        addr = addr.with_relay_url(url);
    }
    Ok(addr)
}

impl WideRoom {
    /// Starts this device's endpoint and its membership at the room's meeting point.
    pub async fn start(opts: WideOptions, pass: Passphrase) -> io::Result<Arc<WideRoom>> {
        let mut alpns = vec![ALPN_SESSION.to_vec()];
        if opts.may_host {
            alpns.push(ALPN_MEET.to_vec());
        }
        tracing::debug!("binding the endpoints");
        // Both at once: each connects to the relay as it binds.
        let (endpoint, meet) = tokio::try_join!(
            bind(
                &opts,
                SecretKey::from_bytes(&opts.device_key),
                alpns.clone()
            ),
            relay_only(&opts.invite)
        )?;
        let meeting = meeting_addr(&opts.invite)?;
        let me = opts.me;
        let peers = Peers::load(opts.peers_file.clone(), &opts.invite.bootstrap);
        let personal = opts.may_host.then(|| {
            let mut table = Table::default();
            // Listed for good: only this device's endpoint could register under its id.
            table
                .members
                .insert(*endpoint.id().as_bytes(), (me, None, 1));
            table.version = 1;
            Arc::new(watch::channel(table).0)
        });
        let inner = Arc::new(Inner {
            id: endpoint.id(),
            endpoint: watch::channel(endpoint).0,
            meet: watch::channel(meet).0,
            alpns,
            sessions: Mutex::new(Vec::new()),
            opts,
            pass,
            me,
            meeting,
            members: watch::channel(Arc::new(Vec::new())).0,
            lists: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(peers),
            personal,
            generation: watch::channel(None).0,
            at_meeting: watch::channel(None).0,
            unanswered: watch::channel(0).0,
            rejected: watch::channel(false).0,
            held: Mutex::new(None),
            bound: watch::channel(0).0,
            budget: Mutex::new(GuessBudget::default()),
        });
        let (tx, rx) = mpsc::channel(MAX_INCOMING);
        let mut tasks = vec![
            tokio::spawn(accept_loop(inner.clone(), tx)),
            tokio::spawn(member_loop(inner.clone())),
            tokio::spawn(report_relay(inner.clone())),
            tokio::spawn(peers_loop(inner.clone())),
            tokio::spawn(rebinder(inner.clone())),
        ];
        if let Some(table) = &inner.personal {
            tasks.push(tokio::spawn(personal_point(inner.clone(), table.clone())));
        }
        if inner.opts.may_host {
            tasks.push(tokio::spawn(keeper(inner.clone())));
        }
        Ok(Arc::new(WideRoom {
            inner,
            tasks,
            incoming: Mutex::new(Some(rx)),
        }))
    }

    /// Leaves the room before the process exits: closes this process's connections (and the
    /// meeting point, if it holds it) so that members see it go at once instead of waiting for
    /// an idle timeout, and a dial to the device's next process is not held up by a dead
    /// connection to this one. Waits at most `CLOSE_WAIT`.
    pub async fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let held = self.inner.held.lock().expect("held lock").take();
        let meeting = async {
            if let Some(endpoint) = held {
                endpoint.close().await;
            }
        };
        let endpoint = self.inner.endpoint();
        let meet = self.inner.meet_endpoint();
        let _ = timeout(CLOSE_WAIT, async {
            tokio::join!(endpoint.close(), meet.close(), meeting)
        })
        .await;
    }

    /// This device's endpoint id.
    pub fn id(&self) -> [u8; 32] {
        *self.inner.id.as_bytes()
    }

    /// The members the meeting point lists (not this device), as they change.
    pub fn members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.inner.members.subscribe()
    }

    /// Tells the meeting point which generation of drops this process holds.
    pub fn set_generation(&self, generation: Option<u64>) {
        self.inner.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
    }

    /// Incoming session connections, for the holder (once).
    pub fn take_incoming(&self) -> Option<mpsc::Receiver<Connection>> {
        self.incoming.lock().expect("incoming lock").take()
    }

    /// This process holds no drops (`run`, `list`, `fetch`): session connections to its
    /// device endpoint are closed as they arrive, instead of waiting in a queue nobody reads
    /// (where a stranger with an endpoint id could keep them open).
    pub fn refuse_sessions(&self) {
        drop(self.take_incoming());
    }

    /// Whether the last meeting point reached failed the passphrase check (a wrong
    /// passphrase here, or a squatter there).
    pub fn rejected_at_meeting(&self) -> bool {
        *self.inner.rejected.borrow()
    }

    /// Whether this process is registered with a meeting point now.
    pub fn at_meeting(&self) -> watch::Receiver<Option<PeerId>> {
        self.inner.at_meeting.subscribe()
    }

    /// Opens a session stream to member `id`'s device endpoint. With `process`, the dial is
    /// for that process of the device, as the meeting point listed it: it gives up as soon as
    /// the meeting point no longer lists it (the process exited; its device's next process is
    /// dialled on its own), instead of waiting out the timeout on a dead process.
    pub async fn dial(
        &self,
        id: [u8; 32],
        process: Option<PeerId>,
        limit: Duration,
    ) -> io::Result<WideLink> {
        let gone = async {
            let Some(peer) = process else {
                return std::future::pending().await;
            };
            let mut members = self.inner.members.subscribe();
            let _ = members
                .wait_for(|list| !list.iter().any(|m| m.id == id && m.peer == peer))
                .await;
        };
        tokio::select! {
            link = self.dial_endpoint(id, limit) => link,
            () = gone => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the member left the room's meeting point",
            )),
        }
    }

    async fn dial_endpoint(&self, id: [u8; 32], limit: Duration) -> io::Result<WideLink> {
        let addr = member_addr(&self.inner.opts.invite, id)?;
        let inner = self.inner.clone();
        let open = async move {
            let conn = inner
                .endpoint()
                .connect(addr, ALPN_SESSION)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
            inner.track(&conn);
            let (send, recv) = conn.open_bi().await.map_err(io::Error::other)?;
            Ok::<_, io::Error>(WideLink::new(conn, send, recv))
        };
        timeout(limit.max(DIAL_TIMEOUT), open)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?
    }
}

/// Says so (once) when the room's relay cannot be reached: members beyond the LAN are then
/// not found, and the user should know why.
async fn report_relay(inner: Arc<Inner>) {
    sleep(RELAY_PATIENCE).await;
    let endpoint = inner.endpoint();
    if relay_connected(&endpoint) {
        return;
    }
    let why = relay_error(&endpoint);
    let relay = relay_name(&inner.opts.invite);
    tracing::warn!(
        "cannot reach the room's relay {relay}: {why}; only members on this LAN can be found until it answers"
    );
}

/// Waits until `endpoint` has been without its connection to `relay` for [`REBIND_AFTER`]
/// (`unconnected` if it never had one) and the relay accepts a TCP connection again: iroh may
/// then still be waiting out its reconnect backoff, while an endpoint bound anew reaches the
/// relay at once. Returns whether `endpoint` was connected to the relay at some point.
async fn relay_back(endpoint: Endpoint, relay: RelayUrl, unconnected: Duration) -> bool {
    let mut connected_once = false;
    let mut down_since: Option<Instant> = None;
    loop {
        sleep(RELAY_POLL).await;
        if relay_connected(&endpoint) {
            connected_once = true;
            down_since = None;
            continue;
        }
        let down = down_since.get_or_insert_with(Instant::now).elapsed();
        let patience = if connected_once {
            REBIND_AFTER
        } else {
            unconnected
        };
        if down >= patience && relay_answers(&relay).await {
            return connected_once;
        }
    }
}

/// Closes session connection `conn` of `endpoint` when it has had no direct path and the
/// endpoint no relay for [`RELAY_LOST`].
async fn close_when_relay_lost(endpoint: Endpoint, conn: WeakConnectionHandle) {
    let mut down_since: Option<Instant> = None;
    loop {
        sleep(Duration::from_secs(1)).await;
        let Some(conn) = conn.upgrade() else {
            return;
        };
        if conn.close_reason().is_some() {
            return;
        }
        if via(&conn) == Via::Direct || relay_connected(&endpoint) {
            down_since = None;
            continue;
        }
        if down_since.get_or_insert_with(Instant::now).elapsed() >= RELAY_LOST {
            tracing::warn!("the room's relay is gone: the session through it stops");
            conn.close(CLOSE_RELAY_LOST.into(), b"the room's relay is gone");
            return;
        }
    }
}

/// How long the next endpoint bound anew may go without reaching the relay before it is bound
/// anew in turn: the first wait again if the last one had reached it, else twice as long.
fn next_unconnected(connected_once: bool, unconnected: Duration) -> Duration {
    if connected_once {
        REBIND_AFTER_UNCONNECTED
    } else {
        (unconnected * 2).min(REBIND_AFTER_MAX)
    }
}

/// Whether `endpoint` is connected to its relay now.
fn relay_connected(endpoint: &Endpoint) -> bool {
    let statuses = endpoint.home_relay_status().get();
    statuses
        .iter()
        .any(iroh::endpoint::RelayStatus::is_connected)
}

/// Whether `relay`'s host accepts a TCP connection on the relay's port.
async fn relay_answers(relay: &RelayUrl) -> bool {
    let port = relay.port_or_known_default().unwrap_or(443);
    let connect = async {
        match relay.host() {
            Some(url::Host::Ipv4(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
            Some(url::Host::Ipv6(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
            Some(url::Host::Domain(name)) => tokio::net::TcpStream::connect((name, port)).await,
            None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    };
    matches!(timeout(RELAY_PROBE_TIMEOUT, connect).await, Ok(Ok(_)))
}

/// Binds the device endpoint anew when the room's relay comes back after an outage (see
/// [`REBIND_AFTER`]), unless a session runs on a direct path, which the relay's outage did not
/// touch.
async fn rebinder(inner: Arc<Inner>) {
    let Ok(Some(relay)) = relay_url(&inner.opts.invite) else {
        // iroh's public relays: several, run by their operator; iroh's own retries.
        return;
    };
    let mut unconnected = REBIND_AFTER_UNCONNECTED;
    loop {
        let old = inner.endpoint();
        let connected_once = relay_back(old.clone(), relay.clone(), unconnected).await;
        unconnected = next_unconnected(connected_once, unconnected);
        // The endpoint meeting points are dialled from carries no session: bound anew (a new
        // key) at once; the meeting connections on the old one end and are dialled again.
        let meet = inner.meet_endpoint();
        if !relay_connected(&meet) {
            match relay_only(&inner.opts.invite).await {
                Ok(new) => {
                    inner.meet.send_replace(new);
                    tokio::spawn(async move { meet.close().await });
                }
                Err(e) => tracing::debug!("cannot bind the meeting endpoint anew: {e}"),
            }
        }
        while inner.direct_session_open() {
            sleep(RELAY_POLL).await;
        }
        if relay_connected(&old) {
            continue;
        }
        let key = SecretKey::from_bytes(&inner.opts.device_key);
        match bind(&inner.opts, key, inner.alpns.clone()).await {
            Ok(new) => {
                tracing::info!("the room's relay answers again; reconnecting to it");
                inner.endpoint.send_replace(new);
                tokio::spawn(async move { old.close().await });
            }
            Err(e) => tracing::debug!("cannot bind the device endpoint anew: {e}"),
        }
    }
}

/// What `deaddrop doctor` finds out about a wide-area room (with `--invite` or `--joined`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WideCheck {
    /// The room's relay: its URL, or "iroh's public relays".
    pub relay: String,
    /// Whether the relay's host takes a TCP connection on the relay's port (`None` for iroh's
    /// public relays).
    pub relay_port_open: Option<bool>,
    /// Whether an endpoint got a relay connection, and in how many milliseconds.
    pub relay_connected_ms: Option<u64>,
    /// Why not, as iroh says.
    pub relay_error: Option<String>,
    pub meeting_point: MeetingCheck,
}

/// Who answers at the room's meeting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingCheck {
    /// Not asked: no relay connection, or no passphrase to run the room handshake with.
    NotChecked,
    /// Nobody holds it: no long-running member of the room is online.
    NoAnswer,
    /// A member holds it: the room handshake succeeded.
    Member,
    /// Whoever holds it failed the room handshake: another passphrase, or someone with the
    /// invite but not the passphrase holds it.
    Rejected,
}

/// Checks a wide-area room from a fresh endpoint (a random key: a device's own key would take
/// the relay's forwarding away from a `run` on this device): the relay's port, a relay
/// connection, and, with the passphrase, the room handshake at the meeting point.
pub async fn check(
    invite: &Invite,
    bind: &[IpAddr],
    pass: Option<&Passphrase>,
    me: PeerId,
) -> io::Result<WideCheck> {
    let url = relay_url(invite)?;
    let relay = relay_name(invite);
    let relay_port_open = match &url {
        Some(u) => Some(relay_answers(u).await),
        None => None,
    };
    if relay_port_open == Some(false) {
        // No relay connection can be made: not worth waiting for iroh to say so.
        return Ok(WideCheck {
            relay,
            relay_port_open,
            relay_connected_ms: None,
            relay_error: Some("the relay's port does not take TCP connections".into()),
            meeting_point: MeetingCheck::NotChecked,
        });
    }
    let probe = endpoint(invite, bind, SecretKey::generate(), vec![]).await?;
    let started = Instant::now();
    let online = timeout(RELAY_PATIENCE, probe.online()).await.is_ok();
    let relay_connected_ms = online.then(|| started.elapsed().as_millis() as u64);
    let relay_error = (!online).then(|| relay_error(&probe));
    let meeting_point = match pass {
        Some(pass) if online => {
            let ask = handshake_at(
                &probe,
                meeting_addr(invite)?,
                MEET_DIAL_TIMEOUT,
                pass,
                me,
                Timeouts::default(),
            );
            match timeout(DIAL_TIMEOUT, ask).await {
                Ok(Ok(_)) => MeetingCheck::Member,
                Ok(Err(e)) if e.is_rejection() => MeetingCheck::Rejected,
                _ => MeetingCheck::NoAnswer,
            }
        }
        _ => MeetingCheck::NotChecked,
    };
    probe.close().await;
    Ok(WideCheck {
        relay,
        relay_port_open,
        relay_connected_ms,
        relay_error,
        meeting_point,
    })
}

/// Accepts connections on the device endpoint: hands session connections to the holder, and
/// serves meeting connections at this process's own meeting point.
async fn accept_loop(inner: Arc<Inner>, tx: mpsc::Sender<Connection>) {
    let handshakes = Arc::new(Semaphore::new(MAX_INCOMING));
    let meet_slots = Arc::new(Semaphore::new(MAX_MEET_CONNECTIONS));
    let mut current = inner.endpoint.subscribe();
    loop {
        let endpoint = current.borrow_and_update().clone();
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = current.changed() => continue,
        };
        let Some(incoming) = incoming else {
            // Closed: go on with the endpoint bound in its place.
            if current.changed().await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        let limit = inner.opts.timeouts.handshake;
        let (inner, meet_slots) = (inner.clone(), meet_slots.clone());
        tokio::spawn(async move {
            let permit = permit;
            let Ok(accepting) = incoming.accept() else {
                return;
            };
            let Ok(Ok(conn)) = timeout(limit, accepting).await else {
                return;
            };
            drop(permit);
            if conn.alpn() == ALPN_MEET {
                let (Some(table), Ok(_slot)) = (&inner.personal, meet_slots.try_acquire_owned())
                else {
                    return;
                };
                serve_meet_conn(inner.clone(), conn, inner.me, table.clone()).await;
                return;
            }
            if conn.alpn() != ALPN_SESSION {
                return;
            }
            inner.track(&conn);
            // No holder in this process, or it is busy: the connection is closed.
            if let Err(e) = tx.try_send(conn) {
                e.into_inner().close(0u32.into(), b"no holder here");
            }
        });
    }
}

/// Opens a stream on `conn` (dialled from the endpoint whose id is `from`), runs the room
/// handshake over it as the dialling side and, once the meeting point has proven the
/// passphrase, tells it this device's endpoint id with the device key's signature over the
/// session's transcript and `from`.
async fn meet_session(
    inner: &Inner,
    conn: &Connection,
    from: EndpointId,
) -> Result<Session<WideLink>, SessionError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Io(io::Error::other(e)))?;
    let link = WideLink::new(conn.clone(), send, recv);
    let mut session = transport::connect(link, &inner.pass, inner.me, inner.opts.timeouts).await?;
    let message = member_proof_message(&session.binding(), from.as_bytes());
    let proof = SecretKey::from_bytes(&inner.opts.device_key).sign(&message);
    session
        .send_request(&Request::Member {
            id: *inner.id.as_bytes(),
            proof: proof.to_bytes(),
        })
        .await?;
    Ok(session)
}

/// Checks a [`Request::Member`] claim: that `proof` is device endpoint `id`'s signature over
/// this session's `binding` and the endpoint the connection came `from`.
fn proven_member(id: &[u8; 32], proof: &[u8; 64], binding: &[u8; 32], from: &[u8; 32]) -> bool {
    let Ok(key) = iroh::PublicKey::from_bytes(id) else {
        return false;
    };
    let message = member_proof_message(binding, from);
    key.verify(&message, &iroh::Signature::from_bytes(proof))
        .is_ok()
}

#[derive(Debug)]
enum MeetEnd {
    /// Nobody holds the meeting key (or the relay is unreachable).
    NoAnswer,
    /// The one holding it failed the passphrase check.
    Rejected,
    /// Out of guesses for now.
    NoBudget,
    /// The connection ended after working.
    Ended,
}

/// Where a member list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// The room's meeting point.
    Room,
    /// This process's own meeting point.
    Personal,
    /// The meeting point of a member met before, by its device endpoint id.
    Peer([u8; 32]),
}

/// Sets the list `source` gives and publishes the union of all of them (this device left
/// out, each process once); remembers the members in it.
fn publish(inner: &Inner, source: Source, list: Vec<Member>) {
    let me = *inner.id.as_bytes();
    let union: Vec<Member> = {
        let mut lists = inner.lists.lock().expect("lists lock");
        if list.is_empty() {
            lists.remove(&source);
        } else {
            lists.insert(source, list);
        }
        let mut union: Vec<Member> = Vec::new();
        for m in lists.values().flatten() {
            if m.id != me && !union.iter().any(|u| (u.id, u.peer) == (m.id, m.peer)) {
                union.push(*m);
            }
        }
        union
    };
    let ids: Vec<[u8; 32]> = union.iter().map(|m| m.id).collect();
    inner.members.send_if_modified(|m| {
        let changed = **m != union;
        if changed {
            *m = Arc::new(union);
        }
        changed
    });
    remember(inner, &ids);
}

/// Keeps the members in `ids` in the room's peers file (written when one is new).
fn remember(inner: &Inner, ids: &[[u8; 32]]) {
    if ids.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let snapshot = {
        let mut peers = inner.peers.lock().expect("peers lock");
        if !peers.saw(ids, now) {
            return;
        }
        peers.snapshot()
    };
    if let Some(snapshot) = snapshot {
        tokio::task::spawn_blocking(move || {
            let path = snapshot.path().to_owned();
            if let Err(e) = snapshot.save() {
                tracing::debug!("cannot keep the members met in {}: {e}", path.display());
            }
        });
    }
}

/// Stays registered at the meeting point, redialling whenever the connection ends.
async fn member_loop(inner: Arc<Inner>) {
    let mut rejected = 0u32;
    loop {
        let end = meet_once(&inner, inner.meeting.clone(), Source::Room).await;
        inner.at_meeting.send_replace(None);
        tracing::debug!("meeting point: {end:?}");
        let pause = match end {
            MeetEnd::NoAnswer => {
                inner.unanswered.send_modify(|n| *n += 1);
                Duration::from_millis(100)
            }
            MeetEnd::Rejected => {
                rejected += 1;
                (REJECTED_BACKOFF_FIRST * 2u32.pow(rejected.min(5) - 1)).min(REJECTED_BACKOFF_MAX)
            }
            MeetEnd::NoBudget => Duration::from_secs(1),
            MeetEnd::Ended => {
                rejected = 0;
                Duration::from_millis(200)
            }
        };
        sleep(pause).await;
    }
}

/// Meets at `addr` (the room's meeting point, or a member's own): registers there and follows
/// its member list until the connection ends.
async fn meet_once(inner: &Arc<Inner>, addr: EndpointAddr, source: Source) -> MeetEnd {
    let room = source == Source::Room;
    let endpoint = inner.meet_endpoint();
    let from = endpoint.id();
    let started = Instant::now();
    let Some(conn) = dial_meet(inner, &endpoint, addr, room).await else {
        return MeetEnd::NoAnswer;
    };
    tracing::debug!(
        "meeting point ({source:?}) answered in {} ms",
        started.elapsed().as_millis()
    );
    let charged = SourceKey::endpoint(conn.remote_id().as_bytes());
    let Some(charge) = HeldCharge::start(&inner.budget, charged, Instant::now()) else {
        return MeetEnd::NoBudget;
    };
    let watch_session = meet_session(inner, &conn, from).await;
    let settled = match &watch_session {
        Ok(_) => Settled::Member,
        Err(e) if e.is_rejection() => Settled::Guessed,
        Err(_) => Settled::NoGuess,
    };
    charge.settle(settled, Instant::now());
    let mut watching = match watch_session {
        Ok(s) => s,
        Err(e) if e.is_rejection() => {
            if room {
                inner.rejected.send_replace(true);
            }
            return MeetEnd::Rejected;
        }
        Err(_) => return MeetEnd::NoAnswer,
    };
    tracing::debug!(
        "in the room at the meeting point ({source:?}) {} ms after the dial",
        started.elapsed().as_millis()
    );
    if room {
        inner.rejected.send_replace(false);
        inner.unanswered.send_replace(0);
        inner.at_meeting.send_replace(Some(watching.peer()));
    }
    // Listed at the meeting point, this process is dialled at once by members that want its
    // drops: only once its device endpoint is at the relay, or their first packets are dropped
    // there and QUIC resends them a second later. (Its address probes come first: a few
    // hundred milliseconds after the start, while the meeting point is dialled.)
    let _ = timeout(ONLINE_WAIT, inner.endpoint().online()).await;
    let me = *inner.id.as_bytes();
    let watch = async {
        let mut known = u64::MAX;
        loop {
            let generation = *inner.generation.borrow();
            watching
                .send_request(&Request::Meet { generation, known })
                .await?;
            match watching.recv_reply().await? {
                Reply::Members { version, members } => {
                    known = version;
                    let others: Vec<Member> = members.into_iter().filter(|m| m.id != me).collect();
                    tracing::debug!(
                        "meeting point ({source:?}): {} other members, {} with drops",
                        others.len(),
                        others.iter().filter(|m| m.generation.is_some()).count()
                    );
                    publish(inner, source, others);
                }
                _ => return Err(SessionError::Protocol("expected the members")),
            }
        }
    };
    let register = async {
        let mut s = meet_session(inner, &conn, from).await?;
        let mut generation = inner.generation.subscribe();
        loop {
            let g = *generation.borrow_and_update();
            s.send_request(&Request::Meet {
                generation: g,
                known: u64::MAX,
            })
            .await?;
            if !matches!(s.recv_reply().await?, Reply::Members { .. }) {
                return Err(SessionError::Protocol("expected the members"));
            }
            let _ = timeout(REGISTER_EVERY, generation.changed()).await;
        }
    };
    let result: Result<(), SessionError> = tokio::select! {
        r = watch => r,
        r = register => r,
    };
    if let Err(e) = result {
        tracing::debug!("meeting point session ended: {e}");
    }
    MeetEnd::Ended
}

/// Dials a meeting point from `endpoint`: a new dial every [`MEET_DIAL_EVERY`] (and at once
/// when this process binds the meeting endpoint), at most [`MEET_DIALS`] in flight, the first
/// connection wins; None after [`MEET_DIAL_TIMEOUT`]. For the room's meeting point
/// (`room`), nobody answering within [`MEET_NOBODY_AFTER`] counts as unanswered at once, so
/// that the keeper may take the key while the dials go on.
async fn dial_meet(
    inner: &Inner,
    endpoint: &Endpoint,
    addr: EndpointAddr,
    room: bool,
) -> Option<Connection> {
    let started = tokio::time::Instant::now();
    let give_up = started + MEET_DIAL_TIMEOUT;
    let mut nobody = room.then_some(started + MEET_NOBODY_AFTER);
    let mut bound = inner.bound.subscribe();
    bound.borrow_and_update();
    let mut dials = tokio::task::JoinSet::new();
    let mut next = started;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next), if dials.len() < MEET_DIALS => {
                let (endpoint, addr) = (endpoint.clone(), addr.clone());
                dials.spawn(async move { endpoint.connect(addr, ALPN_MEET).await });
                next = tokio::time::Instant::now() + MEET_DIAL_EVERY;
            }
            Ok(()) = bound.changed() => next = tokio::time::Instant::now(),
            Some(done) = dials.join_next(), if !dials.is_empty() => {
                if let Ok(Ok(conn)) = done {
                    return Some(conn);
                }
            }
            () = tokio::time::sleep_until(nobody.unwrap_or(give_up)), if nobody.is_some() => {
                nobody = None;
                inner.unanswered.send_modify(|n| *n += 1);
            }
            () = tokio::time::sleep_until(give_up) => return None,
        }
    }
}

/// Holds the meeting key when nobody answers there, and lets go of it when another holder of
/// it is the one the relay forwards to.
async fn keeper(inner: Arc<Inner>) {
    let mut unanswered = inner.unanswered.subscribe();
    loop {
        // Nobody answered: wait a moment (others who found nobody may take it first), ask once
        // more, and hold it if still nobody answers.
        let _ = unanswered.wait_for(|n| *n >= 1).await;
        sleep(Duration::from_millis(u64::from(
            crate::protocol::id::random_array::<1>()[0],
        )))
        .await;
        if *inner.unanswered.borrow() == 0 {
            continue;
        }
        let mut point = match MeetingPoint::start(&inner).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot hold the room's meeting point: {e}");
                sleep(CHECK_EVERY).await;
                continue;
            }
        };
        tracing::info!("holding the room's meeting point");
        let since = Instant::now();
        let relay = relay_url(&inner.opts.invite).ok().flatten();
        let watch_relay = |endpoint: Endpoint, unconnected| {
            let relay = relay.clone();
            Box::pin(async move {
                match relay {
                    Some(relay) => relay_back(endpoint, relay, unconnected).await,
                    // iroh's public relays: iroh's own retries.
                    None => std::future::pending().await,
                }
            })
        };
        let mut unconnected = REBIND_AFTER_UNCONNECTED;
        let mut back = watch_relay(point.endpoint.clone(), unconnected);
        let mut at_meeting = inner.at_meeting.subscribe();
        // Looked at once too: while the key was being bound (its endpoint reaching the relay
        // takes a moment), this process's member may have got in at someone else's.
        at_meeting.mark_changed();
        // Two members that found nobody at the same moment may both have taken it: the first
        // check comes soon.
        let mut next_check = tokio::time::Instant::now()
            + CHECK_FIRST
            + Duration::from_micros(u64::from(crate::protocol::id::random_array::<1>()[0]) * 1200);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_check) => {
                    if who_answers(&inner).await.is_some_and(|peer| peer != point.peer) {
                        tracing::info!("another member holds the meeting point; letting go");
                        break;
                    }
                    let first_minute = since.elapsed() < Duration::from_secs(60);
                    next_check = tokio::time::Instant::now()
                        + if first_minute { CHECK_EVERY_AT_FIRST } else { CHECK_EVERY };
                }
                // This process's own member reached another meeting point: the relay forwards
                // the key to someone else now.
                Ok(()) = at_meeting.changed() => {
                    let elsewhere = at_meeting.borrow_and_update().is_some_and(|p| p != point.peer);
                    if elsewhere {
                        tracing::info!("another member holds the meeting point; letting go");
                        break;
                    }
                }
                connected_once = &mut back => {
                    // The relay is back after an outage: the meeting point is bound anew,
                    // and the members at it come back as their connections end.
                    unconnected = next_unconnected(connected_once, unconnected);
                    match MeetingPoint::start(&inner).await {
                        Ok(new) => {
                            tracing::info!("the room's relay answers again; meeting point bound anew");
                            point = new;
                        }
                        Err(e) => tracing::debug!("cannot bind the meeting point anew: {e}"),
                    }
                    back = watch_relay(point.endpoint.clone(), unconnected);
                }
            }
        }
        inner.held.lock().expect("held lock").take();
        drop(point);
        inner.unanswered.send_replace(0);
    }
}

/// Who answers at the meeting endpoint through the relay, asked from a fresh endpoint (which
/// knows no direct address of anyone, so the relay decides where the dial goes).
async fn who_answers(inner: &Arc<Inner>) -> Option<PeerId> {
    // Relay only, as members dial: whoever answers there learns no address of this host.
    let probe = relay_only(&inner.opts.invite).await.ok()?;
    let ask = handshake_at(
        &probe,
        inner.meeting.clone(),
        DIAL_TIMEOUT,
        &inner.pass,
        inner.me,
        inner.opts.timeouts,
    );
    let peer = timeout(DIAL_TIMEOUT, ask).await.ok().and_then(Result::ok);
    probe.close().await;
    peer
}

/// Dials the meeting point at `addr` from `probe` (the dial may take `dial_limit`) and runs the
/// room handshake there: whose it is (its handshake id), or why not.
async fn handshake_at(
    probe: &Endpoint,
    addr: EndpointAddr,
    dial_limit: Duration,
    pass: &Passphrase,
    me: PeerId,
    timeouts: Timeouts,
) -> Result<PeerId, SessionError> {
    let dial = timeout(dial_limit, probe.connect(addr, ALPN_MEET));
    let conn = match dial.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(SessionError::Io(io::Error::other(e))),
        Err(_) => return Err(SessionError::Io(io::ErrorKind::TimedOut.into())),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Io(io::Error::other(e)))?;
    let link = WideLink::new(conn, send, recv);
    let session = transport::connect(link, pass, me, timeouts).await?;
    Ok(session.peer())
}

/// The room's meeting point, held by this process: lists the members connected to it.
struct MeetingPoint {
    peer: PeerId,
    endpoint: Endpoint,
    task: JoinHandle<()>,
}

impl Drop for MeetingPoint {
    fn drop(&mut self) {
        self.task.abort();
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move { endpoint.close().await });
    }
}

/// The members registered at a meeting point.
#[derive(Debug, Default, Clone)]
struct Table {
    version: u64,
    /// Endpoint id → (handshake id, generation held, sessions open).
    members: std::collections::BTreeMap<[u8; 32], (PeerId, Option<u64>, usize)>,
}

impl Table {
    fn list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, (peer, generation, _))| Member {
                id: *id,
                peer: *peer,
                generation: *generation,
            })
            .collect()
    }
}

impl MeetingPoint {
    async fn start(inner: &Arc<Inner>) -> io::Result<MeetingPoint> {
        let key = SecretKey::from_bytes(&inner.opts.invite.room.meeting_secret());
        // Members dial it through the relay only: a UDP socket would only tell them (and
        // anyone holding the meeting key's invite) this host's address.
        let endpoint = relay_only_with(&inner.opts.invite, key, vec![ALPN_MEET.to_vec()]).await?;
        // Dials reach it once the relay knows it.
        let before = Instant::now();
        let _ = timeout(ONLINE_WAIT, endpoint.online()).await;
        tracing::debug!(
            "meeting endpoint at the relay after {} ms",
            before.elapsed().as_millis()
        );
        let peer = PeerId::random();
        let table = Arc::new(watch::channel(Table::default()).0);
        let task = tokio::spawn(serve_meeting(inner.clone(), endpoint.clone(), peer, table));
        *inner.held.lock().expect("held lock") = Some(endpoint.clone());
        inner.bound.send_modify(|n| *n += 1);
        Ok(MeetingPoint {
            peer,
            endpoint,
            task,
        })
    }
}

async fn serve_meeting(
    inner: Arc<Inner>,
    endpoint: Endpoint,
    peer: PeerId,
    table: Arc<watch::Sender<Table>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_MEET_CONNECTIONS));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (inner, table) = (inner.clone(), table.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let limit = inner.opts.timeouts.handshake;
            let Ok(accepting) = incoming.accept() else {
                return;
            };
            let Ok(Ok(conn)) = timeout(limit, accepting).await else {
                return;
            };
            serve_meet_conn(inner, conn, peer, table).await;
        });
    }
}

/// One member's connection to a meeting point (the room's, or this process's own): up to two
/// streams, each a session.
async fn serve_meet_conn(
    inner: Arc<Inner>,
    conn: Connection,
    peer: PeerId,
    table: Arc<watch::Sender<Table>>,
) {
    let limit = inner.opts.timeouts.handshake;
    // The endpoint the member dialled from (a throwaway one): charged for guesses; the
    // member's device endpoint id comes, proven, inside each session.
    let from = *conn.remote_id().as_bytes();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..MEET_STREAMS {
        let next = tokio::select! {
            s = timeout(limit, conn.accept_bi()) => s,
            _ = streams.join_next(), if !streams.is_empty() => break,
        };
        let Ok(Ok((send, recv))) = next else {
            break;
        };
        let link = WideLink::new(conn.clone(), send, recv);
        streams.spawn(serve_member(inner.clone(), link, from, peer, table.clone()));
    }
    // The connection ends with its first stream: a member keeps both open.
    streams.join_next().await;
    streams.abort_all();
    conn.close(0u32.into(), b"bye");
}

/// This process's own meeting point: lists this process itself (with the generation it
/// holds) and the members registered with it, and publishes them to this process.
async fn personal_point(inner: Arc<Inner>, table: Arc<watch::Sender<Table>>) {
    let me = *inner.id.as_bytes();
    let mut generation = inner.generation.subscribe();
    let mut listed = table.subscribe();
    loop {
        let g = *generation.borrow_and_update();
        table.send_if_modified(|t| match t.members.get_mut(&me) {
            Some(entry) if entry.1 != g => {
                entry.1 = g;
                t.version += 1;
                true
            }
            _ => false,
        });
        let list = listed.borrow_and_update().list();
        publish(&inner, Source::Personal, list);
        tokio::select! {
            r = generation.changed() => if r.is_err() { return },
            r = listed.changed() => if r.is_err() { return },
        }
    }
}

/// While the room's meeting point fails the room handshake (someone with the invite but not
/// the passphrase holds its key), meets at the members met before: at their own meeting
/// points, on their device endpoints.
async fn peers_loop(inner: Arc<Inner>) {
    let mut rejected = inner.rejected.subscribe();
    loop {
        if rejected.wait_for(|r| *r).await.is_err() {
            return;
        }
        let me = *inner.id.as_bytes();
        let ids: Vec<[u8; 32]> = inner
            .peers
            .lock()
            .expect("peers lock")
            .recent(PEER_POINTS + 1)
            .into_iter()
            .filter(|id| *id != me)
            .take(PEER_POINTS)
            .collect();
        if !ids.is_empty() {
            tracing::info!(
                "the room's meeting point fails the room handshake; meeting at {} members met before",
                ids.len()
            );
        }
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            set.spawn(peer_meet_loop(inner.clone(), id));
        }
        let _ = rejected.wait_for(|r| !*r).await;
        set.abort_all();
        while set.join_next().await.is_some() {}
        let sources: Vec<Source> = inner
            .lists
            .lock()
            .expect("lists lock")
            .keys()
            .copied()
            .filter(|s| matches!(s, Source::Peer(_)))
            .collect();
        for source in sources {
            publish(&inner, source, Vec::new());
        }
    }
}

/// Stays registered at member `id`'s own meeting point, redialling as it comes and goes.
async fn peer_meet_loop(inner: Arc<Inner>, id: [u8; 32]) {
    let Ok(addr) = member_addr(&inner.opts.invite, id) else {
        return;
    };
    loop {
        let end = meet_once(&inner, addr.clone(), Source::Peer(id)).await;
        publish(&inner, Source::Peer(id), Vec::new());
        tracing::debug!("member met before: {end:?}");
        sleep(match end {
            MeetEnd::Ended => Duration::from_millis(500),
            MeetEnd::Rejected => PEER_REJECTED_RETRY,
            MeetEnd::NoAnswer | MeetEnd::NoBudget => PEER_RETRY,
        })
        .await;
    }
}

/// One member's session at the meeting point.
async fn serve_member(
    inner: Arc<Inner>,
    mut link: WideLink,
    from: [u8; 32],
    peer: PeerId,
    table: Arc<watch::Sender<Table>>,
) {
    let t = inner.opts.timeouts;
    let Ok(hello) = transport::read_client_hello(&mut link, t.handshake).await else {
        return;
    };
    let Some(charge) = HeldCharge::start(&inner.budget, SourceKey::endpoint(&from), Instant::now())
    else {
        return;
    };
    let session = transport::accept(link, &hello, &inner.pass, peer, t).await;
    let settled = match &session {
        Ok(_) => Settled::Member,
        Err(SessionError::Refused) => Settled::NoGuess,
        Err(_) => Settled::Guessed,
    };
    charge.settle(settled, Instant::now());
    let Ok(mut s) = session else {
        return;
    };
    // First the member's device endpoint id, proven: nobody is listed under an id whose key
    // it does not hold.
    let id = match s.recv_request().await {
        Ok(Some(Request::Member { id, proof }))
            if proven_member(&id, &proof, &s.binding(), &from) =>
        {
            id
        }
        Ok(Some(Request::Member { .. })) => {
            tracing::debug!("meeting point: a member's device proof does not check out");
            return;
        }
        _ => return,
    };
    let member = s.peer();
    let mut registered = false;
    let result = async {
        loop {
            let (generation, known) = match s.recv_request().await? {
                Some(Request::Meet { generation, known }) => (generation, known),
                Some(Request::Bye) | None => return Ok(()),
                Some(other) => {
                    let kind = match other {
                        Request::Unknown(k) => k,
                        _ => 0,
                    };
                    s.send_reply(&Reply::Unsupported { kind }).await?;
                    continue;
                }
            };
            let mut full = false;
            table.send_if_modified(|t| {
                if !t.members.contains_key(&id) && t.members.len() >= MAX_MEMBERS {
                    full = true;
                    return false;
                }
                let entry = t.members.entry(id).or_insert((member, generation, 0));
                let mut changed = false;
                if !registered {
                    entry.2 += 1;
                    registered = true;
                    changed = entry.2 == 1;
                }
                if (entry.0, entry.1) != (member, generation) {
                    (entry.0, entry.1) = (member, generation);
                    changed = true;
                }
                if changed {
                    t.version += 1;
                }
                changed
            });
            if full {
                return Err(SessionError::Protocol("the meeting point is full"));
            }
            let mut rx = table.subscribe();
            if rx.borrow_and_update().version == known {
                let _ = timeout(MEET_WAIT, rx.changed()).await;
            }
            let (version, members) = {
                let t = rx.borrow();
                (t.version, t.list())
            };
            s.send_reply(&Reply::Members { version, members }).await?;
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("meeting point: a member's session ended: {e}");
    }
    if registered {
        table.send_modify(|t| {
            if let Some(e) = t.members.get_mut(&id) {
                e.2 -= 1;
                if e.2 == 0 {
                    t.members.remove(&id);
                    t.version += 1;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meeting point lists a member under a device endpoint id only with that key's
    /// signature over this session's transcript and the endpoint the connection came from:
    /// not replayed from another session, not moved to another connection, not someone else's.
    #[test]
    fn a_member_proof_holds_for_its_device_session_and_connection_only() {
        let device = SecretKey::generate();
        let id = *device.public().as_bytes();
        let (binding, from) = ([1u8; 32], [2u8; 32]);
        let proof = device
            .sign(&member_proof_message(&binding, &from))
            .to_bytes();
        assert!(proven_member(&id, &proof, &binding, &from));
        assert!(
            !proven_member(&id, &proof, &[3; 32], &from),
            "another session"
        );
        assert!(
            !proven_member(&id, &proof, &binding, &[3; 32]),
            "another connection"
        );
        let other = *SecretKey::generate().public().as_bytes();
        assert!(
            !proven_member(&other, &proof, &binding, &from),
            "another device"
        );
        let mut bent = proof;
        bent[0] ^= 1;
        assert!(
            !proven_member(&id, &bent, &binding, &from),
            "a damaged proof"
        );
        assert!(
            !proven_member(&[0xff; 32], &proof, &binding, &from),
            "not a key"
        );
    }

    #[tokio::test]
    async fn the_relay_counts_as_back_when_its_port_takes_a_tcp_connection() {
        for host in ["127.0.0.1", "localhost", "[::1]"] {
            let bind = if host == "[::1]" {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            };
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                eprintln!("skipping {host}: cannot listen on {bind}");
                continue;
            };
            let port = listener.local_addr().unwrap().port();
            let url: RelayUrl = format!("https://{host}:{port}").parse().unwrap();
            assert!(relay_answers(&url).await, "{url} listening");
            drop(listener);
            assert!(!relay_answers(&url).await, "{url} closed");
        }
    }
}
