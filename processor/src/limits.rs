//! Rate limits with `governor`. The ledger paces its store writes and the notifier its
//! webhooks with a [`Pacer`] (waiting, never dropping, the waits counted); callers identified by a key (the gateway's API keys) each get
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

/// A [`pacing`] limiter whose waits are counted: `txflow_rate_limit_waits_total` and
/// `txflow_rate_limit_wait_seconds_total`, by stage and limiter.
pub struct Pacer {
    limiter: DefaultDirectRateLimiter,
    waits: prometheus::IntCounter,
    waited: prometheus::Counter,
}

impl Pacer {
    pub fn new(
        rate: NonZeroU32,
        waits: prometheus::IntCounter,
        waited: prometheus::Counter,
    ) -> Self {
        Pacer {
            limiter: pacing(rate),
            waits,
            waited,
        }
    }

    /// Returns once the pace allows one more call; a call that had to wait is counted.
    pub async fn ready(&self) {
        if self.limiter.check().is_ok() {
            return;
        }
        let started = std::time::Instant::now();
        self.limiter.until_ready().await;
        self.waits.inc();
        self.waited.inc_by(started.elapsed().as_secs_f64());
    }
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
    async fn a_pacer_counts_the_calls_that_waited_and_how_long() {
        let waits = prometheus::IntCounter::new("waits", "waits").unwrap();
        let waited = prometheus::Counter::new("waited", "waited").unwrap();
        let pacer = Pacer::new(NonZeroU32::new(100).unwrap(), waits.clone(), waited.clone());
        pacer.ready().await;
        assert_eq!(waits.get(), 0, "the first call is within the burst");
        for _ in 0..10 {
            pacer.ready().await;
        }
        assert_eq!(
            waits.get(),
            10,
            "each later one waits at 100/s in bursts of 1"
        );
        assert!(waited.get() > 0.05, "{}", waited.get());
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
