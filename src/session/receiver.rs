//! The receiver (`deaddrop run`): follows announcements, syncs with each holder whose drops
//! changed, and fetches every new drop it is allowed to. The bookkeeping ([`crate::session::contacts::Book`],
//! [`SeenDrops`]) is pure and bounded; [`run`] wires it to sockets.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::discovery::Discovery;
use crate::event::{Event, Events, Throttle};
use crate::protocol::id::Token;
use crate::protocol::message::{DropInfo, DropKind, Refusal};
use crate::session::client::{
    ClientContext, FetchError, FetchOutcome, HolderSession, MemorySink, Queries, Sessions,
    announced, sleep_until_std, timeouts_for,
};
use crate::session::contacts::{Book, Mode, Outcome};
use crate::session::holder::MAX_MESSAGE;
use crate::session::transport::Timeouts;
use crate::storage::sink::{self, Destination, FileSink};
use crate::units::format_size;

/// How often `run` asks its `--peer`s for drops.
pub const PEER_QUERY_EVERY: Duration = Duration::from_millis(750);
/// Drops remembered as seen at once.
pub const MAX_SEEN: usize = 100_000;
/// How long a seen drop is remembered after its holder said it expires.
const SEEN_MARGIN: Duration = Duration::from_secs(60);

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
        targets: discovery.paths(),
        folder: opts.files.as_ref().map(|d| d.display().to_string()),
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
    let mut book = Book::new(Mode::Follow);
    let mut syncs: Sessions<Outcome> = Sessions::default();
    // Unicast peers do not hear each other's broadcasts: keep asking them.
    let mut queries =
        Queries::new((!discovery.scope().peers.is_empty()).then_some(PEER_QUERY_EVERY));
    let mut next_prune = Instant::now() + Duration::from_secs(10);
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        while let Some(attempt) = book.next(now) {
            let shared = shared.clone();
            let (addr, timeouts) = (attempt.addr, timeouts_for(&shared.ctx, &attempt));
            syncs.spawn(attempt, async move { sync(&shared, addr, timeouts).await });
        }
        // At least a millisecond, so a wake-up that finds nothing to start cannot spin.
        let wake = book
            .next_wake(now)
            .map(|w| w.max(now + Duration::from_millis(1)));
        tokio::select! {
            _ = &mut shutdown => break,
            heard = discovery.recv() => {
                if let Some((addr, generation)) = announced(heard, me) {
                    book.on_announce(addr, generation, Instant::now());
                }
            }
            Some((attempt, outcome)) = syncs.next(), if !syncs.is_empty() => {
                let outcome = outcome.unwrap_or(Outcome::Incomplete);
                if outcome == Outcome::Rejected {
                    (shared.events)(Event::Rejected { address: attempt.addr.to_string() });
                }
                book.finished(attempt, outcome, Instant::now());
            }
            _ = sleep_until_std(wake.unwrap_or(next_prune)), if wake.is_some() => book.wake(),
            _ = queries.due() => queries.send(&discovery, me).await,
            _ = sleep_until_std(next_prune) => {
                let now = Instant::now();
                book.prune(now);
                shared.seen.lock().expect("seen lock").prune(now);
                sweep_partials(&shared);
                next_prune = now + Duration::from_secs(60);
            }
        }
    }
    syncs.abort_all();
}

/// One session with one holder: list, then fetch every new drop.
async fn sync(shared: &Shared, addr: SocketAddr, timeouts: Timeouts) -> Outcome {
    let mut hs = match HolderSession::open(&shared.ctx, addr, timeouts).await {
        Ok(hs) => hs,
        Err(e) => {
            tracing::info!("holder at {addr}: {e}");
            return e.outcome();
        }
    };
    let mut drops = match hs.list().await {
        Ok(d) => d,
        Err(e) => {
            tracing::info!("listing from {addr} failed: {e}");
            return Outcome::Incomplete;
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
                return Outcome::Incomplete;
            }
        }
    }
    hs.close().await;
    Outcome::Complete
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
