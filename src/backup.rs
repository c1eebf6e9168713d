//! Backups of the database: consistent copies taken while the daemon writes.
//!
//! A copy is made with `VACUUM INTO` from a separate read-only connection: one read transaction,
//! so the copy is the snapshot at its start, compacted and without `-wal`/`-shm`. (SQLite's online
//! backup API restarts whenever another connection commits, so under a busy writer it may never
//! finish; `VACUUM INTO` does not care.) The copy is written under a temporary name next to its
//! destination, checked with `PRAGMA integrity_check`, fsynced, renamed into place and the
//! directory fsynced: a crash leaves either no backup or a complete, checked one. The temporary
//! file is owned by its writer's lock ([`crate::fsutil::OwnedTemp`]): every failure removes it
//! and its `-journal`, and the next run (`--once`, the daemon's start, `backup`: see
//! [`sweep_leftovers`]) removes what a killed one left in the backup directory.
//!
//! Scheduled backups go to `[backup] dir` as `stellantis-sync-NNNNNN-YYYYMMDDTHHMMSSZ.sqlite`:
//! a sequence number one past the highest in the directory, then the time. Only the newest
//! `keep` are kept, newest by sequence number: a clock stepped back or forward never makes a
//! stale copy look new (names of earlier builds, without a sequence, count as older than every
//! numbered one, and among themselves by time and collision counter). Only real copies count
//! ([`is_real_copy`]: SQLite's header and a whole number of pages), for `keep` and for the next
//! sequence number; a file named like a backup that is not one is left alone and named in a
//! warning (it may be an operator's, and is never deleted). Backups into one
//! directory take its lock (`.stellantis-sync-backup.lock`) for naming, copying and rotation. The last backup is recorded in `state_dir/backup.json`
//! (time, file, size, duration) for `status` and the metrics. Before a schema migration of a
//! database that already holds a schema, [`before_migration`] copies it next to the database as
//! `<file>.pre-schema-<version>-<time>.sqlite`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::fsutil::OwnedTemp;

/// The file name prefix of scheduled and `backup`-command copies in the backup directory.
pub const FILE_PREFIX: &str = "stellantis-sync-";

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup of {db}: cannot read the database: {source}")]
    Source {
        db: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("backup of {db} into {dest}: {reason}")]
    Write {
        db: PathBuf,
        dest: PathBuf,
        reason: String,
    },
    #[error("backup {dest} failed its integrity check ({detail}); it was removed")]
    Corrupt { dest: PathBuf, detail: String },
    #[error("backup destination {dest} already exists; choose another path")]
    Exists { dest: PathBuf },
}

/// What a finished backup produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub path: PathBuf,
    pub finished_at: String,
    pub bytes: u64,
    pub seconds: f64,
    /// `manual`, `scheduled`.
    pub kind: String,
}

fn write_err(db: &Path, dest: &Path, reason: impl std::fmt::Display) -> BackupError {
    BackupError::Write {
        db: db.to_owned(),
        dest: dest.to_owned(),
        reason: reason.to_string(),
    }
}

/// Copies the database at `db` to `dest` (which must not exist) with `VACUUM INTO` from a
/// read-only connection, checks the copy, fsyncs and renames it into place.
pub fn backup_to(db: &Path, dest: &Path) -> Result<BackupRecord, BackupError> {
    let conn = crate::store::open_read_only(db).map_err(|e| match e {
        crate::store::DbError::Sqlite { source, .. } => BackupError::Source {
            db: db.to_owned(),
            source,
        },
        other => write_err(db, dest, other),
    })?;
    copy_with(&conn, db, dest)
}

/// `VACUUM INTO` from `conn` (the database at `db`) to `dest`, then check, fsync, rename. The
/// copy is built in a lock-owned temporary file ([`crate::fsutil::OwnedTemp`]), which every
/// failure removes (with its `-journal`) and which a later backup removes after a kill.
fn copy_with(
    conn: &rusqlite::Connection,
    db: &Path,
    dest: &Path,
) -> Result<BackupRecord, BackupError> {
    let started = Instant::now();
    if dest.exists() {
        return Err(BackupError::Exists {
            dest: dest.to_owned(),
        });
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(db, dest, e))?;
    // The empty file exists (and is locked) before SQLite writes into it: VACUUM INTO takes an
    // empty file as a new one.
    let tmp = OwnedTemp::beside(dest).map_err(|e| write_err(db, dest, e))?;
    let tmp_text = tmp
        .path()
        .to_str()
        .ok_or_else(|| write_err(db, dest, "the path is not UTF-8"))?
        .to_owned();
    conn.execute("VACUUM INTO ?1", [&tmp_text])
        .map_err(|e| write_err(db, dest, e))?;
    let _ = std::fs::remove_file(crate::fsutil::with_suffix(tmp.path(), "-journal"));
    check(tmp.path()).map_err(|detail| BackupError::Corrupt {
        dest: dest.to_owned(),
        detail,
    })?;
    let bytes = tmp.persist(dest).map_err(|e| write_err(db, dest, e))?;
    Ok(BackupRecord {
        path: dest.to_owned(),
        finished_at: crate::timefmt::now(),
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        kind: "manual".into(),
    })
}

/// `PRAGMA integrity_check` on a copy: `Ok` when it answers the single row `ok`.
pub fn check(path: &Path) -> Result<(), String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let mut st = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(rows.join("; ").chars().take(500).collect())
    }
}

/// A timestamp for file names: `20261129T021500Z`.
fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Where a backup stands among the others in its directory: its sequence number first (it only
/// grows, whatever the clock does), then the time its name encodes, then the collision counter
/// of an earlier build's name. Copies named by earlier builds have sequence 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackupKey {
    pub seq: u64,
    pub stamp: u64,
    pub collision: u64,
}

/// `YYYYMMDDTHHMMSSZ` as the number YYYYMMDDHHMMSS, when it is one.
fn parse_stamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    ok.then(|| format!("{}{}", &s[..8], &s[9..15]).parse().ok())
        .flatten()
}

fn parse_number(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The key of one of our backups' names, or `None` for any other name. This build writes
/// `stellantis-sync-NNNNNN-YYYYMMDDTHHMMSSZ.sqlite` (sequence, then time); earlier builds wrote
/// `stellantis-sync-YYYYMMDDTHHMMSSZ[-N].sqlite`. Nothing else is ours (an operator's
/// `stellantis-sync-archive.sqlite`, or the database itself, never is).
pub fn backup_key(name: &str) -> Option<BackupKey> {
    let rest = name.strip_prefix(FILE_PREFIX)?.strip_suffix(".sqlite")?;
    if let Some((seq, time)) = rest.split_once('-')
        && let (Some(seq), Some(stamp)) = (parse_number(seq), parse_stamp(time))
    {
        return Some(BackupKey {
            seq,
            stamp,
            collision: 0,
        });
    }
    let (time, n) = match rest.split_once('-') {
        Some((s, n)) => (s, Some(n)),
        None => (rest, None),
    };
    let stamp = parse_stamp(time)?;
    let collision = match n {
        Some(n) => parse_number(n)?,
        None => 0,
    };
    Some(BackupKey {
        seq: 0,
        stamp,
        collision,
    })
}

/// Whether `name` is one of our backups ([`backup_key`]).
pub fn is_backup_name(name: &str) -> bool {
    backup_key(name).is_some()
}

/// The 16 bytes every SQLite database file starts with.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Whether the file at `path` can be a copy this program wrote: a regular file that starts with
/// SQLite's header magic, whose page size (header bytes 16-17, big-endian; 1 means 65536) is a
/// power of two from 512 to 65536, and whose size is a whole number of pages, at least one. An
/// empty file, a few bytes of junk or a truncated copy is not one. Cheap (one 18-byte read): the
/// full `PRAGMA integrity_check` each copy passed was run when it was written.
pub fn is_real_copy(path: &Path) -> bool {
    use std::io::Read as _;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(meta) = f.metadata() else {
        return false;
    };
    let mut head = [0u8; 18];
    if !meta.is_file() || f.read_exact(&mut head).is_err() || &head[..16] != SQLITE_MAGIC {
        return false;
    }
    let page = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    (512..=65536).contains(&page)
        && page.is_power_of_two()
        && meta.len() >= page
        && meta.len() % page == 0
}

/// Our backups in `dir`, oldest first by [`BackupKey`]: the files named as ours
/// ([`backup_key`]) that are real copies ([`is_real_copy`]). The second list holds the files
/// named as ours that are not: they neither count toward `keep` nor give a sequence number, and
/// are never removed (they may be an operator's).
fn scan(dir: &Path) -> (Vec<(BackupKey, PathBuf)>, Vec<PathBuf>) {
    let mut copies = Vec::new();
    let mut not_copies = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(key) = e.file_name().to_str().and_then(backup_key) else {
            continue;
        };
        if is_real_copy(&e.path()) {
            copies.push((key, e.path()));
        } else {
            not_copies.push(e.path());
        }
    }
    copies.sort();
    not_copies.sort();
    (copies, not_copies)
}

/// The real copies in `dir`, oldest first ([`scan`]).
fn backups_in(dir: &Path) -> Vec<(BackupKey, PathBuf)> {
    scan(dir).0
}

/// The name of the next backup in `dir`: one past the highest sequence number of a real copy
/// there. Names a file named like a backup that is not a copy in a warning.
fn next_name(dir: &Path) -> PathBuf {
    let (copies, not_copies) = scan(dir);
    for f in not_copies {
        tracing::warn!(
            file = %f.display(),
            "named like a backup but not an SQLite database: ignored by rotation, left in place"
        );
    }
    let seq = copies.last().map_or(0, |(k, _)| k.seq) + 1;
    dir.join(format!("{FILE_PREFIX}{seq:06}-{}.sqlite", stamp()))
}

/// The lock file that serialises backups into one directory (naming, copying, rotation).
const DIR_LOCK: &str = ".stellantis-sync-backup.lock";

/// A new backup in `dir` (named by its sequence number and the time), then the oldest beyond
/// `keep` removed. Records it in `state_dir/backup.json`.
pub fn backup_into_dir(
    db: &Path,
    dir: &Path,
    keep: usize,
    state_dir: &Path,
    kind: &str,
) -> Result<BackupRecord, BackupError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(db, dir, e))?;
    // Two backups at once (the schedule and the command) would pick the same sequence number.
    let lock_path = dir.join(DIR_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| write_err(db, &lock_path, e))?;
    remove_stale_temporaries(dir);
    let dest = next_name(dir);
    let mut rec = backup_to(db, &dest)?;
    rec.kind = kind.into();
    record(state_dir, &rec);
    for old in prune(dir, keep, &rec.path, db) {
        tracing::info!(file = %old.display(), "old backup removed (keep = {keep})");
    }
    drop(lock);
    Ok(rec)
}

/// Removes the oldest backups in `dir` beyond `keep` (at least 1); returns what it removed. Only
/// files named as ours ([`backup_key`]) that are real copies ([`is_real_copy`]) count, ordered by sequence number (then time), never by
/// the clock alone; the copy just written (`newest`) is always kept, and so is the database
/// itself.
pub fn prune(dir: &Path, keep: usize, newest: &Path, db: &Path) -> Vec<PathBuf> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let files: Vec<PathBuf> = backups_in(dir)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| !same(p, newest) && !same(p, db))
        .collect();
    let excess = files.len().saturating_sub(keep.max(1) - 1);
    let mut removed = Vec::new();
    for f in files.into_iter().take(excess) {
        if std::fs::remove_file(&f).is_ok() {
            removed.push(f);
        }
    }
    removed
}

/// Removes what an interrupted copy left in `dir` (`.stellantis-sync-….tmp-…` and its
/// `-journal`) once no live writer holds it: ownership is the writer's lock on the file, not a
/// PID in its name (a container's PID 1 is always "alive"). The PID-named leftovers of earlier
/// builds are removed too.
pub fn remove_stale_temporaries(dir: &Path) {
    for f in crate::fsutil::sweep(dir, FILE_PREFIX, true) {
        tracing::info!(file = %f.display(), "removed what an interrupted backup left");
    }
}

/// Removes what killed writers left where every run writes, once no live writer holds it
/// ([`crate::fsutil::sweep`]): the temporary copies of backups (and their `-journal`) in the
/// backup directory, and the temporary files of the small state files in `state_dir`
/// (`backup.json`, `budget.json`, ...: `.NAME.tmp-<hex>`, see [`crate::fsutil::write_atomic`]).
/// Also removes the `.tmpXXXXXX` files earlier builds left in `state_dir` (no lock told a dead
/// writer's from a live one's; no process of this build writes such a name). Run by `--once`,
/// the daemon's start and `backup`.
pub fn sweep_leftovers(state_dir: &Path, backup_dir: &Path) {
    remove_stale_temporaries(backup_dir);
    let mut removed = crate::fsutil::sweep(state_dir, "", false);
    removed.extend(crate::fsutil::sweep_legacy_temporaries(state_dir));
    for f in removed {
        tracing::info!(file = %f.display(), "removed what an interrupted write left");
    }
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("backup.json")
}

/// Writes the record of the last backup (temporary file and rename); failures are logged.
pub fn record(state_dir: &Path, rec: &BackupRecord) {
    let path = record_path(state_dir);
    let result = serde_json::to_vec_pretty(rec)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::fsutil::write_atomic(&path, &bytes, 0o600, true));
    if let Err(e) = result {
        tracing::warn!("cannot record the backup in {}: {e}", path.display());
    }
}

/// The last recorded backup, if any.
pub fn last_backup(state_dir: &Path) -> Option<BackupRecord> {
    let bytes = std::fs::read(record_path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The copy made before migrating a database from schema `version`: next to the database.
pub fn pre_migration_path(db: &Path, version: u32) -> PathBuf {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into());
    db.with_file_name(format!("{name}.pre-schema-{version}-{}.sqlite", stamp()))
}

/// Copies a database that is about to be migrated from schema `version` (the writer's own
/// connection, before the migration's first transaction) and checks the copy.
pub fn before_migration(
    conn: &rusqlite::Connection,
    db: &Path,
    version: u32,
) -> Result<PathBuf, BackupError> {
    let dest = pre_migration_path(db, version);
    if let (Some(dir), Some(name)) = (dest.parent(), db.file_name()) {
        crate::fsutil::sweep(
            dir,
            &format!("{}.pre-schema-", name.to_string_lossy()),
            true,
        );
    }
    copy_with(conn, db, &dest)?;
    Ok(dest)
}

/// One scheduled backup into `dir` (the daemon's `Job::Backup`, see `jobs`), rotated to `keep`,
/// on a blocking thread; logs what it wrote or why it failed.
pub async fn scheduled(db: PathBuf, dir: PathBuf, keep: usize, state_dir: PathBuf) {
    let job = tokio::task::spawn_blocking(move || {
        backup_into_dir(&db, &dir, keep, &state_dir, "scheduled")
    });
    match job.await {
        Ok(Ok(rec)) => tracing::info!(
            file = %rec.path.display(),
            bytes = rec.bytes,
            seconds = format!("{:.2}", rec.seconds),
            "backup written and checked"
        ),
        Ok(Err(e)) => tracing::error!("scheduled backup failed: {e}"),
        Err(e) => tracing::error!("scheduled backup task failed: {e}"),
    }
}

/// `stellantis-sync backup [--to PATH]`: prints what it wrote; returns the exit code.
#[allow(clippy::print_stdout, clippy::print_stderr)] // the command line's own output
pub async fn command(cfg: &crate::config::Config, to: Option<PathBuf>) -> u8 {
    if !cfg.database.exists() {
        eprintln!(
            "stellantis-sync: backup: the database {} does not exist yet",
            cfg.database.display()
        );
        return crate::exit::IOERR;
    }
    sweep_leftovers(&cfg.state_dir, &cfg.ops.backup_dir);
    let (db, state_dir) = (cfg.database.clone(), cfg.state_dir.clone());
    let (dir, keep) = (cfg.ops.backup_dir.clone(), cfg.ops.backup_keep);
    let job = tokio::task::spawn_blocking(move || match to {
        Some(p) if p.is_dir() => {
            remove_stale_temporaries(&p);
            let dest = next_name(&p);
            let rec = backup_to(&db, &dest)?;
            record(&state_dir, &rec);
            Ok(rec)
        }
        Some(p) => {
            if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                crate::fsutil::sweep(dir, &name.to_string_lossy(), false);
            }
            let rec = backup_to(&db, &p)?;
            record(&state_dir, &rec);
            Ok(rec)
        }
        None => backup_into_dir(&db, &dir, keep, &state_dir, "manual"),
    });
    match job.await {
        Ok(Ok(rec)) => {
            println!(
                "backup written: {} ({} bytes, {:.2} s, integrity_check ok)",
                rec.path.display(),
                rec.bytes,
                rec.seconds
            );
            crate::exit::OK
        }
        Ok(Err(e)) => {
            eprintln!("stellantis-sync: {e}");
            match e {
                // Refused, nothing written (as export-account refuses an existing file).
                BackupError::Exists { .. } => crate::transfer::REFUSED,
                BackupError::Corrupt { .. } => crate::exit::SOFTWARE,
                _ => crate::exit::IOERR,
            }
        }
        Err(e) => {
            eprintln!("stellantis-sync: backup task failed: {e}");
            crate::exit::SOFTWARE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_db(dir: &Path) -> PathBuf {
        let p = dir.join("db.sqlite");
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER PRIMARY KEY, y TEXT);
             INSERT INTO t(y) VALUES ('a'), ('b'), ('c');",
        )
        .unwrap();
        p
    }

    /// Writes a small real SQLite database at `path` (what rotation counts as a copy).
    fn fake_copy(path: &Path) {
        rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
    }

    #[test]
    fn a_backup_is_a_checked_copy_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let dest = dir.path().join("out/copy.sqlite");
        let rec = backup_to(&db, &dest).unwrap();
        assert!(rec.bytes > 0);
        let n: i64 = rusqlite::Connection::open(&dest)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        assert!(matches!(
            backup_to(&db, &dest),
            Err(BackupError::Exists { .. })
        ));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn rotation_keeps_the_newest_and_records_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        for old in ["20200101T000000Z", "20200102T000000Z", "20200103T000000Z"] {
            fake_copy(&bdir.join(format!("{FILE_PREFIX}{old}.sqlite")));
        }
        std::fs::write(bdir.join("unrelated.sqlite"), b"x").unwrap();
        // Files that look like ours but are not (the adversarial pass: keep deleted them).
        for theirs in [
            "stellantis-sync-home.sqlite",
            "stellantis-sync-2019-archive.sqlite",
            "stellantis-sync-20200101T000000Z-old.sqlite",
        ] {
            std::fs::write(bdir.join(theirs), b"x").unwrap();
        }
        let rec = backup_into_dir(&db, &bdir, 2, dir.path(), "scheduled").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&bdir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != DIR_LOCK)
            .collect();
        names.sort();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names.contains(&"unrelated.sqlite".to_owned()));
        assert!(names.contains(&"stellantis-sync-home.sqlite".to_owned()));
        assert!(names.contains(&"stellantis-sync-2019-archive.sqlite".to_owned()));
        assert!(names.contains(&format!("{FILE_PREFIX}20200103T000000Z.sqlite")));
        assert_eq!(last_backup(dir.path()), Some(rec));
    }

    #[test]
    fn the_copy_just_written_and_the_database_are_never_rotated_away() {
        let dir = tempfile::tempdir().unwrap();
        // The database itself named like a backup, in the backup directory, keep = 1.
        let db = sample_db(dir.path());
        let live = dir
            .path()
            .join(format!("{FILE_PREFIX}20200101T000000Z.sqlite"));
        std::fs::rename(&db, &live).unwrap();
        // A backup from "the future" (taken before the clock was set back).
        let future = dir
            .path()
            .join(format!("{FILE_PREFIX}29990101T000000Z.sqlite"));
        fake_copy(&future);
        let rec = backup_into_dir(&live, dir.path(), 1, dir.path(), "scheduled").unwrap();
        assert!(rec.path.exists(), "the new copy was rotated away");
        assert!(live.exists(), "the database was rotated away");
        assert!(!future.exists(), "keep = 1 keeps only the new copy");
        assert_eq!(last_backup(dir.path()).map(|r| r.path), Some(rec.path));
    }

    /// What a killed backup left is removed by the next one, whatever PID its name carries
    /// (PID 1, a container's main process, is always alive): only a copy whose writer still
    /// holds its lock stays.
    #[test]
    fn what_a_killed_backup_left_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        let pid1 = bdir.join(format!(".{FILE_PREFIX}20200101T000000Z.sqlite.tmp-1"));
        let pid1_journal = crate::fsutil::with_suffix(&pid1, "-journal");
        // PID 4194304 is above Linux's pid_max: never alive.
        let dead = bdir.join(format!(".{FILE_PREFIX}20200101T000000Z.sqlite.tmp-4194304"));
        // A copy killed with this build's names: its lock went with the process.
        let killed = bdir.join(format!(
            ".{FILE_PREFIX}000007-20200101T000000Z.sqlite.tmp-0123456789abcdef"
        ));
        let killed_journal = crate::fsutil::with_suffix(&killed, "-journal");
        for f in [&pid1, &pid1_journal, &dead, &killed, &killed_journal] {
            std::fs::write(f, b"partial").unwrap();
        }
        let live = OwnedTemp::beside(&bdir.join(format!("{FILE_PREFIX}x.sqlite"))).unwrap();
        backup_into_dir(&db, &bdir, 5, dir.path(), "manual").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&bdir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        left.sort();
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(left, vec![live_name], "only a live writer's copy stays");
        drop(live);
    }

    /// Issue 23, case 7: two backups in one second (`…Z.sqlite`, `…Z-2.sqlite`, and `…Z-10.sqlite`
    /// of an earlier build) are ordered by their time and counter, not as text (`-` sorts
    /// before `.`, `-10` before `-2`); numbered copies in order of their sequence number.
    #[test]
    fn rotation_orders_copies_of_one_second_by_their_counter() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        let name = |s: &str| bdir.join(format!("{FILE_PREFIX}{s}.sqlite"));
        for s in [
            "20200101T000000Z",
            "20200101T000000Z-2",
            "20200101T000000Z-10",
        ] {
            fake_copy(&name(s));
        }
        let newest = name("20200101T000001Z");
        fake_copy(&newest);
        let removed = prune(&bdir, 3, &newest, &db);
        assert_eq!(removed, vec![name("20200101T000000Z")]);
        // This build's copies, three in a row with keep = 2: the last two stay.
        let recs: Vec<BackupRecord> = (0..3)
            .map(|_| backup_into_dir(&db, &bdir, 2, dir.path(), "manual").unwrap())
            .collect();
        assert!(!recs[0].path.exists());
        assert!(recs[1].path.exists() && recs[2].path.exists());
        let seqs: Vec<u64> = recs
            .iter()
            .map(|r| {
                backup_key(&r.path.file_name().unwrap().to_string_lossy())
                    .unwrap()
                    .seq
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    /// Issue 23, case 8: after the clock was set back, each new backup deleted the one before
    /// it (its name sorted first) while the stale copies stayed. Now the sequence number
    /// decides: with keep = 3, three copies named in "the future" and then two new ones, the
    /// two new ones and the newest of the old stay. And a clock stepped forward then back
    /// again keeps the order of the sequence.
    #[test]
    fn rotation_survives_the_clock_stepping_back_and_forward() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        let ahead = ["20990101T000000Z", "20990101T000100Z", "20990101T000200Z"];
        for s in ahead {
            fake_copy(&bdir.join(format!("{FILE_PREFIX}{s}.sqlite")));
        }
        let first = backup_into_dir(&db, &bdir, 3, dir.path(), "manual").unwrap();
        let second = backup_into_dir(&db, &bdir, 3, dir.path(), "manual").unwrap();
        assert!(first.path.exists(), "the new copy before was deleted");
        assert!(second.path.exists());
        assert!(
            bdir.join(format!("{FILE_PREFIX}{}.sqlite", ahead[2]))
                .exists()
        );
        assert!(
            !bdir
                .join(format!("{FILE_PREFIX}{}.sqlite", ahead[0]))
                .exists()
        );
        assert_eq!(backups_in(&bdir).len(), 3);
        // A numbered copy taken while the clock was a century ahead, then copies at the right
        // time: the sequence orders them.
        let far = bdir.join(format!("{FILE_PREFIX}000099-21990101T000000Z.sqlite"));
        fake_copy(&far);
        let third = backup_into_dir(&db, &bdir, 2, dir.path(), "manual").unwrap();
        assert!(third.path.exists() && far.exists());
        assert_eq!(
            backup_key(&third.path.file_name().unwrap().to_string_lossy())
                .unwrap()
                .seq,
            100
        );
        assert_eq!(backups_in(&bdir).len(), 2);
    }

    /// Issue 23, F9: files named like backups that are not SQLite databases (an empty file, five
    /// bytes of junk) with higher sequence numbers neither count toward `keep` nor give the next
    /// sequence number; they are left alone (they may be an operator's), and the real copies stay.
    #[test]
    fn rotation_counts_only_real_copies() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        let real: Vec<PathBuf> = (0..3)
            .map(|_| {
                backup_into_dir(&db, &bdir, 3, dir.path(), "manual")
                    .unwrap()
                    .path
            })
            .collect();
        let empty = bdir.join(format!("{FILE_PREFIX}000999-20991231T000000Z.sqlite"));
        let junk = bdir.join(format!("{FILE_PREFIX}000998-20991230T000000Z.sqlite"));
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&junk, b"junk\n").unwrap();
        // SQLite's magic but a size no database has (not a whole page).
        let torn = bdir.join(format!("{FILE_PREFIX}000997-20991229T000000Z.sqlite"));
        let mut head = std::fs::read(&real[0]).unwrap();
        head.truncate(100);
        std::fs::write(&torn, &head).unwrap();
        let rec = backup_into_dir(&db, &bdir, 3, dir.path(), "manual").unwrap();
        let seq = |p: &Path| {
            backup_key(&p.file_name().unwrap().to_string_lossy())
                .unwrap()
                .seq
        };
        assert_eq!(
            seq(&rec.path),
            4,
            "the next sequence came from a file that is no copy"
        );
        assert!(!real[0].exists(), "keep = 3: the oldest real copy goes");
        assert!(real[1].exists() && real[2].exists() && rec.path.exists());
        assert!(
            empty.exists() && junk.exists() && torn.exists(),
            "not ours to delete"
        );
        assert_eq!(backups_in(&bdir).len(), 3);
    }

    #[test]
    fn a_real_copy_is_recognised_by_its_header_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let copy = dir.path().join("c.sqlite");
        backup_to(&db, &copy).unwrap();
        assert!(is_real_copy(&copy));
        let bytes = std::fs::read(&copy).unwrap();
        let p = dir.path().join("x.sqlite");
        for (what, b) in [
            ("empty", Vec::new()),
            ("junk", b"junk\n".to_vec()),
            ("header only", bytes[..100].to_vec()),
            ("a page and a bit", bytes[..bytes.len() - 1].to_vec()),
            ("zeros", vec![0u8; bytes.len()]),
        ] {
            std::fs::write(&p, &b).unwrap();
            assert!(!is_real_copy(&p), "{what}");
        }
        assert!(!is_real_copy(dir.path()), "a directory");
    }

    #[test]
    fn backup_names_are_parsed_strictly() {
        for ours in [
            "stellantis-sync-20261129T021500Z.sqlite",
            "stellantis-sync-20261129T021500Z-2.sqlite",
            "stellantis-sync-000001-20261129T021500Z.sqlite",
            "stellantis-sync-1234567-20261129T021500Z.sqlite",
        ] {
            assert!(is_backup_name(ours), "{ours}");
        }
        for theirs in [
            "stellantis-sync-home.sqlite",
            "stellantis-sync-20261129T021500Z-old.sqlite",
            "stellantis-sync--20261129T021500Z.sqlite",
            "stellantis-sync-000001-20261129T0215Z.sqlite",
            "stellantis-sync-20261129T021500Z-.sqlite",
            ".stellantis-sync-000001-20261129T021500Z.sqlite.tmp-1",
        ] {
            assert!(!is_backup_name(theirs), "{theirs}");
        }
    }

    #[test]
    fn a_corrupt_file_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.sqlite");
        let db = sample_db(dir.path());
        let mut bytes = std::fs::read(&db).unwrap_or_default();
        if bytes.len() < 8192 {
            // Force a checkpoint so the main file holds the table.
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            bytes = std::fs::read(&db).unwrap();
        }
        let page = 4096;
        for b in &mut bytes[page + 8..page + 200] {
            *b = 0xA5;
        }
        std::fs::write(&p, &bytes).unwrap();
        assert!(check(&p).is_err());
        assert!(check(&db).is_ok());
    }
}
