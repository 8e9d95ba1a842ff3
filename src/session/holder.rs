//! The holder: keeps drops, announces them, and serves them to room members over authenticated
//! sessions. A drop lives in this process only; nothing is written anywhere.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::discovery::{Discovery, Heard};
use crate::event::{Event, Events, Throttle, Via};
use crate::protocol::beacon::Beacon;
use crate::protocol::id::{PeerId, Token};
use crate::protocol::message::{DropKind, Refusal, Reply, Request};
use crate::protocol::secret::Passphrase;
use crate::session::client::Transfer;
use crate::session::contacts::Contact;
use crate::session::limit::{GuessBudget, HeldCharge, Settled, SourceKey};
use crate::session::transport::{self, Session, SessionError, Timeouts};
use crate::storage::source::{self, Prepared, Produced, Source};
use crate::storage::store::{DropSpec, DropStore, FetchLimit, Gone, Grant, StoreError, Ticket};
use crate::wide::room::{WideLink, WideRoom};

/// Content bytes per data record.
pub const DATA_CHUNK: usize = (1 << 20) - 16;
/// The longest message accepted, in bytes; larger text belongs in a file drop.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Announcements after a change go out at these delays, then every [`ANNOUNCE_EVERY`].
const ANNOUNCE_BURST: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1000),
];
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);
/// How long a hello waits for a guess token when the budget has none right now (others'
/// handshakes give theirs back within milliseconds). Below the 2 s a receiver gives a holder
/// it has not met, so a wait ends in a handshake or a clean refusal, not a client time-out.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// Answers to queries, per second, for all sources together.
const QUERY_ANSWERS_PER_SECOND: u32 = 100;

/// A drop's content, shared by every transfer of it.
pub type Content = Arc<Source>;

/// How a holder behaves.
#[derive(Debug, Clone)]
pub struct HolderOptions {
    /// How this holder is shown to receivers.
    pub name: String,
    pub timeouts: Timeouts,
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Connections served at once from one address.
    pub max_connections_per_source: usize,
}

impl Default for HolderOptions {
    fn default() -> Self {
        Self {
            name: "deaddrop".into(),
            timeouts: Timeouts::default(),
            max_connections: 256,
            max_connections_per_source: 16,
        }
    }
}

struct Inner {
    id: PeerId,
    pass: Passphrase,
    opts: HolderOptions,
    store: Mutex<DropStore<Content>>,
    /// What announcements carry: changes when something becomes fetchable.
    generation: watch::Sender<u64>,
    /// The store's version: changes with every change (what `drained` and expiry wait on).
    changed: watch::Sender<u64>,
    budget: Mutex<GuessBudget>,
    /// Told when a guess charge is settled.
    freed: Notify,
    events: Events,
    address: SocketAddr,
    /// Set when every drop is withdrawn: transfers under way stop and say so.
    withdrawn: watch::Sender<bool>,
    /// Transfers under way.
    sending: watch::Sender<usize>,
    /// Connections open (in the handshake, or a member's session).
    connections: watch::Sender<usize>,
}

impl Inner {
    /// Applies `f` to the store and publishes its generation and version if they changed.
    fn mutate<R>(&self, f: impl FnOnce(&mut DropStore<Content>) -> R) -> R {
        let mut store = self.store.lock().expect("store lock");
        let r = f(&mut store);
        let (g, v) = (store.generation(), store.version());
        drop(store);
        self.generation
            .send_if_modified(|cur| std::mem::replace(cur, g) != g);
        self.changed
            .send_if_modified(|cur| std::mem::replace(cur, v) != v);
        r
    }

    fn is_empty(&self) -> bool {
        self.store.lock().expect("store lock").is_empty()
    }

    /// Whether a fetcher gains anything by finding us: drops, or used-up drops to say "taken" of.
    fn worth_finding(&self) -> bool {
        let store = self.store.lock().expect("store lock");
        !store.is_empty() || store.has_burned()
    }
}

/// A running holder. Dropping it stops every task.
pub struct Holder {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    slots: Arc<Mutex<Slots>>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Holder {
    /// Listens on one ephemeral TCP port on every address of the discovery scope (a dual-stack
    /// wildcard when unconfined) and starts serving, announcing and expiring.
    pub async fn start(
        pass: Passphrase,
        opts: HolderOptions,
        discovery: Discovery,
        events: Events,
    ) -> std::io::Result<Holder> {
        let listeners = bind_listeners(&discovery.scope().listen_addrs())?;
        let address = listeners[0].local_addr()?;
        let store = DropStore::new();
        let (generation, _) = watch::channel(store.generation());
        let (changed, _) = watch::channel(store.version());
        let inner = Arc::new(Inner {
            id: PeerId::random(),
            pass,
            opts,
            store: Mutex::new(store),
            generation,
            changed,
            budget: Mutex::new(GuessBudget::default()),
            freed: Notify::new(),
            events,
            address,
            withdrawn: watch::channel(false).0,
            sending: watch::channel(0).0,
            connections: watch::channel(0).0,
        });
        let discovery = Arc::new(discovery);
        let slots = Arc::new(Mutex::new(Slots::new(
            inner.opts.max_connections,
            inner.opts.max_connections_per_source,
        )));
        let mut tasks: Vec<JoinHandle<()>> = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(inner.clone(), l, slots.clone())))
            .collect();
        tasks.extend([
            tokio::spawn(announce_loop(inner.clone(), discovery.clone())),
            tokio::spawn(answer_queries(inner.clone(), discovery)),
            tokio::spawn(expire_loop(inner.clone())),
        ]);
        Ok(Holder {
            inner,
            tasks,
            slots,
        })
    }

    /// Also serves room members beyond the LAN through `room` (a wide-area room), and keeps its
    /// meeting point told which generation of drops this holder offers.
    pub fn serve_wide(&mut self, room: Arc<WideRoom>) {
        let Some(incoming) = room.take_incoming() else {
            return;
        };
        self.tasks.extend([
            tokio::spawn(wide_accept_loop(
                self.inner.clone(),
                incoming,
                self.slots.clone(),
            )),
            tokio::spawn(publish_generation(self.inner.clone(), room)),
        ]);
    }

    pub fn id(&self) -> PeerId {
        self.inner.id
    }

    /// The TCP address room members connect to (the first one, when there are several; they
    /// share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.address
    }

    /// Offers a drop. Its kind, name and size come from `spec`; `content` must match `spec.size`.
    pub fn offer(&self, spec: DropSpec, content: Content) -> Result<Token, StoreError> {
        debug_assert_eq!(spec.size, content.len());
        let event = |token| Event::Offered {
            token,
            kind: spec.kind,
            name: spec.name.clone(),
            size: spec.size,
            ttl_ms: spec.ttl.as_millis() as u64,
            max_fetches: match spec.limit {
                FetchLimit::Max(n) => Some(n),
                FetchLimit::Everyone => None,
            },
            address: self.inner.address.to_string(),
        };
        let token = self
            .inner
            .mutate(|s| s.insert(spec.clone(), content, Instant::now(), unix_now()))?;
        (self.inner.events)(event(token.into()));
        Ok(token)
    }

    /// Offers a text message.
    pub fn offer_message(
        &self,
        text: &str,
        ttl: Duration,
        limit: FetchLimit,
    ) -> Result<Token, OfferError> {
        if text.len() > MAX_MESSAGE {
            return Err(OfferError::MessageTooLong { len: text.len() });
        }
        let spec = DropSpec {
            kind: DropKind::Message,
            name: "message".into(),
            size: text.len() as u64,
            ttl,
            limit,
            executable: false,
        };
        Ok(self.offer(spec, Arc::new(Source::bytes(text.as_bytes())))?)
    }

    /// Offers a file or directory prepared with [`Source::path`].
    pub fn offer_path(
        &self,
        prepared: &Prepared,
        ttl: Duration,
        limit: FetchLimit,
    ) -> Result<Token, StoreError> {
        let spec = DropSpec {
            kind: prepared.kind,
            name: prepared.name.clone(),
            size: prepared.source.len(),
            ttl,
            limit,
            executable: prepared.executable,
        };
        self.offer(spec, prepared.source.clone())
    }

    /// How many drops are on offer.
    pub fn len(&self) -> usize {
        self.inner.store.lock().expect("store lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Resolves once no drops are left (all used up or expired).
    pub async fn drained(&self) {
        let mut rx = self.inner.changed.subscribe();
        while !self.inner.is_empty() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Withdraws every drop (on shutdown). Transfers under way are stopped with
    /// [`Refusal::Withdrawn`], so their receivers delete what arrived; later fetches find nothing.
    /// See [`Holder::transfers_stopped`] to wait until they were told.
    pub fn withdraw_all(&self) -> Vec<Token> {
        let tokens = self.inner.mutate(|s| s.withdraw_all());
        self.inner.withdrawn.send_replace(true);
        tokens
    }

    /// Waits, at most `within`, until no transfer is under way (after [`Holder::withdraw_all`]:
    /// until every receiver was told).
    pub async fn transfers_stopped(&self, within: Duration) {
        none_left(&self.inner.sending, within).await;
    }

    /// Waits, at most `within`, until no connection is open: the receiver that used up the
    /// last drop has read its confirmation and said goodbye, and members racing for it, already
    /// connected, have heard that it is taken. (A stranger's silent connection holds this for
    /// at most `within`.)
    pub async fn sessions_ended(&self, within: Duration) {
        none_left(&self.inner.connections, within).await;
    }
}

/// Waits, at most `within`, until `count` is zero.
async fn none_left(count: &watch::Sender<usize>, within: Duration) {
    let mut rx = count.subscribe();
    let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
}

/// Why a drop could not be offered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    #[error(
        "the message is {len} bytes; messages are limited to 1 MiB (send larger text as a file)"
    )]
    MessageTooLong { len: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// TCP listeners on `addrs` (ports 0), all on one port: announcements carry one. An address
/// that cannot be bound yet (an IPv6 address still being checked for duplicates when an
/// interface has just come up) is left out, as long as one can be.
fn bind_listeners(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let listen = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        if addr.is_ipv6() {
            // The wildcard takes IPv4 too (as ::ffff:a.b.c.d); a specific address is one family.
            s.set_only_v6(!addr.ip().is_unspecified())?;
        }
        // On Unix, SO_REUSEADDR only lets a restarted holder rebind past TIME_WAIT. On Windows
        // it would let another socket take the same port, so it is left off there.
        #[cfg(unix)]
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        TcpListener::from_std(s.into())
    };
    let not_yet = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AddrNotAvailable;
    let mut last = None;
    for _ in 0..20 {
        let mut all: Vec<TcpListener> = Vec::new();
        let mut port = 0;
        let mut retry = false;
        for addr in addrs {
            let mut a = *addr;
            a.set_port(port);
            match listen(a) {
                Ok(l) => {
                    port = l.local_addr()?.port();
                    all.push(l);
                }
                Err(e) if not_yet(&e) => {
                    tracing::debug!("not listening on {a} yet: {e}");
                    last = Some(e);
                }
                // That port is taken on another address: start over with another.
                Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    last = Some(e);
                    retry = true;
                    break;
                }
                // No IPv6 on this host: IPv4 only.
                Err(e) if addrs.len() == 1 && addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
                    tracing::debug!("no dual-stack listener ({e}); IPv4 only");
                    return Ok(vec![listen((std::net::Ipv4Addr::UNSPECIFIED, 0).into())?]);
                }
                Err(e) => return Err(e),
            }
        }
        if !retry && !all.is_empty() {
            return Ok(all);
        }
        if !retry {
            break;
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, slots: Arc<Mutex<Slots>>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            // An IPv4 client on the dual-stack listener shows as ::ffff:a.b.c.d; an IPv6 one
            // keeps its scope.
            Ok((stream, addr)) => match addr.ip().to_canonical() {
                ip @ IpAddr::V4(_) => (stream, SocketAddr::new(ip, addr.port())),
                IpAddr::V6(_) => (stream, addr),
            },
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = slots
            .lock()
            .expect("slots lock")
            .admit(SourceKey::from(addr.ip()));
        let Some((seq, evicted)) = admitted else {
            tracing::debug!("connection from {addr} closed: no slot for that address");
            continue;
        };
        let slot = SlotGuard {
            slots: slots.clone(),
            seq,
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let _open = Counted::start(&inner.connections);
            tokio::select! {
                _ = evicted.notified() => {
                    tracing::debug!("connection from {addr} closed: its slot went to a newer one");
                }
                _ = handle_connection(&inner, stream, Contact::Lan(addr), &|| Via::Lan, &slot) => {}
            }
            drop(slot);
        });
    }
}

/// Tells the wide-area room's meeting point the generation on offer (none when there is
/// nothing worth finding), as it changes.
async fn publish_generation(inner: Arc<Inner>, room: Arc<WideRoom>) {
    let mut changed = inner.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let g = *inner.generation.borrow();
        room.set_generation(inner.worth_finding().then_some(g));
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Serves session connections that arrive through the wide-area room, with the same slots,
/// budget and session code as TCP connections.
async fn wide_accept_loop(
    inner: Arc<Inner>,
    mut incoming: tokio::sync::mpsc::Receiver<iroh::endpoint::Connection>,
    slots: Arc<Mutex<Slots>>,
) {
    while let Some(conn) = incoming.recv().await {
        let from = Contact::Wide(*conn.remote_id().as_bytes(), None);
        let admitted = slots.lock().expect("slots lock").admit(from.source());
        let Some((seq, evicted)) = admitted else {
            tracing::debug!("connection from {from} closed: no slot for it");
            continue;
        };
        let slot = SlotGuard {
            slots: slots.clone(),
            seq,
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _open = Counted::start(&inner.connections);
            let limit = inner.opts.timeouts.handshake;
            let Ok(Ok((send, recv))) = tokio::time::timeout(limit, conn.accept_bi()).await else {
                return;
            };
            let link = WideLink::new(conn, send, recv);
            let via = link.via_now();
            tokio::select! {
                _ = evicted.notified() => {
                    tracing::debug!("connection from {from} closed: its slot went to a newer one");
                }
                _ = handle_connection(&inner, link, from, &via, &slot) => {}
            }
            drop(slot);
        });
    }
}

/// Connection slots. A member's session keeps its slot; a connection that has not finished the
/// handshake yet is a stranger's, and when every slot is taken, a newcomer takes the oldest
/// stranger's slot from the address holding the most of them. So a flood of silent connections
/// (from up to `max / max_per_source` addresses) delays a real receiver by nothing, rather than
/// locking it out until the flood's handshakes time out.
#[derive(Debug)]
struct Slots {
    max: usize,
    max_per_source: usize,
    next: u64,
    /// By age: the oldest connection first.
    conns: std::collections::BTreeMap<u64, Slot>,
    per_source: HashMap<SourceKey, usize>,
}

#[derive(Debug)]
struct Slot {
    ip: SourceKey,
    member: bool,
    evict: Arc<Notify>,
}

impl Slots {
    fn new(max: usize, max_per_source: usize) -> Self {
        Slots {
            max,
            max_per_source,
            next: 0,
            conns: Default::default(),
            per_source: HashMap::new(),
        }
    }

    /// A slot for a new connection from `ip`, and what tells it it was evicted; `None`: close it.
    fn admit(&mut self, ip: SourceKey) -> Option<(u64, Arc<Notify>)> {
        if self.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source {
            return None;
        }
        if self.conns.len() >= self.max && !self.evict_a_stranger() {
            return None;
        }
        self.next += 1;
        let evict = Arc::new(Notify::new());
        self.conns.insert(
            self.next,
            Slot {
                ip,
                member: false,
                evict: evict.clone(),
            },
        );
        *self.per_source.entry(ip).or_default() += 1;
        Some((self.next, evict))
    }

    fn evict_a_stranger(&mut self) -> bool {
        let mut strangers: HashMap<SourceKey, usize> = HashMap::new();
        for slot in self.conns.values().filter(|s| !s.member) {
            *strangers.entry(slot.ip).or_default() += 1;
        }
        let Some((ip, _)) = strangers.into_iter().max_by_key(|(_, n)| *n) else {
            return false;
        };
        let seq = self
            .conns
            .iter()
            .find(|(_, s)| !s.member && s.ip == ip)
            .map(|(seq, _)| *seq)
            .expect("counted above");
        if let Some(slot) = self.release(seq) {
            slot.evict.notify_one();
        }
        true
    }

    /// The connection proved membership: its slot is never taken from it. False if it was
    /// evicted meanwhile.
    fn member(&mut self, seq: u64) -> bool {
        match self.conns.get_mut(&seq) {
            Some(s) => {
                s.member = true;
                true
            }
            None => false,
        }
    }

    fn release(&mut self, seq: u64) -> Option<Slot> {
        let slot = self.conns.remove(&seq)?;
        if let Some(n) = self.per_source.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&slot.ip);
            }
        }
        Some(slot)
    }
}

/// One connection's slot; given back when the connection ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    seq: u64,
}

impl SlotGuard {
    fn member(&self) -> bool {
        self.slots.lock().expect("slots lock").member(self.seq)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.lock().expect("slots lock").release(self.seq);
    }
}

/// One connection, from its hello to its end. Generic over the stream so that the same code
/// serves any reliable, ordered byte stream: TCP on the LAN, a QUIC stream beyond it.
async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    mut stream: S,
    addr: Contact,
    via: &(dyn Fn() -> Via + Send + Sync),
    slot: &SlotGuard,
) {
    let t = inner.opts.timeouts;
    let hello = match transport::read_client_hello(&mut stream, t.handshake).await {
        Ok(hello) => hello,
        Err(e) => {
            tracing::debug!("no hello from {addr}: {e}");
            return;
        }
    };
    // Every PAKE answer costs the source a guess, given back if it proves membership. Held, so
    // that a connection evicted (or a task aborted) mid-handshake still settles it.
    let charge = HeldCharge::wait_for(&inner.budget, &inner.freed, addr.source(), BUDGET_WAIT);
    let Some(charge) = charge.await else {
        tracing::debug!("connection from {addr} closed: out of handshake guesses");
        return;
    };
    let session = transport::accept(stream, &hello, &inner.pass, inner.id, t).await;
    let settled = match &session {
        Ok(_) => Settled::Member,
        // A malformed hello got no answer: nothing to guess from.
        Err(SessionError::Refused) => Settled::NoGuess,
        Err(_) => Settled::Guessed,
    };
    charge.settle(settled, Instant::now());
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("handshake with {addr} failed: {e}");
            if e.is_rejection() {
                (inner.events)(Event::Rejected {
                    address: addr.to_string(),
                });
            }
            return;
        }
    };
    if !slot.member() {
        return;
    }
    tracing::debug!("session with a room member at {addr} opened");
    let mut conn = Conn {
        inner,
        addr,
        via,
        peer: session.peer(),
        process: session.peer(),
        device_named: false,
        name: String::new(),
        reserved: None,
    };
    if let Err(e) = conn.serve(&mut session).await {
        tracing::debug!("session with {addr} ended: {e}");
    }
    if let Some(reservation) = conn.reserved.take() {
        conn.release(reservation);
    }
}

/// One room member's session with this holder.
struct Conn<'a> {
    inner: &'a Inner,
    addr: Contact,
    /// Which way the connection's packets go now.
    via: &'a (dyn Fn() -> Via + Send + Sync),
    /// Who the fetches count for: the receiver's device (see [`Request::Device`]), else the
    /// session's PeerId.
    peer: PeerId,
    /// The session's own PeerId (one process of that device).
    process: PeerId,
    device_named: bool,
    name: String,
    /// A fetch sent but not yet acknowledged: released if the session ends first.
    reserved: Option<(Token, Ticket)>,
}

impl Conn<'_> {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut Session<S>,
    ) -> Result<(), SessionError> {
        while let Some(req) = s.recv_request().await? {
            match req {
                Request::Hello { name } => {
                    self.name = name;
                    let name = self.inner.opts.name.clone();
                    s.send_reply(&Reply::Hello { name }).await?;
                }
                Request::List => {
                    let list = self
                        .inner
                        .store
                        .lock()
                        .expect("store lock")
                        .list(self.peer, Instant::now());
                    s.send_reply(&Reply::Listing(list)).await?;
                }
                Request::Fetch { token, offset } => {
                    if let Some(t) = self.reserved.take() {
                        self.release(t);
                    }
                    let granted = self
                        .inner
                        .mutate(|st| st.begin_as(token, self.peer, self.process, Instant::now()));
                    match granted {
                        Err(reason) => s.send_reply(&Reply::Refused { token, reason }).await?,
                        Ok(grant) => {
                            // A partial copy longer than the drop is not a prefix of it: start over.
                            let offset = if offset > grant.info.size { 0 } else { offset };
                            self.reserved = Some((token, grant.ticket));
                            let events = &self.inner.events;
                            let info = &grant.info;
                            let mut throttle = Throttle::new();
                            // Messages are too small for progress to mean anything.
                            let quiet = info.kind == DropKind::Message;
                            let progress = |done, finished| {
                                if !quiet && throttle.ready(finished) {
                                    let t = Transfer {
                                        info,
                                        peer: &self.name,
                                        resumed: offset,
                                        done,
                                        via: (self.via)(),
                                    };
                                    events(t.event(true));
                                }
                            };
                            let sent = send_content(s, self.inner, &grant, offset, progress).await;
                            let stopped = match &sent {
                                Ok(Sent::Whole) => None,
                                Ok(Sent::Aborted(why)) => Some(why.clone()),
                                Err(e) => Some(e.to_string()),
                            };
                            if let Some(reason) = stopped {
                                if !quiet {
                                    (self.inner.events)(Event::SendStopped {
                                        token: token.into(),
                                        to: self.name.clone(),
                                        address: self.addr.to_string(),
                                        reason,
                                    });
                                }
                                if let Ok(Sent::Aborted(_)) = sent {
                                    self.reserved = None;
                                    self.release((token, grant.ticket));
                                }
                            }
                            sent?;
                        }
                    }
                }
                Request::Ack { token } => {
                    // `Acked` means counted. An Ack without a reservation, or on a grant that a
                    // newer connection of the same receiver has taken over, counts nothing.
                    let counted = match self.reserved {
                        Some((t, ticket)) if t == token => {
                            self.reserved = None;
                            self.complete(token, ticket)
                        }
                        _ => false,
                    };
                    if counted {
                        s.send_reply(&Reply::Acked { token }).await?;
                    } else {
                        let reason = Refusal::NotFound;
                        s.send_reply(&Reply::Refused { token, reason }).await?;
                    }
                }
                Request::Bye => break,
                // The receiver is still checking or saving: its record alone keeps us waiting.
                Request::Wait => {}
                Request::Unknown(kind) => s.send_reply(&Reply::Unsupported { kind }).await?,
                // For meeting points only.
                Request::Meet { .. } => {
                    let kind = Request::MEET_KIND;
                    s.send_reply(&Reply::Unsupported { kind }).await?
                }
                Request::Member { .. } => {
                    let kind = Request::MEMBER_KIND;
                    s.send_reply(&Reply::Unsupported { kind }).await?
                }
                // From here on this session's fetches count as that device's (once, and only
                // before anything is reserved, so a reservation is always released or counted
                // as the receiver that made it). A room member could name another device: it
                // could as well run another process, so this is a count, not a defence.
                Request::Device { id } => {
                    if !self.device_named && self.reserved.is_none() {
                        self.peer = id;
                        self.device_named = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn release(&self, (token, ticket): (Token, Ticket)) {
        let removed = self
            .inner
            .mutate(|st| st.release(token, self.peer, ticket, Instant::now()));
        if let Some(r) = removed {
            (self.inner.events)(Event::Expired {
                token: r.token.into(),
                delivered: r.delivered,
            });
        }
    }

    /// Counts an acknowledged delivery; false if it could not be (a stale grant, or the drop
    /// is gone).
    fn complete(&self, token: Token, ticket: Ticket) -> bool {
        let done = self
            .inner
            .mutate(|st| st.complete(token, self.peer, ticket, Instant::now()));
        let Ok(c) = done else { return false };
        let inner = self.inner;
        (inner.events)(Event::Fetched {
            token: token.into(),
            by: self.name.clone(),
            address: self.addr.to_string(),
            via: (self.via)(),
            delivered: c.delivered,
        });
        match c.gone {
            Some(Gone::UsedUp) => (inner.events)(Event::UsedUp {
                token: token.into(),
                delivered: c.delivered,
            }),
            Some(Gone::Expired) => (inner.events)(Event::Expired {
                token: token.into(),
                delivered: c.delivered,
            }),
            None => {}
        }
        true
    }
}

/// How sending a drop's content ended, when the session itself did not fail.
enum Sent {
    Whole,
    /// The content could not be produced (a file changed or vanished), or the drop was
    /// withdrawn: the receiver was told, and why.
    Aborted(String),
}

/// Counts something under way (a transfer, a session) while it lives.
struct Counted<'a>(&'a watch::Sender<usize>);

impl<'a> Counted<'a> {
    fn start(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn send_content<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session<S>,
    inner: &Inner,
    grant: &Grant<Content>,
    offset: u64,
    mut progress: impl FnMut(u64, bool),
) -> Result<Sent, SessionError> {
    let _sending = Counted::start(&inner.sending);
    let mut withdrawn = inner.withdrawn.subscribe();
    s.send_reply(&Reply::Start {
        info: grant.info.clone(),
        offset,
    })
    .await?;
    let mut stream = source::stream(
        grant.content.clone(),
        offset,
        DATA_CHUNK,
        transport::DATA_FRAME_OVERHEAD,
        transport::data_frame,
    );
    let mut done = offset;
    progress(done, false);
    loop {
        let produced = tokio::select! {
            // Checked first: a withdrawn drop stops at the next record.
            biased;
            true = async { withdrawn.wait_for(|w| *w).await.is_ok() } => {
                s.send_reply(&Reply::Abort { reason: Refusal::Withdrawn }).await?;
                return Ok(Sent::Aborted(Refusal::Withdrawn.to_string()));
            }
            produced = stream.rx.recv() => match produced {
                Some(p) => p,
                None => break,
            },
        };
        match produced {
            Produced::Data(mut frame) => {
                let content_len = (frame.len() - transport::DATA_FRAME_OVERHEAD) as u64;
                s.send_data_frame(&mut frame).await?;
                stream.recycle(frame);
                done += content_len;
                progress(done, false);
            }
            Produced::Done(hash) => {
                s.send_reply(&Reply::End { hash }).await?;
                progress(done, true);
                return Ok(Sent::Whole);
            }
            Produced::Failed(e) => {
                s.send_reply(&Reply::Abort {
                    reason: Refusal::Unavailable,
                })
                .await?;
                return Ok(Sent::Aborted(e.to_string()));
            }
        }
    }
    Err(SessionError::Protocol("the content reader stopped"))
}

async fn announce_loop(inner: Arc<Inner>, discovery: Arc<Discovery>) {
    let mut rx = inner.generation.subscribe();
    let port = inner.address.port();
    loop {
        let generation = *rx.borrow_and_update();
        let mut delays = ANNOUNCE_BURST
            .iter()
            .copied()
            .chain(std::iter::repeat(ANNOUNCE_EVERY));
        loop {
            let delay = delays.next().expect("endless");
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            if !inner.is_empty() && discovery.announce(inner.id, port, generation).await == 0 {
                tracing::debug!("no beacon target is reachable");
            }
        }
    }
}

async fn answer_queries(inner: Arc<Inner>, discovery: Arc<Discovery>) {
    let port = inner.address.port();
    let mut window = Instant::now();
    let mut answered = 0u32;
    loop {
        let Heard::Query {
            id, reply_to: src, ..
        } = discovery.recv().await
        else {
            continue;
        };
        if id == inner.id || !inner.worth_finding() {
            continue;
        }
        let now = Instant::now();
        if now.duration_since(window) >= Duration::from_secs(1) {
            window = now;
            answered = 0;
        }
        if answered >= QUERY_ANSWERS_PER_SECOND {
            continue;
        }
        answered += 1;
        let generation = *inner.generation.borrow();
        let beacon = Beacon::Announce {
            id: inner.id,
            port,
            generation,
        };
        if let Err(e) = discovery.send_to(&beacon, src).await {
            tracing::debug!("answer to {src} failed: {e}");
        }
    }
}

async fn expire_loop(inner: Arc<Inner>) {
    let mut rx = inner.changed.subscribe();
    loop {
        let next = inner.store.lock().expect("store lock").next_deadline();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = sleep => {
                for r in inner.mutate(|s| s.expire(Instant::now())) {
                    (inner.events)(Event::Expired { token: r.token.into(), delivered: r.delivered });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Scope;
    use crate::event::ignore;
    use crate::protocol::handshake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn holder() -> Holder {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let scope = Scope::loopback(port);
        let pass = Passphrase::new("secret123".into()).unwrap();
        let h = Holder::start(
            pass,
            HolderOptions::default(),
            Discovery::bind(scope).unwrap(),
            ignore(),
        )
        .await
        .unwrap();
        h.offer_message("x", Duration::from_secs(60), FetchLimit::Max(1))
            .unwrap();
        h
    }

    /// Sends a ClientHello with `guess`; true if the holder answered with a ServerHello.
    async fn guess(addr: SocketAddr, guess: &str) -> bool {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let pass = Passphrase::new(guess.into()).unwrap();
        let (_, hello) = handshake::Client::start(&pass, PeerId::random());
        let mut frame = (hello.len() as u16).to_be_bytes().to_vec();
        frame.extend(hello);
        s.write_all(&frame).await.unwrap();
        s.read_u16().await.is_ok()
    }

    #[tokio::test]
    async fn wrong_passphrase_guesses_are_held_to_the_rate_per_source() {
        let h = holder().await;
        let start = Instant::now();
        let mut answered = 0;
        for _ in 0..10 {
            if guess(h.local_addr(), "guess").await {
                answered += 1;
            }
        }
        assert_eq!(answered, 10, "the burst at once");
        // Past the burst a hello waits for the next token (about a second) instead of being
        // turned away, so guessing as fast as it can goes on at one per second.
        while start.elapsed() < Duration::from_secs(3) {
            if guess(h.local_addr(), "guess").await {
                answered += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        assert!(
            (answered as f64) <= 10.0 + secs + 1.0,
            "{answered} guesses answered in {secs:.1} s"
        );
        assert!(answered >= 11, "{answered}: one more after a second");
        assert_eq!(h.len(), 1, "guessing burned nothing");
    }

    /// A member's session with the holder, as receiver `me`, after the hello exchange.
    async fn member_session(to: SocketAddr, me: PeerId) -> Session<TcpStream> {
        let stream = TcpStream::connect(to).await.unwrap();
        let pass = Passphrase::new("secret123".into()).unwrap();
        let mut s = transport::connect(stream, &pass, me, Timeouts::default())
            .await
            .unwrap();
        s.send_request(&Request::Hello { name: "r".into() })
            .await
            .unwrap();
        assert!(matches!(s.recv_reply().await.unwrap(), Reply::Hello { .. }));
        s
    }

    /// Sends a Fetch and reads the whole transfer up to `End`.
    async fn fetch_all(s: &mut Session<TcpStream>, token: Token) {
        s.send_request(&Request::Fetch { token, offset: 0 })
            .await
            .unwrap();
        loop {
            match s.recv_reply().await.unwrap() {
                Reply::End { .. } => return,
                Reply::Start { .. } | Reply::Data(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn regression_an_ack_on_a_grant_taken_over_is_refused_not_confirmed() {
        // A receiver's second connection took its reservation over; an Ack that then arrived
        // on the first was answered Acked but not counted, so Acked did not mean counted.
        let h = holder().await;
        let me = PeerId::random();
        let mut first = member_session(h.local_addr(), me).await;
        first.send_request(&Request::List).await.unwrap();
        let Reply::Listing(drops) = first.recv_reply().await.unwrap() else {
            panic!("a listing")
        };
        let token = drops[0].token;
        fetch_all(&mut first, token).await;
        let mut second = member_session(h.local_addr(), me).await;
        fetch_all(&mut second, token).await;
        first.send_request(&Request::Ack { token }).await.unwrap();
        assert_eq!(
            first.recv_reply().await.unwrap(),
            Reply::Refused {
                token,
                reason: Refusal::NotFound
            }
        );
        assert_eq!(h.len(), 1, "nothing counted");
        second.send_request(&Request::Ack { token }).await.unwrap();
        assert_eq!(second.recv_reply().await.unwrap(), Reply::Acked { token });
        assert_eq!(h.len(), 0, "counted, and used up");
    }

    #[tokio::test]
    async fn sessions_ended_waits_for_every_member_to_leave_and_no_longer() {
        let h = holder().await;
        let token = {
            let mut s = member_session(h.local_addr(), PeerId::random()).await;
            s.send_request(&Request::List).await.unwrap();
            let Reply::Listing(drops) = s.recv_reply().await.unwrap() else {
                panic!("a listing")
            };
            drops[0].token
        };
        let mut winner = member_session(h.local_addr(), PeerId::random()).await;
        let mut racer = member_session(h.local_addr(), PeerId::random()).await;
        fetch_all(&mut winner, token).await;
        winner.send_request(&Request::Ack { token }).await.unwrap();
        assert_eq!(winner.recv_reply().await.unwrap(), Reply::Acked { token });
        assert_eq!(h.len(), 0, "used up");
        // Two members are still connected: the holder keeps answering them.
        let forever = Duration::from_secs(3600);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), h.sessions_ended(forever))
                .await
                .is_err()
        );
        winner.close().await.unwrap();
        racer
            .send_request(&Request::Fetch { token, offset: 0 })
            .await
            .unwrap();
        assert_eq!(
            racer.recv_reply().await.unwrap(),
            Reply::Refused {
                token,
                reason: Refusal::Taken
            }
        );
        racer.close().await.unwrap();
        // Once both said goodbye, at once (not after `forever`).
        tokio::time::timeout(Duration::from_secs(10), h.sessions_ended(forever))
            .await
            .expect("the sessions ended");
    }

    #[tokio::test]
    async fn regression_a_stranger_evicted_mid_handshake_still_settles_its_guess() {
        // A connection evicted after the ServerHello dropped its handshake task with the guess
        // charge unsettled: the source kept an attempt open forever, so it was never clean
        // again and never forgotten.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = HolderOptions {
            max_connections: 1,
            ..HolderOptions::default()
        };
        let pass = Passphrase::new("secret123".into()).unwrap();
        let h = Holder::start(
            pass,
            opts,
            Discovery::bind(Scope::loopback(port)).unwrap(),
            ignore(),
        )
        .await
        .unwrap();
        let mut first = connect_from("127.0.0.2", h.local_addr()).await;
        let guess = Passphrase::new("guess".into()).unwrap();
        let (_, hello) = handshake::Client::start(&guess, PeerId::random());
        let mut frame = (hello.len() as u16).to_be_bytes().to_vec();
        frame.extend(hello);
        first.write_all(&frame).await.unwrap();
        // The ServerHello: the holder now waits for our ClientFinish, its charge open.
        let len = first.read_u16().await.unwrap();
        let mut server_hello = vec![0; len as usize];
        first.read_exact(&mut server_hello).await.unwrap();
        let from = SourceKey::from("127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(h.inner.budget.lock().unwrap().open(from), 1);
        // Another stranger takes the only slot: the first is evicted mid-handshake.
        let _second = connect_from("127.0.0.3", h.local_addr()).await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.inner.budget.lock().unwrap().open(from) != 0 {
            assert!(
                Instant::now() < deadline,
                "the evicted attempt was never settled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn silent_connections_cost_no_guesses_and_are_capped_per_source() {
        let h = holder().await;
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(connect_from("127.0.0.2", h.local_addr()).await);
        }
        // Past the per-address cap, further connections from there are closed at once...
        let mut extra = connect_from("127.0.0.2", h.local_addr()).await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        // ...while another address is served normally.
        assert!(guess(h.local_addr(), "secret123").await);
        // The silent ones used no guesses: once they go, that address may guess its burst.
        drop(silent);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = connect_from("127.0.0.2", h.local_addr()).await;
        let pass = Passphrase::new("guess".into()).unwrap();
        let (_, hello) = handshake::Client::start(&pass, PeerId::random());
        let mut frame = (hello.len() as u16).to_be_bytes().to_vec();
        frame.extend(hello);
        s.write_all(&frame).await.unwrap();
        assert!(s.read_u16().await.is_ok());
    }
}
