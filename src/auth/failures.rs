//! Failed credential guesses, held back per client address apart from the normal rate: a
//! few failures a minute are free, each one after that doubles the wait (10 s, 20 s, 40 s...,
//! at most `MAX_BLOCK`). A quiet minute forgets an address.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Failures an address may make within `QUIET` of each other before it is held back.
pub const FREE_FAILURES: u32 = 5;
const QUIET: Duration = Duration::from_secs(60);
const FIRST_BLOCK: Duration = Duration::from_secs(10);
const MAX_BLOCK: Duration = Duration::from_secs(900);
/// Addresses remembered before old entries are swept out.
const SWEEP_AT: usize = 10_000;

struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

pub struct FailureLimiter {
    enabled: bool,
    /// Read on every request, written only on a failure.
    entries: RwLock<HashMap<String, Entry>>,
}

fn secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl FailureLimiter {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `Err(seconds to wait)` while `key` is held back: its attempts are not even checked.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.get(key).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(secs(until - now)),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt by `key`; `Err(seconds)` when it is now held back.
    pub fn failed(&self, key: &str) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, e| {
                now.duration_since(e.last) < QUIET || e.blocked_until.is_some_and(|u| u > now)
            });
        }
        let entry = entries.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        let quiet_since = entry
            .blocked_until
            .map_or(entry.last, |u| u.max(entry.last));
        if now.saturating_duration_since(quiet_since) >= QUIET {
            entry.failures = 0;
            entry.blocked_until = None;
        }
        entry.failures += 1;
        entry.last = now;
        if entry.failures <= FREE_FAILURES {
            return Ok(());
        }
        let doublings = (entry.failures - FREE_FAILURES - 1).min(16);
        let block = (FIRST_BLOCK * (1u32 << doublings)).min(MAX_BLOCK);
        entry.blocked_until = Some(now + block);
        Err(secs(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_the_wait_doubles() {
        let limiter = FailureLimiter::new(true);
        for _ in 0..FREE_FAILURES {
            assert_eq!(limiter.failed("ip:a"), Ok(()));
        }
        assert_eq!(limiter.check("ip:a"), Ok(()));
        assert_eq!(limiter.failed("ip:a"), Err(10));
        assert!(limiter.check("ip:a").is_err());
        assert_eq!(limiter.failed("ip:a"), Err(20));
        assert_eq!(limiter.failed("ip:a"), Err(40));
        assert_eq!(
            limiter.check("ip:b"),
            Ok(()),
            "other addresses are not affected"
        );
        let off = FailureLimiter::new(false);
        for _ in 0..100 {
            assert_eq!(off.failed("ip:a"), Ok(()));
        }
    }
}
