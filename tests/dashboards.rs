//! The pictures people look at, tried for real on a database the real binary filled from the
//! simulator over a simulated week: every documented query gives the same rows in SQLite and in
//! DuckDB (`docs/check-queries.py`); Datasette with the shipped metadata and plugins serves the
//! database page, a canned query, a dashboard and the map without an error, with the expected
//! row counts, in headless Chromium (screenshots in `target/screenshots/`); every Grafana
//! dashboard in `dashboards/grafana/` is a valid dashboard whose every panel's SQL, with the
//! plugin's macros and the variables substituted, runs and gives the panel the columns it needs.
//!
//! Needs, installed by `.ci/run`: python3 with the pinned `datasette`, `datasette-cluster-map`,
//! `datasette-dashboards`, `duckdb`, `duckdb-extension-sqlite`, and Debian's `chromium`. A missing
//! one fails the test, naming what to install.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use stellantis_sync::sim::{Faults, SimConfig};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PIP_PINS: &str = "python3 -m pip install datasette==0.65.5 datasette-cluster-map==0.18.2 datasette-dashboards==0.8.0 duckdb==1.5.5 duckdb-extension-sqlite==1.5.5";

/// Simulated time between two passes, and the time the passes cover.
const STEP: Duration = Duration::from_secs(6 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The simulated week, built once per test binary: (database file, the directory that keeps it).
struct Week {
    db: PathBuf,
    _dir: tempfile::TempDir,
}

fn week() -> &'static Week {
    static WEEK: OnceLock<Week> = OnceLock::new();
    WEEK.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(build_week())
        })
        .join()
        .unwrap()
    })
}

/// Three accounts that sync (user3's has no vehicle) and one that was never signed in
/// (`needs_reauth`); the simulator's clock moves `STEP` and its world changes between two
/// `--once` passes; one pass meets a broken gateway (failed runs, then recovery).
async fn build_week() -> Week {
    let started = std::time::Instant::now();
    let env = Env::new(
        SimConfig {
            users: 4,
            vehicle_counts: vec![2, 3, 0, 2],
            // The week ends before now, as real cars' reports do: a block time ahead of the
            // fetch (beyond a few minutes) is a wrong clock, not the vehicle's time.
            start_time: Some(chrono::Utc::now() - WEEK - STEP - Duration::from_secs(3600)),
            ..SimConfig::default()
        },
        |s| {
            vec![
                Acct::bootstrapped(s, 1),
                Acct::bootstrapped(s, 2),
                Acct::bootstrapped(s, 3),
                Acct::bare(s, 4),
            ]
        },
        Opts::default(),
    )
    .await;
    // The test harness writes `[telemetry] enabled = false` for the list tests; this week wants
    // it, with trips, alerts and maintenance due at every pass (their intervals run on the real
    // clock, and the passes are a second apart), a gap limit longer than the steps between
    // passes (it runs on the vehicles' clock), and no stretching of intervals to a budget.
    let telemetry_on: Vec<(&str, &str)> = if telemetry_in_this_build() {
        vec![
            ("STELLANTIS_SYNC_TELEMETRY__ENABLED", "true"),
            ("STELLANTIS_SYNC_TELEMETRY__TRIPS_SAFETY_INTERVAL", "1s"),
            ("STELLANTIS_SYNC_TELEMETRY__ALERTS_INTERVAL", "1s"),
            ("STELLANTIS_SYNC_TELEMETRY__MAINTENANCE_INTERVAL", "1s"),
            ("STELLANTIS_SYNC_TELEMETRY__GAP_LIMIT", "8h"),
            (
                "STELLANTIS_SYNC_TELEMETRY__DAILY_REQUEST_BUDGET",
                "100000000",
            ),
        ]
    } else {
        Vec::new()
    };
    let mut watched = 0;
    let mut elapsed = Duration::ZERO;
    let mut passes = 0;
    while elapsed < WEEK {
        if passes == 3 {
            env.sim.set_faults(Faults {
                gateway_500: 1.0,
                ..Faults::default()
            });
        }
        let out = env.run(&["--once"], &telemetry_on).await;
        assert!(
            matches!(out.status.code(), Some(0 | 75 | 77)),
            "pass {passes}: {}",
            text(&out)
        );
        if passes == 3 {
            env.sim.set_faults(Faults::default());
        }
        // One pass meets 429s (Retry-After: 2 s) that its retries get past.
        if passes == 5 {
            env.sim.set_faults(Faults {
                rate_limit_storm: 0.5,
                ..Faults::default()
            });
        }
        if passes == 6 {
            env.sim.set_faults(Faults::default());
        }
        if passes % 2 == 0 {
            env.sim.tick(2);
        }
        passes += 1;
        // Charges under way are watched closely (a pass every 10 simulated minutes, as the
        // daemon's 2-minute active interval would) until one recorded session has a charge curve
        // (three points or more): which charge that is depends on when the passes fall, which a
        // first-charge-only rule left to chance (a CI run once got only sessions of two points).
        // The rest of the week is seen every STEP, as a cron job would see it.
        let charging = env.sim.charges().iter().any(|c| c.ended.is_none());
        let step = if charging && watched < 144 && !has_charge_curve(&env) {
            watched += 1;
            Duration::from_secs(10 * 60)
        } else {
            STEP
        };
        env.sim.advance_clock(step);
        elapsed += step;
    }
    eprintln!(
        "simulated week: {passes} passes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("week.sqlite");
    // A consistent copy without -wal/-shm, as an analyst would take it; another copy is kept
    // next to the screenshots for whoever wants to look at what the tests looked at.
    env.db()
        .execute("VACUUM INTO ?1", [db.to_str().unwrap()])
        .unwrap();
    let shots = screenshots_dir();
    let _ = std::fs::remove_file(shots.join("week.sqlite"));
    std::fs::copy(&db, shots.join("week.sqlite")).unwrap();
    Week { db, _dir: dir }
}

/// Whether this build polls telemetry (the shipped configuration documents `[telemetry]`): then the
/// telemetry tables must be full and every picture that reads them must show data. Without it
/// (before the telemetry client is merged) those pictures are only checked to load and run.
/// Whether a recorded charging session has three observations or more (a curve to draw).
fn has_charge_curve(env: &Env) -> bool {
    env.db()
        .query_row(
            "SELECT count(*) FROM (SELECT c.session_id FROM charging_sessions c JOIN vehicle_status v
               ON v.account_id = c.account_id AND v.vin = c.vin
              AND v.observed_ts BETWEEN c.started_ts AND coalesce(c.ended_ts, v.observed_ts)
             GROUP BY 1 HAVING count(*) >= 3)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
        > 0
}

fn telemetry_in_this_build() -> bool {
    std::fs::read_to_string(Path::new(ROOT).join("config/stellantis-sync.toml"))
        .unwrap()
        .contains("\n[telemetry]")
}

/// The tables the telemetry client fills.
const TELEMETRY_TABLES: &[&str] = &[
    "vehicle_status",
    "vehicle_states",
    "charging_sessions",
    "trips",
    "vehicle_alerts",
    "maintenance",
    "telemetry_endpoints",
];

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn conn(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    conn(db)
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Fails (never skips) when a tool the test needs is missing, saying how to install it.
fn require(program: &str, args: &[&str], install: &str) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => panic!(
            "`{program} {}` failed ({}): {}\ninstall it: {install}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{program} cannot run ({e}); install it: {install}"),
    }
}

fn require_python_modules() {
    require(
        "python3",
        &[
            "-c",
            "import datasette, datasette_cluster_map, datasette_dashboards, duckdb, duckdb_extension_sqlite",
        ],
        PIP_PINS,
    );
}

#[test]
fn the_simulated_week_has_data_in_the_tables_the_pictures_read() {
    let db = &week().db;
    let n = |t: &str| count(db, &format!("SELECT count(*) FROM {t}"));
    assert!(n("vehicle_changes") > 10);
    assert!(n("sync_runs WHERE status = 'failed'") > 0);
    assert!(n("sync_runs WHERE status = 'ok' AND ratelimit_day_remaining IS NOT NULL") > 0);
    assert!(n("sync_runs WHERE idp_requests > 0") > 0);
    assert!(
        n("sync_runs WHERE rate_limited_responses > 0 AND status = 'ok'") > 0,
        "a retried 429 is counted"
    );
    assert_eq!(
        n(
            "sync_runs WHERE status = 'ok' AND vehicles_seen > 0 AND ratelimit_day_limit IS NOT 100000"
        ),
        0,
        "X-RateLimit-Limit-1 recorded on every run that listed vehicles"
    );
    assert!(
        count(db, "SELECT min(ratelimit_day_remaining) FROM sync_runs")
            < count(db, "SELECT max(ratelimit_day_remaining) FROM sync_runs"),
        "the daily quota left goes down"
    );
    if !telemetry_in_this_build() {
        eprintln!("this build has no telemetry client: the telemetry tables are not checked");
        return;
    }
    assert!(n("vehicle_status") > 20);
    assert!(n("vehicle_states") > 10);
    assert!(n("charging_sessions") > 0);
    // The week spans seven simulated days of observations.
    assert!(
        count(
            db,
            "SELECT max(observed_ts) - min(observed_ts) FROM vehicle_status"
        ) > 5 * 86_400
    );
}

#[test]
fn every_documented_query_gives_the_same_rows_in_sqlite_and_duckdb() {
    require_python_modules();
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("docs/check-queries.py"))
        .arg(&week().db)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docs/check-queries.py:\n{report}");
    // Every question of schema.md was compared, and the ones about this week had rows to compare.
    let same = report
        .lines()
        .filter(|l| l.contains(": same rows="))
        .count();
    let documented = std::fs::read_to_string(Path::new(ROOT).join("docs/schema.md"))
        .unwrap()
        .split("\n### ")
        .filter(|section| section.contains("```sql\n"))
        .count();
    assert!(documented >= 17, "{documented} queries in docs/schema.md");
    assert_eq!(same, documented, "{report}");
    // The documented Python reader of status bodies read every body, chains included.
    if telemetry_in_this_build() {
        let bodies = report
            .lines()
            .find_map(|l| l.strip_prefix("bodies: "))
            .unwrap_or_else(|| panic!("no bodies line in\n{report}"));
        let read: u64 = bodies.split(' ').next().unwrap().parse().unwrap();
        assert!(read > 20, "{bodies}");
        let deepest: u32 = bodies.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            deepest >= 2,
            "bodies stored against bodies stored against others: {bodies}"
        );
    }
    let mut with_rows = vec!["Q1:", "Q2:", "Q4:", "Q5:", "Q8:", "Q14:", "Q15:", "Q17:"];
    if telemetry_in_this_build() {
        with_rows.extend(["Q11:", "Q13:", "Q16:"]);
    }
    for q in with_rows {
        let line = report.lines().find(|l| l.starts_with(q)).unwrap();
        assert!(!line.contains("rows=0 "), "{q} compared no row:\n{report}");
    }
}

/// A Datasette server (`tools/datasette.sh`) in its own process group, ended with it.
struct Served {
    child: std::process::Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // The script and the datasette it runs share the group the test gave them.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn serve(db: &Path) -> Served {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(screenshots_dir().join("datasette.log")).unwrap();
    let child = Command::new("bash")
        .arg(Path::new(ROOT).join("tools/datasette.sh"))
        .arg(db)
        .args(["--host", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// GETs a page: 200, and none of Datasette's error markup.
async fn page(url: &str) -> String {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    assert!(
        !body.contains("class=\"message-error\"") && !body.contains("border: 3px solid red"),
        "{url} shows an error: {body}"
    );
    body
}

async fn rows(url: &str) -> Vec<serde_json::Value> {
    let body = page(url).await;
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
        .as_array()
        .unwrap_or_else(|| panic!("{url}: not an array: {body}"))
        .clone()
}

/// Headless Chromium: a screenshot of `url` into `target/screenshots/NAME.png`, after its scripts
/// ran for up to `budget_ms` of virtual time; with `dom`, also the DOM they left.
fn chromium(url: &str, name: &str, height: u32, budget_ms: u32, dom: bool) -> String {
    let started = std::time::Instant::now();
    let profile = tempfile::tempdir().unwrap();
    let shot = screenshots_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args(common)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        format!("--window-size=1400,{height}"),
        format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot of {url}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name}.png is empty"
    );
    eprintln!("chromium {name}: {:.1} s", started.elapsed().as_secs_f64());
    if dom {
        run(&["--dump-dom".into()])
    } else {
        String::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasette_serves_readable_pages_for_any_file_name() {
    require_python_modules();
    let version = require("datasette", &["--version"], PIP_PINS);
    assert!(
        version.contains("0.65."),
        "Datasette {version}; the metadata is for 0.65: {PIP_PINS}"
    );
    require("chromium", &["--version"], "apt-get install chromium");
    // A copy under another name: the metadata must apply to it too.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backup-2026-11-29.sqlite");
    std::fs::copy(&week().db, &db).unwrap();
    let (name, week_db) = ("backup-2026-11-29", &week().db);
    let served = serve(&db);
    let base = served.base.clone();
    wait_for(30, "datasette to answer", || {
        std::net::TcpStream::connect(base.trim_start_matches("http://")).is_ok()
    })
    .await;
    let db_url = format!("{base}/{name}");

    // The database page lists the canned queries, under this file's name.
    let html = page(&db_url).await;
    for title in [
        "Charges of the last seven days",
        "Where the car parks",
        "Accounts that need attention",
    ] {
        assert!(
            html.contains(title),
            "{db_url} lacks the canned query {title}"
        );
    }
    // Column descriptions with units reach the table pages.
    let html = page(&format!("{db_url}/vehicle_status")).await;
    assert!(
        html.contains("traction battery state of charge (%)"),
        "no column descriptions"
    );

    // vehicle_list: one row per vehicle, no id, no JSON, one spelling per brand.
    let list = rows(&format!(
        "{db_url}/vehicle_list.json?_shape=array&_size=max"
    ))
    .await;
    assert_eq!(
        list.len() as i64,
        count(week_db, "SELECT count(*) FROM vehicles")
    );
    for v in &list {
        assert!(
            v.get("vehicle_id").is_none() && v.get("data").is_none(),
            "{v}"
        );
        assert!(
            ["Peugeot", "Citroen", "DS", "Opel", "Vauxhall"]
                .contains(&v["brand"].as_str().unwrap()),
            "{v}"
        );
        assert_eq!(v["colour"].as_str().unwrap().len(), 8, "{v}");
    }
    // No 193-character id and no vehicle JSON on the history people browse.
    let html = page(&format!("{db_url}/vehicle_history?_size=100")).await;
    assert!(
        !html.contains("\"_links\"") && !html.contains("&#34;_links&#34;"),
        "vehicle JSON in vehicle_history"
    );
    let long_hex = html
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        long_hex < 64,
        "a {long_hex}-character id in vehicle_history"
    );

    // sync_health: the account that needs a login first; recovered ones are not failing.
    let health = rows(&format!("{db_url}/sync_health.json?_shape=array")).await;
    assert_eq!(health[0]["state"], "needs_reauth");
    for h in &health[1..] {
        assert_eq!(h["state"], "ok");
        assert!(h["failing_since"].is_null(), "{h}");
        assert!(
            h["last_error_at"].is_string(),
            "the old failure keeps its date: {h}"
        );
    }

    // Canned queries: the rows SQLite gives.
    let vin: String = conn(week_db)
        .query_row(
            "SELECT vin FROM vehicle_changes GROUP BY vin ORDER BY count(*) DESC, vin LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let changed = rows(&format!(
        "{db_url}/what_changed_on_a_vehicle.json?_shape=array&vin={vin}"
    ))
    .await;
    assert_eq!(
        changed.len() as i64,
        count(
            week_db,
            &format!("SELECT count(*) FROM vehicle_change_runs WHERE vin = '{vin}'")
        )
    );
    assert!(!changed.is_empty());
    let attention = rows(&format!(
        "{db_url}/accounts_needing_attention.json?_shape=array"
    ))
    .await;
    assert_eq!(
        attention.len(),
        1,
        "only the account that needs a login: {attention:?}"
    );
    let parks = rows(&format!(
        "{db_url}/where_the_car_parks.json?_shape=array&_size=max"
    ))
    .await;
    let positions = count(
        week_db,
        "SELECT count(*) FROM (SELECT 1 FROM vehicle_status WHERE latitude IS NOT NULL AND longitude IS NOT NULL \
         AND coalesce(moving, 0) = 0 GROUP BY vin, round(latitude, 3), round(longitude, 3))",
    );
    assert_eq!(parks.len() as i64, positions.min(500));
    let telemetry = telemetry_in_this_build();
    assert!(positions > 0 || !telemetry);
    let soc = rows(&format!(
        "{db_url}/soc_over_time.json?_shape=array&_size=max&vin="
    ))
    .await;
    assert_eq!(
        soc.len() as i64,
        count(
            week_db,
            "SELECT count(*) FROM vehicle_status WHERE soc IS NOT NULL"
        )
    );

    // In a browser: the database page, a canned query, the map and the chart.
    chromium(&db_url, "datasette-database", 1400, 1000, false);
    chromium(
        &format!("{db_url}/what_changed_on_a_vehicle?vin={vin}"),
        "datasette-canned-query",
        1000,
        1000,
        false,
    );
    chromium(
        &format!("{db_url}/vehicle_history?_facet_size=3"),
        "datasette-vehicle-history",
        1600,
        1000,
        false,
    );
    let map = chromium(
        &format!("{db_url}/where_the_car_parks"),
        "datasette-map",
        1200,
        8000,
        true,
    );
    assert!(
        !telemetry
            || map.contains("leaflet-container")
                && (map.contains("marker-cluster") || map.contains("leaflet-marker-icon")),
        "the map shows no marker"
    );
    let dash = chromium(
        &format!("{base}/-/dashboards/vehicles"),
        "datasette-dashboard",
        1200,
        8000,
        true,
    );
    assert!(
        !telemetry || dash.contains("<svg") || dash.contains("<canvas"),
        "the dashboard drew no chart"
    );
    drop(served);
}

/// The SQLite plugin's data source as the provisioning file names it.
const GRAFANA_DS_TYPE: &str = "frser-sqlite-datasource";

/// Panels that may stay empty on the simulated week, and why.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "Telemetry endpoints unavailable",
        "depends on the simulator's 404s",
    ),
    (
        "Refresh-token chain ends (needs re-authorization)",
        "user4 never had a chain: it fails from the start",
    ),
];

/// Grafana's expansion of the plugin's macros and of the variables, for a fixed time range.
fn expand(sql: &str, from_ms: i64, to_ms: i64, vars: &[(String, Vec<String>)]) -> String {
    let mut out = sql
        .replace("$__from", &from_ms.to_string())
        .replace("$__to", &to_ms.to_string());
    // $__unixEpochGroupSeconds(col, n[, NULL]) → cast((col / n) as int) * n (the plugin's form).
    while let Some(start) = out.find("$__unixEpochGroupSeconds(") {
        let args_from = start + "$__unixEpochGroupSeconds(".len();
        let mut depth = 1;
        let mut end = args_from;
        for (i, ch) in out[args_from..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = args_from + i;
                break;
            }
        }
        let args = &out[args_from..end];
        // Split at the top-level commas.
        let (mut parts, mut cur, mut d) = (Vec::new(), String::new(), 0);
        for ch in args.chars() {
            match ch {
                '(' => d += 1,
                ')' => d -= 1,
                ',' if d == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        parts.push(cur);
        assert!(parts.len() >= 2, "bad macro call: {args}");
        let replacement = format!(
            "cast(({} / {}) as int) * {}",
            parts[0].trim(),
            parts[1].trim(),
            parts[1].trim()
        );
        out.replace_range(start..=end, &replacement);
    }
    for (name, values) in vars {
        let quoted = values
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",");
        out = out.replace(&format!("${{{name}:singlequote}}"), &quoted);
        out = out.replace(&format!("${{{name}}}"), &values.join(","));
        out = out.replace(&format!("${name}"), &values.join(","));
    }
    assert!(
        !out.contains('$'),
        "an unexpanded macro or variable in: {out}"
    );
    out
}

/// Runs a query: column names and rows of SQLite values.
fn run(db: &rusqlite::Connection, sql: &str) -> (Vec<String>, Vec<Vec<rusqlite::types::Value>>) {
    let mut st = db.prepare(sql).unwrap_or_else(|e| panic!("{e}\n{sql}"));
    let cols: Vec<String> = st.column_names().map(|s| s.to_string()).collect();
    let n = cols.len();
    let rows = st
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })
        .unwrap()
        .collect::<Result<Vec<Vec<_>>, _>>()
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    (cols, rows)
}

fn all_panels(dash: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

#[test]
fn grafana_dashboards_are_valid_and_every_panel_query_runs_on_the_simulated_week() {
    use rusqlite::types::Value as V;
    let db_path = &week().db;
    let db = conn(db_path);
    // The fixed time range: the simulated week (it ends before the runs, as real cars' reports
    // do) and the runs, an hour either side.
    let (first_run, first_obs, last_obs): (String, Option<i64>, Option<i64>) = db
        .query_row(
            "SELECT (SELECT min(started_at) FROM sync_runs), \
             (SELECT min(observed_ts) FROM vehicle_status), (SELECT max(observed_ts) FROM vehicle_status)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let first_run = chrono::DateTime::parse_from_rfc3339(&first_run)
        .unwrap()
        .timestamp();
    let from_ms = (first_obs.map_or(first_run, |o| o.min(first_run)) - 3600) * 1000;
    let to_ms = (last_obs.unwrap_or(0).max(chrono::Utc::now().timestamp()) + 3600) * 1000;

    let provisioning = std::fs::read_to_string(
        Path::new(ROOT).join("dashboards/grafana/provisioning/datasources/stellantis-sync.yaml"),
    )
    .unwrap();
    assert!(provisioning.contains(&format!("type: {GRAFANA_DS_TYPE}")));
    assert!(
        provisioning.contains("mode=ro"),
        "the data source must be read-only"
    );
    let ds_uid = provisioning
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid: "))
        .unwrap()
        .trim()
        .to_owned();

    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("dashboards/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let titles: Vec<String> = files
        .iter()
        .map(|f| {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            d["title"].as_str().unwrap().to_owned()
        })
        .collect();
    for want in ["Overview", "Charges", "Trips", "Operations"] {
        assert!(
            titles.iter().any(|t| t.ends_with(want)),
            "no {want} dashboard in {titles:?}"
        );
    }
    let mut uids = std::collections::HashSet::new();
    let mut checked = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            dash["schemaVersion"].as_i64().unwrap_or(0) >= 36,
            "{name}: schemaVersion"
        );
        assert!(
            uids.insert(dash["uid"].as_str().unwrap().to_owned()),
            "{name}: uid reused"
        );
        assert!(
            dash["title"].is_string() && dash["time"]["from"].is_string(),
            "{name}"
        );

        // Variables, in order: each query runs; a multi-value one takes all its values (All), a
        // single-value one its first value.
        let mut vars: Vec<(String, Vec<String>)> = Vec::new();
        let mut var_names = Vec::new();
        for v in dash["templating"]["list"].as_array().unwrap() {
            let vname = v["name"].as_str().unwrap().to_owned();
            assert_eq!(v["type"], "query", "{name}: ${vname}");
            assert_eq!(v["datasource"]["uid"], ds_uid.as_str(), "{name}: ${vname}");
            let (cols, rows) = run(
                &db,
                &expand(v["query"].as_str().unwrap(), from_ms, to_ms, &vars),
            );
            let value_col = cols.iter().position(|c| c == "__value").unwrap_or(0);
            let values: Vec<String> = rows
                .iter()
                .map(|r| match &r[value_col] {
                    V::Text(s) => s.clone(),
                    V::Integer(i) => i.to_string(),
                    other => panic!("{name}: ${vname} gives {other:?}"),
                })
                .collect();
            let query = v["query"].as_str().unwrap();
            let telemetry_var = TELEMETRY_TABLES.iter().any(|t| query.contains(t));
            assert!(
                !values.is_empty() || (telemetry_var && !telemetry_in_this_build()),
                "{name}: ${vname} has no value"
            );
            let chosen = if v["multi"].as_bool().unwrap_or(false) {
                values
            } else {
                // A single-value variable: the value for which the panels that use it show the
                // most rows (the charge curve wants a session that has a curve).
                let uses: Vec<String> = all_panels(&dash)
                    .iter()
                    .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
                    .filter_map(|t| t["rawQueryText"].as_str().map(str::to_owned))
                    .filter(|q| q.contains(&format!("${vname}")))
                    .collect();
                let best = values
                    .iter()
                    .take(50)
                    .max_by_key(|val| {
                        let mut with = vars.clone();
                        with.push((vname.clone(), vec![(*val).clone()]));
                        uses.iter()
                            .map(|q| run(&db, &expand(q, from_ms, to_ms, &with)).1.len())
                            .sum::<usize>()
                    })
                    .cloned();
                // No value (no session yet): Grafana substitutes an empty string.
                vec![best.unwrap_or_default()]
            };
            var_names.push(vname.clone());
            vars.push((vname, chosen));
        }
        assert!(
            var_names.contains(&"account".to_owned()) && var_names.contains(&"vin".to_owned()),
            "{name}: variables"
        );

        let mut ids = std::collections::HashSet::new();
        for panel in all_panels(&dash) {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            assert!(
                ids.insert(panel["id"].as_i64().unwrap()),
                "{name}: panel id reused ({title})"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["type"], GRAFANA_DS_TYPE,
                "{name}: {title}"
            );
            assert_eq!(
                panel["datasource"]["uid"],
                ds_uid.as_str(),
                "{name}: {title}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title} has no query");
            // A repeated panel runs once per value of its variable: here with the first one.
            let mut panel_vars = vars.clone();
            if let Some(rep) = panel["repeat"].as_str() {
                let (_, values) = panel_vars.iter_mut().find(|(n, _)| n == rep).unwrap();
                values.truncate(1);
            }
            for target in targets {
                let raw = target["rawQueryText"].as_str().unwrap_or("");
                assert!(!raw.trim().is_empty(), "{name}: {title} has an empty query");
                let query_type = target["queryType"].as_str().unwrap();
                assert!(
                    ["table", "time series"].contains(&query_type),
                    "{name}: {title}: {query_type}"
                );
                let time_cols: Vec<String> = target["timeColumns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect();
                let sql = expand(raw, from_ms, to_ms, &panel_vars);
                let (cols, rows) = run(&db, &sql);
                checked += 1;
                eprintln!("{name}: {title}: {} rows", rows.len());
                let reason = MAY_BE_EMPTY.iter().find(|(t, _)| *t == title).or_else(|| {
                    (!telemetry_in_this_build() && TELEMETRY_TABLES.iter().any(|t| raw.contains(t)))
                        .then_some(&("", "no telemetry client in this build"))
                });
                if rows.is_empty() {
                    assert!(
                        reason.is_some(),
                        "{name}: panel \"{title}\" shows no data on the simulated week:\n{sql}"
                    );
                    continue;
                }
                for tc in &time_cols {
                    let i = cols
                        .iter()
                        .position(|c| c == tc)
                        .unwrap_or_else(|| panic!("{name}: {title}: no time column {tc}"));
                    for r in &rows {
                        match &r[i] {
                            V::Null => {}
                            V::Integer(s) => assert!(
                                (1_000_000_000..4_000_000_000).contains(s),
                                "{name}: {title}: {tc} = {s} is not in epoch seconds"
                            ),
                            V::Real(s) => {
                                assert!((1e9..4e9).contains(s), "{name}: {title}: {tc} = {s}")
                            }
                            V::Text(t) => {
                                chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| {
                                    panic!("{name}: {title}: {tc} = {t}: not RFC 3339: {e}")
                                });
                            }
                            V::Blob(_) => panic!("{name}: {title}: {tc} is a blob"),
                        }
                    }
                }
                let mut numeric = 0;
                for (i, c) in cols.iter().enumerate() {
                    if time_cols.contains(c) {
                        continue;
                    }
                    let vals: Vec<&V> = rows
                        .iter()
                        .map(|r| &r[i])
                        .filter(|v| !matches!(v, V::Null))
                        .collect();
                    let numbers = vals
                        .iter()
                        .filter(|v| matches!(v, V::Integer(_) | V::Real(_)))
                        .count();
                    let numeric_text = vals
                        .iter()
                        .filter(|v| matches!(v, V::Text(t) if t.parse::<f64>().is_ok()))
                        .count();
                    assert!(
                        vals.is_empty() || numeric_text < vals.len(),
                        "{name}: {title}: {c} holds numbers as text"
                    );
                    assert!(
                        numbers == 0 || numbers == vals.len(),
                        "{name}: {title}: {c} mixes numbers and text"
                    );
                    if numbers > 0 {
                        numeric += 1;
                    }
                }
                let ptype = panel["type"].as_str().unwrap();
                if query_type == "time series" || ptype == "timeseries" {
                    assert!(
                        !time_cols.is_empty(),
                        "{name}: {title}: a time series needs a time column"
                    );
                    assert!(
                        numeric > 0,
                        "{name}: {title}: a time series needs a numeric value"
                    );
                    let t = cols.iter().position(|c| c == &time_cols[0]).unwrap();
                    assert!(
                        rows.iter().all(|r| !matches!(r[t], V::Null)),
                        "{name}: {title}: NULL time"
                    );
                }
                if ptype == "geomap" {
                    for c in ["latitude", "longitude"] {
                        let i = cols
                            .iter()
                            .position(|x| x == c)
                            .unwrap_or_else(|| panic!("{name}: {title}: no {c}"));
                        assert!(
                            rows.iter().all(|r| matches!(r[i], V::Real(_))),
                            "{name}: {title}: {c} not a number"
                        );
                    }
                }
                if title.starts_with("Charge curve") {
                    assert!(
                        rows.len() >= 3,
                        "{name}: {title}: no session has a curve ({} points)",
                        rows.len()
                    );
                }
                if ptype == "state-timeline" {
                    assert!(!time_cols.is_empty() && cols.len() >= 2, "{name}: {title}");
                }
                if ["bargauge", "stat", "barchart"].contains(&ptype) {
                    assert!(numeric > 0, "{name}: {title}: nothing numeric to show");
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} queries checked");
}
