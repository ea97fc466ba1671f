//! NTLM (MS-NLMP, NTLMv2) client messages, from the `sspi` crate (Devolutions' maintained pure-Rust
//! SSPI): NEGOTIATE, then AUTHENTICATE from the server's CHALLENGE. The HTTP side (which
//! connection carries which message) is in `client.rs`.

use base64::Engine as _;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, DataRepresentation,
    SecurityBuffer, Sspi as _, SspiImpl as _, Username,
};

/// An NTLM failure on our side (bad user name syntax, unparsable CHALLENGE, …).
#[derive(Debug, thiserror::Error)]
#[error("NTLM: {0}")]
pub struct NtlmError(String);

fn err(e: impl std::fmt::Display) -> NtlmError {
    NtlmError(e.to_string())
}

/// One NTLM handshake (a fresh one per connection to authenticate).
pub struct NtlmHandshake {
    ctx: sspi::Ntlm,
    creds: <sspi::Ntlm as sspi::SspiImpl>::CredentialsHandle,
    target: String,
}

impl std::fmt::Debug for NtlmHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmHandshake")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl NtlmHandshake {
    /// `username` as `DOMAIN\user`, `user@domain` or `user`; `host` names the service
    /// (`HTTP/<host>`).
    pub fn new(username: &str, password: &str, host: &str) -> Result<Self, NtlmError> {
        let mut ctx = sspi::Ntlm::new();
        let identity = AuthIdentity {
            username: Username::parse(username).map_err(err)?,
            password: password.to_owned().into(),
        };
        let acq = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ctx)
            .map_err(err)?;
        Ok(NtlmHandshake {
            ctx,
            creds: acq.credentials_handle,
            target: format!("HTTP/{host}"),
        })
    }

    fn step(&mut self, input: &[u8]) -> Result<Vec<u8>, NtlmError> {
        let mut input = vec![SecurityBuffer::new(input.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut builder = self
            .ctx
            .initialize_security_context()
            .with_credentials_handle(&mut self.creds)
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&self.target)
            .with_input(&mut input)
            .with_output(&mut output);
        self.ctx
            .initialize_security_context_impl(&mut builder)
            .map_err(err)?
            .resolve_to_result()
            .map_err(err)?;
        output
            .pop()
            .map(|b| b.buffer)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| NtlmError("no token produced".into()))
    }

    /// The NEGOTIATE message, base64 (for `Authorization: NTLM …`).
    pub fn negotiate(&mut self) -> Result<String, NtlmError> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.step(&[])?))
    }

    /// The AUTHENTICATE message answering `challenge` (the base64 token of the server's
    /// `WWW-Authenticate: NTLM …`), base64.
    pub fn authenticate(&mut self, challenge_b64: &str) -> Result<String, NtlmError> {
        let challenge = base64::engine::general_purpose::STANDARD
            .decode(challenge_b64.trim())
            .map_err(|e| NtlmError(format!("CHALLENGE is not base64: {e}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(self.step(&challenge)?))
    }
}

/// The NTLM CHALLENGE token among `WWW-Authenticate` values (`NTLM <b64>` or `Negotiate <b64>`
/// carrying raw NTLMSSP).
pub fn challenge_token<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    values.into_iter().find_map(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let is_ntlm =
            scheme.eq_ignore_ascii_case("ntlm") || scheme.eq_ignore_ascii_case("negotiate");
        let token = token.trim();
        (is_ntlm && !token.is_empty()).then_some(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_is_an_ntlmssp_type1() {
        let mut h = NtlmHandshake::new("CONTOSO\\svc", "pw", "exch01").expect("handshake");
        let t1 = base64::engine::general_purpose::STANDARD
            .decode(h.negotiate().expect("negotiate"))
            .expect("base64");
        assert_eq!(&t1[..8], b"NTLMSSP\0");
        assert_eq!(&t1[8..12], &1u32.to_le_bytes());
    }

    #[test]
    fn garbage_challenge_is_an_error() {
        let mut h = NtlmHandshake::new("svc", "pw", "exch01").expect("handshake");
        h.negotiate().expect("negotiate");
        assert!(h.authenticate("bm90IGEgY2hhbGxlbmdl").is_err());
        assert!(h.authenticate("%%%").is_err());
    }

    #[test]
    fn finds_the_challenge_token() {
        assert_eq!(
            challenge_token(["Basic realm=\"x\"", "NTLM TlRMTVNTUAACAAAA"]),
            Some("TlRMTVNTUAACAAAA")
        );
        assert_eq!(challenge_token(["Negotiate abc"]), Some("abc"));
        assert_eq!(challenge_token(["Negotiate", "NTLM"]), None);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(128)))]

            /// A hostile server's CHALLENGE (arbitrary bytes behind a valid NTLMSSP type-2
            /// header, or none) is an error or an answer, never a panic.
            #[test]
            fn a_hostile_challenge_is_an_error_or_an_answer(
                header in any::<bool>(),
                body in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let mut raw = Vec::new();
                if header {
                    raw.extend_from_slice(b"NTLMSSP\0");
                    raw.extend_from_slice(&2u32.to_le_bytes());
                }
                raw.extend_from_slice(&body);
                let mut h = NtlmHandshake::new("CONTOSO\\svc", "pw", "exch01").expect("handshake");
                h.negotiate().expect("negotiate");
                let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
                let _ = h.authenticate(&b64);
            }
        }
    }
}
