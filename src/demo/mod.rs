//! `stellantis-sync demo`: the whole system in one command. Starts the simulator in-process with
//! a lively world (a few users whose vehicles come, go and change every few seconds), writes a
//! configuration for it, and runs the real daemon on a five-second schedule into
//! `./stellantis-sync-demo.sqlite`. A live view ([`feed`]) prints one line per event it records;
//! logs are at WARN unless `RUST_LOG` asks; Ctrl-C ends it with a summary and where to look.
// Printing is this command's job: the demo talks to the person who started it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::time::Duration;

use crate::config::{self, Checks};
use crate::daemon::{self, Hooks};
use crate::sim::{self, SimConfig};
use crate::{exit, store};

mod feed;
pub use feed::{Event, Feed, Totals};

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
    println!("stellantis-sync demo: the daemon against a simulated Stellantis API");
    println!("  database:      {}", db_path.display());
    println!("  configuration: {}", config_path.display());
    println!(
        "The simulated owners add, remove and re-spray cars every few seconds; the cars live two\n\
         minutes a second, from two days ago until they catch up with now, so charges and trips\n\
         show their own (earlier) times. One line per event; Ctrl-C stops.\n"
    );
    let started = std::time::Instant::now();
    let hooks = Hooks {
        shard: None,
        stop: tokio_util::sync::CancellationToken::new(),
        on_pass: None,
    };
    // The live view: what the database gained, read every half second as any reader would.
    let view_stop = hooks.stop.clone();
    let view_db = db_path.clone();
    let view = tokio::spawn(async move {
        let mut feed = Feed::default();
        let mut conn = None;
        loop {
            let stopping = view_stop.is_cancelled();
            if conn.is_none() && view_db.exists() {
                conn = store::open_read_only(&view_db).ok();
            }
            if let Some(c) = &conn {
                match feed.poll(c) {
                    Ok(events) => events.iter().for_each(|e| println!("{e}")),
                    // The schema is still being built, or a table is busy: next time.
                    Err(_) => conn = None,
                }
            }
            if stopping {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = view_stop.cancelled() => {}
            }
        }
    });
    if let Some(secs) = duration {
        let stop = hooks.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.cancel();
        });
    }
    let stop = hooks.stop.clone();
    let code = daemon::run(&config_path, cfg, hooks).await;
    stop.cancel();
    let _ = view.await;
    sim.shutdown().await;
    print_summary(&db_path, started.elapsed());
    code
}

/// What was recorded, and where to look at it: queries, Datasette, the dashboards, DuckDB.
fn print_summary(db: &Path, took: Duration) {
    let file = db.display();
    if let Ok(t) = store::open_read_only(db)
        .map_err(|e| e.to_string())
        .and_then(|c| feed::totals(&c).map_err(|e| e.to_string()))
    {
        println!(
            "\nIn {} s: {} accounts, {} vehicles listed, {} changes, {} charges, {} trips, in {file}",
            took.as_secs(),
            t.accounts,
            t.vehicles,
            t.changes,
            t.charges,
            t.trips
        );
    }
    println!("\nQueries to try (sqlite3):");
    println!(
        "  sqlite3 {file} \"SELECT observed_at, account, vin, kind, field FROM vehicle_history ORDER BY change_id DESC LIMIT 20\""
    );
    println!("  sqlite3 {file} \"SELECT * FROM sync_health\"");
    println!(
        "  sqlite3 {file} \"SELECT vin, datetime(started_ts, 'unixepoch'), start_soc, end_soc, energy_added_kwh, end_reason FROM charging_sessions\""
    );
    // The repository's tools, when the demo runs in a clone (`cargo run -- demo`).
    if Path::new("tools/datasette.sh").exists() {
        println!(
            "\nBrowse it, with the canned queries and dashboards (Datasette, pinned by tools/test):"
        );
        println!("  PATH=target/ci-venv/bin:$PATH tools/datasette.sh {file}");
    }
    if Path::new("tools/fleet.py").exists() {
        println!(
            "\nDuckDB, offline (its SQLite extension comes with the pinned wheels tools/test installs):"
        );
        println!(
            "  target/ci-venv/bin/python tools/fleet.py --query \"SELECT kind, count(*) FROM vehicle_changes GROUP BY ALL\" {file}"
        );
    }
    println!("\nGrafana: dashboards/grafana/ (README, \"Dashboards\").");
}
