//! The receiver (`deaddrop run`): follows announcements, syncs with each holder whose drops
//! changed, and fetches every new drop it is allowed to. The bookkeeping ([`crate::session::contacts::Book`],
//! [`SeenDrops`]) is pure and bounded; [`run`] wires it to sockets.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::discovery::Discovery;
use crate::event::{Event, Events, Throttle};
use crate::protocol::id::Token;
use crate::protocol::message::{DropInfo, DropKind, Refusal};
use crate::session::client::{
    ClientContext, FetchError, FetchOutcome, HeardOnLan, HolderSession, MemorySink, Queries,
    Sessions, Transfer, announced, next_members, on_members, sleep_until_std, timeouts_for,
    wide_members,
};
use crate::session::contacts::{Book, Contact, Mode, Outcome};
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

/// The first wait before a drop that could not be saved here is tried again; it doubles per
/// failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The drops this receiver has handled (fetched, or decided not to), so none is shown twice,
/// whatever is re-announced; the ones being fetched right now, so two holders' sessions do
/// not fetch the same drop at once; and the ones that failed here and wait to be tried again.
#[derive(Debug, Default)]
pub struct SeenDrops {
    done: HashMap<Token, Instant>,
    in_progress: std::collections::HashSet<Token>,
    failing: HashMap<Token, Failing>,
}

#[derive(Debug)]
struct Failing {
    retry_at: Instant,
    failures: u32,
    /// The last reason reported, so a failure that repeats is reported once.
    reason: String,
    forget_at: Instant,
}

/// What a sync may do with a drop it sees listed.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Fetch it (or decide not to) now.
    Yours,
    /// Handled already, or another session has it right now.
    Taken,
    /// It failed here earlier; try again after this instant.
    Later(Instant),
}

impl SeenDrops {
    /// Claims `token` for the caller if it is new, or due to be tried again.
    pub fn claim(&mut self, token: Token, now: Instant) -> Claim {
        if self.done.contains_key(&token) || self.in_progress.contains(&token) {
            return Claim::Taken;
        }
        if let Some(f) = self.failing.get(&token)
            && f.retry_at > now
        {
            return Claim::Later(f.retry_at);
        }
        self.in_progress.insert(token);
        Claim::Yours
    }

    /// The claimed drop is handled; remember it until `forget_at`.
    pub fn done(&mut self, token: Token, forget_at: Instant) {
        self.in_progress.remove(&token);
        self.failing.remove(&token);
        if self.done.len() >= MAX_SEEN {
            self.prune(Instant::now());
        }
        if self.done.len() < MAX_SEEN {
            self.done.insert(token, forget_at);
        }
    }

    /// The claimed drop was not handled; it may be tried again at once.
    pub fn release(&mut self, token: Token) {
        self.in_progress.remove(&token);
    }

    /// The claimed drop failed here for `reason`; it is tried again after a growing pause.
    /// True if this reason is news (not what the last failure of this drop said).
    pub fn failed(&mut self, token: Token, reason: &str, now: Instant, forget_at: Instant) -> bool {
        self.in_progress.remove(&token);
        if !self.failing.contains_key(&token) && self.failing.len() >= MAX_SEEN {
            self.prune(now);
            if self.failing.len() >= MAX_SEEN {
                return false;
            }
        }
        let f = self.failing.entry(token).or_insert_with(|| Failing {
            retry_at: now,
            failures: 0,
            reason: String::new(),
            forget_at,
        });
        f.failures += 1;
        let pause = RETRY_FIRST
            .saturating_mul(1 << (f.failures - 1).min(16))
            .min(RETRY_MAX);
        f.retry_at = now + pause;
        f.forget_at = forget_at;
        let news = f.reason != reason;
        if news {
            f.reason = reason.to_owned();
        }
        news
    }

    pub fn prune(&mut self, now: Instant) {
        self.done.retain(|_, forget_at| *forget_at > now);
        self.failing.retain(|_, f| f.forget_at > now);
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
    let mut members = wide_members(&shared.ctx);
    let mut lan = HeardOnLan::default();
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
                if let Some((addr, generation, id)) = announced(heard, me) {
                    lan.note(id);
                    book.on_announce(addr, generation, Some(id), Instant::now());
                }
            }
            list = next_members(&mut members) => on_members(&mut book, &list, &lan),
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
async fn sync(shared: &Shared, addr: Contact, timeouts: Timeouts) -> Outcome {
    let started = Instant::now();
    let mut hs = match HolderSession::open(&shared.ctx, addr, timeouts).await {
        Ok(hs) => {
            tracing::debug!(
                "holder at {addr}: session open in {} ms",
                started.elapsed().as_millis()
            );
            hs
        }
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
    // A drop waiting to be tried again needs another sync, even if everything else is done.
    let mut later = false;
    for info in drops {
        match shared
            .seen
            .lock()
            .expect("seen lock")
            .claim(info.token, Instant::now())
        {
            Claim::Yours => {}
            Claim::Taken => continue,
            Claim::Later(_) => {
                later = true;
                continue;
            }
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
                let (reason, retrying) = failure(&e, &hs.name);
                let news = {
                    let mut seen = shared.seen.lock().expect("seen lock");
                    if e.is_resumable() {
                        // The connection broke: the next sync resumes.
                        seen.release(info.token);
                        true
                    } else if e.is_local() {
                        seen.failed(info.token, &reason, Instant::now(), forget_at)
                    } else {
                        seen.done(info.token, forget_at);
                        true
                    }
                };
                if news {
                    (shared.events)(Event::FetchFailed {
                        token: info.token.into(),
                        kind: info.kind,
                        name: info.name.clone(),
                        from: hs.name.clone(),
                        reason,
                        retrying,
                    });
                }
                // The session may be unusable now; the rest waits for the next sync.
                return Outcome::Incomplete;
            }
        }
    }
    hs.close().await;
    if later {
        Outcome::Incomplete
    } else {
        Outcome::Complete
    }
}

/// What a failed fetch means for the user, in words, and whether `run` tries again.
fn failure(e: &FetchError, holder: &str) -> (String, bool) {
    if e.is_resumable() {
        (
            format!(
                "{e}; what arrived is kept, and the fetch resumes if {holder} can be reached again before the drop expires"
            ),
            true,
        )
    } else if e.is_local() {
        (
            format!("{e}; trying again while the drop is on offer"),
            true,
        )
    } else if let FetchError::Aborted(Refusal::Withdrawn) = e {
        (
            "the sender withdrew the drop; what arrived was deleted".into(),
            false,
        )
    } else {
        (e.to_string(), false)
    }
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
    match hs.fetch(info.token, &mut sink, |_| {}).await? {
        FetchOutcome::Done(info) => {
            (shared.events)(Event::Message {
                token: info.token.into(),
                from: hs.name.clone(),
                address: hs.addr.to_string(),
                via: hs.via(),
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
    let mut sink = FileSink::new(dest, info.token, shared.opts.max_size).map_err(|error| {
        FetchError::Save {
            folder: dir.to_owned(),
            error,
        }
    })?;
    let events = &shared.events;
    let mut throttle = Throttle::new();
    let progress = |t: &Transfer<'_>| {
        if throttle.ready(t.done == t.info.size) {
            events(t.event(false));
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
                size: sink.saved().bytes,
                files: sink.saved().files,
                from: hs.name.clone(),
                address: hs.addr.to_string(),
                via: hs.via(),
            });
            Ok(true)
        }
        FetchOutcome::Refused(reason) => {
            // This holder listed it: whatever the refusal, what we have of it cannot be
            // completed from here.
            sink.discard();
            Ok(settle_refusal(shared, info.token, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_is_handled_once() {
        let mut s = SeenDrops::default();
        let t = Token([1; 16]);
        let now = Instant::now();
        assert_eq!(s.claim(t, now), Claim::Yours);
        assert_eq!(s.claim(t, now), Claim::Taken, "claimed by another session");
        s.release(t);
        assert_eq!(s.claim(t, now), Claim::Yours);
        s.done(t, now + Duration::from_secs(5));
        assert_eq!(s.claim(t, now), Claim::Taken);
        s.prune(now + Duration::from_secs(5));
        assert!(!s.contains(&t));
    }

    #[test]
    fn a_drop_that_failed_here_is_tried_again_later_and_reported_once_per_reason() {
        let mut s = SeenDrops::default();
        let t = Token([2; 16]);
        let now = Instant::now();
        let forget = now + Duration::from_secs(600);
        assert_eq!(s.claim(t, now), Claim::Yours);
        assert!(s.failed(t, "disk full", now, forget), "first report");
        assert_eq!(s.claim(t, now), Claim::Later(now + RETRY_FIRST));
        assert_eq!(s.claim(t, now + RETRY_FIRST), Claim::Yours);
        let then = now + RETRY_FIRST;
        assert!(
            !s.failed(t, "disk full", then, forget),
            "same reason: quiet"
        );
        assert_eq!(
            s.claim(t, then),
            Claim::Later(then + 2 * RETRY_FIRST),
            "backs off"
        );
        let mut at = then;
        for _ in 0..20 {
            at += RETRY_MAX;
            assert_eq!(s.claim(t, at), Claim::Yours);
            s.failed(t, "disk full", at, forget);
        }
        assert_eq!(s.claim(t, at), Claim::Later(at + RETRY_MAX), "capped");
        assert!(
            s.failed(t, "permission denied", at + RETRY_MAX, forget),
            "news"
        );
        s.done(t, forget);
        assert_eq!(s.claim(t, at), Claim::Taken, "saved at last");
        s.prune(forget);
        assert!(s.failing.is_empty() && s.done.is_empty());
    }
}
