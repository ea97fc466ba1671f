//! The JetStream features the services rely on, against a real nats-server 2.15.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use bytes::Bytes;
use futures::StreamExt;
use mailvault_harness::NatsServer;
use tokio::io::AsyncReadExt;

async fn server() -> (NatsServer, jetstream::Context) {
    let nats = tokio::task::spawn_blocking(|| NatsServer::start().expect("nats-server starts"))
        .await
        .expect("join");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    (nats, jetstream::new(client))
}

#[tokio::test]
async fn stream_dedupes_by_msg_id_and_pull_consumer_acks() {
    let (_nats, js) = server().await;
    let stream = js
        .create_stream(stream::Config {
            name: "ITEMS".into(),
            subjects: vec!["items.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");

    let publish = |id: &'static str, body: &'static str| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, id);
            js.publish_with_headers("items.mbx1", headers, Bytes::from_static(body.as_bytes()))
                .await
                .expect("publish")
                .await
                .expect("ack")
        }
    };
    let first = publish("item-1", "one").await;
    assert!(!first.duplicate);
    let again = publish("item-1", "one").await;
    assert!(again.duplicate, "same Nats-Msg-Id is a duplicate");
    assert_eq!(again.sequence, first.sequence);
    publish("item-2", "two").await;

    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("aggregator".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut bodies = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.expect("message");
        bodies.push(msg.payload.clone());
        msg.ack().await.expect("ack");
    }
    assert_eq!(bodies, vec![Bytes::from("one"), Bytes::from("two")]);

    let mut consumer = consumer;
    let info = consumer.info().await.expect("info");
    assert_eq!(info.num_pending, 0);
    // Acks are asynchronous on the server; poll until they are all counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = consumer.info().await.expect("info");
        if info.num_ack_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks not applied: {info:?}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn kv_compare_and_set() {
    let (_nats, js) = server().await;
    let leases = js
        .create_key_value(kv::Config {
            bucket: "leases".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .expect("kv bucket");
    let rev = leases
        .create("mbx-1", Bytes::from_static(b"collector-a"))
        .await
        .expect("create");
    assert!(
        leases
            .create("mbx-1", Bytes::from_static(b"collector-b"))
            .await
            .is_err(),
        "create of an existing key fails"
    );
    let rev2 = leases
        .update("mbx-1", Bytes::from_static(b"collector-b"), rev)
        .await
        .expect("update with the current revision");
    assert!(rev2 > rev);
    assert!(
        leases
            .update("mbx-1", Bytes::from_static(b"collector-c"), rev)
            .await
            .is_err(),
        "update with a stale revision fails"
    );
    assert_eq!(
        leases.get("mbx-1").await.expect("get"),
        Some(Bytes::from_static(b"collector-b"))
    );
}

#[tokio::test]
async fn object_store_round_trips_a_large_object() {
    let (_nats, js) = server().await;
    let bucket = js
        .create_object_store(object_store::Config {
            bucket: "blobs".into(),
            ..Default::default()
        })
        .await
        .expect("object store");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let info = bucket
        .put("attachment-1", &mut data.as_slice())
        .await
        .expect("put");
    assert_eq!(info.size, data.len());
    let mut object = bucket.get("attachment-1").await.expect("get");
    let mut back = Vec::new();
    object.read_to_end(&mut back).await.expect("read");
    assert!(back == data, "object read back differently");
}

/// The backlog gauge follows the durable consumer: undelivered messages, then delivered but
/// unacknowledged ones, then none once acked.
#[tokio::test]
async fn backlog_probe_counts_undelivered_and_unacked_messages() {
    let (_nats, js) = server().await;
    let stream = js
        .create_stream(stream::Config {
            name: "BACKLOG".into(),
            subjects: vec!["backlog.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("probe".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    for i in 0..5 {
        js.publish("backlog.x", Bytes::from(format!("m{i}")))
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let gauge = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let g = gauge.clone();
    let probe = mailvault_runtime::nats::spawn_backlog_probe(
        consumer.clone(),
        Duration::from_millis(50),
        move |n| g.store(n, std::sync::atomic::Ordering::SeqCst),
    );
    let wait_for = |want: u64| {
        let gauge = gauge.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let v = gauge.load(std::sync::atomic::Ordering::SeqCst);
                if v == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "backlog gauge {v}, expected {want}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(5).await;
    // Delivered but not acked: still backlog.
    let mut got = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetch");
    let mut held = Vec::new();
    while let Some(m) = got.next().await {
        held.push(m.expect("message"));
    }
    assert_eq!(held.len(), 3);
    // Each check waits for a probe made after the change (the gauge is cleared first).
    gauge.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    wait_for(5).await;
    for m in &held[..2] {
        m.double_ack().await.expect("ack");
    }
    gauge.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    wait_for(3).await;
    probe.abort();
}

/// A service started while NATS is down (a restart, a rolling update) waits for it instead of
/// exiting; a server that refuses the credentials fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_a_nats_that_is_down_and_not_for_wrong_credentials() {
    use mailvault_runtime::nats::{Component, NatsAuth, connect};
    let mut nats = tokio::task::spawn_blocking(|| NatsServer::start().expect("nats-server"))
        .await
        .expect("join");
    let url = nats.url();
    nats.stop();
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { connect(Component::Indexer, "t", &url, &NatsAuth::default()).await }
    });
    // Still waiting while the server is down (the first retries are a quarter second apart).
    let early = tokio::time::timeout(Duration::from_secs(1), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(early.is_err(), "connect gave up while NATS was down");
    let nats = tokio::task::spawn_blocking(move || {
        nats.restart().expect("nats-server again");
        nats
    })
    .await
    .expect("join");
    let client = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("connected once NATS was back")
        .expect("join")
        .expect("connect");
    client.flush().await.expect("round trip");

    // Wrong credentials: no waiting.
    let seed = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(seed.path(), "SUNOTASEED").expect("write");
    let auth = NatsAuth {
        nkey_file: Some(seed.path().to_owned()),
        ..NatsAuth::default()
    };
    let t = std::time::Instant::now();
    assert!(
        connect(Component::Indexer, "t", &nats.url(), &auth)
            .await
            .is_err()
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited {:?} for bad credentials",
        t.elapsed()
    );
}
