//! NTLM (MS-NLMP) acceptor for the simulator, on top of the `sspi` crate: NEGOTIATE → CHALLENGE,
//! then AUTHENTICATE verified against the configured accounts' passwords.
//!
//! `sspi`'s acceptor proves the password through the AUTHENTICATE message's MIC (keyed with the
//! session key, which derives from the NTLMv2 hash); a message without a MIC would pass with any
//! password. So every AUTHENTICATE is first tried against a random password: if that "succeeds",
//! the message proves nothing and is refused (Windows servers can require the MIC the same
//! way). Clients with NTLMv2 and a server timestamp in the challenge (every current one, and
//! the collector) always send a MIC.

use rand::Rng as _;
use sspi::{
    AuthIdentity, AuthIdentityBuffers, BufferType, DataRepresentation, SecurityBuffer,
    SecurityStatus, ServerRequestFlags, Sspi as _, SspiEx as _, SspiImpl as _,
};

use crate::Account;

/// Why an NTLM exchange failed (the client then gets a fresh 401).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NtlmError {
    #[error("not an NTLMSSP message (SPNEGO/Kerberos tokens are not supported)")]
    NotNtlm,
    #[error("unexpected NTLM message type {0}")]
    UnexpectedType(u32),
    #[error("AUTHENTICATE without a preceding NEGOTIATE on this connection")]
    NoPendingChallenge,
    #[error("NTLM message rejected: {0}")]
    Sspi(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("AUTHENTICATE carries no MIC, so it cannot prove the password")]
    Unverifiable,
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
}

fn sspi_err(e: impl std::fmt::Display) -> NtlmError {
    NtlmError::Sspi(e.to_string())
}

/// `NTLMSSP\0` followed by the message type (little-endian u32).
pub(crate) fn message_type(token: &[u8]) -> Result<u32, NtlmError> {
    if token.len() < 12 || &token[..8] != b"NTLMSSP\0" {
        return Err(NtlmError::NotNtlm);
    }
    let mut t = [0u8; 4];
    t.copy_from_slice(&token[8..12]);
    Ok(u32::from_le_bytes(t))
}

/// A server context waiting for the client's AUTHENTICATE.
#[derive(Debug)]
pub(crate) struct Pending {
    ctx: sspi::Ntlm,
}

fn accept(ctx: &mut sspi::Ntlm, token: &[u8]) -> Result<(SecurityStatus, Vec<u8>), NtlmError> {
    let mut creds: Option<AuthIdentityBuffers> = None;
    let mut input = vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)];
    let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
    let builder = ctx
        .accept_security_context()
        .with_credentials_handle(&mut creds)
        .with_context_requirements(ServerRequestFlags::ALLOCATE_MEMORY)
        .with_target_data_representation(DataRepresentation::Native)
        .with_input(&mut input)
        .with_output(&mut output);
    let result = ctx
        .accept_security_context_impl(builder)
        .map_err(sspi_err)?
        .resolve_to_result()
        .map_err(sspi_err)?;
    let out = output.pop().map(|b| b.buffer).unwrap_or_default();
    Ok((result.status, out))
}

/// NEGOTIATE (type 1) → the CHALLENGE (type 2) to send back, and the context to keep for the
/// connection.
pub(crate) fn challenge(negotiate: &[u8]) -> Result<(Pending, Vec<u8>), NtlmError> {
    match message_type(negotiate)? {
        1 => {}
        t => return Err(NtlmError::UnexpectedType(t)),
    }
    let mut ctx = sspi::Ntlm::new();
    let (_, out) = accept(&mut ctx, negotiate)?;
    Ok((Pending { ctx }, out))
}

/// AUTHENTICATE (type 3) → the index of the account it proves.
pub(crate) fn authenticate(
    pending: Pending,
    token: &[u8],
    accounts: &[Account],
    account_key: fn(&str) -> String,
) -> Result<usize, NtlmError> {
    match message_type(token)? {
        3 => {}
        t => return Err(NtlmError::UnexpectedType(t)),
    }
    let mut ctx = pending.ctx;
    accept(&mut ctx, token)?;
    let user = ctx.query_context_names().map_err(sspi_err)?.username;
    let key = account_key(user.account_name());
    let Some(index) = accounts.iter().position(|a| account_key(&a.name) == key) else {
        return Err(NtlmError::UnknownUser(user.inner().to_owned()));
    };
    let identity = |password: String| AuthIdentity {
        username: user.clone(),
        password: password.into(),
    };
    // A random password must not verify; if it does, the message has no MIC.
    let mut probe = ctx.clone();
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    probe
        .custom_set_auth_identity(identity(random))
        .map_err(sspi_err)?;
    if probe.complete_auth_token(&mut []).is_ok() {
        return Err(NtlmError::Unverifiable);
    }
    ctx.custom_set_auth_identity(identity(accounts[index].password.clone()))
        .map_err(sspi_err)?;
    match ctx.complete_auth_token(&mut []) {
        Ok(SecurityStatus::Ok) => Ok(index),
        _ => Err(NtlmError::WrongPassword(user.inner().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sspi::{ClientRequestFlags, CredentialUse, Username};

    fn account_key(name: &str) -> String {
        let n = name.rsplit('\\').next().unwrap_or(name);
        n.split('@').next().unwrap_or(n).to_ascii_lowercase()
    }

    fn accounts() -> Vec<Account> {
        vec![
            Account {
                name: "helpdesk".into(),
                password: "other".into(),
                impersonation: false,
            },
            Account {
                name: "svc-mailvault".into(),
                password: "secret".into(),
                impersonation: true,
            },
        ]
    }

    /// A client handshake (sspi's initiator) as `user` / `password` against the acceptor.
    fn logon(user: &str, password: &str) -> Result<usize, NtlmError> {
        let mut client = sspi::Ntlm::new();
        let identity = AuthIdentity {
            username: Username::parse(user).expect("user name"),
            password: password.to_owned().into(),
        };
        let mut creds = client
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut client)
            .expect("credentials")
            .credentials_handle;
        let mut step = |input: Vec<u8>| {
            let mut input = vec![SecurityBuffer::new(input, BufferType::Token)];
            let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
            let mut b = client
                .initialize_security_context()
                .with_credentials_handle(&mut creds)
                .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
                .with_target_data_representation(DataRepresentation::Native)
                .with_target_name("HTTP/localhost")
                .with_input(&mut input)
                .with_output(&mut output);
            client
                .initialize_security_context_impl(&mut b)
                .expect("initialize")
                .resolve_to_result()
                .expect("client step");
            output.pop().expect("token").buffer
        };
        let negotiate = step(Vec::new());
        assert_eq!(message_type(&negotiate).expect("type"), 1);
        let (pending, challenge) = challenge(&negotiate)?;
        assert_eq!(message_type(&challenge).expect("type"), 2);
        let auth = step(challenge);
        authenticate(pending, &auth, &accounts(), account_key)
    }

    #[test]
    fn right_password_names_the_account() {
        assert_eq!(logon("svc-mailvault", "secret").expect("logon"), 1);
        assert_eq!(logon("CONTOSO\\svc-mailvault", "secret").expect("logon"), 1);
        assert_eq!(logon("helpdesk@contoso.com", "other").expect("logon"), 0);
    }

    #[test]
    fn wrong_password_and_unknown_user_are_refused() {
        assert!(matches!(
            logon("svc-mailvault", "Secret"),
            Err(NtlmError::WrongPassword(_))
        ));
        assert!(matches!(
            logon("svc-mailvault", "other"),
            Err(NtlmError::WrongPassword(_))
        ));
        assert!(matches!(
            logon("nobody", "secret"),
            Err(NtlmError::UnknownUser(_))
        ));
    }

    #[test]
    fn garbage_is_not_ntlm() {
        assert!(matches!(message_type(b"hello"), Err(NtlmError::NotNtlm)));
        assert!(matches!(
            challenge(b"NTLMSSP\0\x03\0\0\0"),
            Err(NtlmError::UnexpectedType(3))
        ));
    }
}
