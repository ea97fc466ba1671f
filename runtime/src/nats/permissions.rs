//! Who may publish and subscribe to what on NATS: one allow-list per component, so that a
//! collector's credentials cannot send restore jobs (which write, and may hard-delete, in any
//! mailbox) and an indexer's cannot inject items into the archive.
//!
//! The lists name exactly the subjects each component uses, JetStream's API included: the
//! streams, consumers and buckets it opens (and creates when missing, so that the components
//! may start in any order), its acks, and its own reply inbox (see [`Component::inbox_prefix`]),
//! so no component can read another's replies. `mailvault nats users` turns them into a
//! nats-server `authorization` block with one NKey user per component; the chart renders the
//! same lists (docs/operations.md, "NATS users and permissions").

use mailvault_proto::{events_wire, ingest_wire, restore_wire};
use serde::Serialize;

/// A service that connects to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Collector,
    Aggregator,
    Indexer,
}

impl Component {
    pub const ALL: [Component; 3] = [
        Component::Collector,
        Component::Aggregator,
        Component::Indexer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Collector => "collector",
            Component::Aggregator => "aggregator",
            Component::Indexer => "indexer",
        }
    }

    /// The reply subjects of this component's requests (and its ordered consumers' deliveries)
    /// start with this; its users may subscribe there and nowhere else for replies.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX.mailvault-{}", self.name())
    }
}

/// Stream, bucket and consumer names, as the services' `[nats]` sections set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub ingest_stream: String,
    pub ingest_bodies: String,
    pub checkpoints: String,
    pub aggregator_consumer: String,
    pub events_stream: String,
    pub indexer_consumer: String,
    pub restore_stream: String,
    pub restore_bodies: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            ingest_stream: ingest_wire::STREAM.into(),
            ingest_bodies: ingest_wire::BODY_BUCKET.into(),
            checkpoints: ingest_wire::CHECKPOINT_BUCKET.into(),
            aggregator_consumer: ingest_wire::AGGREGATOR_CONSUMER.into(),
            events_stream: events_wire::STREAM.into(),
            indexer_consumer: events_wire::INDEXER_CONSUMER.into(),
            restore_stream: restore_wire::STREAM.into(),
            restore_bodies: restore_wire::BODY_BUCKET.into(),
        }
    }
}

/// Subjects a user may publish and subscribe to (nats-server `permissions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub publish: Allow,
    pub subscribe: Allow,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Allow {
    pub allow: Vec<String>,
}

/// Builds one allow-list, in a stable order without repeats.
#[derive(Default)]
struct List(Vec<String>);

impl List {
    fn add(&mut self, s: impl Into<String>) -> &mut Self {
        let s = s.into();
        if !self.0.contains(&s) {
            self.0.push(s);
        }
        self
    }

    /// Opening a stream, and creating it when missing.
    fn stream(&mut self, name: &str) -> &mut Self {
        self.add(format!("$JS.API.STREAM.INFO.{name}"))
            .add(format!("$JS.API.STREAM.CREATE.{name}"))
    }

    /// A durable pull consumer: created or looked up, pulled from, acked.
    fn consume(&mut self, stream: &str, consumer: &str) -> &mut Self {
        self.add(format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"))
            .add(format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"))
            .add(format!(
                "$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"
            ))
            .add(format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"))
            .add(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"))
            .add(format!("$JS.ACK.{stream}.{consumer}.>"))
    }

    /// Reading objects of an Object Store bucket: their metadata, and their chunks through an
    /// ordered (ephemeral) consumer with flow control.
    fn read_objects(&mut self, bucket: &str) -> &mut Self {
        let s = format!("OBJ_{bucket}");
        self.stream(&s)
            .add(format!("$JS.API.DIRECT.GET.{s}.>"))
            .add(format!("$JS.API.STREAM.MSG.GET.{s}"))
            .add(format!("$JS.API.CONSUMER.CREATE.{s}"))
            .add(format!("$JS.API.CONSUMER.CREATE.{s}.>"))
            .add(format!("$JS.API.CONSUMER.DELETE.{s}.>"))
            .add(format!("$JS.FC.{s}.>"))
    }

    /// Writing and deleting objects: chunks and metadata, and purging a replaced or deleted
    /// object's chunks.
    fn write_objects(&mut self, bucket: &str) -> &mut Self {
        self.read_objects(bucket)
            .add(format!("$O.{bucket}.>"))
            .add(format!("$JS.API.STREAM.PURGE.OBJ_{bucket}"))
    }
}

/// What `component` may publish and subscribe to. `collector_source` narrows a collector's
/// user to the restore jobs of one source (its `source` setting); `None` allows any source.
pub fn permissions(
    component: Component,
    names: &Names,
    collector_source: Option<&str>,
) -> Permissions {
    let mut publish = List::default();
    let mut subscribe = List::default();
    subscribe.add(format!("{}.>", component.inbox_prefix()));
    // Account limits, read before a bucket is created.
    publish.add("$JS.API.INFO");
    match component {
        Component::Collector => {
            // A wildcard is a whole token: without a source, any restore consumer.
            let restore_consumer =
                collector_source.map_or_else(|| "*".to_owned(), restore_wire::consumer_name);
            let kv = &names.checkpoints;
            publish
                .add(ingest_wire::SUBJECTS)
                .stream(&names.ingest_stream)
                .write_objects(&names.ingest_bodies)
                .stream(&format!("KV_{kv}"))
                .add(format!("$KV.{kv}.>"))
                .add(format!("$JS.API.DIRECT.GET.KV_{kv}.>"))
                .add(format!("$JS.API.STREAM.MSG.GET.KV_{kv}"))
                // Restore jobs come in; results go out, to the subject the sender waits on.
                .stream(&names.restore_stream)
                .consume(&names.restore_stream, &restore_consumer)
                .add(format!(
                    "{}.>",
                    restore_wire::results_subject("").trim_end_matches('.')
                ))
                .write_objects(&names.restore_bodies);
        }
        Component::Aggregator => {
            publish
                .stream(&names.ingest_stream)
                .consume(&names.ingest_stream, &names.aggregator_consumer)
                .write_objects(&names.ingest_bodies)
                .stream(&names.events_stream)
                .add(events_wire::STREAM_SUBJECTS);
        }
        Component::Indexer => {
            publish
                .stream(&names.events_stream)
                .consume(&names.events_stream, &names.indexer_consumer)
                .stream(&names.restore_stream)
                .add(format!(
                    "{}.>",
                    restore_wire::jobs_subject("").trim_end_matches('.')
                ))
                .write_objects(&names.restore_bodies);
            subscribe.add(format!(
                "{}.>",
                restore_wire::results_subject("").trim_end_matches('.')
            ));
        }
    }
    Permissions {
        publish: Allow { allow: publish.0 },
        subscribe: Allow { allow: subscribe.0 },
    }
}

/// One NKey user of the `authorization` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// The user's public NKey (`U...`).
    pub nkey: String,
    pub permissions: Permissions,
}

/// A nats-server configuration fragment, `authorization: {users: [...]}` in the server's JSON
/// syntax, for an `include` in nats-server.conf.
pub fn authorization_block(users: &[User]) -> String {
    #[derive(Serialize)]
    struct Block<'a> {
        users: &'a [User],
    }
    let json = serde_json::to_string_pretty(&Block { users }).unwrap_or_default();
    format!("authorization: {json}\n")
}

/// One generated NKey user: who it is for, its seed (the secret the component reads from its
/// `nkey_file`) and its entry in the server's `authorization` block.
#[derive(Debug, Clone)]
pub struct GeneratedUser {
    /// `collector`, `collector-<source>`, `aggregator`, `indexer`.
    pub name: String,
    pub component: Component,
    pub seed: String,
    pub user: User,
}

/// Fresh NKey users, one per component, and one per collector source when `collector_sources`
/// names any (each then consumes only its own restore jobs); else one collector user for all.
pub fn generate_users(
    collector_sources: &[String],
    names: &Names,
) -> Result<Vec<GeneratedUser>, nkeys::error::Error> {
    let mut wanted: Vec<(String, Component, Option<&str>)> = Vec::new();
    if collector_sources.is_empty() {
        wanted.push(("collector".into(), Component::Collector, None));
    }
    for s in collector_sources {
        wanted.push((
            format!("collector-{s}"),
            Component::Collector,
            Some(s.as_str()),
        ));
    }
    wanted.push(("aggregator".into(), Component::Aggregator, None));
    wanted.push(("indexer".into(), Component::Indexer, None));
    wanted
        .into_iter()
        .map(|(name, component, source)| {
            let pair = nkeys::KeyPair::new_user();
            Ok(GeneratedUser {
                name,
                component,
                seed: pair.seed()?,
                user: User {
                    nkey: pair.public_key(),
                    permissions: permissions(component, names, source),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &[String], subject: &str) -> bool {
        let s: Vec<&str> = subject.split('.').collect();
        list.iter().any(|p| {
            let p: Vec<&str> = p.split('.').collect();
            for (i, t) in p.iter().enumerate() {
                if *t == ">" {
                    return s.len() > i;
                }
                match s.get(i) {
                    Some(x) if *t == "*" || t == x => {}
                    _ => return false,
                }
            }
            p.len() == s.len()
        })
    }

    #[test]
    fn each_component_publishes_only_its_own_traffic() {
        let n = Names::default();
        let c = permissions(Component::Collector, &n, Some("exch01"))
            .publish
            .allow;
        let a = permissions(Component::Aggregator, &n, None).publish.allow;
        let i = permissions(Component::Indexer, &n, None).publish.allow;
        assert!(allows(&c, "mailvault.ingest.items.abc"));
        assert!(!allows(&c, "mailvault.restore.jobs.exch01"));
        assert!(!allows(&c, "mailvault.events.batch"));
        assert!(allows(
            &c,
            "$JS.API.CONSUMER.MSG.NEXT.MAILVAULT_RESTORE.mailvault-restore-exch01"
        ));
        assert!(!allows(
            &c,
            "$JS.API.CONSUMER.MSG.NEXT.MAILVAULT_RESTORE.mailvault-restore-exch02"
        ));
        assert!(!allows(&i, "mailvault.ingest.items.abc"));
        assert!(allows(&i, "mailvault.restore.jobs.exch01"));
        assert!(!allows(&a, "mailvault.ingest.items.abc"));
        assert!(!allows(&a, "mailvault.restore.jobs.exch01"));
        assert!(allows(&a, "mailvault.events.batch"));
        for list in [&c, &a, &i] {
            assert!(!allows(list, "$JS.API.STREAM.DELETE.MAILVAULT_INGEST"));
            assert!(!allows(list, "$JS.API.STREAM.UPDATE.MAILVAULT_EVENTS"));
        }
    }

    #[test]
    fn replies_are_private_to_a_component() {
        let n = Names::default();
        for c in Component::ALL {
            let sub = permissions(c, &n, None).subscribe.allow;
            for other in Component::ALL {
                let reply = format!("{}.abc.1", other.inbox_prefix());
                assert_eq!(
                    allows(&sub, &reply),
                    c == other,
                    "{c:?} reading {other:?}'s replies"
                );
            }
            assert!(!allows(&sub, "mailvault.ingest.items.x"), "{c:?}");
        }
    }

    #[test]
    fn the_block_is_json_after_its_key() {
        let u = User {
            nkey: "UABC".into(),
            permissions: permissions(Component::Indexer, &Names::default(), None),
        };
        let text = authorization_block(&[u]);
        let json = text.strip_prefix("authorization: ").expect("key");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["users"][0]["nkey"], "UABC");
        assert!(
            v["users"][0]["permissions"]["subscribe"]["allow"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s == "mailvault.restore.results.>"))
        );
    }
}
