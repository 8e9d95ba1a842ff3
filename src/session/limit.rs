//! The guess budget: how many passphrase guesses strangers get, on either role, with no I/O.
//!
//! A *guess* is one handshake in which this process evaluates the peer's PAKE message: a holder
//! answering a ClientHello (the client learns from the confirmation whether its guess was right),
//! or a receiver checking a ServerHello (the holder learns it from whether a ClientFinish comes).
//! Each attempt takes a token before any PAKE work; the token is given back when the peer proves
//! it knows the passphrase, or when the attempt ended before any guess was made (a holder that
//! never answered). So a stranger pays for every guess and nothing else.
//!
//! Two limits hold at once:
//! - **per source** (an IPv4 address, or an IPv6 /64): [`GUESS_BURST`] at once, then
//!   [`GUESSES_PER_SECOND`];
//! - **overall**: a source that has failed within [`CLEAN_AFTER`] also needs a token from a
//!   shared bucket ([`GLOBAL_BURST`], then [`GLOBAL_PER_SECOND`]). A source with no recent failure
//!   does not, so a flood of failures from other addresses never blocks a real peer's first
//!   handshake: room members never fail, so they stay clean (and a source that proves
//!   membership is clean again at once, whatever it mistyped before).
//!
//! The worst case over a day is therefore the global rate, plus one guess per attacker source per
//! [`CLEAN_AFTER`] (the failure that makes it unclean). SECURITY.md has the figures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Guesses a fresh source may make at once.
pub const GUESS_BURST: f64 = 10.0;
/// Guesses per second a source may make in the long run.
pub const GUESSES_PER_SECOND: f64 = 1.0;
/// Guesses all failing sources together may make at once.
pub const GLOBAL_BURST: f64 = 20.0;
/// Guesses per second all failing sources together may make in the long run.
pub const GLOBAL_PER_SECOND: f64 = 2.0;
/// A source that has not failed for this long is clean again.
pub const CLEAN_AFTER: Duration = Duration::from_secs(600);
/// Sources tracked at once. Past this, sources with nothing to remember are forgotten; if none
/// can be, an untracked source is treated as one that has failed.
pub const MAX_SOURCES: usize = 4096;

/// Sources are whole IPv4 addresses, IPv6 /64 prefixes (one host can hold a whole /64), or, for
/// connections beyond the LAN, the remote's endpoint id (a public key, proven by the QUIC
/// handshake). Endpoint ids cost nothing to make, so one that has not proven membership is never
/// clean: its guesses always come out of the shared bucket too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The source for an endpoint id. Disjoint from address keys: IPv4 keys are below 2^32,
    /// IPv6 keys end in 64 bits equal to 1; these end in the byte 2 and have bit 100 set.
    pub fn endpoint(id: &[u8; 32]) -> Self {
        let mut high = [0u8; 16];
        high[..15].copy_from_slice(&id[..15]);
        SourceKey((u128::from_be_bytes(high) & !0xff) | 2 | (1 << 100))
    }

    pub fn is_endpoint(self) -> bool {
        self.0 & 0xff == 2 && self.0 >> 32 != 0
    }
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                None => SourceKey((u128::from(v6) >> 64) << 64 | 1),
            },
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, burst: f64, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, burst: f64, rate: f64, now: Instant) -> bool {
        self.refill(burst, rate, now);
        // A hair of slack, so waking at exactly the time `wait` gave always finds the token.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn give_back(&mut self, burst: f64) {
        self.tokens = (self.tokens + 1.0).min(burst);
    }

    /// How long until a token is there (zero if one is now).
    pub fn wait(&self, burst: f64, rate: f64, now: Instant) -> Duration {
        let mut b = *self;
        b.refill(burst, rate, now);
        Duration::from_secs_f64((1.0 - b.tokens).max(0.0) / rate)
    }

    fn is_full(&self, burst: f64, rate: f64, now: Instant) -> bool {
        let mut b = *self;
        b.refill(burst, rate, now);
        b.tokens >= burst
    }
}

/// The limits, as numbers (tests use small ones).
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    pub burst: f64,
    pub per_second: f64,
    pub global_burst: f64,
    pub global_per_second: f64,
    pub clean_after: Duration,
    pub max_sources: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            burst: GUESS_BURST,
            per_second: GUESSES_PER_SECOND,
            global_burst: GLOBAL_BURST,
            global_per_second: GLOBAL_PER_SECOND,
            clean_after: CLEAN_AFTER,
            max_sources: MAX_SOURCES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    bucket: Bucket,
    /// When this source last cost a guess that was not given back.
    failed_at: Option<Instant>,
    /// Attempts not settled yet.
    open: u32,
    /// It has proven membership (what makes an endpoint-id source clean).
    proven: bool,
}

/// A token taken for one attempt; settle it with [`GuessBudget::settle`]. Neither `Copy` nor
/// `Clone`: one attempt, one settlement. Where the attempt runs in a task that can be dropped
/// (aborted, or its connection evicted mid-handshake), hold it as a [`HeldCharge`] instead.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an attempt's charge must be settled"]
pub struct Charge {
    key: SourceKey,
    global: bool,
}

/// A charge that settles itself: dropped unsettled (the task holding it was aborted, or its
/// connection was evicted while the handshake was under way), it is settled as
/// [`Settled::Guessed`], since the peer may already have had its answer. So no path leaves a
/// source with an attempt open forever (which would keep it from ever being clean or
/// forgotten).
#[derive(Debug)]
pub struct HeldCharge<'a> {
    budget: &'a std::sync::Mutex<GuessBudget>,
    charge: Option<Charge>,
    /// Told when the charge is settled (tokens may have come back).
    freed: Option<&'a tokio::sync::Notify>,
}

impl HeldCharge<'_> {
    /// Takes the tokens for one attempt with `source` from `budget`, or `None` (see
    /// [`GuessBudget::try_start`]).
    pub fn start(
        budget: &std::sync::Mutex<GuessBudget>,
        source: impl Into<SourceKey>,
        now: Instant,
    ) -> Option<HeldCharge<'_>> {
        let charge = lock(budget).try_start(source, now)?;
        Some(HeldCharge {
            budget,
            charge: Some(charge),
            freed: None,
        })
    }

    /// Like [`HeldCharge::start`], but if no token is there now, waits (at most `within`) until
    /// one is given back or refills. Attempts that find the budget momentarily spent by others
    /// (many room members connecting at once, whose tokens come back within milliseconds) are
    /// delayed instead of turned away; a guesser is held to the same rate either way. `freed`
    /// must be the [`tokio::sync::Notify`] every charge of this budget is started with.
    pub async fn wait_for<'a>(
        budget: &'a std::sync::Mutex<GuessBudget>,
        freed: &'a tokio::sync::Notify,
        source: SourceKey,
        within: Duration,
    ) -> Option<HeldCharge<'a>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the look, so a settlement between the two is not missed.
            let settled = freed.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let now = Instant::now();
            if let Some(mut c) = Self::start(budget, source, now) {
                c.freed = Some(freed);
                return Some(c);
            }
            let refill = lock(budget).wait_for(source, now);
            let until = (tokio::time::Instant::now() + refill).min(deadline);
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::select! {
                _ = &mut settled => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Ends the attempt as `how`.
    pub fn settle(mut self, how: Settled, now: Instant) {
        self.end(how, now);
    }

    fn end(&mut self, how: Settled, now: Instant) {
        if let Some(c) = self.charge.take() {
            lock(self.budget).settle(c, how, now);
            if let Some(freed) = self.freed {
                freed.notify_waiters();
            }
        }
    }
}

impl Drop for HeldCharge<'_> {
    fn drop(&mut self) {
        self.end(Settled::Guessed, Instant::now());
    }
}

/// The budget's lock; a panic elsewhere while it was held leaves counters that are still
/// consistent (each update is one statement), so a poisoned lock is used as it is.
fn lock(budget: &std::sync::Mutex<GuessBudget>) -> std::sync::MutexGuard<'_, GuessBudget> {
    budget.lock().unwrap_or_else(|e| e.into_inner())
}

/// How an attempt ended, for the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The peer proved it knows the passphrase: the tokens are given back.
    Member,
    /// The attempt ended before this side evaluated a PAKE message: no guess was made, the
    /// tokens are given back.
    NoGuess,
    /// A guess was made and the peer did not prove membership: the tokens are spent.
    Guessed,
}

/// Per-source and overall token buckets for handshakes.
#[derive(Debug)]
pub struct GuessBudget {
    sources: HashMap<SourceKey, Source>,
    global: Bucket,
    cfg: BudgetConfig,
}

impl Default for GuessBudget {
    fn default() -> Self {
        Self::new(BudgetConfig::default())
    }
}

impl GuessBudget {
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            sources: HashMap::new(),
            global: Bucket::full(cfg.global_burst, Instant::now()),
            cfg,
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.cfg
    }

    fn is_clean(&self, key: SourceKey, s: &Source, now: Instant) -> bool {
        (s.proven || !key.is_endpoint())
            && s.open == 0
            && s.failed_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.clean_after)
    }

    /// Takes the tokens for one attempt with `ip`, or `None`: do not attempt it now (see
    /// [`GuessBudget::wait_for`]).
    pub fn try_start(&mut self, source: impl Into<SourceKey>, now: Instant) -> Option<Charge> {
        let key = source.into();
        let cfg = self.cfg;
        if !self.sources.contains_key(&key) && self.sources.len() >= cfg.max_sources {
            self.forget_clean(now);
        }
        // An untracked source with no room to track it is treated as one that has failed.
        let untracked = !self.sources.contains_key(&key) && self.sources.len() >= cfg.max_sources;
        let source = self.sources.get(&key).copied().unwrap_or(Source {
            bucket: Bucket::full(cfg.burst, now),
            failed_at: None,
            open: 0,
            proven: false,
        });
        let clean = !untracked && self.is_clean(key, &source, now);
        let mut bucket = source.bucket;
        if !bucket.take(cfg.burst, cfg.per_second, now) {
            return None;
        }
        let global = self
            .global
            .take(cfg.global_burst, cfg.global_per_second, now);
        if !global && !clean {
            return None;
        }
        if !untracked {
            self.sources.insert(
                key,
                Source {
                    bucket,
                    open: source.open + 1,
                    ..source
                },
            );
        }
        Some(Charge { key, global })
    }

    /// Ends an attempt: gives the tokens back unless a guess was spent.
    pub fn settle(&mut self, charge: Charge, how: Settled, now: Instant) {
        let cfg = self.cfg;
        if how != Settled::Guessed && charge.global {
            self.global.give_back(cfg.global_burst);
        }
        if let Some(s) = self.sources.get_mut(&charge.key) {
            s.open = s.open.saturating_sub(1);
            match how {
                // Proven in the room: its earlier failures (a mistyped passphrase) no longer
                // make it share the bucket of the failing.
                Settled::Member => {
                    s.bucket.give_back(cfg.burst);
                    s.failed_at = None;
                    s.proven = true;
                }
                Settled::NoGuess => s.bucket.give_back(cfg.burst),
                Settled::Guessed => s.failed_at = Some(now),
            }
        }
    }

    /// How long until `ip` may attempt again (zero if it may now).
    pub fn wait_for(&self, source: impl Into<SourceKey>, now: Instant) -> Duration {
        let cfg = self.cfg;
        let key = source.into();
        let Some(s) = self.sources.get(&key) else {
            return if self.sources.len() >= cfg.max_sources || key.is_endpoint() {
                self.global
                    .wait(cfg.global_burst, cfg.global_per_second, now)
            } else {
                Duration::ZERO
            };
        };
        let own = s.bucket.wait(cfg.burst, cfg.per_second, now);
        if self.is_clean(key, s, now) {
            own
        } else {
            own.max(
                self.global
                    .wait(cfg.global_burst, cfg.global_per_second, now),
            )
        }
    }

    /// Forgets sources that have nothing to remember: no open attempt, a full bucket, and no
    /// failure within `clean_after`.
    fn forget_clean(&mut self, now: Instant) {
        let cfg = self.cfg;
        let clean_after = cfg.clean_after;
        self.sources.retain(|_, s| {
            s.open > 0
                || !s.bucket.is_full(cfg.burst, cfg.per_second, now)
                || s.failed_at
                    .is_some_and(|t| now.saturating_duration_since(t) < clean_after)
        });
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Attempts with `source` that are not settled yet.
    pub fn open(&self, source: impl Into<SourceKey>) -> u32 {
        self.sources.get(&source.into()).map_or(0, |s| s.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Starts and settles one attempt; true if it was allowed.
    fn guess(b: &mut GuessBudget, from: &str, now: Instant) -> bool {
        match b.try_start(ip(from), now) {
            Some(c) => {
                b.settle(c, Settled::Guessed, now);
                true
            }
            None => false,
        }
    }

    fn per_source_only() -> GuessBudget {
        GuessBudget::new(BudgetConfig {
            global_burst: 1e9,
            global_per_second: 1e9,
            ..BudgetConfig::default()
        })
    }

    #[test]
    fn fresh_endpoint_ids_share_the_global_bucket_until_proven() {
        // Endpoint ids cost nothing: a new id per guess must not make each one a clean source.
        let now = Instant::now();
        let mut b = GuessBudget::default();
        let mut granted = 0;
        for i in 0..200u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            if let Some(c) = b.try_start(SourceKey::endpoint(&id), now) {
                b.settle(c, Settled::Guessed, now);
                granted += 1;
            }
        }
        assert_eq!(granted, GLOBAL_BURST as usize);
        // A member's id that proved itself once is clean: it gets in while the flood has
        // emptied the shared bucket.
        let member = SourceKey::endpoint(&[0xaa; 32]);
        let later = now + CLEAN_AFTER;
        let mut b = GuessBudget::default();
        let c = b.try_start(member, now).unwrap();
        b.settle(c, Settled::Member, now);
        for i in 0..100u8 {
            if let Some(c) = b.try_start(SourceKey::endpoint(&[i; 32]), later) {
                b.settle(c, Settled::Guessed, later);
            }
        }
        assert!(
            b.try_start(SourceKey::endpoint(&[0x56; 32]), later)
                .is_none()
        );
        assert!(b.try_start(member, later).is_some());
        // Keys of the three kinds never collide.
        assert!(SourceKey::endpoint(&[0; 32]).is_endpoint());
        assert!(!SourceKey::from(ip("0.0.0.2")).is_endpoint());
        assert!(!SourceKey::from(ip("fe80::2")).is_endpoint());
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let now = Instant::now();
        let mut b = per_source_only();
        for i in 0..10 {
            assert!(guess(&mut b, "10.0.0.9", now), "guess {i} of the burst");
        }
        assert!(!guess(&mut b, "10.0.0.9", now));
        assert!(!guess(&mut b, "10.0.0.9", now + Duration::from_millis(900)));
        assert!(guess(&mut b, "10.0.0.9", now + Duration::from_millis(1000)));
        // Sixty seconds of guessing at full speed yields about sixty more guesses, not more.
        let granted = (1001..61_000)
            .step_by(10)
            .filter(|ms| guess(&mut b, "10.0.0.9", now + Duration::from_millis(*ms)))
            .count();
        assert!((59..=61).contains(&granted), "{granted}");
    }

    #[test]
    fn members_and_attempts_without_a_guess_cost_nothing() {
        let now = Instant::now();
        let mut b = GuessBudget::default();
        for i in 0..1000 {
            let c = b.try_start(ip("10.0.0.9"), now).unwrap();
            let how = if i % 2 == 0 {
                Settled::Member
            } else {
                Settled::NoGuess
            };
            b.settle(c, how, now);
        }
        assert_eq!(b.wait_for(ip("10.0.0.9"), now), Duration::ZERO);
    }

    #[test]
    fn sources_are_independent() {
        let now = Instant::now();
        let mut b = per_source_only();
        for _ in 0..10 {
            guess(&mut b, "10.0.0.1", now);
        }
        assert!(!guess(&mut b, "10.0.0.1", now));
        assert!(guess(&mut b, "10.0.0.2", now));
        assert_eq!(b.wait_for(ip("10.0.0.1"), now), Duration::from_secs(1));
        assert_eq!(b.wait_for(ip("10.0.0.3"), now), Duration::ZERO);
    }

    #[test]
    fn one_ipv6_host_cannot_escape_by_changing_its_interface_id() {
        let now = Instant::now();
        let mut b = per_source_only();
        for i in 0..10 {
            assert!(guess(&mut b, &format!("fd00::{i:x}"), now));
        }
        assert!(!guess(&mut b, "fd00::ffff", now));
        assert!(guess(&mut b, "fd00:0:0:1::1", now));
    }

    #[test]
    fn failures_from_many_sources_are_bounded_overall() {
        let now = Instant::now();
        let mut b = GuessBudget::default();
        // 200 addresses, each guessing as fast as it may, for 60 seconds.
        let mut granted = 0;
        for ms in (0..60_000).step_by(50) {
            let t = now + Duration::from_millis(ms);
            for host in 0..200 {
                if guess(
                    &mut b,
                    &format!("10.0.{}.{}", host / 250, host % 250 + 1),
                    t,
                ) {
                    granted += 1;
                }
            }
        }
        // Global: burst + 2/s; plus each source's first (clean) failure.
        let bound = GLOBAL_BURST as usize + 2 * 60 + 1 + 200;
        assert!(granted <= bound, "{granted} > {bound}");
        assert!(granted >= 120, "{granted}");
    }

    #[test]
    fn a_clean_source_is_never_blocked_by_other_sources_failures() {
        let now = Instant::now();
        let mut b = GuessBudget::default();
        for host in 1..=100 {
            while guess(&mut b, &format!("10.0.0.{host}"), now) {}
        }
        assert!(b.global.wait(GLOBAL_BURST, GLOBAL_PER_SECOND, now) > Duration::ZERO);
        // A room member's first handshake, and every one after (it never fails).
        for _ in 0..50 {
            let c = b.try_start(ip("10.0.1.7"), now).expect("a clean source");
            b.settle(c, Settled::Member, now);
        }
        // A failing source, once failed, waits for the global bucket.
        assert!(guess(&mut b, "10.0.2.7", now));
        assert!(!guess(&mut b, "10.0.2.7", now));
        assert!(b.wait_for(ip("10.0.2.7"), now) > Duration::ZERO);
        // ...and is clean again after a quiet while, or at once by proving membership.
        let later = now + CLEAN_AFTER;
        assert!(b.try_start(ip("10.0.2.7"), later).is_some());
        while b.global.take(GLOBAL_BURST, GLOBAL_PER_SECOND, later) {}
        assert!(guess(&mut b, "10.0.3.7", later));
        assert!(
            !guess(&mut b, "10.0.3.7", later),
            "unclean: waits for the global bucket"
        );
        b.global = Bucket::full(GLOBAL_BURST, later);
        let c = b.try_start(ip("10.0.3.7"), later).unwrap();
        b.settle(c, Settled::Member, later);
        while b.global.take(GLOBAL_BURST, GLOBAL_PER_SECOND, later) {}
        let c = b.try_start(ip("10.0.3.7"), later).expect("clean again");
        b.settle(c, Settled::Member, later);
    }

    #[test]
    fn concurrent_attempts_from_a_clean_source_bypass_the_global_bucket_once() {
        let now = Instant::now();
        let mut b = GuessBudget::new(BudgetConfig {
            global_burst: 1.0,
            ..BudgetConfig::default()
        });
        assert!(guess(&mut b, "10.0.0.1", now), "drains the global bucket");
        let first = b.try_start(ip("10.0.0.2"), now);
        assert!(first.is_some(), "clean: allowed without a global token");
        assert!(
            b.try_start(ip("10.0.0.2"), now).is_none(),
            "an open attempt makes it unclean"
        );
    }

    #[test]
    fn state_is_bounded_and_forgetting_never_resets_a_failed_source() {
        let now = Instant::now();
        let mut b = GuessBudget::new(BudgetConfig {
            max_sources: 64,
            global_burst: 1e9,
            global_per_second: 1e9,
            ..BudgetConfig::default()
        });
        for _ in 0..10 {
            guess(&mut b, "10.9.9.9", now);
        }
        for i in 0..(64 * 3u32) {
            let c = b.try_start(IpAddr::V4(i.into()), now);
            if let Some(c) = c {
                b.settle(c, Settled::Member, now);
            }
            assert!(b.tracked() <= 64);
        }
        assert!(!guess(&mut b, "10.9.9.9", now), "still out of guesses");
    }
}
