//! `export-account` / `import-account`: moving one account's history between databases (for
//! example from one shard to another after `--shard I/N` changed).
//!
//! - The export file is itself a SQLite database with this build's schema (migrated by
//!   [`Db::open`]), holding only that account's rows. With `--with-tokens` it also holds the
//!   account's token record in the table `transfer_token`, which no migration creates: the
//!   analytics database never has it. Such a file is a secret (mode 0600, like every export).
//! - Rows are copied table by table, in the order of [`ACCOUNT_TABLES`] (parents first), inside one
//!   transaction. An `INTEGER PRIMARY KEY` (rowid) id is renumbered by a per-table offset that puts
//!   the copied ids above the target's highest id, keeping their order; every column declared
//!   `REFERENCES` such a table is shifted by the same offset, and `account_id` takes the target's
//!   id of the account. Each table's copied row count is checked against the source's.
//! - The export file carries a SHA-256 of each table's rows (`transfer_checksum`, also never in
//!   an analytics database): import recomputes them and refuses a file whose content changed
//!   after export (a flipped byte in a stored body, an edited row), which SQLite's own checks
//!   cannot see. A file without that table (made by an earlier build) imports with a warning.
//! - Import refuses an account that already has any row in the target (apart from a bare
//!   `accounts` row), so two histories never mix and no row is duplicated. Import takes the
//!   target's instance lock (`daemon.lock`), so it refuses while a daemon runs there.
//! - `export-account --remove` deletes the account from the source after the export file is
//!   durable (it takes the source's instance lock). `--with-tokens` moves the refresh token (one
//!   token must live in one place: two instances using it would rotate each other out), so it
//!   needs `--remove`; the source's token file is deleted, and import writes the record to the
//!   target's token store (0600, durable write).
// Printing is this command's job: export-account and import-account report to the operator.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::store::{StoreError, TokenRecord, TokenStore, fingerprint};
use crate::config::{self, Checks, Config};
use crate::daemon::{self, StartError};
use crate::exit;
use crate::store::{self, Db, DbError};

/// Every table with an `account_id` column, parents before children. A migration that adds such
/// a table must add it here: export and import refuse to run on a schema with an uncovered one
/// (and `tests` fail), so no account's rows can be left behind.
pub const ACCOUNT_TABLES: &[&str] = &[
    "accounts",
    "sync_runs",
    "vehicles",
    "vehicle_changes",
    "vehicle_absences",
    "status_bodies",
    "vehicle_status",
    "vehicle_states",
    "charging_sessions",
    "trips",
    "vehicle_alerts",
    "maintenance",
    "telemetry_endpoints",
];

/// The table of an export file holding the token record (never in an analytics database).
const TOKEN_TABLE: &str = "transfer_token";

/// The table of an export file holding each copied table's row count and content digest.
const CHECKSUM_TABLE: &str = "transfer_checksum";

/// Row count and SHA-256 (hex) of every row of `schema.table`, in an order fixed by the rows'
/// own values (all columns), so the digest depends on the content only. Each value is hashed
/// with its type and length, so no two different rows hash alike by concatenation.
fn digest(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<(i64, String)> {
    use rusqlite::types::ValueRef;
    use sha2::Digest as _;
    let from = format!("{schema}.{}", quote(table));
    let columns = conn
        .prepare(&format!("SELECT * FROM {from}"))?
        .column_count();
    let order: Vec<String> = (1..=columns).map(|i| i.to_string()).collect();
    let mut st = conn.prepare(&format!(
        "SELECT * FROM {from} ORDER BY {}",
        order.join(", ")
    ))?;
    let mut rows = st.query([])?;
    let mut h = sha2::Sha256::new();
    let mut count = 0i64;
    while let Some(row) = rows.next()? {
        count += 1;
        for i in 0..columns {
            match row.get_ref(i)? {
                ValueRef::Null => h.update([0u8]),
                ValueRef::Integer(v) => {
                    h.update([1u8]);
                    h.update(v.to_be_bytes());
                }
                ValueRef::Real(v) => {
                    h.update([2u8]);
                    h.update(v.to_bits().to_be_bytes());
                }
                ValueRef::Text(b) => {
                    h.update([3u8]);
                    h.update((b.len() as u64).to_be_bytes());
                    h.update(b);
                }
                ValueRef::Blob(b) => {
                    h.update([4u8]);
                    h.update((b.len() as u64).to_be_bytes());
                    h.update(b);
                }
            }
        }
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((count, hex))
}

/// Whether the database open as `main` has the table `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The tables an export file's checksum covers: every account table, and the token record.
fn checksummed_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut tables: Vec<String> = ACCOUNT_TABLES.iter().map(|t| (*t).to_owned()).collect();
    if has_table(conn, TOKEN_TABLE)? {
        tables.push(TOKEN_TABLE.to_owned());
    }
    Ok(tables)
}

/// Writes the checksum table of the export file open as `main`.
fn write_checksums(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE main.{CHECKSUM_TABLE} (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, sha256 TEXT NOT NULL)"
    ))?;
    for table in checksummed_tables(conn)? {
        let (rows, sha) = digest(conn, "main", &table)?;
        conn.execute(
            &format!("INSERT INTO main.{CHECKSUM_TABLE} (name, rows, sha256) VALUES (?1, ?2, ?3)"),
            params![table, rows, sha],
        )?;
    }
    Ok(())
}

/// Recomputes an export file's checksums: `Ok(false)` when it has none (an earlier build's
/// file), an error naming the first table whose content changed.
fn verify_checksums(conn: &Connection, path: &Path) -> Result<bool, TransferError> {
    if !has_table(conn, CHECKSUM_TABLE).map_err(sql(path))? {
        return Ok(false);
    }
    let tables = checksummed_tables(conn).map_err(sql(path))?;
    let recorded_names: Vec<String> = conn
        .prepare(&format!("SELECT name FROM {CHECKSUM_TABLE} ORDER BY name"))
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(sql(path))?;
    if let Some(gone) = recorded_names.iter().find(|n| !tables.contains(n)) {
        return Err(TransferError::Damaged {
            path: path.to_owned(),
            detail: format!("table {gone}, covered by its checksum, is missing"),
        });
    }
    for table in tables {
        let recorded: Option<(i64, String)> = conn
            .query_row(
                &format!("SELECT rows, sha256 FROM {CHECKSUM_TABLE} WHERE name = ?1"),
                [&table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql(path))?;
        let found = digest(conn, "main", &table).map_err(sql(path))?;
        let detail = match recorded {
            None => format!("its checksum does not cover table {table}"),
            Some(r) if r != found => format!(
                "table {table} does not match the checksum written at export ({} rows recorded, {} found): the file changed after export",
                r.0, found.0
            ),
            Some(_) => continue,
        };
        return Err(TransferError::Damaged {
            path: path.to_owned(),
            detail,
        });
    }
    Ok(true)
}

/// Exit code of a refused transfer (sysexits `EX_DATAERR`): nothing was changed.
pub const REFUSED: u8 = 65;

/// Why an export or import did not happen; nothing was changed unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database {path}: {source}{why}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
        /// What the operating system says about the file's directory, asked when the error
        /// happened (a full disk is no longer full once the failed copy is removed).
        why: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tokens(#[from] StoreError),
    #[error(
        "{dir} is in use by a running stellantis-sync (lock {lock}); stop it first (e.g. systemctl stop stellantis-sync)"
    )]
    Busy { dir: String, lock: String },
    #[error("{dir}: {reason}")]
    StateDir { dir: String, reason: String },
    #[error("{path} already exists; an export never overwrites a file")]
    Exists { path: PathBuf },
    #[error("database {path} has no account named `{name}`")]
    NoAccount { path: PathBuf, name: String },
    #[error(
        "database {path} already holds history of `{name}` ({rows} rows in {table}); importing would mix two histories. Remove it there first (`export-account {name} --to FILE --remove`) or import elsewhere"
    )]
    AlreadyThere {
        path: PathBuf,
        name: String,
        table: String,
        rows: i64,
    },
    #[error(
        "database {path}: table {table} has an account_id column that export/import does not cover (add it to ACCOUNT_TABLES in src/transfer.rs)"
    )]
    Uncovered { path: PathBuf, table: String },
    #[error(
        "database {path} has schema version {found}, this program {expected}; {}",
        if found > expected {
            "it was written by a newer version of stellantis-sync: use that version (or a newer one) for this move"
        } else {
            "it was written by an older version: run this version's daemon (or `--once`) on that database, then export again"
        }
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path} is not an export of exactly one account (it holds {accounts})")]
    NotAnExport { path: PathBuf, accounts: i64 },
    #[error("{path} is damaged ({detail}); nothing was imported")]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "{path} holds {rows} rows in {table} of an account that is not its exported one; nothing was imported"
    )]
    StrayRows {
        path: PathBuf,
        table: String,
        rows: i64,
    },
    #[error("{path} holds no token record (export it with --with-tokens --remove)")]
    NoToken { path: PathBuf },
    #[error("account {name:?} has no token record ({path} does not exist); nothing was exported")]
    NoStoredToken { name: String, path: PathBuf },
    #[error("{path} does not exist; nothing was imported")]
    NoFile { path: PathBuf },
    #[error(
        "{path} names its account {name:?}, which is not a valid account name (letters, digits, `-`, `_`, `.`, `@`; at most 64; not starting with `.`); nothing was imported"
    )]
    BadName { path: PathBuf, name: String },
    #[error(
        "{path}: the token record belongs to {record:?}, not to the exported account {name:?}; nothing was imported"
    )]
    ForeignToken {
        path: PathBuf,
        name: String,
        record: String,
    },
    #[error(
        "removing `{name}` from {path} failed ({reason}); nothing was changed there: its token record is back and {export} was deleted. Try again when the database is not busy"
    )]
    RemoveUndone {
        path: PathBuf,
        name: String,
        reason: String,
        export: PathBuf,
    },
    #[error(
        "--with-tokens moves the refresh token out of this instance, so it needs --remove (a token used by two instances rotates the other one out)"
    )]
    TokensNeedRemove,
    #[error(
        "`{name}` already has a live refresh token in this instance ({path}); importing the one in {file} would put two chains in one place. To keep this instance's, import without --with-tokens (the file's token is then erased); to keep the file's, remove {path} first (that chain is then abandoned) and import again"
    )]
    TokenExists {
        path: PathBuf,
        name: String,
        file: PathBuf,
    },
    #[error(
        "`{name}`'s token chain is live in this instance ({path}): an import of {file} was cut off after it saved the token, and this instance has synced the account since, so the file's history was not imported and cannot be now (the account has history here). Keep {path} (the file's token is older and must never be used) and keep {file}: it holds the history from before the move; nothing was changed"
    )]
    CutOffHistory {
        path: PathBuf,
        name: String,
        file: PathBuf,
    },
    #[error(
        "{path} holds `{name}`'s live refresh token and this instance has none for it: import it with --with-tokens, so that the token moves with the history (importing only the history would strand the chain in the file)"
    )]
    WouldStrand { path: PathBuf, name: String },
    #[error(
        "{path} was already imported (into {database}, state directory {state_dir}, at {at}): it is spent and holds no token; delete it. To move `{name}` again, export it from there"
    )]
    Spent {
        path: PathBuf,
        name: String,
        at: String,
        database: String,
        state_dir: String,
    },
    #[error(
        "{path} was claimed at {at} by an import of `{name}` into {database} (state directory {state_dir}), so its token may live there now; it cannot be imported anywhere else. Run the same import-account command with that state directory to finish it (an interrupted import is finished, never repeated); if that state directory is gone for good, see docs/fleet.md"
    )]
    ClaimedElsewhere {
        path: PathBuf,
        name: String,
        at: String,
        database: String,
        state_dir: String,
    },
    #[error(
        "{path} cannot be written ({reason}); an import marks the file it takes a token from, so that the token moves only once: make the file writable by this user, where it is, and import again"
    )]
    FileNotWritable { path: PathBuf, reason: String },
    #[error(
        "`{name}` belongs to shard {belongs}/{count}, not to this instance's {index}/{count}{}; nothing was imported. Import it into shard {belongs}: `stellantis-sync --shard {belongs}/{count} import-account {} --with-tokens`, with that instance's state directory and database",
        if *recorded { " (the shard its last run recorded in the state directory)" } else { "" },
        file.display()
    )]
    WrongShard {
        name: String,
        file: PathBuf,
        belongs: u32,
        index: u32,
        count: u32,
        recorded: bool,
    },
    #[error("copying {table} of `{name}`: {read} rows read but {written} written")]
    Mismatch {
        table: String,
        name: String,
        read: i64,
        written: i64,
    },
}

impl TransferError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            TransferError::Config(_) => exit::CONFIG,
            TransferError::Busy { .. } | TransferError::RemoveUndone { .. } => exit::TEMPFAIL,
            TransferError::Db(_)
            | TransferError::Sqlite { .. }
            | TransferError::Io { .. }
            | TransferError::Tokens(_)
            | TransferError::FileNotWritable { .. }
            | TransferError::StateDir { .. } => exit::IOERR,
            TransferError::Uncovered { .. } | TransferError::Mismatch { .. } => exit::SOFTWARE,
            _ => REFUSED,
        }
    }
}

/// Rows copied per table.
pub type Counts = Vec<(String, i64)>;

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> TransferError + '_ {
    move |source| TransferError::Sqlite {
        path: path.to_owned(),
        why: crate::store::diagnose(path, &source),
        source,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

fn lock(state_dir: &Path) -> Result<File, TransferError> {
    daemon::instance_lock(state_dir).map_err(|e| match e {
        StartError::AlreadyRunning { dir, lock } => TransferError::Busy { dir, lock },
        other => TransferError::StateDir {
            dir: state_dir.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// The tables of `schema` that have an `account_id` column (SQLite's own tables excluded).
pub fn tables_with_account_id(conn: &Connection, schema: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(&format!(
        "SELECT m.name FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
           AND EXISTS (SELECT 1 FROM pragma_table_info(m.name, ?1) WHERE name = 'account_id')
         ORDER BY m.name"
    ))?;
    st.query_map([schema], |r| r.get(0))?.collect()
}

/// A table's columns, its renumbered id (a rowid alias) and its references to other tables.
struct TableInfo {
    columns: Vec<String>,
    id: Option<String>,
    refs: Vec<(String, String)>,
}

fn table_info(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<TableInfo> {
    let mut st = conn.prepare("SELECT name, upper(type), pk FROM pragma_table_info(?1, ?2)")?;
    let cols: Vec<(String, String, i64)> = st
        .query_map([table, schema], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let ddl: String = conn.query_row(
        &format!("SELECT sql FROM \"{schema}\".sqlite_schema WHERE type = 'table' AND name = ?1"),
        [table],
        |r| r.get(0),
    )?;
    let without_rowid = ddl.to_ascii_uppercase().contains("WITHOUT ROWID");
    let pks: Vec<&(String, String, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
    let id = match pks.as_slice() {
        [(name, ty, _)] if ty == "INTEGER" && !without_rowid => Some(name.clone()),
        _ => None,
    };
    let mut st = conn.prepare("SELECT \"from\", \"table\" FROM pragma_foreign_key_list(?1, ?2)")?;
    let refs = st
        .query_map([table, schema], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(TableInfo {
        columns: cols.into_iter().map(|c| c.0).collect(),
        id,
        refs,
    })
}

/// Fails if `schema` has a table with an `account_id` column that [`ACCOUNT_TABLES`] misses.
fn check_coverage(conn: &Connection, schema: &str, path: &Path) -> Result<(), TransferError> {
    for table in tables_with_account_id(conn, schema).map_err(sql(path))? {
        if !ACCOUNT_TABLES.contains(&table.as_str()) {
            return Err(TransferError::Uncovered {
                path: path.to_owned(),
                table,
            });
        }
    }
    Ok(())
}

fn check_version(conn: &Connection, schema: &str, path: &Path) -> Result<(), TransferError> {
    let found: u32 = conn
        .query_row(&format!("PRAGMA \"{schema}\".user_version"), [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let expected = store::schema_version();
    if found != expected {
        return Err(TransferError::Version {
            path: path.to_owned(),
            found,
            expected,
        });
    }
    Ok(())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Copies every row of account `name` from the attached schema `src` into `main`, inside the
/// caller's transaction. `src_path` names the source in errors about what it holds, `main_path`
/// the file being written (a full disk is the target's, not the source's).
fn copy_account(
    conn: &Connection,
    name: &str,
    src_path: &Path,
    main_path: &Path,
) -> Result<Counts, TransferError> {
    let e = sql(main_path);
    let old: i64 = conn
        .query_row(
            "SELECT account_id FROM src.accounts WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(&e)?
        .ok_or_else(|| TransferError::NoAccount {
            path: src_path.to_owned(),
            name: name.to_owned(),
        })?;
    let existing: Option<i64> = conn
        .query_row(
            "SELECT account_id FROM main.accounts WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(&e)?;
    if let Some(id) = existing {
        for table in &ACCOUNT_TABLES[1..] {
            // Runs that never synced (an instance that had no token for the account yet, e.g.
            // started with a new --shard before the account moved) are no history.
            let only_synced = if *table == "sync_runs" {
                " AND status = 'ok'"
            } else {
                ""
            };
            let rows: i64 = conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM main.{} WHERE account_id = ?1{only_synced}",
                        quote(table)
                    ),
                    [id],
                    |r| r.get(0),
                )
                .map_err(&e)?;
            if rows > 0 {
                return Err(TransferError::AlreadyThere {
                    path: main_path.to_owned(),
                    name: name.to_owned(),
                    table: (*table).to_owned(),
                    rows,
                });
            }
        }
        // A bare row (the account was configured here but never synced) and its failed runs:
        // replaced, same id.
        conn.execute("DELETE FROM main.sync_runs WHERE account_id = ?1", [id])
            .map_err(&e)?;
        conn.execute("DELETE FROM main.accounts WHERE account_id = ?1", [id])
            .map_err(&e)?;
    }
    let acc = table_info(conn, "main", "accounts").map_err(&e)?;
    let cols: Vec<String> = acc.columns.iter().map(|c| quote(c)).collect();
    let select: Vec<String> = acc
        .columns
        .iter()
        .map(|c| {
            if c == "account_id" {
                "?1".to_owned()
            } else {
                quote(c)
            }
        })
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO main.accounts ({}) SELECT {} FROM src.accounts WHERE account_id = ?2",
            cols.join(", "),
            select.join(", ")
        ),
        params![existing, old],
    )
    .map_err(&e)?;
    let new = existing.unwrap_or_else(|| conn.last_insert_rowid());
    let mut counts: Counts = vec![("accounts".to_owned(), 1)];
    let mut offsets: Vec<(&str, i64)> = Vec::new();
    for table in &ACCOUNT_TABLES[1..] {
        let t = quote(table);
        let info = table_info(conn, "main", table).map_err(&e)?;
        if let Some(id) = &info.id {
            let off: i64 = conn
                .query_row(
                    &format!(
                        "SELECT max(0, coalesce((SELECT max({id}) FROM main.{t}), 0) + 1
                                     - coalesce((SELECT min({id}) FROM src.{t} WHERE account_id = ?1), 0))",
                        id = quote(id)
                    ),
                    [old],
                    |r| r.get(0),
                )
                .map_err(&e)?;
            offsets.push((table, off));
        }
        let mut select = Vec::with_capacity(info.columns.len());
        for c in &info.columns {
            let parent = info
                .refs
                .iter()
                .find(|(from, _)| from == c)
                .map(|(_, p)| p.as_str());
            let shift = |p: &str| offsets.iter().find(|(t, _)| *t == p).map(|(_, o)| *o);
            let expr = if c == "account_id" {
                "?1".to_owned()
            } else if Some(c) == info.id.as_ref() {
                format!("{} + {}", quote(c), shift(table).unwrap_or(0))
            } else if let Some(off) = parent.and_then(shift) {
                format!("{} + {off}", quote(c))
            } else {
                quote(c)
            };
            select.push(expr);
        }
        let cols: Vec<String> = info.columns.iter().map(|c| quote(c)).collect();
        // In id order, so renumbered ids keep their order.
        let order = info
            .id
            .as_ref()
            .map(|id| format!(" ORDER BY {}", quote(id)))
            .unwrap_or_default();
        let written = conn
            .execute(
                &format!(
                    "INSERT INTO main.{t} ({}) SELECT {} FROM src.{t} WHERE account_id = ?2{order}",
                    cols.join(", "),
                    select.join(", ")
                ),
                params![new, old],
            )
            .map_err(&e)?;
        let read: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM src.{t} WHERE account_id = ?1"),
                [old],
                |r| r.get(0),
            )
            .map_err(&e)?;
        let written = i64::try_from(written).unwrap_or(i64::MAX);
        if read != written {
            return Err(TransferError::Mismatch {
                table: (*table).to_owned(),
                name: name.to_owned(),
                read,
                written,
            });
        }
        counts.push(((*table).to_owned(), written));
    }
    Ok(counts)
}

/// Deletes every row of account `name` from `main` (children first), in the caller's transaction.
fn delete_account(conn: &Connection, name: &str, path: &Path) -> Result<(), TransferError> {
    let e = sql(path);
    let Some(id): Option<i64> = conn
        .query_row(
            "SELECT account_id FROM main.accounts WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(&e)?
    else {
        return Ok(());
    };
    for table in ACCOUNT_TABLES.iter().rev() {
        conn.execute(
            &format!("DELETE FROM main.{} WHERE account_id = ?1", quote(table)),
            [id],
        )
        .map_err(&e)?;
    }
    Ok(())
}

fn attach(conn: &Connection, path: &Path, main_path: &Path) -> Result<(), TransferError> {
    let p = path.to_str().ok_or_else(|| TransferError::Io {
        path: path.to_owned(),
        source: std::io::Error::other("the path is not UTF-8"),
    })?;
    conn.execute("ATTACH DATABASE ?1 AS src", [p])
        .map_err(sql(main_path))?;
    Ok(())
}

fn sync_dir(path: &Path) -> Result<(), TransferError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn summary(counts: &Counts) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bootstrap tokens a record has seen or had refused: never to be presented again, in the
/// state directory it leaves nor in the one it enters.
fn spent_bootstraps(record: &TokenRecord) -> Vec<&str> {
    record
        .bootstrap_sha256
        .iter()
        .chain(&record.refused_sha256)
        .map(String::as_str)
        .collect()
}

/// `export-account NAME --to FILE [--with-tokens] [--remove]` with a loaded configuration.
///
/// The file is built in a lock-owned temporary file next to `to` (no journal, no WAL: nothing
/// else beside it ever holds its pages), listed in the token store while it is written, and
/// renamed into place when complete; every failure removes it, and the next export, import or
/// start removes what a killed one left. With `--with-tokens` the record is marked as moving out
/// before the rename and removed last, after the history (`TokenStore::begin_move_out`). Errors name the file that failed: the export file for
/// its writes, the database for its reads.
pub async fn export(
    cfg: &Config,
    name: &str,
    to: &Path,
    with_tokens: bool,
    remove: bool,
) -> Result<Counts, TransferError> {
    if with_tokens && !remove {
        return Err(TransferError::TokensNeedRemove);
    }
    if to.exists() {
        return Err(TransferError::Exists {
            path: to.to_owned(),
        });
    }
    let _instance = if remove {
        Some(lock(&cfg.state_dir)?)
    } else {
        None
    };
    if !cfg.database.exists() {
        return Err(TransferError::NoAccount {
            path: cfg.database.clone(),
            name: name.to_owned(),
        });
    }
    let tokens = TokenStore::new(&cfg.state_dir);
    tokens.sweep_temporaries();
    let (_account_lock, record) = if with_tokens {
        if !tokens.path(name).exists() {
            return Err(TransferError::NoStoredToken {
                name: name.to_owned(),
                path: tokens.path(name),
            });
        }
        let l = tokens.lock(name, Duration::from_secs(10)).await?;
        let record = tokens.load(name)?.ok_or_else(|| TransferError::NoToken {
            path: tokens.path(name),
        })?;
        (Some(l), Some(record))
    } else {
        (None, None)
    };
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Some(file) = to.file_name() {
        crate::fsutil::sweep(dir, &file.to_string_lossy(), true);
    }
    // Created 0600 and locked before SQLite opens it: the file may hold a token and always
    // holds history.
    let tmp = crate::fsutil::OwnedTemp::beside(to).map_err(io(to))?;
    let tmp_path = tmp.path().to_owned();
    tokens.note_temporary(&tmp_path)?;
    let written = write_export(cfg, name, to, &tmp_path, record.as_ref());
    // The token moves out before the rename makes the export file: from here a crash at any
    // instant leaves it usable in one place (`TokenStore::recover_moves` decides by whether the
    // temporary is still there), and this state directory never presents its bootstrap again.
    let moving = match (&written, &record) {
        (Ok(_), Some(record)) => {
            let abs = |p: &Path| std::path::absolute(p).map_err(io(p));
            tokens.begin_move_out(name, &abs(&tmp_path)?, &abs(to)?)?;
            crate::faultpoint::hit("export_moving_out");
            tokens.mark_bootstraps_used(&spent_bootstraps(record))?;
            true
        }
        _ => false,
    };
    let persisted = written.and_then(|counts| {
        tmp.persist(to)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => TransferError::Exists {
                    path: to.to_owned(),
                },
                _ => io(to)(e),
            })
            .map(|_| counts)
    });
    // Renamed or removed (persist and drop remove it on every failure).
    tokens.forget_temporary(&tmp_path);
    let counts = match persisted {
        Ok(counts) => counts,
        Err(e) => {
            if moving {
                tokens.end_move_out(name)?;
            }
            return Err(e);
        }
    };
    crate::faultpoint::hit("export_renamed");
    if remove {
        // The history goes next; if it cannot, the export file is renamed back to its
        // temporary name (which undoes the move, as after a crash) and removed, so nothing
        // has changed. The token record goes last, once the export file alone holds the
        // account.
        let removed = (|| {
            if crate::faultpoint::fails("transfer_remove") {
                return Err(TransferError::Io {
                    path: cfg.database.clone(),
                    source: std::io::Error::other("database is locked (failure point)"),
                });
            }
            let db = Db::open_for(cfg)?;
            let conn = db.conn();
            let tx = conn.unchecked_transaction().map_err(sql(&cfg.database))?;
            delete_account(conn, name, &cfg.database)?;
            tx.commit().map_err(sql(&cfg.database))?;
            Ok::<_, TransferError>(())
        })();
        if let Err(e) = removed {
            std::fs::rename(to, &tmp_path).map_err(io(to))?;
            sync_dir(to)?;
            crate::faultpoint::hit("export_undo_renamed");
            std::fs::remove_file(&tmp_path).map_err(io(&tmp_path))?;
            let _ = sync_dir(to);
            if moving {
                tokens.end_move_out(name)?;
            }
            return Err(TransferError::RemoveUndone {
                path: cfg.database.clone(),
                name: name.to_owned(),
                reason: e.to_string(),
                export: to.to_owned(),
            });
        }
        crate::faultpoint::hit("export_history_removed");
        if moving {
            let path = tokens.path(name);
            std::fs::remove_file(&path).map_err(io(&path))?;
            sync_dir(&path)?;
            crate::faultpoint::hit("export_record_removed");
            tokens.end_move_out(name)?;
        }
    }
    Ok(counts)
}

/// Writes the export of `name` (and its token record) into the temporary file `tmp`, which
/// becomes `to`.
fn write_export(
    cfg: &Config,
    name: &str,
    to: &Path,
    tmp: &Path,
    record: Option<&TokenRecord>,
) -> Result<Counts, TransferError> {
    let db = Db::open_with(tmp, store::Mode::Export).map_err(|e| match e {
        DbError::Sqlite { source, .. } => sql(to)(source),
        other => other.into(),
    })?;
    let conn = db.conn();
    attach(conn, &cfg.database, &cfg.database)?;
    check_version(conn, "src", &cfg.database)?;
    check_coverage(conn, "src", &cfg.database)?;
    let tx = conn.unchecked_transaction().map_err(sql(to))?;
    let counts = copy_account(conn, name, &cfg.database, to)?;
    if let Some(record) = record {
        let json = serde_json::to_string(record).map_err(|e| TransferError::Io {
            path: to.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        conn.execute_batch(&format!(
            "CREATE TABLE main.{TOKEN_TABLE} (account TEXT PRIMARY KEY, record TEXT NOT NULL)"
        ))
        .map_err(sql(to))?;
        conn.execute(
            &format!("INSERT INTO main.{TOKEN_TABLE} (account, record) VALUES (?1, ?2)"),
            params![name, json],
        )
        .map_err(sql(to))?;
    }
    write_checksums(conn).map_err(sql(to))?;
    tx.commit().map_err(sql(to))?;
    crate::faultpoint::hit("export_written");
    conn.execute_batch("DETACH DATABASE src").map_err(sql(to))?;
    Ok(counts)
}

/// The table of an export file recording its import (never in an analytics database): the
/// state directory that claimed it (by its random id, `tokens/.instance-id`) before importing,
/// and when that import finished. A claimed file can only be imported (or finished) there; a
/// finished one is spent and holds no token.
const STATE_TABLE: &str = "transfer_state";

/// An export file's claim by an import.
#[derive(Debug, Clone)]
struct Claim {
    instance: String,
    state_dir: String,
    database: String,
    claimed_at: String,
    spent_at: Option<String>,
}

fn read_claim(conn: &Connection, path: &Path) -> Result<Option<Claim>, TransferError> {
    if !has_table(conn, STATE_TABLE).map_err(sql(path))? {
        return Ok(None);
    }
    conn.query_row(
        &format!(
            "SELECT instance, state_dir, database, claimed_at, spent_at FROM {STATE_TABLE} LIMIT 1"
        ),
        [],
        |r| {
            Ok(Claim {
                instance: r.get(0)?,
                state_dir: r.get(1)?,
                database: r.get(2)?,
                claimed_at: r.get(3)?,
                spent_at: r.get(4)?,
            })
        },
    )
    .optional()
    .map_err(|e| TransferError::Damaged {
        path: path.to_owned(),
        detail: format!("its table {STATE_TABLE} cannot be read: {e}"),
    })
}

/// Opens an export file to write its claim or erase its token: rollback journal, fully synced.
fn open_for_update(file: &Path) -> Result<Connection, TransferError> {
    let unwritable = |e: rusqlite::Error| TransferError::FileNotWritable {
        path: file.to_owned(),
        reason: e.to_string(),
    };
    let c = Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unwritable)?;
    c.busy_timeout(Duration::from_secs(10))
        .map_err(unwritable)?;
    c.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(unwritable)?;
    c.execute_batch("PRAGMA synchronous = FULL; PRAGMA secure_delete = ON;")
        .map_err(unwritable)?;
    Ok(c)
}

/// Writes `claim` into the export file (or, with `None`, takes the claim back), durably.
fn write_claim(file: &Path, claim: Option<&Claim>) -> Result<(), TransferError> {
    let c = open_for_update(file)?;
    let unwritable = |e: rusqlite::Error| TransferError::FileNotWritable {
        path: file.to_owned(),
        reason: e.to_string(),
    };
    let tx = c.unchecked_transaction().map_err(unwritable)?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (instance TEXT NOT NULL, state_dir TEXT NOT NULL,
             database TEXT NOT NULL, claimed_at TEXT NOT NULL, spent_at TEXT);
         DELETE FROM {STATE_TABLE};"
    ))
    .map_err(unwritable)?;
    if let Some(k) = claim {
        tx.execute(
            &format!(
                "INSERT INTO {STATE_TABLE} (instance, state_dir, database, claimed_at, spent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            params![
                k.instance,
                k.state_dir,
                k.database,
                k.claimed_at,
                k.spent_at
            ],
        )
        .map_err(unwritable)?;
    }
    tx.commit().map_err(unwritable)
}

/// Erases the token record from an imported export file (its pages overwritten with zeros,
/// `secure_delete`) and marks the file spent.
fn spend_file(file: &Path) -> Result<(), TransferError> {
    let c = open_for_update(file)?;
    let unwritable = |e: rusqlite::Error| TransferError::FileNotWritable {
        path: file.to_owned(),
        reason: e.to_string(),
    };
    let tx = c.unchecked_transaction().map_err(unwritable)?;
    if has_table(&tx, TOKEN_TABLE).map_err(unwritable)? {
        tx.execute_batch(&format!(
            "DELETE FROM {TOKEN_TABLE}; DROP TABLE {TOKEN_TABLE};"
        ))
        .map_err(unwritable)?;
        if has_table(&tx, CHECKSUM_TABLE).map_err(unwritable)? {
            tx.execute(
                &format!("DELETE FROM {CHECKSUM_TABLE} WHERE name = ?1"),
                [TOKEN_TABLE],
            )
            .map_err(unwritable)?;
        }
    }
    tx.execute(
        &format!("UPDATE {STATE_TABLE} SET spent_at = ?1"),
        [crate::timefmt::now()],
    )
    .map_err(unwritable)?;
    tx.commit().map_err(unwritable)
}

/// Whether every synced run of `name` in the export `file` is in `main` (an import of it
/// committed).
fn file_runs_here(
    conn: &Connection,
    file: &Path,
    name: &str,
    db: &Path,
) -> Result<bool, TransferError> {
    attach(conn, file, db)?;
    let missing: Result<i64, _> = conn.query_row(
        "SELECT count(*) FROM src.sync_runs r JOIN src.accounts a USING (account_id)
         WHERE a.name = ?1 AND r.status = 'ok' AND r.started_at NOT IN
           (SELECT m.started_at FROM main.sync_runs m JOIN main.accounts b USING (account_id)
            WHERE b.name = ?1)",
        [name],
        |r| r.get(0),
    );
    let _ = conn.execute_batch("DETACH DATABASE src");
    Ok(missing.map_err(sql(file))? == 0)
}

/// Whether `main` holds history of `name`: any row beyond a bare `accounts` row and runs that
/// never synced (as [`copy_account`] counts it).
fn has_history(conn: &Connection, name: &str, path: &Path) -> Result<bool, TransferError> {
    for table in &ACCOUNT_TABLES[1..] {
        let only_synced = if *table == "sync_runs" {
            " AND status = 'ok'"
        } else {
            ""
        };
        let rows: i64 = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM main.{} WHERE account_id = (SELECT account_id FROM main.accounts WHERE name = ?1){only_synced}",
                    quote(table)
                ),
                [name],
                |r| r.get(0),
            )
            .map_err(sql(path))?;
        if rows > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub counts: Counts,
    /// The file's content checksum was verified (false: an earlier build's file without one).
    pub checksummed: bool,
    /// The file held a token record; it was erased from the file (the file is spent).
    pub token_erased: bool,
    /// The file's token record was saved in this instance's token store.
    pub token_imported: bool,
    /// This store already held the file's chain (an import cut off after it saved the token):
    /// its token, maybe rotated since, was kept and the file's older one not restored.
    pub kept_live: bool,
    /// A record without a refresh token (`needs_reauth`) was replaced by the file's.
    pub replaced_reauth: bool,
    /// An earlier import of this file here had committed; this run only finished the file.
    pub finished_earlier: bool,
    /// Erasing the token from the file failed after the import (why): delete the file.
    pub file_not_spent: Option<String>,
}

/// The shard an import checks the account against: `--shard` when given, else the shard this
/// state directory's last `--shard` run recorded.
fn import_shard(cfg: &Config, shard: Option<(u32, u32)>) -> Option<(u32, u32, bool)> {
    match shard {
        Some((i, n)) => Some((i, n, false)),
        None => crate::shard::recorded(&cfg.state_dir).map(|(i, n)| (i, n, true)),
    }
}

/// `import-account FILE [--with-tokens]` with a loaded configuration.
///
/// A file that holds a token record is single-use: the import first claims it (this state
/// directory's id written into it, durably), then copies the history and saves the token, then
/// erases the token from the file and marks it spent. A spent file, or one claimed by another
/// state directory, is refused; one claimed here (an import that was interrupted) is finished.
pub async fn import(
    cfg: &Config,
    file: &Path,
    with_tokens: bool,
    shard: Option<(u32, u32)>,
) -> Result<Imported, TransferError> {
    let _instance = lock(&cfg.state_dir)?;
    let tokens = TokenStore::new(&cfg.state_dir);
    tokens.sweep_temporaries();
    if !file.exists() {
        return Err(TransferError::NoFile {
            path: file.to_owned(),
        });
    }
    let probe = store::open_read_only(file)?;
    // A damaged file is the file's fault, and said so (not an error of the target database).
    let check: String = probe
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    if check != "ok" {
        return Err(TransferError::Damaged {
            path: file.to_owned(),
            detail: check,
        });
    }
    check_version(&probe, "main", file)?;
    // Every table an export holds, even empty: a file without one is not whole.
    let present = tables_with_account_id(&probe, "main").map_err(sql(file))?;
    if let Some(gone) = ACCOUNT_TABLES
        .iter()
        .find(|t| !present.iter().any(|p| p == *t))
    {
        return Err(TransferError::Damaged {
            path: file.to_owned(),
            detail: format!("table {gone} is missing"),
        });
    }
    let accounts: i64 = probe
        .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))
        .map_err(sql(file))?;
    if accounts != 1 {
        return Err(TransferError::NotAnExport {
            path: file.to_owned(),
            accounts,
        });
    }
    let name: String = probe
        .query_row("SELECT name FROM accounts", [], |r| r.get(0))
        .map_err(sql(file))?;
    // Every row belongs to the exported account: the copy takes only its rows, and a file with
    // others is not an export (nothing would say what was left behind).
    for table in present {
        let rows: i64 = probe
            .query_row(
                &format!(
                    "SELECT count(*) FROM main.{} WHERE account_id IS NOT (SELECT account_id FROM accounts)",
                    quote(&table)
                ),
                [],
                |r| r.get(0),
            )
            .map_err(sql(file))?;
        if rows > 0 {
            return Err(TransferError::StrayRows {
                path: file.to_owned(),
                table,
                rows,
            });
        }
    }
    // The name becomes file names in the token store: never trust it.
    if !crate::config::valid_name(&name) {
        return Err(TransferError::BadName {
            path: file.to_owned(),
            name,
        });
    }
    // Used already, or being used by another state directory: whatever else is true of it.
    let claim = read_claim(&probe, file)?;
    let me = tokens.instance_id()?;
    if let Some(c) = &claim {
        if let Some(at) = &c.spent_at {
            return Err(TransferError::Spent {
                path: file.to_owned(),
                name,
                at: at.clone(),
                database: c.database.clone(),
                state_dir: c.state_dir.clone(),
            });
        }
        if c.instance != me {
            return Err(TransferError::ClaimedElsewhere {
                path: file.to_owned(),
                name,
                at: c.claimed_at.clone(),
                database: c.database.clone(),
                state_dir: c.state_dir.clone(),
            });
        }
    }
    if let Some((index, count, recorded)) = import_shard(cfg, shard) {
        let belongs = crate::shard::shard_of(&name, count);
        if belongs != index {
            return Err(TransferError::WrongShard {
                name,
                file: file.to_owned(),
                belongs,
                index,
                count,
                recorded,
            });
        }
    }
    let file_record: Option<TokenRecord> = if has_table(&probe, TOKEN_TABLE).map_err(sql(file))? {
        let json: Option<String> = probe
            .query_row(
                &format!("SELECT record FROM {TOKEN_TABLE} WHERE account = ?1"),
                [&name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(file))?;
        let json = json.ok_or_else(|| TransferError::NoToken {
            path: file.to_owned(),
        })?;
        let record: TokenRecord =
            serde_json::from_str(&json).map_err(|e| TransferError::Damaged {
                path: file.to_owned(),
                detail: format!("its token record cannot be read: {e}"),
            })?;
        // The store saves a record under the account it names: it must be this one.
        if record.account != name {
            return Err(TransferError::ForeignToken {
                path: file.to_owned(),
                name,
                record: record.account,
            });
        }
        Some(record)
    } else {
        None
    };
    if with_tokens && file_record.is_none() {
        return Err(TransferError::NoToken {
            path: file.to_owned(),
        });
    }
    // Last, after the checks that name a specific fault: content changed since export.
    let checksummed = verify_checksums(&probe, file)?;
    drop(probe);

    // What this state directory holds for the account already.
    let _account_lock = if file_record.is_some() {
        tokens.prepare()?;
        Some(tokens.lock(&name, Duration::from_secs(10)).await?)
    } else {
        None
    };
    let existing = tokens.load(&name)?;
    let live_here = existing.as_ref().and_then(|r| r.refresh_token.as_ref());
    let file_token = file_record.as_ref().and_then(|r| r.refresh_token.as_ref());
    // One chain, whatever its current token: the same token, or the same chain start (kept
    // through every rotation). An import cut off after it saved the file's token leaves the
    // store holding that chain, maybe rotated since: the file's token is then older and must
    // never be restored over it.
    let same_chain = match (&existing, &file_record) {
        (Some(here), Some(there)) => {
            matches!((live_here, file_token), (Some(a), Some(b)) if fingerprint(a) == fingerprint(b))
                || matches!((&here.chain_started_at, &there.chain_started_at),
                    (Some(a), Some(b)) if a == b)
        }
        _ => false,
    };
    let keep_live = live_here.is_some() && same_chain;
    let take_token = with_tokens && file_record.is_some();
    if file_record.is_some() {
        if take_token && live_here.is_some() && !same_chain {
            return Err(TransferError::TokenExists {
                path: tokens.path(&name),
                name,
                file: file.to_owned(),
            });
        }
        if !take_token && live_here.is_none() {
            return Err(TransferError::WouldStrand {
                path: file.to_owned(),
                name,
            });
        }
    }
    let replaced_reauth = take_token && existing.is_some() && live_here.is_none();

    if let Some(parent) = cfg.database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let db = Db::open_for(cfg)?;
    let conn = db.conn();
    check_coverage(conn, "main", &cfg.database)?;
    let token_erased = file_record.is_some();
    if claim.is_some() && has_history(conn, &name, &cfg.database)? {
        // Claimed here, and the history is here: an earlier import committed and was cut off
        // before it spent the file. Finish it (the token, saved before that commit, stays).
        // Unless the history here is the instance's own: cut off before the commit, it has
        // synced the chain it holds since.
        if keep_live && !file_runs_here(conn, file, &name, &cfg.database)? {
            return Err(TransferError::CutOffHistory {
                path: tokens.path(&name),
                name,
                file: file.to_owned(),
            });
        }
        drop(db);
        if take_token
            && live_here.is_none()
            && let Some(r) = &file_record
        {
            tokens.save(r)?;
        }
        let file_not_spent = spend_file(file).err().map(|e| e.to_string());
        return Ok(Imported {
            name,
            counts: Vec::new(),
            checksummed,
            token_erased: token_erased && file_not_spent.is_none(),
            token_imported: false,
            kept_live: false,
            replaced_reauth: false,
            finished_earlier: true,
            file_not_spent,
        });
    }
    if let Some(record) = &file_record {
        write_claim(
            file,
            Some(&Claim {
                instance: me,
                state_dir: cfg.state_dir.display().to_string(),
                database: cfg.database.display().to_string(),
                claimed_at: crate::timefmt::now(),
                spent_at: None,
            }),
        )?;
        // The bootstrap tokens the chain has seen are spent here too, wherever it came from.
        tokens.mark_bootstraps_used(&spent_bootstraps(record))?;
    }
    let imported = (|| {
        attach(conn, file, &cfg.database)?;
        let tx = conn.unchecked_transaction().map_err(sql(&cfg.database))?;
        let counts = copy_account(conn, &name, file, &cfg.database)?;
        // The token is durable before the rows commit; if the commit fails, it is taken back.
        if take_token
            && !keep_live
            && let Some(record) = &file_record
        {
            tokens.save(record)?;
        }
        crate::faultpoint::hit("import_token_saved");
        if let Err(e) = tx.commit() {
            if take_token && !keep_live {
                match &existing {
                    Some(old) => tokens.save(old)?,
                    None => {
                        let _ = std::fs::remove_file(tokens.path(&name));
                    }
                }
            }
            return Err(sql(&cfg.database)(e));
        }
        let _ = conn.execute_batch("DETACH DATABASE src");
        Ok::<_, TransferError>(counts)
    })();
    let counts = match imported {
        Ok(c) => c,
        Err(e) => {
            let _ = conn.execute_batch("DETACH DATABASE src");
            drop(db);
            // Nothing moved (the token is not in this store): the file may go elsewhere again.
            let holds = |r: Option<TokenRecord>| {
                matches!((r.and_then(|r| r.refresh_token), file_token),
                    (Some(a), Some(b)) if fingerprint(&a) == fingerprint(b))
            };
            // Kept claimed while this store holds the token or its chain.
            if file_record.is_some() && !keep_live && !holds(tokens.load(&name).ok().flatten()) {
                let _ = write_claim(file, None);
            }
            return Err(e);
        }
    };
    drop(db);
    crate::faultpoint::hit("import_committed");
    let file_not_spent = if file_record.is_some() {
        spend_file(file).err().map(|e| e.to_string())
    } else {
        None
    };
    Ok(Imported {
        name,
        counts,
        checksummed,
        token_erased: token_erased && file_not_spent.is_none(),
        token_imported: take_token && !keep_live,
        kept_live: take_token && keep_live,
        replaced_reauth,
        finished_earlier: false,
        file_not_spent,
    })
}

/// The `export-account` command: loads the configuration, exports, prints what it did.
pub async fn export_cmd(
    config: &Path,
    name: &str,
    to: &Path,
    with_tokens: bool,
    remove: bool,
) -> u8 {
    let result = match config::load(config, Checks::ValuesOnly) {
        Ok(cfg) => export(&cfg, name, to, with_tokens, remove).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(counts) => {
            println!(
                "exported `{name}` to {}{}{}: {}",
                to.display(),
                if with_tokens {
                    " with its token record"
                } else {
                    ""
                },
                if remove { ", removed here" } else { "" },
                summary(&counts)
            );
            if with_tokens {
                println!(
                    "note: {} now holds `{name}`'s live refresh token and can be imported once: run `stellantis-sync import-account {} --with-tokens` on the instance that takes the account over (it erases the token from the file). Do not copy the file: a copy holds the same token, and two instances using one token revoke each other",
                    to.display(),
                    to.display()
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("stellantis-sync: export-account: {e}");
            e.exit_code()
        }
    }
}

/// The `import-account` command: loads the configuration, imports, prints what it did.
/// With `--shard I/N` (or the shard this state directory last ran as), an account of another
/// shard is refused.
pub async fn import_cmd(
    config: &Path,
    file: &Path,
    with_tokens: bool,
    shard: Option<(u32, u32)>,
) -> u8 {
    let cfg = match config::load(config, Checks::ValuesOnly) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stellantis-sync: import-account: {e}");
            return exit::CONFIG;
        }
    };
    match import(&cfg, file, with_tokens, shard).await {
        Ok(done) => {
            let name = &done.name;
            if !done.checksummed {
                eprintln!(
                    "stellantis-sync: import-account: warning: {} has no content checksum (an earlier build wrote it); only its structure was checked",
                    file.display()
                );
            }
            if done.finished_earlier {
                println!(
                    "`{name}` from {} was already imported into {} by an import that was cut off before it finished; finished it now",
                    file.display(),
                    cfg.database.display()
                );
            } else {
                println!(
                    "imported `{name}` from {} into {}{}: {}",
                    file.display(),
                    cfg.database.display(),
                    if done.token_imported {
                        " with its token record"
                    } else {
                        ""
                    },
                    summary(&done.counts)
                );
            }
            if done.kept_live {
                println!(
                    "note: this instance already held `{name}`'s token chain (an earlier import of {} was cut off after it saved the token, and it may have been rotated since): that token was kept; the file's, older, was not restored",
                    file.display()
                );
            }
            if done.replaced_reauth {
                println!(
                    "note: the record without a refresh token (needs_reauth) this instance had for `{name}` was replaced by the imported one: no login needed"
                );
            }
            if done.token_erased {
                println!(
                    "note: {} is spent: its token was erased and it can no longer be imported anywhere (it holds a copy of the history only); delete it",
                    file.display()
                );
            }
            if let Some(why) = &done.file_not_spent {
                eprintln!(
                    "stellantis-sync: import-account: warning: the import is complete, but the token could not be erased from {} ({why}): delete the file now (it is marked as claimed here, so no other instance imports it)",
                    file.display()
                );
            }
            if !cfg.accounts.iter().any(|a| &a.name == name) {
                println!(
                    "note: `{name}` is not in {}; add an [[accounts]] entry so this instance syncs it",
                    config.display()
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("stellantis-sync: import-account: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's checksums: verified as written; a file without them is an earlier build's; a
    /// table added or dropped after export, or a changed row, is refused naming the table.
    #[test]
    fn checksums_verify_and_name_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.sqlite");
        let db = Db::open(&path).unwrap();
        let c = db.conn();
        c.execute_batch(&format!(
            "INSERT INTO accounts (name, brand, created_at) VALUES ('a', 'peugeot', '2026-01-01T00:00:00.000Z');
             CREATE TABLE {TOKEN_TABLE} (account TEXT PRIMARY KEY, record TEXT NOT NULL);
             INSERT INTO {TOKEN_TABLE} VALUES ('a', '{{}}');"
        ))
        .unwrap();
        write_checksums(c).unwrap();
        assert!(verify_checksums(c, &path).unwrap());
        let refused = |c: &Connection| verify_checksums(c, &path).unwrap_err().to_string();
        c.execute(
            &format!("UPDATE {TOKEN_TABLE} SET record = '{{\"x\":1}}'"),
            [],
        )
        .unwrap();
        assert!(
            refused(c).contains("table transfer_token does not match"),
            "{}",
            refused(c)
        );
        c.execute_batch(&format!("DROP TABLE {TOKEN_TABLE}"))
            .unwrap();
        assert!(
            refused(c).contains("table transfer_token, covered by its checksum, is missing"),
            "{}",
            refused(c)
        );
        c.execute_batch(&format!(
            "CREATE TABLE {TOKEN_TABLE} (account TEXT PRIMARY KEY, record TEXT NOT NULL);
             INSERT INTO {TOKEN_TABLE} VALUES ('a', '{{}}');
             DELETE FROM {CHECKSUM_TABLE} WHERE name = '{TOKEN_TABLE}';"
        ))
        .unwrap();
        assert!(
            refused(c).contains("its checksum does not cover table transfer_token"),
            "{}",
            refused(c)
        );
        c.execute_batch(&format!("DROP TABLE {CHECKSUM_TABLE}"))
            .unwrap();
        assert!(!verify_checksums(c, &path).unwrap());
    }

    /// The digest depends on the rows' values and types, not on their order on disk.
    #[test]
    fn the_content_digest_sees_values_and_types_not_row_order() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE a (x, y); INSERT INTO a VALUES (1, 'p'), (2, x'00'), (NULL, 2.5);
             CREATE TABLE b (x, y); INSERT INTO b VALUES (NULL, 2.5), (2, x'00'), (1, 'p');
             CREATE TABLE c (x, y); INSERT INTO c VALUES ('1', 'p'), (2, x'00'), (NULL, 2.5);
             CREATE TABLE d (x, y); INSERT INTO d VALUES (1, 'p'), (2, x'01'), (NULL, 2.5);
             CREATE TABLE e (x, y); INSERT INTO e VALUES (1, 'p'), (2, x'00');",
        )
        .unwrap();
        let d = |t: &str| digest(&c, "main", t).unwrap();
        assert_eq!(d("a"), d("b"));
        assert_eq!(d("a").0, 3);
        for other in ["c", "d", "e"] {
            assert_ne!(d("a").1, d(other).1, "{other}");
        }
    }

    /// Every table of the migrated schema with an `account_id` column is covered, and the list
    /// is in an order where every referenced table comes first.
    #[test]
    fn every_table_with_account_id_is_covered_in_a_valid_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let tables = tables_with_account_id(db.conn(), "main").unwrap();
        assert!(tables.len() >= 13, "{tables:?}");
        for t in &tables {
            assert!(
                ACCOUNT_TABLES.contains(&t.as_str()),
                "table {t} has an account_id column but src/transfer.rs ACCOUNT_TABLES does not cover it"
            );
        }
        for (i, t) in ACCOUNT_TABLES.iter().enumerate() {
            assert!(
                tables.contains(&(*t).to_owned()),
                "{t} is not a table with account_id"
            );
            let info = table_info(db.conn(), "main", t).unwrap();
            for (col, parent) in &info.refs {
                // A table may reference itself (`status_bodies.base_id`): its rows are copied in
                // id order, so a base comes before the bodies stored against it.
                let pos = ACCOUNT_TABLES.iter().position(|p| p == parent);
                assert!(
                    matches!(pos, Some(p) if p < i || (p == i && info.id.is_some())),
                    "{t}.{col} references {parent}, which must come earlier in ACCOUNT_TABLES"
                );
            }
        }
        assert_eq!(
            table_info(db.conn(), "main", "vehicle_changes")
                .unwrap()
                .id
                .as_deref(),
            Some("change_id")
        );
        assert_eq!(table_info(db.conn(), "main", "trips").unwrap().id, None);
        assert_eq!(
            table_info(db.conn(), "main", "telemetry_endpoints")
                .unwrap()
                .id,
            None
        );
        // A new table with account_id is caught at run time too.
        db.conn()
            .execute_batch("CREATE TABLE extra (account_id INTEGER, x TEXT)")
            .unwrap();
        let err = check_coverage(db.conn(), "main", Path::new("t.sqlite")).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
