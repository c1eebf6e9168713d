//! stellantis-sync: keeps the vehicle lists of Stellantis connected-car accounts (Peugeot,
//! Citroën, DS, Opel, Vauxhall) in a local SQLite change history.
//!
//! # Layout
//! See `ARCHITECTURE.md` for the map. In short: [`config`] loads and validates the configuration;
//! [`auth`] gets and keeps OAuth2 tokens; [`api`] speaks HTTP to the resource API; [`sync`] turns
//! a listing into changes; [`store`] writes them to SQLite; [`daemon`] schedules passes and handles
//! signals; [`sim`] is the simulator of the whole remote side.

pub mod api;
pub mod auth;
pub mod backup;
pub mod brand;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diff;
pub mod exit;
pub mod faultpoint;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod http_server;
pub mod init;
pub mod jobs;
pub mod listing;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod ratelimit;
pub mod redact;
pub mod retention;
pub mod shard;
pub mod sim;
pub mod spend;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod timefmt;
pub mod transfer;

use std::time::Duration;

use cli::{Cli, Command};

/// Runs a parsed command line and returns the process exit code.
#[allow(clippy::print_stdout, clippy::print_stderr)] // the command line's own output
pub fn run(cli: Cli) -> u8 {
    no_core_dumps();
    // The demo is a live view for a person: its events are printed, logs only say what is wrong.
    let default_level = match cli.command {
        Some(Command::Demo(_)) => "warn",
        _ => "info",
    };
    logging::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::SOFTWARE;
        }
    };
    if let Err(msg) = check_global_flags(&cli) {
        eprintln!("stellantis-sync: {msg}");
        return exit::USAGE;
    }
    runtime.block_on(async move {
        let once = cli.once;
        let shard = cli.shard;
        match cli.command {
            Some(Command::Simulate(args)) => simulate(args).await,
            Some(Command::Demo(args)) => demo::run(&args.database, args.duration).await,
            Some(Command::CheckConfig) => check_config(&cli.config, shard),
            Some(Command::Status) => match load(&cli.config, config::Checks::Full, shard) {
                Ok(cfg) => {
                    print!("{}", status::render(&cfg));
                    if let Some((i, n)) = shard {
                        for line in shard::misplaced_lines(&shard::misplaced(&cfg, i, n), i, n) {
                            println!("warning: {line}");
                        }
                    }
                    exit::OK
                }
                Err(code) => code,
            },
            Some(Command::Init(args)) => init::command(&cli.config, args),
            Some(Command::AdoptState) => adopt_state(&cli.config, shard),
            Some(Command::Login(args)) => login(&cli.config, args, shard).await,
            Some(Command::ExportAccount(a)) => {
                transfer::export_cmd(&cli.config, &a.name, &a.to, a.with_tokens, a.remove).await
            }
            Some(Command::ImportAccount(a)) => {
                transfer::import_cmd(&cli.config, &a.file, a.with_tokens, shard).await
            }
            Some(Command::Backup(args)) => {
                // With --shard, into the shard's own backup directory, as its schedule does.
                match load(&cli.config, config::Checks::ValuesOnly, shard) {
                    Ok(cfg) => backup::command(&cfg, args.to).await,
                    Err(code) => code,
                }
            }
            Some(Command::Run) | None => match load(&cli.config, config::Checks::Full, shard) {
                Ok(cfg) if once => {
                    serve_shard(&cfg, shard);
                    daemon::once(cfg).await
                }
                Ok(cfg) => {
                    serve_shard(&cfg, shard);
                    let hooks = daemon::Hooks {
                        shard,
                        ..daemon::Hooks::default()
                    };
                    daemon::run(&cli.config, cfg, hooks).await
                }
                Err(code) => code,
            },
        }
    })
}

/// `adopt-state`: after a restore or a move to another disk, this state directory's token store
/// becomes the one its chains live in (a copy is refused until then: `auth::store`).
#[allow(clippy::print_stdout, clippy::print_stderr)] // the command's own output
fn adopt_state(path: &std::path::Path, shard: Option<(u32, u32)>) -> u8 {
    let cfg = match load(path, config::Checks::Full, shard) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = auth::store::TokenStore::new(&cfg.state_dir);
    match store.adopt() {
        Ok(true) => {
            println!(
                "{} now holds its token chains (it was a copy or a restore). If the original state directory still exists, remove it or its tokens/ now: run both and every chain ends.",
                cfg.state_dir.display()
            );
            exit::OK
        }
        Ok(false) => {
            println!(
                "{} already holds its token chains: nothing to adopt",
                cfg.state_dir.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("stellantis-sync: {e}");
            exit::IOERR
        }
    }
}

/// A core dump of this process would hold its tokens and secrets in plain text (export, import
/// and login are run by hand, outside the units' `LimitCORE=0`): the process is made
/// non-dumpable and its core size limit 0, for every command, before anything is read.
fn no_core_dumps() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
}

/// Refuses global flags a command does not honour (`demo --once` would otherwise run forever
/// while the user waits for it to end).
fn check_global_flags(cli: &Cli) -> Result<(), String> {
    let name = match &cli.command {
        None | Some(Command::Run) => return Ok(()),
        Some(Command::CheckConfig)
        | Some(Command::Status)
        | Some(Command::ImportAccount(_))
        | Some(Command::Login(_))
        | Some(Command::Backup(_))
        | Some(Command::AdoptState)
        | Some(Command::ExportAccount(_)) => {
            // `--shard` says which instance's files they work on, as the unit has it (status:
            // its accounts; import: refuses another shard's account; login: only its own
            // accounts; backup: its backup directory; export: any account held here, misplaced
            // ones included). `--once` means nothing to them.
            if cli.once {
                return Err("--once only applies to `run` (e.g. `stellantis-sync --once`)".into());
            }
            return Ok(());
        }
        Some(Command::Init(_)) => "init",
        Some(Command::Demo(_)) => "demo",
        Some(Command::Simulate(_)) => "simulate",
    };
    if cli.once {
        return Err(format!(
            "--once only applies to `run`, not to `{name}` (`demo` takes --duration SECS)"
        ));
    }
    if cli.shard.is_some() {
        return Err(format!(
            "--shard applies to the commands that work on one instance's files, not to `{name}`"
        ));
    }
    Ok(())
}

/// Loads the configuration or reports every problem and returns exit code 78.
#[allow(clippy::print_stdout, clippy::print_stderr)] // the command line's own output
fn load(
    path: &std::path::Path,
    checks: config::Checks,
    shard: Option<(u32, u32)>,
) -> Result<config::Config, u8> {
    let mut cfg = config::load(path, checks).map_err(|e| {
        eprintln!("stellantis-sync: {e}");
        exit::CONFIG
    })?;
    if let Some((i, n)) = shard {
        shard::keep(&mut cfg, i, n);
        tracing::info!(shard = %format!("{i}/{n}"), accounts = cfg.accounts.len(), "serving one shard");
    }
    Ok(cfg)
}

/// An instance serving `--shard I/N`: its state directory records the shard (so that an import
/// there without `--shard` is checked against it), and it says which accounts it holds that
/// belong elsewhere.
fn serve_shard(cfg: &config::Config, shard: Option<(u32, u32)>) {
    let Some((i, n)) = shard else {
        return;
    };
    shard::record(&cfg.state_dir, i, n);
    for line in shard::misplaced_lines(&shard::misplaced(cfg, i, n), i, n) {
        tracing::warn!("{line}");
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // the command line's own output
fn check_config(path: &std::path::Path, shard: Option<(u32, u32)>) -> u8 {
    match load(path, config::Checks::Full, shard) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} account{}, schedule \"{}\", database {})",
                path.display(),
                cfg.accounts.len(),
                if cfg.accounts.len() == 1 { "" } else { "s" },
                cfg.schedule.cron,
                cfg.database.display()
            );
            print!("{}", telemetry::projection_lines(&cfg));
            exit::OK
        }
        Err(code) => code,
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // the command line's own output
async fn login(path: &std::path::Path, args: cli::LoginArgs, shard: Option<(u32, u32)>) -> u8 {
    let cfg = match load(path, config::Checks::Full, shard) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some((i, n)) = shard {
        let belongs = shard::shard_of(&args.account, n);
        if belongs != i && !cfg.accounts.iter().any(|a| a.name == args.account) {
            eprintln!(
                "stellantis-sync: `{}` belongs to shard {belongs}/{n}, not {i}/{n}: sign it in with shard {belongs}'s state directory and database and `--shard {belongs}/{n}`",
                args.account
            );
            return exit::CONFIG;
        }
    }
    let Some(account) = cfg
        .accounts
        .iter()
        .find(|a| a.name == args.account)
        .cloned()
    else {
        eprintln!(
            "stellantis-sync: {}: no enabled account named `{}` (known: {})",
            path.display(),
            args.account,
            cfg.accounts
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return exit::CONFIG;
    };
    let mut account = account;
    // The account's own `country` unless overridden (the redirect URI depends on it).
    if let Some(c) = &args.country {
        account.country = c.to_ascii_lowercase();
    }
    // The listing after the login counts against the shared request budget (state_dir).
    let limits = std::sync::Arc::new(ratelimit::Limits::new(
        cfg.api.rate,
        cfg.idp.rate,
        Some(&cfg.state_dir),
    ));
    limits.set_daily_budget(telemetry::budget_plan(&cfg));
    let tokens = auth::TokenManager::in_dir(&cfg.state_dir, cfg.tokens, &cfg.idp, limits.clone());
    if let Err(e) = tokens.login(&account, args.code).await {
        eprintln!("stellantis-sync: {e}");
        return exit::for_login(&e);
    }
    let api = api::ApiClient::new(
        http::client(cfg.api.timeout),
        cfg.api.base.clone(),
        limits,
        cfg.api.page_size,
    );
    match auth::login::list_vehicles(&api, &tokens, &account).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("stellantis-sync: {e}");
            e.exit_code()
        }
    }
}

async fn simulate(args: cli::SimulateArgs) -> u8 {
    let mut faults = sim::Faults::default();
    for f in &args.faults {
        if let Err(e) = faults.set(f) {
            tracing::error!("--fault {f}: {e}");
            return exit::USAGE;
        }
    }
    let cfg = sim::SimConfig {
        seed: args.seed,
        users: args.users,
        vehicle_counts: if args.vehicles.is_empty() {
            sim::SimConfig::default().vehicle_counts
        } else {
            args.vehicles
        },
        access_ttl: Duration::from_secs(args.access_ttl),
        refresh_ttl: Duration::from_secs(args.refresh_ttl),
        password_grant: if args.password_grant_dead {
            sim::PasswordGrant::Dead
        } else {
            sim::PasswordGrant::Working
        },
        family_revocation: args.family_revocation,
        burst_per_second: args.burst,
        daily_limit: args.daily_limit,
        change_every: (args.change_every > 0).then(|| Duration::from_secs(args.change_every)),
        legacy_shapes: args.legacy_shapes,
        faults,
        ..sim::SimConfig::default()
    };
    match sim::serve_forever(args.listen, cfg).await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("{e:#}");
            exit::SOFTWARE
        }
    }
}
