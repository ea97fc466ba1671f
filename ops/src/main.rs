//! `mailvault`: the command-line entry point — demo, single-process backup, search, get,
//! restore, export, repository care, benchmarks.
//!
//! Exit codes: 0 success; 1 failure (the message says what to do); 2 bad usage (clap);
//! 3 `verify` found damage (or `audit` a broken chain); 4 a restore finished with failed items;
//! 5 `backup --once` left mailboxes or folders out (retried on the next pass).

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use cmd::client::{self, Client, ExportFormatArg, ServerArgs};
use cmd::repo::{KeyCommand, RepoArgs};

/// Mail-level backup and archive for Microsoft Exchange.
#[derive(Debug, Parser)]
#[command(name = "mailvault", version, about)]
struct Cli {
    /// Machine-readable output (JSON) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `mailvault_collector=debug`.
    #[arg(long, global = true, env = "MAILVAULT_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backs up generated mailboxes from an embedded Exchange simulator, changes some, runs an
    /// incremental, searches, restores a deleted folder and verifies — in under a minute.
    Demo(cmd::demo::DemoArgs),
    /// Creates a new repository.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Manages the keys (passphrases) that open the repository.
    Key {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(subcommand)]
        cmd: KeyCommand,
    },
    /// Backs up mailboxes from Exchange (EWS) into the repository, in this process. With
    /// --once, exit status 5 when some mailbox or folder could not be backed up (it is retried
    /// on the next pass; the output names how many, the log why).
    Backup(cmd::backup::BackupArgs),
    /// Searches the archive (query language: docs/indexer.md).
    Search {
        #[command(flatten)]
        target: Target,
        /// e.g. `from:alice has:attachment after:2026-01-01 "quarterly report"`
        query: String,
        /// Search the archive as it was at this time.
        #[arg(long)]
        as_of: Option<String>,
        /// Stop after this many hits (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Writes the original MIME bytes of one item.
    Get {
        #[command(flatten)]
        target: Target,
        /// Item id (64 hex, as `search --json` prints).
        id: String,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Restores items, a folder or a mailbox into Exchange.
    Restore(cmd::backup::RestoreArgs),
    /// Exports the items matching a query as an EML zip or an MBOX file.
    Export {
        #[command(flatten)]
        target: Target,
        query: String,
        #[arg(long, value_enum, default_value = "eml-zip")]
        format: ExportFormatArg,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Checks the repository: structure, or every byte with --read-data.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        read_data: bool,
    },
    /// The audit log: every API call (who, from where, what, result), oldest first, and
    /// whether its chain of batches is intact (exit 3 if not).
    Audit {
        #[command(flatten)]
        repo: RepoArgs,
        /// Only records from this time on (RFC 3339, a date, or unix milliseconds).
        #[arg(long)]
        since: Option<String>,
    },
    /// Items, mailboxes, logical and stored bytes.
    Stats {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Rebuilds the local search index from the repository alone.
    Reindex {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, env = "MAILVAULT_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Swap in the rebuilt index even if some records could not be read (they are listed);
        /// without it such a rebuild is kept aside and the live index stays.
        #[arg(long)]
        accept_failures: bool,
    },
    /// API bearer tokens: issue, revoke, list. The token file holds hashes only; a running
    /// server reads it again when it changes (no restart).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// NATS users for a distributed install: one NKey user per component, allowed only the
    /// subjects it uses (a collector cannot send restore jobs, an indexer cannot inject items).
    Nats {
        #[command(subcommand)]
        cmd: NatsCmd,
    },
    /// Prints the shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// Example: mailvault completions bash > /etc/bash_completion.d/mailvault
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Writes the man pages (mailvault.1 and one per command) into a directory.
    ///
    /// Example: mailvault man --out /usr/local/share/man/man1
    Man {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmarks a full backup, incremental, search and get, against restic on the same corpus.
    Bench(cmd::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Issues a token, appends its hash to the file and prints the token (the only time it is
    /// shown).
    Issue {
        /// Token file (TOML) the server reads; created `0600` if missing.
        #[arg(long)]
        file: PathBuf,
        /// Who holds it (recorded in the audit log).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The user's own mailbox (role `user`).
        #[arg(long)]
        mailbox: Option<String>,
        /// Refuse the token after this long (`90d`, `12h`); without it, it never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Removes every token with this name.
    Revoke {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Lists the tokens (names, roles, mailboxes, expiry; never the tokens).
    List {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NatsCmd {
    /// Makes the users: an NKey seed file per component (`<user>.nk`, 0600) and
    /// `mailvault-users.conf`, the nats-server `authorization` block with their permissions.
    ///
    /// Example: mailvault nats users --out ./nats-users --collector exch01 --collector exch02
    Users {
        /// Directory to write into; existing files are never replaced.
        #[arg(long)]
        out: PathBuf,
        /// One user per collector with this `source` name, consuming only its own restore
        /// jobs (repeat). Without it, one `collector` user shared by all collectors.
        #[arg(long = "collector", value_name = "SOURCE")]
        collectors: Vec<String>,
    },
    /// Prints one component's allow-lists as JSON (for operator-mode NATS: user JWTs).
    Permissions {
        #[arg(value_enum)]
        component: ComponentArg,
        /// The collector's `source` (narrows its restore jobs); default any.
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ComponentArg {
    Collector,
    Aggregator,
    Indexer,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Admin,
    Operator,
    Auditor,
    User,
}

/// A remote server, or a local repository opened in this process.
#[derive(Debug, Clone, clap::Args)]
struct Target {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    plaintext: cmd::backup::PlaintextArg,
    /// Local repository (single-process install); ignored with --server.
    #[arg(long, env = "MAILVAULT_REPO")]
    repo: Option<String>,
    #[arg(long, env = "MAILVAULT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    s3: cmd::repo::S3Args,
    /// Local state (index, checkpoints); see `mailvault backup --help`.
    #[arg(long, env = "MAILVAULT_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// A client, and the local server behind it when there is one.
async fn connect(t: &Target) -> anyhow::Result<(Client, Option<cmd::local::LocalApi>)> {
    if t.server.server.is_some() {
        let mut server = t.server.clone();
        server.allow_plaintext = t.plaintext.allow_plaintext;
        return Ok((Client::from_args(&server).await?, None));
    }
    let Some(repo) = &t.repo else {
        anyhow::bail!(
            "say where the archive is: --repo DIR|s3://… (single process) or --server URL"
        );
    };
    let args = RepoArgs {
        repo: repo.clone(),
        passphrase_file: t.passphrase_file.clone(),
        s3: t.s3.clone(),
    };
    let r = args.open().await?;
    let state = cmd::local::state_dir(t.state_dir.as_deref(), &r)?;
    let index = cmd::backup::open_index_caught_up(&state, &r).await?;
    let local = cmd::local::LocalApi::start(r, index, None).await?;
    Ok((local.client.clone(), Some(local)))
}

async fn finish(local: Option<cmd::local::LocalApi>) -> anyhow::Result<()> {
    if let Some(l) = local {
        l.shutdown().await?;
    }
    Ok(())
}

fn as_of(s: &Option<String>) -> anyhow::Result<i64> {
    s.as_deref()
        .map(client::parse_time)
        .transpose()
        .map(|t| t.unwrap_or(0))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let json = cli.json;
    match cli.command {
        Command::Demo(a) => cmd::demo::run(a, json).await.map(|_| 0),
        Command::Init { repo } => cmd::repo::init(&repo, json).await.map(|_| 0),
        Command::Key { repo, cmd } => cmd::repo::key(&repo, cmd, json).await.map(|_| 0),
        Command::Backup(a) => cmd::backup::backup(a, json).await,
        Command::Search {
            target,
            query,
            as_of: t,
            limit,
        } => {
            let (mut c, local) = connect(&target).await?;
            let res = client::search(&mut c, &query, as_of(&t)?, limit, json).await;
            finish(local).await?;
            res.map(|_| 0)
        }
        Command::Get { target, id, output } => {
            let (mut c, local) = connect(&target).await?;
            let res = client::get(&mut c, &id, output.as_ref()).await;
            finish(local).await?;
            res.map(|_| 0)
        }
        Command::Restore(a) => cmd::backup::restore(a, json).await,
        Command::Export {
            target,
            query,
            format,
            output,
            as_of: t,
        } => {
            let (mut c, local) = connect(&target).await?;
            let res = client::export(&mut c, &query, as_of(&t)?, format, &output).await;
            finish(local).await?;
            let n = res?;
            if json {
                println!("{}", serde_json::json!({"output": output, "bytes": n}));
            } else {
                println!("wrote {} ({n} bytes)", output.display());
            }
            Ok(0)
        }
        Command::Verify { repo, read_data } => cmd::repo::verify_cmd(&repo, read_data, json).await,
        Command::Stats { repo } => cmd::repo::stats_cmd(&repo, json).await.map(|_| 0),
        Command::Audit { repo, since } => {
            let since = since.as_deref().map(client::parse_time).transpose()?;
            cmd::repo::audit_cmd(&repo, since, json).await
        }
        Command::Reindex {
            repo,
            state_dir,
            accept_failures,
        } => cmd::backup::reindex(&repo, state_dir.as_deref(), accept_failures, json)
            .await
            .map(|_| 0),
        Command::Token { cmd } => token(cmd, json).map(|_| 0),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            // Generated into memory: clap_complete panics on a failed write (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mailvault", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the completion script")
                }
                _ => Ok(0),
            }
        }
        Command::Man { out } => {
            use clap::CommandFactory as _;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            if !json {
                println!("man pages written to {}", out.display());
            }
            Ok(0)
        }
        Command::Nats { cmd } => match cmd {
            NatsCmd::Users { out, collectors } => {
                cmd::nats::users(&out, &collectors, json).map(|_| 0)
            }
            NatsCmd::Permissions { component, source } => {
                use mailvault_runtime::nats::Component;
                let c = match component {
                    ComponentArg::Collector => Component::Collector,
                    ComponentArg::Aggregator => Component::Aggregator,
                    ComponentArg::Indexer => Component::Indexer,
                };
                cmd::nats::permissions_cmd(c, source.as_deref()).map(|_| 0)
            }
        },
        Command::Bench(a) => cmd::bench::run(a, json).await.map(|_| 0),
    }
}

fn token(cmd: TokenCmd, json: bool) -> anyhow::Result<()> {
    use mailvault_indexer::api::{Role, Tokens};
    let load = |file: &std::path::Path| -> anyhow::Result<Tokens> {
        if file.exists() {
            Tokens::load(file).with_context(|| format!("reading token file {}", file.display()))
        } else {
            Ok(Tokens::default())
        }
    };
    match cmd {
        TokenCmd::Issue {
            file,
            name,
            role,
            mailbox,
            expires_in,
        } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Operator => Role::Operator,
                RoleArg::Auditor => Role::Auditor,
                RoleArg::User => Role::User,
            };
            if role == Role::User && mailbox.is_none() {
                anyhow::bail!("role user needs --mailbox (the user's own address)");
            }
            let mut tokens = load(&file)?;
            let token = tokens.issue_expiring(&name, role, mailbox.as_deref(), expires_in);
            tokens.save(&file)?;
            // The only time the token is shown.
            println!("{token}");
        }
        TokenCmd::Revoke { file, name } => {
            let mut tokens = load(&file)?;
            let n = tokens.revoke(&name);
            if n == 0 {
                anyhow::bail!("no token named {name:?} in {}", file.display());
            }
            tokens.save(&file)?;
            if json {
                println!("{}", serde_json::json!({"revoked": n, "name": name}));
            } else {
                println!("revoked {n} token(s) named {name:?}");
            }
        }
        TokenCmd::List { file } => {
            for e in load(&file)?.tokens {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"name": e.name, "role": e.role, "mailbox": e.mailbox,
                            "created_unix": e.created_unix, "expires_unix": e.expires_unix})
                    );
                } else {
                    let expires = e.expires_unix.map_or_else(
                        || "never".to_owned(),
                        |t| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + Duration::from_secs(u64::try_from(t).unwrap_or(0)),
                            )
                            .to_string()
                        },
                    );
                    println!(
                        "{:<20} {:<9} {:<32} expires {expires}",
                        e.name,
                        e.role.as_str(),
                        e.mailbox.as_deref().unwrap_or("-")
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
