//! The gRPC API and what it needs: callers and roles ([`auth`]), the audit log ([`audit`]),
//! export formats ([`export`]), restore targets ([`restore`]), the calls themselves
//! ([`service`], no gRPC in it) and tonic in front ([`grpc`]).

pub mod audit;
pub mod auth;
pub mod export;
pub mod grpc;
pub mod restore;
pub mod service;

pub use audit::{AuditLog, AuditRecord};
pub use auth::{Principal, Role, TokenFile, Tokens};
pub use grpc::{GrpcArchive, TlsFiles, serve};
pub use restore::{NatsRestoreTarget, RestoreTarget};
pub use service::{Api, ApiError, StreamLimits};
