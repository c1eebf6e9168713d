//! Exit codes, from `sysexits.h`, and the one place that decides which one a run ends with.
//! Nothing below `main` calls `std::process::exit`; every command returns one of these.

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
  74  a local file or the database could not be written
  75  at least one account failed for a reason that may pass (retry later)
  77  at least one account needs re-authorization: run `stellantis-sync login --account NAME`
  78  invalid configuration (nothing was touched)";
