//! Files written whole or not at all.
//!
//! - [`write_atomic`]: the one way this program replaces a small file: write a temporary file in
//!   the same directory, fsync it, rename it over the target, fsync the directory. A crash at any
//!   instant leaves the old file or the new one, never a torn one. Used by the token store, the
//!   pending logins, the rate budget, the backup record and every other small state file. The
//!   temporary file is an [`OwnedTemp`], so what a killed writer left is swept by the next run.
//! - [`OwnedTemp`]: the temporary file a large copy is built in (an export, a backup): named
//!   `.NAME.tmp-<16 hex digits>` next to its destination, and owned by an exclusive `flock` on it
//!   for as long as the writer lives. A writer that dies (SIGKILL, a full disk, a container's
//!   PID 1) releases the lock with its file descriptors, so [`sweep`] tells a leftover from a copy
//!   in progress by trying the lock: no PID in a name, which PID namespaces make meaningless.
//!   What SQLite creates beside it (`-journal`, `-wal`, `-shm`) goes with it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt};
use std::path::{Path, PathBuf};

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
    // An owned temporary (`.NAME.tmp-<hex>`, locked): a writer killed before the rename leaves a
    // file that the next run's sweep ([`sweep`]) knows for its own and removes.
    let tmp = OwnedTemp::beside(path)?;
    hit("store_temp_created");
    let mut f = tmp.file();
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    hit("store_temp_synced");
    tmp.replace(path, durable)?;
    hit("store_renamed");
    Ok(())
}

/// The files SQLite may create next to a database (rollback journal, write-ahead log, its index).
pub const SQLITE_COMPANIONS: [&str; 3] = ["-journal", "-wal", "-shm"];

/// The path of `path` with `suffix` appended to its file name (`x.sqlite` → `x.sqlite-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a database file and what SQLite left beside it; missing files are not an error.
pub fn remove_with_companions(path: &Path) {
    let _ = std::fs::remove_file(path);
    for c in SQLITE_COMPANIONS {
        let _ = std::fs::remove_file(with_suffix(path, c));
    }
}

/// A temporary file owned by an exclusive lock (see the module docs). Dropping it without
/// [`OwnedTemp::persist`] removes it and its SQLite companions.
#[derive(Debug)]
pub struct OwnedTemp {
    path: PathBuf,
    lock: Option<File>,
}

impl OwnedTemp {
    /// Creates (mode 0600, never an existing file) and locks `.NAME.tmp-<random>` in the
    /// directory of `dest`, NAME being `dest`'s file name.
    pub fn beside(dest: &Path) -> std::io::Result<OwnedTemp> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let tag = format!("{:016x}", rand::random::<u64>());
        let path = dir.join(format!(".{name}.tmp-{tag}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        if let Err(e) = file.try_lock() {
            let _ = std::fs::remove_file(&path);
            return Err(match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => std::io::Error::other("locked at creation"),
            });
        }
        Ok(OwnedTemp {
            path,
            lock: Some(file),
        })
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open (and locked) file.
    fn file(&self) -> &File {
        self.lock
            .as_ref()
            .expect("an OwnedTemp holds its file until it is renamed")
    }

    /// Renames the file over `dest` (replacing it). With `durable`, the data is fsynced before
    /// and the directory after. On an error the temporary file is removed.
    fn replace(mut self, dest: &Path, durable: bool) -> std::io::Result<()> {
        if durable {
            self.file().sync_all()?;
        }
        std::fs::rename(&self.path, dest)?;
        self.lock = None;
        if durable {
            File::open(parent_dir(dest))?.sync_all()?;
        }
        Ok(())
    }

    /// Fsyncs the file, renames it to `dest` (refusing an existing `dest`) and fsyncs the
    /// directory. On an error the temporary file is removed.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<u64> {
        let result = (|| {
            let f = File::open(&self.path)?;
            f.sync_all()?;
            let bytes = f.metadata()?.len();
            if dest.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the destination appeared while the copy was written",
                ));
            }
            std::fs::rename(&self.path, dest)?;
            Ok(bytes)
        })();
        let bytes = result?;
        // Renamed: nothing of the temporary name is left to remove (SQLite's companions were
        // removed when its connection closed; any that stayed are removed now).
        for c in SQLITE_COMPANIONS {
            let _ = std::fs::remove_file(with_suffix(&self.path, c));
        }
        self.lock = None;
        File::open(parent_dir(dest))?.sync_all()?;
        Ok(bytes)
    }
}

impl Drop for OwnedTemp {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // Removed while still locked, so no sweep takes a half-removed file for a leftover.
            remove_with_companions(&self.path);
            self.lock = None;
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temporary file a name belongs to, when it is one of [`OwnedTemp`]'s (or one of its SQLite
/// companions): `.NAME.tmp-<16 hex>` + optional companion suffix. With `legacy_pids`, the
/// `.NAME.tmp-<PID>` names of earlier builds count too.
fn owner_name(name: &str, legacy_pids: bool) -> Option<&str> {
    if !name.starts_with('.') {
        return None;
    }
    let base = SQLITE_COMPANIONS
        .iter()
        .find_map(|c| name.strip_suffix(c))
        .unwrap_or(name);
    let (_, tag) = base.rsplit_once(".tmp-")?;
    let ours = tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    let legacy = legacy_pids && !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit());
    (ours || legacy).then_some(base)
}

/// Whether the temporary file at `path` is owned by a live writer (its lock is held).
fn is_owned(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Removes one temporary file (named as [`OwnedTemp`] names them) and its companions unless
/// its writer still holds it. Returns whether anything was removed.
pub fn sweep_one(path: &Path) -> bool {
    if is_owned(path) {
        return false;
    }
    let mut removed = std::fs::remove_file(path).is_ok();
    for c in SQLITE_COMPANIONS {
        removed |= std::fs::remove_file(with_suffix(path, c)).is_ok();
    }
    removed
}

/// Removes every leftover temporary file in `dir` whose name starts with `.` + `prefix` (and
/// what SQLite left beside it) when no live writer holds it; returns what it removed.
pub fn sweep(dir: &Path, prefix: &str, legacy_pids: bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name
            .strip_prefix('.')
            .is_some_and(|rest| rest.starts_with(prefix))
        {
            continue;
        }
        let Some(base) = owner_name(&name, legacy_pids) else {
            continue;
        };
        let base_path = dir.join(base);
        if !is_owned(&base_path) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Whether `name` is what `tempfile`'s default naming made for earlier builds' atomic writes:
/// `.tmp` and six letters or digits.
fn is_legacy_temp_name(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Removes the `.tmpXXXXXX` files earlier builds' [`write_atomic`] left in `dir` (they carried
/// no lock; this build never writes such a name); returns what it removed.
pub fn sweep_legacy_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(is_legacy_temp_name))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file is removed by a sweep only once its writer is gone (its lock released),
    /// with every companion; other files with similar names stay.
    #[test]
    fn owned_temporaries_are_swept_only_when_their_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.sqlite");
        let t = OwnedTemp::beside(&dest).unwrap();
        let wal = with_suffix(t.path(), "-wal");
        std::fs::write(&wal, b"log").unwrap();
        let theirs = dir.path().join(".out.sqlite.tmp-notours");
        let plain = dir.path().join("x.tmp-0123456789abcdef");
        std::fs::write(&theirs, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        assert!(
            sweep(dir.path(), "", false).is_empty(),
            "a live writer's copy"
        );
        // A writer killed: its lock goes with its descriptors; the file stays on disk.
        let path = t.path().to_owned();
        let mut t = t;
        t.lock = None;
        std::mem::forget(t);
        assert!(path.exists());
        let mut gone = sweep(dir.path(), "out.sqlite", false);
        gone.sort();
        let mut want = vec![path.clone(), wal.clone()];
        want.sort();
        assert_eq!(gone, want);
        assert!(theirs.exists() && plain.exists());
        // A PID-named leftover of an earlier build, PID 1 included: only with legacy_pids.
        let old = dir.path().join(".b.sqlite.tmp-1");
        let old_journal = with_suffix(&old, "-journal");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&old_journal, b"x").unwrap();
        assert!(sweep(dir.path(), "b.", false).is_empty());
        assert_eq!(sweep(dir.path(), "b.", true).len(), 2);
    }

    /// Persisting renames and never overwrites; dropping removes the file and its companions.
    #[test]
    fn an_owned_temporary_persists_once_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.sqlite");
        let t = OwnedTemp::beside(&dest).unwrap();
        std::fs::write(t.path(), b"data").unwrap();
        assert_eq!(t.persist(&dest).unwrap(), 4);
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
        let t = OwnedTemp::beside(&dest).unwrap();
        std::fs::write(with_suffix(t.path(), "-journal"), b"j").unwrap();
        let err = t.persist(&dest).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
    }

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
