//! Bounds on the work requests may start: concurrency per endpoint and a
//! per-client-address request rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

/// `/v1/embeddings` requests running at once; more get 429.
pub const EMBEDDING_REQUESTS: usize = 2;
/// Inputs embedded per step of one embeddings request: when its deadline
/// passes, at most this many more are embedded.
pub const EMBED_SLICE: usize = 32;
/// Searches (search, query and chat retrieval) running at once; more wait.
pub const SEARCHES: usize = 32;

/// Semaphores per kind of work.
pub struct Limits {
    /// Embedding requests.
    pub embeddings: Arc<Semaphore>,
    /// Searches.
    pub searches: Arc<Semaphore>,
    /// Requests per second per client address (`None`: no limit).
    pub rate: Option<RateLimiter>,
}

impl Limits {
    /// The limits, with a per-address rate when `per_second` is set.
    pub fn new(per_second: Option<f64>) -> Self {
        Self {
            embeddings: Arc::new(Semaphore::new(EMBEDDING_REQUESTS)),
            searches: Arc::new(Semaphore::new(SEARCHES)),
            rate: per_second.filter(|r| *r > 0.0).map(RateLimiter::new),
        }
    }

    /// The per-address rate limit, when one is set: 429 with `Retry-After`.
    pub fn check_rate(&self, req: &axum::extract::Request) -> Result<(), super::ApiError> {
        let (Some(limiter), Some(peer)) = (&self.rate, super::net::peer(req)) else {
            return Ok(());
        };
        limiter.check(peer.ip()).map_err(|wait| {
            super::ApiError::too_many(
                format!("too many requests from {}; retry in {wait} s", peer.ip()),
                wait,
            )
        })
    }
}

/// Addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

/// A token bucket per client address: `rate` requests a second, bursts of
/// twice that.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `rate` requests a second per address.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            burst: (rate * 2.0).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request's token for `ip`; `Err(seconds)` until one is free.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_TRACKED && !b.contains_key(&ip) {
            // Forget addresses whose bucket has refilled: they lose nothing.
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, t)| {
                *tokens + now.saturating_duration_since(*t).as_secs_f64() * rate < burst
            });
            if b.len() >= MAX_TRACKED {
                b.clear();
            }
        }
        let (tokens, last) = b.entry(ip).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_refill_at_the_rate_and_addresses_are_separate() {
        let r = RateLimiter::new(2.0);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..4 {
            assert!(r.check_at(a, t0).is_ok());
        }
        assert_eq!(r.check_at(a, t0), Err(1));
        assert!(
            r.check_at(b, t0).is_ok(),
            "another address has its own bucket"
        );
        assert!(r.check_at(a, t0 + Duration::from_millis(600)).is_ok());
        assert!(r.check_at(a, t0 + Duration::from_millis(600)).is_err());
    }

    #[test]
    fn the_table_stays_bounded() {
        let r = RateLimiter::new(1.0);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = r.check_at(ip, t0);
        }
        assert!(r.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }
}
