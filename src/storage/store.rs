//! The holder's drops and their rules, with no I/O: who may fetch what, when a drop is burned,
//! when it expires. Time comes in as `now`, so every rule is tested without waiting.
//!
//! Rules:
//! - A fetch is granted only while the drop is live, to a receiver that does not already have it,
//!   and while `delivered + in flight < limit`. Concurrent fetchers beyond the limit are refused
//!   with [`Refusal::Taken`] at once: exactly one of five concurrent fetchers of a one-time drop
//!   gets the content.
//! - Only [`DropStore::complete`] (the receiver acknowledged a verified copy) counts a fetch. An
//!   interrupted transfer is [`DropStore::release`]d and burns nothing.
//! - A receiver that asks again while its earlier transfer still holds a reservation (the
//!   connection died and it reconnected before the holder noticed) takes the reservation over:
//!   each grant has a [`Ticket`], and only the newest ticket can complete or release it.
//! - A drop whose limit is reached is removed (burned). At its deadline it stops being offered;
//!   transfers already under way may still complete, then it is removed.
//! - The generation, which announcements carry, changes only when something becomes fetchable
//!   that was not: a new drop, or a reservation given back. A grant, a counted fetch, a burn or
//!   an expiry gives no receiver anything new to fetch, so it does not make every receiver in
//!   the room sync again (with 40 receivers of 50 `--everyone` drops, that was tens of
//!   thousands of needless sessions). The [`DropStore::version`] changes with every change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::protocol::id::{PeerId, Token, random_array};
use crate::protocol::message::{DropInfo, DropKind, EVERYONE, Refusal};

/// How many receivers may fetch a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchLimit {
    /// At most this many distinct receivers (at least 1).
    Max(u32),
    /// Every room member that asks before the TTL runs out, once each.
    Everyone,
}

/// What a holder offers.
#[derive(Debug, Clone)]
pub struct DropSpec {
    pub kind: DropKind,
    pub name: String,
    pub size: u64,
    pub ttl: Duration,
    pub limit: FetchLimit,
    /// A single file that should be executable where it lands.
    pub executable: bool,
}

/// The longest time-to-live accepted.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most drops one holder keeps at once.
pub const MAX_DROPS: usize = 10_000;

#[derive(Debug)]
struct Entry<C> {
    spec: DropSpec,
    created_unix: u64,
    deadline: Instant,
    delivered: HashSet<PeerId>,
    /// Reservations, by receiver, with the ticket of the newest grant.
    /// Reservations by receiver (device), with the ticket and the process that made each.
    in_flight: HashMap<PeerId, (Ticket, PeerId)>,
    content: C,
}

impl<C> Entry<C> {
    fn fetches_left(&self) -> u32 {
        match self.spec.limit {
            FetchLimit::Everyone => EVERYONE,
            FetchLimit::Max(n) => {
                n.saturating_sub((self.delivered.len() + self.in_flight.len()) as u32)
            }
        }
    }

    fn info(&self, token: Token, now: Instant) -> DropInfo {
        DropInfo {
            token,
            kind: self.spec.kind,
            size: self.spec.size,
            name: self.spec.name.clone(),
            created_unix: self.created_unix,
            ttl_left_ms: self.deadline.saturating_duration_since(now).as_millis() as u64,
            fetches_left: self.fetches_left(),
            executable: self.spec.executable,
        }
    }

    fn used_up(&self) -> bool {
        matches!(self.spec.limit, FetchLimit::Max(n) if self.delivered.len() as u32 >= n)
    }
}

/// Identifies one grant, so a stale transfer cannot complete or release a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// A granted fetch: the drop's description and its content handle.
#[derive(Debug, Clone)]
pub struct Grant<C> {
    pub info: DropInfo,
    pub content: C,
    pub ticket: Ticket,
}

/// How a drop left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Its fetch limit was reached.
    UsedUp,
    /// Its TTL ran out.
    Expired,
}

/// The outcome of an acknowledged fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Receivers that have it now.
    pub delivered: u32,
    /// Set when this fetch removed the drop.
    pub gone: Option<Gone>,
}

/// A drop removed by [`DropStore::expire`] or a late completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub token: Token,
    pub delivered: u32,
    pub why: Gone,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    #[error("a holder keeps at most {MAX_DROPS} drops")]
    Full,
    #[error("the time-to-live must be between 1 ms and 7 days")]
    BadTtl,
    #[error("--max-fetches must be at least 1")]
    ZeroLimit,
}

/// The drops one holder offers.
#[derive(Debug)]
pub struct DropStore<C> {
    drops: HashMap<Token, Entry<C>>,
    deadlines: BTreeSet<(Instant, Token)>,
    /// Used-up drops, until their deadline: a late fetcher hears "taken", not "no such drop".
    burned: HashMap<Token, Instant>,
    generation: u64,
    version: u64,
    tickets: u64,
}

impl<C: Clone> Default for DropStore<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clone> DropStore<C> {
    pub fn new() -> Self {
        Self {
            drops: HashMap::new(),
            deadlines: BTreeSet::new(),
            burned: HashMap::new(),
            tickets: 0,
            // A random start, so the counter does not tell how many changes a holder has seen.
            generation: u64::from_be_bytes(random_array()),
            version: 0,
        }
    }

    /// Changes whenever something becomes fetchable that was not (a new drop, a reservation
    /// given back): what receivers sync on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Changes with every change to the drops (what the holder's own tasks wait on).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Something changed that gives no receiver anything new.
    fn bump(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    /// Something became fetchable.
    fn bump_offer(&mut self) {
        self.bump();
        self.generation = self.generation.wrapping_add(1);
    }

    pub fn len(&self) -> usize {
        self.drops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.drops.is_empty()
    }

    pub fn insert(
        &mut self,
        spec: DropSpec,
        content: C,
        now: Instant,
        created_unix: u64,
    ) -> Result<Token, StoreError> {
        if self.drops.len() >= MAX_DROPS {
            return Err(StoreError::Full);
        }
        if spec.ttl.is_zero() || spec.ttl > MAX_TTL {
            return Err(StoreError::BadTtl);
        }
        if spec.limit == FetchLimit::Max(0) {
            return Err(StoreError::ZeroLimit);
        }
        let token = Token::random();
        let deadline = now + spec.ttl;
        self.deadlines.insert((deadline, token));
        self.drops.insert(
            token,
            Entry {
                spec,
                created_unix,
                deadline,
                delivered: HashSet::new(),
                in_flight: HashMap::new(),
                content,
            },
        );
        self.bump_offer();
        Ok(token)
    }

    /// The drops `who` could fetch now, soonest deadline first.
    pub fn list(&self, who: PeerId, now: Instant) -> Vec<DropInfo> {
        self.deadlines
            .iter()
            .filter(|(deadline, _)| *deadline > now)
            .filter_map(|(_, token)| {
                let e = &self.drops[token];
                // A receiver holding a reservation still sees the drop: it is asking again
                // because its transfer died, and may take the reservation over.
                let offered = (e.fetches_left() > 0 || e.in_flight.contains_key(&who))
                    && !e.delivered.contains(&who);
                offered.then(|| e.info(*token, now))
            })
            .collect()
    }

    /// Reserves one fetch of `token` for `who`, a receiver that is one process.
    pub fn begin(&mut self, token: Token, who: PeerId, now: Instant) -> Result<Grant<C>, Refusal> {
        self.begin_as(token, who, who, now)
    }

    /// Reserves one fetch of `token` for receiver `who` (a device), asked for by its
    /// `process`. Only the process that made a reservation can take it over: another process
    /// of the same device is told the drop is taken while the reservation stands, so one
    /// device gets one copy.
    pub fn begin_as(
        &mut self,
        token: Token,
        who: PeerId,
        process: PeerId,
        now: Instant,
    ) -> Result<Grant<C>, Refusal> {
        if self
            .burned
            .get(&token)
            .is_some_and(|deadline| *deadline > now)
        {
            return Err(Refusal::Taken);
        }
        let e = self.drops.get_mut(&token).ok_or(Refusal::NotFound)?;
        if e.deadline <= now {
            return Err(Refusal::NotFound);
        }
        if e.delivered.contains(&who) {
            return Err(Refusal::AlreadyYours);
        }
        // A receiver with a reservation already is asking again: its transfer died. It takes
        // its own reservation over; nobody else's.
        match e.in_flight.get(&who) {
            Some((_, p)) if *p != process => return Err(Refusal::Taken),
            None if e.fetches_left() == 0 => return Err(Refusal::Taken),
            _ => {}
        }
        self.tickets += 1;
        let ticket = Ticket(self.tickets);
        e.in_flight.insert(who, (ticket, process));
        let grant = Grant {
            info: e.info(token, now),
            content: e.content.clone(),
            ticket,
        };
        self.bump();
        Ok(grant)
    }

    /// Gives back a reservation whose transfer did not finish. Burns nothing. A stale ticket
    /// (the receiver has asked again since) changes nothing.
    pub fn release(
        &mut self,
        token: Token,
        who: PeerId,
        ticket: Ticket,
        now: Instant,
    ) -> Option<Removed> {
        let e = self.drops.get_mut(&token)?;
        if e.in_flight.get(&who).map(|(t, _)| *t) != Some(ticket) {
            return None;
        }
        e.in_flight.remove(&who);
        self.bump_offer();
        self.remove_if_expired(token, now)
    }

    /// Counts an acknowledged fetch. Refused unless `ticket` is `who`'s current reservation.
    pub fn complete(
        &mut self,
        token: Token,
        who: PeerId,
        ticket: Ticket,
        now: Instant,
    ) -> Result<Completion, Refusal> {
        let e = self.drops.get_mut(&token).ok_or(Refusal::NotFound)?;
        if e.in_flight.get(&who).map(|(t, _)| *t) != Some(ticket) {
            return Err(Refusal::NotFound);
        }
        e.in_flight.remove(&who);
        e.delivered.insert(who);
        let delivered = e.delivered.len() as u32;
        let used_up = e.used_up();
        self.bump();
        let gone = if used_up {
            if let Some(e) = self.drops.get(&token)
                && self.burned.len() < MAX_DROPS
            {
                self.burned.insert(token, e.deadline);
            }
            self.remove(token);
            Some(Gone::UsedUp)
        } else {
            self.remove_if_expired(token, now).map(|r| r.why)
        };
        Ok(Completion { delivered, gone })
    }

    /// When the next drop expires, for the purge timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Whether used-up drops are still remembered (to answer "taken").
    pub fn has_burned(&self) -> bool {
        !self.burned.is_empty()
    }

    /// Removes every drop whose deadline has passed and that no transfer is using. Drops still
    /// being transferred stop being offered and leave the deadline index (so the purge timer
    /// does not wake for them again and again); they are removed when their transfer ends.
    pub fn expire(&mut self, now: Instant) -> Vec<Removed> {
        self.burned.retain(|_, deadline| *deadline > now);
        let due: Vec<(Instant, Token)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .copied()
            .collect();
        let mut removed = Vec::new();
        for (deadline, token) in due {
            match self.remove_if_expired(token, now) {
                Some(r) => removed.push(r),
                None => {
                    self.deadlines.remove(&(deadline, token));
                }
            }
        }
        if !removed.is_empty() {
            self.bump();
        }
        removed
    }

    fn remove_if_expired(&mut self, token: Token, now: Instant) -> Option<Removed> {
        let e = self.drops.get(&token)?;
        if e.deadline > now || !e.in_flight.is_empty() {
            return None;
        }
        let delivered = e.delivered.len() as u32;
        self.remove(token);
        Some(Removed {
            token,
            delivered,
            why: Gone::Expired,
        })
    }

    fn remove(&mut self, token: Token) {
        if let Some(e) = self.drops.remove(&token) {
            self.deadlines.remove(&(e.deadline, token));
        }
    }

    /// Withdraws every drop, returning their tokens.
    pub fn withdraw_all(&mut self) -> Vec<Token> {
        let tokens: Vec<Token> = self.drops.keys().copied().collect();
        for t in &tokens {
            self.remove(*t);
        }
        if !tokens.is_empty() {
            self.bump();
        }
        tokens
    }

    /// Withdraws a drop (the holder is shutting down).
    pub fn withdraw(&mut self, token: Token) -> bool {
        let present = self.drops.contains_key(&token);
        self.remove(token);
        if present {
            self.bump();
        }
        present
    }
}

#[cfg(test)]
impl<C: Clone> DropStore<C> {
    /// The ticket of `who`'s reservation of `token`, if any (tests drive the store by peer).
    pub(crate) fn current_ticket(&self, token: Token, who: PeerId) -> Option<Ticket> {
        self.drops.get(&token)?.in_flight.get(&who).map(|(t, _)| *t)
    }

    pub(crate) fn complete_current(
        &mut self,
        token: Token,
        who: PeerId,
        now: Instant,
    ) -> Result<Completion, Refusal> {
        let ticket = self.current_ticket(token, who).unwrap_or(Ticket(0));
        self.complete(token, who, ticket, now)
    }

    pub(crate) fn release_current(
        &mut self,
        token: Token,
        who: PeerId,
        now: Instant,
    ) -> Option<Removed> {
        let ticket = self.current_ticket(token, who).unwrap_or(Ticket(0));
        self.release(token, who, ticket, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: FetchLimit) -> DropSpec {
        DropSpec {
            kind: DropKind::Message,
            name: "message".into(),
            size: 5,
            ttl: Duration::from_secs(12),
            limit,
            executable: false,
        }
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn a_one_time_drop_goes_to_exactly_one_of_five_concurrent_fetchers() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), "hello", now, 0).unwrap();
        let p = peers(5);
        let results: Vec<_> = p.iter().map(|&who| s.begin(t, who, now)).collect();
        assert!(results[0].is_ok());
        for r in &results[1..] {
            assert_eq!(r.as_ref().unwrap_err(), &Refusal::Taken);
        }
        let c = s.complete_current(t, p[0], now).unwrap();
        assert_eq!(
            c,
            Completion {
                delivered: 1,
                gone: Some(Gone::UsedUp)
            }
        );
        assert!(s.is_empty());
        assert_eq!(
            s.begin(t, p[1], now).unwrap_err(),
            Refusal::Taken,
            "late fetchers hear taken"
        );
        let after_ttl = now + Duration::from_secs(12);
        s.expire(after_ttl);
        assert!(!s.has_burned());
        assert_eq!(s.begin(t, p[1], after_ttl).unwrap_err(), Refusal::NotFound);
    }

    #[test]
    fn an_interrupted_fetch_burns_nothing() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let p = peers(2);
        s.begin(t, p[0], now).unwrap();
        assert!(
            s.list(p[1], now).is_empty(),
            "a reserved one-time drop is not on offer"
        );
        let g = s.generation();
        assert_eq!(s.release_current(t, p[0], now), None);
        assert_ne!(s.generation(), g, "release must be announced");
        assert_eq!(s.list(p[1], now).len(), 1);
        s.begin(t, p[1], now).unwrap();
        assert_eq!(
            s.complete_current(t, p[1], now).unwrap().gone,
            Some(Gone::UsedUp)
        );
    }

    #[test]
    fn an_ack_without_a_reservation_counts_nothing() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        assert_eq!(
            s.complete_current(t, PeerId::random(), now),
            Err(Refusal::NotFound)
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn max_fetches_counts_distinct_receivers() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(2)), (), now, 0).unwrap();
        let p = peers(3);
        s.begin(t, p[0], now).unwrap();
        assert_eq!(
            s.complete_current(t, p[0], now).unwrap(),
            Completion {
                delivered: 1,
                gone: None
            }
        );
        assert_eq!(s.begin(t, p[0], now).unwrap_err(), Refusal::AlreadyYours);
        assert!(s.list(p[0], now).is_empty());
        assert_eq!(s.list(p[1], now)[0].fetches_left, 1);
        s.begin(t, p[1], now).unwrap();
        assert_eq!(s.begin(t, p[2], now).unwrap_err(), Refusal::Taken);
        assert_eq!(
            s.complete_current(t, p[1], now).unwrap().gone,
            Some(Gone::UsedUp)
        );
    }

    #[test]
    fn everyone_gets_it_once_until_the_ttl() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Everyone), (), now, 0).unwrap();
        for who in peers(50) {
            s.begin(t, who, now).unwrap();
            assert_eq!(s.complete_current(t, who, now).unwrap().gone, None);
            assert_eq!(s.begin(t, who, now).unwrap_err(), Refusal::AlreadyYours);
        }
        let later = now + Duration::from_secs(12);
        assert_eq!(
            s.begin(t, PeerId::random(), later).unwrap_err(),
            Refusal::NotFound
        );
        assert_eq!(
            s.expire(later),
            vec![Removed {
                token: t,
                delivered: 50,
                why: Gone::Expired
            }]
        );
    }

    #[test]
    fn expiry_removes_unfetched_drops_at_the_deadline_not_before() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(12)));
        assert!(s.expire(now + Duration::from_millis(11_999)).is_empty());
        let removed = s.expire(now + Duration::from_secs(12));
        assert_eq!(
            removed,
            vec![Removed {
                token: t,
                delivered: 0,
                why: Gone::Expired
            }]
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_transfer_under_way_at_the_deadline_may_finish() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let who = PeerId::random();
        s.begin(t, who, now).unwrap();
        let late = now + Duration::from_secs(13);
        assert!(s.expire(late).is_empty());
        assert!(s.list(PeerId::random(), late).is_empty());
        assert_eq!(
            s.complete_current(t, who, late).unwrap().gone,
            Some(Gone::UsedUp)
        );
    }

    #[test]
    fn regression_an_expired_drop_in_flight_does_not_keep_the_purge_timer_due() {
        // The holder spun a core: the in-flight drop's past deadline stayed first, so the purge
        // timer returned at once, forever.
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let later = s
            .insert(
                DropSpec {
                    ttl: Duration::from_secs(60),
                    ..spec(FetchLimit::Max(1))
                },
                (),
                now,
                0,
            )
            .unwrap();
        let who = PeerId::random();
        s.begin(t, who, now).unwrap();
        let late = now + Duration::from_secs(13);
        assert!(s.expire(late).is_empty());
        assert_eq!(
            s.next_deadline(),
            Some(now + Duration::from_secs(60)),
            "only the live drop's deadline is due"
        );
        // The transfer still finishes and counts, and the drop goes then.
        assert_eq!(
            s.complete_current(t, who, late).unwrap().gone,
            Some(Gone::UsedUp)
        );
        s.withdraw(later);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_transfer_failing_after_the_deadline_expires_the_drop() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let who = PeerId::random();
        s.begin(t, who, now).unwrap();
        let late = now + Duration::from_secs(13);
        assert!(s.expire(late).is_empty());
        assert_eq!(
            s.release_current(t, who, late),
            Some(Removed {
                token: t,
                delivered: 0,
                why: Gone::Expired
            })
        );
        assert!(s.is_empty());
    }

    #[test]
    fn generation_changes_with_the_offer() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let g0 = s.generation();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let g1 = s.generation();
        assert_ne!(g0, g1);
        let _ = s.list(PeerId::random(), now);
        assert_eq!(s.generation(), g1, "listing changes nothing");
        assert!(s.withdraw(t));
        assert_ne!(s.version(), 0);
        assert_eq!(s.generation(), g1, "nothing new to fetch");
    }

    #[test]
    fn regression_fetches_of_an_everyone_drop_do_not_make_every_receiver_sync_again() {
        // Each grant and acknowledgement changed the announced generation, so with 40
        // receivers of 50 `--everyone` drops every receiver synced with every holder again
        // after each of the others' fetches: 2000 deliveries took 21 s.
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Everyone), (), now, 0).unwrap();
        let g = s.generation();
        for who in (0..5).map(|_| PeerId::random()) {
            let ticket = s.begin(t, who, now).unwrap().ticket;
            s.complete(t, who, ticket, now).unwrap();
        }
        assert_eq!(s.generation(), g);
        // A reservation given back makes the drop fetchable again: that is news.
        let who = PeerId::random();
        let ticket = s.begin(t, who, now).unwrap().ticket;
        assert_eq!(s.generation(), g);
        let v = s.version();
        s.release(t, who, ticket, now);
        assert_ne!(s.generation(), g);
        assert_ne!(s.version(), v);
        // And a new drop.
        let g = s.generation();
        s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        assert_ne!(s.generation(), g);
    }

    #[test]
    fn one_device_gets_one_copy_whichever_of_its_processes_asks() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(2)), (), now, 0).unwrap();
        let (device, run, fetch) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ticket = s.begin_as(t, device, run, now).unwrap().ticket;
        // Another process of the device while the first transfer is under way: taken.
        assert_eq!(
            s.begin_as(t, device, fetch, now).unwrap_err(),
            Refusal::Taken
        );
        // The same process asking again (its connection died) takes it over, as before.
        let ticket2 = s.begin_as(t, device, run, now).unwrap().ticket;
        assert_ne!(ticket, ticket2);
        s.complete(t, device, ticket2, now).unwrap();
        // Fetched by that device: any of its processes hears "already yours", and one slot
        // is left for another device.
        assert_eq!(
            s.begin_as(t, device, fetch, now).unwrap_err(),
            Refusal::AlreadyYours
        );
        assert!(s.list(device, now).is_empty());
        assert_eq!(s.list(PeerId::random(), now).len(), 1);
    }

    #[test]
    fn a_receiver_that_reconnects_takes_its_reservation_over() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let t = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        let old = s.begin(t, a, now).unwrap().ticket;
        assert_eq!(
            s.list(a, now).len(),
            1,
            "still listed for the one who holds it"
        );
        assert!(s.list(b, now).is_empty());
        // Its connection died unnoticed; it asks again and gets the same reservation anew...
        let new = s.begin(t, a, now).unwrap().ticket;
        assert_ne!(old, new);
        // ...while nobody else can take it meanwhile.
        assert_eq!(s.begin(t, b, now).unwrap_err(), Refusal::Taken);
        // The dead transfer noticing late neither releases nor completes the new one.
        assert_eq!(s.release(t, a, old, now), None);
        assert_eq!(s.complete(t, a, old, now), Err(Refusal::NotFound));
        assert_eq!(s.begin(t, b, now).unwrap_err(), Refusal::Taken);
        assert_eq!(s.complete(t, a, new, now).unwrap().gone, Some(Gone::UsedUp));
    }

    #[test]
    fn bad_specs_are_refused() {
        let now = Instant::now();
        let mut s = DropStore::<()>::new();
        assert_eq!(
            s.insert(
                DropSpec {
                    ttl: Duration::ZERO,
                    ..spec(FetchLimit::Max(1))
                },
                (),
                now,
                0
            ),
            Err(StoreError::BadTtl)
        );
        assert_eq!(
            s.insert(spec(FetchLimit::Max(0)), (), now, 0),
            Err(StoreError::ZeroLimit)
        );
    }

    #[test]
    fn listing_is_ordered_by_deadline() {
        let now = Instant::now();
        let mut s = DropStore::new();
        let late = s
            .insert(
                DropSpec {
                    ttl: Duration::from_secs(60),
                    ..spec(FetchLimit::Max(1))
                },
                (),
                now,
                0,
            )
            .unwrap();
        let soon = s.insert(spec(FetchLimit::Max(1)), (), now, 0).unwrap();
        let l = s.list(PeerId::random(), now);
        assert_eq!(
            l.iter().map(|d| d.token).collect::<Vec<_>>(),
            vec![soon, late]
        );
        assert_eq!(l[0].ttl_left_ms, 12_000);
    }
}
