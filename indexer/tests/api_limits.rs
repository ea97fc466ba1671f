//! Issue 26, item 7: exports whose clients stop reading must not freeze the server. A token
//! gets a bounded number of streams, stalled ones end after the idle timeout, and meanwhile
//! searches and index commits go on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use mailvault_indexer::api::{Api, AuditLog, Role, StreamLimits, Tokens};
use mailvault_indexer::{Index, Indexer};
use mailvault_proto::api::v1 as pb;
use tonic::Code;

fn export_all() -> pb::ExportRequest {
    pb::ExportRequest {
        query: String::new(),
        format: pb::ExportFormat::EmlZip as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_exports_are_bounded_and_end_while_search_goes_on() {
    let repo = repo().await;
    let events = populate(&repo, 9, 60).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
    for e in &events {
        match e {
            Event::Stored(s) => ix.handle_stored(s).await.expect("stored"),
            Event::Changed(c) => ix.handle_changed(c).await.expect("changed"),
        }
    }
    ix.commit().await.expect("commit");

    let mut tokens = Tokens::default();
    let ops = tokens.issue("ops", Role::Operator, None);
    let other = tokens.issue("other", Role::Operator, None);
    let idle = Duration::from_millis(1500);
    let apis = Api::new(
        ix.index.clone(),
        repo.clone(),
        AuditLog::start(repo.clone()),
        None,
    )
    .with_stream_limits(StreamLimits {
        per_token: 2,
        idle_timeout: idle,
        export_writers: 1,
    });
    let served = serve(apis, tokens).await;
    let mut c = served.client.clone();

    // Two exports opened and never read: the token's two slots.
    let started = Instant::now();
    let stalled_a = c
        .export(req(export_all(), &ops))
        .await
        .expect("first export");
    let stalled_b = c
        .export(req(export_all(), &ops))
        .await
        .expect("second export");
    let e = c
        .export(req(export_all(), &ops))
        .await
        .expect_err("a third stream for the same token");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Meanwhile: another token exports, everyone searches, the index commits.
    let total = c
        .search(req(
            pb::SearchRequest {
                query: String::new(),
                page_size: 1000,
                ..Default::default()
            },
            &ops,
        ))
        .await
        .expect("search while exports stall")
        .into_inner()
        .next()
        .await
        .expect("a page")
        .expect("page")
        .total;
    assert!(total >= 60, "{total}");
    ix.commit().await.expect("commit while exports stall");

    // The stalled streams end after the idle timeout, the slots come back by themselves.
    let end = Instant::now() + Duration::from_secs(60);
    let mut fresh = loop {
        match c.export(req(export_all(), &ops)).await {
            Ok(s) => break s.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(Instant::now() < end, "slots never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        started.elapsed() >= idle,
        "slots came back before the idle timeout: {:?}",
        started.elapsed()
    );
    let mut zip_bytes = Vec::new();
    while let Some(chunk) = fresh.next().await {
        zip_bytes.extend_from_slice(&chunk.expect("chunk").data);
    }
    let z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).expect("zip");
    assert_eq!(
        z.len() as u64,
        total,
        "a full export once the stalled ones ended"
    );

    // Another token was never limited by the first one's streams.
    let mut s = c
        .export(req(export_all(), &other))
        .await
        .expect("other token")
        .into_inner();
    let mut n = 0;
    while let Some(chunk) = s.next().await {
        n += chunk.expect("chunk").data.len();
    }
    assert!(n > 0);
    drop((stalled_a, stalled_b));
    served.stop().await;
}
