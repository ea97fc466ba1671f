//! The single-process mode end to end: EWS simulator → collector → in-process bus →
//! aggregator pipelines → repository in a directory; incremental passes; an aborted pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mailvault_collector::checkpoint_file::FileCheckpointStore;
use mailvault_collector::sync::CheckpointStore as _;
use mailvault_ews_sim::{ItemInfo, SimConfig, SimHandle, Simulator};
use mailvault_format::{InitOptions, KdfParams, Repository};
use mailvault_ops::local::{EVENTS_STREAM, LocalBackup, LocalEws, backup_once};
use mailvault_proto::events::v1::EventBatch;
use mailvault_proto::events_wire;
use mailvault_runtime::bus::{Bus, ConsumerConfig};
use mailvault_runtime::storage::DirStore;
use prost::Message as _;

const PASS: &[u8] = b"local test passphrase";

fn options(sim: &SimHandle, dir: &Path) -> LocalBackup {
    let mut o = LocalBackup::new(
        LocalEws::new(&sim.url(), "svc-mailvault", "secret"),
        sim.mailboxes(),
        dir.join("repo"),
        PASS.to_vec(),
        dir.join("state"),
    );
    o.init = Some(InitOptions {
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    });
    // Small enough that attachments travel as files, like the Object Store path.
    o.inline_limit = 64 * 1024;
    o
}

/// (mailbox, item id, change key) → MIME of every item the simulator holds.
fn sim_items(sim: &SimHandle) -> BTreeMap<(String, String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for mb in sim.mailboxes() {
        for f in sim.folders(&mb) {
            for it in sim.items(&f.id) {
                out.insert((mb.clone(), it.id, it.change_key), it.mime.to_vec());
            }
        }
    }
    out
}

async fn open_repo(dir: &Path) -> Repository {
    let store = std::sync::Arc::new(DirStore::open(dir.join("repo")).expect("store"));
    Repository::open(store, PASS)
        .await
        .expect("open repository")
}

/// Asserts every simulator item version is in the repository, byte-identical. A read-flag
/// change gives the item a new change key in the simulator (as in Exchange) but is collected
/// as an `ItemChange`, not a new version: `read_flipped` holds the versions from before.
async fn assert_all_stored(sim: &SimHandle, dir: &Path, read_flipped: &[ItemInfo]) -> usize {
    let repo = open_repo(dir).await;
    let mut want = sim_items(sim);
    for it in read_flipped {
        want.retain(|(_, id, _), _| *id != it.id);
    }
    for it in read_flipped {
        let mb = sim
            .mailboxes()
            .into_iter()
            .find(|m| {
                sim.folders(m)
                    .iter()
                    .any(|f| sim.items(&f.id).iter().any(|i| i.id == it.id))
            })
            .expect("mailbox of flipped item");
        want.insert((mb, it.id.clone(), it.change_key.clone()), it.mime.to_vec());
    }
    let mut missing = Vec::new();
    for ((mb, id, ck), mime) in &want {
        let mid = repo.manifest_id(mb, id, ck);
        if !repo.contains(&mid) {
            missing.push(format!("{mb} {id} {ck}"));
            continue;
        }
        let got = repo.read_item(&mid).await.expect("read item");
        assert!(got == *mime, "item {mb} {id} {ck} differs");
        let m = repo.manifest(&mid).await.expect("manifest");
        assert_eq!((&m.mailbox, &m.item_id, &m.change_key), (mb, id, ck));
    }
    assert!(
        missing.is_empty(),
        "{} of {} items missing, e.g. {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    want.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_backup_in_one_process() {
    let sim = Simulator::start(SimConfig::generated(11))
        .await
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");

    // An indexer stand-in attached to the events stream before the pass.
    let bus = Bus::new();
    mailvault_ops::local::ensure_streams(&bus, 4096).expect("streams");
    let events = bus
        .get_or_create_consumer(EVENTS_STREAM, ConsumerConfig::new("indexer", &[]))
        .expect("events consumer");
    let mut opts = options(&sim, dir.path());
    opts.bus = Some(bus.clone());

    let first = backup_once(opts.clone()).await.expect("first pass");
    let n = assert_all_stored(&sim, dir.path(), &[]).await;
    eprintln!(
        "first pass: {n} items, {:?} → {:.1} items/s; {first:?}",
        first.duration,
        n as f64 / first.duration.as_secs_f64()
    );
    assert!(first.summary.is_clean(), "{:?}", first.summary);
    assert_eq!(first.captured as usize, n);
    assert!(first.items >= n, "{} stored < {n}", first.items);
    assert!(first.bytes_logical > 0 && first.bytes_stored > 0);
    // Every item version announced in the event batches, waiting for the indexer.
    let pending = events.info().num_pending;
    let announced: usize = events
        .fetch(pending.max(1), usize::MAX, Duration::ZERO)
        .await
        .iter()
        .filter(|d| d.message.subject == events_wire::SUBJECT_BATCH)
        .map(|d| {
            EventBatch::decode(d.message.payload.clone())
                .expect("event batch")
                .stored
                .len()
        })
        .sum();
    assert!(announced >= n, "{announced} stored entries for {n} items");
    // Bodies in transit were cleaned up.
    let left = std::fs::read_dir(dir.path().join("state/bodies/ingest-bodies"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "bodies left behind");

    // ---- change a few items, delete some, flip read flags; then an incremental pass.
    let mb = sim.mailboxes()[0].clone();
    let pool: Vec<_> = sim
        .folders(&mb)
        .iter()
        .flat_map(|f| sim.items(&f.id))
        .filter(|i| i.item_class == "IPM.Note")
        .collect();
    assert!(pool.len() >= 9, "mailbox {mb} has {} mails", pool.len());
    for (k, it) in pool[..3].iter().enumerate() {
        let mut mime = it.mime.to_vec();
        mime.extend_from_slice(format!("\r\nedited {k}\r\n").as_bytes());
        sim.change_item(&it.id, &mime).expect("change");
    }
    for it in &pool[3..5] {
        sim.delete_item(&it.id).expect("delete");
    }
    for it in &pool[5..9] {
        sim.set_read(&it.id, !it.is_read).expect("set read");
    }
    sim.reset_stats();
    let second = backup_once(opts.clone()).await.expect("second pass");
    assert!(second.summary.is_clean(), "{:?}", second.summary);
    assert_all_stored(&sim, dir.path(), &pool[5..9]).await;
    let fetched = sim.stats().items_fetched;
    assert_eq!(fetched, 3, "only the changed items are downloaded again");
    assert_eq!(second.captured, 3);
    assert!(second.changes >= 6, "{second:?}"); // 2 deletes + 4 read flags
    assert_eq!(second.duplicates, 0);

    // ---- an idle pass downloads nothing.
    sim.reset_stats();
    let third = backup_once(opts).await.expect("third pass");
    assert_eq!(sim.stats().items_fetched, 0);
    assert_eq!((third.captured, third.items, third.changes), (0, 0, 0));
}

/// Whether some folder that holds items has a checkpoint under `state`. Empty folders
/// checkpoint at once; only a folder with items makes the next pass download less.
async fn item_folder_checkpointed(sim: &SimHandle, state: &Path) -> bool {
    let Ok(store) = FileCheckpointStore::open(state.join("checkpoints")) else {
        return false;
    };
    for mb in sim.mailboxes() {
        for f in sim.folders(&mb) {
            if !sim.items(&f.id).is_empty()
                && matches!(store.get_folder(&mb, &f.id).await, Ok(Some(_)))
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_pass_then_new_pass_loses_nothing() {
    let sim = Simulator::start(SimConfig::generated(23))
        .await
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&sim, dir.path());
    let total = sim.total_items() as u64;

    // Kill the pass part-way: once about a third of the items were downloaded and some folder
    // with items has checkpointed (which waits for its items to be durable, so on a loaded machine it can
    // come well after the download). The simulator then holds every request, so the pass
    // cannot finish before it is aborted.
    let run = tokio::spawn(backup_once(opts.clone()));
    sim.wait_for(|s| s.items_fetched >= total / 3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !item_folder_checkpointed(&sim, &dir.path().join("state")).await {
        assert!(
            !run.is_finished(),
            "the pass ended before any folder checkpoint was seen"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no folder checkpoint within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.hold();
    assert!(
        !run.is_finished(),
        "the pass ended before it could be aborted"
    );
    run.abort();
    assert!(run.await.expect_err("aborted").is_cancelled());
    sim.release();

    let repo = open_repo(dir.path()).await;
    let stored_before = repo.manifests().len();
    eprintln!("aborted after {stored_before} manifests of {total} items");

    sim.reset_stats();
    let again = backup_once(opts).await.expect("second pass");
    assert!(again.summary.is_clean(), "{:?}", again.summary);
    assert_all_stored(&sim, dir.path(), &[]).await;
    // The resumed pass does not start over: checkpointed folders are not downloaded again.
    assert!(
        sim.stats().items_fetched < total,
        "fetched {} of {total}",
        sim.stats().items_fetched
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), sim.shutdown()).await;
}

/// What the aggregator hands to the indexer of the same process is exactly what the
/// repository holds under that manifest id: the same bytes, the same item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_handed_to_the_indexer_match_the_repository() {
    let sim = Simulator::start(SimConfig::generated(12))
        .await
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let handoff = std::sync::Arc::new(mailvault_runtime::handoff::Handoff::new(256 << 20));
    let mut opts = options(&sim, dir.path());
    opts.handoff = Some(handoff.clone());
    let report = backup_once(opts).await.expect("pass");
    assert!(report.items > 0);

    let repo = open_repo(dir.path()).await;
    let (mut handed, mut inline_items) = (0, 0);
    for id in repo.manifests() {
        let m = repo.manifest(&id).await.expect("manifest");
        if m.properties.contains_key("mailvault.record") {
            assert!(
                handoff.take(&id).is_none(),
                "history record {id} handed off"
            );
            continue;
        }
        let bytes = repo.read_item(&id).await.expect("read item");
        if bytes.len() <= 64 * 1024 {
            inline_items += 1;
        }
        if let Some((hm, hb)) = handoff.take(&id) {
            handed += 1;
            assert_eq!(&hb[..], &bytes[..], "bytes of {id}");
            for (what, a, b) in [
                ("mailbox", &hm.mailbox, &m.mailbox),
                ("item id", &hm.item_id, &m.item_id),
                ("change key", &hm.change_key, &m.change_key),
                ("folder id", &hm.folder_id, &m.folder_id),
                ("item class", &hm.item_class, &m.item_class),
            ] {
                assert_eq!(a, b, "{what} of {id}");
            }
            assert_eq!(hm.folder_path, m.folder_path);
            assert_eq!(hm.size, m.size);
            assert_eq!(hm.is_read, m.is_read);
            assert_eq!(hm.collected_unix_ms, m.collected_unix_ms);
        }
    }
    // Bodies over the inline limit travel as files and are read back; every inline one is
    // handed over (the budget holds them all).
    assert_eq!(handed, inline_items, "every inline item was handed over");
    assert_eq!(
        handoff.bytes(),
        0,
        "nothing handed over that the repository lacks"
    );
}

/// Exchange's EWS virtual directory has Windows authentication on and Basic usually off: the
/// single-process backup logs on with NTLM by default, and Basic against such a server fails
/// with an error that names the cause instead of storing nothing quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_logs_on_with_ntlm_where_basic_is_off() {
    let mut cfg = SimConfig::generated(13);
    cfg.basic_auth = false;
    let sim = Simulator::start(cfg).await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");

    let basic_dir = dir.path().join("basic");
    let mut basic = options(&sim, &basic_dir);
    basic.ews.auth = mailvault_collector::ews::client::EwsAuth::Basic;
    let refused = backup_once(basic).await;
    let text = match &refused {
        Ok(r) => {
            assert!(
                !r.summary.is_clean(),
                "Basic accepted by an NTLM-only server"
            );
            assert_eq!(r.items, 0);
            r.summary
                .mailboxes
                .iter()
                .map(|m| m.error.clone())
                .collect::<Vec<_>>()
                .join("; ")
        }
        Err(e) => format!("{e:#}"),
    };
    eprintln!("Basic against an NTLM-only server: {text}");
    assert!(
        text.to_lowercase().contains("denied") || text.contains("401"),
        "the error names the refused logon: {text}"
    );

    let opts = options(&sim, dir.path());
    assert_eq!(
        opts.ews.auth,
        mailvault_collector::ews::client::EwsAuth::Ntlm
    );
    let report = backup_once(opts).await.expect("NTLM pass");
    assert!(report.summary.is_clean(), "{:?}", report.summary);
    let n = assert_all_stored(&sim, dir.path(), &[]).await;
    assert!(n > 0);
    assert!(sim.stats().ntlm_logons > 0, "{:?}", sim.stats());
}
