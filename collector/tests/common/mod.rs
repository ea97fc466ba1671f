//! Shared by the acceptance tests that run the collector against the EWS simulator
//! (`mailvault-ews-sim`) and a real nats-server (`mailvault-harness`).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mailvault_collector::config::Config;
use mailvault_collector::nats::STREAM;
use mailvault_proto::ingest::v1 as pb;
use prost::Message as _;
use tokio::io::AsyncReadExt as _;

/// Inline limit used by the tests: low enough that attachments and the huge item travel
/// through the JetStream Object Store.
pub const TEST_INLINE_LIMIT: usize = 64 * 1024;

/// A collector configuration for `mailboxes` on the simulator at `ews_url`, publishing to
/// `nats_url`. The password file is written into `dir`.
pub fn config(dir: &Path, ews_url: &str, nats_url: &str, mailboxes: &[String]) -> Config {
    let pw = dir.join("ews-password");
    std::fs::write(&pw, "secret\n").expect("write password file");
    let list = mailboxes
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
source = "it-collector"
mailboxes = [{list}]
[ews]
url = "{ews_url}"
username = "svc-mailvault"
password_file = "{}"
impersonation = true
request_timeout_secs = 60
[limits]
per_server_concurrency = 6
per_account_concurrency = 2
mailbox_concurrency = 3
get_item_batch = 16
max_retries = 12
backoff_base_ms = 20
backoff_max_ms = 2000
inline_limit_bytes = {TEST_INLINE_LIMIT}
max_in_flight_publishes = 64
[nats]
url = "{nats_url}"
"#,
        pw.display()
    );
    let c = Config::from_toml(&text).expect("test config parses");
    c.validate().expect("test config valid");
    c
}

/// Writes `config` back as a TOML file (for the binary). Only the keys the tests use.
pub fn write_config_file(dir: &Path, c: &Config) -> PathBuf {
    let l = &c.limits;
    let list = c
        .mailboxes
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
source = "{}"
mailboxes = [{list}]
[ews]
url = "{}"
username = "{}"
password_file = "{}"
auth = "{}"
impersonation = {}
request_timeout_secs = {}
[limits]
per_server_concurrency = {}
per_account_concurrency = {}
mailbox_concurrency = {}
max_changes = {}
get_item_batch = {}
max_retries = {}
backoff_base_ms = {}
backoff_max_ms = {}
inline_limit_bytes = {}
max_in_flight_publishes = {}
[nats]
url = "{}"
"#,
        c.source,
        c.ews.url,
        c.ews.username,
        c.ews.password_file.display(),
        c.ews.auth.as_str().to_lowercase(),
        c.ews.impersonation,
        c.ews.request_timeout_secs,
        l.per_server_concurrency,
        l.per_account_concurrency,
        l.mailbox_concurrency,
        l.max_changes,
        l.get_item_batch,
        l.max_retries,
        l.backoff_base_ms,
        l.backoff_max_ms,
        l.inline_limit_bytes,
        l.max_in_flight_publishes,
        c.nats.url,
    );
    let p = dir.join("collector.toml");
    std::fs::write(&p, text).expect("write collector.toml");
    p
}

/// One message read back from the stream.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub msg_id: String,
    pub kind: String,
    pub message: pb::IngestMessage,
}

impl Published {
    pub fn item(&self) -> Option<&pb::ItemEnvelope> {
        match &self.message.message {
            Some(pb::ingest_message::Message::Item(e)) => Some(e),
            _ => None,
        }
    }
    pub fn change(&self) -> Option<&pb::ItemChange> {
        match &self.message.message {
            Some(pb::ingest_message::Message::Change(c)) => Some(c),
            _ => None,
        }
    }
    pub fn quarantine(&self) -> Option<&pb::ItemQuarantine> {
        match &self.message.message {
            Some(pb::ingest_message::Message::Quarantine(q)) => Some(q),
            _ => None,
        }
    }
    pub fn reconciliation(&self) -> Option<&pb::MailboxReconciliation> {
        match &self.message.message {
            Some(pb::ingest_message::Message::Reconciliation(r)) => Some(r),
            _ => None,
        }
    }
}

/// Every message of the ingest stream with sequence > `after`, in stream order. An item batch
/// is unpacked: each of its entries is one `Published` (kind `items`, the pack's id and seq).
pub async fn stream_messages(js: &jetstream::Context, after: u64) -> Vec<Published> {
    let mut stream = js.get_stream(STREAM).await.expect("ingest stream exists");
    let info = stream.info().await.expect("stream info");
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first.max(after + 1)..=last {
        let raw = stream.get_raw_message(seq).await.expect("stream message");
        let header = |name: &str| {
            raw.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let (msg_id, kind) = (header("Nats-Msg-Id"), header("Mailvault-Kind"));
        let message = pb::IngestMessage::decode(raw.payload).expect("decode IngestMessage");
        out.extend(unpack(message).into_iter().map(|message| Published {
            seq,
            msg_id: msg_id.clone(),
            kind: kind.clone(),
            message,
        }));
    }
    out
}

/// The entries of a message: an item batch's items and changes, each as a message of its own;
/// any other message as it is.
pub fn unpack(m: pb::IngestMessage) -> Vec<pb::IngestMessage> {
    use pb::ingest_message::Message;
    let one = |message| pb::IngestMessage {
        message: Some(message),
    };
    match m.message {
        Some(Message::Batch(b)) => {
            assert!(
                b.items.len() + b.changes.len() > 1,
                "a pack holds several entries"
            );
            b.items
                .into_iter()
                .map(|e| one(Message::Item(e)))
                .chain(b.changes.into_iter().map(|c| one(Message::Change(c))))
                .collect()
        }
        _ => vec![m],
    }
}

/// Whether `msg_id` is the id an item version or a pack holding it may carry.
pub fn is_item_or_pack_id(msg_id: &str, mailbox: &str, item_id: &str, change_key: &str) -> bool {
    let id = mailvault_collector::ews::ItemId {
        id: item_id.into(),
        change_key: change_key.into(),
    };
    msg_id == mailvault_collector::sync::item_msg_id(mailbox, &id) || msg_id.starts_with("pack-")
}

/// Last sequence number of the ingest stream (0 when empty).
pub async fn last_seq(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(STREAM).await.expect("ingest stream exists");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

/// The MIME bytes of an envelope, from the envelope or from the object store.
pub async fn body_of(js: &jetstream::Context, env: &pb::ItemEnvelope) -> Vec<u8> {
    match &env.body {
        Some(pb::item_envelope::Body::Inline(b)) => b.to_vec(),
        Some(pb::item_envelope::Body::Object(r)) => {
            assert_eq!(r.size, env.size, "ObjectRef.size is the MIME size");
            let store = js
                .get_object_store(&r.bucket)
                .await
                .expect("object store bucket");
            let mut o = store.get(&r.name).await.expect("object exists");
            let mut v = Vec::new();
            o.read_to_end(&mut v).await.expect("read object");
            v
        }
        None => panic!("envelope of {} has no body", env.item_id),
    }
}

pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Multiset of (lower-cased mailbox, BLAKE3 of the MIME).
pub type ContentSet = BTreeMap<(String, String), usize>;

pub fn add(set: &mut ContentSet, mailbox: &str, mime: &[u8]) {
    *set.entry((mailbox.to_lowercase(), hash(mime))).or_default() += 1;
}

/// What a maildir tree `<user>/<folder>[/<sub>…]/<file>` holds, read straight from the files.
pub fn maildir_contents(dir: &Path, domain: &str) -> ContentSet {
    fn walk(dir: &Path, mailbox: &str, set: &mut ContentSet) {
        for e in std::fs::read_dir(dir).expect("read maildir folder") {
            let e = e.expect("dir entry");
            let p = e.path();
            if e.file_type().expect("file type").is_dir() {
                walk(&p, mailbox, set);
            } else {
                add(set, mailbox, &std::fs::read(&p).expect("read message file"));
            }
        }
    }
    let mut set = ContentSet::new();
    for user in std::fs::read_dir(dir).expect("read maildir") {
        let user = user.expect("dir entry");
        if !user.file_type().expect("file type").is_dir() {
            continue; // README.md, MANIFEST.tsv
        }
        let mailbox = format!("{}@{domain}", user.file_name().to_string_lossy());
        for top in std::fs::read_dir(user.path()).expect("read user dir") {
            let top = top.expect("dir entry");
            if top.file_type().expect("file type").is_dir() {
                walk(&top.path(), &mailbox, &mut set);
            }
        }
    }
    set
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn poll_until(deadline: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
