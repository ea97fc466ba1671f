//! The indexer's metrics, declared once. Names follow
//! `mailvault_indexer_<what>_<unit>[_total]`; the only label is an event's `kind` (`stored`,
//! `changed`), never a mailbox or user id. Counters are plain atomics; [`Metrics::render`] is
//! what the binary serves at `/metrics` (`mailvault_runtime::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mailvault_runtime::metrics::{Sample, Value, encode};

macro_rules! metrics {
    ($($field:ident => $name:literal $({ $label:literal = $value:literal })?, $help:literal;)*) => {
        /// Counters of one indexer process (consumer and API add to the same set).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            /// `(metric name, labels, help, value)` of every series.
            pub fn snapshot(
                &self,
            ) -> Vec<(&'static str, Vec<(&'static str, &'static str)>, &'static str, u64)> {
                vec![$((
                    $name,
                    vec![$(($label, $value))?],
                    $help,
                    self.$field.load(Ordering::Relaxed),
                ),)*]
            }
        }
    };
}

metrics! {
    events_stored_applied => "mailvault_indexer_events_applied_total" { "kind" = "stored" }, "Events applied to the index (not yet committed), by kind.";
    events_changed_applied => "mailvault_indexer_events_applied_total" { "kind" = "changed" }, "Events applied to the index (not yet committed), by kind.";
    events_retried => "mailvault_indexer_events_retried_total", "Events that failed for a retryable reason; their delivery is redelivered.";
    events_skipped => "mailvault_indexer_events_skipped_total", "Entries of event batches that can never be indexed: logged and left out (reindex rebuilds them).";
    deliveries_terminated => "mailvault_indexer_deliveries_terminated_total", "Event deliveries terminated: undecodable, unknown subject, or a single event that can never be indexed.";
    commits => "mailvault_indexer_commits_total", "Successful index commits (events acked after each).";
    commit_errors => "mailvault_indexer_commit_errors_total", "Failed index commits (their deliveries nakked and redelivered).";
    commit_seconds_sum => "mailvault_indexer_commit_seconds_sum", "Seconds spent in successful index commits.";
    commit_seconds_count => "mailvault_indexer_commit_seconds_count", "Timed successful index commits.";
    searches => "mailvault_indexer_searches_total", "Index searches run for the API (one per result page or count).";
    search_errors => "mailvault_indexer_search_errors_total", "Index searches that failed (bad query or index error).";
    search_seconds_sum => "mailvault_indexer_search_seconds_sum", "Seconds spent in index searches.";
    search_seconds_count => "mailvault_indexer_search_seconds_count", "Timed index searches.";
    gets => "mailvault_indexer_gets_total", "Items served by GetItem (permission checked, stream started).";
    backlog_messages => "mailvault_indexer_backlog_messages", "Event messages the indexer has not acknowledged yet (undelivered plus awaiting ack), as JetStream counted them at the last probe (every 10 s): how far search is behind the backup.";
}

/// Sums of durations are kept in microseconds so many short ones are not rounded away.
const SECONDS_SUMS: [&str; 2] = [
    "mailvault_indexer_commit_seconds_sum",
    "mailvault_indexer_search_seconds_sum",
];

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn observe_commit(&self, d: Duration) {
        Self::add(&self.commits, 1);
        Self::add(&self.commit_seconds_count, 1);
        Self::add(&self.commit_seconds_sum, d.as_micros() as u64);
    }

    pub fn observe_search(&self, d: Duration, ok: bool) {
        Self::add(&self.searches, 1);
        if !ok {
            Self::add(&self.search_errors, 1);
        }
        Self::add(&self.search_seconds_count, 1);
        Self::add(&self.search_seconds_sum, d.as_micros() as u64);
    }

    /// Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        encode(&self.samples())
    }

    /// Every series with its exported value: what `/metrics` renders and OTLP pushes.
    pub fn samples(&self) -> Vec<Sample> {
        self.snapshot()
            .into_iter()
            .map(|(name, labels, help, v)| Sample {
                name,
                labels,
                help,
                value: if SECONDS_SUMS.contains(&name) {
                    Value::Float(v as f64 / 1e6)
                } else {
                    Value::Int(v)
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_labels_kinds_and_exports_seconds() {
        let m = Metrics::default();
        Metrics::add(&m.events_stored_applied, 5);
        Metrics::add(&m.events_changed_applied, 2);
        m.observe_commit(Duration::from_millis(250));
        m.observe_search(Duration::from_micros(1500), true);
        m.observe_search(Duration::from_micros(500), false);
        let text = m.render();
        for want in [
            "# TYPE mailvault_indexer_events_applied_total counter\n\
             mailvault_indexer_events_applied_total{kind=\"stored\"} 5\n\
             mailvault_indexer_events_applied_total{kind=\"changed\"} 2\n",
            "mailvault_indexer_commits_total 1\n",
            "# TYPE mailvault_indexer_commit_seconds summary\n\
             mailvault_indexer_commit_seconds_sum 0.25\n\
             mailvault_indexer_commit_seconds_count 1\n",
            "mailvault_indexer_searches_total 2\n",
            "mailvault_indexer_search_errors_total 1\n",
            "mailvault_indexer_search_seconds_sum 0.002\n",
            "# TYPE mailvault_indexer_backlog_messages gauge\n\
             mailvault_indexer_backlog_messages 0\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        assert_eq!(text.matches("# TYPE ").count(), 12, "{text}");
    }
}
