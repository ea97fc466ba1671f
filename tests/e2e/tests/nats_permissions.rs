//! Each component's NATS user (as `mailvault nats users` makes them) is refused what belongs to
//! another, by a real nats-server: a collector cannot send restore jobs or take another
//! source's, an indexer or aggregator cannot inject items, and nobody but the aggregator's
//! consumer reads mail off the ingest subjects. Each refusal is checked twice: the server says
//! so, and the stream it would have reached is unchanged. The allowed path runs beside it, so a
//! refusal is not a broken connection (tests/pipeline.rs runs the whole pipeline as these users).

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use mailvault_proto::{ingest_wire, restore_wire};
use mailvault_runtime::nats::Component;
use tokio::sync::mpsc;

/// A client of `user` whose server errors (permission violations) arrive on the receiver.
async fn connect_as(
    nats: &common::SecuredNats,
    user: &str,
    component: Component,
) -> (async_nats::Client, mpsc::Receiver<String>) {
    let seed = std::fs::read_to_string(nats.seed(user)).expect("seed");
    // Bounded; errors beyond it are dropped (the test provokes a handful).
    let (tx, rx) = mpsc::channel(256);
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .custom_inbox_prefix(component.inbox_prefix())
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    let _ = tx.try_send(e.to_string());
                }
            }
        })
        .connect(nats.server.url())
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    (client, rx)
}

/// The next server error naming `subject`, within a deadline (the server answers at once; the
/// deadline only bounds a broken test).
async fn refused(errors: &mut mpsc::Receiver<String>, subject: &str) -> String {
    let wait = async {
        while let Some(e) = errors.recv().await {
            if e.contains(subject) {
                return e;
            }
        }
        panic!("connection closed before the server refused {subject}");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("the server did not refuse {subject}"))
}

async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_user_is_refused_what_belongs_to_another() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let nats = common::SecuredNats::start(tmp.path(), &["exch01", "exch02"]);
    let admin = jetstream::new(nats.admin_client().await);
    for (name, subjects) in [
        (ingest_wire::STREAM, ingest_wire::SUBJECTS),
        (restore_wire::STREAM, restore_wire::STREAM_SUBJECTS),
    ] {
        admin
            .get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                ..Default::default()
            })
            .await
            .expect("stream");
    }
    let restore_jobs = restore_wire::jobs_subject("exch01");
    let ingest_item = "mailvault.ingest.items.m-0123";

    // The collector publishes items: allowed, stored.
    let (collector, mut collector_errors) =
        connect_as(&nats, "collector-exch01", Component::Collector).await;
    let cjs = jetstream::new(collector.clone());
    cjs.publish(ingest_item, "item".into())
        .await
        .expect("collector publishes an item")
        .await
        .expect("stored");
    assert_eq!(messages(&admin, ingest_wire::STREAM).await, 1);

    // ... but cannot send a restore job (which writes, and may hard-delete, in a mailbox).
    collector
        .publish(restore_jobs.clone(), "job".into())
        .await
        .expect("sent");
    collector.flush().await.expect("flush");
    let e = refused(&mut collector_errors, &restore_jobs).await;
    assert!(e.contains("Permissions Violation"), "{e}");

    // ... nor take another source's restore jobs.
    let short = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(collector.clone());
    let other = restore_wire::consumer_name("exch02");
    let taken = short
        .get_stream(restore_wire::STREAM)
        .await
        .expect("collector reads the restore stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some(other.clone()),
            filter_subject: restore_wire::jobs_subject("exch02"),
            ..Default::default()
        })
        .await;
    assert!(taken.is_err(), "collector-exch01 created {other}");
    refused(&mut collector_errors, &other).await;
    // Its own are fine.
    let own = restore_wire::consumer_name("exch01");
    short
        .get_stream(restore_wire::STREAM)
        .await
        .expect("restore stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some(own),
            filter_subject: restore_wire::jobs_subject("exch01"),
            ..Default::default()
        })
        .await
        .expect("collector-exch01 opens its own restore consumer");

    // ... nor read another component's replies.
    let indexer_replies = format!("{}.>", Component::Indexer.inbox_prefix());
    let _sub = collector
        .subscribe(indexer_replies.clone())
        .await
        .expect("sent");
    collector.flush().await.expect("flush");
    refused(&mut collector_errors, &indexer_replies).await;

    // The indexer sends restore jobs, but cannot inject items or read them off the wire.
    let (indexer, mut indexer_errors) = connect_as(&nats, "indexer", Component::Indexer).await;
    jetstream::new(indexer.clone())
        .publish(restore_jobs.clone(), "job".into())
        .await
        .expect("indexer sends a job")
        .await
        .expect("stored");
    assert_eq!(
        messages(&admin, restore_wire::STREAM).await,
        1,
        "only the indexer's job is in the restore stream"
    );
    indexer
        .publish(ingest_item, "forged".into())
        .await
        .expect("sent");
    indexer.flush().await.expect("flush");
    refused(&mut indexer_errors, ingest_item).await;
    let _sub = indexer.subscribe("mailvault.ingest.>").await.expect("sent");
    indexer.flush().await.expect("flush");
    refused(&mut indexer_errors, "mailvault.ingest.>").await;

    // The aggregator cannot inject items or send restore jobs either.
    let (aggregator, mut aggregator_errors) =
        connect_as(&nats, "aggregator", Component::Aggregator).await;
    for subject in [ingest_item.to_owned(), restore_jobs.clone()] {
        aggregator
            .publish(subject.clone(), "forged".into())
            .await
            .expect("sent");
        aggregator.flush().await.expect("flush");
        refused(&mut aggregator_errors, &subject).await;
    }

    // Nothing refused reached a stream.
    assert_eq!(messages(&admin, ingest_wire::STREAM).await, 1);
    assert_eq!(messages(&admin, restore_wire::STREAM).await, 1);
}
