//! The one way this program replaces a file: write a temporary file in the same directory, fsync
//! it, rename it over the target, fsync the directory. A crash at any instant leaves the old
//! file or the new one, never a torn one. Used by the token store, the pending logins, the rate
//! budget and every other small state file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Atomically replaces `path` with `bytes` (file mode `mode`). With `durable`, the data and the
/// rename are fsynced before returning; without, a crash may keep the old file (never a torn one).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    write(path, bytes, mode, durable, false)
}

/// [`write_atomic`] for the token store: the same steps, with the named crash points
/// (`store_temp_created`, `store_temp_synced`, `store_renamed`) the crash tests arm.
pub fn write_atomic_token(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o600, true, true)
}

fn write(path: &Path, bytes: &[u8], mode: u32, durable: bool, marked: bool) -> std::io::Result<()> {
    let hit = |name: &str| {
        if marked {
            crate::faultpoint::hit(name);
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    hit("store_temp_created");
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    hit("store_temp_synced");
    tmp.persist(path).map_err(|e| e.error)?;
    hit("store_renamed");
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o600, true).unwrap();
        write_atomic(&p, b"two", 0o640, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }
}
