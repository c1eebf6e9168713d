//! The analytics database: opening SQLite with the right pragmas, migrations, and the few writes
//! the sync engine makes. Tokens never enter this file (`auth::store` keeps them elsewhere).
//!
//! Pragmas: WAL (readers never block the writer), `synchronous=NORMAL` (durable across process
//! crashes; a power cut may roll back the last pass, which the next poll re-observes), no
//! checkpoint on close (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`), so the `-wal` and `-shm` files stay
//! when the daemon stops: a reader in the group, who cannot create files in the 0750 directory,
//! can still open the database read-only between `--once` runs (SQLite only deletes them after a
//! checkpoint on close),
//! `foreign_keys=ON`, `busy_timeout` (a checkpointing reader never surfaces as an error),
//! `journal_size_limit`. Every write transaction is `BEGIN IMMEDIATE`, so a busy database waits
//! on the busy timeout instead of failing at lock upgrade. After each pass the WAL is
//! checkpointed when it has grown, so a long reader cannot make it grow without bound. In
//! Litestream mode (`external_checkpointing`, [`Checkpoints::External`]) no connection of this
//! program checkpoints at all: [`Db::open_for`] sets `wal_autocheckpoint = 0` as the connection's
//! first statement, before migrations, the closing of dead runs, an import or the removal of an
//! exported account write anything (a checkpoint behind Litestream's back breaks its replica).
//!
//! Migrations are plain SQL files in `migrations/`, embedded in the binary, applied in order,
//! each in its own transaction, and tracked with `PRAGMA user_version`. A database from a newer
//! version is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

pub mod bodies;
pub mod telemetry;

use crate::diff::{Change, CompleteListing, Known, diff, first_absences};
use crate::timefmt;

/// The embedded migrations, in order; migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/0001_init.sql")),
    ("0002_views", include_str!("migrations/0002_views.sql")),
    (
        "0003_telemetry",
        include_str!("migrations/0003_telemetry.sql"),
    ),
    (
        "0004_hardening",
        include_str!("migrations/0004_hardening.sql"),
    ),
    ("0005_reports", include_str!("migrations/0005_reports.sql")),
    (
        "0006_compact_bodies",
        include_str!("migrations/0006_compact_bodies.sql"),
    ),
    (
        "0007_listed_until",
        include_str!("migrations/0007_listed_until.sql"),
    ),
    ("0008_values", include_str!("migrations/0008_values.sql")),
];

/// The schema version this binary writes.
pub fn schema_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// A database error, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}{}", diagnose(path, source))]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this program's {supported}; upgrade stellantis-sync"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database {path}: journal mode is {mode}, not WAL")]
    NotWal { path: PathBuf, mode: String },
    #[error(
        "database {path} was not migrated: the copy taken before migrating failed ({reason}); free space next to it or fix its directory's permissions"
    )]
    BackupBeforeMigration { path: PathBuf, reason: String },
}

/// For I/O errors SQLite's own message ("disk I/O error") rarely says why; a small probe write
/// next to the database asks the operating system (no space, read-only file system, permissions).
pub(crate) fn diagnose(path: &Path, e: &rusqlite::Error) -> String {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return String::new();
    };
    if !matches!(
        f.code,
        rusqlite::ErrorCode::DiskFull
            | rusqlite::ErrorCode::SystemIoFailure
            | rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
    ) {
        return String::new();
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = tempfile::tempfile_in(dir).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &[0u8; 65_536])?;
        f.sync_all()
    });
    match probe {
        Ok(()) => String::new(),
        Err(io) => format!(" ({}: {io})", dir.display()),
    }
}

impl DbError {
    /// Whether another process holds the database (a reader's exclusive lock, a second writer):
    /// it passes (exit 75).
    pub fn is_busy(&self) -> bool {
        matches!(self, DbError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }

    /// Whether this is the disk being full or read-only (exit 74) rather than a bug.
    pub fn is_io(&self) -> bool {
        matches!(self, DbError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
            if matches!(e.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::PermissionDenied))
    }
}

/// The writer's connection.
pub struct Db {
    conn: Connection,
    path: PathBuf,
    /// Account ids by name (rows are never deleted, so the cache cannot go stale).
    account_ids: std::collections::HashMap<String, i64>,
    /// Litestream mode: another process checkpoints the WAL (`external_checkpointing`).
    external_checkpoints: bool,
    /// What the next finished run's requests saw, written with its result ([`Db::set_run_usage`]).
    run_usage: Option<crate::api::usage::Seen>,
    /// An export file being built: its schema steps are not news to the operator.
    quiet_migrations: bool,
}

/// Who checkpoints a live database's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoints {
    /// This process: SQLite's automatic checkpoints and the one after each pass.
    Own,
    /// Another process (Litestream, `external_checkpointing`): `wal_autocheckpoint = 0` from the
    /// connection's first statement, and no checkpoint after passes.
    External,
}

/// How [`Db::open_with`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The analytics database: WAL, with the checkpoints of [`Checkpoints`].
    Live(Checkpoints),
    /// An export file being built (`transfer`): no journal, no WAL, no automatic checkpoint
    /// (of the source database it reads through `ATTACH` either).
    Export,
}

/// What a successful listing did to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub vehicles_seen: usize,
    pub changes: usize,
}

impl Db {
    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (a busy database waits on the busy
    /// timeout instead of failing at lock upgrade) and commits; an error rolls back and names the
    /// file.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            });
        result.map_err(|e| self.err(e))
    }

    /// Opens (creating if needed) and migrates the database; this process checkpoints its WAL.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_with(path, Mode::Live(Checkpoints::Own))
    }

    /// Opens the configured database as every process that writes it must: with the configured
    /// checkpoint mode (`external_checkpointing`) in force from the first statement, before
    /// migrations or the closing of dead runs write anything.
    pub fn open_for(cfg: &crate::config::Config) -> Result<Db, DbError> {
        let who = if cfg.ops.external_checkpointing {
            Checkpoints::External
        } else {
            Checkpoints::Own
        };
        Db::open_with(&cfg.database, Mode::Live(who))
    }

    /// Opens (creating if needed) and migrates a database in the given mode.
    pub fn open_with(path: &Path, mode: Mode) -> Result<Db, DbError> {
        let conn = Connection::open(path).map_err(|source| DbError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        let mut db = Db {
            conn,
            path: path.to_owned(),
            account_ids: std::collections::HashMap::new(),
            external_checkpoints: mode == Mode::Live(Checkpoints::External),
            run_usage: None,
            quiet_migrations: mode == Mode::Export,
        };
        db.configure(mode)?;
        db.migrate()?;
        Ok(db)
    }

    fn configure(&mut self, mode: Mode) -> Result<(), DbError> {
        // First, before any statement can write: no checkpoint when this connection closes
        // (see the module docs), and none at all when another process owns them (Litestream).
        // They are connection-wide, so they hold for a database ATTACHed later too.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(|e| self.err(e))?;
        if mode != Mode::Live(Checkpoints::Own) {
            self.conn
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .busy_timeout(Duration::from_secs(30))
            .map_err(|e| self.err(e))?;
        // Takes effect only before the first table exists (a new file): freed pages can then be
        // returned with `incremental_vacuum` (src/retention.rs). Older files keep their mode.
        self.conn
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(|e| self.err(e))?;
        if mode == Mode::Export {
            // A file built whole and deleted on any failure: no journal (nothing beside it that
            // could hold a copy of its pages), fsynced once by the caller when complete.
            return self
                .conn
                .execute_batch(
                    "PRAGMA main.journal_mode = OFF;
                     PRAGMA main.synchronous = OFF;
                     PRAGMA foreign_keys = ON;",
                )
                .map_err(|e| self.err(e));
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::NotWal {
                path: self.path.clone(),
                mode,
            });
        }
        self.conn
            .execute_batch(
                "PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA journal_size_limit = 16777216;",
            )
            .map_err(|e| self.err(e))?;
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    /// The schema version stored in the file.
    pub fn user_version(&self) -> Result<u32, DbError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let found = self.user_version()?;
        let supported = schema_version();
        if found > supported {
            return Err(DbError::TooNew {
                path: self.path.clone(),
                found,
                supported,
            });
        }
        if found > 0 && found < supported {
            // A database with a schema (and so, maybe, history) is copied before it changes.
            let copy =
                crate::backup::before_migration(&self.conn, &self.path, found).map_err(|e| {
                    DbError::BackupBeforeMigration {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    }
                })?;
            tracing::info!(backup = %copy.display(), "database copied before its migration from schema {found}");
        }
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i + 1;
            let version_i64 = i64::try_from(version).unwrap_or(i64::MAX);
            self.write(|tx| {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version_i64)
            })?;
            if self.quiet_migrations {
                tracing::debug!(migration = name, "export file at schema {version}");
            } else {
                tracing::info!(
                    migration = name,
                    "database {} migrated to schema {version}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Marks runs left `running` by a process that died (a crash, SIGKILL, an abandoned pass) as
    /// failed with `error_kind = 'aborted'`. Call it holding the instance lock, so no run of a
    /// live process is touched. Returns how many runs were closed.
    pub fn close_abandoned_runs(&mut self, why: &str) -> Result<usize, DbError> {
        let now = timefmt::now();
        let n = self.write(|tx| {
            tx.execute(
                "UPDATE sync_runs SET status = 'failed', finished_at = ?1, error_kind = 'aborted',
                        error_message = ?2 WHERE status = 'running'",
                params![now, why],
            )
        })?;
        if n > 0 {
            tracing::warn!("{n} run(s) left running were marked failed (aborted): {why}");
        }
        Ok(n)
    }

    /// The account's id, creating its row if needed.
    pub fn account_id(&mut self, name: &str, brand: &str) -> Result<i64, DbError> {
        if let Some(id) = self.account_ids.get(name) {
            return Ok(*id);
        }
        let now = timefmt::now();
        self.conn
            .execute(
                "INSERT INTO accounts (name, brand, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET brand = excluded.brand",
                params![name, brand, now],
            )
            .map_err(|e| self.err(e))?;
        let id = self
            .conn
            .query_row(
                "SELECT account_id FROM accounts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        self.account_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Records the start of a run in one small transaction (committed at once: a crash leaves
    /// it `running`).
    pub fn begin_run(&mut self, account_id: i64) -> Result<i64, DbError> {
        let now = timefmt::now();
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO sync_runs (account_id, started_at, status) VALUES (?1, ?2, 'running')",
            )?
            .execute(params![account_id, now])?;
            let id = tx.last_insert_rowid();
            tx.prepare_cached("UPDATE accounts SET last_attempt_at = ?2 WHERE account_id = ?1")?
                .execute(params![account_id, now])?;
            Ok(id)
        })
    }

    /// What the requests of the run about to be finished saw (identity-provider requests, 429s,
    /// `X-RateLimit-*`): written in the same transaction as the run's result.
    pub fn set_run_usage(&mut self, seen: crate::api::usage::Seen) {
        self.run_usage = Some(seen);
    }

    /// Records a failed run and the account's state; nothing else changes.
    pub fn finish_failed(
        &mut self,
        run_id: i64,
        account_id: i64,
        kind: &str,
        message: &str,
        http_requests: u32,
        state: &str,
    ) -> Result<(), DbError> {
        let run = FinishedRun {
            run_id,
            account_id,
            started_at: None,
            http_requests,
            usage: self.run_usage.take(),
            end: RunEnd::Failed {
                kind: kind.to_owned(),
                message: message.to_owned(),
                state: state.to_owned(),
            },
        };
        let now = timefmt::now();
        self.write(|tx| finish_one(tx, &run, &now)).map(|_| ())
    }

    /// Applies a complete listing in one transaction: the diff against what is known, the
    /// changes, the vehicles' current state, the run's success and the account's state.
    pub fn apply_listing(
        &mut self,
        run_id: i64,
        account_id: i64,
        listing: &CompleteListing,
        http_requests: u32,
    ) -> Result<Applied, DbError> {
        let usage = self.run_usage.take();
        let now = timefmt::now();
        let changes = self.write(|tx| {
            write_usage(tx, run_id, usage)?;
            record_listing(tx, run_id, account_id, http_requests, listing, &now)
        })?;
        crate::faultpoint::hit("after_db_commit");
        Ok(Applied {
            vehicles_seen: listing.len(),
            changes,
        })
    }

    /// Opens a pass: each account's run gets its `running` marker, all in one transaction (one
    /// commit for the pass, not one per account). Returns (account_id, run_id) per account, in
    /// order. A crash leaves the markers, closed as `aborted` at the next start.
    pub fn begin_pass(
        &mut self,
        accounts: &[(String, String)],
    ) -> Result<Vec<(i64, i64)>, DbError> {
        let mut ids = Vec::with_capacity(accounts.len());
        for (name, brand) in accounts {
            ids.push(self.account_id(name, brand)?);
        }
        let now = timefmt::now();
        self.write(|tx| {
            let mut ins = tx.prepare_cached(
                "INSERT INTO sync_runs (account_id, started_at, status) VALUES (?1, ?2, 'running')",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                ins.execute(params![id, now])?;
                out.push((*id, tx.last_insert_rowid()));
            }
            Ok(out)
        })
    }

    /// The vehicles of an account recorded missing from its last listing (`vehicle_absences`).
    pub fn missing_vehicles(&self, account_id: i64) -> Result<Vec<String>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT vehicle_id FROM vehicle_absences WHERE account_id = ?1")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([account_id], |r| r.get(0))
            .and_then(|r| r.collect::<rusqlite::Result<Vec<String>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Deletes the `running` markers of runs a stopped pass never started.
    pub fn drop_unstarted_runs(&mut self, run_ids: &[i64]) -> Result<(), DbError> {
        self.write(|tx| {
            let mut del = tx
                .prepare_cached("DELETE FROM sync_runs WHERE run_id = ?1 AND status = 'running'")?;
            for id in run_ids {
                del.execute([id])?;
            }
            Ok(())
        })
    }

    /// Group commit: the finished runs of several accounts in one transaction, each inside its
    /// own savepoint, so each run is all or nothing (a run whose writes fail is rolled back
    /// alone and reported failed; the others commit). Returns, per run and in order, the changes
    /// recorded or why it was not recorded. Nothing is reported recorded before the commit.
    pub fn finish_runs(&mut self, runs: &[FinishedRun]) -> Vec<Result<usize, String>> {
        let now = timefmt::now();
        let path = self.path.clone();
        let mut each = Vec::with_capacity(runs.len());
        let committed = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                for run in runs {
                    tx.execute_batch("SAVEPOINT run")?;
                    match finish_one(&tx, run, &now) {
                        Ok(n) => {
                            tx.execute_batch("RELEASE run")?;
                            each.push(Ok(n));
                        }
                        Err(e) => {
                            tx.execute_batch("ROLLBACK TO run; RELEASE run")?;
                            each.push(Err(format!("database {}: {e}", path.display())));
                        }
                    }
                }
                tx.commit()
            });
        match committed {
            Ok(()) => {
                crate::faultpoint::hit("after_db_commit");
                each
            }
            Err(e) => {
                let why = self.err(e).to_string();
                runs.iter().map(|_| Err(why.clone())).collect()
            }
        }
    }

    /// Checkpoints the WAL when it has grown past `threshold` bytes (RESTART, then TRUNCATE if
    /// no reader is in the way), so a long-lived reader cannot make it grow without bound.
    pub fn checkpoint_if_large(&mut self, threshold: u64) -> Result<(), DbError> {
        if self.external_checkpoints {
            return Ok(());
        }
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size < threshold {
            return Ok(());
        }
        // Never wait for readers here: with the normal busy timeout, TRUNCATE would block the
        // daemon for as long as an analyst holds a snapshot. A busy checkpoint is simply retried
        // after the next pass.
        self.conn
            .busy_timeout(Duration::ZERO)
            .map_err(|e| self.err(e))?;
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
        self.conn
            .busy_timeout(Duration::from_secs(30))
            .map_err(|e| self.err(e))?;
        match result {
            Ok((busy, log, done)) => {
                tracing::debug!(busy, log, done, wal_bytes = size, "WAL checkpoint");
            }
            Err(e) => tracing::debug!("WAL checkpoint postponed: {e}"),
        }
        Ok(())
    }

    /// Leaves every checkpoint to another process (Litestream): `wal_autocheckpoint = 0` on
    /// this connection and no [`Db::checkpoint_if_large`] after passes.
    pub fn leave_checkpoints_to_others(&mut self) -> Result<(), DbError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| self.err(e))?;
        self.external_checkpoints = true;
        Ok(())
    }

    /// Takes the checkpoints back (a reload turned `external_checkpointing` off): SQLite's
    /// default `wal_autocheckpoint` (1,000 pages) and the checkpoint after passes.
    pub fn take_checkpoints_back(&mut self) -> Result<(), DbError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 1000)
            .map_err(|e| self.err(e))?;
        self.external_checkpoints = false;
        Ok(())
    }

    /// The connection, for read-only helpers and tests.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// How one account's run ended, for [`Db::finish_runs`].
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// A complete listing: diffed and recorded.
    Listed { listing: CompleteListing },
    /// A failure: the run row and the account's state (`failing`, `needs_reauth`).
    Failed {
        kind: String,
        message: String,
        state: String,
    },
}

/// One account's finished run.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub run_id: i64,
    pub account_id: i64,
    /// When the account's run really started (the pass wrote one marker time for all), or
    /// `None` to keep the marker's.
    pub started_at: Option<String>,
    pub http_requests: u32,
    /// What its requests saw (identity-provider requests, 429s, `X-RateLimit-*`).
    pub usage: Option<crate::api::usage::Seen>,
    pub end: RunEnd,
}

/// Writes one finished run inside the caller's transaction; returns the changes recorded.
fn finish_one(
    tx: &rusqlite::Transaction<'_>,
    run: &FinishedRun,
    now: &str,
) -> rusqlite::Result<usize> {
    let (run_id, account_id) = (run.run_id, run.account_id);
    write_usage(tx, run_id, run.usage)?;
    if let Some(started) = &run.started_at {
        tx.prepare_cached("UPDATE sync_runs SET started_at = ?2 WHERE run_id = ?1")?
            .execute(params![run_id, started])?;
        tx.prepare_cached("UPDATE accounts SET last_attempt_at = ?2 WHERE account_id = ?1")?
            .execute(params![account_id, started])?;
    }
    match &run.end {
        RunEnd::Failed {
            kind,
            message,
            state,
        } => {
            let message: String = message.chars().take(1000).collect();
            tx.prepare_cached(
                "UPDATE sync_runs SET status = 'failed', finished_at = ?2, error_kind = ?3, error_message = ?4,
                        http_requests = ?5 WHERE run_id = ?1",
            )?
            .execute(params![run_id, now, kind, message, run.http_requests])?;
            tx.prepare_cached(
                "UPDATE accounts SET state = ?2, state_reason = ?3 WHERE account_id = ?1",
            )?
            .execute(params![account_id, state, format!("{kind}: {message}")])?;
            Ok(0)
        }
        RunEnd::Listed { listing } => {
            record_listing(tx, run_id, account_id, run.http_requests, listing, now)
        }
    }
}

/// A complete listing's part of a run: the diff against what is known, the changes, the
/// vehicles' state, the run's success and the account's state. Returns the changes recorded.
fn record_listing(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    account_id: i64,
    http_requests: u32,
    listing: &CompleteListing,
    now: &str,
) -> rusqlite::Result<usize> {
    let hashes: Vec<Vec<u8>> = listing
        .vehicles()
        .iter()
        .map(|v| data_hash(v.json()))
        .collect();
    let listed: std::collections::HashMap<&str, &[u8]> = listing
        .vehicles()
        .iter()
        .zip(&hashes)
        .map(|(v, h)| (v.id.as_str(), h.as_slice()))
        .collect();
    let known = load_known(tx, account_id, &listed)?;
    let changes = diff(&known, listing);
    write_changes(tx, run_id, account_id, now, &changes, listing, &hashes)?;
    write_absences(tx, run_id, account_id, now, &known, listing)?;
    crate::faultpoint::hit("inside_db_transaction");
    tx.prepare_cached(
        "UPDATE sync_runs SET status = 'ok', finished_at = ?2, http_requests = ?3, vehicles_seen = ?4,
                changes = ?5 WHERE run_id = ?1",
    )?
    .execute(params![run_id, now, http_requests, listing.len() as i64, changes.len() as i64])?;
    tx.prepare_cached(
        "UPDATE accounts SET state = 'ok', state_reason = NULL, last_sync_at = ?2 WHERE account_id = ?1",
    )?
    .execute(params![account_id, now])?;
    Ok(changes.len())
}

fn write_usage(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    usage: Option<crate::api::usage::Seen>,
) -> rusqlite::Result<()> {
    let Some(u) = usage else { return Ok(()) };
    tx.prepare_cached(
        "UPDATE sync_runs SET idp_requests = ?2, rate_limited_responses = ?3, ratelimit_day_limit = ?4,
                ratelimit_day_remaining = ?5, ratelimit_burst_limit = ?6, ratelimit_burst_remaining = ?7
         WHERE run_id = ?1",
    )?
    .execute(params![
        run_id,
        u.idp_requests,
        u.rate_limited,
        u.day_limit,
        u.day_remaining,
        u.burst_limit,
        u.burst_remaining
    ])?;
    Ok(())
}

/// XXH3-128 of a vehicle's JSON text (a hint for "unchanged"; big-endian bytes). A fixed,
/// documented algorithm, so stored hashes stay valid across versions; an accidental collision of
/// two different texts has a probability near 2^-128.
pub fn data_hash(text: &str) -> Vec<u8> {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
        .to_be_bytes()
        .to_vec()
}

/// (vehicle_id, vin, data_hash, removed) of one stored vehicle.
type KnownRow = (String, Option<String>, Option<Vec<u8>>, bool);

/// What is known of the account's vehicles. The JSON is loaded only for vehicles whose stored
/// hash differs from the listed one; for the others `data` stays `None`, which the diff reads
/// as "unchanged".
fn load_known(
    tx: &rusqlite::Transaction<'_>,
    account_id: i64,
    listed: &std::collections::HashMap<&str, &[u8]>,
) -> rusqlite::Result<Vec<Known>> {
    let mut st = tx.prepare_cached(
        "SELECT vehicle_id, vin, data_hash, removed_at IS NOT NULL FROM vehicles WHERE account_id = ?1",
    )?;
    let rows: Vec<KnownRow> = st
        .query_map([account_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let missing: std::collections::HashSet<String> = tx
        .prepare_cached("SELECT vehicle_id FROM vehicle_absences WHERE account_id = ?1")?
        .query_map([account_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut data_st =
        tx.prepare_cached("SELECT data FROM vehicles WHERE account_id = ?1 AND vehicle_id = ?2")?;
    let mut out = Vec::with_capacity(rows.len());
    for (vehicle_id, vin, hash, removed) in rows {
        let unchanged = !removed
            && hash.is_some()
            && listed.get(vehicle_id.as_str()).copied() == hash.as_deref();
        let data = if unchanged {
            None
        } else {
            let text: String = data_st.query_row(params![account_id, vehicle_id], |r| r.get(0))?;
            Some(serde_json::from_str(&text).unwrap_or(Value::Null))
        };
        out.push(Known {
            missing: missing.contains(&vehicle_id),
            vehicle_id,
            vin,
            data,
            removed,
        });
    }
    Ok(out)
}

fn json_text(v: Option<&Value>) -> Option<String> {
    v.map(Value::to_string)
}

fn text_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn write_changes(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    account_id: i64,
    now: &str,
    changes: &[Change],
    listing: &CompleteListing,
    hashes: &[Vec<u8>],
) -> rusqlite::Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO vehicle_changes (run_id, account_id, vehicle_id, vin, observed_at, kind, field, old_value, new_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut touched = std::collections::HashSet::new();
    for c in changes {
        ins.execute(params![
            run_id,
            account_id,
            c.vehicle_id,
            c.vin,
            now,
            c.kind.as_str(),
            c.field,
            json_text(c.old.as_ref()),
            json_text(c.new.as_ref())
        ])?;
        touched.insert(c.vehicle_id.as_str());
    }
    // A vehicle that leaves was last seen by the account's previous listing (its
    // `accounts.last_sync_at`, not yet moved by this one), unless it was already missing from
    // a listing before, when `listed_until` was set.
    let mut removed = tx.prepare_cached(
        "UPDATE vehicles SET removed_at = ?3, listed_until = CASE
             WHEN EXISTS (SELECT 1 FROM vehicle_absences x WHERE x.account_id = ?1 AND x.vehicle_id = ?2)
             THEN listed_until
             ELSE coalesce((SELECT last_sync_at FROM accounts WHERE account_id = ?1), listed_until) END
         WHERE account_id = ?1 AND vehicle_id = ?2",
    )?;
    // A vehicle that left the account is no longer polled: its open telemetry intervals end at
    // its last observation (a session ends `unknown`), instead of staying open for ever.
    let mut close_session = tx.prepare_cached(
        "UPDATE charging_sessions SET end_reason = 'unknown', ended_ts = max(started_ts, coalesce(
             (SELECT max(observed_ts) FROM vehicle_status s WHERE s.account_id = ?1 AND s.vin = ?2), started_ts))
         WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
    )?;
    let mut close_state = tx.prepare_cached(
        "UPDATE vehicle_states SET ended_ts = max(started_ts, coalesce(
             (SELECT max(observed_ts) FROM vehicle_status s WHERE s.account_id = ?1 AND s.vin = ?2), started_ts))
         WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
    )?;
    for c in changes.iter().filter(|c| c.kind.as_str() == "removed") {
        removed.execute(params![account_id, c.vehicle_id, now])?;
        if let Some(vin) = &c.vin {
            close_session.execute(params![account_id, vin])?;
            close_state.execute(params![account_id, vin])?;
        }
    }
    // No statement for the vehicles present and unchanged: they were seen now, which the
    // account's `last_sync_at` records (migration 0007).
    let mut upsert = tx.prepare_cached(
        "INSERT INTO vehicles (account_id, vehicle_id, vin, brand, motorization, label, first_seen_at, listed_until, removed_at, data, data_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, NULL, ?8, ?9)
         ON CONFLICT (account_id, vehicle_id) DO UPDATE SET vin = excluded.vin, brand = excluded.brand,
             motorization = excluded.motorization, label = excluded.label, data = excluded.data,
             data_hash = excluded.data_hash, listed_until = excluded.listed_until, removed_at = NULL",
    )?;
    for (listed, hash) in listing.vehicles().iter().zip(hashes) {
        if touched.contains(listed.id.as_str()) {
            // Only added or changed vehicles are parsed, for the convenience columns.
            let v = listed.value();
            upsert.execute(params![
                account_id,
                listed.id,
                crate::api::model::vin_of(&v),
                text_field(&v, "brand"),
                text_field(&v, "motorization"),
                text_field(&v, "label"),
                now,
                listed.json(),
                hash
            ])?;
        }
    }
    Ok(())
}

/// Keeps `vehicle_absences` in step: vehicles a multi-page listing lacks for the first time are
/// recorded missing; a vehicle seen again, or now recorded removed, is no longer missing.
fn write_absences(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    account_id: i64,
    now: &str,
    known: &[Known],
    listing: &CompleteListing,
) -> rusqlite::Result<()> {
    // Every vehicle missing before is settled by this complete listing: seen again, or recorded
    // removed by the diff (a second absence).
    if known.iter().any(|k| k.missing) {
        tx.prepare_cached("DELETE FROM vehicle_absences WHERE account_id = ?1")?
            .execute([account_id])?;
    }
    let mut add = tx.prepare_cached(
        "INSERT OR IGNORE INTO vehicle_absences (account_id, vehicle_id, since, run_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    // It was last seen by the account's previous listing (`last_sync_at`, not yet moved).
    let mut last_seen = tx.prepare_cached(
        "UPDATE vehicles SET listed_until = coalesce((SELECT last_sync_at FROM accounts WHERE account_id = ?1), listed_until)
         WHERE account_id = ?1 AND vehicle_id = ?2",
    )?;
    for id in first_absences(known, listing) {
        add.execute(params![account_id, id, now, run_id])?;
        last_seen.execute(params![account_id, id])?;
        tracing::info!(
            vehicle = %id.chars().take(12).collect::<String>(),
            "a vehicle is missing from a listing of several pages; it is recorded removed only if the next listing confirms"
        );
    }
    Ok(())
}

/// Runs `f` on the shared database from async code: on a blocking thread, under the lock (a
/// panic elsewhere that poisoned it does not stop the writes). A panic inside `f` is re-raised.
pub async fn with_db<T: Send + 'static>(
    db: &std::sync::Arc<std::sync::Mutex<Db>>,
    f: impl FnOnce(&mut Db) -> T + Send + 'static,
) -> T {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = db.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await
    .unwrap_or_else(|e| panic!("database task failed: {e}"))
}

/// Opens a database read-only (for `status` and other readers).
pub fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbError::Sqlite {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|source| DbError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
    Ok(conn)
}

/// The newest run of an account: (started_at, status, error_kind, error_message).
pub type LastRun = (String, String, Option<String>, Option<String>);

/// The newest run of an account, for `status`.
pub fn last_run(conn: &Connection, account: &str) -> rusqlite::Result<Option<LastRun>> {
    conn.query_row(
        "SELECT r.started_at, r.status, r.error_kind, r.error_message FROM sync_runs r
         JOIN accounts a USING (account_id) WHERE a.name = ?1 ORDER BY r.run_id DESC LIMIT 1",
        [account],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_6_keeps_every_body_and_gives_each_account_its_own_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            for (_, sql) in &MIGRATIONS[..5] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch(
                "PRAGMA user_version = 5;
                 INSERT INTO accounts (name, brand, created_at) VALUES ('a', 'peugeot', 'x'), ('b', 'peugeot', 'x');
                 INSERT INTO status_bodies VALUES (x'01', 1, 'V1', 10, '{\"n\":1}'), (x'02', 1, 'V1', 20, '{\"n\":2}');
                 INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash)
                 VALUES (1, 'V1', 10, 10, 10, x'01'), (1, 'V1', 20, 20, 20, x'02'), (2, 'V1', 20, 25, 25, x'02');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let rows: Vec<(i64, Vec<u8>, Option<i64>, String)> = db
            .conn()
            .prepare("SELECT account_id, body_hash, base_id, body FROM status_bodies ORDER BY account_id, body_hash")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, vec![1], None, "{\"n\":1}".to_owned()),
                (1, vec![2], None, "{\"n\":2}".to_owned()),
                (2, vec![2], None, "{\"n\":2}".to_owned()),
            ]
        );
        // Every observation finds its body under its own account.
        let orphans: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM vehicle_status s WHERE NOT EXISTS
                 (SELECT 1 FROM status_bodies b WHERE b.account_id = s.account_id AND b.body_hash = s.body_hash)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
    }

    #[test]
    fn a_group_commit_keeps_each_run_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let ids = db
            .begin_pass(&[
                ("a".into(), "peugeot".into()),
                ("b".into(), "peugeot".into()),
            ])
            .unwrap();
        let listed = |run: (i64, i64), id: &str| FinishedRun {
            run_id: run.1,
            account_id: run.0,
            started_at: Some("2026-01-01T00:00:00.000Z".into()),
            http_requests: 1,
            usage: None,
            end: RunEnd::Listed {
                listing: CompleteListing::assume_complete(&[
                    serde_json::json!({"id": id, "vin": "VR3X"}),
                ]),
            },
        };
        // The second run names an account that does not exist: its vehicle row breaks a foreign
        // key, so it is rolled back alone; the first and third commit.
        let broken = FinishedRun {
            account_id: 999,
            ..listed(ids[1], "car-b")
        };
        let failed = FinishedRun {
            end: RunEnd::Failed {
                kind: "http_503".into(),
                message: "gateway".into(),
                state: "failing".into(),
            },
            ..listed(ids[1], "unused")
        };
        let results = db.finish_runs(&[listed(ids[0], "car-a"), broken, failed]);
        assert_eq!(results[0], Ok(1));
        assert!(
            results[1]
                .as_ref()
                .is_err_and(|e| e.contains("FOREIGN KEY")),
            "{results:?}"
        );
        assert_eq!(results[2], Ok(0));
        let rows: Vec<(i64, String, String)> = db
            .conn
            .prepare("SELECT account_id, status, started_at FROM sync_runs ORDER BY run_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, "ok".to_owned(), "2026-01-01T00:00:00.000Z".to_owned()),
                (
                    2,
                    "failed".to_owned(),
                    "2026-01-01T00:00:00.000Z".to_owned()
                ),
            ]
        );
        let vehicles: i64 = db
            .conn
            .query_row("SELECT count(*) FROM vehicles", [], |r| r.get(0))
            .unwrap();
        assert_eq!(vehicles, 1, "only the committed run's vehicle");
        // A pass stopped before an account's turn leaves no run for it.
        let ids = db.begin_pass(&[("a".into(), "peugeot".into())]).unwrap();
        db.drop_unstarted_runs(&[ids[0].1]).unwrap();
        let n: i64 = db
            .conn
            .query_row("SELECT count(*) FROM sync_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn an_unchanged_listing_writes_no_vehicle_row_and_last_seen_keeps_its_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let account = db.account_id("a", "peugeot").unwrap();
        let a = serde_json::json!({"id": "car-a", "vin": "VR3AAAAAAAAAAAAAA"});
        let b = serde_json::json!({"id": "car-b", "vin": "VR3BBBBBBBBBBBBBB"});
        let list = |db: &mut Db, vs: &[serde_json::Value]| -> String {
            std::thread::sleep(Duration::from_millis(3));
            let run = db.begin_run(account).unwrap();
            db.apply_listing(run, account, &CompleteListing::assume_complete(vs), 1)
                .unwrap();
            db.conn
                .query_row("SELECT last_sync_at FROM accounts", [], |r| r.get(0))
                .unwrap()
        };
        let seen = |db: &Db, view: &str, vin: &str| -> String {
            db.conn
                .query_row(
                    &format!("SELECT last_seen_at FROM {view} WHERE vin = ?1"),
                    [vin],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let t1 = list(&mut db, &[a.clone(), b.clone()]);
        let changes_before = db.conn.total_changes();
        let t2 = list(&mut db, &[a.clone(), b.clone()]);
        // The unchanged listing touched the run and the account, not the vehicles.
        let listed: Vec<String> = db
            .conn
            .prepare("SELECT listed_until FROM vehicles ORDER BY vehicle_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(listed, [t1.clone(), t1.clone()]);
        // (the run row, its start and end, the account: 4; the vehicles would make it 6)
        assert!(
            db.conn.total_changes() - changes_before <= 4,
            "{}",
            db.conn.total_changes() - changes_before
        );
        assert_ne!(t1, t2);
        for view in ["vehicle_current", "vehicle_list"] {
            assert_eq!(seen(&db, view, "VR3AAAAAAAAAAAAAA"), t2, "{view}");
        }
        // b leaves: it was last seen by the second listing, and says so for good.
        let t3 = list(&mut db, std::slice::from_ref(&a));
        assert_eq!(seen(&db, "vehicle_list", "VR3BBBBBBBBBBBBBB"), t2);
        assert_eq!(seen(&db, "vehicle_list", "VR3AAAAAAAAAAAAAA"), t3);
        let _t4 = list(&mut db, std::slice::from_ref(&a));
        assert_eq!(seen(&db, "vehicle_list", "VR3BBBBBBBBBBBBBB"), t2);
    }

    #[test]
    fn a_vehicle_that_leaves_closes_its_open_telemetry_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let account = db.account_id("a", "peugeot").unwrap();
        let v = serde_json::json!({"id": "car1", "vin": "VR3AAAAAAAAAAAAAA"});
        let run = db.begin_run(account).unwrap();
        db.apply_listing(run, account, &CompleteListing::assume_complete(&[v]), 1)
            .unwrap();
        db.conn
            .execute_batch(
                "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash)
                     VALUES (1, 'VR3AAAAAAAAAAAAAA', 5000, 5000, 5000, x'00');
                 INSERT INTO charging_sessions (account_id, vin, started_ts) VALUES (1, 'VR3AAAAAAAAAAAAAA', 4000);
                 INSERT INTO vehicle_states (account_id, vin, state, started_ts) VALUES (1, 'VR3AAAAAAAAAAAAAA', 'charging', 4000);",
            )
            .unwrap();
        // An empty listing is confirmed by the next one before anything is removed.
        for _ in 0..2 {
            let run = db.begin_run(account).unwrap();
            db.apply_listing(run, account, &CompleteListing::assume_complete(&[]), 1)
                .unwrap();
        }
        let (ended, reason): (Option<i64>, Option<String>) = db
            .conn
            .query_row(
                "SELECT ended_ts, end_reason FROM charging_sessions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((ended, reason.as_deref()), (Some(5000), Some("unknown")));
        let open: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(open, 0);
    }
}
