//! The command line (clap derive). `run` is the default command; `--once` is accepted both at
//! top level and after `run`, so `stellantis-sync --once` and `stellantis-sync run --once` agree.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps the vehicle lists of Stellantis connected-car accounts in a SQLite change history.
#[derive(Debug, Parser)]
#[command(name = "stellantis-sync", version, about, after_help = crate::exit::HELP)]
pub struct Cli {
    /// Configuration file (TOML); `STELLANTIS_SYNC_*` environment variables override it.
    #[arg(
        long,
        global = true,
        default_value = "/etc/stellantis-sync/config.toml"
    )]
    pub config: PathBuf,

    /// Run one pass over every account, then exit (the same as `run --once`).
    #[arg(long, global = true)]
    pub once: bool,

    /// Serve only shard I of N (`--shard 0/4`): the accounts whose name hashes to I. Give each
    /// instance its own `state_dir` and `database`.
    #[arg(long, global = true, value_parser = parse_shard)]
    pub shard: Option<(u32, u32)>,

    /// Log format: `auto` (text; no colours or timestamps under journald), `text` or `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default): poll every account on the configured schedule.
    Run,
    /// Validate the configuration and print every problem with its file, key and reason.
    CheckConfig,
    /// Write a first configuration for one account (asks for what the flags do not give).
    Init(InitArgs),
    /// Log an account in with the authorization-code flow (PKCE) and store its tokens.
    Login(LoginArgs),
    /// Print one line per account: state, tokens, last sync, vehicles, last error.
    Status,
    /// Copy the database consistently while the daemon runs (VACUUM INTO, integrity-checked).
    Backup(BackupArgs),
    /// Run the whole thing against an in-process simulator into ./stellantis-sync-demo.sqlite.
    Demo(DemoArgs),
    /// Serve the simulated Stellantis API and identity provider.
    Simulate(SimulateArgs),
    /// Copy one account's history into FILE (a SQLite database with the same schema).
    ExportAccount(ExportArgs),
    /// Add the account history of an export FILE to this instance's database.
    ImportAccount(ImportArgs),
    /// Make this state directory the holder of its token chains after a restore or a move to
    /// another disk (never while the original still runs: one chain in two places dies).
    AdoptState,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The account's name.
    pub name: String,
    /// The export file to create (never overwritten; mode 0600).
    #[arg(long)]
    pub to: PathBuf,
    /// Also move the account's token record (needs --remove; the file then holds a secret).
    #[arg(long)]
    pub with_tokens: bool,
    /// Delete the account from this instance's database once the export file is durable.
    #[arg(long)]
    pub remove: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An export file written by `export-account`.
    pub file: PathBuf,
    /// Also write the account's token record into this instance's token store.
    #[arg(long)]
    pub with_tokens: bool,
}

/// `init`: each value missing here is asked for on standard input. The file is `--config`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The account's name (default `me`).
    #[arg(long)]
    pub account: Option<String>,
    /// peugeot, citroen, ds, opel or vauxhall.
    #[arg(long)]
    pub brand: Option<String>,
    /// The country the brand account was created in, two letters (default `fr`).
    #[arg(long)]
    pub country: Option<String>,
    /// The state directory (tokens, locks; default /var/lib/stellantis-sync).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The database file (default <state-dir>/stellantis-sync.sqlite).
    #[arg(long)]
    pub database: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The account's `name` in the configuration.
    #[arg(long)]
    pub account: String,
    /// The authorization code, or the whole redirect URL (otherwise read from standard input).
    #[arg(long)]
    pub code: Option<String>,
    /// Country code used in the brand app's redirect URI (default: the account's `country`).
    #[arg(long)]
    pub country: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The copy's path, or an existing directory (default: `[backup] dir`, keeping `keep`).
    #[arg(long)]
    pub to: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo database goes.
    #[arg(long, default_value = "stellantis-sync-demo.sqlite")]
    pub database: PathBuf,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seed of the simulated world.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of users (user1@example.com / password1, …).
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Exact vehicle counts of the first users, comma-separated (e.g. `130,0,2`).
    #[arg(long, value_delimiter = ',')]
    pub vehicles: Vec<usize>,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    pub access_ttl: u64,
    /// Absolute refresh-token lifetime in seconds (default 7 days).
    #[arg(long, default_value_t = 604_800)]
    pub refresh_ttl: u64,
    /// Make the password grant answer 400 `server_error`, as the real IdP has since January 2024.
    #[arg(long)]
    pub password_grant_dead: bool,
    /// Replaying a rotated refresh token revokes the live one (RFC 9700 §4.14.2).
    #[arg(long)]
    pub family_revocation: bool,
    /// Burst quota per client and second (0 = none).
    #[arg(long, default_value_t = 100)]
    pub burst: u32,
    /// Daily quota per client (0 = none).
    #[arg(long, default_value_t = 100_000)]
    pub daily_limit: u64,
    /// Mutate the world every N seconds (0 = only through the admin API).
    #[arg(long, default_value_t = 0)]
    pub change_every: u64,
    /// A fault switch, `NAME=VALUE` (e.g. `gateway_500=0.1`, `retry_after_form=odd`); repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Answer with the 2021 body shapes (40410 "No vehicule found", no `totalPage`).
    #[arg(long)]
    pub legacy_shapes: bool,
}

/// The most shards a fleet may have (each needs its own instance and database).
pub const MAX_SHARDS: u32 = 1024;

/// Parses `I/N` with `I < N <= MAX_SHARDS`, written without leading zeros (so that instances
/// `@1` and `@01` cannot both serve shard 1).
fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let number = |t: &str| -> Result<u32, String> {
        let canonical = !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_digit())
            && (t == "0" || !t.starts_with('0'));
        if !canonical {
            return Err(format!(
                "`{t}` is not a number without sign, spaces or leading zeros"
            ));
        }
        t.parse().map_err(|_| format!("`{t}` is too large"))
    };
    let (i, n) = (number(i)?, number(n)?);
    if n == 0 || i >= n || n > MAX_SHARDS {
        return Err(format!("shard {i}/{n}: need 0 <= I < N <= {MAX_SHARDS}"));
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_arguments_are_canonical_and_bounded() {
        assert_eq!(parse_shard("0/4"), Ok((0, 4)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert_eq!(parse_shard("1023/1024"), Ok((1023, 1024)));
        for bad in [
            "0/0",
            "4/4",
            "3/2",
            "-1/2",
            "01/02",
            "1/04",
            " 1/4",
            "+1/4",
            "0/1025",
            "0/4294967295",
            "0/4294967296",
            "a/b",
            "1",
            "",
        ] {
            assert!(parse_shard(bad).is_err(), "{bad} was accepted");
        }
    }
}
