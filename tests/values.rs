//! The values of issue 22, each against the real binary (the simulator or a small fake API on
//! 127.0.0.1:0): trip consumption in its documented unit, physically impossible values kept out
//! of the typed columns, a vehicle's identity independent of the case of its VIN, and trips that
//! are published late or dated in the far future. Each test failed on the code before its fix
//! (the note on the issue says how).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
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

/// What the fake API serves: the vehicle list, each vehicle's `/status` body and trips (by id),
/// and the `timestamps` filters `/trips` was asked for.
#[derive(Default)]
struct FakeApi {
    vehicles: Vec<Value>,
    status: HashMap<String, Value>,
    trips: HashMap<String, Vec<Value>>,
    trip_filters: Vec<Option<String>>,
}

/// `/user/vehicles` (one page), `/status`, `/trips` (with the `timestamps` filter: trips that
/// started at or after its start, oldest first; 404 40400 when none, as the API does); no
/// alerts and no maintenance service.
fn answer(api: &Mutex<FakeApi>, path_and_query: &str) -> FakeResponse {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let not_found = |m: &str| json_response(404, &json!({"code": 40400, "message": m}));
    let Some(rest) = path.strip_prefix("/connectedcar/v4/user/vehicles") else {
        return not_found("Not Found");
    };
    let mut g = api.lock().unwrap();
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => json_response(
            200,
            &json!({"total": g.vehicles.len(), "_links": {"self": {"href": "x"}},
                    "_embedded": {"vehicles": g.vehicles}}),
        ),
        [id, "status"] => match g.status.get(*id) {
            Some(b) => json_response(200, b),
            None => not_found("Not Found: We didn't find the status for this vehicle."),
        },
        [id, "trips"] => {
            let filter = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "timestamps")
                .map(|(_, v)| v.into_owned());
            g.trip_filters.push(filter.clone());
            let since = filter
                .as_deref()
                .and_then(|f| f.split('/').next())
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            let start = |t: &Value| {
                chrono::DateTime::parse_from_rfc3339(t["startedAt"].as_str().unwrap()).unwrap()
            };
            let mut items: Vec<Value> = g
                .trips
                .get(*id)
                .into_iter()
                .flatten()
                .filter(|t| since.is_none_or(|s| start(t) >= s))
                .cloned()
                .collect();
            items.sort_by_key(start);
            if items.is_empty() {
                return not_found("Not Found: No trip was found.");
            }
            json_response(
                200,
                &json!({"total": items.len(), "_links": {"self": {"href": "x"}},
                        "_embedded": {"trips": items}}),
            )
        }
        [_, "alerts"] => not_found("Not Found: No alert was found."),
        [_, "maintenance"] => not_found("Maintenance Not Found for Given Vehicle"),
        _ => not_found("Not Found"),
    }
}

/// An environment whose API is a [`FakeApi`] (the simulator stays the identity provider), one
/// account, telemetry at the shipped defaults.
async fn env_with_fake_api() -> (Env, Fake, Arc<Mutex<FakeApi>>) {
    let api = Arc::new(Mutex::new(FakeApi::default()));
    let a = api.clone();
    let fake = Fake::start(move |r| {
        let a = a.clone();
        async move { answer(&a, &r.path_and_query) }
    })
    .await;
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        polling(),
    )
    .await;
    point_section_at(
        &env.config,
        "api",
        &format!("{}/connectedcar/v4", fake.base),
    );
    (env, fake, api)
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A charging EV's `/status` body of the real shape, dated `at`, with these values.
fn ev_status(at: &str, level: Value, autonomy: Value, capacity: Value, mileage: Value) -> Value {
    json!({
        "createdAt": at, "updatedAt": at,
        "lastPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                         "properties": {"createdAt": at, "type": "Acquire"}},
        "ignition": {"createdAt": at, "type": "Stop"},
        "odometer": {"createdAt": at, "mileage": mileage},
        "kinetic": {"createdAt": at, "moving": false},
        "environment": {"air": {"createdAt": at, "temp": 12.5}},
        "energies": [{"createdAt": at, "type": "Electric", "subType": "ElectricEnergy", "level": level, "autonomy": autonomy,
            "extension": {"electric": {
                "battery": {"load": {"createdAt": at, "capacity": capacity, "residual": 20000}},
                "charging": {"plugged": true, "status": "InProgress", "remainingTime": "PT1H10M",
                             "chargingRate": 1_000_000, "chargingMode": "Slow"}}}}]
    })
}

/// A finished trip of the real shape.
fn trip(
    id: &str,
    started: chrono::DateTime<chrono::Utc>,
    distance: Value,
    start_level: Value,
) -> Value {
    let stopped = started + chrono::TimeDelta::minutes(20);
    json!({"id": id, "startedAt": rfc3339(started), "stoppedAt": rfc3339(stopped),
           "createdAt": rfc3339(stopped), "updatedAt": rfc3339(stopped), "done": true,
           "duration": 1200, "distance": distance, "startMileage": 12000.5,
           "startEnergies": [{"type": "Electric", "level": start_level, "autonomy": 200}],
           "endEnergies": [{"type": "Electric", "level": 70, "autonomy": 180}],
           "energyConsumptions": [{"type": "Electric", "consumption": 2.9, "avgConsumption": 16_400}],
           "kinetic": {"avgSpeed": 45.2, "maxSpeed": 98}})
}

const VIN: &str = "VR3UHZKXZMT000001";

/// Defect 12: a SoC of 1e308 %, a range of 2^63 km, a capacity of 1e308 Wh, a negative
/// odometer, a charging rate of 10^6 km/h and a trip of 10^12 km are not facts: their columns
/// are NULL, each is logged with the account, VIN and column, and the raw body and item are
/// stored as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physically_impossible_values_are_null_logged_and_kept_raw() {
    let (env, _fake, api) = env_with_fake_api().await;
    let now = chrono::Utc::now();
    let body = ev_status(
        &rfc3339(now - chrono::TimeDelta::minutes(3)),
        json!(1e308),
        json!(9_223_372_036_854_775_807u64),
        json!(1e308),
        json!(-5.0),
    );
    {
        let mut g = api.lock().unwrap();
        g.vehicles =
            vec![json!({"id": "v1", "vin": VIN, "motorization": "Electric", "brand": "Peugeot"})];
        g.status.insert("v1".into(), body.clone());
        g.trips.insert(
            "v1".into(),
            vec![trip(
                "t1",
                now - chrono::TimeDelta::hours(2),
                json!(1e12),
                json!(250),
            )],
        );
    }
    let out = env.once().await;
    assert_code(&out, 0);
    let db = env.db();
    type Row = (
        Option<f64>,
        Option<i64>,
        Option<f64>,
        Option<f64>,
        Option<String>,
        Option<f64>,
    );
    let row: Row = db
        .query_row(
            "SELECT soc, range_km, odometer_km, charging_rate_kmh, charging_status, outside_temp_c FROM vehicle_status WHERE vin = ?1",
            [VIN],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .unwrap();
    assert_eq!(
        row,
        (
            None,
            None,
            None,
            None,
            Some("InProgress".into()),
            Some(12.5)
        ),
        "the impossible values are NULL, the others stored"
    );
    let stored: String = db
        .query_row(
            "SELECT body FROM status_bodies WHERE vin = ?1 AND base_id IS NULL",
            [VIN],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, body.to_string(), "the raw body as received");
    let t: (Option<f64>, Option<f64>, Option<f64>, Option<f64>, String) = db
        .query_row(
            "SELECT distance_km, start_soc, end_soc, electric_avg_consumption, data FROM trips WHERE vin = ?1",
            [VIN],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((t.0, t.1, t.2, t.3), (None, None, Some(70.0), Some(16.4)));
    assert!(
        t.4.contains("1000000000000"),
        "the raw item as received: {}",
        t.4
    );
    // Each is logged with the account, the VIN and the column.
    let log = text(&out);
    for (endpoint, columns) in [
        (
            "status",
            "soc,range_km,odometer_km,charging_rate_kmh,battery_capacity_wh",
        ),
        ("trips", "distance_km,start_soc"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains("outside their physical range") && l.contains(endpoint))
            .unwrap_or_else(|| panic!("no {endpoint} line in\n{log}"));
        assert!(line.contains("user1") && line.contains(VIN), "{line}");
        assert!(line.contains(columns), "{line}");
    }
}

/// docs/schema.md's "Bounds" table is `telemetry::status::BOUNDS`, row for row.
#[test]
fn the_bounds_in_schema_md_are_the_codes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md")).unwrap();
    let section = doc
        .split("### Bounds")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/schema.md has a Bounds section");
    let rows: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(str::to_owned)
        .collect();
    let code: Vec<String> = stellantis_sync::telemetry::status::BOUNDS
        .iter()
        .map(|b| {
            let cols: Vec<String> = b.columns.iter().map(|c| format!("`{c}`")).collect();
            format!(
                "| {} | {} | {} | {} |",
                cols.join(", "),
                b.min,
                b.max,
                b.unit
            )
        })
        .collect();
    assert_eq!(rows, code);
}

/// Makes every endpoint of every vehicle due now (whatever `--once` does with due times).
fn all_due(env: &Env) {
    env.db()
        .execute("UPDATE telemetry_endpoints SET next_due_ts = 0", [])
        .unwrap();
}

/// Defect 5: the same vehicle id whose VIN comes in lower case with spaces from the second
/// listing on, in the middle of a charge, is the same car: one session (closed when the charge
/// ends), one open state, one VIN everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vin_that_changes_case_is_the_same_vehicle() {
    let (env, _fake, api) = env_with_fake_api().await;
    let now = chrono::Utc::now();
    let at = |min: i64| rfc3339(now - chrono::TimeDelta::minutes(min));
    let charging = |min: i64, level: i64| {
        ev_status(
            &at(min),
            json!(level),
            json!(200),
            json!(50_000),
            json!(12000.5),
        )
    };
    let set = |vin: &str, status: Value| {
        let mut g = api.lock().unwrap();
        g.vehicles =
            vec![json!({"id": "v1", "vin": vin, "motorization": "Electric", "brand": "Peugeot"})];
        g.status.insert("v1".into(), status);
    };
    set(VIN, charging(30, 50));
    assert_code(&env.once().await, 0);
    set(&format!("  {} \t", VIN.to_lowercase()), charging(20, 55));
    all_due(&env);
    assert_code(&env.once().await, 0);
    let mut finished = charging(10, 60);
    finished["energies"][0]["extension"]["electric"]["charging"]["status"] = json!("Finished");
    finished["energies"][0]["extension"]["electric"]["charging"]["plugged"] = json!(false);
    // And with a space inside (the second adversarial review: it split the car in two).
    set(
        &format!("{} {}", &VIN[..11], &VIN[11..]).to_lowercase(),
        finished,
    );
    all_due(&env);
    assert_code(&env.once().await, 0);
    for table in [
        "vehicles",
        "vehicle_status",
        "vehicle_states",
        "charging_sessions",
        "telemetry_endpoints",
    ] {
        let vins: Vec<String> = env
            .db()
            .prepare(&format!("SELECT DISTINCT vin FROM {table}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(vins, [VIN], "{table}");
    }
    let sessions: Vec<(i64, Option<i64>, Option<f64>)> = env
        .db()
        .prepare("SELECT started_ts, ended_ts, end_soc FROM charging_sessions")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(
        sessions[0].1.is_some(),
        "the session is closed: {sessions:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"),
        1
    );
}

/// Defect 5, stored rows: migration 0008 gives a car stored under two spellings of its VIN one
/// identity, with one open session and one open state.
#[test]
fn migration_8_gives_each_vehicle_one_vin() {
    use stellantis_sync::store::{Db, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for (_, sql) in &MIGRATIONS[..7] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version = 7;
             INSERT INTO accounts (name, brand, created_at) VALUES ('a', 'peugeot', 'x');
             INSERT INTO vehicles (account_id, vehicle_id, vin, first_seen_at, listed_until, data, data_hash)
                 VALUES (1, 'v1', ' vr3x ', 'x', 'x', '{}', x'00');
             INSERT INTO charging_sessions (account_id, vin, started_ts) VALUES (1, 'VR3X', 100), (1, ' vr3x ', 200);
             INSERT INTO vehicle_states (account_id, vin, state, started_ts) VALUES (1, 'VR3X', 'charging', 100), (1, ' vr3x ', 'charging', 200);
             INSERT INTO telemetry_endpoints (account_id, vin, endpoint) VALUES (1, 'VR3X', 'status'), (1, ' vr3x ', 'status'), (1, ' vr3x ', 'trips');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let c = db.conn();
    let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    for table in [
        "vehicles",
        "charging_sessions",
        "vehicle_states",
        "telemetry_endpoints",
    ] {
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM {table} WHERE vin IS NOT 'VR3X'"
            )),
            0,
            "{table}"
        );
    }
    assert_eq!(count("SELECT count(*) FROM telemetry_endpoints"), 2);
    let sessions: Vec<(i64, Option<i64>, Option<String>)> = c
        .prepare(
            "SELECT started_ts, ended_ts, end_reason FROM charging_sessions ORDER BY started_ts",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sessions,
        [(100, Some(200), Some("unknown".into())), (200, None, None)]
    );
    assert_eq!(
        count("SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"),
        1
    );
}

/// Defect 6: a trip the server publishes after a later one is still fetched, and a trip dated
/// 2099 neither moves the bookmark nor stops trip fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_trip_is_fetched_and_a_trip_in_2099_stops_nothing() {
    let (env, _fake, api) = env_with_fake_api().await;
    let now = chrono::Utc::now();
    let ago = |h: i64| now - chrono::TimeDelta::hours(h);
    let y2099 = chrono::DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let add_trip = |t: Value| {
        let mut g = api.lock().unwrap();
        g.trips.entry("v1".into()).or_default().push(t);
    };
    {
        let mut g = api.lock().unwrap();
        g.vehicles =
            vec![json!({"id": "v1", "vin": VIN, "motorization": "Electric", "brand": "Peugeot"})];
        g.status.insert(
            "v1".into(),
            ev_status(
                &rfc3339(ago(1)),
                json!(60),
                json!(200),
                json!(50_000),
                json!(12000.5),
            ),
        );
    }
    add_trip(trip("B", ago(5), json!(20.0), json!(80)));
    add_trip(trip("Z", y2099, json!(20.0), json!(80)));
    assert_code(&env.once().await, 0);
    // A, earlier than B, is published late; C comes after the trip of 2099.
    add_trip(trip("A", ago(8), json!(12.0), json!(90)));
    add_trip(trip("C", ago(2), json!(7.0), json!(70)));
    all_due(&env);
    assert_code(&env.once().await, 0);
    let ids: Vec<String> = env
        .db()
        .prepare("SELECT trip_id FROM trips ORDER BY started_ts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, ["A", "B", "C", "Z"]);
    let book: Option<String> = env
        .db()
        .query_row(
            "SELECT bookmark FROM telemetry_endpoints WHERE endpoint = 'trips'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        book.as_deref().is_some_and(|b| !b.starts_with("2099")),
        "the bookmark stays on the sim's own clock: {book:?}"
    );
}

/// Item 5 of "Done when": docs/schema.md states the unit of every INTEGER and REAL column of
/// the schema the migrations build.
#[test]
fn schema_md_states_the_unit_of_every_numeric_column() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md")).unwrap();
    let section = doc
        .split("### Units of every numeric column")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/schema.md has a Units section");
    let documented: std::collections::HashSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split_once(" | "))
        .filter(|(unit, _)| !unit.trim().is_empty() && *unit != "unit")
        .flat_map(|(_, cols)| {
            cols.split(", ")
                .map(|c| {
                    c.trim_matches(|ch| ch == '`' || ch == ' ' || ch == '|')
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let c = rusqlite::Connection::open_in_memory().unwrap();
    for (_, sql) in stellantis_sync::store::MIGRATIONS {
        c.execute_batch(sql).unwrap();
    }
    let numeric: Vec<String> = c
        .prepare(
            "SELECT m.name || '.' || p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p
             WHERE m.type = 'table' AND p.type IN ('INTEGER', 'REAL') ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(numeric.len() > 90, "{numeric:?}");
    let missing: Vec<&String> = numeric
        .iter()
        .filter(|c| !documented.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "columns without a unit in docs/schema.md: {missing:?}"
    );
}

/// Issue 25: every table and view of the schema the migrations build has its heading or row in
/// docs/schema.md (`vehicle_absences` had none).
#[test]
fn schema_md_names_every_table_and_view() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md")).unwrap();
    let c = rusqlite::Connection::open_in_memory().unwrap();
    for (_, sql) in stellantis_sync::store::MIGRATIONS {
        c.execute_batch(sql).unwrap();
    }
    let names: Vec<(String, String)> = c
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') \
             AND name NOT LIKE 'sqlite_%' ORDER BY 2",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(names.len() > 15, "{names:?}");
    let missing: Vec<&(String, String)> = names
        .iter()
        .filter(|(kind, name)| {
            let code = format!("`{name}`");
            if kind == "table" {
                !doc.lines()
                    .any(|l| l.starts_with("### ") && l.contains(&code))
            } else {
                !doc.lines().any(|l| l.starts_with(&format!("| {code}")))
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/schema.md has no section (tables) or row (views) for {missing:?}"
    );
}
