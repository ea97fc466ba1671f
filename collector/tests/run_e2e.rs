//! `run()` end to end: config → HttpEws against a scripted EWS (loopback HTTP) → engine →
//! JetStream (real nats-server) with KV checkpoints. A second pass publishes nothing new.
//! The EWS simulator (tests/ews-sim) will replace the scripted server for the acceptance tests.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use mailvault_collector::config::Config;
use mailvault_collector::nats::STREAM;
use mailvault_collector::{RunMode, run};
use mailvault_proto::ingest::v1 as pb;

mod common;
use prost::Message as _;
use support::http::{Request, Response, serve};
use tokio::io::AsyncReadExt as _;

const OPEN: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#;
const CLOSE: &str = "</s:Body></s:Envelope>";
const NS: &str = r#"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#;

fn mime_of(id: &str) -> Vec<u8> {
    if id == "big" {
        // Over the 512 KiB inline limit: must travel through the object store.
        let mut v = b"Subject: big\r\n\r\n".to_vec();
        v.extend((0..700_000u32).map(|i| b'a' + (i % 26) as u8));
        v
    } else {
        format!("Subject: {id}\r\nMessage-ID: <{id}@example.com>\r\n\r\nbody of {id}\r\n")
            .into_bytes()
    }
}

fn attr_values<'a>(body: &'a str, prefix: &str) -> Vec<&'a str> {
    body.split(prefix)
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect()
}

fn ews(req: &Request, calls: &AtomicUsize) -> Response {
    calls.fetch_add(1, Ordering::SeqCst);
    let b = &req.body;
    let ok = |inner: String| Response {
        status: 200,
        headers: vec![],
        body: format!("{OPEN}{inner}{CLOSE}"),
    };
    if b.contains("<m:GetFolder>") {
        let mut msgs = String::new();
        for id in attr_values(b, "<t:DistinguishedFolderId Id=\"") {
            let fid = match id {
                "msgfolderroot" => "root",
                "inbox" => "inbox",
                _ => {
                    msgs.push_str(r#"<m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>not found</m:MessageText><m:ResponseCode>ErrorFolderNotFound</m:ResponseCode><m:Folders/></m:GetFolderResponseMessage>"#);
                    continue;
                }
            };
            msgs.push_str(&format!(r#"<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders><t:Folder><t:FolderId Id="{fid}" ChangeKey="c"/><t:DisplayName>{fid}</t:DisplayName></t:Folder></m:Folders></m:GetFolderResponseMessage>"#));
        }
        return ok(format!(
            "<m:GetFolderResponse {NS}><m:ResponseMessages>{msgs}</m:ResponseMessages></m:GetFolderResponse>"
        ));
    }
    if b.contains("<m:SyncFolderHierarchy>") {
        let changes = if b.contains("<m:SyncState>") {
            String::new()
        } else {
            [("inbox", "Posteingang"), ("sent", "Gesendete Elemente")]
                .iter()
                .map(|(id, name)| format!(r#"<t:Create><t:Folder><t:FolderId Id="{id}" ChangeKey="c"/><t:ParentFolderId Id="root"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{name}</t:DisplayName><t:TotalCount>3</t:TotalCount></t:Folder></t:Create>"#))
                .collect()
        };
        return ok(format!(
            r#"<m:SyncFolderHierarchyResponse {NS}><m:ResponseMessages><m:SyncFolderHierarchyResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>hier-1</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>{changes}</m:Changes></m:SyncFolderHierarchyResponseMessage></m:ResponseMessages></m:SyncFolderHierarchyResponse>"#
        ));
    }
    if b.contains("<m:SyncFolderItems>") {
        let folder = attr_values(b, "<t:FolderId Id=\"")
            .first()
            .copied()
            .unwrap_or("");
        let ids: Vec<&str> = match folder {
            "inbox" => vec!["i0", "i1", "big"],
            "sent" => vec!["s0", "s1", "s2"],
            _ => vec![],
        };
        let changes: String = if b.contains("<m:SyncState>") {
            String::new()
        } else {
            ids.iter()
                .map(|id| format!(r#"<t:Create><t:Message><t:ItemId Id="{id}" ChangeKey="ck-{id}"/><t:ItemClass>IPM.Note</t:ItemClass><t:IsRead>false</t:IsRead></t:Message></t:Create>"#))
                .collect()
        };
        return ok(format!(
            r#"<m:SyncFolderItemsResponse {NS}><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>items-{folder}-1</m:SyncState><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange><m:Changes>{changes}</m:Changes></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse>"#
        ));
    }
    if b.contains("<m:GetItem>") {
        let msgs: String = attr_values(b, "<t:ItemId Id=\"")
            .iter()
            .map(|id| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(mime_of(id));
                format!(r#"<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{b64}</t:MimeContent><t:ItemId Id="{id}" ChangeKey="ck-{id}"/><t:ItemClass>IPM.Note</t:ItemClass><t:IsRead>false</t:IsRead></t:Message></m:Items></m:GetItemResponseMessage>"#)
            })
            .collect();
        return ok(format!(
            "<m:GetItemResponse {NS}><m:ResponseMessages>{msgs}</m:ResponseMessages></m:GetItemResponse>"
        ));
    }
    Response {
        status: 500,
        headers: vec![],
        body: format!(
            "{OPEN}<s:Fault><faultcode>s:Client</faultcode><faultstring>unsupported</faultstring></s:Fault>{CLOSE}"
        ),
    }
}

async fn stream_contents(js: &jetstream::Context) -> Vec<pb::IngestMessage> {
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let n = stream.info().await.expect("info").state.messages;
    let mut out = Vec::new();
    for seq in 1..=n {
        let raw = stream.get_raw_message(seq).await.expect("message");
        out.extend(common::unpack(
            pb::IngestMessage::decode(raw.payload).expect("decode"),
        ));
    }
    out
}

#[tokio::test]
async fn run_once_collects_every_item_and_second_pass_publishes_nothing_new() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let url = serve(
        Arc::new(move |_, req: &Request| ews(req, &c2)),
        Duration::ZERO,
        Arc::default(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").expect("write pw");
    let cfg_text = format!(
        r#"
source = "test-collector"
mailboxes = ["anna@example.com"]
[ews]
url = "{url}"
username = "svc"
password_file = "{}"
[limits]
per_server_concurrency = 4
per_account_concurrency = 2
mailbox_concurrency = 2
max_changes = 512
get_item_batch = 2
max_retries = 2
backoff_base_ms = 10
backoff_max_ms = 100
inline_limit_bytes = 524288
max_in_flight_publishes = 8
[nats]
url = "{}"
"#,
        pw.display(),
        nats.url()
    );
    let config = Config::from_toml(&cfg_text).expect("config");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = run(config.clone(), RunMode::Once, rx.clone())
        .await
        .expect("run");
    assert!(summary.is_clean(), "{summary:?}");
    assert_eq!(summary.captured(), 6);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let msgs = stream_contents(&js).await;
    let mut items = BTreeMap::new();
    for m in &msgs {
        if let Some(pb::ingest_message::Message::Item(env)) = &m.message {
            let body = match &env.body {
                Some(pb::item_envelope::Body::Inline(b)) => b.to_vec(),
                Some(pb::item_envelope::Body::Object(r)) => {
                    let store = js.get_object_store(&r.bucket).await.expect("bucket");
                    let mut o = store.get(&r.name).await.expect("object");
                    let mut v = Vec::new();
                    o.read_to_end(&mut v).await.expect("read");
                    v
                }
                None => panic!("no body"),
            };
            assert_eq!(env.mailbox, "anna@example.com");
            assert_eq!(env.source, "test-collector");
            items.insert(env.item_id.clone(), (env.folder_path.join("/"), body));
        }
    }
    assert_eq!(items.len(), 6);
    for (id, (path, body)) in &items {
        assert_eq!(body, &mime_of(id), "MIME of {id} byte-identical");
        let expect = if id.starts_with('s') {
            "Gesendete Elemente"
        } else {
            "Posteingang"
        };
        assert_eq!(path, expect);
    }
    let reconciles = msgs
        .iter()
        .filter(|m| {
            matches!(
                m.message,
                Some(pb::ingest_message::Message::Reconciliation(_))
            )
        })
        .count();
    assert_eq!(reconciles, 1);

    // Second pass: checkpoints hold; only O(folders) EWS calls and no new items.
    let before = calls.load(Ordering::SeqCst);
    let summary = run(config, RunMode::Once, rx).await.expect("second run");
    assert!(summary.is_clean(), "{summary:?}");
    assert_eq!(summary.captured(), 0);
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        1 + 2,
        "hierarchy + one SyncFolderItems per folder"
    );
    let after = stream_contents(&js).await;
    let new_items = after.len() - msgs.len();
    assert_eq!(new_items, 1, "only the second reconciliation record");
}
