//! A minimal SOAP client for the tests: one HTTP/1.1 connection per request.

#![allow(dead_code)]

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use mailvault_ews_sim::xml::{self, El};

pub const SVC: (&str, &str) = ("svc-mailvault", "secret");

pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn xml(&self) -> El {
        xml::parse(self.body.as_bytes()).expect("response is well-formed XML")
    }

    /// The first element with this local name, depth first.
    pub fn find(&self, name: &str) -> El {
        find(&self.xml(), name)
            .cloned()
            .unwrap_or_else(|| panic!("no <{name}> in {}", self.body))
    }

    pub fn all(&self, name: &str) -> Vec<El> {
        let mut out = Vec::new();
        collect(&self.xml(), name, &mut out);
        out
    }

    pub fn fault_code(&self) -> Option<String> {
        let x = self.xml();
        find(&x, "Fault")
            .and_then(|f| find(f, "ResponseCode"))
            .map(|c| c.text.clone())
    }
}

pub fn find<'a>(el: &'a El, name: &str) -> Option<&'a El> {
    if el.name == name {
        return Some(el);
    }
    el.children.iter().find_map(|c| find(c, name))
}

pub fn collect(el: &El, name: &str, out: &mut Vec<El>) {
    if el.name == name {
        out.push(el.clone());
    }
    for c in &el.children {
        collect(c, name, out);
    }
}

pub fn envelope(impersonate: Option<&str>, body: &str) -> String {
    let imp = impersonate
        .map(|a| format!("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{a}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\"><soap:Header><t:RequestServerVersion Version=\"Exchange2016\"/>{imp}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

pub async fn post(addr: std::net::SocketAddr, auth: Option<(&str, &str)>, body: String) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to simulator");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::post("/EWS/Exchange.asmx")
        .header("host", addr.to_string())
        .header("content-type", "text/xml; charset=utf-8");
    if let Some((u, p)) = auth {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req = req.header("authorization", format!("Basic {cred}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = sender.send_request(req).await.expect("send request");
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn call(addr: std::net::SocketAddr, mailbox: &str, body: &str) -> Reply {
    post(addr, Some(SVC), envelope(Some(mailbox), body)).await
}

pub fn dist(id: &str) -> String {
    format!("<t:DistinguishedFolderId Id=\"{id}\"/>")
}

pub fn fid(id: &str) -> String {
    format!("<t:FolderId Id=\"{id}\"/>")
}

pub fn sync_items(folder: &str, state: &str, max: usize) -> String {
    format!(
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"message:IsRead\"/></t:AdditionalProperties></m:ItemShape><m:SyncFolderId>{folder}</m:SyncFolderId><m:SyncState>{state}</m:SyncState><m:MaxChangesReturned>{max}</m:MaxChangesReturned></m:SyncFolderItems>"
    )
}

pub fn get_items_mime(ids: &[String]) -> String {
    let ids: String = ids
        .iter()
        .map(|i| format!("<t:ItemId Id=\"{i}\"/>"))
        .collect();
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"
    )
}

pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("valid base64")
}
