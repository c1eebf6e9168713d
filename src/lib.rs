//! stellantis-sync: keeps the vehicle lists of Stellantis connected-car accounts (Peugeot,
//! Citroën, DS, Opel, Vauxhall) in a local SQLite change history.
//!
//! # Layout
//! See `ARCHITECTURE.md` for the map. In short: [`config`] loads and validates the configuration;
//! [`auth`] gets and keeps OAuth2 tokens; [`api`] speaks HTTP to the resource API; [`sync`] turns
//! a listing into changes; [`store`] writes them to SQLite; [`daemon`] schedules passes and handles
//! signals; [`sim`] is the simulator of the whole remote side.

pub mod brand;
pub mod cli;
pub mod exit;
pub mod logging;
pub mod sim;
pub mod timefmt;

use std::time::Duration;

use cli::{Cli, Command};

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    logging::init(cli.log_format);
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
    runtime.block_on(async move {
        match cli.command {
            Some(Command::Simulate(args)) => simulate(args).await,
            _ => {
                tracing::error!("this command is not available yet");
                exit::USAGE
            }
        }
    })
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
