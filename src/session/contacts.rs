//! Which holders a fetching process (`run`, `list`, `fetch`) contacts, when, and in what order.
//! Pure: announcements, outcomes and `now` in; the next session to open out.
//!
//! Announcements are not authenticated (anyone can send one, from any source address), so
//! everything an announcement can make us do is bounded here:
//! - **Guesses.** Each session's handshake takes a token from the [`GuessBudget`] before we
//!   connect; it is given back unless we evaluated a ServerHello that failed. A fake holder gets
//!   the same number of guesses as a fake receiver gets from a holder.
//! - **Connections.** Each source address has a connection bucket ([`CONNECT_BURST`], then
//!   [`CONNECTS_PER_SECOND`]), given back when the holder proves it is in the room, so spoofed
//!   announcements cannot make us connect to one address faster than that.
//! - **Sessions.** At most [`MAX_SESSIONS`] at once; an address with no proven member gets one at
//!   a time, and addresses that have failed recently share all but [`RESERVED_FOR_GOOD`]. When a
//!   session ends, the next one goes to the address served least recently, proven members first,
//!   so a flood from other addresses delays a real holder by at most about one handshake timeout.
//! - **Memory.** Holders are tracked by TCP endpoint (address and port: one process each), at
//!   most [`MAX_ENDPOINTS`]; [`MAX_ENDPOINTS_PER_HOST`] per address, or
//!   [`MAX_ENDPOINTS_PER_MEMBER_HOST`] once a holder there has proven it is in the room (a
//!   device making many drops at once runs one holder process per drop); a flood of fresh ids at
//!   one endpoint is one entry.
//! - **One holder, one session.** A holder reached on several paths (IPv4 and IPv6, the LAN and
//!   beyond) announces the same id on each. Endpoints that announce one id are *aliases*: only
//!   one of them (the *lead*: the first heard that is not failing) gets sessions while it covers what the
//!   others announce (a session under way, or the same generation synced or wanted); the others
//!   wait, and take over if the lead fails. Ids are not authenticated, so an alias only ever
//!   waits for a lead that is doing the same work: a spoofed id can delay a holder by at most
//!   one session of its lead, never hide a generation the lead does not cover.
//!
//! Failures are retried, never given up on for good while the holder keeps announcing: a cut
//! connection (busy, rate-limited, silent) with backoff up to 30 s; a holder that failed the
//! passphrase check (another room, or an attacker) only for a new generation, with backoff up to
//! 10 minutes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::protocol::id::PeerId;
use crate::session::limit::{Bucket, BudgetConfig, Charge, GuessBudget, Settled, SourceKey};

/// Where a holder is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contact {
    /// A TCP endpoint on the LAN (one process each).
    Lan(SocketAddr),
    /// A device endpoint of a wide-area room, by its endpoint id (an Ed25519 public key that
    /// the QUIC handshake proves), reached directly or through the room's relay; with the
    /// process it was listed for at the meeting point, where known. A device's processes share
    /// its endpoint id, so its next process is a new contact (as a new port is on the LAN): a
    /// dial still waiting for a process that has exited does not hold up its successor.
    Wide([u8; 32], Option<PeerId>),
}

impl Contact {
    /// The source it counts as, for sessions per host, connection buckets and guesses.
    pub fn source(&self) -> SourceKey {
        match self {
            Contact::Lan(addr) => SourceKey::from(addr.ip()),
            Contact::Wide(id, _) => SourceKey::endpoint(id),
        }
    }
}

impl From<SocketAddr> for Contact {
    fn from(addr: SocketAddr) -> Self {
        Contact::Lan(addr)
    }
}

impl std::fmt::Display for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contact::Lan(addr) => write!(f, "{addr}"),
            // As iroh shows endpoint ids in short: the first 5 bytes in hex.
            Contact::Wide(id, _) => {
                f.write_str("endpoint ")?;
                for b in &id[..5] {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Holder endpoints tracked at once.
pub const MAX_ENDPOINTS: usize = 512;
/// Holder endpoints tracked per source address with no proven room member.
pub const MAX_ENDPOINTS_PER_HOST: usize = 16;
/// Holder endpoints tracked per source address with a proven room member.
pub const MAX_ENDPOINTS_PER_MEMBER_HOST: usize = 128;
/// Endpoints that announce one id and are kept as its aliases (more are tracked without one).
const MAX_ALIASES: usize = 8;
/// Sessions open at once.
pub const MAX_SESSIONS: usize = 32;
/// Sessions at once with one address that has a proven room member (else one).
pub const MAX_SESSIONS_PER_MEMBER_HOST: usize = 8;
/// Sessions kept for addresses with no recent failure.
pub const RESERVED_FOR_GOOD: usize = 8;
/// Connection attempts one address may cause at once...
pub const CONNECT_BURST: f64 = 16.0;
/// ...and per second in the long run (given back when the holder proves membership).
pub const CONNECTS_PER_SECOND: f64 = 4.0;
/// A holder endpoint not heard from for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// An address whose session failed before the passphrase check counts as failing this long.
const BAD_FOR: Duration = Duration::from_secs(60);
const CUT_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const CUT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const FOREIGN_BACKOFF_FIRST: Duration = Duration::from_secs(30);
const FOREIGN_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// What the process wants from holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run`: sync with every holder each time what it offers changes.
    Follow,
    /// `list`, `fetch`: one complete session with each holder.
    Once,
}

/// How a session with a holder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated, and everything wanted was done.
    Complete,
    /// Authenticated, then something failed; try again later.
    Incomplete,
    /// The holder failed the passphrase check: another room, or someone interfering.
    Rejected,
    /// The connection failed before any passphrase check: the holder hung up, went silent or
    /// was busy.
    Cut,
    /// Nothing answered at that address (connection refused, no route): a stale or fake
    /// announcement. Retried like a cut.
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    /// Proven to be in the room.
    Member,
    /// Not contacted yet, or only cut.
    Stranger,
    /// Failed the passphrase check.
    Foreign,
}

#[derive(Debug)]
struct Endpoint {
    /// The id it announces (a process's, on every path to it), if it is kept as an alias.
    id: Option<PeerId>,
    last_heard: Instant,
    /// The newest generation announced, if it still needs a session.
    wanted: Option<u64>,
    /// The generation last synced completely.
    synced: Option<u64>,
    /// [`Mode::Once`]: nothing more to do here.
    done: bool,
    status: Status,
    failures: u32,
    retry_at: Instant,
    busy: bool,
    /// When it started waiting: first come, first served within an address.
    waiting_since: Instant,
}

#[derive(Debug)]
struct Host {
    endpoints: Vec<Contact>,
    busy: usize,
    last_served: Option<Instant>,
    bad_until: Option<Instant>,
    has_member: bool,
    connects: Bucket,
}

impl Host {
    fn new(now: Instant) -> Self {
        Host {
            endpoints: Vec::new(),
            busy: 0,
            last_served: None,
            bad_until: None,
            has_member: false,
            connects: Bucket::full(CONNECT_BURST, now),
        }
    }

    fn is_bad(&self, now: Instant) -> bool {
        self.bad_until.is_some_and(|t| now < t)
    }

    fn session_cap(&self, now: Instant) -> usize {
        if self.has_member && !self.is_bad(now) {
            MAX_SESSIONS_PER_MEMBER_HOST
        } else {
            1
        }
    }

    fn endpoint_cap(&self) -> usize {
        if self.has_member {
            MAX_ENDPOINTS_PER_MEMBER_HOST
        } else {
            MAX_ENDPOINTS_PER_HOST
        }
    }
}

/// A session the book decided to open. Hand it back to [`Book::finished`].
#[derive(Debug)]
#[must_use = "every attempt must be finished"]
pub struct Attempt {
    /// Where the holder is reached.
    pub addr: Contact,
    /// The generation this session syncs.
    pub generation: u64,
    /// The holder has proven membership before: normal timeouts, not a stranger's.
    pub member: bool,
    charge: Charge,
    bad_host: bool,
}

/// The holders a fetching process knows, and the limits on contacting them.
#[derive(Debug)]
pub struct Book {
    mode: Mode,
    endpoints: HashMap<Contact, Endpoint>,
    hosts: HashMap<SourceKey, Host>,
    /// Endpoints by the id they announce: a holder's paths.
    aliases: HashMap<PeerId, Vec<Contact>>,
    guesses: GuessBudget,
    busy: usize,
    busy_bad: usize,
    /// Something may be startable that was not at the last look.
    dirty: bool,
    /// [`Book::next_wake`]'s answer, while nothing it depends on has changed.
    wake_at: std::cell::Cell<Option<Option<Instant>>>,
}

/// Whether an endpoint waits for a session (now, or once its backoff ends).
fn wants_session(mode: Mode, e: &Endpoint) -> bool {
    !e.busy
        && !e.done
        && match mode {
            Mode::Follow => e.wanted.is_some_and(|g| e.synced != Some(g)),
            Mode::Once => e.wanted.is_some(),
        }
}

fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    (first * 2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(max)
}

impl Book {
    pub fn new(mode: Mode) -> Self {
        Self::with_budget(mode, BudgetConfig::default())
    }

    pub fn with_budget(mode: Mode, budget: BudgetConfig) -> Self {
        Book {
            mode,
            endpoints: HashMap::new(),
            hosts: HashMap::new(),
            aliases: HashMap::new(),
            guesses: GuessBudget::new(budget),
            busy: 0,
            busy_bad: 0,
            dirty: false,
            wake_at: std::cell::Cell::new(None),
        }
    }

    /// Holders tracked.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Sessions open now.
    pub fn busy(&self) -> usize {
        self.busy
    }

    /// An announcement from `addr` (on the LAN: source address, announced port) with
    /// `generation`, by the holder `id` if known.
    pub fn on_announce(
        &mut self,
        addr: impl Into<Contact>,
        generation: u64,
        id: Option<PeerId>,
        now: Instant,
    ) {
        let addr = addr.into();
        if self.endpoints.get(&addr).is_some_and(|e| e.id != id) {
            // Another process at that endpoint (the port was reused), or a spoofed id. Who
            // waits for whom is not looked at again here: fresh ids announced under a flood
            // must not cost a look at every endpoint per datagram. An alias that may start now
            // is marked by its own next announcement (below), or when a session ends.
            self.unalias(addr);
            self.alias(addr, id);
        }
        if let Some(e) = self.endpoints.get_mut(&addr) {
            e.last_heard = now;
            if e.done || e.synced == Some(generation) || e.wanted == Some(generation) {
                return;
            }
            let was_waiting = wants_session(self.mode, e);
            if e.wanted.is_none() {
                e.waiting_since = now;
            }
            e.wanted = Some(generation);
            // A newer generation for a holder already waiting changes no timing: the common
            // case under a flood of announcements stays cheap.
            if !was_waiting {
                self.wake_at.set(None);
            }
            self.mark_if_startable(addr, now);
            return;
        }
        self.wake_at.set(None);
        if !self.make_room(addr.source(), now) {
            return;
        }
        self.hosts
            .entry(addr.source())
            .or_insert_with(|| Host::new(now))
            .endpoints
            .push(addr);
        self.endpoints.insert(
            addr,
            Endpoint {
                id: None,
                last_heard: now,
                wanted: Some(generation),
                synced: None,
                done: false,
                status: Status::Stranger,
                failures: 0,
                retry_at: now,
                busy: false,
                waiting_since: now,
            },
        );
        self.alias(addr, id);
        self.mark_if_startable(addr, now);
    }

    /// Records `addr` as a path to holder `id`, unless it already has its share of them.
    fn alias(&mut self, addr: Contact, id: Option<PeerId>) {
        let Some(id) = id else { return };
        let paths = self.aliases.entry(id).or_default();
        if paths.len() >= MAX_ALIASES {
            return;
        }
        paths.push(addr);
        if let Some(e) = self.endpoints.get_mut(&addr) {
            e.id = Some(id);
        }
    }

    fn unalias(&mut self, addr: Contact) {
        let Some(id) = self.endpoints.get_mut(&addr).and_then(|e| e.id.take()) else {
            return;
        };
        if let Some(paths) = self.aliases.get_mut(&id) {
            paths.retain(|a| *a != addr);
            if paths.is_empty() {
                self.aliases.remove(&id);
            }
        }
    }

    /// Whether another path to the same holder does what `addr` would: a session there is
    /// under way, or has synced or will sync the generation `addr` announces.
    fn covered(&self, addr: &Contact, e: &Endpoint) -> bool {
        let (Some(id), Some(wanted)) = (e.id, e.wanted) else {
            return false;
        };
        let Some(paths) = self.aliases.get(&id).filter(|p| p.len() > 1) else {
            return false;
        };
        // The lead: the first path heard (paths are kept in the order they were heard) that
        // is not failing, else the first. Usually the first one looked at.
        let failing = |x: &Endpoint| x.failures > 0 && x.status != Status::Foreign;
        let mut known = paths
            .iter()
            .filter_map(|a| self.endpoints.get(a).map(|x| (a, x)));
        let first = known.clone().next();
        let lead = known.find(|(_, x)| !failing(x)).or(first);
        match lead {
            Some((a, lead)) if a != addr => {
                lead.busy || lead.synced == Some(wanted) || lead.wanted == Some(wanted)
            }
            _ => false,
        }
    }

    /// Frees a place for a new endpoint at `ip`. False if none can be freed (all busy).
    fn make_room(&mut self, ip: SourceKey, now: Instant) -> bool {
        let (own, cap) = self
            .hosts
            .get(&ip)
            .map_or((0, MAX_ENDPOINTS_PER_HOST), |h| {
                (h.endpoints.len(), h.endpoint_cap())
            });
        if own >= cap || (own > 0 && self.endpoints.len() >= MAX_ENDPOINTS) {
            // An address only ever pushes out its own endpoints.
            return self.evict_from(ip, now);
        }
        if self.endpoints.len() < MAX_ENDPOINTS {
            return true;
        }
        // A new address in a full book: take from the address with the most endpoints that are
        // not proven members (then with the most endpoints), so a device holding many drops
        // keeps them while a flood of addresses takes from itself.
        let strangers = |h: &Host| {
            h.endpoints
                .iter()
                .filter(|a| {
                    self.endpoints
                        .get(a)
                        .is_some_and(|e| e.status != Status::Member)
                })
                .count()
        };
        let richest = self
            .hosts
            .iter()
            .filter(|(_, h)| h.endpoints.len() > h.busy)
            .max_by_key(|(_, h)| (strangers(h), h.endpoints.len()))
            .map(|(ip, _)| *ip);
        richest.is_some_and(|r| self.evict_from(r, now))
    }

    /// Forgets the idle endpoint at `ip` that is worth least: a failing one before a stranger
    /// before a member, and among those the one heard from least recently.
    fn evict_from(&mut self, ip: SourceKey, _now: Instant) -> bool {
        let Some(host) = self.hosts.get(&ip) else {
            return false;
        };
        let victim = host
            .endpoints
            .iter()
            .filter_map(|a| self.endpoints.get(a).map(|e| (a, e)))
            .filter(|(_, e)| !e.busy)
            .min_by_key(|(_, e)| (std::cmp::Reverse(e.status), e.last_heard))
            .map(|(a, _)| *a);
        match victim {
            Some(a) => {
                self.remove(a);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, addr: Contact) {
        self.unalias(addr);
        self.endpoints.remove(&addr);
        if let Some(h) = self.hosts.get_mut(&addr.source()) {
            h.endpoints.retain(|a| *a != addr);
            if h.endpoints.is_empty() && h.busy == 0 {
                self.hosts.remove(&addr.source());
            }
        }
    }

    fn wants_session(&self, addr: &Contact, e: &Endpoint) -> bool {
        wants_session(self.mode, e) && !self.covered(addr, e)
    }

    /// The host-level reasons `ip` cannot get a session now, as the time it may (None: never
    /// without a change, such as a session ending).
    fn host_ready_at(&self, ip: SourceKey, now: Instant) -> Option<Instant> {
        let host = self.hosts.get(&ip)?;
        if host.busy >= host.session_cap(now) {
            return None;
        }
        if host.is_bad(now) && self.busy_bad >= MAX_SESSIONS - RESERVED_FOR_GOOD {
            return None;
        }
        let wait = host
            .connects
            .wait(CONNECT_BURST, CONNECTS_PER_SECOND, now)
            .max(self.guesses.wait_for(ip, now));
        Some(now + wait)
    }

    fn mark_if_startable(&mut self, addr: Contact, now: Instant) {
        let Some(e) = self.endpoints.get(&addr) else {
            return;
        };
        if self.busy < MAX_SESSIONS
            && self.wants_session(&addr, e)
            && e.retry_at <= now
            && self.host_ready_at(addr.source(), now) == Some(now)
        {
            self.dirty = true;
        }
    }

    /// The next session to open now, if any. Call it until it returns `None` after every
    /// announcement, finished session and wake-up.
    pub fn next(&mut self, now: Instant) -> Option<Attempt> {
        if self.busy >= MAX_SESSIONS || !self.dirty {
            return None;
        }
        self.wake_at.set(None);
        // Served least recently, then members first, then first come.
        type Rank = (Option<Instant>, Status, Instant);
        let mut best: Option<(Contact, Rank)> = None;
        for (addr, e) in &self.endpoints {
            if !self.wants_session(addr, e) || e.retry_at > now {
                continue;
            }
            if self.host_ready_at(addr.source(), now) != Some(now) {
                continue;
            }
            let host = &self.hosts[&addr.source()];
            let rank = (host.last_served, e.status, e.waiting_since);
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                best = Some((*addr, rank));
            }
        }
        let Some((addr, _)) = best else {
            self.dirty = false;
            return None;
        };
        let ip = addr.source();
        let charge = self.guesses.try_start(ip, now)?;
        let host = self.hosts.get_mut(&ip).expect("endpoint's host");
        let bad_host = host.is_bad(now);
        host.connects.take(CONNECT_BURST, CONNECTS_PER_SECOND, now);
        host.busy += 1;
        host.last_served = Some(now);
        self.busy += 1;
        if bad_host {
            self.busy_bad += 1;
        }
        let e = self.endpoints.get_mut(&addr).expect("chosen above");
        e.busy = true;
        Some(Attempt {
            addr,
            generation: e.wanted.expect("wants a session"),
            member: e.status == Status::Member,
            charge,
            bad_host,
        })
    }

    /// When something that waits may become startable (a backoff or a budget refills). `None`:
    /// only an announcement or a finished session can change anything.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if let Some(cached) = self.wake_at.get() {
            return cached;
        }
        let wake = self.compute_wake(now);
        self.wake_at.set(Some(wake));
        wake
    }

    fn compute_wake(&self, now: Instant) -> Option<Instant> {
        if self.busy >= MAX_SESSIONS {
            return None;
        }
        self.endpoints
            .iter()
            .filter(|(addr, e)| self.wants_session(addr, e))
            .filter_map(|(addr, e)| {
                self.host_ready_at(addr.source(), now)
                    .map(|t| t.max(e.retry_at))
            })
            .min()
    }

    /// Call when a wake-up from [`Book::next_wake`] is due: makes the book look again.
    pub fn wake(&mut self) {
        self.dirty = true;
        self.wake_at.set(None);
    }

    /// A session opened by [`Book::next`] ended.
    pub fn finished(&mut self, attempt: Attempt, outcome: Outcome, now: Instant) {
        let authenticated = matches!(outcome, Outcome::Complete | Outcome::Incomplete);
        let settled = match outcome {
            Outcome::Rejected => Settled::Guessed,
            _ if authenticated => Settled::Member,
            _ => Settled::NoGuess,
        };
        self.guesses.settle(attempt.charge, settled, now);
        self.wake_at.set(None);
        self.busy -= 1;
        if attempt.bad_host {
            self.busy_bad -= 1;
        }
        self.dirty = true;
        let ip = attempt.addr.source();
        if let Some(h) = self.hosts.get_mut(&ip) {
            h.busy -= 1;
            if authenticated {
                h.connects.give_back(CONNECT_BURST);
                h.has_member = true;
            } else {
                h.bad_until = Some(now + BAD_FOR);
            }
        }
        let mode = self.mode;
        if let Some(e) = self.endpoints.get_mut(&attempt.addr) {
            e.busy = false;
            match outcome {
                Outcome::Complete => {
                    e.status = Status::Member;
                    e.failures = 0;
                    e.synced = Some(attempt.generation);
                    if e.wanted == Some(attempt.generation) {
                        e.wanted = None;
                    }
                    e.done = mode == Mode::Once;
                }
                Outcome::Incomplete => {
                    e.status = Status::Member;
                    e.failures += 1;
                    e.retry_at = now + backoff(CUT_BACKOFF_FIRST, CUT_BACKOFF_MAX, e.failures);
                }
                Outcome::Cut | Outcome::Unreachable => {
                    e.failures += 1;
                    e.retry_at = now + backoff(CUT_BACKOFF_FIRST, CUT_BACKOFF_MAX, e.failures);
                }
                Outcome::Rejected => {
                    if e.status != Status::Foreign {
                        e.failures = 0;
                    }
                    e.status = Status::Foreign;
                    e.failures += 1;
                    // Not this generation again; a new one after a long pause.
                    e.synced = Some(attempt.generation);
                    if e.wanted == Some(attempt.generation) {
                        e.wanted = None;
                    }
                    e.retry_at =
                        now + backoff(FOREIGN_BACKOFF_FIRST, FOREIGN_BACKOFF_MAX, e.failures);
                    e.done = mode == Mode::Once;
                }
            }
        } else if let Some(h) = self.hosts.get(&ip)
            && h.endpoints.is_empty()
            && h.busy == 0
        {
            self.hosts.remove(&ip);
        }
    }

    /// Forgets holders that have gone quiet.
    pub fn prune(&mut self, now: Instant) {
        let quiet: Vec<Contact> = self
            .endpoints
            .iter()
            .filter(|(_, e)| !e.busy && now.saturating_duration_since(e.last_heard) >= FORGET_AFTER)
            .map(|(a, _)| *a)
            .collect();
        for a in quiet {
            self.remove(a);
        }
        // An alias whose lead was forgotten may start now.
        self.dirty = true;
        self.wake_at.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Opens every session the book allows now.
    fn start_all(b: &mut Book, now: Instant) -> Vec<Attempt> {
        std::iter::from_fn(|| b.next(now)).collect()
    }

    #[test]
    fn one_session_per_generation_and_changes_during_a_session_follow_it() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let h = at("10.0.0.1:4000");
        b.on_announce(h, 7, None, now);
        let a = b.next(now).expect("a new holder is contacted");
        assert_eq!(a.generation, 7);
        b.on_announce(h, 7, None, now);
        assert!(b.next(now).is_none(), "busy");
        b.on_announce(h, 8, None, now);
        b.finished(a, Outcome::Complete, now);
        let a = b.next(now).expect("the change during the session");
        assert_eq!(a.generation, 8);
        b.finished(a, Outcome::Complete, now);
        b.on_announce(h, 8, None, now);
        assert!(b.next(now).is_none(), "already synced");
    }

    #[test]
    fn a_cut_is_retried_with_backoff_for_the_same_generation() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let h = at("10.0.0.1:4000");
        b.on_announce(h, 1, None, now);
        let a = b.next(now).unwrap();
        b.finished(a, Outcome::Cut, now);
        assert!(b.next(now).is_none());
        let wake = b.next_wake(now).unwrap();
        assert_eq!(wake, now + CUT_BACKOFF_FIRST);
        b.wake();
        let a = b.next(wake).expect("retried without a new announcement");
        b.finished(a, Outcome::Cut, wake);
        assert_eq!(b.next_wake(wake), Some(wake + 2 * CUT_BACKOFF_FIRST));
        // However often it is cut, it is still tried every 30 s at most.
        let mut t = wake;
        for _ in 0..20 {
            t = b.next_wake(t).unwrap();
            b.wake();
            let a = b.next(t).unwrap();
            b.finished(a, Outcome::Cut, t);
        }
        assert_eq!(b.next_wake(t), Some(t + CUT_BACKOFF_MAX));
    }

    #[test]
    fn a_foreign_holder_is_retried_only_for_new_generations_and_slowly() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let h = at("10.0.0.1:4000");
        b.on_announce(h, 1, None, now);
        let a = b.next(now).unwrap();
        b.finished(a, Outcome::Rejected, now);
        for s in 0..100 {
            b.on_announce(h, 1, None, now + Duration::from_secs(s));
            assert!(b.next(now + Duration::from_secs(s)).is_none());
        }
        b.on_announce(h, 2, None, now + Duration::from_secs(1));
        b.wake();
        assert!(b.next(now + Duration::from_secs(1)).is_none(), "not yet");
        let later = now + FOREIGN_BACKOFF_FIRST;
        b.wake();
        let a = b.next(later).expect("a new generation, after the pause");
        assert_eq!(a.generation, 2);
        b.finished(a, Outcome::Complete, later);
    }

    #[test]
    fn fake_endpoints_from_one_address_are_bounded_and_push_out_only_their_own() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let real = at("10.0.0.7:5000");
        b.on_announce(real, 1, None, now);
        let a = b.next(now).unwrap();
        b.finished(a, Outcome::Complete, now);
        for port in 0..10_000u16 {
            b.on_announce(
                SocketAddr::new("10.0.0.66".parse().unwrap(), port),
                1,
                None,
                now,
            );
        }
        assert_eq!(b.len(), MAX_ENDPOINTS_PER_HOST + 1);
        assert!(b.endpoints.contains_key(&real.into()));
        // Fresh ids at one endpoint are one entry: the book does not know ids at all.
        for g in 0..10_000 {
            b.on_announce(real, g, None, now);
        }
        assert_eq!(b.len(), MAX_ENDPOINTS_PER_HOST + 1);
    }

    #[test]
    fn a_full_book_takes_room_from_the_address_with_most_endpoints() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        for host in 0..64u32 {
            for port in 0..16u16 {
                let ip = IpAddr::V4((0x0a01_0000 + host).into());
                b.on_announce(SocketAddr::new(ip, port), 1, None, now);
            }
        }
        assert_eq!(b.len(), MAX_ENDPOINTS);
        let real = at("10.9.9.9:4000");
        b.on_announce(real, 1, None, now);
        assert!(b.endpoints.contains_key(&real.into()));
        assert_eq!(b.len(), MAX_ENDPOINTS);
    }

    #[test]
    fn silent_holders_on_many_addresses_cannot_starve_a_real_one() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        // 16 attacker addresses, 16 silent endpoints each, all announcing.
        let fake = |h: u32, p: u16| SocketAddr::new(IpAddr::V4((0x0a00_4200 + h).into()), p);
        for h in 0..16 {
            for p in 0..16 {
                b.on_announce(fake(h, p), 1, None, now);
            }
        }
        let first = start_all(&mut b, now);
        assert_eq!(first.len(), 16, "one session per address with no member");
        // The real holder announces while all of those hang: it gets a session at once.
        let real = at("10.0.0.7:5000");
        b.on_announce(real, 1, None, now);
        let a = b
            .next(now)
            .expect("a real holder is not queued behind a flood");
        assert_eq!(a.addr, real.into());
        b.finished(a, Outcome::Complete, now);
        // The attacker's sessions time out; the addresses now count as failing.
        let t = now + Duration::from_secs(2);
        for a in first {
            b.finished(a, Outcome::Cut, t);
        }
    }

    #[test]
    fn sessions_are_kept_for_addresses_that_have_not_failed() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let fake = |h: u32| SocketAddr::new(IpAddr::V4((0x0a00_4200 + h).into()), 9);
        for h in 0..40 {
            b.on_announce(fake(h), 1, None, now);
        }
        // Every attacker address has hung once (two rounds: 32 sessions at most at once).
        let mut t = now;
        for _ in 0..2 {
            b.wake();
            for a in start_all(&mut b, t) {
                b.finished(a, Outcome::Cut, t + Duration::from_secs(2));
            }
            t += Duration::from_secs(2);
        }
        t += Duration::from_secs(2);
        b.wake();
        let mut started = start_all(&mut b, t);
        assert_eq!(started.len(), MAX_SESSIONS - RESERVED_FOR_GOOD);
        let real = at("10.0.0.8:5000");
        b.on_announce(real, 1, None, t);
        let a = b.next(t).expect("sessions are kept for good addresses");
        assert_eq!(a.addr, real.into());
        started.push(a);
        for a in started {
            b.finished(a, Outcome::Cut, t);
        }
    }

    #[test]
    fn the_address_served_least_recently_goes_first() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let a1 = at("10.0.0.1:1");
        b.on_announce(a1, 1, None, now);
        let s = b.next(now).unwrap();
        b.finished(s, Outcome::Complete, now);
        let t = now + Duration::from_millis(1);
        b.on_announce(a1, 2, None, t);
        let a2 = at("10.0.0.2:1");
        b.on_announce(a2, 1, None, t);
        assert_eq!(
            b.next(t).unwrap().addr,
            a2.into(),
            "never served goes first"
        );
        assert_eq!(b.next(t).unwrap().addr, a1.into());
    }

    #[test]
    fn a_fake_holder_gets_no_more_guesses_than_the_budget() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let fake = "10.0.0.66".parse::<IpAddr>().unwrap();
        let mut guesses = 0;
        let mut t = now;
        let end = now + Duration::from_secs(30);
        let mut g = 0u64;
        while t < end {
            // A fresh endpoint and generation every 5 ms, answering every hello with a guess.
            g += 1;
            b.on_announce(SocketAddr::new(fake, g as u16), g, None, t);
            while let Some(a) = b.next(t) {
                guesses += 1;
                b.finished(a, Outcome::Rejected, t);
            }
            t += Duration::from_millis(5);
            b.wake();
        }
        // 10 at once, then one per second; the global bucket is shared with no one here.
        assert!(guesses <= 10 + 30 + 1, "{guesses} guesses in 30 s");
        assert!(guesses >= 10, "{guesses}");
    }

    #[test]
    fn spoofed_announcements_cannot_make_us_connect_to_an_address_faster_than_its_budget() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let victim = "10.0.0.99".parse::<IpAddr>().unwrap();
        let mut connects = 0;
        let mut t = now;
        let mut g = 0u64;
        while t < now + Duration::from_secs(10) {
            g += 1;
            b.on_announce(SocketAddr::new(victim, (g % 16) as u16), g, None, t);
            b.wake();
            while let Some(a) = b.next(t) {
                connects += 1;
                // Nothing listens there: refused at once.
                b.finished(a, Outcome::Cut, t);
            }
            t += Duration::from_millis(1);
        }
        assert!(
            connects as f64 <= CONNECT_BURST + 10.0 * CONNECTS_PER_SECOND + 1.0,
            "{connects}"
        );
    }

    #[test]
    fn once_mode_contacts_each_holder_until_one_session_completes() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Once);
        let h = at("10.0.0.1:4000");
        b.on_announce(h, 1, None, now);
        let a = b.next(now).unwrap();
        b.finished(a, Outcome::Cut, now);
        let t = b.next_wake(now).unwrap();
        b.wake();
        let a = b.next(t).unwrap();
        b.finished(a, Outcome::Complete, t);
        b.on_announce(h, 2, None, t);
        b.wake();
        assert!(b.next(t + Duration::from_secs(100)).is_none());
        assert_eq!(b.next_wake(t), None);
    }

    #[test]
    fn a_holder_heard_on_two_paths_gets_one_session_and_the_other_path_takes_over_if_it_fails() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let id = Some(PeerId::random());
        let v4 = at("10.0.0.1:4000");
        let v6 = at("[fe80::1]:4000");
        b.on_announce(v4, 7, id, now);
        b.on_announce(v6, 7, id, now + Duration::from_millis(1));
        let a = b.next(now).expect("one path is contacted");
        assert_eq!(a.addr, v4.into(), "the path heard first");
        assert!(
            b.next(now).is_none(),
            "not the other while that session runs"
        );
        b.finished(a, Outcome::Complete, now);
        assert!(
            b.next(now).is_none(),
            "the generation is synced: nothing on the other path"
        );
        assert_eq!(b.next_wake(now), None);
        // A new generation: again one session.
        b.on_announce(v6, 8, id, now);
        b.on_announce(v4, 8, id, now);
        let a = b.next(now).unwrap();
        assert_eq!(a.addr, v4.into());
        assert!(b.next(now).is_none());
        // That path breaks: the other takes over at once.
        let t = now + Duration::from_millis(1);
        b.finished(a, Outcome::Cut, t);
        let a = b.next(t).expect("the other path");
        assert_eq!(a.addr, v6.into());
        b.finished(a, Outcome::Complete, t);
        assert!(b.next(now + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_spoofed_id_cannot_hide_a_holder_whose_generation_its_lead_does_not_cover() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let id = Some(PeerId::random());
        // The attacker announces the real holder's id first, from an address of its own.
        let fake = at("10.0.0.66:9");
        let real = at("10.0.0.1:4000");
        b.on_announce(fake, 1, id, now);
        let f = b.next(now).unwrap();
        assert_eq!(f.addr, fake.into());
        b.on_announce(real, 5, id, now + Duration::from_millis(1));
        // The real holder waits only while the fake's session is under way...
        assert!(b.next(now).is_none());
        let now = now + Duration::from_millis(1);
        b.finished(f, Outcome::Unreachable, now);
        // ...and is contacted as soon as it ends (the fake fails, and never synced 5).
        let a = b.next(now).expect("the real holder");
        assert_eq!(a.addr, real.into());
        b.finished(a, Outcome::Complete, now);
        // A fake that announces the generation the real one has synced gets no session: it
        // would bring nothing.
        let fake2 = at("10.0.0.67:9");
        b.on_announce(fake2, 5, id, now);
        b.wake();
        assert!(b.next(now).is_none());
        // One with a generation the real one has not synced does (as any fake would).
        b.on_announce(fake2, 6, id, now);
        b.wake();
        assert_eq!(b.next(now).map(|a| a.addr), Some(fake2.into()));
    }

    #[test]
    fn a_device_holding_many_drops_gets_many_endpoints_and_sessions_but_a_flood_there_is_bounded() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // 50 processes, one drop each: the first is contacted alone until it proves itself...
        for p in 0..50 {
            b.on_announce(
                SocketAddr::new(ip, 4000 + p),
                1,
                Some(PeerId::random()),
                now,
            );
        }
        assert_eq!(b.len(), MAX_ENDPOINTS_PER_HOST, "not yet a member host");
        let first = start_all(&mut b, now);
        assert_eq!(first.len(), 1);
        for a in first {
            b.finished(a, Outcome::Complete, now);
        }
        for p in 0..50 {
            b.on_announce(
                SocketAddr::new(ip, 4000 + p),
                1,
                Some(PeerId::random()),
                now,
            );
        }
        assert_eq!(b.len(), 50, "every process of a member host is tracked");
        let mut done = 1;
        let mut t = now;
        while done < 50 {
            let started = start_all(&mut b, t);
            assert!(started.len() <= MAX_SESSIONS_PER_MEMBER_HOST);
            assert!(!started.is_empty(), "{done} done");
            for a in started {
                b.finished(a, Outcome::Complete, t);
                done += 1;
            }
            t += Duration::from_millis(5);
        }
        // Fake endpoints spoofed at that address: bounded, and they push out no member.
        for port in 0..10_000u16 {
            b.on_announce(SocketAddr::new(ip, 20_000 + port), 1, None, t);
        }
        assert_eq!(b.len(), MAX_ENDPOINTS_PER_MEMBER_HOST);
        for p in 0..50 {
            assert!(
                b.endpoints
                    .contains_key(&SocketAddr::new(ip, 4000 + p).into())
            );
        }
    }

    #[test]
    fn quiet_holders_are_forgotten() {
        let now = Instant::now();
        let mut b = Book::new(Mode::Follow);
        for p in 0..10 {
            b.on_announce(
                SocketAddr::new("10.0.0.1".parse().unwrap(), p),
                1,
                None,
                now,
            );
        }
        let busy = b.next(now).unwrap();
        b.prune(now + FORGET_AFTER);
        assert_eq!(b.len(), 1, "the busy one stays");
        b.finished(busy, Outcome::Complete, now + FORGET_AFTER);
        b.prune(now + FORGET_AFTER * 2);
        assert!(b.is_empty());
        assert!(b.hosts.is_empty());
    }
}
