//! A circuit breaker around a downstream dependency (the store, a webhook endpoint): once
//! enough calls in a row failed, on enough different keys, it opens and calls fail fast, so
//! that an outage is not hammered with calls that cannot succeed. One key failing alone (an
//! account whose calls keep timing out) does not open it: that is the retry tiers' business.
//! After `open_for` the caller sends a probe (the ledger a health check that no single key
//! can fail, the notifier its next delivery); its success closes the circuit, its failure
//! keeps it open.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::domain::{CircuitOpen, RetryClass};

/// When a breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Transient failures in a row, each on a different key (or on no key), that open the
    /// circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before letting a probe through.
    pub open_for: Duration,
}

/// The breaker's state, as the `txflow_circuit_state` gauge shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// Where a breaker reports its state and transitions.
#[derive(Clone)]
pub struct BreakerMetrics {
    pub stage: &'static str,
    pub state: IntGaugeVec,
    pub transitions: IntCounterVec,
}

struct Circuit {
    state: CircuitState,
    /// Keys that failed since the last success.
    failing_keys: HashSet<String>,
    /// Calls on no key that failed since the last success.
    failing_calls: u32,
    opened_at: Instant,
}

/// A circuit breaker.
pub struct Breaker {
    dependency: String,
    config: BreakerConfig,
    circuit: Mutex<Circuit>,
    metrics: Option<BreakerMetrics>,
}

impl Breaker {
    pub fn new(
        dependency: impl Into<String>,
        config: BreakerConfig,
        metrics: Option<BreakerMetrics>,
    ) -> Self {
        let breaker = Breaker {
            dependency: dependency.into(),
            config,
            circuit: Mutex::new(Circuit {
                state: CircuitState::Closed,
                failing_keys: HashSet::new(),
                failing_calls: 0,
                opened_at: Instant::now(),
            }),
            metrics,
        };
        breaker.report(None, CircuitState::Closed);
        breaker
    }

    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// The refusal of a call while the circuit is open, `retry_after` before it lets one
    /// through.
    fn refusal<E: From<CircuitOpen>>(&self, retry_after: Duration) -> E {
        E::from(CircuitOpen {
            dependency: self.dependency.clone(),
            retry_after,
        })
    }

    pub fn state(&self) -> CircuitState {
        self.circuit.lock().expect("the circuit lock").state
    }

    /// How long until an open circuit probes again (zero: now); `None` when it is closed.
    pub fn reopens_in(&self, now: Instant) -> Option<Duration> {
        let circuit = self.circuit.lock().expect("the circuit lock");
        match circuit.state {
            CircuitState::Closed => None,
            CircuitState::Open | CircuitState::HalfOpen => {
                Some((circuit.opened_at + self.config.open_for).saturating_duration_since(now))
            }
        }
    }

    /// Records the outcome of a call on `key` (`None`: a call on no particular key).
    pub fn record(&self, healthy: bool, key: Option<&str>, now: Instant) {
        let mut circuit = self.circuit.lock().expect("the circuit lock");
        if circuit.state != CircuitState::Closed {
            return;
        }
        if healthy {
            circuit.failing_keys.clear();
            circuit.failing_calls = 0;
            return;
        }
        match key {
            Some(key) => {
                circuit.failing_keys.insert(key.to_owned());
            }
            None => circuit.failing_calls = circuit.failing_calls.saturating_add(1),
        }
        let spread = circuit.failing_keys.len() as u64 + u64::from(circuit.failing_calls);
        if spread >= u64::from(self.config.failure_threshold) {
            self.open(&mut circuit, now);
        }
    }

    fn open(&self, circuit: &mut Circuit, now: Instant) {
        let before = circuit.state;
        circuit.state = CircuitState::Open;
        circuit.opened_at = now;
        circuit.failing_keys.clear();
        circuit.failing_calls = 0;
        self.report(Some(before), CircuitState::Open);
    }

    /// Runs `call` on `key` while the circuit is closed, and records how it went; while it
    /// is not, refuses with [`CircuitOpen`] without calling.
    pub async fn guard<T, E: RetryClass + From<CircuitOpen>>(
        &self,
        key: Option<&str>,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        if let Some(retry_after) = self.reopens_in(Instant::now()) {
            return Err(self.refusal(retry_after.max(Duration::from_millis(1))));
        }
        let outcome = call.await;
        let healthy = !matches!(&outcome, Err(e) if e.is_transient());
        self.record(healthy, key, Instant::now());
        outcome
    }

    /// While the circuit is open: once `open_for` has passed, runs `probe` (half-open) and
    /// closes the circuit when it succeeds, or opens it again and returns its error when it
    /// fails; before that, refuses with [`CircuitOpen`]. Closed, it does nothing.
    pub async fn probe<T, E: RetryClass + From<CircuitOpen>>(
        &self,
        probe: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, E> {
        let now = Instant::now();
        match self.reopens_in(now) {
            None => return Ok(None),
            Some(wait) if !wait.is_zero() => {
                return Err(self.refusal(wait));
            }
            Some(_) => {}
        }
        self.set_state(CircuitState::HalfOpen, now);
        match probe.await {
            Ok(answer) => {
                self.set_state(CircuitState::Closed, Instant::now());
                Ok(Some(answer))
            }
            Err(e) => {
                tracing::debug!(dependency = %self.dependency, "probe failed: {e}");
                let mut circuit = self.circuit.lock().expect("the circuit lock");
                self.open(&mut circuit, Instant::now());
                Err(e)
            }
        }
    }

    fn set_state(&self, to: CircuitState, now: Instant) {
        let mut circuit = self.circuit.lock().expect("the circuit lock");
        let before = circuit.state;
        if before == to {
            return;
        }
        circuit.state = to;
        if to == CircuitState::HalfOpen {
            circuit.opened_at = now;
        }
        self.report(Some(before), to);
    }

    fn report(&self, from: Option<CircuitState>, to: CircuitState) {
        if let Some(from) = from {
            tracing::warn!(
                dependency = %self.dependency,
                "circuit breaker {} → {}",
                from.as_str(),
                to.as_str()
            );
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .state
                .with_label_values(&[metrics.stage, &self.dependency])
                .set(to.gauge());
            if from.is_some() {
                metrics
                    .transitions
                    .with_label_values(&[metrics.stage, &self.dependency, to.as_str()])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Cause;
    use crate::ports::StoreError;

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(
            "store",
            BreakerConfig {
                failure_threshold: threshold,
                open_for: Duration::from_secs(2),
            },
            None,
        )
    }

    #[test]
    fn opens_after_failures_in_a_row_on_different_keys() {
        let breaker = breaker(3);
        let now = Instant::now();
        for (healthy, key) in [(false, "a"), (false, "b"), (true, "c"), (false, "a")] {
            breaker.record(healthy, Some(key), now);
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "a success starts over"
        );
        breaker.record(false, Some("b"), now);
        breaker.record(false, None, now);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(
            breaker.reopens_in(now + Duration::from_millis(500)),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn one_key_failing_alone_never_opens_it() {
        let breaker = breaker(3);
        for _ in 0..100 {
            breaker.record(false, Some("acct-7"), Instant::now());
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn an_open_circuit_refuses_calls_and_probes_after_its_pause() {
        let breaker = Breaker::new(
            "store",
            BreakerConfig {
                failure_threshold: 1,
                open_for: Duration::from_millis(50),
            },
            None,
        );
        breaker.record(false, None, Instant::now());
        let called = std::sync::atomic::AtomicBool::new(false);
        let refused = breaker
            .guard(Some("a"), async {
                called.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(matches!(refused, Err(StoreError::CircuitOpen(_))));
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
        assert!(
            breaker
                .probe(async { Ok::<(), StoreError>(()) })
                .await
                .is_err(),
            "too early"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let failed = breaker
            .probe(async { Err::<(), _>(StoreError::Unavailable(Cause::message("down"))) })
            .await;
        assert!(failed.is_err());
        assert_eq!(breaker.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(60)).await;
        breaker
            .probe(async { Ok::<(), StoreError>(()) })
            .await
            .unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker
            .guard(Some("a"), async { Ok::<(), StoreError>(()) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn transitions_show_in_the_metrics() {
        let state = IntGaugeVec::new(
            prometheus::Opts::new("state", "s"),
            &["stage", "dependency"],
        )
        .unwrap();
        let transitions = IntCounterVec::new(
            prometheus::Opts::new("transitions", "t"),
            &["stage", "dependency", "to"],
        )
        .unwrap();
        let breaker = Breaker::new(
            "store",
            BreakerConfig {
                failure_threshold: 1,
                open_for: Duration::ZERO,
            },
            Some(BreakerMetrics {
                stage: "ledger",
                state: state.clone(),
                transitions: transitions.clone(),
            }),
        );
        breaker.record(false, None, Instant::now());
        assert_eq!(state.with_label_values(&["ledger", "store"]).get(), 1);
        breaker
            .probe(async { Ok::<(), StoreError>(()) })
            .await
            .unwrap();
        assert_eq!(state.with_label_values(&["ledger", "store"]).get(), 0);
        let count = |to: &str| {
            transitions
                .with_label_values(&["ledger", "store", to])
                .get()
        };
        assert_eq!(
            (count("open"), count("half_open"), count("closed")),
            (1, 1, 1)
        );
    }
}
