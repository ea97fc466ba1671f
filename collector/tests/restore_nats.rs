//! Restore jobs end to end: jobs published to JetStream (inline and Object Store bodies) →
//! RestoreService (real nats-server) → Restorer → EWS simulator → results on JetStream; job
//! messages acked only after their result is stored, body objects removed afterwards.

mod restore_support;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_collector::restore::Restorer;
use mailvault_collector::restore_nats::{
    RestoreEdgeConfig, RestoreService, ensure_restore_stream, restore_body_store,
};
use mailvault_proto::ingest::v1::ObjectRef;
use mailvault_proto::restore::v1::{
    Collision, FolderTarget, Outcome, RestoreItem, RestoreResult, restore_item,
};
use mailvault_proto::restore_wire;
use mailvault_proto::storage::v1::ContentFormat;
use prost::Message as _;
use restore_support::*;

#[tokio::test]
async fn jobs_over_jetstream_are_applied_and_answered() {
    let env = Env::start().await;
    let nats = mailvault_harness::NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let carol = env.addr("carol");
    let bob = env.addr("bob");

    // The collector side.
    let service = RestoreService::new(
        client.clone(),
        RestoreEdgeConfig::new("exch01"),
        Arc::new(Restorer::new(env.ews())),
    )
    .await
    .expect("restore service");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { service.run(rx).await });

    // The sending side, with nothing but mailvault-proto's names.
    ensure_restore_stream(&js, Duration::from_secs(120), 1)
        .await
        .expect("stream");
    let bodies = restore_body_store(&js, 1).await.expect("bucket");
    let small = message("nats-small", 0);
    let big = message("nats-big", 2 * 1024 * 1024);
    let job = "j42";
    let mk = |seq: u64, mailbox: &str, root: &str, mime: &[u8]| RestoreItem {
        job_id: job.into(),
        seq,
        target_mailbox: mailbox.into(),
        folder: Some(FolderTarget {
            distinguished_root: root.into(),
            path: vec!["Wiederhergestellt".into()],
        }),
        item_class: "IPM.Note".into(),
        format: ContentFormat::Mime as i32,
        body: Some(restore_item::Body::Inline(Bytes::copy_from_slice(mime))),
        size: mime.len() as u64,
        is_read: true,
        collision: Collision::Skip as i32,
        internet_message_id: message_id_of(mime),
        source_item_id: format!("src-{seq}"),
        ..RestoreItem::default()
    };
    let mut items = vec![
        mk(0, &carol, "inbox", &small),
        mk(1, &bob, "inbox", &big),
        mk(2, &carol, "nosuchfolder", &small),
        // The same item again: the copy from seq 0 is found, skipped.
        mk(3, &carol, "inbox", &small),
    ];
    let name = restore_wire::body_object_name(job, 1);
    let mut reader: &[u8] = &big;
    bodies
        .put(name.as_str(), &mut reader)
        .await
        .expect("put body");
    items[1].body = Some(restore_item::Body::Object(ObjectRef {
        bucket: restore_wire::BODY_BUCKET.into(),
        name: name.clone(),
        size: big.len() as u64,
    }));
    // Results: an ephemeral consumer on the job's result subject.
    let stream = js.get_stream(restore_wire::STREAM).await.expect("stream");
    let results = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: restore_wire::results_subject(job),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("results consumer");
    for it in &items {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            restore_wire::MSG_ID_HEADER,
            restore_wire::job_msg_id(job, it.seq).as_str(),
        );
        js.publish_with_headers(
            restore_wire::jobs_subject("exch01"),
            h,
            Bytes::from(it.encode_to_vec()),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
        // seq 3 must see seq 0's copy: wait for seq 0's result before sending it.
        if it.seq == 2 {
            break;
        }
    }

    let mut got: Vec<RestoreResult> = Vec::new();
    let mut msgs = results.messages().await.expect("results");
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
            .await
            .expect("a result within 60 s")
            .expect("stream open")
            .expect("message");
        m.ack().await.expect("ack result");
        got.push(RestoreResult::decode(m.payload.clone()).expect("decode result"));
    }
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        restore_wire::MSG_ID_HEADER,
        restore_wire::job_msg_id(job, 3).as_str(),
    );
    js.publish_with_headers(
        restore_wire::jobs_subject("exch01"),
        h,
        Bytes::from(items[3].encode_to_vec()),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
        .await
        .expect("result 3")
        .expect("open")
        .expect("message");
    got.push(RestoreResult::decode(m.payload.clone()).expect("decode"));
    got.sort_by_key(|r| r.seq);

    assert_eq!(got[0].outcome(), Outcome::Created, "{:?}", got[0]);
    assert_eq!(got[1].outcome(), Outcome::Created, "{:?}", got[1]);
    assert_eq!(got[2].outcome(), Outcome::Failed, "{:?}", got[2]);
    assert!(got[2].error.contains("nosuchfolder") && got[2].error.contains("src-2"));
    assert_eq!(got[3].outcome(), Outcome::Skipped, "{:?}", got[3]);
    assert_eq!(got[3].new_item_id, got[0].new_item_id);
    assert_eq!(
        &*env.sim.item(&got[0].new_item_id).expect("small").mime,
        &small[..]
    );
    assert_eq!(
        &*env.sim.item(&got[1].new_item_id).expect("big").mime,
        &big[..],
        "Object Store body restored byte-identical"
    );
    // Bob is German: his Posteingang, with the new subfolder.
    let path: Vec<String> = env
        .sim
        .folders(&bob)
        .into_iter()
        .find(|f| f.id == got[1].folder_id)
        .expect("folder")
        .path;
    assert_eq!(path, vec!["Posteingang", "Wiederhergestellt"]);

    // Every job message acked (before run() returned: it finishes the item in progress);
    // the body object removed once its job was acked.
    stop.send(true).expect("stop");
    let stats = running.await.expect("join").expect("run");
    let mut jobs = stream
        .get_consumer::<consumer::pull::Config>(&restore_wire::consumer_name("exch01"))
        .await
        .expect("durable consumer");
    let info = jobs.info().await.expect("info");
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert!(
        bodies.info(&name).await.map_or(true, |i| i.deleted),
        "body object deleted"
    );
    assert_eq!(stats.count(Outcome::Created), 2);
    assert_eq!(stats.count(Outcome::Failed), 1);
    assert_eq!(stats.count(Outcome::Skipped), 1);
    assert_eq!(stats.poison, 0);
}

#[tokio::test]
async fn undecodable_job_is_terminated_and_the_next_one_served() {
    let env = Env::start().await;
    let nats = mailvault_harness::NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let service = RestoreService::new(
        client.clone(),
        RestoreEdgeConfig::new("exch02"),
        Arc::new(Restorer::new(env.ews())),
    )
    .await
    .expect("restore service");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { service.run(rx).await });
    let carol = env.addr("carol");
    let mime = message("poison-next", 0);
    let stream = js.get_stream(restore_wire::STREAM).await.expect("stream");
    let results = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: restore_wire::results_subject("j7"),
            ..Default::default()
        })
        .await
        .expect("results consumer");
    js.publish(
        restore_wire::jobs_subject("exch02"),
        Bytes::from_static(b"\xff\xff\xff"),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let item = RestoreItem {
        job_id: "j7".into(),
        seq: 1,
        target_mailbox: carol.clone(),
        format: ContentFormat::Mime as i32,
        size: mime.len() as u64,
        body: Some(restore_item::Body::Inline(Bytes::from(mime.clone()))),
        is_read: true,
        ..RestoreItem::default()
    };
    js.publish(
        restore_wire::jobs_subject("exch02"),
        Bytes::from(item.encode_to_vec()),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let mut msgs = results.messages().await.expect("results");
    let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
        .await
        .expect("result")
        .expect("open")
        .expect("message");
    let r = RestoreResult::decode(m.payload.clone()).expect("decode");
    assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
    // No folder given: below the top of the information store.
    let top = env
        .sim
        .distinguished_folder_id(&carol, "msgfolderroot")
        .expect("top");
    assert_eq!(r.folder_id, top);
    stop.send(true).expect("stop");
    let stats = running.await.expect("join").expect("run");
    assert_eq!(stats.poison, 1);
    assert_eq!(stats.count(Outcome::Created), 1);
}

#[path = "common/mod.rs"]
mod common;

/// The daemon (`run` with `RunMode::Daemon`) serves restore jobs between its passes.
#[tokio::test]
async fn daemon_serves_restore_jobs() {
    let env = Env::start().await;
    let nats = mailvault_harness::NatsServer::start().expect("nats-server");
    let carol = env.addr("carol");
    let config = common::config(
        env.dir.path(),
        &env.sim.url(),
        &nats.url(),
        std::slice::from_ref(&carol),
    );
    assert!(config.restore.enabled);
    let source = config.source.clone();
    let (stop, rx) = tokio::sync::watch::channel(false);
    // `run` is not `Send` (it is the binary's main future): drive it beside the test.
    let daemon = mailvault_collector::run(
        config,
        mailvault_collector::RunMode::Daemon {
            interval: Duration::from_secs(3600),
        },
        rx,
    );
    let sender = async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        // The stream may not exist yet: the sender creates it idempotently, too.
        let stream = ensure_restore_stream(&js, Duration::from_secs(120), 1)
            .await
            .expect("stream");
        let results = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: restore_wire::results_subject("jd"),
                ..Default::default()
            })
            .await
            .expect("results consumer");
        let mime = message("daemon-1", 0);
        let item = RestoreItem {
            job_id: "jd".into(),
            seq: 9,
            target_mailbox: carol.clone(),
            folder: Some(FolderTarget {
                distinguished_root: "inbox".into(),
                path: vec![],
            }),
            format: ContentFormat::Mime as i32,
            size: mime.len() as u64,
            body: Some(restore_item::Body::Inline(Bytes::from(mime.clone()))),
            is_read: true,
            internet_message_id: message_id_of(&mime),
            ..RestoreItem::default()
        };
        js.publish(
            restore_wire::jobs_subject(&source),
            Bytes::from(item.encode_to_vec()),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
        let mut msgs = results.messages().await.expect("results");
        let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
            .await
            .expect("result within 60 s")
            .expect("open")
            .expect("message");
        let r = RestoreResult::decode(m.payload.clone()).expect("decode");
        assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
        assert_eq!(r.seq, 9);
        assert_eq!(
            &*env.sim.item(&r.new_item_id).expect("item").mime,
            &mime[..]
        );
        stop.send(true).expect("stop");
    };
    let (summary, ()) = tokio::join!(daemon, sender);
    summary.expect("daemon run");
}

/// A body object that is not there: retried up to `max_body_attempts`, then `FAILED` naming the
/// object; a body in a foreign bucket fails at once.
#[tokio::test]
async fn unreadable_body_is_retried_then_failed() {
    let env = Env::start().await;
    let nats = mailvault_harness::NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let mut cfg = RestoreEdgeConfig::new("exch03");
    cfg.max_body_attempts = 2;
    cfg.retry_delay = Duration::from_millis(50);
    let service = RestoreService::new(client.clone(), cfg, Arc::new(Restorer::new(env.ews())))
        .await
        .expect("restore service");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { service.run(rx).await });
    let stream = js.get_stream(restore_wire::STREAM).await.expect("stream");
    let results = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: restore_wire::results_subject("jb"),
            ..Default::default()
        })
        .await
        .expect("results consumer");
    for (seq, bucket) in [(1u64, restore_wire::BODY_BUCKET), (2, "elsewhere")] {
        let item = RestoreItem {
            job_id: "jb".into(),
            seq,
            target_mailbox: env.addr("carol"),
            format: ContentFormat::Mime as i32,
            size: 10,
            body: Some(restore_item::Body::Object(ObjectRef {
                bucket: bucket.into(),
                name: format!("jb/{seq}"),
                size: 10,
            })),
            ..RestoreItem::default()
        };
        js.publish(
            restore_wire::jobs_subject("exch03"),
            Bytes::from(item.encode_to_vec()),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    let mut msgs = results.messages().await.expect("results");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
            .await
            .expect("result")
            .expect("open")
            .expect("message");
        got.push(RestoreResult::decode(m.payload.clone()).expect("decode"));
    }
    got.sort_by_key(|r| r.seq);
    for r in &got {
        assert_eq!(r.outcome(), Outcome::Failed, "{r:?}");
        assert!(r.error.contains("reading the body failed"), "{}", r.error);
    }
    assert!(got[0].error.contains("jb/1"), "{}", got[0].error);
    assert!(got[1].error.contains("elsewhere"), "{}", got[1].error);
    stop.send(true).expect("stop");
    let stats = running.await.expect("join").expect("run");
    assert_eq!(stats.retried, 1, "one retry for the missing object");
    assert_eq!(stats.count(Outcome::Failed), 2);
    assert_eq!(env.sim.stats().count("CreateItem"), 0);
}
