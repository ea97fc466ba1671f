use std::collections::HashSet;
use std::sync::Arc;

use super::*;

const S: &str = "INGEST";
const C: &str = "agg";

fn hdr(id: &str) -> Headers {
    let mut h = Headers::new();
    h.insert(MSG_ID_HEADER.into(), id.into());
    h
}

fn bus_with(max_msgs: usize, ack_wait: Duration) -> (Bus, Consumer) {
    let bus = Bus::new();
    let mut cfg = StreamConfig::new(S, &["ingest.>"]);
    cfg.max_msgs = max_msgs;
    bus.get_or_create_stream(cfg).expect("stream");
    let mut cc = ConsumerConfig::new(C, &["ingest.item.>"]);
    cc.ack_wait = ack_wait;
    let c = bus.get_or_create_consumer(S, cc).expect("consumer");
    (bus, c)
}

async fn publish(bus: &Bus, subject: &str, body: &str) -> PubAck {
    bus.publish(subject, Headers::new(), Bytes::from(body.to_owned()))
        .await
        .expect("publish")
}

#[test]
fn wildcards() {
    assert!(subject_matches("a.>", "a.b"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(subject_matches("a.*.c", "a.b.c"));
    assert!(!subject_matches("a.*.c", "a.b.d"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(subject_matches("a.b", "a.b"));
    assert!(!subject_matches("a.b", "a.b.c"));
    assert!(filters_overlap("a.>", "a.b.*"));
    assert!(!filters_overlap("a.b.>", "a.c.>"));
}

#[test]
fn streams_must_not_overlap_and_routes_must_exist() {
    let bus = Bus::new();
    bus.get_or_create_stream(StreamConfig::new("A", &["x.>"]))
        .expect("A");
    // Idempotent.
    bus.get_or_create_stream(StreamConfig::new("A", &["x.>"]))
        .expect("A again");
    let e = bus.get_or_create_stream(StreamConfig::new("B", &["x.y.*"]));
    assert!(matches!(e, Err(BusError::Overlap { .. })), "{e:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let e = rt.block_on(bus.publish("nowhere", Headers::new(), Bytes::new()));
    assert_eq!(e, Err(BusError::NoRoute("nowhere".into())));
}

#[tokio::test]
async fn fetch_ack_removes_and_filter_applies() {
    let (bus, c) = bus_with(100, Duration::from_secs(30));
    publish(&bus, "ingest.item.a", "1").await;
    publish(&bus, "ingest.reconcile.a", "r").await; // no consumer interested
    publish(&bus, "ingest.item.b", "2").await;
    let info = bus.stream_info(S).expect("info");
    assert_eq!((info.messages, info.unrouted, info.last_seq), (2, 1, 3));

    let got = c.fetch(10, 1 << 20, Duration::ZERO).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| &d.message.payload[..]).collect();
    assert_eq!(bodies, vec![&b"1"[..], &b"2"[..]]);
    assert!(got.iter().all(|d| d.attempt == 1));
    assert_eq!(got[0].message.subject, "ingest.item.a");
    assert_eq!(c.info().num_ack_pending, 2);
    for d in &got {
        d.acker.ack();
    }
    assert_eq!(bus.stream_info(S).expect("info").messages, 0);
    let i = c.info();
    assert_eq!((i.num_pending, i.num_ack_pending, i.acked), (0, 0, 2));
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn unacked_is_redelivered_after_ack_wait_with_attempt_count() {
    let (bus, c) = bus_with(100, Duration::from_secs(30));
    publish(&bus, "ingest.item.a", "1").await;
    let first = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(first.len(), 1);
    // Invisible until ack_wait passes.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert_eq!(second[0].message.seq, first[0].message.seq);
    // A waiting fetch wakes up by itself when the deadline passes.
    let c2 = c.clone();
    let t = tokio::spawn(async move { c2.fetch(10, 1 << 20, Duration::from_secs(300)).await });
    let third = t.await.expect("join");
    assert_eq!(third[0].attempt, 3);
    // A stale nak/progress is ignored; a stale ack still settles.
    first[0].acker.nak(Duration::ZERO);
    assert_eq!(c.info().num_redelivery_due, 0);
    first[0].acker.ack();
    assert_eq!(bus.stream_info(S).expect("info").messages, 0);
    assert_eq!(c.info().num_ack_pending, 0);
    assert_eq!(c.info().redelivered, 2);
}

#[tokio::test(start_paused = true)]
async fn nak_delay_progress_and_term() {
    let (bus, c) = bus_with(100, Duration::from_secs(30));
    publish(&bus, "ingest.item.a", "1").await;
    publish(&bus, "ingest.item.b", "2").await;
    let got = c.fetch(10, 1 << 20, Duration::ZERO).await;
    let (a, b) = (&got[0], &got[1]);
    a.acker.nak(Duration::from_secs(5));
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let again = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].message.seq, again[0].attempt), (a.message.seq, 2));
    again[0].acker.ack();
    // Progress keeps b invisible past its original deadline.
    tokio::time::advance(Duration::from_secs(20)).await;
    b.acker.progress();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
    b.acker.term();
    let i = c.info();
    assert_eq!((i.acked, i.termed, i.num_ack_pending), (1, 1, 0));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
    assert_eq!(bus.stream_info(S).expect("info").messages, 0);
}

#[tokio::test(start_paused = true)]
async fn duplicates_within_window_are_dropped() {
    let (bus, c) = bus_with(100, Duration::from_secs(30));
    let p = |id: &str| bus.publish("ingest.item.a", hdr(id), Bytes::from_static(b"x"));
    let a = p("m1").await.expect("pub");
    let b = p("m1").await.expect("pub");
    assert_eq!(
        b,
        PubAck {
            seq: a.seq,
            duplicate: true
        }
    );
    // Still a duplicate after the message was acked (JetStream: within the window).
    let got = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(got.len(), 1);
    got[0].acker.ack();
    assert!(p("m1").await.expect("pub").duplicate);
    tokio::time::advance(Duration::from_secs(121)).await;
    let after = p("m1").await.expect("pub");
    assert!(!after.duplicate);
    assert_ne!(after.seq, a.seq);
    assert_eq!(bus.stream_info(S).expect("info").duplicates, 2);
}

#[tokio::test]
async fn back_pressure_blocks_until_settled_then_proceeds() {
    let (bus, c) = bus_with(2, Duration::from_secs(30));
    publish(&bus, "ingest.item.a", "1").await;
    publish(&bus, "ingest.item.a", "2").await;
    let bus2 = bus.clone();
    let mut third = tokio::spawn(async move { publish(&bus2, "ingest.item.a", "3").await });
    // Blocked: the stream is full (delivering does not make room, settling does).
    let got = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(got.len(), 2);
    tokio::select! {
        _ = &mut third => panic!("publish into a full stream must wait"),
        () = tokio::task::yield_now() => {}
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!third.is_finished());
    assert_eq!(bus.stream_info(S).expect("info").messages, 2);
    got[0].acker.ack();
    let ack = third.await.expect("join");
    assert_eq!(ack.seq, 3);
    let rest = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(&rest[0].message.payload[..], b"3");
}

#[tokio::test]
async fn max_ack_pending_limits_deliveries() {
    let bus = Bus::new();
    bus.get_or_create_stream(StreamConfig::new(S, &["ingest.>"]))
        .expect("stream");
    let mut cc = ConsumerConfig::new(C, &[]);
    cc.max_ack_pending = 3;
    let c = bus.get_or_create_consumer(S, cc).expect("consumer");
    for i in 0..5 {
        publish(&bus, "ingest.item.a", &i.to_string()).await;
    }
    let got = c.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(got.len(), 3);
    assert!(c.fetch(10, 1 << 20, Duration::ZERO).await.is_empty());
    got[0].acker.ack();
    assert_eq!(c.fetch(10, 1 << 20, Duration::ZERO).await.len(), 1);
}

#[tokio::test]
async fn interest_retention_two_consumers() {
    let (bus, a) = bus_with(100, Duration::from_secs(30));
    let b = bus
        .get_or_create_consumer(S, ConsumerConfig::new("other", &["ingest.>"]))
        .expect("consumer");
    publish(&bus, "ingest.item.x", "1").await;
    publish(&bus, "ingest.reconcile.x", "2").await; // only `other`
    let ack = publish(&bus, "ingest.item.y", "3").await;
    let ga = a.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(ga.len(), 2);
    for d in &ga {
        d.acker.ack();
    }
    // `other` has not settled: all three are still held.
    assert_eq!(bus.stream_info(S).expect("info").messages, 3);
    let gb = b.fetch(10, 1 << 20, Duration::ZERO).await;
    assert_eq!(gb.len(), 3);
    let waiter = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.wait_settled(S, ack.seq).await })
    };
    for d in &gb {
        d.acker.ack();
    }
    waiter.await.expect("join").expect("settled");
    assert_eq!(bus.stream_info(S).expect("info").messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_workers_see_each_message_once_until_acked() {
    let (bus, c) = bus_with(64, Duration::from_secs(600));
    const N: usize = 2000;
    let producer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..N {
                bus.publish(
                    "ingest.item.a",
                    hdr(&format!("id-{i}")),
                    Bytes::from(i.to_string()),
                )
                .await
                .expect("publish");
            }
        })
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let c = c.clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let got = c.fetch(7, 1 << 20, Duration::from_millis(200)).await;
                if got.is_empty() {
                    if c.info().num_pending == 0 && c.info().num_ack_pending == 0 {
                        return;
                    }
                    continue;
                }
                for d in got {
                    assert_eq!(d.attempt, 1, "redelivered before ack_wait");
                    seen.lock().expect("lock").push((d.message.seq, w));
                    d.acker.ack();
                }
            }
        }));
    }
    producer.await.expect("producer");
    for w in workers {
        w.await.expect("worker");
    }
    c.wait_idle().await;
    let seen = seen.lock().expect("lock");
    let seqs: HashSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seen.len(), N, "a message was delivered twice");
    assert_eq!(seqs.len(), N);
    let workers_used: HashSet<u64> = seen.iter().map(|(_, w)| *w).collect();
    assert!(workers_used.len() > 1, "only one worker got messages");
    assert_eq!(bus.stream_info(S).expect("info").messages, 0);
}

#[tokio::test(start_paused = true)]
async fn fetch_waits_for_a_publish_and_expires() {
    let (bus, c) = bus_with(100, Duration::from_secs(30));
    let t0 = Instant::now();
    assert!(
        c.fetch(10, 1 << 20, Duration::from_secs(2))
            .await
            .is_empty()
    );
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    let c2 = c.clone();
    let t = tokio::spawn(async move { c2.fetch(10, 1 << 20, Duration::from_secs(60)).await });
    tokio::task::yield_now().await;
    publish(&bus, "ingest.item.a", "1").await;
    assert_eq!(t.await.expect("join").len(), 1);
    // max_bytes: at least one, then stop once reached.
    for i in 0..3 {
        publish(&bus, "ingest.item.a", &"x".repeat(10 + i)).await;
    }
    assert_eq!(c.fetch(10, 5, Duration::ZERO).await.len(), 1);
    assert_eq!(c.fetch(10, 15, Duration::ZERO).await.len(), 2);
}

#[tokio::test]
async fn oversized_message_is_refused_not_blocked() {
    let bus = Bus::new();
    let mut cfg = StreamConfig::new(S, &["ingest.>"]);
    cfg.max_bytes = 4;
    bus.get_or_create_stream(cfg).expect("stream");
    bus.get_or_create_consumer(S, ConsumerConfig::new(C, &[]))
        .expect("consumer");
    let e = bus
        .publish("ingest.a", Headers::new(), Bytes::from_static(b"12345"))
        .await;
    assert!(
        matches!(e, Err(BusError::TooLarge { size: 5, .. })),
        "{e:?}"
    );
}
