//! Compiles every .proto with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mailvault/storage/v1/storage.proto",
        "mailvault/ingest/v1/ingest.proto",
        "mailvault/events/v1/events.proto",
        "mailvault/restore/v1/restore.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let mut cfg = prost_build::Config::new();
    cfg.bytes(["."]);
    cfg.compile_fds(fds)?;
    Ok(())
}
