//! The aggregator's metrics, declared once. Names follow
//! `mailvault_aggregator_<what>_<unit>[_total]`; no label carries a mailbox or user id.
//! Counters are plain atomics; [`Metrics::render`] is what the binary serves at `/metrics`
//! (`mailvault_runtime::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

macro_rules! metrics {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// Counters of one aggregator process (every worker adds to the same set).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            /// `(metric name, help, value)` of every metric.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$(($name, $help, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

metrics! {
    items_stored_total => "mailvault_aggregator_items_stored_total", "Item versions durable and acknowledged (including redeliveries of stored ones).";
    items_duplicate_total => "mailvault_aggregator_items_duplicate_total", "Item versions that were already stored (redelivery): body not read.";
    changes_recorded_total => "mailvault_aggregator_changes_recorded_total", "Change events recorded as item-history entries.";
    logical_bytes_total => "mailvault_aggregator_logical_bytes_total", "Item bytes fed to the writer.";
    new_chunks_total => "mailvault_aggregator_new_chunks_total", "Chunks this process stored (not found in the index it knew of).";
    new_raw_bytes_total => "mailvault_aggregator_new_raw_bytes_total", "Bytes of new chunks (not deduplicated away), before compression.";
    quarantined_total => "mailvault_aggregator_quarantined_total", "Poison messages terminated with a quarantine record.";
    naks_total => "mailvault_aggregator_naks_total", "Deliveries sent back for later redelivery (retryable errors, shutdown).";
    flushes_total => "mailvault_aggregator_flushes_total", "Successful writer flushes (items durable).";
    flush_errors_total => "mailvault_aggregator_flush_errors_total", "Failed flush, upload or publish attempts (retried).";
    flush_seconds_sum => "mailvault_aggregator_flush_seconds_sum", "Total seconds spent in successful flushes.";
    flush_seconds_count => "mailvault_aggregator_flush_seconds_count", "Number of timed flushes.";
    bodies_deleted_total => "mailvault_aggregator_bodies_deleted_total", "Object Store bodies deleted after ack.";
    refreshes_total => "mailvault_aggregator_index_refreshes_total", "Loads of index objects written by other replicas.";
    backlog_messages => "mailvault_aggregator_backlog_messages", "Ingest messages the shared consumer has not had acknowledged yet (undelivered plus awaiting ack), as JetStream counted them at the last probe (every 10 s); every replica reports the same number.";
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn observe_flush(&self, d: Duration) {
        Self::add(&self.flush_seconds_count, 1);
        // Microseconds, so the sum of many short flushes is not rounded away.
        Self::add(&self.flush_seconds_sum, d.as_micros() as u64);
    }

    /// Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        mailvault_runtime::metrics::encode(&self.samples())
    }

    /// Every metric with its exported value: what `/metrics` renders and OTLP pushes.
    pub fn samples(&self) -> Vec<mailvault_runtime::metrics::Sample> {
        use mailvault_runtime::metrics::{Sample, Value};
        self.snapshot()
            .into_iter()
            .map(|(name, help, v)| {
                // Kept in microseconds (see observe_flush), exported in seconds.
                let value = if name == "mailvault_aggregator_flush_seconds_sum" {
                    Value::Float(v as f64 / 1e6)
                } else {
                    Value::Int(v)
                };
                Sample::new(name, help, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text_with_one_family_each() {
        let m = Metrics::default();
        Metrics::add(&m.items_stored_total, 3);
        m.observe_flush(Duration::from_micros(1_500));
        m.observe_flush(Duration::from_micros(500));
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE mailvault_aggregator_items_stored_total counter\n\
                 mailvault_aggregator_items_stored_total 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE mailvault_aggregator_flush_seconds summary\n\
                 mailvault_aggregator_flush_seconds_sum 0.002\n\
                 mailvault_aggregator_flush_seconds_count 2\n"
            ),
            "{text}"
        );
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(families.insert(name.to_owned()), "{name} typed twice");
            } else if !line.starts_with("# HELP ") {
                let (name, value) = line.split_once(' ').expect("name value");
                assert!(name.starts_with("mailvault_aggregator_"), "{line}");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert_eq!(
            families.len(),
            m.snapshot().len() - 1,
            "sum and count share a family"
        );
    }
}
