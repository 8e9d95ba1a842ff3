//! The receiver (`deaddrop run`): follows announcements, syncs with each holder whose drops
//! changed, and fetches every new drop it is allowed to. The bookkeeping ([`PeerTable`],
//! [`SeenDrops`]) is pure and bounded; [`run`] wires it to sockets.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::beacon::Beacon;
use crate::client::{ClientContext, FetchError, FetchOutcome, HolderSession, MemorySink};
use crate::discovery::Discovery;
use crate::event::{Event, Events, Throttle};
use crate::holder::{ANNOUNCE_EVERY, MAX_MESSAGE};
use crate::id::{PeerId, Token};
use crate::message::{DropInfo, DropKind, Refusal};
use crate::sink::{self, Destination, FileSink};
use crate::units::format_size;

/// Holders tracked at once. Announcements from more are ignored until some go quiet.
pub const MAX_PEERS: usize = 512;
/// Holders tracked per source address: one host cannot fill the table with fake ids.
pub const MAX_PEERS_PER_ADDRESS: usize = 16;
/// Syncs running at once.
pub const MAX_PARALLEL_SYNCS: usize = 8;
/// A holder not heard from for this long is forgotten.
pub const PEER_SILENCE: Duration = Duration::from_secs(60);
/// Drops remembered as seen at once.
pub const MAX_SEEN: usize = 100_000;
/// How long a seen drop is remembered after its holder said it expires.
const SEEN_MARGIN: Duration = Duration::from_secs(60);

/// A holder process at one address.
pub type PeerKey = (PeerId, SocketAddr);

#[derive(Debug)]
struct PeerState {
    last_heard: Instant,
    synced: Option<u64>,
    busy: bool,
    wanted: Option<u64>,
    /// Failed the room handshake: not in our room (or someone interfered). Never retried while
    /// this process keeps announcing, so a foreign holder costs one handshake, not one per drop.
    foreign: bool,
    failures: u32,
    retry_at: Instant,
}

/// How one sync with a holder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Every drop on offer was handled.
    Complete,
    /// Something failed on the way; try again later.
    Incomplete,
    /// The holder failed the room handshake.
    Rejected,
}

/// Which holders are known, what was last synced from each, and which may be tried now.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerKey, PeerState>,
    per_address: HashMap<IpAddr, usize>,
    busy: usize,
}

impl PeerTable {
    /// An announcement arrived. Returns the generation to sync now, if any.
    pub fn on_announce(&mut self, key: PeerKey, generation: u64, now: Instant) -> Option<u64> {
        if !self.peers.contains_key(&key) {
            let ip = key.1.ip();
            // Full: make room by forgetting the holder heard from least recently (holders that
            // exited stop announcing). A flood of fake ids from one address only churns that
            // address's own slots.
            let on_address = self.per_address.get(&ip).copied().unwrap_or(0);
            if on_address >= MAX_PEERS_PER_ADDRESS && !self.evict_oldest(|k| k.1.ip() == ip) {
                return None;
            }
            if self.peers.len() >= MAX_PEERS && !self.evict_oldest(|_| true) {
                return None;
            }
            *self.per_address.entry(ip).or_default() += 1;
            self.peers.insert(
                key,
                PeerState {
                    last_heard: now,
                    synced: None,
                    busy: false,
                    wanted: None,
                    foreign: false,
                    failures: 0,
                    retry_at: now,
                },
            );
        }
        let busy_total = self.busy;
        let st = self.peers.get_mut(&key).expect("inserted above");
        st.last_heard = now;
        if st.foreign || st.synced == Some(generation) {
            return None;
        }
        if st.busy {
            st.wanted = Some(generation);
            return None;
        }
        if now < st.retry_at || busy_total >= MAX_PARALLEL_SYNCS {
            return None;
        }
        st.busy = true;
        self.busy += 1;
        Some(generation)
    }

    /// A sync finished. Returns a newer generation to sync at once, if one was announced meanwhile.
    pub fn on_sync_done(
        &mut self,
        key: PeerKey,
        generation: u64,
        outcome: SyncOutcome,
        now: Instant,
    ) -> Option<u64> {
        let st = self.peers.get_mut(&key)?;
        if st.busy {
            st.busy = false;
            self.busy -= 1;
        }
        match outcome {
            SyncOutcome::Complete => {
                st.synced = Some(generation);
                st.failures = 0;
            }
            SyncOutcome::Incomplete => {
                st.failures = st.failures.saturating_add(1);
                let backoff = Duration::from_millis(500) * 2u32.saturating_pow(st.failures.min(6));
                st.retry_at = now + backoff.min(Duration::from_secs(30));
            }
            SyncOutcome::Rejected => st.foreign = true,
        }
        let wanted = st.wanted.take()?;
        if st.foreign || st.synced == Some(wanted) || now < st.retry_at {
            return None;
        }
        st.busy = true;
        self.busy += 1;
        Some(wanted)
    }

    /// Forgets the least recently heard idle holder that `which` selects. False if none.
    fn evict_oldest(&mut self, which: impl Fn(&PeerKey) -> bool) -> bool {
        let oldest = self
            .peers
            .iter()
            .filter(|(k, st)| !st.busy && which(k))
            .min_by_key(|(_, st)| st.last_heard)
            .map(|(k, _)| *k);
        let Some(key) = oldest else { return false };
        self.peers.remove(&key);
        self.forget_address(key.1.ip());
        true
    }

    fn forget_address(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }

    /// Forgets holders that have gone quiet.
    pub fn prune(&mut self, now: Instant) {
        let quiet: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, st)| !st.busy && now.duration_since(st.last_heard) >= PEER_SILENCE)
            .map(|(k, _)| *k)
            .collect();
        for key in quiet {
            self.peers.remove(&key);
            self.forget_address(key.1.ip());
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The drops this receiver has handled (fetched, or decided not to), so none is shown twice,
/// whatever is re-announced; and the ones being fetched right now, so two holders' sessions do
/// not fetch the same drop at once.
#[derive(Debug, Default)]
pub struct SeenDrops {
    done: HashMap<Token, Instant>,
    in_progress: std::collections::HashSet<Token>,
}

impl SeenDrops {
    /// True if `token` is new and now claimed by the caller.
    pub fn claim(&mut self, token: Token) -> bool {
        if self.done.contains_key(&token) || self.in_progress.contains(&token) {
            return false;
        }
        self.in_progress.insert(token);
        true
    }

    /// The claimed drop is handled; remember it until `forget_at`.
    pub fn done(&mut self, token: Token, forget_at: Instant) {
        self.in_progress.remove(&token);
        if self.done.len() >= MAX_SEEN {
            self.prune(Instant::now());
        }
        if self.done.len() < MAX_SEEN {
            self.done.insert(token, forget_at);
        }
    }

    /// The claimed drop was not handled; it may be tried again.
    pub fn release(&mut self, token: Token) {
        self.in_progress.remove(&token);
    }

    pub fn prune(&mut self, now: Instant) {
        self.done.retain(|_, forget_at| *forget_at > now);
    }

    pub fn contains(&self, token: &Token) -> bool {
        self.done.contains_key(token)
    }
}

/// What `run` does with drops.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Largest message fetched.
    pub max_message: usize,
    /// Where file and folder drops are saved; `None` takes messages only.
    pub files: Option<PathBuf>,
    /// File and folder drops larger than this are shown but not fetched.
    pub max_size: Option<u64>,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        Self {
            max_message: MAX_MESSAGE,
            files: Some(PathBuf::from(".")),
            max_size: None,
        }
    }
}

struct Shared {
    ctx: ClientContext,
    opts: ReceiverOptions,
    seen: Mutex<SeenDrops>,
    events: Events,
}

/// Gaps between the start-up queries; after these, holders' periodic announcements suffice.
const QUERY_GAPS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_secs(2),
];

/// Runs a receiver until `shutdown` resolves.
pub async fn run(
    ctx: ClientContext,
    opts: ReceiverOptions,
    discovery: Discovery,
    events: Events,
    shutdown: impl Future<Output = ()>,
) {
    (events)(Event::Listening {
        discovery_port: discovery.scope().port,
        targets: discovery
            .scope()
            .targets
            .iter()
            .map(ToString::to_string)
            .collect(),
    });
    let me = ctx.id;
    let shared = Arc::new(Shared {
        ctx,
        opts,
        seen: Mutex::new(SeenDrops::default()),
        events,
    });
    let sweep_partials = |shared: &Shared| {
        if let Some(dir) = shared.opts.files.clone() {
            // Partial files of expired drops, from interrupted fetches.
            tokio::task::spawn_blocking(move || sink::sweep(&dir));
        }
    };
    sweep_partials(&shared);
    let mut table = PeerTable::default();
    let mut syncs = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let spawn = |syncs: &mut JoinSet<()>, key: PeerKey, generation: u64| {
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        syncs.spawn(async move {
            let outcome = sync(&shared, key).await;
            let _ = done_tx.send((key, generation, outcome));
        });
    };
    let mut queries = QUERY_GAPS.iter();
    let mut next_query = Some(Instant::now());
    let mut next_prune = Instant::now() + Duration::from_secs(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (beacon, src) = discovery.recv() => {
                let Beacon::Announce { id, port, generation } = beacon else { continue };
                if id == me {
                    continue;
                }
                let key = (id, SocketAddr::new(src.ip(), port));
                if let Some(g) = table.on_announce(key, generation, Instant::now()) {
                    spawn(&mut syncs, key, g);
                }
            }
            Some((key, generation, outcome)) = done_rx.recv() => {
                if outcome == SyncOutcome::Rejected {
                    (shared.events)(Event::Rejected { address: key.1.to_string() });
                }
                if let Some(g) = table.on_sync_done(key, generation, outcome, Instant::now()) {
                    spawn(&mut syncs, key, g);
                }
            }
            _ = sleep_until(next_query.unwrap_or(next_prune)), if next_query.is_some() => {
                discovery.send_all(&Beacon::Query { id: me }).await;
                // Unicast peers do not hear each other's broadcasts: keep asking them.
                let gap = queries.next().copied().or_else(|| {
                    (!discovery.scope().peers.is_empty()).then_some(ANNOUNCE_EVERY)
                });
                next_query = gap.map(|gap| Instant::now() + gap);
            }
            _ = sleep_until(next_prune) => {
                let now = Instant::now();
                table.prune(now);
                shared.seen.lock().expect("seen lock").prune(now);
                sweep_partials(&shared);
                next_prune = now + Duration::from_secs(60);
            }
            Some(_) = syncs.join_next(), if !syncs.is_empty() => {}
        }
    }
    syncs.abort_all();
}

/// One session with one holder: list, then fetch every new drop.
async fn sync(shared: &Shared, (id, addr): PeerKey) -> SyncOutcome {
    let mut hs = match HolderSession::open(&shared.ctx, addr, Some(id)).await {
        Ok(hs) => hs,
        Err(e) if e.is_rejection() => return SyncOutcome::Rejected,
        Err(e) => {
            tracing::info!("cannot reach holder at {addr}: {e}");
            return SyncOutcome::Incomplete;
        }
    };
    let mut drops = match hs.list().await {
        Ok(d) => d,
        Err(e) => {
            tracing::info!("listing from {addr} failed: {e}");
            return SyncOutcome::Incomplete;
        }
    };
    drops.sort_by_key(|d| (d.created_unix, d.ttl_left_ms));
    for info in drops {
        if !shared.seen.lock().expect("seen lock").claim(info.token) {
            continue;
        }
        let forget_at = Instant::now() + Duration::from_millis(info.ttl_left_ms) + SEEN_MARGIN;
        match handle_drop(shared, &mut hs, &info).await {
            Ok(true) => shared
                .seen
                .lock()
                .expect("seen lock")
                .done(info.token, forget_at),
            Ok(false) => shared.seen.lock().expect("seen lock").release(info.token),
            Err(e) => {
                let resumable = e.is_resumable();
                {
                    let mut seen = shared.seen.lock().expect("seen lock");
                    // A broken connection is tried again (resuming); a drop that cannot be
                    // taken here (no space, corrupt, changed at the source) is not.
                    if resumable {
                        seen.release(info.token);
                    } else {
                        seen.done(info.token, forget_at);
                    }
                }
                (shared.events)(Event::FetchFailed {
                    token: info.token.into(),
                    from: hs.name.clone(),
                    reason: if resumable {
                        format!("{e}; the drop is not burned and will be resumed")
                    } else {
                        e.to_string()
                    },
                });
                // The session may be unusable now; the rest waits for the next sync.
                return SyncOutcome::Incomplete;
            }
        }
    }
    hs.close().await;
    SyncOutcome::Complete
}

/// Fetches or skips one drop. `Ok(true)`: handled for good; `Ok(false)`: may be tried again.
async fn handle_drop(
    shared: &Shared,
    hs: &mut HolderSession,
    info: &DropInfo,
) -> Result<bool, FetchError> {
    let skip = |reason: String| {
        (shared.events)(Event::Skipped {
            token: info.token.into(),
            kind: info.kind,
            name: info.name.clone(),
            size: info.size,
            from: hs.name.clone(),
            reason,
        });
        Ok(true)
    };
    match info.kind {
        DropKind::Message if info.size <= shared.opts.max_message as u64 => {}
        DropKind::Message => {
            return skip(format!(
                "larger than {} bytes; fetch it by token",
                shared.opts.max_message
            ));
        }
        DropKind::File | DropKind::Directory => {
            let Some(dir) = &shared.opts.files else {
                return skip("files are not taken (--no-files); fetch it by token".into());
            };
            if let Some(max) = shared.opts.max_size
                && info.size > max
            {
                return skip(format!(
                    "larger than --max-size {}; fetch it by token",
                    format_size(max)
                ));
            }
            return fetch_file(shared, hs, info, dir).await;
        }
        DropKind::Other(_) => return skip("a kind of drop this version does not know".into()),
    }
    let mut sink = MemorySink::new(shared.opts.max_message);
    match hs.fetch(info.token, &mut sink, |_, _| {}).await? {
        FetchOutcome::Done(info) => {
            (shared.events)(Event::Message {
                token: info.token.into(),
                from: hs.name.clone(),
                address: hs.addr.to_string(),
                text: String::from_utf8_lossy(&sink.data).into_owned(),
                sent_unix: info.created_unix,
            });
            Ok(true)
        }
        FetchOutcome::Refused(reason) => Ok(settle_refusal(shared, info.token, reason)),
    }
}

/// What a refusal means for this receiver: true if the drop is settled (we have it), false if it
/// may be tried again when it is offered anew.
fn settle_refusal(shared: &Shared, token: Token, reason: Refusal) -> bool {
    match reason {
        // Someone else has it (or it just expired): if it comes back, a new generation says so.
        Refusal::Taken | Refusal::NotFound => false,
        Refusal::AlreadyYours => true,
        reason => {
            (shared.events)(Event::Refused {
                token: token.into(),
                reason,
            });
            false
        }
    }
}

/// Fetches a file or folder drop into `dir`, resuming a partial copy if there is one.
async fn fetch_file(
    shared: &Shared,
    hs: &mut HolderSession,
    info: &DropInfo,
    dir: &std::path::Path,
) -> Result<bool, FetchError> {
    let dest = Destination::Folder(dir.to_owned());
    let mut sink = FileSink::new(dest, info.token, shared.opts.max_size)?;
    let (events, token, peer) = (&shared.events, info.token, hs.name.clone());
    let mut throttle = Throttle::new();
    let progress = |done: u64, total: u64| {
        if throttle.ready(done == total) {
            events(Event::Progress {
                token: token.into(),
                peer: peer.clone(),
                sending: false,
                done,
                total,
            });
        }
    };
    match hs.fetch(info.token, &mut sink, progress).await? {
        FetchOutcome::Done(info) => {
            (shared.events)(Event::Received {
                token: info.token.into(),
                kind: info.kind,
                path: sink
                    .published()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                size: info.size,
                from: hs.name.clone(),
                address: hs.addr.to_string(),
            });
            Ok(true)
        }
        FetchOutcome::Refused(reason) => Ok(settle_refusal(shared, info.token, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, ip: &str) -> PeerKey {
        (PeerId([n; 16]), SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    #[test]
    fn one_sync_per_generation() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let k = key(1, "10.0.0.1");
        assert_eq!(t.on_announce(k, 7, now), Some(7));
        assert_eq!(t.on_announce(k, 7, now), None, "busy");
        assert_eq!(t.on_sync_done(k, 7, SyncOutcome::Complete, now), None);
        assert_eq!(t.on_announce(k, 7, now), None, "already synced");
        assert_eq!(t.on_announce(k, 8, now), Some(8));
    }

    #[test]
    fn a_change_during_a_sync_is_synced_right_after() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let k = key(1, "10.0.0.1");
        t.on_announce(k, 1, now);
        assert_eq!(t.on_announce(k, 2, now), None);
        assert_eq!(t.on_sync_done(k, 1, SyncOutcome::Complete, now), Some(2));
    }

    #[test]
    fn a_foreign_holder_costs_one_handshake() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let k = key(1, "10.0.0.1");
        assert!(t.on_announce(k, 1, now).is_some());
        t.on_sync_done(k, 1, SyncOutcome::Rejected, now);
        for g in 2..100 {
            assert_eq!(t.on_announce(k, g, now), None);
        }
        // The same id at another address is another process as far as we can tell.
        assert!(t.on_announce(key(1, "10.0.0.2"), 1, now).is_some());
    }

    #[test]
    fn failures_back_off() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let k = key(1, "10.0.0.1");
        t.on_announce(k, 1, now);
        t.on_sync_done(k, 1, SyncOutcome::Incomplete, now);
        assert_eq!(t.on_announce(k, 1, now + Duration::from_millis(100)), None);
        assert_eq!(t.on_announce(k, 1, now + Duration::from_secs(1)), Some(1));
    }

    #[test]
    fn fake_ids_from_one_address_are_bounded() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        for i in 0..200u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let k = (PeerId(id), "10.0.0.66:4000".parse().unwrap());
            let started = t.on_announce(k, 1, now);
            if let Some(g) = started {
                t.on_sync_done(k, g, SyncOutcome::Rejected, now);
            }
        }
        assert_eq!(t.len(), MAX_PEERS_PER_ADDRESS);
        assert!(t.on_announce(key(9, "10.0.0.7"), 1, now).is_some());
    }

    #[test]
    fn regression_a_17th_sender_from_one_host_is_not_ignored() {
        // Sixteen send-msg processes from one host, each synced and gone, filled that host's
        // slots for a minute and the seventeenth message was never fetched.
        let start = Instant::now();
        let mut t = PeerTable::default();
        for i in 0..40u8 {
            let now = start + Duration::from_secs(u64::from(i));
            let k = key(i, "10.77.0.1");
            assert_eq!(t.on_announce(k, 1, now), Some(1), "sender {i}");
            t.on_sync_done(k, 1, SyncOutcome::Complete, now);
        }
        assert!(t.len() <= MAX_PEERS_PER_ADDRESS);
    }

    #[test]
    fn eviction_never_drops_a_busy_holder() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        for i in 0..MAX_PEERS_PER_ADDRESS as u8 {
            assert!(
                t.on_announce(key(i, "10.0.0.1"), 1, now).is_some()
                    || i >= MAX_PARALLEL_SYNCS as u8
            );
        }
        // Eight are busy syncing, eight idle: newcomers evict only idle ones.
        for i in 100..120u8 {
            t.on_announce(key(i, "10.0.0.1"), 1, now + Duration::from_secs(1));
        }
        assert_eq!(t.busy, MAX_PARALLEL_SYNCS);
        assert_eq!(
            t.peers.values().filter(|s| s.busy).count(),
            MAX_PARALLEL_SYNCS
        );
    }

    #[test]
    fn the_table_is_bounded_and_pruned() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        for i in 0..(MAX_PEERS as u32 + 50) {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let k = (PeerId([1; 16]), SocketAddr::new(ip, 1));
            if let Some(g) = t.on_announce(k, 1, now) {
                t.on_sync_done(k, g, SyncOutcome::Complete, now);
            }
        }
        assert_eq!(t.len(), MAX_PEERS);
        t.prune(now + PEER_SILENCE);
        assert!(t.is_empty());
        assert!(t.per_address.is_empty());
    }

    #[test]
    fn parallel_syncs_are_capped() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let started = (0..20u8)
            .filter(|i| {
                t.on_announce(key(*i, &format!("10.0.0.{i}")), 1, now)
                    .is_some()
            })
            .count();
        assert_eq!(started, MAX_PARALLEL_SYNCS);
    }

    #[test]
    fn a_drop_is_handled_once() {
        let mut s = SeenDrops::default();
        let t = Token([1; 16]);
        assert!(s.claim(t));
        assert!(!s.claim(t), "claimed by another session");
        s.release(t);
        assert!(s.claim(t));
        let now = Instant::now();
        s.done(t, now + Duration::from_secs(5));
        assert!(!s.claim(t));
        s.prune(now + Duration::from_secs(5));
        assert!(!s.contains(&t));
    }
}
