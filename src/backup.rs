//! Backups of the database: consistent copies taken while the daemon writes.
//!
//! A copy is made with `VACUUM INTO` from a separate read-only connection: one read transaction,
//! so the copy is the snapshot at its start, compacted and without `-wal`/`-shm`. (SQLite's online
//! backup API restarts whenever another connection commits, so under a busy writer it may never
//! finish; `VACUUM INTO` does not care.) The copy is written under a temporary name next to its
//! destination, checked with `PRAGMA integrity_check`, fsynced, renamed into place and the
//! directory fsynced: a crash leaves either no backup or a complete, checked one.
//!
//! Scheduled backups go to `[backup] dir` as `stellantis-sync-YYYYMMDDTHHMMSSZ.sqlite`; only the
//! newest `keep` such files are kept. The last backup is recorded in `state_dir/backup.json`
//! (time, file, size, duration) for `status` and the metrics. Before a schema migration of a
//! database that already holds a schema, [`before_migration`] copies it next to the database as
//! `<file>.pre-schema-<version>-<time>.sqlite`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

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

/// `VACUUM INTO` from `conn` (the database at `db`) to `dest`, then check, fsync, rename.
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
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let tmp_text = tmp
        .to_str()
        .ok_or_else(|| write_err(db, dest, "the path is not UTF-8"))?;
    let journal = PathBuf::from(format!("{}-journal", tmp.display()));
    if let Err(e) = conn.execute("VACUUM INTO ?1", [tmp_text]) {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&journal);
        return Err(write_err(db, dest, e));
    }
    let _ = std::fs::remove_file(&journal);
    if let Err(e) = check(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(BackupError::Corrupt {
            dest: dest.to_owned(),
            detail: e,
        });
    }
    let finish = || -> std::io::Result<u64> {
        let f = std::fs::File::open(&tmp)?;
        f.sync_all()?;
        let bytes = f.metadata()?.len();
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(bytes)
    };
    let bytes = finish().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(db, dest, e)
    })?;
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

/// A new backup in `dir` (named by the time), then the oldest beyond `keep` removed. Records it
/// in `state_dir/backup.json`.
pub fn backup_into_dir(
    db: &Path,
    dir: &Path,
    keep: usize,
    state_dir: &Path,
    kind: &str,
) -> Result<BackupRecord, BackupError> {
    remove_stale_temporaries(dir);
    let mut dest = dir.join(format!("{FILE_PREFIX}{}.sqlite", stamp()));
    let mut n = 1;
    while dest.exists() {
        n += 1;
        dest = dir.join(format!("{FILE_PREFIX}{}-{n}.sqlite", stamp()));
    }
    let mut rec = backup_to(db, &dest)?;
    rec.kind = kind.into();
    record(state_dir, &rec);
    for old in prune(dir, keep, &rec.path, db) {
        tracing::info!(file = %old.display(), "old backup removed (keep = {keep})");
    }
    Ok(rec)
}

/// Whether `name` is one of our backups: `stellantis-sync-YYYYMMDDTHHMMSSZ[-N].sqlite`, exactly
/// (an operator's `stellantis-sync-archive.sqlite`, or the database itself, never is).
pub fn is_backup_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(FILE_PREFIX)
        .and_then(|r| r.strip_suffix(".sqlite"))
    else {
        return false;
    };
    let (stamp, n) = match rest.split_once('-') {
        Some((s, n)) => (s, Some(n)),
        None => (rest, None),
    };
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    stamp_ok && n.is_none_or(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// Removes the oldest backups in `dir` beyond `keep` (at least 1); returns what it removed. Only
/// files named as ours ([`is_backup_name`]) count; the copy just written (`newest`) is always
/// kept, whatever its name says (after the clock was set back it sorts first), and so is the
/// database itself.
pub fn prune(dir: &Path, keep: usize, newest: &Path, db: &Path) -> Vec<PathBuf> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_backup_name)
                        && !same(p, newest)
                        && !same(p, db)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let excess = files.len().saturating_sub(keep.max(1) - 1);
    let mut removed = Vec::new();
    for f in files.into_iter().take(excess) {
        if std::fs::remove_file(&f).is_ok() {
            removed.push(f);
        }
    }
    removed
}

/// Removes what an interrupted copy left in `dir` (`.NAME.tmp-PID` and its `-journal`) when the
/// process PID is gone: a killed `backup` command must not leave a partial copy for ever.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!(".{FILE_PREFIX}"))
            .and_then(|r| r.rsplit_once(".tmp-"))
            .map(|(_, p)| p.trim_end_matches("-journal").to_owned())
        else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        if !alive
            && pid.bytes().all(|b| b.is_ascii_digit())
            && std::fs::remove_file(e.path()).is_ok()
        {
            tracing::info!(file = %e.path().display(), "removed what an interrupted backup left");
        }
    }
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("backup.json")
}

/// Writes the record of the last backup (temporary file and rename); failures are logged.
pub fn record(state_dir: &Path, rec: &BackupRecord) {
    let path = record_path(state_dir);
    let result = (|| -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })();
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
    let (db, state_dir) = (cfg.database.clone(), cfg.state_dir.clone());
    let (dir, keep) = (cfg.ops.backup_dir.clone(), cfg.ops.backup_keep);
    let job = tokio::task::spawn_blocking(move || match to {
        Some(p) if p.is_dir() => {
            let dest = p.join(format!("{FILE_PREFIX}{}.sqlite", stamp()));
            let rec = backup_to(&db, &dest)?;
            record(&state_dir, &rec);
            Ok(rec)
        }
        Some(p) => {
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
            std::fs::write(bdir.join(format!("{FILE_PREFIX}{old}.sqlite")), b"x").unwrap();
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
        std::fs::write(&future, b"x").unwrap();
        let rec = backup_into_dir(&live, dir.path(), 1, dir.path(), "scheduled").unwrap();
        assert!(rec.path.exists(), "the new copy was rotated away");
        assert!(live.exists(), "the database was rotated away");
        assert!(!future.exists(), "keep = 1 keeps only the new copy");
        assert_eq!(last_backup(dir.path()).map(|r| r.path), Some(rec.path));
    }

    #[test]
    fn what_a_killed_backup_left_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let bdir = dir.path().join("backups");
        std::fs::create_dir_all(&bdir).unwrap();
        // PID 4194304 is above Linux's pid_max: never alive.
        let dead = bdir.join(format!(".{FILE_PREFIX}20200101T000000Z.sqlite.tmp-4194304"));
        let dead_journal = PathBuf::from(format!("{}-journal", dead.display()));
        let mine = bdir.join(format!(".{FILE_PREFIX}x.sqlite.tmp-{}", std::process::id()));
        for f in [&dead, &dead_journal, &mine] {
            std::fs::write(f, b"partial").unwrap();
        }
        backup_into_dir(&db, &bdir, 5, dir.path(), "manual").unwrap();
        assert!(!dead.exists() && !dead_journal.exists());
        assert!(mine.exists(), "a live process's copy in progress stays");
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
