//! The performance benchmark (`cargo bench --bench sync`): the simulator and the real sync
//! engine in one process (the footprint scenario runs the real binary), five scenarios, one
//! table. `cargo bench --bench sync -- --quick` runs smaller sizes. Results: BENCHMARKS.md.
//!
//! 1. Quota efficiency: 1,000 accounts × 1–4 vehicles under a 200 requests/s simulator quota.
//! 2. Own overhead: 10,000 accounts, no quota, against a plain HTTP loop over the same endpoint.
//! 3. Recording: a poll of 100,000 vehicles with 1 % changed, and with none changed.
//! 4. Footprint: RSS idle and during a pass (1,000 and 10,000 accounts), binary size, start-up.
//! 5. Scaling: scenario 2 at 1,000, 10,000 and 50,000 accounts.
//! 6. Telemetry: 1,000 vehicles through a simulated day at the default intervals (requests,
//!    database growth per vehicle-day, CPU per status poll).
//! 7. The unchanged-status path without HTTP: CPU per poll, growth.
//! 8. Quota pacing of the whole `--once` process: 300 accounts at 48 requests/s.
//! 9. Telemetry footprint: RSS of the real binary polling 10,000 vehicles.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use stellantis_sync::auth::store::TokenStore;
use stellantis_sync::config::{self, Checks, Config};
use stellantis_sync::daemon;
use stellantis_sync::sim::{self, SimConfig, SimHandle};
use stellantis_sync::store::Db;
use stellantis_sync::sync::diff::CompleteListing;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_stellantis-sync");

/// Where the figures come from: the commit (with `+changes` when the tree differs from it), the
/// machine and the compiler, one line each.
fn provenance() -> String {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = run("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = run("uname", &["-sr"]).unwrap_or_default();
    let rustc = run("rustc", &["--version"]).unwrap_or_else(|| "rustc unknown".into());
    format!(
        "- commit: {commit}{}\n- machine: {cores} × {model}, {mem_gib:.0} GiB, {kernel}\n- compiler: {rustc}, bench profile",
        if dirty { " +changes" } else { "" }
    )
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn write_config(
    dir: &std::path::Path,
    sim: &SimHandle,
    n: usize,
    rps: u32,
    concurrency: usize,
    schedule: &str,
) -> std::path::PathBuf {
    write_config_with(
        dir,
        sim,
        n,
        rps,
        concurrency,
        schedule,
        "[telemetry]\nenabled = false\n",
    )
}

/// `write_config` with extra sections (written before the accounts).
fn write_config_with(
    dir: &std::path::Path,
    sim: &SimHandle,
    n: usize,
    rps: u32,
    concurrency: usize,
    schedule: &str,
    extra: &str,
) -> std::path::PathBuf {
    let mut t = format!(
        "state_dir = \"{}\"\nschedule = \"{schedule}\"\nmax_concurrent_accounts = {concurrency}\nrefresh_margin = \"5m\"\n\
         [rate_limit]\nrequests_per_second = {rps}\nburst = 1\n\
         [api]\nbase_url = \"{}\"\ntimeout = \"10s\"\nretry_base = \"100ms\"\nretry_cap = \"1s\"\n\
         [idp]\nbase_url = \"{}\"\nrequests_per_second = 100000\nburst = 1\n\
         [app]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        dir.join("state").display(),
        sim.api_base(),
        sim.base_url(),
        sim::DEFAULT_CLIENT_ID,
        sim::DEFAULT_CLIENT_SECRET
    );
    t.push_str(extra);
    for (i, (email, _, brand)) in sim.users().into_iter().take(n).enumerate() {
        let token = sim.issue_refresh_token(&email).unwrap_or_default();
        t.push_str(&format!(
            "[[accounts]]\nname = \"a{i}\"\nbrand = \"{}\"\nrefresh_token = \"{token}\"\n",
            brand.key()
        ));
    }
    let p = dir.join("config.toml");
    std::fs::write(&p, t).unwrap();
    p
}

async fn sim_with(users: usize, seed: u64, burst: u32) -> SimHandle {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let counts: Vec<usize> = (0..users).map(|_| rng.random_range(1..=4)).collect();
    let cfg = SimConfig {
        users,
        vehicle_counts: counts,
        burst_per_second: burst,
        daily_limit: 0,
        seed,
        ..SimConfig::default()
    };
    sim::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        cfg,
    )
    .unwrap()
}

struct Pass {
    secs: f64,
    requests: u64,
    ok: usize,
    cpu: f64,
}

/// Builds the engine, runs a warm-up pass (bootstraps every token), then a measured pass.
async fn measured_pass(cfg: Config, sim: &SimHandle) -> Pass {
    let n = cfg.accounts.len();
    let app = daemon::build(cfg, None).unwrap();
    let warm = daemon::run_pass(
        app.engine.clone(),
        app.cfg.accounts.clone(),
        app.cfg.schedule.max_concurrent_accounts,
        CancellationToken::new(),
        Default::default(),
    )
    .await;
    assert!(warm.outcomes.len() == n);
    // The server counts requests over the last second: the measured pass starts in a window of
    // its own. (Without this pause, quick mode's warm-up of 200 accounts, about one second long,
    // began with a handful of arrivals bunched while the in-process simulator was busy issuing
    // tokens, so the measured pass's first request made 201 in one second: a 429 and a 1 s
    // cooldown, actual/ideal 1.85.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.reset_stats();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let s = daemon::run_pass(
        app.engine.clone(),
        app.cfg.accounts.clone(),
        app.cfg.schedule.max_concurrent_accounts,
        CancellationToken::new(),
        Default::default(),
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let ok = s
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, stellantis_sync::sync::Outcome::Ok { .. }))
        .count();
    Pass {
        secs,
        requests: sim.stats().api_requests,
        ok,
        cpu: cpu_seconds() - cpu0,
    }
}

/// The ceiling: the same GETs with the same concurrency, no parsing, no storing, no limiter.
async fn plain_loop(cfg: &Config, sim: &SimHandle, concurrency: usize) -> (f64, u64, f64) {
    let store = TokenStore::new(&cfg.state_dir);
    let mut jobs = Vec::new();
    for a in &cfg.accounts {
        let rec = store.load(&a.name).unwrap().unwrap();
        let token = rec.access_token.unwrap().expose_secret().to_owned();
        jobs.push((token, a.brand.realm()));
    }
    let url = format!(
        "{}/user/vehicles?client_id={}&pageSize=60",
        sim.api_base(),
        sim::DEFAULT_CLIENT_ID
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    sim.reset_stats();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (jobs, http, url) = (jobs.clone(), http.clone(), url.clone());
        set.spawn(async move {
            loop {
                let Some((token, realm)) = jobs.lock().unwrap().pop() else {
                    break;
                };
                let r = http
                    .get(&url)
                    .bearer_auth(token)
                    .header("x-introspect-realm", realm)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await.unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    (
        t.elapsed().as_secs_f64(),
        sim.stats().api_requests,
        cpu_seconds() - cpu0,
    )
}

fn load(path: &std::path::Path) -> Config {
    config::load(path, Checks::Full).unwrap()
}

async fn scenario1(rows: &mut Vec<String>, accounts: usize) {
    let quota = 200;
    let sim = sim_with(accounts, 1, quota).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(&write_config(
        dir.path(),
        &sim,
        accounts,
        quota,
        32,
        "0 0 0 1 1 *",
    ));
    let p = measured_pass(cfg, &sim).await;
    let ideal = p.requests as f64 / f64::from(quota);
    let s = sim.stats();
    rows.push(format!(
        "| 1 | quota efficiency, {accounts} accounts, quota {quota}/s | {} requests; ideal {ideal:.2} s, actual {:.2} s, **actual/ideal {:.3}**; simulator 429s: **{}**; peak {} req in any 1 s | ≤ 1.05, 0 × 429 |",
        p.requests, p.secs, p.secs / ideal, s.over_quota, s.peak_api_rps
    ));
    assert_eq!(p.ok, accounts);
}

async fn scenario2(rows: &mut Vec<String>, accounts: usize, label: &str) -> (f64, f64) {
    let concurrency = 32;
    let sim = sim_with(accounts, 2, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(&write_config(
        dir.path(),
        &sim,
        accounts,
        1_000_000,
        concurrency,
        "0 0 0 1 1 *",
    ));
    let p = measured_pass(cfg.clone(), &sim).await;
    let (loop_secs, loop_requests, loop_cpu) = plain_loop(&cfg, &sim, concurrency).await;
    let rps = p.requests as f64 / p.secs;
    let ceiling = loop_requests as f64 / loop_secs;
    rows.push(format!(
        "| {label} | own overhead, {accounts} accounts, no quota, {concurrency} concurrent | pass {rps:.0} req/s vs plain loop {ceiling:.0} req/s = **{:.0} %**; CPU per account {:.0} µs (loop {:.0} µs; both include the in-process simulator) | ≥ 50 % |",
        100.0 * rps / ceiling,
        1e6 * p.cpu / accounts as f64,
        1e6 * loop_cpu / accounts as f64
    ));
    assert_eq!(p.ok, accounts);
    (p.secs, rps)
}

fn db_bytes(path: &std::path::Path) -> u64 {
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) + wal
}

fn scenario3(rows: &mut Vec<String>, vehicles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let mut db = Db::open(&path).unwrap();
    let world = sim::world::World::generate(3, 1, &[vehicles], vehicles);
    let brand = world.users[0].brand;
    let base = "https://api.groupe-psa.com/connectedcar/v4";
    let mut list: Vec<serde_json::Value> = world.users[0]
        .vehicles
        .iter()
        .map(|v| sim::world::vehicle_json(brand, v, base))
        .collect();
    let account = db.account_id("big", "peugeot").unwrap();
    let step = |db: &mut Db, list: &[serde_json::Value]| -> (f64, usize, i64) {
        db.checkpoint_if_large(0).unwrap();
        let before = db_bytes(&path);
        let run = db.begin_run(account).unwrap();
        let listing = CompleteListing::assume_complete(list);
        let t = Instant::now();
        let applied = db.apply_listing(run, account, &listing, 1).unwrap();
        let secs = t.elapsed().as_secs_f64();
        db.checkpoint_if_large(0).unwrap();
        let growth = db_bytes(&path) as i64 - before as i64;
        (secs, applied.changes, growth)
    };
    let (t0, c0, g0) = step(&mut db, &list);
    let changed = vehicles / 100;
    for v in list.iter_mut().take(changed) {
        v["label"] = serde_json::json!("re-labelled");
    }
    let (t1, c1, g1) = step(&mut db, &list);
    let (t2, c2, g2) = step(&mut db, &list);
    rows.push(format!(
        "| 3 | recording, one poll of {vehicles} vehicles | first poll {t0:.2} s ({c0} rows, +{:.1} MiB); 1 % changed **{t1:.2} s**, {c1} change rows, {:+.1} KiB; none changed **{t2:.3} s**, **{c2} change rows**, {:+.1} KiB | no-change: 0 rows, < 1 s |",
        g0 as f64 / 1_048_576.0,
        g1 as f64 / 1024.0,
        g2 as f64 / 1024.0
    ));
    assert_eq!(c2, 0);
}

/// A simulator of `users` accounts with 4 vehicles each, no quota; its clock runs at
/// `time_scale` (0: it moves only when the benchmark jumps it).
async fn fleet_sim(users: usize, seed: u64, time_scale: f64) -> SimHandle {
    sim::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            users,
            vehicle_counts: vec![4; users],
            burst_per_second: 0,
            daily_limit: 0,
            seed,
            time_scale,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

/// The first `n` users' vehicles under `[telemetry]` at the default intervals (the daily budget
/// set out of the way, so that the intervals are the defaults), through one simulated day: the
/// simulator's clock stands still and jumps a minute at a time; the runner polls what is due at
/// each minute, as the daemon's loop does.
async fn scenario6(rows: &mut Vec<String>, vehicles: usize) {
    let users = vehicles.div_ceil(4);
    let sim = fleet_sim(users, 6, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(&write_config_with(
        dir.path(),
        &sim,
        users,
        1_000_000,
        32,
        "0 0 0 1 1 *",
        "[telemetry]\nenabled = true\ndaily_request_budget = 1000000000\nmax_concurrent_vehicles = 16\n",
    ));
    let db_path = cfg.database.clone();
    let app = daemon::build(cfg, None).unwrap();
    let listed = daemon::run_pass(
        app.engine.clone(),
        app.cfg.accounts.clone(),
        app.cfg.schedule.max_concurrent_accounts,
        CancellationToken::new(),
        Default::default(),
    )
    .await;
    assert_eq!(listed.outcomes.len(), users);
    let t = stellantis_sync::telemetry::Telemetry::new(&app.cfg, app.engine.clone());
    // The first round (every vehicle's first body, trips, alerts, maintenance) is the start
    // state; growth and requests are counted over the day after it.
    let start = sim.now().timestamp();
    let first = t.run_due(start, CancellationToken::new()).await;
    assert_eq!(first.failures, 0, "{}", first.line());
    app.engine
        .db
        .lock()
        .unwrap()
        .checkpoint_if_large(0)
        .unwrap();
    let bytes0 = db_bytes(&db_path);
    sim.reset_stats();
    let cpu0 = cpu_seconds();
    let wall = Instant::now();
    let mut day = stellantis_sync::telemetry::TelemetrySummary::default();
    for _minute in 0..24 * 60 {
        sim.advance_clock(Duration::from_secs(60));
        let s = t
            .run_due(sim.now().timestamp(), CancellationToken::new())
            .await;
        day.merge(s);
    }
    let cpu = cpu_seconds() - cpu0;
    let secs = wall.elapsed().as_secs_f64();
    app.engine
        .db
        .lock()
        .unwrap()
        .checkpoint_if_large(0)
        .unwrap();
    let growth = db_bytes(&db_path).saturating_sub(bytes0);
    if let Ok(keep) = std::env::var("BENCH_KEEP_DB") {
        // For a look at where the bytes go (`sqlite3 FILE` with the dbstat table).
        let _ = std::fs::remove_file(&keep);
        app.engine
            .db
            .lock()
            .unwrap()
            .conn()
            .execute("VACUUM INTO ?1", [&keep])
            .unwrap();
    }
    let n = users * 4;
    let per_vehicle_day = growth as f64 / n as f64 / 1024.0;
    let api = sim.stats().api_requests;
    let (drives, charges) = (sim.drives().len(), sim.charges().len());
    rows.push(format!(
        "| 6 | telemetry, {n} vehicles, one simulated day at the default intervals | {api} API requests ({:.0} per vehicle-day; {} status polls: {} new observations, {} unchanged; {} trips; {drives} drives, {charges} charges in the world); database **{per_vehicle_day:.1} KiB per vehicle-day**; CPU {:.0} µs per status poll, simulator and HTTP included; {secs:.1} s | ≤ 50 KiB per vehicle-day |",
        api as f64 / n as f64,
        day.statuses,
        day.new_observations,
        day.unchanged,
        day.trips,
        1e6 * cpu / day.statuses.max(1) as f64,
    ));
    assert_eq!(day.failures, 0, "{}", day.line());
    sim.shutdown().await;
}

/// The daily budget (issue 22, defect 9): `check-config`'s forecast against the requests a
/// simulated day actually sends, at the default intervals, first with room to spare, then with
/// a budget of half the forecast (the planner stretches the intervals and the ceiling holds).
/// The day is one UTC day on the simulator's clock (the day's count follows it), from 00:00.
async fn scenario10(rows: &mut Vec<String>, vehicles: usize) {
    use std::sync::atomic::{AtomicI64, Ordering};
    let users = vehicles.div_ceil(4);
    let midnight = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut cells = Vec::new();
    for half in [false, true] {
        let sim = sim::spawn(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            SimConfig {
                users,
                vehicle_counts: vec![4; users],
                burst_per_second: 0,
                daily_limit: 0,
                seed: 10,
                time_scale: 0.0,
                start_time: Some(midnight),
                access_ttl: Duration::from_secs(30 * 86_400),
                refresh_ttl: Duration::from_secs(60 * 86_400),
                ..SimConfig::default()
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = |budget: u64| {
            format!(
                "[telemetry]\nenabled = true\ndaily_request_budget = {budget}\nmax_concurrent_vehicles = 16\n"
            )
        };
        let probe = load(&write_config_with(
            dir.path(),
            &sim,
            users,
            1_000_000,
            32,
            "0 0 0 1 1 *",
            &text(1_000_000),
        ));
        let n = users * 4;
        let forecast = stellantis_sync::telemetry::schedule::projection(
            &probe.telemetry.intervals,
            1_000_000,
            n,
            0.0,
        )
        .requests_per_day;
        let budget = if half {
            (forecast / 2.0) as u64
        } else {
            1_000_000
        };
        let cfg = load(&write_config_with(
            dir.path(),
            &sim,
            users,
            1_000_000,
            32,
            "0 0 0 1 1 *",
            &text(budget),
        ));
        let app = daemon::build(cfg, None).unwrap();
        let clock = Arc::new(AtomicI64::new(sim.now().timestamp()));
        let c = clock.clone();
        app.limits.daily.set_clock(Arc::new(move || {
            chrono::DateTime::from_timestamp(c.load(Ordering::Relaxed), 0).unwrap_or_default()
        }));
        let listed = daemon::run_pass(
            app.engine.clone(),
            app.cfg.accounts.clone(),
            app.cfg.schedule.max_concurrent_accounts,
            CancellationToken::new(),
            Default::default(),
        )
        .await;
        assert_eq!(listed.outcomes.len(), users);
        let t = stellantis_sync::telemetry::Telemetry::new(&app.cfg, app.engine.clone());
        let mut day = stellantis_sync::telemetry::TelemetrySummary::default();
        // Every minute of the day, as the daemon's loop polls what is due; the last minute
        // ends at 23:59 (the next would count into the next day).
        for minute in 0..24 * 60 {
            if minute > 0 {
                sim.advance_clock(Duration::from_secs(60));
            }
            let now = sim.now().timestamp();
            clock.store(now, Ordering::Relaxed);
            day.merge(t.run_due(now, CancellationToken::new()).await);
        }
        let sent = sim.stats().api_requests;
        if half {
            cells.push(format!(
                "budget {budget} (half the forecast): **{sent} sent, {:.3} of the budget**, {} deferred",
                sent as f64 / budget as f64,
                day.deferred
            ));
            assert!(sent <= budget, "{sent} > {budget}");
        } else {
            cells.push(format!(
                "{n} vehicles: forecast {forecast:.0}/day, **measured {sent} ({:.2} of the forecast)**",
                sent as f64 / forecast
            ));
        }
        sim.shutdown().await;
    }
    rows.push(format!(
        "| 10 | the daily budget: `check-config`'s forecast against a simulated day at the default intervals, then a budget of half the forecast | {} | the day within the budget (≤ 1.00) |",
        cells.join("; ")
    ));
}

/// The unchanged-status path without HTTP: `vehicles` status bodies parsed (JSON, canonical
/// hash, observation) and written, then the same bodies again, as a poll of cars that did not
/// report meanwhile; CPU per unchanged poll, and the database growth of that round.
async fn scenario7(rows: &mut Vec<String>, vehicles: usize) {
    use stellantis_sync::store::telemetry::{Batch, StatusFetch};
    let per_account = 100;
    let accounts = vehicles.div_ceil(per_account);
    let sim = sim::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            users: accounts,
            vehicle_counts: vec![per_account; accounts],
            max_vehicles: per_account,
            seed: 7,
            time_scale: 0.0,
            ..SimConfig::default()
        },
    )
    .unwrap();
    let clock = sim.now();
    let mut bodies: Vec<(usize, String, Vec<u8>)> = Vec::new();
    for (a, (email, _, _)) in sim.users().into_iter().enumerate() {
        for v in sim.vehicles(&email) {
            let vin = v["vin"].as_str().unwrap().to_owned();
            let body = sim.status_of(&vin).unwrap();
            bodies.push((a, vin, serde_json::to_vec(&body).unwrap()));
        }
    }
    sim.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let mut db = Db::open(&path).unwrap();
    let ids: Vec<i64> = (0..accounts)
        .map(|a| db.account_id(&format!("a{a}"), "peugeot").unwrap())
        .collect();
    let round = |db: &mut Db, ts: i64| -> (f64, usize) {
        let cpu0 = cpu_seconds();
        let mut new = 0;
        for (a, chunk) in bodies.chunk_by(|x, y| x.0 == y.0).enumerate() {
            let statuses = chunk
                .iter()
                .map(|(_, vin, raw)| StatusFetch {
                    vin: vin.clone(),
                    fetched_ts: ts,
                    body: String::from_utf8_lossy(raw).into_owned(),
                    parsed: stellantis_sync::telemetry::status::parse(raw).unwrap(),
                })
                .collect();
            let batch = Batch {
                statuses,
                ..Batch::default()
            };
            let recorded = db.write_telemetry(ids[a], &batch, 3600).unwrap();
            new += recorded.iter().filter(|r| r.new_observation).count();
        }
        (cpu_seconds() - cpu0, new)
    };
    let t0 = clock.timestamp();
    let (_, first_new) = round(&mut db, t0);
    assert_eq!(first_new, bodies.len());
    db.checkpoint_if_large(0).unwrap();
    let before = db_bytes(&path);
    let (cpu, new) = round(&mut db, t0 + 1200);
    db.checkpoint_if_large(0).unwrap();
    let growth = db_bytes(&path) as i64 - before as i64;
    rows.push(format!(
        "| 7 | unchanged status poll, {} vehicles in {accounts} accounts, no HTTP | **{:.0} µs CPU per poll** (parse, hash, one `last_fetched_ts` update; one transaction per account); {new} new rows, {:+.1} KiB | ≤ 100 µs, 0 rows |",
        bodies.len(),
        1e6 * cpu / bodies.len() as f64,
        growth as f64 / 1024.0
    ));
    assert_eq!(new, 0);
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn scenario4(rows: &mut Vec<String>, sizes: &[usize]) {
    let bin_size = std::fs::metadata(BIN).map(|m| m.len()).unwrap_or(0);
    for &n in sizes {
        let sim = sim_with(n, 4, 0).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &sim, n, 1_000_000, 32, "0 0 0 1 1 *");
        let sock_path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        let t = Instant::now();
        let mut child = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("NOTIFY_SOCKET", &sock_path)
            // As systemd/stellantis-sync.service runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut buf = [0u8; 512];
        let mut ready = None;
        let mut peak_during = 0;
        // First pass (bootstraps tokens) and then a second, measured one through SIGHUP-free
        // restart is not needed: the peak RSS over the first pass is the worst case.
        loop {
            let n = sock.recv(&mut buf).unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.starts_with("READY=1") && ready.is_none() {
                ready = Some(t.elapsed());
            }
            peak_during = peak_during.max(rss_kib(pid, "VmHWM:"));
            if msg.starts_with("STATUS=last pass") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss_kib(pid, "VmRSS:");
        let hwm = rss_kib(pid, "VmHWM:");
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = child.wait();
        rows.push(format!(
            "| 4 | footprint, {n} accounts (real binary, as the unit runs it) | start-up to READY {:.0} ms; RSS idle after a pass **{:.1} MiB**, peak during the pass {:.1} MiB; binary {:.1} MiB | < 30 MiB idle at 1,000 |",
            ready.unwrap_or_default().as_secs_f64() * 1e3,
            idle as f64 / 1024.0,
            hwm.max(peak_during) as f64 / 1024.0,
            bin_size as f64 / 1_048_576.0
        ));
        sim.shutdown().await;
    }
}

/// Quota pacing as the operator sees it: the whole `--once` process (start-up, database open,
/// tokens, the pass, exit) against a simulator that enforces `rate` requests in any one-second
/// window, beside the ideal `requests / rate`. The first `--once` bootstraps the tokens; the
/// second is measured.
async fn scenario8(rows: &mut Vec<String>, accounts: usize, rate: u32) {
    let sim = sim_with(accounts, 8, rate).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &sim, accounts, rate, 32, "0 0 0 1 1 *");
    let once = move || {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--once")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    let warm = tokio::task::spawn_blocking(once.clone()).await.unwrap();
    assert!(warm.success(), "{warm:?}");
    // A fresh one-second window for the measured run.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.reset_stats();
    let t = Instant::now();
    let measured = tokio::task::spawn_blocking(once).await.unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(measured.success(), "{measured:?}");
    let s = sim.stats();
    let ideal = s.api_requests as f64 / f64::from(rate);
    rows.push(format!(
        "| 8 | quota pacing of the whole `--once` process, {accounts} accounts at {rate} req/s | {} requests; ideal {ideal:.2} s, process wall {wall:.2} s, **wall/ideal {:.3}**; simulator 429s: **{}**; peak {} in any 1 s | ≤ 1.05, 0 × 429 |",
        s.api_requests,
        wall / ideal,
        s.over_quota,
        s.peak_api_rps
    ));
    sim.shutdown().await;
}

/// Telemetry at scale, the real binary as the unit runs it: `vehicles` cars (4 per account)
/// with `[telemetry]` on; RSS while the first list pass and the first status round of every
/// vehicle run, and after.
async fn scenario9(rows: &mut Vec<String>, vehicles: usize) {
    let users = vehicles.div_ceil(4);
    let sim = fleet_sim(users, 9, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        &sim,
        users,
        1_000_000,
        32,
        "0 0 0 1 1 *",
        "[telemetry]\nenabled = true\ndaily_request_budget = 1000000000\nmax_concurrent_vehicles = 16\n",
    );
    let db_path = dir.path().join("state/stellantis-sync.sqlite");
    let t = Instant::now();
    // `BENCH_HEAPTRACK=FILE` runs the daemon under heaptrack (a heap profile in FILE.zst; the
    // RSS figures are then heaptrack's, not the daemon's).
    let mut cmd = match std::env::var("BENCH_HEAPTRACK") {
        Ok(out) => {
            let mut c = std::process::Command::new("heaptrack");
            c.args(["-o", &out]).arg(BIN);
            c
        }
        Err(_) => std::process::Command::new(BIN),
    };
    let mut child = cmd
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("MALLOC_ARENA_MAX", "2")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let polled = || -> i64 {
        rusqlite::Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT count(DISTINCT vin) FROM vehicle_status", [], |r| {
                    r.get(0)
                })
            })
            .unwrap_or(0)
    };
    let mut seen = 0;
    while t.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = polled();
        if seen >= vehicles as i64 {
            break;
        }
    }
    let round = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    rows.push(format!(
        "| 9 | telemetry footprint, {vehicles} vehicles in {users} accounts (real binary) | first list pass and status round of {seen} vehicles in {round:.1} s; **peak RSS {:.1} MiB**, after {:.1} MiB | RSS ≤ 64 MiB at 10,000 vehicles |",
        hwm as f64 / 1024.0,
        idle as f64 / 1024.0
    ));
    assert_eq!(seen, vehicles as i64, "not every vehicle was polled");
    sim.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.starts_with("scenario"))
        .collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rows = vec![
        "| # | scenario | result | target |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    rt.block_on(async {
        if want("scenario1") {
            scenario1(&mut rows, if quick { 200 } else { 1000 }).await;
        }
        let mut scaling = Vec::new();
        if want("scenario2") || want("scenario5") {
            let sizes: &[usize] = if quick {
                &[1000, 5000]
            } else {
                &[1000, 10_000, 50_000]
            };
            for &n in sizes {
                let label = if n == 10_000 || (quick && n == 5000) {
                    "2"
                } else {
                    "5"
                };
                let r = scenario2(&mut rows, n, label).await;
                scaling.push((n, r));
            }
            let line: Vec<String> = scaling
                .iter()
                .map(|(n, (secs, rps))| format!("{n}: {secs:.2} s ({rps:.0} req/s)"))
                .collect();
            rows.push(format!(
                "| 5 | scaling of scenario 2 | {} | growth visible, ~linear |",
                line.join("; ")
            ));
        }
        if want("scenario3") {
            scenario3(&mut rows, if quick { 20_000 } else { 100_000 });
        }
        if want("scenario6") {
            scenario6(&mut rows, if quick { 40 } else { 1000 }).await;
        }
        if want("scenario7") {
            scenario7(&mut rows, if quick { 2000 } else { 10_000 }).await;
        }
        if want("scenario8") {
            scenario8(&mut rows, if quick { 100 } else { 300 }, 48).await;
        }
        if want("scenario9") {
            scenario9(&mut rows, if quick { 400 } else { 10_000 }).await;
        }
        if want("scenario10") {
            scenario10(&mut rows, if quick { 40 } else { 100 }).await;
        }
        if want("scenario4") {
            scenario4(&mut rows, if quick { &[1000] } else { &[1000, 10_000] }).await;
        }
    });
    println!(
        "\nstellantis-sync benchmark ({}; {} s)\n\n{}\n",
        if quick { "quick sizes" } else { "full sizes" },
        started.elapsed().as_secs(),
        provenance()
    );
    for r in rows {
        println!("{r}");
    }
}
