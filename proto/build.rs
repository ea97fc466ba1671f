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

    // The gRPC API only when asked for: most crates need records, not tonic.
    let api = "mailvault/api/v1/api.proto";
    println!("cargo:rerun-if-changed={api}");
    if std::env::var_os("CARGO_FEATURE_API").is_some() {
        let fds = protox::compile([api], ["."])?;
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(
            out.join("mailvault.api.v1.bin"),
            prost::Message::encode_to_vec(&fds),
        )?;
        let mut cfg = prost_build::Config::new();
        cfg.bytes(["."]);
        tonic_prost_build::configure().compile_fds_with_config(fds, cfg)?;
    }
    Ok(())
}
