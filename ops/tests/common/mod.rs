//! What the CLI tests share.

/// Runs the real `mailvault` binary: (exit code, stdout, stderr).
pub fn mailvault(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .output()
        .expect("run mailvault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
