//! Vehicle telemetry against the simulator, with the real binary: `--once` polls every current
//! vehicle's status and stores one row per distinct observation; `enabled = false` polls
//! nothing; the daemon polls on its own schedule; the client never asks for the deprecated or
//! waking endpoints.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use stellantis_sync::sim::{SimConfig, SimHandle};

const STATUS: &str = "GET /connectedcar/v4/user/vehicles/{id}/status";

fn status_requests(sim: &SimHandle) -> u64 {
    let s = sim.stats();
    s.requests.get(STATUS).map_or(0, |m| m.values().sum())
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
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
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
    // The world moves: every vehicle's status changes, a new row each.
    env.sim.tick(1);
    assert_code(&env.once().await, 0);
    assert_eq!(env.count("SELECT count(*) FROM vehicle_status"), 10);
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
        Opts::default(),
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
        Opts::default(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_polls_on_its_own_schedule() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            extra_top: "[telemetry]\nactive_interval = \"1s\"\nparked_interval = \"1s\"\ngap_limit = \"1d\"\ndaily_request_budget = 10000000\n".into(),
            ..Opts::idle()
        },
    )
    .await;
    let mut child = env.spawn_daemon(&[]);
    wait_for(15, "first observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") >= 2
    })
    .await;
    let before = status_requests(&env.sim);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = status_requests(&env.sim);
    assert!(
        after >= before + 4,
        "polled about every second: {before} → {after}"
    );
    // The world moves: new observations without a list pass.
    env.sim.tick(1);
    wait_for(10, "new observations", || {
        try_count(&env, "SELECT count(*) FROM vehicle_status") >= 4
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
