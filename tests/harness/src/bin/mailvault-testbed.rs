//! `mailvault-testbed`: starts nats-server and Garage on free loopback ports for a manual or
//! scripted distributed run, writes their coordinates as shell `export` lines to the file named
//! by the first argument, and keeps them running until stdin closes or a line is read.
//!
//! Used by `ops/scripts/distributed.sh`; the servers stop (and their data is removed) on exit.

use std::io::{BufRead as _, Write as _};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(env_file) = std::env::args().nth(1) else {
        return Err("usage: mailvault-testbed ENV_FILE   (then close stdin to stop)".into());
    };
    let nats = mailvault_harness::NatsServer::start()?;
    let garage = mailvault_harness::Garage::start_with_bucket("mailvault")?;
    let mut f = std::fs::File::create(&env_file)?;
    writeln!(f, "export NATS_URL={}", nats.url())?;
    writeln!(f, "export AWS_ENDPOINT_URL={}", garage.endpoint())?;
    writeln!(f, "export AWS_REGION={}", garage.region())?;
    writeln!(f, "export AWS_ACCESS_KEY_ID={}", garage.access_key_id())?;
    writeln!(
        f,
        "export AWS_SECRET_ACCESS_KEY={}",
        garage.secret_access_key()
    )?;
    writeln!(f, "export S3_BUCKET={}", garage.bucket())?;
    f.sync_all()?;
    drop(f);
    eprintln!("testbed up: nats {} s3 {}", nats.url(), garage.endpoint());
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    eprintln!("testbed stopping");
    Ok(())
}
