//! The telemetry writes and reads of the database (`status_bodies`, `vehicle_status`,
//! `vehicle_states`, `charging_sessions`, `trips`, `vehicle_alerts`, `maintenance`,
//! `telemetry_endpoints`).
//!
//! One [`Batch`] (an account's vehicles finished in a poll round) is one transaction: each
//! distinct body once; a status equal to an observation already recorded (usually the
//! vehicle's latest) only moves its `last_fetched_ts`; a new observation adds a
//! `vehicle_status` row and the state and session changes `telemetry::derive` decides from what
//! the database holds (so a restart continues where the last run stopped); trips and alerts are
//! upserted, maintenance gets a row only when a value changes; the poller's bookkeeping is
//! written with them. A crash at any instant leaves the previous transaction's state: at most one
//! open state and one open session per vehicle (partial unique indexes enforce it).

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Db, DbError, bodies};
use crate::telemetry::derive::{self, Before, Changes, OpenState, Sample, Session, State};
use crate::telemetry::records::{Alert, Trip};
use crate::telemetry::schedule::Endpoint;
use crate::telemetry::status::{Observation, ParsedStatus};

/// The poller's bookkeeping of one vehicle endpoint (a `telemetry_endpoints` row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    pub last_attempt_ts: Option<i64>,
    pub last_success_ts: Option<i64>,
    pub next_due_ts: Option<i64>,
    pub unavailable_since_ts: Option<i64>,
    pub unavailable_reason: Option<String>,
    pub consecutive_failures: i64,
    pub bookmark: Option<String>,
}

/// A vehicle to poll: listed now, with a VIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledVehicle {
    pub vehicle_id: String,
    pub vin: String,
}

/// One fetched status.
#[derive(Debug, Clone)]
pub struct StatusFetch {
    pub vin: String,
    pub fetched_ts: i64,
    pub body: String,
    pub parsed: ParsedStatus,
}

/// What one status did.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRecorded {
    pub vin: String,
    /// A new `vehicle_status` row (else only `last_fetched_ts` moved).
    pub new_observation: bool,
    /// The vehicle's open state afterwards.
    pub state: Option<State>,
    pub events: Vec<derive::Event>,
    pub drive_ended: bool,
}

/// What some of one account's vehicles, finished in a poll round, write, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub statuses: Vec<StatusFetch>,
    /// (vin, trips)
    pub trips: Vec<(String, Vec<Trip>)>,
    /// (vin, alerts)
    pub alerts: Vec<(String, Vec<Alert>)>,
    /// (vin, observed_ts, days_before, km_before)
    pub maintenance: Vec<(String, i64, Option<i64>, Option<f64>)>,
    /// Bookkeeping rows, written last (vin, endpoint, book).
    pub books: Vec<(String, Endpoint, Book)>,
}

/// The bookkeeping rows (vin, endpoint, book) and open states (vin, state) of an account.
pub type BooksAndStates = (Vec<(String, Endpoint, Book)>, Vec<(String, State)>);

/// A vehicle's telemetry summary for `status`: (vin, soc, observed_ts, last_fetched_ts,
/// unavailable endpoints).
pub type VehicleSummary = (String, Option<f64>, Option<i64>, Option<i64>, Vec<String>);

fn sample(o: &Observation, ts: i64) -> Sample {
    Sample {
        ts,
        soc: o.soc,
        range_km: o.range_km,
        odometer_km: o.odometer_km,
        charging_status: o.charging_status.clone(),
        plugged: o.plugged,
        charging_rate_kmh: o.charging_rate_kmh,
        charging_mode: o.charging_mode.clone(),
        latitude: o.latitude,
        longitude: o.longitude,
        ignition: o.ignition.clone(),
        moving: o.moving,
        battery_capacity_wh: o.battery_capacity_wh,
    }
}

fn open_state(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
) -> rusqlite::Result<Option<OpenState>> {
    tx.prepare_cached(
        "SELECT state, started_ts FROM vehicle_states WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
    )?
    .query_row(params![account_id, vin], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })
    .optional()
    .map(|o| {
        o.and_then(|(s, started_ts)| {
            State::parse(&s).map(|state| OpenState { state, started_ts })
        })
    })
}

fn open_session(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
) -> rusqlite::Result<Option<Session>> {
    tx.prepare_cached(
        "SELECT started_ts, start_soc, end_soc, start_range_km, end_range_km, max_rate_kmh, charging_mode,
                latitude, longitude, odometer_km, energy_added_kwh
         FROM charging_sessions WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
    )?
    .query_row(params![account_id, vin], |r| {
        Ok(Session {
            started_ts: r.get(0)?,
            ended_ts: None,
            start_soc: r.get(1)?,
            end_soc: r.get(2)?,
            start_range_km: r.get(3)?,
            end_range_km: r.get(4)?,
            max_rate_kmh: r.get(5)?,
            charging_mode: r.get(6)?,
            latitude: r.get(7)?,
            longitude: r.get(8)?,
            odometer_km: r.get(9)?,
            energy_added_kwh: r.get(10)?,
            end_reason: None,
        })
    })
    .optional()
}

fn apply_changes(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
    c: &Changes,
) -> rusqlite::Result<()> {
    if let Some(at) = c.close_state_at {
        tx.prepare_cached(
            "UPDATE vehicle_states SET ended_ts = max(?3, started_ts) WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
        )?
        .execute(params![account_id, vin, at])?;
    }
    for s in &c.states {
        tx.prepare_cached(
            "INSERT INTO vehicle_states (account_id, vin, state, started_ts, ended_ts) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![account_id, vin, s.state.as_str(), s.started_ts, s.ended_ts])?;
    }
    let update = |s: &Session| -> rusqlite::Result<usize> {
        tx.prepare_cached(
            "UPDATE charging_sessions SET ended_ts = ?3, start_soc = ?4, end_soc = ?5, start_range_km = ?6,
                    end_range_km = ?7, max_rate_kmh = ?8, charging_mode = ?9, latitude = ?10, longitude = ?11,
                    odometer_km = ?12, energy_added_kwh = ?13, end_reason = ?14
             WHERE account_id = ?1 AND vin = ?2 AND ended_ts IS NULL",
        )?
        .execute(params![
            account_id,
            vin,
            s.ended_ts,
            s.start_soc,
            s.end_soc,
            s.start_range_km,
            s.end_range_km,
            s.max_rate_kmh,
            s.charging_mode,
            s.latitude,
            s.longitude,
            s.odometer_km,
            s.energy_added_kwh,
            s.end_reason
        ])
    };
    if let Some(s) = &c.session_close {
        update(s)?;
    }
    if let Some(s) = &c.session_update {
        update(s)?;
    }
    if let Some(s) = &c.session_open {
        tx.prepare_cached(
            "INSERT INTO charging_sessions (account_id, vin, started_ts, ended_ts, start_soc, end_soc, start_range_km,
                    end_range_km, max_rate_kmh, charging_mode, latitude, longitude, odometer_km, energy_added_kwh, end_reason)
             VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL)",
        )?
        .execute(params![
            account_id,
            vin,
            s.started_ts,
            s.start_soc,
            s.end_soc,
            s.start_range_km,
            s.end_range_km,
            s.max_rate_kmh,
            s.charging_mode,
            s.latitude,
            s.longitude,
            s.odometer_km,
            s.energy_added_kwh
        ])?;
    }
    Ok(())
}

fn record_status(
    tx: &Transaction<'_>,
    account_id: i64,
    f: &StatusFetch,
    gap_limit: i64,
) -> rusqlite::Result<StatusRecorded> {
    let hash = f.parsed.hash.to_vec();
    let latest: Option<(i64, Vec<u8>, i64, Option<f64>)> = tx
        .prepare_cached(
            "SELECT status_id, body_hash, observed_ts, soc FROM vehicle_status WHERE account_id = ?1 AND vin = ?2
             ORDER BY observed_ts DESC, status_id DESC LIMIT 1",
        )?
        .query_row(params![account_id, f.vin], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let o = &f.parsed.observation;
    // A body whose every block is dated ahead has no time we can believe: it is kept at the
    // newest time known (never after it, so it cannot shadow the reports that follow) and
    // derives nothing.
    let dated = derive::observation_time(&o.block_times, f.fetched_ts);
    let observed_ts = dated.unwrap_or_else(|| {
        latest
            .as_ref()
            .map_or(f.fetched_ts, |(_, _, t, _)| (*t).min(f.fetched_ts))
    });
    // The same observation as one already recorded only moves its `last_fetched_ts`: usually
    // the newest (the API keeps returning the last report), or an older one a server sends
    // again (its block times are older than the newest observation's), which must not become a
    // new row at every poll either.
    let same = match &latest {
        Some((id, h, _, _)) if *h == hash => Some(*id),
        _ => tx
            .prepare_cached(
                "SELECT status_id FROM vehicle_status
                 WHERE vin = ?2 AND observed_ts = ?3 AND account_id = ?1 AND body_hash = ?4
                 ORDER BY status_id DESC LIMIT 1",
            )?
            .query_row(params![account_id, f.vin, observed_ts, hash], |r| r.get(0))
            .optional()?,
    };
    if let Some(id) = same {
        tx.prepare_cached("UPDATE vehicle_status SET last_fetched_ts = max(last_fetched_ts, ?2) WHERE status_id = ?1")?
            .execute(params![id, f.fetched_ts])?;
        if latest.as_ref().is_some_and(|(l, _, _, _)| *l != id) {
            // Not the newest: retention may have pruned its body; store it again if so.
            store_body(tx, account_id, f, &hash, None)?;
        }
        return Ok(StatusRecorded {
            vin: f.vin.clone(),
            new_observation: false,
            state: open_state(tx, account_id, &f.vin)?.map(|s| s.state),
            events: Vec::new(),
            drive_ended: false,
        });
    }
    store_body(
        tx,
        account_id,
        f,
        &hash,
        latest.as_ref().map(|(_, h, _, _)| h.as_slice()),
    )?;
    let before = Before {
        last_ts: latest.as_ref().map(|(_, _, t, _)| *t),
        last_soc: latest.as_ref().and_then(|(_, _, _, soc)| *soc),
        state: open_state(tx, account_id, &f.vin)?,
        session: open_session(tx, account_id, &f.vin)?,
    };
    let observed = sample(o, observed_ts);
    let changes = if dated.is_some() {
        derive::derive(&before, &observed, gap_limit)
    } else {
        derive::Changes::default()
    };
    apply_changes(tx, account_id, &f.vin, &changes)?;
    tx.prepare_cached(
        "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, soc, range_km,
                fuel_pct, fuel_range_km, odometer_km, charging_status, plugged, charging_rate_kmh, charging_mode,
                charging_remaining_min, latitude, longitude, position_ts, ignition, moving, speed_kmh, outside_temp_c,
                doors_locked, body_hash)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )?
    .execute(params![
        account_id,
        f.vin,
        observed_ts,
        f.fetched_ts,
        o.soc,
        o.range_km,
        o.fuel_pct,
        o.fuel_range_km,
        o.odometer_km,
        o.charging_status,
        o.plugged,
        o.charging_rate_kmh,
        o.charging_mode,
        o.charging_remaining_min,
        o.latitude,
        o.longitude,
        // A position dated ahead (2099) is a wrong date: unknown.
        o.position_ts
            .filter(|t| *t <= f.fetched_ts + derive::MAX_FUTURE_SKEW_SECS),
        o.ignition,
        o.moving,
        o.speed_kmh,
        o.outside_temp_c,
        o.doors_locked,
        hash
    ])?;
    let after = derive::apply(&before, &changes, &observed);
    Ok(StatusRecorded {
        vin: f.vin.clone(),
        new_observation: true,
        state: after.state.map(|s| s.state),
        drive_ended: changes.drive_ended(),
        events: changes.events,
    })
}

/// Stores a body not yet in `status_bodies`, as a base or as a zlib stream against the vehicle's
/// latest body `previous` (the body of its newest observation; src/store/bodies.rs).
fn store_body(
    tx: &Transaction<'_>,
    account_id: i64,
    f: &StatusFetch,
    hash: &[u8],
    previous: Option<&[u8]>,
) -> rusqlite::Result<()> {
    let known: Option<i64> = tx
        .prepare_cached(
            "SELECT body_id FROM status_bodies WHERE account_id = ?1 AND body_hash = ?2",
        )?
        .query_row(params![account_id, hash], |r| r.get(0))
        .optional()?;
    if let Some(id) = known {
        return repair_if_damaged(tx, id, f, hash);
    }
    let anchor = match previous {
        Some(h) => anchor(tx, account_id, &f.vin, h)?,
        None => None,
    };
    let (base_id, body): (Option<i64>, rusqlite::types::Value) =
        match bodies::encode(anchor.as_ref(), &f.body, f.fetched_ts) {
            bodies::Stored::Base => (None, f.body.clone().into()),
            bodies::Stored::Delta { base_id, blob, .. } => (Some(base_id), blob.into()),
        };
    tx.prepare_cached(
        "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, base_id, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        hash,
        account_id,
        f.vin,
        f.fetched_ts,
        base_id,
        body
    ])?;
    Ok(())
}

/// A body fetched again is checked against its stored copy (this path is rare: a body equal to
/// an older one). A stored copy that cannot be read, or reads as another body, is replaced by
/// the text just fetched, as a base; the bodies stored against it read again too when the server
/// sent the same bytes.
fn repair_if_damaged(
    tx: &Transaction<'_>,
    body_id: i64,
    f: &StatusFetch,
    hash: &[u8],
) -> rusqlite::Result<()> {
    let problem = match read_chain(tx, body_id) {
        Ok(a) => match crate::telemetry::status::parse(a.text.as_bytes()) {
            Ok(p) if p.hash[..] == *hash => return Ok(()),
            Ok(_) => "it reads as another body".to_owned(),
            Err(e) => e.to_string(),
        },
        Err(BodyReadError::Sqlite(e)) => return Err(e),
        Err(BodyReadError::Body(e)) => e.to_string(),
    };
    let stored = tx
        .prepare_cached("UPDATE status_bodies SET base_id = NULL, body = ?2 WHERE body_id = ?1")?
        .execute(params![body_id, f.body]);
    match stored {
        Ok(_) => tracing::warn!(
            vin = %crate::redact::printable(&f.vin),
            "stored status body {body_id} was damaged ({problem}); stored again from the body just fetched"
        ),
        // A constraint refusing the text (a CHECK of a damaged schema) leaves the row as it
        // was; any other error (disk full, I/O) fails the write as every other error does.
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            tracing::warn!(
                vin = %crate::redact::printable(&f.vin),
                "stored status body {body_id} is damaged ({problem}) and could not be replaced: {e}"
            );
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The vehicle's body `hash` as an anchor for its next body. `None` when it is not there or
/// cannot be read (a damaged row): the next body then starts a new base instead of failing the
/// write.
fn anchor(
    conn: &rusqlite::Connection,
    account_id: i64,
    vin: &str,
    hash: &[u8],
) -> rusqlite::Result<Option<bodies::Anchor>> {
    let id: Option<i64> = conn
        .prepare_cached(
            "SELECT body_id FROM status_bodies WHERE account_id = ?1 AND body_hash = ?2 AND vin = ?3",
        )?
        .query_row(params![account_id, hash, vin], |r| r.get(0))
        .optional()?;
    let Some(id) = id else {
        return Ok(None);
    };
    match read_chain(conn, id) {
        Ok(a) => Ok(Some(a)),
        Err(BodyReadError::Sqlite(e)) => Err(e),
        Err(BodyReadError::Body(e)) => {
            tracing::warn!(error = %e, "a stored status body cannot be read; the vehicle's next body starts a new base");
            Ok(None)
        }
    }
}

/// Longest chain a reader follows: [`bodies::MAX_CHAIN`] is what this version writes; the margin
/// only guards against a loop in a damaged file.
const MAX_WALK: usize = 64;

/// Body `body_id` decoded, with its depth and base: the chain of `base_id`s is walked up to its
/// base, then inflated down.
fn read_chain(conn: &rusqlite::Connection, body_id: i64) -> Result<bodies::Anchor, BodyReadError> {
    type Row = (i64, Option<i64>, rusqlite::types::Value, i64);
    let mut chain: Vec<Row> = Vec::new();
    let mut next = Some(body_id);
    while let Some(id) = next {
        if chain.len() >= MAX_WALK {
            return Err(BodyReadError::Body(bodies::BodyError {
                body_id,
                reason: format!("more than {MAX_WALK} bodies between it and its base"),
            }));
        }
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT body_id, base_id, body, first_fetched_ts FROM status_bodies WHERE body_id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some(row) = row else {
            return Err(BodyReadError::Body(bodies::BodyError {
                body_id,
                reason: format!("body {id} of its chain is missing"),
            }));
        };
        next = row.1;
        chain.push(row);
    }
    let mut text: Option<String> = None;
    let mut base: Option<bodies::Base> = None;
    for (id, _, stored, ts) in chain.iter().rev() {
        let bytes: &[u8] = match stored {
            rusqlite::types::Value::Text(t) => t.as_bytes(),
            rusqlite::types::Value::Blob(b) => b,
            _ => {
                return Err(BodyReadError::Body(bodies::BodyError {
                    body_id: *id,
                    reason: "neither text nor blob".into(),
                }));
            }
        };
        let t = bodies::decode(*id, bytes, text.as_deref())?;
        if base.is_none() {
            base = Some((*id, t.clone(), *ts));
        }
        text = Some(t);
    }
    match (text, base) {
        (Some(text), Some(base)) => Ok(bodies::Anchor {
            body_id,
            text,
            depth: u32::try_from(chain.len() - 1).unwrap_or(u32::MAX),
            base,
        }),
        _ => Err(BodyReadError::Body(bodies::BodyError {
            body_id,
            reason: "no chain".into(),
        })),
    }
}

/// The JSON text of account `account_id`'s body `hash`, decoded from its stored form (`None` if
/// there is none).
pub fn status_body_text(
    conn: &rusqlite::Connection,
    account_id: i64,
    hash: &[u8],
) -> Result<Option<String>, BodyReadError> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT body_id FROM status_bodies WHERE account_id = ?1 AND body_hash = ?2",
            params![account_id, hash],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        None => Ok(None),
        Some(id) => Ok(Some(read_chain(conn, id)?.text)),
    }
}

/// Why a stored body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Body(#[from] bodies::BodyError),
}

fn upsert_trip(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
    t: &Trip,
) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(
            "INSERT INTO trips (account_id, vin, trip_id, started_ts, ended_ts, distance_km, duration_s, start_odometer_km,
                    start_soc, end_soc, electric_consumption, electric_avg_consumption, fuel_consumption, fuel_avg_consumption,
                    avg_speed_kmh, max_speed_kmh, start_latitude, start_longitude, end_latitude, end_longitude, done, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
             ON CONFLICT (account_id, vin, trip_id) DO UPDATE SET started_ts = excluded.started_ts, ended_ts = excluded.ended_ts,
                    distance_km = excluded.distance_km, duration_s = excluded.duration_s,
                    start_odometer_km = excluded.start_odometer_km, start_soc = excluded.start_soc, end_soc = excluded.end_soc,
                    electric_consumption = excluded.electric_consumption,
                    electric_avg_consumption = excluded.electric_avg_consumption,
                    fuel_consumption = excluded.fuel_consumption, fuel_avg_consumption = excluded.fuel_avg_consumption,
                    avg_speed_kmh = excluded.avg_speed_kmh, max_speed_kmh = excluded.max_speed_kmh,
                    start_latitude = excluded.start_latitude, start_longitude = excluded.start_longitude,
                    end_latitude = excluded.end_latitude, end_longitude = excluded.end_longitude, done = excluded.done,
                    data = excluded.data
             WHERE trips.data IS NOT excluded.data",
        )?
        .execute(params![
            account_id,
            vin,
            t.trip_id,
            t.started_ts,
            t.ended_ts,
            t.distance_km,
            t.duration_s,
            t.start_odometer_km,
            t.start_soc,
            t.end_soc,
            t.electric_consumption,
            t.electric_avg_consumption,
            t.fuel_consumption,
            t.fuel_avg_consumption,
            t.avg_speed_kmh,
            t.max_speed_kmh,
            t.start_latitude,
            t.start_longitude,
            t.end_latitude,
            t.end_longitude,
            t.done,
            t.data
        ])?;
    Ok(n > 0)
}

fn upsert_alert(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
    a: &Alert,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO vehicle_alerts (account_id, vin, alert_id, type, severity, active, started_ts, ended_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (account_id, vin, alert_id) DO UPDATE SET type = excluded.type, severity = excluded.severity,
                active = excluded.active, started_ts = excluded.started_ts, ended_ts = excluded.ended_ts",
    )?
    .execute(params![account_id, vin, a.alert_id, a.kind, a.severity, a.active, a.started_ts, a.ended_ts])?;
    Ok(())
}

fn record_maintenance(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
    observed_ts: i64,
    days: Option<i64>,
    km: Option<f64>,
) -> rusqlite::Result<()> {
    let last: Option<(Option<i64>, Option<f64>)> = tx
        .prepare_cached(
            "SELECT days_before, km_before FROM maintenance WHERE account_id = ?1 AND vin = ?2
             ORDER BY observed_ts DESC, maintenance_id DESC LIMIT 1",
        )?
        .query_row(params![account_id, vin], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if last != Some((days, km)) {
        tx.prepare_cached(
            "INSERT INTO maintenance (account_id, vin, observed_ts, days_before, km_before) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![account_id, vin, observed_ts, days, km])?;
    }
    Ok(())
}

fn save_book(
    tx: &Transaction<'_>,
    account_id: i64,
    vin: &str,
    ep: Endpoint,
    b: &Book,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO telemetry_endpoints (account_id, vin, endpoint, last_attempt_ts, last_success_ts, next_due_ts,
                unavailable_since_ts, unavailable_reason, consecutive_failures, bookmark)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (account_id, vin, endpoint) DO UPDATE SET last_attempt_ts = excluded.last_attempt_ts,
                last_success_ts = excluded.last_success_ts, next_due_ts = excluded.next_due_ts,
                unavailable_since_ts = excluded.unavailable_since_ts, unavailable_reason = excluded.unavailable_reason,
                consecutive_failures = excluded.consecutive_failures, bookmark = excluded.bookmark",
    )?
    .execute(params![
        account_id,
        vin,
        ep.as_str(),
        b.last_attempt_ts,
        b.last_success_ts,
        b.next_due_ts,
        b.unavailable_since_ts,
        b.unavailable_reason,
        b.consecutive_failures,
        b.bookmark
    ])?;
    Ok(())
}

impl Db {
    /// The account's vehicles to poll: listed now (`removed_at IS NULL`) and with a VIN.
    pub fn telemetry_vehicles(&self, account_id: i64) -> Result<Vec<PolledVehicle>, DbError> {
        let run = || -> rusqlite::Result<Vec<PolledVehicle>> {
            let mut st = self.conn.prepare_cached(
                "SELECT vehicle_id, vin FROM vehicles WHERE account_id = ?1 AND removed_at IS NULL AND vin IS NOT NULL
                 ORDER BY vin",
            )?;
            st.query_map([account_id], |r| {
                Ok(PolledVehicle {
                    vehicle_id: r.get(0)?,
                    vin: r.get(1)?,
                })
            })?
            .collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The account's bookkeeping rows and each vehicle's open state: (vin, endpoint, book) and
    /// (vin, state).
    pub fn telemetry_books(&self, account_id: i64) -> Result<BooksAndStates, DbError> {
        let run = || -> rusqlite::Result<_> {
            let mut st = self.conn.prepare_cached(
                "SELECT vin, endpoint, last_attempt_ts, last_success_ts, next_due_ts, unavailable_since_ts,
                        unavailable_reason, consecutive_failures, bookmark
                 FROM telemetry_endpoints WHERE account_id = ?1",
            )?;
            let books = st
                .query_map([account_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        Book {
                            last_attempt_ts: r.get(2)?,
                            last_success_ts: r.get(3)?,
                            next_due_ts: r.get(4)?,
                            unavailable_since_ts: r.get(5)?,
                            unavailable_reason: r.get(6)?,
                            consecutive_failures: r.get(7)?,
                            bookmark: r.get(8)?,
                        },
                    ))
                })?
                .filter_map(|r| match r {
                    Ok((vin, ep, b)) => Endpoint::parse(&ep).map(|e| Ok((vin, e, b))),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = self.conn.prepare_cached(
                "SELECT vin, state FROM vehicle_states WHERE account_id = ?1 AND ended_ts IS NULL",
            )?;
            let states = st
                .query_map([account_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .filter_map(|r| match r {
                    Ok((vin, s)) => State::parse(&s).map(|s| Ok((vin, s))),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((books, states))
        };
        run().map_err(|e| self.err(e))
    }

    /// Writes a batch of one account's round in one transaction; what each status did, in order.
    pub fn write_telemetry(
        &mut self,
        account_id: i64,
        batch: &Batch,
        gap_limit: i64,
    ) -> Result<Vec<StatusRecorded>, DbError> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(batch.statuses.len());
            for f in &batch.statuses {
                out.push(record_status(tx, account_id, f, gap_limit)?);
                crate::faultpoint::hit("telemetry_mid_batch");
            }
            for (vin, trips) in &batch.trips {
                for t in trips {
                    upsert_trip(tx, account_id, vin, t)?;
                }
            }
            for (vin, alerts) in &batch.alerts {
                for a in alerts {
                    upsert_alert(tx, account_id, vin, a)?;
                }
            }
            for (vin, ts, days, km) in &batch.maintenance {
                record_maintenance(tx, account_id, vin, *ts, *days, *km)?;
            }
            for (vin, ep, b) in &batch.books {
                save_book(tx, account_id, vin, *ep, b)?;
            }
            Ok(out)
        })
    }
}

/// Per vehicle of an account, for `status`: VIN, SoC, observed_ts and last_fetched_ts of the
/// latest observation, and the endpoints marked unavailable.
pub fn vehicle_summaries(
    conn: &rusqlite::Connection,
    account: &str,
) -> rusqlite::Result<Vec<VehicleSummary>> {
    let mut st = conn.prepare(
        "SELECT v.vin,
                (SELECT s.soc FROM vehicle_status s WHERE s.account_id = v.account_id AND s.vin = v.vin
                 ORDER BY s.observed_ts DESC, s.status_id DESC LIMIT 1),
                (SELECT max(s.observed_ts) FROM vehicle_status s WHERE s.account_id = v.account_id AND s.vin = v.vin),
                (SELECT max(s.last_fetched_ts) FROM vehicle_status s WHERE s.account_id = v.account_id AND s.vin = v.vin),
                (SELECT group_concat(e.endpoint, ',') FROM telemetry_endpoints e
                 WHERE e.account_id = v.account_id AND e.vin = v.vin AND e.unavailable_since_ts IS NOT NULL)
         FROM vehicles v JOIN accounts a USING (account_id)
         WHERE a.name = ?1 AND v.removed_at IS NULL AND v.vin IS NOT NULL ORDER BY v.vin",
    )?;
    st.query_map([account], |r| {
        let un: Option<String> = r.get(4)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            un.map(|u| u.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        ))
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::status;
    use serde_json::json;

    fn db() -> (tempfile::TempDir, Db, i64) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let id = db.account_id("a", "peugeot").unwrap();
        (dir, db, id)
    }

    fn fetch(vin: &str, at: i64, body: serde_json::Value) -> StatusFetch {
        let text = body.to_string();
        StatusFetch {
            vin: vin.into(),
            fetched_ts: at,
            parsed: status::parse(text.as_bytes()).unwrap(),
            body: text,
        }
    }

    fn body(ts: &str, soc: f64, status: &str) -> serde_json::Value {
        json!({"createdAt": ts, "energies": [{"createdAt": ts, "type": "Electric", "level": soc, "autonomy": 100,
               "extension": {"electric": {"battery": {"load": {"capacity": 40000}}, "charging": {"status": status, "plugged": true, "chargingRate": 12}}}}]})
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A body of a realistic size (links with the long vehicle id, several blocks).
    fn long_body(ts: &str, soc: f64) -> serde_json::Value {
        let id = "ab12".repeat(48);
        json!({"createdAt": ts, "updatedAt": ts,
               "_links": {"self": {"href": format!("https://api.example/user/vehicles/{id}/status")},
                          "vehicle": {"href": format!("https://api.example/user/vehicles/{id}")}},
               "odometer": {"createdAt": ts, "mileage": 12345.6},
               "environment": {"air": {"createdAt": ts, "temp": 11.5}, "luminosity": {"createdAt": ts, "day": true}},
               "energies": [{"createdAt": ts, "type": "Electric", "level": soc, "autonomy": 150,
                   "extension": {"electric": {"battery": {"load": {"capacity": 40000, "residual": 20000}},
                   "charging": {"status": "InProgress", "plugged": true, "chargingRate": 12, "chargingMode": "Slow"}}}}]})
    }

    /// Issue 22, defect 4: one block dated a day ahead (`alarm.status.createdAt`) must not
    /// become the observation's time, or every later report looks older than it.
    #[test]
    fn a_block_dated_a_day_ahead_does_not_pin_the_vehicles_time() {
        let (_d, mut db, a) = db();
        let t0 = 1_767_261_600; // 2026-01-01T10:00:00Z
        let mut parked = body(&iso(t0), 40.0, "Disconnected");
        parked["alarm"] =
            json!({"status": {"createdAt": iso(t0 + 86_400), "activation": "Deactivated"}});
        let mut sent = vec![(t0 + 30, parked)];
        for (dt, soc, st) in [
            (600, 45.0, "InProgress"),
            (1200, 55.0, "InProgress"),
            (1800, 60.0, "Finished"),
        ] {
            sent.push((t0 + dt + 30, body(&iso(t0 + dt), soc, st)));
        }
        for (at, b) in sent {
            let batch = Batch {
                statuses: vec![fetch("VIN1", at, b)],
                ..Batch::default()
            };
            db.write_telemetry(a, &batch, 3600).unwrap();
        }
        let newest: i64 = count(&db, "SELECT max(observed_ts) FROM vehicle_status");
        assert_eq!(
            newest,
            t0 + 1800,
            "the newest observation is the last report, not the future block"
        );
        let (start, end): (i64, Option<i64>) = db
            .conn()
            .query_row(
                "SELECT started_ts, ended_ts FROM charging_sessions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((start, end), (t0 + 600, Some(t0 + 1800)));
        db.conn()
            .execute("INSERT INTO vehicles (account_id, vin, vehicle_id, first_seen_at, listed_until, data) VALUES (?1, 'VIN1', 'v1', 'x', 'x', '{}')", [a])
            .unwrap();
        let s = vehicle_summaries(db.conn(), "a").unwrap();
        assert_eq!(
            (s[0].1, s[0].2),
            (Some(60.0), Some(t0 + 1800)),
            "status shows the last SoC and its time"
        );
    }

    /// Issue 22, second adversarial review (F1, F1b): a block dated ahead (an energy block a day
    /// on, a position from 2099) gave the whole body the fetch time, hours after the reports that
    /// followed, which then looked late and derived nothing: one session at the fetch instants,
    /// the next real charge lost. Now the other blocks date the body; a body dated ahead in
    /// every block derives nothing and shadows nothing; the 2099 position is not stored.
    #[test]
    fn blocks_dated_ahead_neither_retime_a_body_nor_hide_the_reports_after_it() {
        let (_d, mut db, a) = db();
        let t0 = 1_767_261_600; // 2026-01-01T10:00:00Z
        let fetched = t0 + 4 * 3600; // the reports reach us hours later, a minute apart
        let mut with_2099 = body(&iso(t0 + 600), 55.0, "InProgress");
        with_2099["lastPosition"] = json!({"type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
            "properties": {"createdAt": "2099-01-01T00:00:00Z", "type": "Acquire"}});
        let mut energy_ahead = body(&iso(t0 + 1200), 60.0, "InProgress");
        energy_ahead["energies"][0]["createdAt"] = json!(iso(t0 + 1200 + 86_400));
        let all_ahead = body(&iso(t0 + 2400 + 86_400), 62.0, "Disconnected");
        let seq = [
            body(&iso(t0), 50.0, "Disconnected"),
            with_2099,
            energy_ahead,
            body(&iso(t0 + 1800), 62.0, "Disconnected"),
            all_ahead,
            body(&iso(t0 + 3000), 63.0, "InProgress"),
            body(&iso(t0 + 3600), 70.0, "Disconnected"),
        ];
        for (i, b) in seq.into_iter().enumerate() {
            let batch = Batch {
                statuses: vec![fetch("VIN1", fetched + 60 * i as i64, b)],
                ..Batch::default()
            };
            db.write_telemetry(a, &batch, 3600).unwrap();
        }
        type Row = (i64, Option<i64>);
        let sessions: Vec<Row> = db
            .conn()
            .prepare("SELECT started_ts, ended_ts FROM charging_sessions ORDER BY started_ts")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            sessions,
            vec![(t0 + 600, Some(t0 + 1800)), (t0 + 3000, Some(t0 + 3600))]
        );
        assert_eq!(
            count(&db, "SELECT max(observed_ts) FROM vehicle_status"),
            t0 + 3600,
            "no body took a fetch time"
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM vehicle_status WHERE position_ts > 4000000000"
            ),
            0,
            "the 2099 position is not a fact"
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL AND state = 'parked'"
            ),
            1
        );
    }

    /// Issue 22, defect 3, through the parser and the store: a body without `energies`/`energy`
    /// in the middle of a charge leaves one session, with the energy of the whole charge.
    #[test]
    fn a_partial_body_mid_charge_does_not_split_the_session() {
        let (_d, mut db, a) = db();
        let partial = json!({"createdAt": "2026-01-01T10:20:00Z",
            "lastPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85, 35.0]},
                             "properties": {"createdAt": "2026-01-01T10:20:00Z", "type": "Acquire"}},
            "odometer": {"createdAt": "2026-01-01T10:20:00Z", "mileage": 12000.5},
            "ignition": {"createdAt": "2026-01-01T10:20:00Z", "type": "Stop"}});
        let seq = [
            body("2026-01-01T10:10:00Z", 40.0, "InProgress"),
            partial,
            body("2026-01-01T10:30:00Z", 50.0, "InProgress"),
            body("2026-01-01T10:40:00Z", 60.0, "Finished"),
        ];
        for (i, b) in seq.into_iter().enumerate() {
            let batch = Batch {
                statuses: vec![fetch("VIN1", 1_767_262_260 + 600 * i as i64, b)],
                ..Batch::default()
            };
            db.write_telemetry(a, &batch, 3600).unwrap();
        }
        type Row = (i64, Option<i64>, Option<String>, Option<f64>);
        let rows: Vec<Row> = db
            .conn()
            .prepare(
                "SELECT started_ts, ended_ts, end_reason, energy_added_kwh FROM charging_sessions",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let t = 1_767_262_200; // 10:10
        assert_eq!(
            rows,
            vec![(t, Some(t + 1800), Some("finished".into()), Some(8.0))]
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM vehicle_states WHERE state = 'charging'"
            ),
            1
        );
    }

    /// A `charging_sessions` row (start, end, reason) and a `vehicle_states` row (state, start,
    /// end), as the late-body tests compare them.
    type SessionRow = (i64, Option<i64>, Option<String>);
    type StateRowT = (String, i64, Option<i64>);
    type Written = (tempfile::TempDir, Db, Vec<SessionRow>, Vec<StateRowT>);

    /// Writes `(fetched_ts, body)` one poll at a time; returns the sessions and the states.
    fn write_polls(polls: Vec<(i64, serde_json::Value)>) -> Written {
        let (d, mut db, a) = db();
        for (at, b) in polls {
            write_one(&mut db, a, fetch("VIN1", at, b));
        }
        let sessions = db
            .conn()
            .prepare("SELECT started_ts, ended_ts, end_reason FROM charging_sessions ORDER BY started_ts")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let states = db
            .conn()
            .prepare("SELECT state, started_ts, ended_ts FROM vehicle_states ORDER BY started_ts, state_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (d, db, sessions, states)
    }

    fn iso(t: i64) -> String {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    /// Issue 22, defect 2, through the parser and the store: parked, charging (T+600, T+1200),
    /// finished (T+1800); the report of T+1500 (still charging) arrives late, then the finished
    /// one again, then unplugged (T+2400). One session, 600-1800 finished; the late report is
    /// in the status series at its own time; no charging state after 1800.
    #[test]
    fn a_late_body_is_stored_at_its_own_time_and_invents_no_session() {
        let t = 1_767_261_600; // 2026-01-01T10:00:00Z
        let mut unplugged = body(&iso(t + 2400), 60.0, "Disconnected");
        unplugged["energies"][0]["extension"]["electric"]["charging"]["plugged"] = json!(false);
        let polls = vec![
            (t + 30, body(&iso(t), 40.0, "Disconnected")),
            (t + 630, body(&iso(t + 600), 45.0, "InProgress")),
            (t + 1230, body(&iso(t + 1200), 55.0, "InProgress")),
            (t + 1830, body(&iso(t + 1800), 60.0, "Finished")),
            (t + 1890, body(&iso(t + 1500), 58.0, "InProgress")),
            (t + 1950, body(&iso(t + 1800), 60.0, "Finished")),
            (t + 2430, unplugged),
        ];
        let (_d, db, sessions, states) = write_polls(polls);
        assert_eq!(
            sessions,
            vec![(t + 600, Some(t + 1800), Some("finished".into()))]
        );
        assert_eq!(
            states,
            vec![
                ("parked".into(), t, Some(t + 600)),
                ("charging".into(), t + 600, Some(t + 1800)),
                ("parked".into(), t + 1800, None),
            ]
        );
        let late: (i64, Option<String>) = db
            .conn()
            .query_row(
                "SELECT count(*), max(charging_status) FROM vehicle_status WHERE observed_ts = ?1",
                [t + 1500],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            late,
            (1, Some("InProgress".into())),
            "stored at its own time"
        );
        assert_eq!(count(&db, "SELECT count(*) FROM vehicle_status"), 6);
    }

    /// Issue 22, defect 2: a late charging report after the car parked opens no session; a late
    /// finished report mid-charge closes none.
    #[test]
    fn a_late_body_neither_opens_nor_closes_a_session() {
        let t = 1_767_261_600;
        let (_d, _db, sessions, states) = write_polls(vec![
            (t + 630, body(&iso(t + 600), 40.0, "Disconnected")),
            (t + 1230, body(&iso(t + 1200), 40.0, "Disconnected")),
            (t + 1290, body(&iso(t + 900), 41.0, "InProgress")),
        ]);
        assert_eq!(sessions, vec![], "would open");
        assert_eq!(states, vec![("parked".into(), t + 600, None)], "would open");
        let (_d, _db, sessions, states) = write_polls(vec![
            (t + 630, body(&iso(t + 600), 40.0, "InProgress")),
            (t + 1230, body(&iso(t + 1200), 50.0, "InProgress")),
            (t + 1290, body(&iso(t + 900), 45.0, "Finished")),
            (t + 1830, body(&iso(t + 1800), 60.0, "InProgress")),
        ]);
        assert_eq!(sessions, vec![(t + 600, None, None)], "would close");
        assert_eq!(
            states,
            vec![("charging".into(), t + 600, None)],
            "would close"
        );
    }

    #[test]
    fn bodies_are_stored_as_deltas_against_a_base_and_read_back_exactly() {
        let (_d, mut db, a) = db();
        let mut sent = Vec::new();
        for i in 0..30 {
            let f = fetch(
                "VIN1",
                1000 + i * 120,
                long_body(&format!("2026-01-01T10:{:02}:00Z", i * 2), 40.0 + i as f64),
            );
            sent.push((f.parsed.hash, f.body.clone()));
            db.write_telemetry(
                a,
                &Batch {
                    statuses: vec![f],
                    ..Batch::default()
                },
                3600,
            )
            .unwrap();
        }
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM status_bodies WHERE base_id IS NULL"
            ),
            1
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM status_bodies WHERE base_id IS NOT NULL"
            ),
            29
        );
        let text_len = sent[1].1.len() as i64;
        let delta_len = count(
            &db,
            "SELECT max(length(body)) FROM status_bodies WHERE base_id IS NOT NULL",
        );
        assert!(
            delta_len * 3 < text_len,
            "delta {delta_len} vs text {text_len}"
        );
        for (hash, text) in &sent {
            assert_eq!(
                status_body_text(db.conn(), a, hash).unwrap().as_deref(),
                Some(text.as_str())
            );
        }
        // Most bodies are stored against the body before them, in chains of at most MAX_CHAIN.
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM status_bodies d JOIN status_bodies p ON p.body_id = d.base_id
                 WHERE p.base_id IS NOT NULL"
            ),
            29 - 29 / i64::from(bodies::MAX_CHAIN) - 1
        );
        let deepest = (1..=30)
            .map(|id| read_chain(db.conn(), id).unwrap().depth)
            .max();
        assert_eq!(deepest, Some(bodies::MAX_CHAIN));
        // Another account's view of the same car keeps its own copy: moving or removing one
        // account never takes the other's bodies.
        let b = db.account_id("b", "peugeot").unwrap();
        let again = fetch("VIN1", 99_999, serde_json::from_str(&sent[5].1).unwrap());
        db.write_telemetry(
            b,
            &Batch {
                statuses: vec![again],
                ..Batch::default()
            },
            3600,
        )
        .unwrap();
        assert_eq!(
            status_body_text(db.conn(), b, &sent[5].0)
                .unwrap()
                .as_deref(),
            Some(sent[5].1.as_str())
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM status_bodies WHERE account_id = 2"
            ),
            1
        );
        // A week later the vehicle starts a new base.
        let late = fetch(
            "VIN1",
            1000 + bodies::BASE_MAX_AGE + 1,
            long_body("2026-01-08T10:00:00Z", 80.0),
        );
        db.write_telemetry(
            a,
            &Batch {
                statuses: vec![late],
                ..Batch::default()
            },
            3600,
        )
        .unwrap();
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM status_bodies WHERE account_id = 1 AND base_id IS NULL"
            ),
            2
        );
    }

    #[test]
    fn a_damaged_body_in_the_chain_makes_the_next_body_a_base_not_a_failed_write() {
        let (_d, mut db, a) = db();
        let write = |db: &mut Db, i: i64| {
            let f = fetch(
                "VIN1",
                1000 + i * 120,
                long_body(&format!("2026-01-01T10:{:02}:00Z", i * 2), 40.0 + i as f64),
            );
            let hash = f.parsed.hash;
            db.write_telemetry(
                a,
                &Batch {
                    statuses: vec![f],
                    ..Batch::default()
                },
                3600,
            )
            .map(|_| hash)
        };
        for i in 0..3 {
            write(&mut db, i).unwrap();
        }
        db.conn()
            .execute(
                "UPDATE status_bodies SET body = x'78bb0000' WHERE body_id = 2",
                [],
            )
            .unwrap();
        let hash = write(&mut db, 3).unwrap();
        let (base_id, text): (Option<i64>, String) = db
            .conn()
            .query_row(
                "SELECT base_id, body FROM status_bodies WHERE body_hash = ?1",
                [&hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(base_id, None);
        assert_eq!(status_body_text(db.conn(), a, &hash).unwrap(), Some(text));
        let e = read_chain(db.conn(), 3).unwrap_err();
        assert!(e.to_string().starts_with("status body 2: "), "{e}");
    }

    fn write_one(db: &mut Db, a: i64, f: StatusFetch) -> StatusRecorded {
        let mut r = db
            .write_telemetry(
                a,
                &Batch {
                    statuses: vec![f],
                    ..Batch::default()
                },
                3600,
            )
            .unwrap();
        r.pop().unwrap()
    }

    #[test]
    fn an_older_observation_sent_again_and_again_is_one_row_not_one_per_poll() {
        // Fetched a minute after the newest report (2026-01-01T10:00:00Z).
        const T: i64 = 1_767_261_660;
        let (_d, mut d, a) = db();
        let newest = long_body("2026-01-01T10:00:00Z", 50.0);
        let stale = long_body("2020-01-01T10:00:00Z", 40.0);
        assert!(write_one(&mut d, a, fetch("VIN1", T, newest)).new_observation);
        // A server sends an older report, then keeps sending it.
        assert!(write_one(&mut d, a, fetch("VIN1", T + 120, stale.clone())).new_observation);
        for i in 2..6 {
            let r = write_one(&mut d, a, fetch("VIN1", T + i * 120, stale.clone()));
            assert!(!r.new_observation, "poll {i}");
        }
        assert_eq!(count(&d, "SELECT count(*) FROM vehicle_status"), 2);
        assert_eq!(
            count(
                &d,
                "SELECT last_fetched_ts FROM vehicle_status ORDER BY observed_ts LIMIT 1"
            ),
            T + 600
        );
    }

    #[test]
    fn the_cars_report_sent_again_after_a_body_without_block_times_is_not_a_new_row() {
        // A body without block times is observed at its fetch time, later than the car's own
        // report: the report sent again after it is still the same observation.
        let (_d, mut d, a) = db();
        let at = status::ts("2026-01-01T10:00:00Z").unwrap();
        let report = long_body("2026-01-01T10:00:00Z", 50.0);
        write_one(&mut d, a, fetch("VIN1", at + 60, report.clone()));
        write_one(
            &mut d,
            a,
            fetch("VIN1", at + 180, json!({"note": "no block times"})),
        );
        assert_eq!(
            count(&d, "SELECT max(observed_ts) FROM vehicle_status"),
            at + 180,
            "the body without block times is the newest observation"
        );
        for i in 2..5 {
            let r = write_one(&mut d, a, fetch("VIN1", at + 60 + i * 120, report.clone()));
            assert!(!r.new_observation, "poll {i}");
        }
        assert_eq!(count(&d, "SELECT count(*) FROM vehicle_status"), 2);
    }

    #[test]
    fn a_damaged_body_sent_again_is_stored_again_and_its_chain_reads_again() {
        let (_d, mut d, a) = db();
        let first = fetch("VIN1", 1000, long_body("2026-01-01T10:00:00Z", 50.0));
        let second = fetch("VIN1", 1120, long_body("2026-01-01T10:02:00Z", 51.0));
        let (h1, t1) = (first.parsed.hash, first.body.clone());
        let (h2, t2) = (second.parsed.hash, second.body.clone());
        write_one(&mut d, a, first.clone());
        write_one(&mut d, a, second);
        // The second is stored against the first (a base); the first's text is damaged, which
        // breaks the second too.
        let n = d
            .conn()
            .execute(
                "UPDATE status_bodies SET body = '{\"damaged\":1}' WHERE body_hash = ?1 AND base_id IS NULL",
                [&h1[..]],
            )
            .unwrap();
        assert_eq!(n, 1);
        assert!(status_body_text(d.conn(), a, &h2).is_err());
        // The server sends the first report again (not the newest observation): it is checked,
        // found damaged and stored again; the chain reads again.
        let r = write_one(&mut d, a, first);
        assert!(!r.new_observation);
        assert_eq!(status_body_text(d.conn(), a, &h1).unwrap(), Some(t1));
        assert_eq!(status_body_text(d.conn(), a, &h2).unwrap(), Some(t2));
        assert_eq!(count(&d, "SELECT count(*) FROM vehicle_status"), 2);
        // A stream that cannot be inflated is replaced the same way.
        let n = d
            .conn()
            .execute(
                "UPDATE status_bodies SET body = x'78bb0000' WHERE body_hash = ?1",
                [&h2[..]],
            )
            .unwrap();
        assert_eq!(n, 1);
        let third = fetch("VIN1", 1240, long_body("2026-01-01T10:04:00Z", 52.0));
        write_one(&mut d, a, third);
        let again = fetch("VIN1", 1360, long_body("2026-01-01T10:02:00Z", 51.0));
        assert_eq!(again.parsed.hash, h2);
        write_one(&mut d, a, again);
        assert!(status_body_text(d.conn(), a, &h2).unwrap().is_some());
    }

    #[test]
    fn a_loop_of_base_ids_in_a_damaged_file_is_an_error_not_a_hang() {
        let (_d, db, _a) = db();
        db.conn()
            .execute_batch(
                "INSERT INTO status_bodies (body_id, body_hash, account_id, vin, first_fetched_ts, base_id, body)
                 VALUES (1, x'01', 1, 'V', 0, 2, x'78bb'), (2, x'02', 1, 'V', 0, 1, x'78bb');",
            )
            .unwrap();
        let e = read_chain(db.conn(), 1).unwrap_err();
        assert!(e.to_string().contains("more than 64 bodies"), "{e}");
        // A link that is gone (foreign keys were off when it went) is a body error too, so the
        // writer starts a new base instead of failing the account's write.
        db.conn()
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO status_bodies (body_id, body_hash, account_id, vin, first_fetched_ts, base_id, body)
                 VALUES (3, x'03', 1, 'V', 0, 99, x'78bb');
                 PRAGMA foreign_keys = ON;",
            )
            .unwrap();
        let e = read_chain(db.conn(), 3).unwrap_err();
        assert!(matches!(e, BodyReadError::Body(_)), "{e}");
        assert!(
            e.to_string().contains("body 99 of its chain is missing"),
            "{e}"
        );
    }

    #[test]
    fn identical_polls_move_last_fetched_only_and_sessions_follow() {
        const T: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z: fetched after the reports
        let (_d, mut db, id) = db();
        let one = |db: &mut Db, f: StatusFetch| {
            db.write_telemetry(
                id,
                &Batch {
                    statuses: vec![f],
                    ..Batch::default()
                },
                3600,
            )
            .unwrap()
            .remove(0)
        };
        let r = one(
            &mut db,
            fetch(
                "V1",
                T + 100,
                body("2026-01-01T00:00:00Z", 20.0, "InProgress"),
            ),
        );
        assert!(r.new_observation);
        assert_eq!(r.state, Some(State::Charging));
        let r = one(
            &mut db,
            fetch(
                "V1",
                T + 160,
                body("2026-01-01T00:00:00Z", 20.0, "InProgress"),
            ),
        );
        assert!(!r.new_observation);
        assert_eq!(count(&db, "SELECT count(*) FROM vehicle_status"), 1);
        assert_eq!(
            count(&db, "SELECT last_fetched_ts FROM vehicle_status"),
            T + 160
        );
        assert_eq!(count(&db, "SELECT count(*) FROM status_bodies"), 1);
        one(
            &mut db,
            fetch(
                "V1",
                T + 660,
                body("2026-01-01T00:10:00Z", 30.0, "InProgress"),
            ),
        );
        one(
            &mut db,
            fetch(
                "V1",
                T + 1260,
                body("2026-01-01T00:20:00Z", 45.0, "Finished"),
            ),
        );
        assert_eq!(count(&db, "SELECT count(*) FROM vehicle_status"), 3);
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM charging_sessions WHERE ended_ts IS NOT NULL"
            ),
            1
        );
        let (reason, kwh): (String, f64) = db
            .conn()
            .query_row(
                "SELECT end_reason, energy_added_kwh FROM charging_sessions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(reason, "finished");
        assert!((kwh - 10.0).abs() < 1e-9, "40 kWh × 25 % = {kwh}");
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM vehicle_states WHERE ended_ts IS NULL"
            ),
            1
        );
        assert_eq!(count(&db, "SELECT count(*) FROM vehicle_states"), 2);
    }

    #[test]
    fn a_new_connection_continues_the_open_session() {
        const T: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        {
            let mut db = Db::open(&path).unwrap();
            let id = db.account_id("a", "peugeot").unwrap();
            let b = Batch {
                statuses: vec![fetch(
                    "V1",
                    T + 60,
                    body("2026-01-01T00:00:00Z", 20.0, "InProgress"),
                )],
                ..Batch::default()
            };
            db.write_telemetry(id, &b, 3600).unwrap();
        }
        let mut db = Db::open(&path).unwrap();
        let id = db.account_id("a", "peugeot").unwrap();
        let b = Batch {
            statuses: vec![fetch(
                "V1",
                T + 360,
                body("2026-01-01T00:05:00Z", 25.0, "InProgress"),
            )],
            ..Batch::default()
        };
        db.write_telemetry(id, &b, 3600).unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM charging_sessions"), 1);
        assert_eq!(
            count(
                &db,
                "SELECT CAST(end_soc AS INTEGER) FROM charging_sessions WHERE ended_ts IS NULL"
            ),
            25
        );
    }

    #[test]
    fn maintenance_rows_only_on_change_and_books_round_trip() {
        let (_d, mut db, id) = db();
        let book = Book {
            next_due_ts: Some(42),
            bookmark: Some("2026-01-01T00:00:00Z".into()),
            ..Book::default()
        };
        let b = Batch {
            maintenance: vec![
                ("V1".into(), 1, Some(100), Some(2000.0)),
                ("V1".into(), 2, Some(100), Some(2000.0)),
            ],
            books: vec![("V1".into(), Endpoint::Trips, book.clone())],
            ..Batch::default()
        };
        db.write_telemetry(id, &b, 3600).unwrap();
        let b = Batch {
            maintenance: vec![("V1".into(), 3, Some(99), Some(2000.0))],
            ..Batch::default()
        };
        db.write_telemetry(id, &b, 3600).unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM maintenance"), 2);
        let (books, _) = db.telemetry_books(id).unwrap();
        assert_eq!(books, vec![("V1".to_owned(), Endpoint::Trips, book)]);
    }
}
