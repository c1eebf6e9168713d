//! The values of issue 22, each against the real binary (the simulator or a small fake API on
//! 127.0.0.1:0): trip consumption in its documented unit, physically impossible values kept out
//! of the typed columns, a vehicle's identity independent of the case of its VIN, and trips that
//! are published late or dated in the far future. Each test failed on the code before its fix
//! (the note on the issue says how).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use stellantis_sync::sim::SimConfig;

/// The harness's options with telemetry at the shipped defaults (the harness turns it off).
fn polling() -> Opts {
    Opts {
        telemetry: String::new(),
        ..Opts::default()
    }
}

/// Defect 11: `avgConsumption` comes in Wh/100 km and cl/100 km (the official schema, which the
/// simulator follows); the columns hold kWh/100 km and l/100 km, as documented and plotted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trip_consumption_is_stored_in_kwh_and_litres_per_100_km() {
    let start = chrono::Utc::now() - chrono::TimeDelta::days(4);
    let env = Env::new(
        SimConfig {
            users: 1,
            vehicle_counts: vec![6],
            time_scale: 0.0,
            start_time: Some(start),
            access_ttl: Duration::from_secs(30 * 86_400),
            refresh_ttl: Duration::from_secs(60 * 86_400),
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        polling(),
    )
    .await;
    // Three days of the cars' lives, all in the past of the wall clock.
    for _ in 0..(3 * 24) {
        env.sim.advance_clock(Duration::from_secs(3600));
    }
    assert_code(&env.once().await, 0);
    let drives: Vec<_> = env
        .sim
        .drives()
        .into_iter()
        .filter(|d| d.ended.is_some() && d.distance_km > 1.0)
        .collect();
    let db = env.db();
    let (mut electric, mut fuel) = (0, 0);
    for d in &drives {
        let (e, f): (Option<f64>, Option<f64>) = db
            .query_row(
                "SELECT electric_avg_consumption, fuel_avg_consumption FROM trips WHERE vin = ?1 AND started_ts = ?2",
                rusqlite::params![d.vin, d.started.timestamp()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("the drive {d:?} is a trip: {e}"));
        if d.energy_kwh > 0.0 {
            let truth = d.energy_kwh / d.distance_km * 100.0;
            let got = e.expect("an electric drive has an electric consumption");
            assert!(
                (got - truth).abs() <= 0.01 + 0.01 * truth,
                "electric {got} kWh/100 km vs {truth} ({d:?})"
            );
            electric += 1;
        }
        if d.fuel_l > 0.0 {
            let truth = d.fuel_l / d.distance_km * 100.0;
            let got = f.expect("a drive on fuel has a fuel consumption");
            assert!(
                (got - truth).abs() <= 0.01 + 0.01 * truth,
                "fuel {got} l/100 km vs {truth} ({d:?})"
            );
            fuel += 1;
        }
    }
    assert!(
        electric > 0 && fuel > 0,
        "drives on both energies: {electric} electric, {fuel} fuel of {}",
        drives.len()
    );
}

/// Defect 11, stored rows: migration 0008 converts the trips a release before it stored in the
/// API's units (Wh/100 km, cl/100 km), and leaves the raw item as it was.
#[test]
fn migration_8_converts_stored_trip_consumption() {
    use stellantis_sync::store::{Db, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    let item = r#"{"id":"t1","energyConsumptions":[{"type":"Electric","avgConsumption":15873}]}"#;
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for (_, sql) in &MIGRATIONS[..7] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch("PRAGMA user_version = 7; INSERT INTO accounts (name, brand, created_at) VALUES ('a', 'peugeot', 'x');")
            .unwrap();
        c.execute(
            "INSERT INTO trips (account_id, vin, trip_id, started_ts, electric_avg_consumption, fuel_avg_consumption, data)
             VALUES (1, 'V1', 't1', 10, 15873, NULL, ?1), (1, 'V1', 't2', 20, 16210, 640.5, ?1), (1, 'V1', 't3', 30, NULL, NULL, ?1)",
            [item],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let rows: Vec<(Option<f64>, Option<f64>, String)> = db
        .conn()
        .prepare("SELECT electric_avg_consumption, fuel_avg_consumption, data FROM trips ORDER BY trip_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            (Some(15.873), None, item.to_owned()),
            (Some(16.21), Some(6.405), item.to_owned()),
            (None, None, item.to_owned()),
        ]
    );
}
