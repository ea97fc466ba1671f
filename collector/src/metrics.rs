//! Collector metrics, declared once. Counters are plain atomics; the names are the exported
//! names (`mailvault_collector_<what>_<unit>[_total]`), and [`Metrics::render`] is what the
//! binary serves at `/metrics` (`mailvault_runtime::metrics`). Labels stay bounded: never a
//! mailbox or user id.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $field:ident => $name:literal : $help:literal ),* $(,)?) => {
        /// Process-wide counters of the collector.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( pub $field: AtomicU64, )*
        }

        impl Metrics {
            /// `(metric name, help, current value)` for every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![ $( ($name, $help, self.$field.load(Ordering::Relaxed)), )* ]
            }
        }
    };
}

counters! {
    items_published => "mailvault_collector_items_published_total": "Item envelopes acknowledged by JetStream",
    changes_published => "mailvault_collector_changes_published_total": "Read-flag, move and delete changes acknowledged by JetStream",
    bytes_published => "mailvault_collector_published_bytes_total": "MIME bytes published (inline or object store)",
    object_store_uploads => "mailvault_collector_object_store_uploads_total": "Bodies over the inline limit put into the object store",
    quarantined => "mailvault_collector_quarantined_total": "Items that could not be collected and got a quarantine record",
    throttled => "mailvault_collector_throttled_total": "EWS throttling responses (ErrorServerBusy, HTTP 503/429)",
    ews_requests => "mailvault_collector_ews_requests_total": "EWS HTTP requests sent",
    ntlm_handshakes => "mailvault_collector_ntlm_handshakes_total": "NTLM handshakes completed (one per connection while it stays open)",
    ews_retries => "mailvault_collector_ews_retries_total": "EWS requests retried after a retryable failure",
    sync_state_resets => "mailvault_collector_sync_state_resets_total": "Folders resynchronised after ErrorInvalidSyncStateData",
    mime_fetch_skipped => "mailvault_collector_mime_fetch_skipped_total": "Items not re-fetched during a resync because their version was already collected",
    folders_synced => "mailvault_collector_folders_synced_total": "Folder synchronisations completed",
    mailbox_failures => "mailvault_collector_mailbox_failures_total": "Mailbox passes that ended with an error",
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render(&self) -> String {
        mailvault_runtime::metrics::encode(&self.samples())
    }

    /// Every counter with its value: what `/metrics` renders and OTLP pushes.
    pub fn samples(&self) -> Vec<mailvault_runtime::metrics::Sample> {
        use mailvault_runtime::metrics::{Sample, Value};
        self.snapshot()
            .into_iter()
            .map(|(name, help, v)| Sample::new(name, help, Value::Int(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_types_every_counter() {
        let m = Metrics::default();
        Metrics::add(&m.items_published, 4);
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE mailvault_collector_items_published_total counter\n\
                 mailvault_collector_items_published_total 4\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), m.snapshot().len());
    }
}
