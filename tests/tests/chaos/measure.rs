//! What a fault cost, from the records' own timestamps: when each event was produced (its
//! record on the events topic) and when its first result was (its record on the results
//! topic, stamped by the ledger's transactional producer inside the batch's transaction).

use std::collections::HashMap;

use txflow_tests::{read_topic, results_of};

/// One fault's numbers.
pub struct Cost {
    /// The longest time, from the fault's start until every event it delayed had its
    /// result, in which no result was produced.
    pub unavailable_ms: i64,
    /// From the fault's end (the machine back, the process resumed) until every event
    /// produced before it had its result; 0 when they all had one by then.
    pub drained_after_ms: i64,
    /// p99 of produce → result over the events produced during the phase.
    pub p99_ms: i64,
    pub max_ms: i64,
    pub events: usize,
}

/// Produce and first-result times (ms) of every event id on the topics now.
pub struct Timeline {
    produced: HashMap<String, i64>,
    answered: HashMap<String, i64>,
    /// Every result's time, sorted.
    results: Vec<i64>,
}

impl Timeline {
    pub fn read(events_topic: &str, results_topic: &str) -> Timeline {
        let codec = txflow::codec::Codec::builtin();
        let mut produced = HashMap::new();
        for record in read_topic(events_topic, "read_committed") {
            let event: txflow::domain::TransactionEvent = codec
                .decode(
                    txflow::codec::Record::TransactionEvent,
                    record.value.as_deref().unwrap_or_default(),
                )
                .expect("an event the producer wrote");
            let at = record.timestamp.expect("a stamped event record");
            produced.entry(event.event_id).or_insert(at);
        }
        let records = read_topic(results_topic, "read_committed");
        let mut answered: HashMap<String, i64> = HashMap::new();
        let mut results = Vec::with_capacity(records.len());
        for (record, result) in records.iter().zip(results_of(&records)) {
            let at = record.timestamp.expect("a stamped result record");
            results.push(at);
            let first = answered.entry(result.event_id).or_insert(at);
            *first = (*first).min(at);
        }
        results.sort_unstable();
        Timeline {
            produced,
            answered,
            results,
        }
    }

    /// Events produced that have no result yet.
    pub fn unanswered(&self) -> usize {
        self.produced
            .keys()
            .filter(|id| !self.answered.contains_key(*id))
            .count()
    }

    /// The cost of a fault from `start` to `end` (ms since the epoch), in a phase whose
    /// events were produced from `phase_start` on.
    pub fn cost(&self, phase_start: i64, start: i64, end: i64) -> Cost {
        let latencies = |from: i64, to: i64| -> Vec<(i64, i64)> {
            self.produced
                .iter()
                .filter(|(_, at)| (from..to).contains(*at))
                .map(|(id, at)| {
                    let answered = self.answered.get(id).copied().unwrap_or(i64::MAX);
                    (*at, answered)
                })
                .collect()
        };
        let before_end = latencies(phase_start, end);
        let drained_at = before_end
            .iter()
            .map(|(_, answered)| *answered)
            .max()
            .unwrap_or(end);
        let window: Vec<i64> = std::iter::once(start)
            .chain(
                self.results
                    .iter()
                    .copied()
                    .filter(|at| (start..=drained_at).contains(at)),
            )
            .chain(std::iter::once(drained_at))
            .collect();
        let unavailable_ms = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let mut phase: Vec<i64> = latencies(phase_start, i64::MAX)
            .into_iter()
            .map(|(at, answered)| answered - at)
            .collect();
        phase.sort_unstable();
        let percentile = |p: f64| -> i64 {
            if phase.is_empty() {
                return 0;
            }
            phase[((phase.len() as f64 * p).ceil() as usize).clamp(1, phase.len()) - 1]
        };
        Cost {
            unavailable_ms,
            drained_after_ms: (drained_at - end).max(0),
            p99_ms: percentile(0.99),
            max_ms: percentile(1.0),
            events: phase.len(),
        }
    }
}
