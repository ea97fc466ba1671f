//! The gRPC API and what it needs: callers and roles ([`auth`]), the audit log ([`audit`]),
//! export formats ([`export`]).

pub mod audit;
pub mod auth;
pub mod export;
