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
        let out = env.once().await;
        assert!(
            matches!(out.status.code(), Some(0 | 75 | 77)),
            "pass {passes}: {}",
            text(&out)
        );
        if passes == 3 {
            env.sim.set_faults(Faults::default());
        }
        if passes % 2 == 0 {
            env.sim.tick(2);
        }
        passes += 1;
        // The first charge under way is watched closely (a pass every 20 simulated minutes until
        // it ends), so that one session has a charge curve; the rest of the week is seen every
        // STEP, as a cron job would see it.
        let charging = env.sim.charges().iter().any(|c| c.ended.is_none());
        let step = if charging && watched < 15 {
            watched += 1;
            Duration::from_secs(20 * 60)
        } else {
            if watched > 0 {
                watched = 15;
            }
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
    assert_eq!(same, 17, "{report}");
    for q in [
        "Q1:", "Q2:", "Q4:", "Q5:", "Q8:", "Q11:", "Q13:", "Q14:", "Q15:", "Q16:",
    ] {
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

/// Headless Chromium: a screenshot of `url` into `target/screenshots/NAME.png`, and the DOM after
/// its scripts ran (up to 8 s of virtual time).
fn chromium(url: &str, name: &str, height: u32) -> String {
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
        "--virtual-time-budget=8000",
    ];
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args(common)
            .arg(format!("--user-data-dir={}", profile.path().display()))
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
    run(&["--dump-dom".into()])
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
    assert!(positions > 0);
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
    chromium(&db_url, "datasette-database", 1400);
    chromium(
        &format!("{db_url}/what_changed_on_a_vehicle?vin={vin}"),
        "datasette-canned-query",
        1000,
    );
    chromium(
        &format!("{db_url}/vehicle_history?_facet_size=3"),
        "datasette-vehicle-history",
        1600,
    );
    let map = chromium(
        &format!("{db_url}/where_the_car_parks"),
        "datasette-map",
        1200,
    );
    assert!(
        map.contains("leaflet-container")
            && (map.contains("marker-cluster") || map.contains("leaflet-marker-icon")),
        "the map shows no marker"
    );
    let dash = chromium(
        &format!("{base}/-/dashboards/vehicles"),
        "datasette-dashboard",
        1200,
    );
    assert!(
        dash.contains("<svg") || dash.contains("<canvas"),
        "the dashboard drew no chart"
    );
    drop(served);
}
