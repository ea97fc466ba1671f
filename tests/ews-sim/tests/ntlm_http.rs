//! NTLM over HTTP, message by message on raw HTTP/1.1 connections: the 401 offers Negotiate,
//! NTLM and Basic; NEGOTIATE → CHALLENGE → AUTHENTICATE on one connection serves the request;
//! the connection then stays authenticated (as on IIS) while another connection does not; an
//! AUTHENTICATE for a wrong password is refused.

mod common;

use base64::Engine as _;
use common::{dist, envelope};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use mailvault_ews_sim::{SimConfig, Simulator};
use sspi::{
    AuthIdentity, AuthIdentityBuffers, BufferType, ClientRequestFlags, CredentialUse,
    DataRepresentation, SecurityBuffer, Sspi as _, SspiImpl as _, Username,
};

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
}

struct Answer {
    status: u16,
    www_authenticate: Vec<String>,
    body: String,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("http handshake");
        tokio::spawn(conn);
        Conn { sender, addr }
    }

    async fn post(&mut self, authorization: Option<String>, body: String) -> Answer {
        let mut req = hyper::Request::post("/EWS/Exchange.asmx")
            .header("host", self.addr.to_string())
            .header("content-type", "text/xml; charset=utf-8");
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
            .await
            .expect("send request (on the same connection)");
        let status = resp.status().as_u16();
        let www_authenticate = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii header").to_owned())
            .collect();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            www_authenticate,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// sspi's NTLM initiator, one step per call.
struct Client {
    ctx: sspi::Ntlm,
    creds: Option<AuthIdentityBuffers>,
}

impl Client {
    fn new(user: &str, password: &str) -> Self {
        let mut ctx = sspi::Ntlm::new();
        let identity = AuthIdentity {
            username: Username::parse(user).expect("user name"),
            password: password.to_owned().into(),
        };
        let creds = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ctx)
            .expect("credentials")
            .credentials_handle;
        Client { ctx, creds }
    }

    /// The next token, as an `Authorization: NTLM …` value.
    fn step(&mut self, input: &[u8]) -> String {
        let mut input = vec![SecurityBuffer::new(input.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut b = self
            .ctx
            .initialize_security_context()
            .with_credentials_handle(&mut self.creds)
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name("HTTP/127.0.0.1")
            .with_input(&mut input)
            .with_output(&mut output);
        self.ctx
            .initialize_security_context_impl(&mut b)
            .expect("initialize")
            .resolve_to_result()
            .expect("client step");
        let token = output.pop().expect("token").buffer;
        format!(
            "NTLM {}",
            base64::engine::general_purpose::STANDARD.encode(token)
        )
    }
}

/// The CHALLENGE bytes of a 401.
fn challenge_of(a: &Answer) -> Vec<u8> {
    assert_eq!(a.status, 401);
    let v = a
        .www_authenticate
        .iter()
        .find_map(|v| v.strip_prefix("NTLM "))
        .unwrap_or_else(|| panic!("no NTLM challenge in {:?}", a.www_authenticate));
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("base64 challenge")
}

fn get_inbox(mailbox: &str) -> String {
    envelope(
        Some(mailbox),
        &format!(
            "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>",
            dist("inbox")
        ),
    )
}

#[tokio::test]
async fn ntlm_handshake_authenticates_the_connection() {
    let mut sc = SimConfig::generated(3);
    sc.basic_auth = true;
    let sim = Simulator::start(sc).await.expect("start");
    let addr = sim.addr();
    let mb = sim.mailboxes()[0].clone();
    let mut a = Conn::open(addr).await;

    let anon = a.post(None, get_inbox(&mb)).await;
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.www_authenticate,
        vec!["Negotiate", "NTLM", "Basic realm=\"mailvault-ews-sim\""]
    );

    let mut client = Client::new("CONTOSO\\svc-mailvault", "secret");
    let negotiate = client.step(&[]);
    // The NEGOTIATE may come without a body (or with the request; either way it is not served).
    let challenge = challenge_of(&a.post(Some(negotiate), String::new()).await);
    assert_eq!(&challenge[..8], b"NTLMSSP\0");
    let authenticate = client.step(&challenge);
    let served = a.post(Some(authenticate), get_inbox(&mb)).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(served.body.contains("GetFolderResponseMessage"));

    // Same connection, no credentials: still authenticated.
    let again = a.post(None, get_inbox(&mb)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    // Another connection is not.
    let mut b = Conn::open(addr).await;
    assert_eq!(b.post(None, get_inbox(&mb)).await.status, 401);

    let s = sim.stats();
    assert_eq!(s.ntlm_logons, 1);
    assert_eq!(s.count("GetFolder"), 2);
    assert_eq!(s.connections, 2);
    assert_eq!(s.auth_failures, 2, "the two anonymous requests");
}

#[tokio::test]
async fn ntlm_wrong_password_and_misplaced_authenticate_are_refused() {
    let mut sc = SimConfig::generated(3);
    sc.basic_auth = false;
    let sim = Simulator::start(sc).await.expect("start");
    let addr = sim.addr();
    let mb = sim.mailboxes()[0].clone();

    let mut a = Conn::open(addr).await;
    let mut client = Client::new("svc-mailvault", "wrong");
    let challenge = challenge_of(&a.post(Some(client.step(&[])), String::new()).await);
    let refused = a.post(Some(client.step(&challenge)), get_inbox(&mb)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.www_authenticate,
        vec!["Negotiate", "NTLM"],
        "no Basic when off"
    );

    // A right AUTHENTICATE sent on another connection than its NEGOTIATE proves nothing there.
    let mut client = Client::new("svc-mailvault", "secret");
    let challenge = challenge_of(&a.post(Some(client.step(&[])), String::new()).await);
    let mut b = Conn::open(addr).await;
    let elsewhere = b.post(Some(client.step(&challenge)), get_inbox(&mb)).await;
    assert_eq!(elsewhere.status, 401);

    // Basic is refused when switched off, even with the right password.
    let basic = base64::engine::general_purpose::STANDARD.encode("svc-mailvault:secret");
    let mut c = Conn::open(addr).await;
    assert_eq!(
        c.post(Some(format!("Basic {basic}")), get_inbox(&mb))
            .await
            .status,
        401
    );

    let s = sim.stats();
    assert_eq!(s.ntlm_logons, 0);
    assert_eq!(s.auth_failures, 3);
    assert_eq!(s.total_requests, 0);
}
