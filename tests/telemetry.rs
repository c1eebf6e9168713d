//! Vehicle telemetry against the simulator, with the real binary: `--once` polls every current
//! vehicle's status and stores one row per distinct observation; `enabled = false` polls
//! nothing; the daemon polls on its own schedule; the client never asks for the deprecated or
//! waking endpoints.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use stellantis_sync::sim::{Faults, SimConfig, SimHandle};

const STATUS: &str = "GET /connectedcar/v4/user/vehicles/{id}/status";

fn status_requests(sim: &SimHandle) -> u64 {
    let s = sim.stats();
    s.requests.get(STATUS).map_or(0, |m| m.values().sum())
}

/// The harness's options with telemetry at the shipped defaults (the harness turns it off).
fn polling() -> Opts {
    Opts {
        telemetry: String::new(),
        ..Opts::default()
    }
}

/// The VINs of the vehicles the database knows.
fn vins(env: &Env) -> Vec<String> {
    env.db()
        .prepare("SELECT vin FROM vehicles ORDER BY vin")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A count, or 0 while the daemon has not yet created the database.
fn try_count(env: &Env, sql: &str) -> i64 {
    if !env.db_path().exists() {
        return 0;
    }
    env.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// No request ever went to lastPosition, telemetry, collisions or anything remote.
fn assert_no_forbidden_endpoint(sim: &SimHandle) {
    for key in sim.stats().requests.keys() {
        let k = key.to_ascii_lowercase();
        for bad in [
            "lastposition",
            "/telemetry",
            "collisions",
            "remote",
            "wakeup",
            "virtualkey",
        ] {
            assert!(!k.contains(bad), "the client requested {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_stores_one_row_per_distinct_observation() {
    let env = Env::new(
        SimConfig {
            // The world's clock stands still unless the test moves it.
            time_scale: 0.0,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        polling(),
    )
    .await;
    let out = env.once().await;
    assert_code(&out, 0);
    // Every current vehicle (2 + 3) polled once, one observation each.
    assert_eq!(status_requests(&env.sim), 5);
    assert_eq!(env.count("SELECT count(*) FROM vehicle_status"), 5);
    assert_eq!(
        env.count("SELECT count(DISTINCT vin) FROM vehicle_status"),
        5
    );
    assert_eq!(env.count("SELECT count(*) FROM status_bodies"), 5);
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"),
        5
    );
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_status WHERE soc IS NULL AND fuel_pct IS NULL"),
        0,
        "typed values were extracted"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM telemetry_endpoints WHERE endpoint = 'status' AND last_success_ts IS NOT NULL"),
        5
    );
    // The same bodies again (the world did not move): no new row, only last_fetched_ts moves.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_code(&env.once().await, 0);
    assert_eq!(status_requests(&env.sim), 10);
    assert_eq!(env.count("SELECT count(*) FROM vehicle_status"), 5);
    assert_eq!(env.count("SELECT count(*) FROM status_bodies"), 5);
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_status WHERE last_fetched_ts > first_fetched_ts"),
        5
    );
    // The world moves on (a day of sim time): each vehicle whose status changed gets a row.
    let vins = vins(&env);
    let before: Vec<_> = vins.iter().map(|v| env.sim.status_of(v)).collect();
    env.sim.advance_clock(Duration::from_secs(86_400));
    let changed = vins
        .iter()
        .zip(&before)
        .filter(|(v, b)| env.sim.status_of(v) != **b)
        .count() as i64;
    assert!(changed > 0, "a day later some car has moved or charged");
    assert_code(&env.once().await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_status"),
        5 + changed
    );
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"),
        5,
        "never more than one open state per vehicle"
    );
    // Trips, alerts and maintenance were due once (first run) and not again.
    let bookkept = env.count(
        "SELECT count(*) FROM telemetry_endpoints WHERE endpoint IN ('trips', 'alerts', 'maintenance') AND last_attempt_ts IS NOT NULL",
    );
    assert_eq!(bookkept, 15);
    assert_no_forbidden_endpoint(&env.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_telemetry_polls_nothing_but_the_list() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        polling(),
    )
    .await;
    let out = env
        .run(
            &["--once"],
            &[("STELLANTIS_SYNC_TELEMETRY__ENABLED", "false")],
        )
        .await;
    assert_code(&out, 0);
    assert_eq!(env.count("SELECT count(*) FROM vehicles"), 5);
    let per_vehicle: u64 = env
        .sim
        .stats()
        .requests
        .iter()
        .filter(|(k, _)| k.contains("/user/vehicles/"))
        .map(|(_, m)| m.values().sum::<u64>())
        .sum();
    assert_eq!(
        per_vehicle,
        0,
        "no per-vehicle request: {:?}",
        env.sim.stats().requests
    );
    assert_eq!(env.count("SELECT count(*) FROM vehicle_status"), 0);
    let cc = env
        .run(
            &["check-config"],
            &[("STELLANTIS_SYNC_TELEMETRY__ENABLED", "false")],
        )
        .await;
    assert!(text(&cc).contains("telemetry: disabled"), "{}", text(&cc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_status_print_the_projection() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        polling(),
    )
    .await;
    let cc = env
        .run(
            &["check-config"],
            &[("STELLANTIS_SYNC_TELEMETRY__DAILY_REQUEST_BUDGET", "5000")],
        )
        .await;
    assert_code(&cc, 0);
    assert!(text(&cc).contains("requests/day"), "{}", text(&cc));
    assert!(text(&cc).contains("budget 5000/day"), "{}", text(&cc));
    // The test schedule (every 2 s) alone is 43,200 list requests a day: over budget.
    assert!(text(&cc).contains("stretched"), "{}", text(&cc));
    let bad = env
        .run(
            &["check-config"],
            &[("STELLANTIS_SYNC_TELEMETRY__ACTIVE_INTERVAL", "0s")],
        )
        .await;
    assert_code(&bad, 78);
    assert!(
        text(&bad).contains("telemetry.active_interval"),
        "{}",
        text(&bad)
    );
    assert_code(&env.once().await, 0);
    let st = env.run(&["status"], &[]).await;
    assert_code(&st, 0);
    let t = text(&st);
    assert!(t.contains("DATA AGE"), "{t}");
    let vins: Vec<String> = env
        .db()
        .prepare("SELECT vin FROM vehicles")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(vins.len(), 2);
    for v in vins {
        assert!(t.contains(&v), "status shows {v}:\n{t}");
    }
    assert!(t.contains('%'), "status shows the SoC:\n{t}");
}

/// A reload re-plans the daemon's telemetry job: turned on by SIGHUP it polls without another
/// list pass; turned off, the round in flight ends and nothing more is polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_telemetry_job_on_and_off() {
    const OFF: &str = "[telemetry]\nenabled = false\n";
    const ON: &str = "[telemetry]\nactive_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\ndaily_request_budget = 10000000\n";
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::idle(),
    )
    .await;
    let off = std::fs::read_to_string(&env.config).unwrap();
    assert!(off.contains(OFF), "{off}");
    let mut child = env.spawn_daemon(&[]);
    wait_for(15, "the start-up list pass", || {
        try_count(&env, "SELECT count(*) FROM vehicles") >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_requests(&env.sim), 0, "telemetry is off");

    std::fs::write(&env.config, off.replace(OFF, ON)).unwrap();
    signal(&child, "HUP");
    wait_for(15, "polls after the reload", || {
        status_requests(&env.sim) >= 4
    })
    .await;

    std::fs::write(&env.config, &off).unwrap();
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_requests(&env.sim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status_requests(&env.sim),
        after,
        "no poll once telemetry is off"
    );
    assert_eq!(
        env.sim
            .stats()
            .count("GET /connectedcar/v4/user/vehicles", 200),
        1,
        "only the start-up list pass"
    );
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_polls_on_its_own_schedule() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            telemetry: "active_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\ndaily_request_budget = 10000000\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    let mut child = env.spawn_daemon(&[]);
    wait_for(15, "first observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") >= 2
    })
    .await;
    // Parked cars, polled again and again at the 1 s interval, without any list pass.
    let before = status_requests(&env.sim);
    let t0 = std::time::Instant::now();
    wait_for(10, "repeated polls", || {
        status_requests(&env.sim) >= before + 6
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "not faster than the interval"
    );
    assert_eq!(
        env.sim
            .stats()
            .count("GET /connectedcar/v4/user/vehicles", 200),
        1
    );
    // The world moves on: new observations without a list pass.
    let rows = try_count(&env, "SELECT count(*) FROM vehicle_status");
    env.sim.advance_clock(Duration::from_secs(86_400));
    wait_for(10, "new observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") > rows
    })
    .await;
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"),
        2
    );
    assert_no_forbidden_endpoint(&env.sim);
}

/// Issue 22 defect 10: one slow account stalled the others' telemetry: a round ended when its
/// slowest account did, so another account's car (due every second) waited for the whole round
/// (49 s in the report). Here user2's 8 cars answer in 2 s each (within the 3 s timeout), through
/// a proxy in front of the simulator that records when user1's car is asked for its status; the
/// longest pause between two of those polls stays within a few seconds (it was the slow round's
/// first pass, about 16 s: 8 cars × 4 endpoints × 2 s over 4 concurrent vehicles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_account_does_not_stall_the_others_telemetry() {
    let env = Env::new(
        SimConfig {
            vehicle_counts: vec![1, 8],
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts {
            telemetry: "active_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\ndaily_request_budget = 10000000\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    let ids = |n: usize| -> Vec<String> {
        let email = env.sim.users()[n - 1].0.clone();
        env.sim
            .vehicles(&email)
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let fast = ids(1)[0].clone();
    let slow: std::sync::Arc<Vec<String>> = std::sync::Arc::new(ids(2));
    let polls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let (sim_base, p) = (env.sim.base_url(), polls.clone());
    let proxy = Fake::start(move |r| {
        let (sim_base, slow, fast, polls) =
            (sim_base.clone(), slow.clone(), fast.clone(), p.clone());
        async move {
            let path = r.path_and_query.split('?').next().unwrap_or("").to_owned();
            if path.ends_with(&format!("/{fast}/status")) {
                polls.lock().unwrap().push(std::time::Instant::now());
            }
            if slow.iter().any(|id| path.contains(&format!("/{id}/"))) {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let mut req = reqwest::Client::new().get(format!("{sim_base}{}", r.path_and_query));
            for (k, v) in &r.headers {
                if k != "host" {
                    req = req.header(k, v);
                }
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            (
                status,
                vec![("content-type", ct)],
                resp.bytes().await.unwrap().to_vec(),
            )
        }
    })
    .await;
    point_section_at(
        &env.config,
        "api",
        &format!("{}/connectedcar/v4", proxy.base),
    );
    let mut child = env.spawn_daemon(&[]);
    wait_for(20, "the first status poll of user1's car", || {
        !polls.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(stop_daemon(&mut child).await.code(), Some(0));
    let polls = polls.lock().unwrap().clone();
    let longest = polls
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::from_secs(14));
    assert!(
        polls.len() >= 4 && longest <= Duration::from_secs(5),
        "{} polls of user1's car in 14 s, the longest pause {longest:?}",
        polls.len()
    );
}

/// A large account's round is written as it goes (every 16 vehicles, or 2 s after a vehicle
/// finished), not in one transaction at its end: a SIGKILL mid-round keeps what was fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_accounts_round_is_written_as_it_goes() {
    let env = Env::new(
        SimConfig {
            users: 1,
            vehicle_counts: vec![40],
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            telemetry: "max_concurrent_vehicles = 4\ndaily_request_budget = 10000000\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    // Every request takes 250 ms: the first round of 40 vehicles takes about 10 s.
    env.sim.set_faults(Faults {
        slow: 1.0,
        slow_ms: 250,
        ..Faults::default()
    });
    let mut child = env.spawn_daemon(&[]);
    wait_for(30, "the first observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") >= 1
    })
    .await;
    let rows = try_count(&env, "SELECT count(*) FROM vehicle_status");
    let polled = status_requests(&env.sim);
    assert!(
        rows < 40 && polled < 40,
        "the round was still going: {rows} rows, {polled} status requests"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    env.sim.set_faults(Faults::default());
    assert!(env.count("SELECT count(*) FROM vehicle_status") >= rows);
    let ok: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// A stop while both a telemetry round and a list pass hang on a slow API: both are cancelled at
/// once and share one `shutdown_timeout` (it was one after the other, twice the timeout); a
/// SIGHUP meanwhile does not abandon them early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_telemetry_round_and_a_pass_takes_one_shutdown_timeout() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            schedule: "*/2 * * * * *".into(),
            telemetry: "active_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\ndaily_request_budget = 10000000\n".into(),
            ..Opts::default()
        },
    )
    .await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"3s\"")
            .replace(
                "timeout = \"3s\"\nmax_retries",
                "timeout = \"60s\"\nmax_retries",
            ),
    )
    .unwrap();
    let mut child = env.spawn_daemon(&[]);
    wait_for(15, "first observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") >= 2
    })
    .await;
    env.sim.set_faults(Faults {
        slow: 1.0,
        slow_ms: 60_000,
        ..Faults::default()
    });
    // A pass starts every 2 s and the round every second: both end up waiting on the API.
    wait_for(10, "a pass hanging on the API", || {
        try_count(
            &env,
            "SELECT count(*) FROM sync_runs WHERE status = 'running'",
        ) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let started = std::time::Instant::now();
    signal(&child, "TERM");
    // A reload (a log rotation's SIGHUP) during the stop does not cut it short.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "HUP");
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let status = child.wait().await.unwrap();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err)
                .await
                .unwrap();
        }
        (status, err)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let (status, log) = out;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("the telemetry round did not finish within 3s")
            && log.contains("the running pass did not finish within 3s"),
        "both were running when the stop came:\n{log}"
    );
    assert!(
        took < Duration::from_millis(5_500),
        "one shutdown_timeout (3 s), not two: {took:?}"
    );
    env.sim.set_faults(Faults::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_whose_status_answers_404_does_not_fail_its_account() {
    let env = Env::new(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        polling(),
    )
    .await;
    let (email, _, _) = env.sim.users()[0].clone();
    let vins: Vec<String> = env
        .sim
        .vehicles(&email)
        .iter()
        .map(|v| v["vin"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(vins.len(), 2);
    let missing = vins[0].clone();
    env.sim
        .configure(|c| c.status_missing_vins = vec![missing.clone()]);
    let out = env.once().await;
    assert_code(&out, 0);
    assert_eq!(env.sim.stats().count(STATUS, 404), 1);
    let db = env.db();
    let state: String = db
        .query_row("SELECT state FROM accounts WHERE name = 'user1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(state, "ok", "the account did not fail");
    let (since, reason): (Option<i64>, Option<String>) = db
        .query_row(
            "SELECT unavailable_since_ts, unavailable_reason FROM telemetry_endpoints WHERE vin = ?1 AND endpoint = 'status'",
            [&missing],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(since.is_some(), "marked unavailable");
    assert!(reason.unwrap_or_default().contains("404"));
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM vehicle_status WHERE vin = '{missing}'"
        )),
        0
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM vehicle_status WHERE vin = '{}'",
            vins[1]
        )),
        1
    );
    // The next run leaves it alone (backed off) and still succeeds.
    assert_code(&env.once().await, 0);
    assert_eq!(env.sim.stats().count(STATUS, 404), 1, "backed off");
    assert_eq!(env.sim.stats().count(STATUS, 200), 2);
    let st = env.run(&["status"], &[]).await;
    let line = text(&st)
        .lines()
        .find(|l| l.contains(&missing))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("status"),
        "status shows the unavailable endpoint: {}",
        text(&st)
    );
}

/// The sim's clock as the runner's clock: `Telemetry::run_due` is driven through a simulated
/// week in sim-time steps (the clock is frozen between steps), against the simulator's living
/// cars; the recorded charging sessions and trips must equal its ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_week_matches_the_ground_truth() {
    use stellantis_sync::config::{self, Checks};
    use stellantis_sync::telemetry::Telemetry;
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let env = Env::new(
        SimConfig {
            users: 1,
            vehicle_counts: vec![3],
            time_scale: 0.0,
            start_time: Some(start),
            // Token lifetimes run on the sim clock: a week of hourly refreshes would only add
            // fsyncs here (refreshes and 401s are tested elsewhere).
            access_ttl: Duration::from_secs(30 * 86_400),
            refresh_ttl: Duration::from_secs(60 * 86_400),
            burst_per_second: 0,
            daily_limit: 0,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            rps: 5000,
            // The default intervals: 2 min while driving or charging, 20 min parked.
            telemetry: "alerts_interval = \"6h\"\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    // The list pass with the real binary (its telemetry would run on the real clock).
    assert_code(
        &env.run(
            &["--once"],
            &[("STELLANTIS_SYNC_TELEMETRY__ENABLED", "false")],
        )
        .await,
        0,
    );
    let cfg = config::load(&env.config, Checks::Full).unwrap();
    let app = stellantis_sync::daemon::build(cfg.clone(), None).unwrap();
    let t = Telemetry::new(&cfg, app.engine.clone());
    let step = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let mut next_due: Option<i64> = None;
    let mut rounds = 0;
    let mut in_run = Duration::ZERO;
    for _ in 0..(7 * 86_400 / 60) {
        env.sim.advance_clock(step);
        let now = env.sim.now().timestamp();
        if next_due.is_some_and(|d| d > now) {
            continue;
        }
        let t0 = std::time::Instant::now();
        let s = t
            .run_due(now, tokio_util::sync::CancellationToken::new())
            .await;
        in_run += t0.elapsed();
        assert!(s.local_io.is_none(), "{:?}", s.local_io);
        next_due = s.next_due;
        rounds += 1;
    }
    eprintln!("{rounds} rounds, {in_run:?} in run_due");
    // The last trips: one more round after the safety interval.
    env.sim.advance_clock(Duration::from_secs(6 * 3600 + 60));
    let s = t
        .run_due(
            env.sim.now().timestamp(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    assert_eq!(s.failures, 0);
    eprintln!("a week in {:.1} s", started.elapsed().as_secs_f64());

    let db = env.db();
    // Charging sessions: every finished charge, start and end within one poll interval, SoC
    // within one point.
    let truth: Vec<_> = env
        .sim
        .charges()
        .into_iter()
        .filter(|c| c.ended.is_some())
        .collect();
    assert!(truth.len() >= 2, "the week has charges: {}", truth.len());
    type Row = (
        String,
        i64,
        Option<i64>,
        Option<f64>,
        Option<f64>,
        Option<String>,
        Option<f64>,
    );
    let rows: Vec<Row> = db
        .prepare("SELECT vin, started_ts, ended_ts, start_soc, end_soc, end_reason, energy_added_kwh FROM charging_sessions WHERE started_ts >= ?1 ORDER BY started_ts, vin")
        .unwrap()
        .query_map([start.timestamp()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let closed: Vec<&Row> = rows.iter().filter(|r| r.2.is_some()).collect();
    assert_eq!(
        closed.len(),
        truth.len(),
        "sessions {rows:?}\ntruth {truth:?}"
    );
    // One poll interval (2 min), plus the step of the loop.
    let interval = 120 + 60;
    for (c, r) in truth.iter().zip(&closed) {
        assert_eq!(c.vin, r.0);
        assert!(
            (r.1 - c.started.timestamp()).abs() <= interval,
            "start {r:?} vs {c:?}"
        );
        let end = c.ended.unwrap().timestamp();
        assert!((r.2.unwrap() - end).abs() <= interval, "end {r:?} vs {c:?}");
        assert!(
            (r.3.unwrap() - c.start_soc).abs() <= 1.0,
            "start SoC {r:?} vs {c:?}"
        );
        assert!(
            (r.4.unwrap() - c.end_soc).abs() <= 1.0,
            "end SoC {r:?} vs {c:?}"
        );
        let reason = r.5.as_deref().unwrap_or_default();
        match c.outcome {
            "Finished" => assert_eq!(reason, "finished", "{r:?} vs {c:?}"),
            _ => assert!(matches!(reason, "stopped" | "unplugged"), "{r:?} vs {c:?}"),
        }
        // The battery's capacity from the body × ΔSoC: within a point of SoC of the truth.
        let kwh = r.6.expect("the body gives the capacity");
        assert!(
            (kwh - c.energy_kwh).abs() <= 0.02 * c.energy_kwh.max(5.0),
            "energy {kwh} vs {} ({r:?})",
            c.energy_kwh
        );
    }
    // Trips: each drive once, as the API reports it.
    let drives: Vec<_> = env
        .sim
        .drives()
        .into_iter()
        .filter(|d| d.ended.is_some())
        .collect();
    assert!(drives.len() >= 5, "the week has drives: {}", drives.len());
    let trips: Vec<(String, i64, Option<i64>)> = db
        .prepare("SELECT vin, started_ts, ended_ts FROM trips ORDER BY started_ts, vin")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let in_week: Vec<_> = trips.iter().filter(|t| t.1 >= start.timestamp()).collect();
    assert_eq!(
        in_week.len(),
        drives.len(),
        "trips {trips:?}\ndrives {drives:?}"
    );
    for (d, t) in drives.iter().zip(&in_week) {
        assert_eq!(d.vin, t.0);
        assert!(
            (t.1 - d.started.timestamp()).abs() <= interval,
            "{t:?} vs {d:?}"
        );
        assert!(
            (t.2.unwrap() - d.ended.unwrap().timestamp()).abs() <= interval,
            "{t:?} vs {d:?}"
        );
    }
    // What a vehicle-day costs: requests and database growth.
    let requests: u64 = env
        .sim
        .stats()
        .requests
        .iter()
        .filter(|(k, _)| k.contains("/user/vehicles/"))
        .map(|(_, m)| m.values().sum::<u64>())
        .sum();
    let bytes: i64 = db
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!(
        "per vehicle-day: {:.0} telemetry requests, {:.1} KiB of database (whole file / 21), {} status rows",
        requests as f64 / 21.0,
        bytes as f64 / 1024.0 / 21.0,
        env.count("SELECT count(*) FROM vehicle_status")
    );
    // Never two open intervals; the budget of requests was respected.
    assert_eq!(env.count("SELECT count(*) FROM (SELECT vin FROM vehicle_states WHERE ended_ts IS NULL GROUP BY vin HAVING count(*) > 1)"), 0);
    assert_no_forbidden_endpoint(&env.sim);
}

/// SIGKILL of the daemon in the middle of a charge: one open session remains, the next run
/// continues it (same row, end values move on) and closes it when the charge ends; never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_charge_leaves_one_session_that_the_next_run_continues() {
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let env = Env::new(
        SimConfig {
            users: 1,
            vehicle_counts: vec![4],
            time_scale: 0.0,
            start_time: Some(start),
            access_ttl: Duration::from_secs(30 * 86_400),
            refresh_ttl: Duration::from_secs(60 * 86_400),
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            telemetry: "active_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\n\
                        daily_request_budget = 10000000\n"
                .into(),
            ..Opts::idle()
        },
    )
    .await;
    // A charge under way (the sim's ground truth), a few minutes in.
    env.sim.advance_clock(Duration::from_secs(5 * 60));
    let charge = env
        .sim
        .charges()
        .into_iter()
        .find(|c| c.ended.is_none())
        .expect("a car charges at the start of the seeded week");
    let vin = charge.vin.clone();
    let sessions = |open: bool| {
        try_count(
            &env,
            &format!(
                "SELECT count(*) FROM charging_sessions WHERE vin = '{vin}'{}",
                if open { " AND ended_ts IS NULL" } else { "" }
            ),
        )
    };
    let end_soc = || -> f64 {
        env.db()
            .query_row(
                &format!(
                    "SELECT coalesce(max(end_soc), 0) FROM charging_sessions WHERE vin = '{vin}'"
                ),
                [],
                |r| r.get(0),
            )
            .unwrap_or(0.0)
    };
    let mut daemon = env.spawn_daemon(&[]);
    wait_for(15, "the charging session", || sessions(true) == 1).await;
    let soc0 = end_soc();
    env.sim.advance_clock(Duration::from_secs(4 * 60));
    wait_for(10, "the session to follow the charge", || end_soc() > soc0).await;
    daemon.kill().await.unwrap();
    assert_eq!(sessions(true), 1, "one open session after SIGKILL");
    assert_eq!(sessions(false), 1);
    // The next run continues the same session.
    let soc1 = end_soc();
    env.sim.advance_clock(Duration::from_secs(4 * 60));
    let mut daemon = env.spawn_daemon(&[]);
    wait_for(15, "the session to be continued", || end_soc() > soc1).await;
    assert_eq!(sessions(false), 1, "continued, not reopened");
    assert_eq!(sessions(true), 1);
    // The charge ends (the car stays plugged in for at least half an hour after): the session
    // closes at the car's Finished report.
    let truth = loop {
        env.sim.advance_clock(Duration::from_secs(10 * 60));
        let c = env
            .sim
            .charges()
            .into_iter()
            .find(|c| c.vin == vin && c.started == charge.started)
            .unwrap();
        if c.ended.is_some() {
            break c;
        }
    };
    let ended = truth.ended.unwrap().timestamp();
    wait_for(15, "the session to close", || sessions(true) == 0).await;
    signal(&daemon, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon.wait()).await;
    assert_eq!(sessions(false), 1, "one session for the one charge");
    let (ended_ts, reason, soc): (i64, String, f64) = env
        .db()
        .query_row(
            &format!(
                "SELECT ended_ts, end_reason, end_soc FROM charging_sessions WHERE vin = '{vin}'"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(
        (ended_ts - ended).abs() <= 120,
        "ended {ended_ts} vs {ended}"
    );
    assert_eq!(reason, "finished");
    assert!(
        (soc - truth.end_soc).abs() <= 1.0,
        "{soc} vs {}",
        truth.end_soc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_that_leaves_the_list_is_no_longer_polled() {
    let env = Env::new(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 2)],
        polling(),
    )
    .await;
    assert_code(&env.once().await, 0);
    assert_eq!(status_requests(&env.sim), 3);
    // Mutate the world until user2 loses a vehicle.
    let (email, _, _) = env.sim.users()[1].clone();
    let mut tries = 0;
    while env.sim.vehicles(&email).len() >= 3 {
        env.sim.tick(1);
        tries += 1;
        assert!(tries < 500, "the simulator never removed a vehicle");
    }
    let listed = env.sim.vehicles(&email).len() as u64;
    env.sim.reset_stats();
    assert_code(&env.once().await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM vehicles WHERE removed_at IS NULL"),
        listed as i64
    );
    assert_eq!(
        status_requests(&env.sim),
        listed,
        "only the listed vehicles are polled"
    );
}

/// Issue 22, defect 7: a `--once` under a clock 30 days ahead writes due times a month away
/// (here: a real `--once`'s bookkeeping moved 30 days on, as that run would have written it).
/// Back on the right clock, the daemon polls the vehicles in its first round instead of
/// waiting a month, and rewrites the bookkeeping from the right clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_times_written_under_a_clock_a_month_ahead_do_not_silence_the_vehicles() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            telemetry: "daily_request_budget = 10000000\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    assert_code(&env.once().await, 0);
    let month = 30 * 86_400;
    let moved = env
        .db()
        .execute(
            "UPDATE telemetry_endpoints SET last_attempt_ts = last_attempt_ts + ?1, next_due_ts = next_due_ts + ?1",
            [month],
        )
        .unwrap();
    assert!(moved >= 8, "two vehicles' endpoints: {moved}");
    let before = status_requests(&env.sim);
    let mut child = env.spawn_daemon(&[]);
    wait_for(20, "status polls on the right clock", || {
        status_requests(&env.sim) >= before + 2
    })
    .await;
    wait_for(10, "the bookkeeping rewritten", || {
        try_count(
            &env,
            "SELECT count(*) FROM telemetry_endpoints WHERE next_due_ts > unixepoch() + 2 * 86400",
        ) == 0
    })
    .await;
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Issue 22, defect 9: `daily_request_budget` is a ceiling, not a forecast. Under the timer
/// (`--once` run again and again: every run polls every car) and in the daemon (cars awake, the
/// shortest intervals), the API never sees more requests in the day than the budget; the runs
/// refused say why, `status` and `/metrics` show the spend. On the old code 20 `--once` runs sent
/// about 20 x (1 list page + 3 statuses + trips, alerts, maintenance) requests with a budget of 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_request_budget_is_a_ceiling_under_the_timer_and_in_the_daemon() {
    let budget: u64 = 30;
    let env = Env::new(
        SimConfig {
            users: 1,
            vehicle_counts: vec![3],
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            schedule: "0 0 0 1 1 *".into(),
            telemetry: format!(
                "active_interval = \"1s\"\nparked_interval = \"1s\"\ntrips_safety_interval = \"1s\"\nalerts_interval = \"1s\"\nmaintenance_interval = \"1s\"\ndaily_request_budget = {budget}\n"
            ),
            ..Opts::default()
        },
    )
    .await;
    let mut refused = 0;
    for _ in 0..20 {
        let o = env.once().await;
        match o.status.code() {
            Some(0) => {}
            Some(75) => {
                refused += 1;
                assert!(text(&o).contains("request budget"), "{}", text(&o));
            }
            c => panic!("exit {c:?}: {}", text(&o)),
        }
    }
    let sent = env.sim.stats().api_requests;
    assert!(
        sent <= budget,
        "{sent} API requests with a budget of {budget}"
    );
    assert!(sent >= budget / 2, "the budget was used: {sent}");
    assert!(refused > 0, "the runs past the budget are refused");
    let st = env.run(&["status"], &[]).await;
    assert!(
        text(&st).contains(&format!(
            "requests today (UTC): {sent} of daily_request_budget {budget}"
        )),
        "{}",
        text(&st)
    );

    // The daemon, on the same state directory and day: nothing more goes out.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon =
        env.spawn_daemon(&[("STELLANTIS_SYNC_HTTP__LISTEN", &format!("127.0.0.1:{port}"))]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    signal(&daemon, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon.wait()).await;
    assert_eq!(env.sim.stats().api_requests, sent, "the daemon sent more");
    assert!(
        metrics.contains(&format!("stellantis_sync_daily_request_budget {budget}")),
        "{metrics}"
    );
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("stellantis_sync_api_requests_today{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as u64, sent, "{metrics}");
}
