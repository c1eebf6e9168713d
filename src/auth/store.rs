//! The token store: one JSON file per account in `state_dir/tokens/` (directory 0700, files
//! 0600), never in the analytics database.
//!
//! Writes go through [`crate::fsutil::write_atomic`] (`docs/tokens.md` explains the protocol): a
//! temporary file in the same directory, `write_all`, `fsync`, rename over the old file, `fsync`
//! of the directory. A crash at any instant leaves either the old file or the new one, never a
//! torn one. Stale temporary files are removed on start.
//!
//! A full disk must not lose a rotated token: the store keeps a small ballast file
//! (`tokens/.ballast`, 64 KiB) and, when a save fails for lack of space, deletes it and tries
//! again; the ballast is put back when space allows.
//!
//! An export file being written outside the store (`transfer`) may hold a token until it is
//! complete: its temporary path is listed in `tokens/transfer-temporaries` while it is written,
//! and [`TokenStore::sweep_temporaries`] (run by [`TokenStore::prepare`], every export and every
//! import) removes the listed files whose writer is gone, wherever they are. `tokens/.instance-id`
//! is a random id of this state directory, which an import writes into the export file it
//! claims, so that no other state directory can import it.
//!
//! A token moving out into an export file (`export-account --remove --with-tokens`) is marked by
//! `tokens/<name>.moving-out` (the export's temporary path and final path) before the export file
//! is renamed into place; while it exists [`TokenStore::load`] refuses the record, and
//! [`TokenStore::recover_moves`] (run with the sweep) finishes or rolls back a move whose
//! exporter died, so the token is usable in exactly one place at every instant.
//!
//! Cross-process single flight: `tokens/<name>.lock` is locked exclusively (`File::lock`) by
//! whoever refreshes that account — the daemon, a `--once` run or `login`. Pending logins live in
//! `tokens/pending-login/<name>.json`: account names cannot contain `/`, so no account's file can
//! ever be one of them.
//!
//! # Format (version 1)
//! ```json
//! {"version": 1, "account": "alice", "brand": "peugeot",
//!  "refresh_token": "…", "access_token": "…", "access_expires_at": "2026-11-28T09:15:38.123Z",
//!  "chain_started_at": "…", "refreshed_at": "…", "source": "login",
//!  "previous_refresh_sha256": "…", "bootstrap_sha256": "…", "password_hmac": "…",
//!  "refused_sha256": ["…"], "unauthorized_refresh_at": null,
//!  "needs_reauth": false, "reason": null, "updated_at": "…"}
//! ```
//! `source` is how the chain began (`login`, `password`, `bootstrap`). `previous_refresh_sha256`
//! is a hash of the rotated-out token, kept only to tell "crashed mid-refresh" from "revoked".
//! `bootstrap_sha256` is the hash of the configured `refresh_token` this record has seen (so it is
//! never presented twice); `password_hmac` an HMAC-SHA256 of the configured password under a
//! random per-installation key (`tokens/.install-key`), only to notice that it changed (a changed
//! password lifts `needs_reauth`); `refused_sha256` the hashes of the last refresh tokens the
//! identity provider refused (never presented again); `unauthorized_refresh_at` when the API last
//! refused a token that a 401 had just made the daemon fetch (then a 401 does not refresh again
//! for an hour). Older records (`password_sha256`) still load.

use std::fs::{File, OpenOptions};
use std::io::Write;

/// The size of the reserve kept for saving tokens on a full disk.
const BALLAST_BYTES: usize = 64 * 1024;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Everything stored for one account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub version: u32,
    pub account: String,
    pub brand: String,
    #[serde(serialize_with = "expose_opt")]
    pub refresh_token: Option<SecretString>,
    #[serde(serialize_with = "expose_opt")]
    pub access_token: Option<SecretString>,
    pub access_expires_at: Option<String>,
    pub chain_started_at: Option<String>,
    pub refreshed_at: Option<String>,
    pub source: Option<String>,
    pub previous_refresh_sha256: Option<String>,
    pub bootstrap_sha256: Option<String>,
    #[serde(default)]
    pub password_hmac: Option<String>,
    /// Hashes of refresh tokens the identity provider refused (newest last, at most 8).
    #[serde(default)]
    pub refused_sha256: Vec<String>,
    /// When the API last refused a freshly refreshed token too (RFC 3339).
    #[serde(default)]
    pub unauthorized_refresh_at: Option<String>,
    #[serde(default)]
    pub needs_reauth: bool,
    pub reason: Option<String>,
    pub updated_at: String,
}

/// The one place a token is written out in clear: into the 0600 store file.
fn expose_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

/// A failed store operation, with the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token store {path} is not valid JSON: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("token store {path} is locked by another process (a login or another run)")]
    Locked { path: PathBuf },
    /// The store is a copy (or a restore) of another state directory's: its directory is not
    /// the one its chains were written in ([`TokenStore::prepare`]).
    #[error(
        "token store {path} is a copy or a restore of another state directory (its tokens were written in directory inode {recorded}, this one is {found}): two state directories presenting one refresh-token chain end it for both. If the original no longer runs (a restore, a move to another disk), run `stellantis-sync adopt-state` with this configuration; if it still runs, remove this copy"
    )]
    Copied {
        path: PathBuf,
        recorded: u64,
        found: u64,
    },
    #[error(
        "token store {path}: an interrupted `export-account --remove --with-tokens` may have moved \
         this token into {export}, which is not there; the token is not used here while that is \
         unknown. If you have that export file, import it where the account goes; if you do not, \
         delete {path} to use the token here again"
    )]
    MovingOut { path: PathBuf, export: PathBuf },
}

/// SHA-256 of a secret as hex (for forensic comparisons; never the secret itself).
pub fn fingerprint(secret: &SecretString) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.expose_secret().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The directory of token files.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

/// A held cross-process lock on one account's tokens; released on drop.
#[derive(Debug)]
pub struct AccountLock {
    _file: File,
}

impl TokenStore {
    /// The store under `state_dir/tokens` (nothing is created until [`TokenStore::prepare`]).
    pub fn new(state_dir: &Path) -> TokenStore {
        TokenStore {
            dir: state_dir.join("tokens"),
        }
    }

    /// The directory holding the token files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Creates the directory (0700), tightens its mode, removes stale temporary files.
    pub fn prepare(&self) -> Result<(), StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(&self.dir, e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(&self.dir, e))?;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // What a killed write_atomic left (`.NAME.tmp-<hex>`), unless its writer is alive.
        crate::fsutil::sweep(&self.dir, "", false);
        self.check_home()?;
        self.restore_ballast();
        self.sweep_temporaries();
        Ok(())
    }

    /// `tokens/.home`: the inode of the directory the chains were written in. A copy of a state
    /// directory (`cp -a`, `rsync`, a restore from an archive) gets new inodes, so its store is
    /// told from the original and refused ([`StoreError::Copied`]); a rename in place or a
    /// volume attached elsewhere keeps it. Written on first use (a store from before it adopts
    /// itself).
    fn home(&self) -> PathBuf {
        self.dir.join(".home")
    }

    fn dir_inode(&self) -> Result<u64, StoreError> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.dir)
            .map(|m| m.ino())
            .map_err(|e| self.io(&self.dir, e))
    }

    fn check_home(&self) -> Result<(), StoreError> {
        let found = self.dir_inode()?;
        let recorded = std::fs::read_to_string(self.home())
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        match recorded {
            Some(r) if r == found => Ok(()),
            Some(recorded) => Err(StoreError::Copied {
                path: self.dir.clone(),
                recorded,
                found,
            }),
            None => self.write_home(found),
        }
    }

    fn write_home(&self, inode: u64) -> Result<(), StoreError> {
        let path = self.home();
        crate::fsutil::write_atomic(&path, format!("{inode}\n").as_bytes(), 0o600, true)
            .map_err(|e| self.io(&path, e))
    }

    /// `adopt-state`: this directory is now the one its chains live in (the original is gone).
    /// It also takes a new instance id, so that an export claimed by the original is not
    /// imported here as if this were it. Returns whether it was a copy.
    pub fn adopt(&self) -> Result<bool, StoreError> {
        if !self.dir.exists() {
            return Ok(false);
        }
        let copied = matches!(self.check_home(), Err(StoreError::Copied { .. }));
        if copied {
            let id = self.dir.join(".instance-id");
            match std::fs::remove_file(&id) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&id, e)),
            }
            self.write_home(self.dir_inode()?)?;
        }
        Ok(copied)
    }

    /// The marker of an account's token moving out into an export file (`export-account
    /// --remove --with-tokens`): while it exists the record is not used here.
    pub fn moving_out_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.moving-out"))
    }

    /// Marks `account`'s token as moving out, before the export's temporary file `tmp` is
    /// renamed to `to` (both absolute). A crash at any instant then leaves the token usable in
    /// one place: [`TokenStore::recover_moves`] finishes the move when `to` holds it, and rolls
    /// it back when the rename never happened.
    pub fn begin_move_out(&self, account: &str, tmp: &Path, to: &Path) -> Result<(), StoreError> {
        let path = self.moving_out_path(account);
        let text = format!("{}\n{}\n", tmp.display(), to.display());
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600, true)
            .map_err(|e| self.io(&path, e))
    }

    /// Ends a move: the marker goes (after the record, when the move happened).
    pub fn end_move_out(&self, account: &str) -> Result<(), StoreError> {
        let path = self.moving_out_path(account);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(&path, e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(&self.dir, e))
    }

    /// Finishes or rolls back the moves that a killed export left (see
    /// [`TokenStore::begin_move_out`]); skips an account whose lock is held (its export is
    /// alive). The temporary file still there: the rename never happened, the temporary goes
    /// and the record stays. The temporary gone and the export file there: it holds the token,
    /// the record goes. Neither: the marker stays and [`TokenStore::load`] says what to do.
    pub fn recover_moves(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(account) = name.strip_suffix(".moving-out") else {
                continue;
            };
            let Ok(lock) = self.try_lock(account) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let mut lines = text.lines();
            let (Some(tmp), Some(to)) = (lines.next(), lines.next()) else {
                continue;
            };
            let (tmp, to) = (Path::new(tmp), Path::new(to));
            if tmp.exists() {
                crate::fsutil::sweep_one(tmp);
                if !tmp.exists() && self.end_move_out(account).is_ok() {
                    tracing::warn!(
                        account,
                        "rolled back an interrupted export-account --remove: the token stays here"
                    );
                }
            } else if to.exists() {
                let record = self.path(account);
                let gone = match std::fs::remove_file(&record) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                };
                if gone && self.end_move_out(account).is_ok() {
                    tracing::warn!(account, export = %to.display(), "finished an interrupted export-account --remove: the token is in the export file only (its history is still in this database: delete it or leave it)");
                }
            }
            drop(lock);
        }
    }

    /// `tokens/<account>.lock`, opened (created 0600) but not locked.
    fn lock_file(&self, account: &str) -> Result<(PathBuf, File), StoreError> {
        let path = self.dir.join(format!("{account}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode_0600()
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        Ok((path, file))
    }

    fn try_lock(&self, account: &str) -> Result<AccountLock, StoreError> {
        let (path, file) = self.lock_file(account)?;
        match file.try_lock() {
            Ok(()) => Ok(AccountLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(self.io(&path, e)),
        }
    }

    fn temporaries(&self) -> PathBuf {
        self.dir.join("transfer-temporaries")
    }

    /// Runs `f` on the list of temporary export files, under that list's lock, and writes
    /// back what it returns. The list is one path per line.
    fn edit_temporaries(
        &self,
        f: impl FnOnce(Vec<PathBuf>) -> Vec<PathBuf>,
    ) -> Result<(), StoreError> {
        use std::io::{Read as _, Seek as _};
        let path = self.temporaries();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(&self.dir, e))?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode_0600()
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        file.lock().map_err(|e| self.io(&path, e))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| self.io(&path, e))?;
        let list = f(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect());
        let mut out = String::new();
        for p in list {
            out.push_str(&p.to_string_lossy());
            out.push('\n');
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(out.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&path, e))
    }

    /// Lists a temporary export file (before anything is written into it), so that a later
    /// run removes it if its writer dies.
    pub fn note_temporary(&self, tmp: &Path) -> Result<(), StoreError> {
        self.edit_temporaries(|mut list| {
            list.push(tmp.to_owned());
            list
        })
    }

    /// Takes a temporary export file off the list (it was renamed or removed).
    pub fn forget_temporary(&self, tmp: &Path) {
        let _ = self.edit_temporaries(|list| list.into_iter().filter(|p| p != tmp).collect());
    }

    /// Removes the listed temporary export files (and SQLite's companions) whose writer is
    /// gone, and takes them off the list; the files of live writers stay listed.
    pub fn sweep_temporaries(&self) {
        // Before the temporaries go: whether a move's temporary is still there decides it.
        self.recover_moves();
        if !self.temporaries().exists() {
            return;
        }
        let _ = self.edit_temporaries(|list| {
            list.into_iter()
                .filter(|p| {
                    let exists = p.exists()
                        || crate::fsutil::SQLITE_COMPANIONS
                            .iter()
                            .any(|c| crate::fsutil::with_suffix(p, c).exists());
                    if exists && crate::fsutil::sweep_one(p) {
                        tracing::warn!(file = %p.display(), "removed what an interrupted export left (it may have held a token)");
                    }
                    // Still there: its writer is alive.
                    p.exists()
                })
                .collect()
        });
    }

    /// The random id of this state directory (created on first use).
    pub fn instance_id(&self) -> Result<String, StoreError> {
        let path = self.dir.join(".instance-id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            let id = id.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_owned());
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(&self.dir, e))?;
        let id = format!("{:032x}", rand::random::<u128>());
        crate::fsutil::write_atomic(&path, id.as_bytes(), 0o600, true)
            .map_err(|e| self.io(&path, e))?;
        Ok(id)
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join(".ballast")
    }

    /// Puts the ballast back if it is missing (best effort: on a full disk it simply stays away).
    pub fn restore_ballast(&self) {
        let path = self.ballast();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == BALLAST_BYTES as u64) {
            return;
        }
        let ok = crate::fsutil::write_atomic(&path, &vec![0u8; BALLAST_BYTES], 0o600, true);
        if ok.is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Whether this installation has already presented the bootstrap token with this
    /// fingerprint (to any account, under any name): then it is never presented again.
    pub fn bootstrap_used(&self, fp: &str) -> bool {
        std::fs::read_to_string(self.dir.join("bootstrap-used"))
            .is_ok_and(|t| t.lines().any(|l| l.trim() == fp))
    }

    /// Records, durably, that the bootstrap token with this fingerprint was presented and
    /// answered (accepted or refused).
    pub fn mark_bootstrap_used(&self, fp: &str) -> Result<(), StoreError> {
        self.mark_bootstraps_used(&[fp])
    }

    /// Records, durably, bootstrap tokens never to present again: those a record has seen or
    /// had refused, when the record arrives from (or leaves for) another state directory. The
    /// register stays behind when an account moves, so it must travel with the record.
    pub fn mark_bootstraps_used(&self, fps: &[&str]) -> Result<(), StoreError> {
        let path = self.dir.join("bootstrap-used");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        let before = text.len();
        for fp in fps {
            if !text.lines().any(|l| l.trim() == *fp) {
                text.push_str(fp);
                text.push('\n');
            }
        }
        if text.len() == before {
            return Ok(());
        }
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600, true)
            .map_err(|e| self.io(&path, e))
    }

    /// The directory of pending logins (`tokens/pending-login/`).
    pub fn pending_login_path(&self, account: &str) -> PathBuf {
        self.dir
            .join("pending-login")
            .join(format!("{account}.json"))
    }

    /// The file of one account.
    pub fn path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.json"))
    }

    /// Reads an account's record; `None` when there is none yet.
    pub fn load(&self, account: &str) -> Result<Option<TokenRecord>, StoreError> {
        let path = self.path(account);
        let moving = self.moving_out_path(account);
        if let Ok(text) = std::fs::read_to_string(&moving) {
            return Err(StoreError::MovingOut {
                path: moving,
                export: PathBuf::from(text.lines().nth(1).unwrap_or_default()),
            });
        }
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    /// Proves a record can be written now (directory writable, space for a few KiB) before a
    /// refresh token is spent.
    pub fn preflight(&self) -> Result<(), StoreError> {
        let mut probe = tempfile::Builder::new()
            .prefix(".tmp-probe")
            .tempfile_in(&self.dir)
            .map_err(|e| self.io(&self.dir, e))?;
        probe
            .write_all(&[0u8; 8192])
            .and_then(|()| probe.as_file().sync_all())
            .map_err(|e| self.io(&self.dir, e))?;
        Ok(())
    }

    /// Writes a record durably: temp file, fsync, rename, fsync of the directory. When the disk
    /// is full, the ballast is given up and the write tried once more.
    pub fn save(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let path = self.path(&record.account);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        match crate::fsutil::write_atomic_token(&path, &bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                if std::fs::remove_file(self.ballast()).is_ok() {
                    tracing::warn!(
                        "the disk holding {} is full; the token store used its reserve to save a token",
                        self.dir.display()
                    );
                    crate::fsutil::write_atomic_token(&path, &bytes).map_err(|e| self.io(&path, e))
                } else {
                    Err(self.io(&path, e))
                }
            }
            r => r.map_err(|e| self.io(&path, e)),
        }
    }

    /// Takes the cross-process lock of one account, waiting up to `wait`.
    pub async fn lock(&self, account: &str, wait: Duration) -> Result<AccountLock, StoreError> {
        let (path, file) = self.lock_file(account)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(AccountLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
                Err(std::fs::TryLockError::Error(e)) => return Err(self.io(&path, e)),
            }
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rt: &str) -> TokenRecord {
        TokenRecord {
            version: 1,
            account: "alice".into(),
            brand: "peugeot".into(),
            refresh_token: Some(SecretString::from(rt.to_owned())),
            access_token: None,
            access_expires_at: None,
            chain_started_at: None,
            refreshed_at: None,
            source: Some("login".into()),
            previous_refresh_sha256: None,
            bootstrap_sha256: None,
            password_hmac: None,
            refused_sha256: Vec::new(),
            unauthorized_refresh_at: None,
            needs_reauth: false,
            reason: None,
            updated_at: crate::timefmt::now(),
        }
    }

    #[test]
    fn save_load_modes_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.prepare().unwrap();
        store.save(&record("rt-1")).unwrap();
        store.save(&record("rt-2")).unwrap();
        let back = store.load("alice").unwrap().unwrap();
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-2");
        let mode = std::fs::metadata(store.path("alice"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        std::fs::write(store.dir().join(".tmpabc"), b"half").unwrap();
        store.prepare().unwrap();
        assert!(!store.dir().join(".tmpabc").exists());
        assert!(store.load("nobody").unwrap().is_none());
        store.preflight().unwrap();
        // Debug of a record never shows the token.
        assert!(!format!("{:?}", store.load("alice").unwrap()).contains("rt-2"));
    }

    #[tokio::test]
    async fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.prepare().unwrap();
        let held = store
            .lock("alice", Duration::from_millis(10))
            .await
            .unwrap();
        assert!(matches!(
            store.lock("alice", Duration::from_millis(60)).await,
            Err(StoreError::Locked { .. })
        ));
        drop(held);
        store
            .lock("alice", Duration::from_millis(10))
            .await
            .unwrap();
    }
}
