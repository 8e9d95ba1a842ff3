//! Rate limit on passphrase guesses, per source address, with no I/O.
//!
//! Every handshake a source starts costs one token, refunded when the handshake succeeds. So a
//! guesser that disconnects before confirming (it learns from the holder's confirmation whether
//! its guess was right) pays exactly like one that confirms wrongly. Tokens refill at a steady
//! rate up to a burst; a source with no token left is disconnected before any PAKE work is done.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Guesses a fresh source may make at once.
pub const GUESS_BURST: f64 = 10.0;
/// Guesses per second a source may make in the long run.
pub const GUESSES_PER_SECOND: f64 = 1.0;
/// Sources tracked at once; past this the most idle are forgotten.
pub const MAX_SOURCES: usize = 4096;

/// Sources are whole IPv4 addresses, or IPv6 /64 prefixes (one host can hold a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SourceKey(u128);

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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-source token buckets for handshakes.
#[derive(Debug)]
pub struct GuessLimiter {
    buckets: HashMap<SourceKey, Bucket>,
    burst: f64,
    per_second: f64,
}

impl Default for GuessLimiter {
    fn default() -> Self {
        Self::new(GUESS_BURST, GUESSES_PER_SECOND)
    }
}

impl GuessLimiter {
    pub fn new(burst: f64, per_second: f64) -> Self {
        Self {
            buckets: HashMap::new(),
            burst,
            per_second,
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.updated = now;
    }

    /// Takes a token for a handshake from `ip`; false means refuse the connection.
    pub fn try_start(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = SourceKey::from(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.forget_idle(now);
        }
        let mut b = self.buckets.get(&key).copied().unwrap_or(Bucket {
            tokens: self.burst,
            updated: now,
        });
        self.refill(&mut b, now);
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        self.buckets.insert(key, b);
        allowed
    }

    /// Gives the token back: the source proved it knows the passphrase.
    pub fn succeeded(&mut self, ip: IpAddr) {
        if let Some(b) = self.buckets.get_mut(&SourceKey::from(ip)) {
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }

    /// How long until `ip` may try again (zero if it may now).
    pub fn wait_for(&self, ip: IpAddr, now: Instant) -> Duration {
        match self.buckets.get(&SourceKey::from(ip)) {
            None => Duration::ZERO,
            Some(b) => {
                let mut b = *b;
                self.refill(&mut b, now);
                Duration::from_secs_f64(((1.0 - b.tokens).max(0.0)) / self.per_second)
            }
        }
    }

    fn forget_idle(&mut self, now: Instant) {
        // Sources whose bucket has refilled have nothing to remember.
        let (burst, rate) = (self.burst, self.per_second);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= MAX_SOURCES {
            // Still full: forget the least recently active half.
            let mut by_age: Vec<(Instant, SourceKey)> =
                self.buckets.iter().map(|(k, b)| (b.updated, *k)).collect();
            by_age.sort_unstable_by_key(|(t, _)| *t);
            for (_, k) in by_age.into_iter().take(MAX_SOURCES / 2) {
                self.buckets.remove(&k);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let now = Instant::now();
        let mut l = GuessLimiter::default();
        let a = ip("10.0.0.9");
        for i in 0..10 {
            assert!(l.try_start(a, now), "guess {i} of the burst");
        }
        assert!(!l.try_start(a, now));
        assert!(!l.try_start(a, now + Duration::from_millis(900)));
        assert!(l.try_start(a, now + Duration::from_millis(1000)));
        // Sixty seconds of guessing at full speed yields about sixty more guesses, not more.
        let mut granted = 0;
        for ms in (1001..61_000).step_by(10) {
            if l.try_start(a, now + Duration::from_millis(ms)) {
                granted += 1;
            }
        }
        assert!((59..=61).contains(&granted), "{granted}");
    }

    #[test]
    fn successful_handshakes_cost_nothing() {
        let now = Instant::now();
        let mut l = GuessLimiter::default();
        let a = ip("10.0.0.9");
        for _ in 0..1000 {
            assert!(l.try_start(a, now));
            l.succeeded(a);
        }
    }

    #[test]
    fn sources_are_independent() {
        let now = Instant::now();
        let mut l = GuessLimiter::default();
        for _ in 0..10 {
            l.try_start(ip("10.0.0.1"), now);
        }
        assert!(!l.try_start(ip("10.0.0.1"), now));
        assert!(l.try_start(ip("10.0.0.2"), now));
        assert_eq!(l.wait_for(ip("10.0.0.1"), now), Duration::from_secs(1));
        assert_eq!(l.wait_for(ip("10.0.0.2"), now), Duration::ZERO);
    }

    #[test]
    fn one_ipv6_host_cannot_escape_by_changing_its_interface_id() {
        let now = Instant::now();
        let mut l = GuessLimiter::default();
        for i in 0..10 {
            assert!(l.try_start(ip(&format!("fd00::{i:x}")), now));
        }
        assert!(!l.try_start(ip("fd00::ffff"), now));
        assert!(l.try_start(ip("fd00:0:0:1::1"), now));
    }

    #[test]
    fn state_is_bounded() {
        let now = Instant::now();
        let mut l = GuessLimiter::default();
        for i in 0..(MAX_SOURCES as u32 * 3) {
            l.try_start(IpAddr::V4(i.into()), now);
            assert!(l.tracked() <= MAX_SOURCES);
        }
    }
}
