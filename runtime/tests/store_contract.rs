//! The BlobStore contract against the directory store and against a real Garage (S3).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mailvault_format::store::{BlobStore, PutOutcome, StoreErrorKind, contract};
use mailvault_harness::Garage;
use mailvault_runtime::storage::{DirStore, S3Config, S3Store, Secret, open_store};

fn s3_config(garage: &Garage, prefix: &str) -> S3Config {
    let mut cfg = S3Config::new(garage.bucket());
    cfg.prefix = prefix.to_owned();
    cfg.endpoint = Some(garage.endpoint());
    cfg.region = garage.region().to_owned();
    cfg.access_key_id = Some(garage.access_key_id().to_owned());
    cfg.secret_access_key = Some(Secret::new(garage.secret_access_key()));
    cfg
}

/// Starts Garage off the async threads (it blocks while polling for readiness).
async fn garage() -> Garage {
    tokio::task::spawn_blocking(|| Garage::start().expect("garage starts"))
        .await
        .expect("join")
}

#[tokio::test]
async fn dir_store_meets_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(dir.path().join("repo")).expect("open");
    contract::run(&store, "").await;
    // Nothing left behind: no temporary files anywhere.
    let leftovers: Vec<_> = walk(dir.path().join("repo"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(p.clone()));
        }
        out.push(p);
    }
    out
}

#[tokio::test]
async fn dir_store_hides_temp_files_and_keeps_the_first_of_racing_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("open"));
    store
        .put("packs/aa/one", Bytes::from_static(b"1"))
        .await
        .expect("put");
    std::fs::write(dir.path().join("packs/aa/.tmp-crashed-writer"), b"junk").expect("write");
    assert_eq!(
        store.list("packs/").await.expect("list"),
        vec!["packs/aa/one".to_owned()]
    );

    let writers: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data = Bytes::from(vec![i; 4096]);
                (i, store.put("race/obj", data).await.expect("put"))
            })
        })
        .collect();
    let mut created = Vec::new();
    for w in writers {
        let (i, outcome) = w.await.expect("join");
        if outcome == PutOutcome::Created {
            created.push(i);
        }
    }
    assert_eq!(created.len(), 1, "exactly one writer creates: {created:?}");
    let stored = store.get("race/obj").await.expect("get");
    assert_eq!(stored, Bytes::from(vec![created[0]; 4096]));
}

#[tokio::test]
async fn dir_store_creates_the_pack_fan_out_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(dir.path()).expect("open");
    store
        .create_dirs(mailvault_format::id::names::pack_dirs())
        .expect("create");
    let fan_out: Vec<String> = std::fs::read_dir(dir.path().join("packs"))
        .expect("list packs/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(fan_out.len(), 256);
    // Again: nothing to do. Empty directories are no objects.
    store
        .create_dirs(mailvault_format::id::names::pack_dirs())
        .expect("create again");
    assert!(store.list("packs/").await.expect("list").is_empty());
    let name = format!("packs/ab/{}", "ab".repeat(32));
    store
        .put(&name, Bytes::from_static(b"pack"))
        .await
        .expect("put");
    assert_eq!(store.list("packs/").await.expect("list"), vec![name]);
    // Names are checked like object names.
    assert!(store.create_dirs(["../outside".to_owned()]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_meets_the_contract_on_garage() {
    let garage = garage().await;
    let store = S3Store::connect(&s3_config(&garage, ""))
        .await
        .expect("connect");
    contract::run(&store, "").await;

    // The SDK's default HTTP client (what AWS endpoints use) meets it too; a custom endpoint
    // uses mailvault's quick-ACK connector unless told otherwise.
    let mut sdk_client = s3_config(&garage, "sdk-client");
    sdk_client.tcp_quickack = Some(false);
    let sdk_store = S3Store::connect(&sdk_client).await.expect("connect");
    contract::run(&sdk_store, "").await;

    // The same rules under a store prefix, opened from a URL with the secret in a file.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_file = secret_dir.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{}\n", garage.secret_access_key())).expect("write");
    let mut cfg = s3_config(&garage, "");
    cfg.secret_access_key = None;
    cfg.secret_access_key_file = Some(secret_file);
    cfg.bucket = String::new();
    let url = format!("s3://{}/tenant-a/repo", garage.bucket());
    let prefixed = open_store(&url, Some(cfg)).await.expect("open_store");
    contract::run(prefixed.as_ref(), "").await;
    contract::run(prefixed.as_ref(), "nested/").await;

    // The prefix really is a prefix of the bucket keys, and listing strips it.
    prefixed
        .put("keys/k1", Bytes::from_static(b"key"))
        .await
        .expect("put");
    assert_eq!(
        store.list("tenant-a/").await.expect("list"),
        vec!["tenant-a/repo/keys/k1".to_owned()]
    );
    assert_eq!(
        prefixed.list("").await.expect("list"),
        vec!["keys/k1".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_listing_paginates() {
    let garage = garage().await;
    let store = S3Store::connect(&s3_config(&garage, "p"))
        .await
        .expect("connect");
    // ListObjectsV2 returns at most 1000 keys a page.
    let names: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
    futures::future::try_join_all(names.chunks(100).map(|chunk| {
        let store = &store;
        async move {
            for n in chunk {
                store.put(n, Bytes::from_static(b"x")).await?;
            }
            Ok::<_, mailvault_format::store::StoreError>(())
        }
    }))
    .await
    .expect("puts");
    assert_eq!(store.list("many/").await.expect("list"), names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_transient_and_names_the_object_then_recovers() {
    let mut garage = garage().await;
    let mut cfg = s3_config(&garage, "outage");
    cfg.max_attempts = 2;
    cfg.initial_backoff = Duration::from_millis(10);
    cfg.max_backoff = Duration::from_millis(50);
    cfg.connect_timeout = Duration::from_secs(1);
    let store = S3Store::connect(&cfg).await.expect("connect");
    store
        .put("packs/before", Bytes::from_static(b"before"))
        .await
        .expect("put before outage");

    let garage = tokio::task::spawn_blocking(move || {
        garage.stop();
        garage
    })
    .await
    .expect("join");

    let err = store
        .get("packs/before")
        .await
        .expect_err("get during outage");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("packs/before"), "{err}");
    assert!(err.to_string().contains("get"), "{err}");

    let err = store
        .put("packs/during", Bytes::from_static(b"during"))
        .await
        .expect_err("put during outage");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("packs/during"), "{err}");
    assert!(err.to_string().contains("put"), "{err}");

    let _garage = tokio::task::spawn_blocking(move || {
        let mut garage = garage;
        garage.start_again().expect("garage starts again");
        garage
    })
    .await
    .expect("join");

    assert_eq!(
        store
            .put("packs/during", Bytes::from_static(b"during"))
            .await
            .expect("put after outage"),
        PutOutcome::Created
    );
    assert_eq!(
        store.get("packs/before").await.expect("data kept"),
        Bytes::from_static(b"before")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bad_credentials_are_permanent() {
    let garage = garage().await;
    let mut cfg = s3_config(&garage, "");
    cfg.secret_access_key = Some(Secret::new("0".repeat(64)));
    cfg.max_attempts = 1;
    let store = S3Store::connect(&cfg).await.expect("connect");
    let err = store
        .put("packs/x", Bytes::from_static(b"x"))
        .await
        .expect_err("forbidden");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("packs/x"), "{err}");
    assert!(
        !err.to_string().contains(garage.secret_access_key()),
        "{err}"
    );
}

/// An `https://` endpoint goes through TLS: against Garage's plain-HTTP port the handshake
/// fails, and that failure is transient (a connection problem), like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_https_endpoint_speaks_tls() {
    let garage = garage().await;
    let mut cfg = s3_config(&garage, "");
    cfg.endpoint = Some(garage.endpoint().replacen("http://", "https://", 1));
    cfg.max_attempts = 1;
    let store = S3Store::connect(&cfg).await.expect("connect");
    let err = store.get("packs/x").await.expect_err("no TLS on that port");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
}
