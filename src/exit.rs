//! Exit codes, from `sysexits.h`, and the one place that maps outcomes to them ([`for_pass`],
//! [`for_start`], [`for_login`]). Nothing below `main` calls `std::process::exit`; every command
//! returns one of these.

/// Everything worked (for `--once`: every account synced).
pub const OK: u8 = 0;
/// Wrong command-line usage.
pub const USAGE: u8 = 64;
/// An internal error that fits no other class.
pub const SOFTWARE: u8 = 70;
/// A local file or database could not be written (disk full, read-only, permissions).
pub const IOERR: u8 = 74;
/// At least one account failed for a reason that may pass (network, 5xx, 429, timeouts).
pub const TEMPFAIL: u8 = 75;
/// At least one account needs re-authorization (`stellantis-sync login --account NAME`).
pub const NOPERM: u8 = 77;
/// The configuration is invalid; nothing was touched.
pub const CONFIG: u8 = 78;

/// The `--help` text that documents the exit codes.
pub const HELP: &str = "Exit codes:
  0   success (--once: every account synced)
  64  a command-line option the command does not take
  65  export-account/import-account/backup --to refused (nothing changed)
  74  a local file or the database could not be written
  75  at least one account failed for a reason that may pass (retry later)
  77  at least one account needs re-authorization: run `stellantis-sync login --account NAME`
  78  invalid configuration (nothing was touched), or an account's configuration is refused by
      Stellantis (app credentials, brand)
  141 the output's reader went away (`status | head`)";

use crate::daemon::{PassSummary, StartError};
use crate::store::DbError;
use crate::sync::Outcome;

/// The `--once` exit code of a pass: 77 if any account needs re-authorization, else 78 if an
/// account's configuration is wrong (app credentials, brand), else 74 if a local file could not
/// be written, else 75 if any account failed for a reason that may pass, else 0.
pub fn for_pass(summary: &PassSummary) -> u8 {
    let any = |f: fn(&Outcome) -> bool| summary.outcomes.iter().any(|(_, o)| f(o));
    if any(|o| matches!(o, Outcome::NeedsReauth { .. })) {
        NOPERM
    } else if any(|o| matches!(o, Outcome::Config { .. })) {
        CONFIG
    } else if any(|o| matches!(o, Outcome::LocalIo { .. })) {
        IOERR
    } else if any(|o| matches!(o, Outcome::Temporary { .. })) {
        TEMPFAIL
    } else {
        OK
    }
}

/// The exit code when the program could not start.
pub fn for_start(e: &StartError) -> u8 {
    match e {
        StartError::AlreadyRunning { .. } => TEMPFAIL,
        StartError::StateDir { .. } => IOERR,
        StartError::CopiedState(_) => CONFIG,
        StartError::Db(e) if e.is_io() => IOERR,
        StartError::Db(e) if e.is_busy() => TEMPFAIL,
        StartError::Db(DbError::TooNew { .. }) => CONFIG,
        // The copy before a migration could not be written (a full disk): a local file.
        StartError::Db(DbError::BackupBeforeMigration { .. }) => IOERR,
        StartError::Db(_) => SOFTWARE,
    }
}

/// The exit code of a failed `login`.
pub fn for_login(e: &crate::auth::login::LoginError) -> u8 {
    use crate::auth::AuthError;
    use crate::auth::login::LoginError;
    use crate::auth::store::StoreError;
    match e {
        LoginError::Io(_) => IOERR,
        LoginError::Auth(AuthError::Store {
            source: StoreError::Locked { .. },
            ..
        }) => TEMPFAIL,
        LoginError::Auth(AuthError::Store { .. }) => IOERR,
        LoginError::Auth(AuthError::InvalidClient { .. }) => CONFIG,
        _ => NOPERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_held_by_another_process_is_temporary() {
        // Adversarial review: `--once` while a reader held an exclusive lock exited 70.
        let busy = DbError::Sqlite {
            path: "db".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None),
        };
        assert_eq!(for_start(&StartError::Db(busy)), TEMPFAIL);
        // The ops adversarial pass: a full disk under the copy before a migration exited 70.
        let full = DbError::BackupBeforeMigration {
            path: "db".into(),
            reason: "No space left on device".into(),
        };
        assert_eq!(for_start(&StartError::Db(full)), IOERR);
    }
}
