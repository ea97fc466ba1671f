//! HttpEws against a tiny scripted HTTP/1.1 server on loopback: headers sent, streaming parse of
//! a large GetItem response, back-off on ErrorServerBusy / HTTP 503, and the concurrency cap.

mod support;

use support::http::{Request, Response, Stats, serve};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mailvault_collector::ews::client::{HttpEws, HttpEwsConfig};
use mailvault_collector::ews::{ErrorKind, Ews, ItemId, Mailbox};
use mailvault_collector::metrics::Metrics;
use mailvault_collector::secret::Secret;
use mailvault_collector::throttle::Backoff;

fn client(url: String, per_server: usize, per_account: usize) -> (HttpEws, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let c = HttpEws::new(
        HttpEwsConfig {
            url,
            username: "svc".into(),
            password: Secret::new("pw"),
            auth: mailvault_collector::ews::client::EwsAuth::Basic,
            server_version: "Exchange2013_SP1".into(),
            impersonation: true,
            ca_file: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(30),
            per_server_concurrency: per_server,
            per_account_concurrency: per_account,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(200),
                max_retries: 6,
            },
        },
        metrics.clone(),
    )
    .expect("client");
    (c, metrics)
}

const OPEN: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#;
const CLOSE: &str = "</s:Body></s:Envelope>";

fn get_item_ok(ids: &[String], mime: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(mime);
    let mut s = format!(
        r#"{OPEN}<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>"#
    );
    for id in ids {
        s.push_str(&format!(
            r#"<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{b64}</t:MimeContent><t:ItemId Id="{id}" ChangeKey="ck-{id}"/><t:ItemClass>IPM.Note</t:ItemClass></t:Message></m:Items></m:GetItemResponseMessage>"#
        ));
    }
    s.push_str("</m:ResponseMessages></m:GetItemResponse>");
    s.push_str(CLOSE);
    s
}

fn server_busy(ms: u64) -> String {
    format!(
        r#"{OPEN}<s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring>The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">{ms}</t:Value></t:MessageXml></detail></s:Fault>{CLOSE}"#
    )
}

fn requested_ids(body: &str) -> Vec<String> {
    body.split("<t:ItemId Id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn headers_and_large_streamed_get_item() {
    let mime: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcdefgh\r\n"[(i % 10) as usize])
        .collect();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Request>::new()));
    let seen2 = seen.clone();
    let mime2 = mime.clone();
    let url = serve(
        Arc::new(move |_, req: &Request| {
            seen2.lock().expect("lock").push(req.clone());
            Response {
                status: 200,
                headers: vec![],
                body: get_item_ok(&requested_ids(&req.body), &mime2),
            }
        }),
        Duration::ZERO,
        Arc::default(),
    )
    .await;
    let (c, _) = client(url, 4, 2);
    let mb = Mailbox {
        smtp: "carol@example.com".into(),
    };
    let ids = vec![
        ItemId {
            id: "A1".into(),
            change_key: String::new(),
        },
        ItemId {
            id: "A2".into(),
            change_key: String::new(),
        },
    ];
    let res = c.get_items_mime(&mb, &ids).await.expect("get items");
    assert_eq!(res.len(), 2);
    for r in &res {
        let item = r.as_ref().expect("item");
        assert_eq!(item.mime.len(), mime.len());
        assert!(item.mime == mime, "MIME bytes identical");
    }
    let reqs = seen.lock().expect("lock").clone();
    let req = &reqs[0];
    assert_eq!(req.header("X-AnchorMailbox"), Some("carol@example.com"));
    assert_eq!(
        req.header("SOAPAction"),
        Some("\"http://schemas.microsoft.com/exchange/services/2006/messages/GetItem\"")
    );
    assert!(
        req.header("Authorization")
            .is_some_and(|a| a.starts_with("Basic "))
    );
    assert!(
        req.body
            .contains("<t:PrimarySmtpAddress>carol@example.com</t:PrimarySmtpAddress>")
    );
    assert!(
        req.body
            .contains(r#"RequestServerVersion Version="Exchange2013_SP1""#)
    );
    assert!(
        req.body
            .contains("<t:IncludeMimeContent>true</t:IncludeMimeContent>")
    );
}

#[tokio::test]
async fn server_busy_and_503_are_retried_after_the_back_off() {
    let url = serve(
        Arc::new(|n, req: &Request| match n {
            0 => Response {
                status: 500,
                headers: vec![],
                body: server_busy(300),
            },
            1 => Response {
                status: 503,
                headers: vec![("Retry-After", "1".into())],
                body: String::new(),
            },
            _ => Response {
                status: 200,
                headers: vec![],
                body: get_item_ok(&requested_ids(&req.body), b"Subject: x\r\n\r\n"),
            },
        }),
        Duration::ZERO,
        Arc::default(),
    )
    .await;
    let (c, metrics) = client(url, 4, 2);
    let mb = Mailbox {
        smtp: "dave@example.com".into(),
    };
    let start = Instant::now();
    let res = c
        .get_items_mime(
            &mb,
            &[ItemId {
                id: "X".into(),
                change_key: String::new(),
            }],
        )
        .await
        .expect("eventually succeeds");
    let waited = start.elapsed();
    assert!(res[0].is_ok());
    assert!(
        waited >= Duration::from_millis(1300),
        "honoured 300 ms + 1 s, waited {waited:?}"
    );
    assert_eq!(Metrics::get(&metrics.throttled), 2);
    assert_eq!(Metrics::get(&metrics.ews_retries), 2);
}

#[tokio::test]
async fn retry_cap_and_typed_errors() {
    let url = serve(
        Arc::new(|_, _: &Request| Response {
            status: 503,
            headers: vec![],
            body: String::new(),
        }),
        Duration::ZERO,
        Arc::default(),
    )
    .await;
    let (c, metrics) = client(url, 4, 2);
    let mb = Mailbox {
        smtp: "erin@example.com".into(),
    };
    let err = c
        .sync_folder_items(&mb, "AAFolder", None, 512)
        .await
        .expect_err("always busy");
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(Metrics::get(&metrics.ews_requests), 7, "1 try + 6 retries");
    let s = err.to_string();
    assert!(
        s.contains("erin@example.com") && s.contains("AAFolder"),
        "{s}"
    );

    // A 200 with a truncated body is a malformed response, not retried.
    let url = serve(
        Arc::new(|_, _: &Request| Response {
            status: 200,
            headers: vec![],
            body: format!("{OPEN}<m:SyncFolderItemsResponse xmlns:m=\"x\"><m:Resp"),
        }),
        Duration::ZERO,
        Arc::default(),
    )
    .await;
    let (c, metrics) = client(url, 4, 2);
    let err = c
        .sync_folder_items(&mb, "AAFolder", None, 512)
        .await
        .expect_err("truncated");
    assert_eq!(err.kind(), ErrorKind::MalformedResponse);
    assert_eq!(Metrics::get(&metrics.ews_requests), 1);
}

#[tokio::test]
async fn concurrency_never_exceeds_the_limits() {
    let stats = Arc::new(Stats::default());
    let url = serve(
        Arc::new(|_, req: &Request| Response {
            status: 200,
            headers: vec![],
            body: get_item_ok(&requested_ids(&req.body), b"Subject: y\r\n\r\n"),
        }),
        Duration::from_millis(30),
        stats.clone(),
    )
    .await;
    let (c, _) = client(url, 3, 2);
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mb = Mailbox {
                smtp: format!("user{}@example.com", i % 4),
            };
            c.get_items_mime(
                &mb,
                &[ItemId {
                    id: format!("I{i}"),
                    change_key: String::new(),
                }],
            )
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("ok");
    }
    let max = stats.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 3, "server limit 3, saw {max}");
    assert!(max >= 2, "requests did run concurrently ({max})");
}

#[tokio::test]
async fn one_account_never_exceeds_its_own_limit() {
    let stats = Arc::new(Stats::default());
    let url = serve(
        Arc::new(|_, req: &Request| Response {
            status: 200,
            headers: vec![],
            body: get_item_ok(&requested_ids(&req.body), b"Subject: z\r\n\r\n"),
        }),
        Duration::from_millis(30),
        stats.clone(),
    )
    .await;
    let (c, _) = client(url, 8, 2);
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mb = Mailbox {
                smtp: "same@example.com".into(),
            };
            c.get_items_mime(
                &mb,
                &[ItemId {
                    id: format!("J{i}"),
                    change_key: String::new(),
                }],
            )
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("ok");
    }
    let max = stats.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 2, "per-account limit 2, saw {max}");
}
