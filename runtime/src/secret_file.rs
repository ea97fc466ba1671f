//! Reading a secret from a file (repository passphrase, EWS password): the trailing line break
//! an editor adds is not part of it, and a file others may read is called out, once per file.

use std::io;
use std::path::Path;

/// The file's content without one trailing `\n` or `\r\n`. Warns when the file's mode lets
/// group or others read it (a secret should be `0600` or `0400`, owned by the service user).
pub fn read_secret_file(path: &Path) -> io::Result<Vec<u8>> {
    let raw = std::fs::read(path)?;
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:o}"),
            "a secret file is readable by other users; chmod 600 it"
        );
    }
    let s = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let s = s.strip_suffix(b"\r").unwrap_or(s);
    Ok(s.to_vec())
}

/// The permission bits if group or others may read or write the file.
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o066 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_line_break_and_tells_loose_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("secret");
        std::fs::write(&f, b"pass word\r\n").expect("write");
        assert_eq!(read_secret_file(&f).expect("read"), b"pass word");
        std::fs::write(&f, b"two\n\n").expect("write");
        assert_eq!(read_secret_file(&f).expect("read"), b"two\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert_eq!(loose_mode(&f), Some(0o644));
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            assert_eq!(loose_mode(&f), None);
        }
        assert!(read_secret_file(&dir.path().join("missing")).is_err());
    }
}
