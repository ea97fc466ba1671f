//! tonic in front of [`Api`]: bearer-token authentication, streaming, TLS, health and
//! reflection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use mailvault_proto::api::v1 as pb;
use pb::archive_server::{Archive, ArchiveServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use super::auth::{Principal, TokenFile, Tokens};
use super::service::{Api, ApiError};

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcArchive {
    api: Api,
    tokens: TokenFile,
}

impl GrpcArchive {
    /// With a fixed token list.
    pub fn new(api: Api, tokens: Tokens) -> GrpcArchive {
        Self::with_token_file(api, TokenFile::fixed(tokens))
    }

    /// With a token file the server reads again when it changes.
    pub fn with_token_file(api: Api, tokens: TokenFile) -> GrpcArchive {
        GrpcArchive { api, tokens }
    }

    async fn principal<T>(&self, call: &str, req: &Request<T>) -> Result<Principal, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        match token.and_then(|t| self.tokens.authenticate(t)) {
            Some(p) => Ok(p.from_peer(peer)),
            None => Err(self.api.deny_anonymous(call, &peer).await.into()),
        }
    }
}

fn stream_of<T: Send + 'static>(rx: mpsc::Receiver<Result<T, ApiError>>) -> Out<T> {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(Status::from)))
}

#[tonic::async_trait]
impl Archive for GrpcArchive {
    async fn list_mailboxes(
        &self,
        req: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        let p = self.principal("ListMailboxes", &req).await?;
        Ok(Response::new(self.api.list_mailboxes(&p).await?))
    }

    async fn list_folders(
        &self,
        req: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        let p = self.principal("ListFolders", &req).await?;
        Ok(Response::new(
            self.api.list_folders(&p, req.get_ref()).await?,
        ))
    }

    type SearchStream = Out<pb::SearchResponse>;

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<Self::SearchStream>, Status> {
        let p = self.principal("Search", &req).await?;
        let req = req.into_inner();
        // The first page is computed before answering, so a bad query is a status, not a
        // broken stream.
        let first = self
            .api
            .search_page(&p, &req.query, req.as_of_unix_ms, req.offset as usize, 1)
            .await;
        if let Err(e) = first {
            // Refused either way; a failure to store the record is logged by `record`.
            let _ = self
                .api
                .record(&p, "Search", req.query.clone(), "invalid", e.to_string())
                .await;
            return Err(e.into());
        }
        let (tx, rx) = mpsc::channel(4);
        let api = self.api.clone();
        tokio::spawn(async move {
            let res = api.search(&p, &req, &tx).await;
            if let Err(e) = res {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    type GetItemStream = Out<pb::ItemChunk>;

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<Self::GetItemStream>, Status> {
        let p = self.principal("GetItem", &req).await?;
        let (size, stream) = self.api.get_item(&p, &req.get_ref().id).await?;
        let mut first = true;
        let out = stream.map(move |r| {
            let data = r.map_err(Status::from)?;
            let size = if std::mem::take(&mut first) { size } else { 0 };
            Ok(pb::ItemChunk { data, size })
        });
        Ok(Response::new(Box::pin(out)))
    }

    type RestoreStream = Out<pb::RestoreProgress>;

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let p = self.principal("Restore", &req).await?;
        let rx = self.api.restore(&p, req.get_ref()).await?;
        Ok(Response::new(stream_of(rx)))
    }

    type ExportStream = Out<pb::ExportChunk>;

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let p = self.principal("Export", &req).await?;
        let bytes = self.api.export(&p, req.get_ref()).await?;
        let out = bytes.map(|r| {
            r.map(|data| pb::ExportChunk { data, items: 0 })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// TLS for the API: PEM certificate chain and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading TLS file {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok((l, local))
}

/// Serves the API, health and reflection on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: GrpcArchive,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ArchiveServer<GrpcArchive>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        mailvault_runtime::install_crypto_provider();
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ServeError::Tls {
                path: p.display().to_string(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            ArchiveServer::new(service)
                .max_decoding_message_size(16 * 1024 * 1024)
                .max_encoding_message_size(16 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(
            // Nagle + delayed ACK would add ~40 ms to every small streamed response; tonic's
            // own nodelay setting does not reach a listener we accept on ourselves.
            TcpListenerStream::new(listener).map(|conn| {
                conn.and_then(|s| {
                    s.set_nodelay(true)?;
                    Ok(s)
                })
            }),
            shutdown,
        )
        .await?;
    Ok(())
}
