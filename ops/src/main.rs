//! `mailvault`: the command-line entry point.

use clap::{Parser, Subcommand};

/// Mail-level backup and archive for Microsoft Exchange.
#[derive(Debug, Parser)]
#[command(name = "mailvault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the end-to-end demo on generated mail (coming: see the CLI issue).
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => {
            anyhow::bail!(
                "the demo is not built yet; `./ops/scripts/test.sh` runs what exists today"
            )
        }
    }
}
