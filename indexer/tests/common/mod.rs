//! A repository with generated mail and item-history records written the way the aggregator
//! writes them (docs/wire.md), and the events the aggregator publishes for them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use mailvault_format::{BlobStore, InitOptions, ItemManifest, KdfParams, MemoryStore, Repository};
use mailvault_indexer::{Hit, Index, Scope, SearchOptions};
use mailvault_proto::events::v1::{ItemChangeRecorded, ItemStored};
use mailvault_proto::ingest::v1::{ChangeKind, ItemChange};
use prost::Message as _;

pub const PASS: &[u8] = b"indexer test passphrase";

pub async fn repo() -> Repository {
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    Repository::init(
        store,
        PASS,
        InitOptions {
            kdf: KdfParams::fast_insecure(),
            ..InitOptions::default()
        },
    )
    .await
    .expect("init repository")
}

/// The aggregator's `history_record` (aggregator/src/pipeline.rs), restated.
fn history_record(c: &ItemChange, kind: &str) -> (ItemManifest, Vec<u8>) {
    let mut properties = HashMap::new();
    properties.insert("mailvault.record".to_owned(), "item-change.v1".to_owned());
    properties.insert("mailvault.change.kind".to_owned(), kind.to_owned());
    properties.insert(
        "mailvault.change.change_key".to_owned(),
        c.change_key.clone(),
    );
    let meta = ItemManifest {
        mailbox: c.mailbox.clone(),
        item_id: c.item_id.clone(),
        change_key: format!("~history:{kind}:{}:{}", c.change_key, c.observed_unix_ms),
        folder_id: c.folder_id.clone(),
        folder_path: c.folder_path.clone(),
        item_class: "MailVault.History.ItemChange".to_owned(),
        collected_unix_ms: c.observed_unix_ms,
        source: c.source.clone(),
        is_read: c.is_read,
        properties,
        ..Default::default()
    };
    (meta, c.encode_to_vec())
}

pub enum Event {
    Stored(ItemStored),
    Changed(ItemChangeRecorded),
}

/// Stores generated items and, for every fifth item, a read flag, a move or a delete; returns
/// the events in the order the aggregator would publish them.
pub async fn populate(repo: &Repository, seed: u64, messages: usize) -> Vec<Event> {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed,
        messages,
        ..Default::default()
    });
    let mut w = repo.writer().expect("writer");
    let mut events = Vec::new();
    for (i, g) in corpus.items.iter().enumerate() {
        let t = 1_700_000_000_000 + i as i64 * 1000;
        let m = ItemManifest {
            mailbox: g.mailbox.clone(),
            item_id: format!("item-{i}"),
            change_key: "CQAAAB".into(),
            folder_id: format!("f-{}", g.folder_path.join("/")),
            folder_path: g.folder_path.clone(),
            distinguished_folder: if g.folder_path.len() == 1 {
                g.distinguished.clone().unwrap_or_default()
            } else {
                String::new()
            },
            item_class: g.item_class.clone(),
            format: 1,
            collected_unix_ms: t,
            is_read: g.is_read,
            source: "exch01".into(),
            ..Default::default()
        };
        let r = w.add_item(m.clone(), &g.mime).expect("add item");
        events.push(Event::Stored(ItemStored {
            manifest_id: r.manifest_id.to_hex(),
            mailbox: m.mailbox.clone(),
            item_id: m.item_id.clone(),
            change_key: m.change_key.clone(),
            folder_path: m.folder_path.clone(),
            item_class: m.item_class.clone(),
            size: g.mime.len() as u64,
            stored_unix_ms: t + 10,
        }));
        if i % 5 != 0 {
            continue;
        }
        let (kind, wire, folder) = match (i / 5) % 3 {
            0 => ("read_flag", ChangeKind::ReadFlag, g.folder_path.clone()),
            1 => {
                let mut f = g.folder_path.clone();
                f.push("Archive 2024".into());
                ("move", ChangeKind::Move, f)
            }
            _ => ("delete", ChangeKind::Delete, g.folder_path.clone()),
        };
        let c = ItemChange {
            source: "EXCH01".into(),
            mailbox: m.mailbox.clone(),
            item_id: m.item_id.clone(),
            change_key: "CQAAAC".into(),
            kind: wire as i32,
            folder_id: format!("f-{}", folder.join("/")),
            folder_path: folder,
            is_read: true,
            observed_unix_ms: 1_800_000_000_000 + i as i64,
        };
        let (hm, content) = history_record(&c, kind);
        let r = w.add_item(hm, &content).expect("add history record");
        events.push(Event::Changed(ItemChangeRecorded {
            record_id: r.manifest_id.to_hex(),
            mailbox: c.mailbox.clone(),
            item_id: c.item_id.clone(),
            change_key: c.change_key.clone(),
            kind: kind.into(),
            folder_id: c.folder_id.clone(),
            folder_path: c.folder_path.clone(),
            is_read: c.is_read,
            observed_unix_ms: c.observed_unix_ms,
            stored_unix_ms: 0,
        }));
    }
    w.flush().await.expect("flush");
    events
}

pub const QUERIES: &[&str] = &[
    "",
    "is:deleted",
    "is:unread",
    "has:attachment",
    "folder:inbox",
    "\"Archive 2024\" OR folder:\"inbox/archive 2024\"",
    "re",
    "after:2024-01-01 -has:attachment",
];

/// Results of every query at several times, for every scope worth comparing.
pub fn snapshot(ix: &Index, users: &[String]) -> Vec<(String, Vec<Hit>, usize)> {
    let mut out = Vec::new();
    let mut scopes = vec![Scope::All];
    scopes.extend(users.iter().map(|u| Scope::User(u.clone())));
    for q in QUERIES {
        for as_of in [None, Some(1_700_000_050_000), Some(1_800_000_000_100)] {
            for scope in &scopes {
                let page = ix
                    .search(
                        q,
                        &SearchOptions {
                            as_of,
                            scope: scope.clone(),
                            offset: 0,
                            limit: 100_000,
                        },
                    )
                    .expect("search");
                out.push((format!("{q} @{as_of:?} {scope:?}"), page.hits, page.total));
            }
        }
    }
    out
}

/// `msg` with `authorization: Bearer <token>`.
pub fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// The real gRPC API on a loopback port, and a client connected to it.
pub struct Served {
    pub client: mailvault_proto::api::v1::archive_client::ArchiveClient<tonic::transport::Channel>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), mailvault_indexer::api::grpc::ServeError>>,
}

/// Serves `apis` with `tokens` (plain text on loopback) until [`Served::stop`].
pub async fn serve(
    apis: mailvault_indexer::api::Api,
    tokens: mailvault_indexer::api::Tokens,
) -> Served {
    use mailvault_indexer::api;
    let (listener, addr) = api::grpc::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        api::GrpcArchive::new(apis, tokens),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let client =
        mailvault_proto::api::v1::archive_client::ArchiveClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
    Served {
        client,
        stop,
        server,
    }
}

impl Served {
    /// Stops the server and waits until it has ended cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.expect("server task").expect("server");
    }
}
