//! `stellantis-sync demo`: the whole system in one command. Starts the simulator in-process with
//! a lively world (a few users whose vehicles come, go and change every few seconds), writes a
//! configuration for it, and runs the real daemon on a five-second schedule into
//! `./stellantis-sync-demo.sqlite`, printing what it records and how to query it. Ctrl-C ends it.
// Printing is this command's job: the demo talks to the person who started it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Checks};
use crate::daemon::{self, Hooks};
use crate::sim::{self, SimConfig};
use crate::{exit, store};

/// Runs the demo; returns the exit code.
pub async fn run(database: &Path, duration: Option<u64>) -> u8 {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot open a local port for the simulator: {e}");
            return exit::SOFTWARE;
        }
    };
    let sim_cfg = SimConfig {
        users: 4,
        vehicle_counts: vec![2, 3, 1, 4],
        // Two minutes of the cars' lives a second, from the rush hour two days ago, so drives
        // and charges happen while one watches (for about 25 minutes); then the world has
        // caught up with now and runs in real time: the cars' reports are never dated after
        // the fetch, which the daemon would take for a wrong clock.
        time_scale: 120.0,
        start_time: (chrono::Utc::now() - chrono::TimeDelta::days(2))
            .date_naive()
            .and_hms_opt(7, 30, 0)
            .map(|t| t.and_utc()),
        catch_up_to_now: true,
        change_every: Some(Duration::from_secs(240)),
        seed: rand::random(),
        ..SimConfig::default()
    };
    let sim = match sim::spawn(listener, sim_cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot start the simulator: {e}");
            return exit::SOFTWARE;
        }
    };
    let db_path = std::path::absolute(database).unwrap_or_else(|_| database.to_owned());
    let state_dir = db_path.with_extension("state");
    let mut accounts = String::new();
    for (email, _, brand) in sim.users() {
        // The phone app's login, done out of band: the daemon bootstraps from a refresh token.
        let token = sim.issue_refresh_token(&email).unwrap_or_default();
        let name = email.split('@').next().unwrap_or("user");
        accounts.push_str(&format!(
            "\n[[accounts]]\nname = \"{name}\"\nbrand = \"{}\"\nrefresh_token = \"{token}\"\n",
            brand.key()
        ));
    }
    let config_text = format!(
        "# Written by `stellantis-sync demo` for its in-process simulator.\n\
         database = \"{}\"\nstate_dir = \"{}\"\nschedule = \"*/5 * * * * *\"\nmax_concurrent_accounts = 2\n\
         [rate_limit]\nrequests_per_second = 20\nburst = 1\n\
         [api]\nbase_url = \"{}\"\nretry_base = \"200ms\"\nretry_cap = \"2s\"\n\
         [idp]\nbase_url = \"{}\"\n\
         [telemetry]\nactive_interval = \"2s\"\nparked_interval = \"5s\"\ndaily_request_budget = 10000000\n\
         [app]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n{accounts}",
        db_path.display(),
        state_dir.display(),
        sim.api_base(),
        sim.base_url(),
        sim::DEFAULT_CLIENT_ID,
        sim::DEFAULT_CLIENT_SECRET,
    );
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        eprintln!("demo: cannot create {}: {e}", state_dir.display());
        return exit::IOERR;
    }
    let config_path = state_dir.join("demo-config.toml");
    if let Err(e) = std::fs::write(&config_path, config_text) {
        eprintln!("demo: cannot write {}: {e}", config_path.display());
        return exit::IOERR;
    }
    let cfg = match config::load(&config_path, Checks::Full) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {e}");
            return exit::SOFTWARE;
        }
    };
    println!("stellantis-sync demo");
    println!(
        "  simulator:     {} (users user1@example.com … with password1 …)",
        sim.base_url()
    );
    println!("  configuration: {}", config_path.display());
    println!("  database:      {}", db_path.display());
    println!(
        "The simulated owners add, remove and re-spray vehicles every few seconds and their cars live two\n\
         minutes a second (drives, charges); a list pass runs every 5 s, each car's status every 2 to 5 s."
    );
    println!("Press Ctrl-C to stop.\n");
    let printed = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let db_for_hook = db_path.clone();
    let telemetry_seen = crate::telemetry::DemoSeen::default();
    let hooks = Hooks {
        shard: None,
        stop: tokio_util::sync::CancellationToken::new(),
        on_pass: Some(Box::new(move |summary| {
            println!("{}", summary.line());
            if let Ok(conn) = store::open_read_only(&db_for_hook) {
                let since = printed.load(std::sync::atomic::Ordering::Relaxed);
                let rows = conn
                    .prepare(
                        "SELECT change_id, observed_at, account, vin, kind, coalesce(field, ''), coalesce(new_value, '')
                         FROM vehicle_history WHERE change_id > ?1 ORDER BY change_id LIMIT 12",
                    )
                    .and_then(|mut st| {
                        st.query_map([since], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?,
                                r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .unwrap_or_default();
                for (id, at, account, vin, kind, field, new) in rows {
                    let new: String = new.chars().take(60).collect();
                    println!(
                        "  {at} {account:<6} {} {kind:<8} {field} {new}",
                        vin.unwrap_or_default()
                    );
                    printed.store(id, std::sync::atomic::Ordering::Relaxed);
                }
                for line in crate::telemetry::demo_lines(&conn, &telemetry_seen) {
                    println!("  {line}");
                }
            }
        })),
    };
    if let Some(secs) = duration {
        let stop = hooks.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.cancel();
        });
    }
    let code = daemon::run(&config_path, cfg, hooks).await;
    println!("\nQuery what was recorded:");
    println!(
        "  sqlite3 {} \"SELECT observed_at, account, vin, kind, field FROM vehicle_history ORDER BY change_id DESC LIMIT 20\"",
        db_path.display()
    );
    println!(
        "  sqlite3 {} \"SELECT * FROM sync_health\"",
        db_path.display()
    );
    println!(
        "  sqlite3 {} \"SELECT vin, datetime(started_ts, 'unixepoch'), start_soc, end_soc, energy_added_kwh, end_reason FROM charging_sessions\"",
        db_path.display()
    );
    println!(
        "  python3 -c \"import duckdb; print(duckdb.sql(\\\"SELECT kind, count(*) FROM sqlite_scan('{}', 'vehicle_changes') GROUP BY 1\\\"))\"",
        db_path.display()
    );
    sim.shutdown().await;
    code
}
