//! Rate limits with `governor`. The ledger paces its store writes with a direct limiter
//! (waiting, never dropping); callers identified by a key (the gateway's API keys) each get
//! their own budget from a [`KeyedRateLimit`], and are told how long to wait when they spend
//! it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The pace of a fixed rate: `rate` per second, in bursts of at most 10 ms worth. (A
/// quota's default burst is a whole second's worth, which would start every run with a
/// spike.)
pub fn pace(rate: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new(rate.get() / 100).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// A limiter that waits at [`pace`]: `until_ready` slows the caller down, nothing is refused.
pub fn pacing(rate: NonZeroU32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(pace(rate))
}

/// A budget per key: `per_second` on average, `burst` at once.
pub struct KeyedRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl KeyedRateLimit {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let clock = DefaultClock::default();
        let quota = Quota::per_second(per_second).allow_burst(burst);
        KeyedRateLimit {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Spends one unit of `key`'s budget, or says how long until one is available (for a
    /// `Retry-After`).
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose budget is full again, so that the map does not grow with every key
    /// ever seen; call it now and then.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_budget() {
        let limit = KeyedRateLimit::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
        assert!(limit.check("a").is_ok());
        assert!(limit.check("a").is_ok());
        let wait = limit.check("a").expect_err("a's burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check("b").is_ok(), "b is not slowed by a");
        limit.forget_idle();
    }

    #[tokio::test]
    async fn pacing_waits_instead_of_refusing() {
        let limiter = pacing(NonZeroU32::new(100).unwrap());
        let start = std::time::Instant::now();
        for _ in 0..30 {
            limiter.until_ready().await;
        }
        // 30 permits at 100/s in bursts of 1: at least 0.29 s of waiting, nothing refused.
        assert!(
            start.elapsed() >= Duration::from_millis(280),
            "{:?}",
            start.elapsed()
        );
    }
}
