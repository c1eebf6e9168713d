//! Charging sessions derived by the store against what the simulator's cars really did (issue
//! 22, "a property test against ground truth").
//!
//! A world of simulated cars lives for a day or two; each car's `/status` body is sampled at the
//! times the client's own schedule would poll it (the default intervals: 120 s while the car is
//! driving, charging or reported within the last 15 minutes, 1200 s otherwise; plus jitter),
//! served through a disorder layer (late bodies, repeats, partial bodies, a block dated a day
//! ahead, reordered pairs, the VIN in another case with spaces around it) and written through the
//! real path (`status::parse`, `Db::write_telemetry`). The derived `charging_sessions` must equal
//! the simulator's charges (`Life::charges`): same count, each start and end within one poll
//! interval (plus jitter) after the true time, energy within 2 %, an open row exactly for a charge
//! still under way; nothing invented, lost, split or left open.
//!
//! No HTTP: a case is a few hundred SQLite transactions, so many cases run in seconds.
//! `GROUND_TRUTH_CASES=N` runs N cases instead of the CI default; `GROUND_TRUTH_REPORT=1` prints
//! the accuracy figures of BENCHMARKS.md ("Sessions against ground truth").
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use stellantis_sync::api::model::normalize_vin;
use stellantis_sync::sim::world::{World, status_json};
use stellantis_sync::store::Db;
use stellantis_sync::store::telemetry::{Batch, StatusFetch};
use stellantis_sync::telemetry::status;

/// The client's default intervals (`telemetry::config`), seconds.
const ACTIVE: i64 = 120;
const PARKED: i64 = 1200;
const AWAKE: i64 = 900;
const GAP_LIMIT: i64 = 3600;
/// The most a poll is late against its schedule (a busy round, the rate limiter), seconds.
const JITTER: i64 = 30;
const BASE: &str = "https://api.example/connectedcar/v4";

/// One generated case.
#[derive(Debug, Clone, Copy)]
struct Case {
    seed: u64,
    cars: usize,
    hours: i64,
    disorder: bool,
}

/// One true charge and the session derived for it, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Session {
    start: i64,
    end: Option<i64>,
    energy_kwh: Option<f64>,
    /// How much less energy the client can know of (kWh): none for a charge that finished (its
    /// last report has the final SoC); one report interval of charging (120 s) for one stopped
    /// by unplugging or a departure; one active poll interval for one still under way at the
    /// end of the world (the truth is at the end, the last poll before it). 0 for a session.
    unseen_kwh: f64,
}

/// What one case found: per car, the true charges and the derived sessions.
struct Outcome {
    cars: Vec<(String, Vec<Session>, Vec<Session>)>,
}

fn start_time(seed: u64) -> DateTime<Utc> {
    // Spread the worlds over a year, so that days of the week and seasons differ.
    DateTime::from_timestamp(1_767_225_600 + (seed % 365) as i64 * 86_400 + 3_600 * 5, 0).unwrap()
}

/// Is the car, as its last report shows it, one the client polls at the active interval?
fn active(body: &Value, now: i64) -> bool {
    let parsed = status::parse(body.to_string().as_bytes()).unwrap();
    let o = &parsed.observation;
    let charging = o.charging_status.as_deref() == Some("InProgress");
    let driving = o.moving == Some(true) || o.ignition.as_deref().is_some_and(|i| i != "Stop");
    let recent = o.observed_ts.is_some_and(|t| now - t < AWAKE);
    charging || driving || recent
}

/// The disorder layer: what the client receives for the polls `sent` (fetched time, body), in
/// the order it receives them.
fn disorder(sent: &[(i64, Value)], rng: &mut StdRng) -> Vec<(i64, Value)> {
    let mut out: Vec<(i64, Value)> = Vec::with_capacity(sent.len() * 2);
    let future_at = rng.random_range(0..sent.len());
    for (i, (at, body)) in sent.iter().enumerate() {
        let mut body = body.clone();
        let same_as_before = i > 0 && charge_status(&sent[i - 1].1) == charge_status(&body);
        if same_as_before && rng.random_bool(0.05) {
            // A partial body: no energy blocks (position, odometer, ignition still there).
            let o = body.as_object_mut().unwrap();
            o.remove("energies");
            o.remove("energy");
        }
        if i == future_at {
            body["alarm"] =
                json!({"status": {"createdAt": iso(at + 86_400), "activation": "Deactivated"}});
        }
        out.push((*at, body.clone()));
        if rng.random_bool(0.05) {
            out.push((at + 5, body));
        }
        if i >= 2 && rng.random_bool(0.05) {
            // A late body: an older one served again after a newer one.
            let j = i - rng.random_range(1..=2);
            out.push((at + 10, sent[j].1.clone()));
        }
        let n = out.len();
        if n >= 2 && rng.random_bool(0.03) {
            // A reordered pair: the newer body arrives first.
            out.swap(n - 2, n - 1);
        }
    }
    out
}

fn charge_status(body: &Value) -> Option<String> {
    body.pointer("/energies/0/extension/electric/charging/status")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn iso(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The VIN as a listing may spell it: another case, spaces around it.
fn mangle(vin: &str, rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => vin.to_lowercase(),
        1 => format!(" {vin}\t"),
        _ => vin.to_owned(),
    }
}

fn run(case: Case) -> Outcome {
    let start = start_time(case.seed);
    let end = start + TimeDelta::hours(case.hours);
    let mut world = World::generate_at(case.seed, 1, &[case.cars], case.cars, start);
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("t.sqlite")).unwrap();
    let account = db.account_id("a", "peugeot").unwrap();
    let mut rng = StdRng::seed_from_u64(case.seed ^ 0x5eed);
    let mut cars = Vec::new();
    for v in &mut world.users[0].vehicles {
        if v.life.capacity_wh == 0 {
            continue;
        }
        let mut sent = Vec::new();
        let mut t = start.timestamp() + rng.random_range(0..=JITTER);
        while t < end.timestamp() {
            v.life.advance(DateTime::from_timestamp(t, 0).unwrap());
            let body = status_json(v, BASE, false);
            let next = if active(&body, t) { ACTIVE } else { PARKED };
            sent.push((t, body));
            t += next + rng.random_range(0..=JITTER);
        }
        v.life.advance(end);
        let delivered = if case.disorder {
            disorder(&sent, &mut rng)
        } else {
            sent
        };
        for (at, body) in delivered {
            let spelled = if case.disorder {
                mangle(&v.vin, &mut rng)
            } else {
                v.vin.clone()
            };
            let text = body.to_string();
            let fetch = StatusFetch {
                vin: normalize_vin(&spelled).unwrap(),
                fetched_ts: at,
                parsed: status::parse(text.as_bytes()).unwrap(),
                body: text,
            };
            let batch = Batch {
                statuses: vec![fetch],
                ..Batch::default()
            };
            db.write_telemetry(account, &batch, GAP_LIMIT).unwrap();
        }
        let truth: Vec<Session> = v
            .life
            .charges
            .iter()
            .filter(|c| c.started < end)
            .map(|c| Session {
                start: c.started.timestamp(),
                end: c.ended.filter(|e| *e <= end).map(|e| e.timestamp()),
                energy_kwh: Some(c.energy_kwh),
                unseen_kwh: c.power_kw / 3600.0
                    * match (c.outcome, c.ended.filter(|e| *e <= end)) {
                        ("Finished", Some(_)) => 0.0,
                        (_, Some(_)) => 120.0,
                        (_, None) => (ACTIVE + JITTER) as f64,
                    },
            })
            .collect();
        let derived: Vec<Session> = db
            .conn()
            .prepare(
                "SELECT started_ts, ended_ts, energy_added_kwh FROM charging_sessions \
                 WHERE vin = ?1 ORDER BY started_ts",
            )
            .unwrap()
            .query_map([&v.vin], |r| {
                Ok(Session {
                    start: r.get(0)?,
                    end: r.get(1)?,
                    energy_kwh: r.get(2)?,
                    unseen_kwh: 0.0,
                })
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        cars.push((v.vin.clone(), truth, derived));
    }
    Outcome { cars }
}

fn generate(n: usize, disorder: bool) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(22);
    (0..n)
        .map(|_| Case {
            seed: rng.random(),
            cars: rng.random_range(1..=4),
            hours: rng.random_range(24..=48),
            disorder,
        })
        .collect()
}

/// The case count: `GROUND_TRUTH_CASES`, else `default`.
fn case_count(default: usize) -> usize {
    std::env::var("GROUND_TRUTH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The most a derived time may lag the true one: one poll interval plus jitter. The client's
/// interval at a charge's start is the parked one (the car was parked), at its end the active
/// one, but a charge that ends while the client still polls at the parked interval (a short
/// charge) is allowed the parked one too.
const TOLERANCE: i64 = PARKED + JITTER;

/// Checks one car; returns what is wrong, if anything.
fn check(truth: &[Session], derived: &[Session], disorder: bool) -> Result<(), String> {
    if truth.len() != derived.len() {
        return Err(format!(
            "{} true charges, {} sessions (invented, lost or split)",
            truth.len(),
            derived.len()
        ));
    }
    for (t, d) in truth.iter().zip(derived) {
        let lag = d.start - t.start;
        if !(0..=TOLERANCE).contains(&lag) {
            return Err(format!("start {lag} s after the truth: {t:?} {d:?}"));
        }
        match (t.end, d.end) {
            (None, None) => {}
            (Some(te), Some(de)) if (0..=TOLERANCE).contains(&(de - te)) => {}
            _ => return Err(format!("end: {t:?} {d:?}")),
        }
        let (te, de) = (t.energy_kwh.unwrap(), d.energy_kwh.unwrap_or(0.0));
        // Never more energy than the truth (2 %, or 0.02 kWh for the smallest charges). In
        // order, also never less than the truth less what no report showed (`unseen_kwh`),
        // where the plug-in report itself was polled. Not asserted (issue 22's note has the
        // cases; the benchmark counts them): the start SoC of a charge whose plug-in report was
        // overwritten before the first poll (taken from the parked observation before it, which
        // a drive or a late body can make unknown), and any lower bound through disorder.
        let slack = (te * 0.02).max(0.02);
        // Only for a charge that finished: one stopped by a departure can lose more than one
        // report interval (a case in the note).
        let start_known = lag == 0 && t.unseen_kwh == 0.0 && t.end.is_some();
        if de > te + slack || (!disorder && start_known && de < te - slack) {
            return Err(format!("energy {de} kWh, truth {te} kWh: {t:?} {d:?}"));
        }
    }
    Ok(())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints sessions found / true sessions and the start and end errors of `cases`.
fn report(label: &str, outcomes: &[Outcome]) {
    let (mut truths, mut found) = (0, 0);
    let (mut starts, mut ends, mut energy_ok, mut energy_n) = (vec![], vec![], 0, 0);
    for o in outcomes {
        for (_, truth, derived) in &o.cars {
            truths += truth.len();
            if check(truth, derived, true).is_err() {
                continue;
            }
            found += truth.len();
            for (t, d) in truth.iter().zip(derived) {
                starts.push(d.start - t.start);
                if let (Some(te), Some(de)) = (t.end, d.end) {
                    ends.push(de - te);
                }
                let (te, de) = (t.energy_kwh.unwrap(), d.energy_kwh.unwrap_or(0.0));
                energy_n += 1;
                if (de - te).abs() <= (te * 0.02).max(0.02) {
                    energy_ok += 1;
                }
            }
        }
    }
    starts.sort_unstable();
    ends.sort_unstable();
    println!(
        "{label}: sessions found {found} / {truths} true; start error s median {} p95 {} max {}; \
         end error s median {} p95 {} max {}; energy within 2 %: {energy_ok} / {energy_n}",
        percentile(&starts, 0.5),
        percentile(&starts, 0.95),
        starts.last().copied().unwrap_or(0),
        percentile(&ends, 0.5),
        percentile(&ends, 0.95),
        ends.last().copied().unwrap_or(0),
    );
}

fn property(disorder: bool) {
    let n = case_count(8);
    let began = std::time::Instant::now();
    let cases = generate(n, disorder);
    let mut outcomes = Vec::with_capacity(n);
    for c in cases {
        let o = run(c);
        for (vin, truth, derived) in &o.cars {
            if let Err(e) = check(truth, derived, disorder) {
                panic!("{c:?} {vin}: {e}\n  truth   {truth:?}\n  derived {derived:?}");
            }
        }
        outcomes.push(o);
    }
    if std::env::var_os("GROUND_TRUTH_REPORT").is_some() {
        let label = if disorder {
            "with disorder"
        } else {
            "in order"
        };
        report(label, &outcomes);
        println!(
            "{label}: {n} cases in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
}

/// The simulator's charges, polled on the client's schedule and delivered in order.
#[test]
fn sessions_equal_the_true_charges_in_order() {
    property(false);
}

/// The same worlds, delivered through the disorder layer.
#[test]
fn sessions_equal_the_true_charges_through_disorder() {
    property(true);
}
