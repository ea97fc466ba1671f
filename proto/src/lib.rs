//! Protobuf contracts of mailvault, generated at build time from `proto/mailvault/**.proto`.
//!
//! Packages are versioned (`.v1`); changes within a version are additive only, so every stored
//! record and every message on the wire stays readable by newer code.

#![allow(missing_debug_implementations, clippy::all)]

/// Records stored (encrypted) in the repository: pack headers, index files, item manifests,
/// repository config, key objects.
pub mod storage {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.storage.v1.rs"));
    }
}

/// Messages the collector publishes to JetStream.
pub mod ingest {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.ingest.v1.rs"));
    }
}

/// Subjects of the ingest stream that the collector and the aggregator must agree on, kept
/// here so that neither depends on the other's crate (docs/wire.md, "Ingest").
pub mod ingest_wire {
    /// JetStream stream the collectors publish to.
    pub const STREAM: &str = "MAILVAULT_INGEST";
    /// Subjects of [`STREAM`]: `mailvault.ingest.<kind>.<mailbox key>`.
    pub const SUBJECTS: &str = "mailvault.ingest.>";
    /// Object Store bucket for item bodies over the inline limit.
    pub const BODY_BUCKET: &str = "mailvault-ingest-bodies";
    /// Key-value bucket of the collectors' sync checkpoints.
    pub const CHECKPOINT_BUCKET: &str = "mailvault-checkpoints";
    /// Header naming the message kind (`item`, `change`, `items`, `reconcile`, ...).
    pub const KIND_HEADER: &str = "Mailvault-Kind";
    /// Durable pull consumer shared by every aggregator replica.
    pub const AGGREGATOR_CONSUMER: &str = "mailvault-aggregator";
    /// Kind of an `ItemBatch` message: its subject is `mailvault.ingest.items.<mailbox key>`.
    pub const KIND_BATCH: &str = "items";
    /// Subjects of item batches.
    pub const FILTER_BATCH: &str = "mailvault.ingest.items.>";
    /// What the aggregators' consumer takes: single items, single changes, item batches.
    /// (Quarantine and reconciliation records are for other consumers.)
    pub const AGGREGATOR_FILTERS: [&str; 3] = [
        "mailvault.ingest.item.>",
        "mailvault.ingest.change.>",
        FILTER_BATCH,
    ];
}

/// Events the aggregator publishes after an item is durable.
pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.events.v1.rs"));
    }
}

/// Names and limits of the events stream, shared by the aggregator that publishes and the
/// indexer that consumes, so neither side depends on the other's crate (docs/wire.md, "Events").
pub mod events_wire {
    /// JetStream stream of the events.
    pub const STREAM: &str = "MAILVAULT_EVENTS";
    /// Subjects of [`STREAM`].
    pub const STREAM_SUBJECTS: &str = "mailvault.events.>";
    /// What one aggregator commit made durable, as `EventBatch` messages.
    pub const SUBJECT_BATCH: &str = "mailvault.events.batch";
    /// One `ItemStored` / `ItemChangeRecorded` per message, as aggregators published before
    /// batches; indexers still apply them.
    pub const SUBJECT_STORED: &str = "mailvault.events.stored";
    pub const SUBJECT_CHANGED: &str = "mailvault.events.changed";
    /// Quarantine records of poison deliveries.
    pub const SUBJECT_QUARANTINED: &str = "mailvault.events.quarantined";
    /// Entries of one `EventBatch` message, at most (a larger commit is split); the indexer
    /// sizes its fetches by it.
    pub const MAX_BATCH_ENTRIES: usize = 512;
    /// Durable pull consumer of the indexer.
    pub const INDEXER_CONSUMER: &str = "mailvault-indexer";
}

/// Restore jobs: items to write back into Exchange, and their results (docs/wire.md).
pub mod restore {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.restore.v1.rs"));
    }
}

/// Names shared by the sender of restore jobs (indexer / CLI) and the collector that applies
/// them, so neither side depends on the other's crate. See docs/wire.md, "Restore jobs".
pub mod restore_wire {
    /// JetStream stream holding jobs and results.
    pub const STREAM: &str = "MAILVAULT_RESTORE";
    /// Subjects of [`STREAM`].
    pub const STREAM_SUBJECTS: &str = "mailvault.restore.>";
    /// Object Store bucket for bodies over the inline limit.
    pub const BODY_BUCKET: &str = "mailvault-restore-bodies";
    /// Bodies up to this size travel inline in the job message (below the NATS 1 MiB payload).
    pub const DEFAULT_INLINE_LIMIT: usize = 512 * 1024;
    /// Header with the job's message id (`Nats-Msg-Id`), see [`job_msg_id`].
    pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

    /// Subject a collector with source name `source` consumes jobs from.
    pub fn jobs_subject(source: &str) -> String {
        format!("mailvault.restore.jobs.{source}")
    }

    /// Durable pull consumer name of the collector serving `source`.
    pub fn consumer_name(source: &str) -> String {
        format!("mailvault-restore-{source}")
    }

    /// Default subject results of `job_id` are published to.
    pub fn results_subject(job_id: &str) -> String {
        format!("mailvault.restore.results.{job_id}")
    }

    /// Where the result of `item` goes: its `reply_subject`, else [`results_subject`].
    pub fn reply_subject(item: &super::restore::v1::RestoreItem) -> String {
        if item.reply_subject.is_empty() {
            results_subject(&item.job_id)
        } else {
            item.reply_subject.clone()
        }
    }

    /// `Nats-Msg-Id` of a job item: `restore-<job_id>-<seq>` (a re-sent item is de-duplicated).
    pub fn job_msg_id(job_id: &str, seq: u64) -> String {
        format!("restore-{job_id}-{seq}")
    }

    /// `Nats-Msg-Id` of a result: `restore-result-<job_id>-<seq>`, so a result re-published
    /// after a redelivered job is de-duplicated within the window.
    pub fn result_msg_id(job_id: &str, seq: u64) -> String {
        format!("restore-result-{job_id}-{seq}")
    }

    /// Object name of a large body in [`BODY_BUCKET`].
    pub fn body_object_name(job_id: &str, seq: u64) -> String {
        format!("{job_id}/{seq}")
    }
}

/// The gRPC API served by the indexer (feature `api`).
#[cfg(feature = "api")]
pub mod api {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.api.v1.rs"));

        /// Encoded file descriptor set of the API, for gRPC reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/mailvault.api.v1.bin"));
    }
}

#[cfg(test)]
mod tests {
    use super::restore::v1::RestoreItem;
    use super::restore_wire::*;

    #[test]
    fn restore_names() {
        assert_eq!(jobs_subject("exch01"), "mailvault.restore.jobs.exch01");
        assert_eq!(consumer_name("exch01"), "mailvault-restore-exch01");
        let mut item = RestoreItem {
            job_id: "j1".into(),
            ..RestoreItem::default()
        };
        assert_eq!(reply_subject(&item), "mailvault.restore.results.j1");
        item.reply_subject = "_INBOX.x".into();
        assert_eq!(reply_subject(&item), "_INBOX.x");
        assert_ne!(job_msg_id("j1", 1), result_msg_id("j1", 1));
        assert!(jobs_subject("x").starts_with(STREAM_SUBJECTS.trim_end_matches('>')));
    }
}
