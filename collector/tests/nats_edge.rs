//! JetStreamPublisher and KvCheckpointStore against a real nats-server.

use std::sync::Arc;

use async_nats::jetstream;
use mailvault_collector::ews::ItemId;
use mailvault_collector::metrics::Metrics;
use mailvault_collector::nats::{JetStreamPublisher, KvCheckpointStore, PublisherConfig, STREAM};
use mailvault_collector::sync::{
    CheckpointStore, MailboxCheckpoint, OutMessage, Publisher, item_msg_id, subject,
};
use mailvault_proto::ingest::v1 as pb;
use prost::Message as _;
use tokio::io::AsyncReadExt as _;

fn envelope(mailbox: &str, id: &str, body: Vec<u8>) -> OutMessage {
    let iid = ItemId {
        id: id.into(),
        change_key: "ck".into(),
    };
    OutMessage {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        subject: subject("item", mailbox),
        msg_id: item_msg_id(mailbox, &iid),
        message: pb::IngestMessage {
            message: Some(pb::ingest_message::Message::Item(pb::ItemEnvelope {
                mailbox: mailbox.into(),
                item_id: id.into(),
                change_key: "ck".into(),
                size: body.len() as u64,
                body: Some(pb::item_envelope::Body::Inline(body.into())),
                ..Default::default()
            })),
        },
    }
}

#[tokio::test]
async fn publisher_dedupes_and_offloads_large_bodies() {
    let server = mailvault_harness::NatsServer::start().expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let metrics = Arc::new(Metrics::default());
    let cfg = PublisherConfig {
        inline_limit: 64 * 1024,
        max_in_flight: 4,
        ..PublisherConfig::default()
    };
    let publisher = JetStreamPublisher::new(client.clone(), cfg.clone(), metrics.clone())
        .await
        .expect("publisher");
    // Creating it again is idempotent.
    JetStreamPublisher::new(client.clone(), cfg, metrics.clone())
        .await
        .expect("second create");

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut batch: Vec<OutMessage> = (0..10)
        .map(|i| {
            envelope(
                "alice@example.com",
                &format!("i{i}"),
                format!("Subject: {i}").into_bytes(),
            )
        })
        .collect();
    batch.push(envelope("alice@example.com", "big", big.clone()));
    publisher
        .publish_batch(batch.clone())
        .await
        .expect("publish");
    // The same batch again (a crash before the checkpoint): de-duplicated by Nats-Msg-Id.
    publisher.publish_batch(batch).await.expect("republish");

    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.state.messages, 2,
        "ten small items in one pack, the large one alone; duplicates dropped"
    );
    assert_eq!(
        Metrics::get(&metrics.object_store_uploads),
        1,
        "content-addressed, uploaded once"
    );

    let mut found_big = false;
    let mut items = Vec::new();
    for seq in 1..=2 {
        let raw = stream.get_raw_message(seq).await.expect("get");
        let id = raw
            .headers
            .get("Nats-Msg-Id")
            .expect("Nats-Msg-Id")
            .as_str()
            .to_owned();
        assert!(raw.headers.get("traceparent").is_some());
        let msg = pb::IngestMessage::decode(raw.payload).expect("decode");
        let envs = match msg.message {
            Some(pb::ingest_message::Message::Item(env)) => vec![env],
            Some(pb::ingest_message::Message::Batch(b)) => {
                assert!(id.starts_with("pack-"), "{id}");
                assert_eq!(raw.subject.as_str(), subject("items", "alice@example.com"));
                b.items
            }
            other => panic!("item or batch expected: {other:?}"),
        };
        for env in envs {
            items.push(env.item_id.clone());
            if env.item_id == "big" {
                let Some(pb::item_envelope::Body::Object(r)) = env.body else {
                    panic!("large body must be an object reference");
                };
                assert_eq!(r.size, big.len() as u64);
                let store = js.get_object_store(&r.bucket).await.expect("bucket");
                let mut obj = store.get(&r.name).await.expect("object");
                let mut got = Vec::new();
                obj.read_to_end(&mut got).await.expect("read object");
                assert_eq!(got, big);
                found_big = true;
            } else {
                assert!(matches!(env.body, Some(pb::item_envelope::Body::Inline(_))));
            }
        }
    }
    items.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    want.push("big".into());
    want.sort();
    assert_eq!(items, want, "every item once, in a pack or alone");
    assert!(found_big);
}

#[tokio::test]
async fn kv_checkpoints_round_trip() {
    let server = mailvault_harness::NatsServer::start().expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let store = KvCheckpointStore::new(client.clone(), "mailvault-checkpoints", 1)
        .await
        .expect("kv");
    let mb = "Bob.Smith+x@example.com";
    assert_eq!(store.get_mailbox(mb).await.expect("get"), None);
    let mut cp = MailboxCheckpoint {
        hierarchy_sync_state: "H4sI/+=".into(),
        ..Default::default()
    };
    cp.distinguished.insert("AAMk/=+".into(), "inbox".into());
    store.put_mailbox(mb, &cp).await.expect("put");
    let back = store.get_mailbox(mb).await.expect("get").expect("present");
    assert_eq!(back.hierarchy_sync_state, cp.hierarchy_sync_state);
    assert_eq!(back.version, 1);

    // Folder ids contain characters KV keys do not allow: keys are hashed.
    let folder = "AAMkAD/+==.x y";
    assert_eq!(store.get_folder(mb, folder).await.expect("get"), None);
    store.put_folder(mb, folder, "state-1").await.expect("put");
    assert_eq!(
        store.get_folder(mb, folder).await.expect("get").as_deref(),
        Some("state-1")
    );
    store.delete_folder(mb, folder).await.expect("delete");
    assert_eq!(store.get_folder(mb, folder).await.expect("get"), None);

    let v = ItemId {
        id: "AAMk+/=".into(),
        change_key: "CQA".into(),
    };
    assert!(!store.has_version(mb, &v).await.expect("has"));
    store
        .record_versions(mb, std::slice::from_ref(&v))
        .await
        .expect("record");
    assert!(store.has_version(mb, &v).await.expect("has"));

    // A second store on the same bucket sees the same state (restart).
    let again = KvCheckpointStore::new(client, "mailvault-checkpoints", 1)
        .await
        .expect("kv");
    assert!(again.has_version(mb, &v).await.expect("has"));
}
