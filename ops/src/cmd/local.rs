//! The API over a local repository and index, served on a loopback port inside this process so
//! the CLI speaks one protocol whether the install is single-process or distributed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use mailvault_format::Repository;
use mailvault_indexer::Index;
use mailvault_indexer::api::{self, Api, AuditLog, GrpcArchive, RestoreTarget, Role, Tokens};
use tokio::sync::oneshot;

use super::client::Client;

/// Where a single-process install keeps what is not in the repository (index, checkpoints):
/// `--state-dir`, else `$MAILVAULT_STATE_DIR`, else `~/.local/state/mailvault/<repository id>`.
pub fn state_dir(explicit: Option<&Path>, repo: &Repository) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("MAILVAULT_STATE_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let home = std::env::var_os("HOME").context(
                    "no --state-dir, MAILVAULT_STATE_DIR or HOME: say where local state goes",
                )?;
                PathBuf::from(home)
                    .join(".local/state/mailvault")
                    .join(hex::encode(&repo.config().repo_id))
            }
        },
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    Ok(dir)
}

/// A running in-process API and a client holding an admin token for it.
#[derive(Debug)]
pub struct LocalApi {
    pub client: Client,
    pub api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), api::grpc::ServeError>>,
}

impl LocalApi {
    pub async fn start(
        repo: Repository,
        index: Index,
        restore: Option<Arc<dyn RestoreTarget>>,
    ) -> anyhow::Result<LocalApi> {
        let audit = AuditLog::start(repo.clone());
        let api = Api::new(index, repo, audit, restore);
        let mut tokens = Tokens::default();
        let token = tokens.issue("local", Role::Admin, None);
        let (listener, addr) = api::grpc::bind("127.0.0.1:0".parse()?).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = GrpcArchive::new(api.clone(), tokens);
        let task = tokio::spawn(api::serve(listener, svc, None, async {
            let _ = stopped.await;
        }));
        let client = Client::connect(&format!("http://{addr}"), token, None).await?;
        Ok(LocalApi {
            client,
            api,
            stop: Some(stop),
            task,
        })
    }

    /// Stops the server and stores every audit record.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task)
            .await
            .context("API task")?
            .context("API server")?;
        self.api
            .audit()
            .flush()
            .await
            .context("storing the audit log")?;
        Ok(())
    }
}
