//! The per-vehicle telematics endpoints beyond `/status`, served from each car's life through
//! the same gateway as the vehicle list (client id, quota, bearer token, realm, faults):
//!
//! - `GET /user/vehicles/{id}/trips`: one trip per finished drive, ascending by start, paged
//!   like the vehicle list (`pageToken` links, `pageSize` 1–60, `indexRange`), filtered by
//!   `timestamps` (1–10 ISO-8601 intervals on the trip's start), `distance` (km range) and
//!   `duration` (seconds range); 404 code 40400 "Not Found: No trip was found." when none match.
//! - `GET /user/vehicles/{id}/alerts`: the car's alerts, paged and filtered the same way; the
//!   official schema answers an empty collection (200, `total: 0`) when there are none.
//! - `GET /user/vehicles/{id}/maintenance`: days and km before the next service, counting down
//!   with the sim clock and the odometer; for some cars 404 code 40400 on every call.
//! - `GET /user/vehicles/{id}/alarms`: the theft alarm's status changes (`Active` while parked,
//!   `Inactive` from each departure), paged and filtered by `timestamps` on their `createdAt`.
//! - `lastPosition`, `telemetry`, `collisions` (deprecated in the official file, still linked
//!   from every vehicle): the last report's GeoJSON position (`application/vnd.geo+json`), the
//!   last report as one telemetry message, and an empty collection (simulated cars never
//!   collide).
//!
//! Every link names the simulator's public API base (`SimConfig::public_api_base`), and every
//! time in a body, errors included, is on the sim clock.

// Handlers short-circuit with a ready `Response` as their error; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde_json::{Value, json};

use super::api::{
    Caller, backend_error, decode_page_token_ext, encode_page_token_ext, gate, hal_ok,
    not_associated, parse_index_range,
};
use super::life::{Life, Powertrain, SimAlert, SimDrive, api_time};
use super::world::{self, Vehicle};
use super::{ConnKill, Shared};

const V: &str = "/connectedcar/v4/user/vehicles/{id}";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(&format!("{V}/trips"), get(trips))
        .route(&format!("{V}/alerts"), get(alerts))
        .route(&format!("{V}/maintenance"), get(maintenance))
        .route(&format!("{V}/alarms"), get(alarms))
        .route(&format!("{V}/lastPosition"), get(last_position))
        .route(&format!("{V}/telemetry"), get(telemetry))
        .route(&format!("{V}/collisions"), get(collisions))
}

/// What a handler here knows once the gateway let the request through and the vehicle is the
/// caller's.
struct Opened {
    caller: Caller,
    /// A copy of the vehicle, its life played up to now.
    vehicle: Vehicle,
    /// The sim clock.
    now: DateTime<Utc>,
    /// The public API base for links.
    base: String,
    email: String,
}

/// Every request here starts like this: through the gateway, then the vehicle must be the
/// caller's.
async fn open(
    sh: &Shared,
    id: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    kill: Option<&axum::Extension<ConnKill>>,
) -> Result<Opened, Response> {
    let caller = gate(sh, headers, q, kill.map(|k| &k.0)).await?;
    let mut g = sh.lock();
    let now = g.wall_now();
    let base = g.cfg.public_api_base.clone();
    let email = g.world.users[caller.user].email.clone();
    let vehicle = g
        .observe(caller.user, id)
        .cloned()
        .ok_or_else(|| not_associated(now))?;
    Ok(Opened {
        caller,
        vehicle,
        now,
        base,
        email,
    })
}

fn bad_request(at: DateTime<Utc>, what: &str) -> Response {
    backend_error(
        at,
        StatusCode::BAD_REQUEST,
        40000,
        &format!("Bad Request: {what}"),
    )
}

/// A collection request: which page, and the filter as a query string.
struct PageReq {
    page: u32,
    size: u32,
    start: u32,
    end: Option<u32>,
    filter: String,
}

/// The parameters a `pageToken` carries to the next page (`type`: `/alarms`' filter).
const FILTER_KEYS: [&str; 4] = ["timestamps", "distance", "duration", "type"];

/// The largest `pageSize` of ordinary collections (the official `pageSize`), and of
/// `/telemetry` (`pageSizeHighFrequency`).
const PAGE_MAX: u32 = 60;
const PAGE_MAX_HIGH_FREQUENCY: u32 = 2000;

fn page_request(
    at: DateTime<Utc>,
    q: &HashMap<String, String>,
    raw: Option<&str>,
    max: u32,
) -> Result<PageReq, Response> {
    if let Some(t) = q.get("pageToken") {
        let (page, size, start, end, filter) =
            decode_page_token_ext(t).ok_or_else(|| bad_request(at, "invalid pageToken"))?;
        return Ok(PageReq {
            page,
            size,
            start,
            end,
            filter,
        });
    }
    let size = match q.get("pageSize").map(|s| s.parse::<u32>()) {
        None => max.min(PAGE_MAX),
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => {
            return Err(bad_request(
                at,
                &format!("pageSize must be between 1 and {max}"),
            ));
        }
    };
    let (start, end) = match q.get("indexRange").map(|s| parse_index_range(s)) {
        None => (0, None),
        Some(Some(r)) => r,
        Some(None) => return Err(bad_request(at, "invalid indexRange")),
    };
    // Keep the filter parameters (repeated ones too) as they came.
    let mut filter = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if FILTER_KEYS.contains(&k.as_ref()) {
            filter.append_pair(&k, &v);
        }
    }
    Ok(PageReq {
        page: 1,
        size,
        start,
        end,
        filter: filter.finish(),
    })
}

/// A time interval; `None` is an open end.
type Interval = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A parsed filter: intervals on the item's start time, and ranges.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    intervals: Vec<Interval>,
    distance: Option<(Option<f64>, Option<f64>)>,
    duration: Option<(Option<f64>, Option<f64>)>,
}

impl Filter {
    fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "timestamps" => {
                    for part in v.split(',') {
                        f.intervals.push(parse_interval(part.trim()).ok_or_else(|| {
                            format!("invalid timestamps interval `{part}` (expected T1/T2, T/, /T or T/PnD)")
                        })?);
                    }
                }
                "distance" => {
                    f.distance =
                        Some(parse_range(&v).ok_or_else(|| format!("invalid distance `{v}`"))?)
                }
                "duration" => {
                    f.duration =
                        Some(parse_range(&v).ok_or_else(|| format!("invalid duration `{v}`"))?)
                }
                _ => {}
            }
        }
        if f.intervals.len() > 10 {
            return Err("at most 10 timestamps intervals".into());
        }
        Ok(f)
    }

    fn admits(&self, start: DateTime<Utc>, distance: f64, duration: f64) -> bool {
        let in_time = self.intervals.is_empty()
            || self
                .intervals
                .iter()
                .any(|(a, b)| a.is_none_or(|a| start >= a) && b.is_none_or(|b| start < b));
        let within = |r: &Option<(Option<f64>, Option<f64>)>, x: f64| {
            r.is_none_or(|(lo, hi)| lo.is_none_or(|lo| x >= lo) && hi.is_none_or(|hi| x <= hi))
        };
        in_time && within(&self.distance, distance) && within(&self.duration, duration)
    }
}

fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// An ISO-8601 duration with weeks, days, hours, minutes and seconds (`P1D`, `PT12H`,
/// `P1DT2H30M`, `P2W`); years and months are refused (their length is ambiguous).
fn parse_duration(s: &str) -> Option<TimeDelta> {
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = TimeDelta::zero();
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let secs = units.iter().find(|(u, _)| *u == c)?.1;
                let n: i64 = num.parse().ok()?;
                total += TimeDelta::seconds(n.checked_mul(secs)?);
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    take(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        take(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    Some(total)
}

/// `T1/T2`, `T/` (open end), `/T` (open start), `T/PnD` (a duration after T), `PnD/T`.
fn parse_interval(s: &str) -> Option<Interval> {
    let (a, b) = s.split_once('/')?;
    match (a, b) {
        ("", "") => None,
        ("", b) => Some((None, Some(parse_instant(b)?))),
        (a, "") => Some((Some(parse_instant(a)?), None)),
        (a, b) if b.starts_with('P') => {
            let a = parse_instant(a)?;
            Some((Some(a), Some(a + parse_duration(b)?)))
        }
        (a, b) if a.starts_with('P') => {
            let b = parse_instant(b)?;
            Some((Some(b - parse_duration(a)?), Some(b)))
        }
        (a, b) => {
            let (a, b) = (parse_instant(a)?, parse_instant(b)?);
            (a <= b).then_some((Some(a), Some(b)))
        }
    }
}

/// `a-b`, `a-`, `-b` with decimal numbers.
fn parse_range(s: &str) -> Option<(Option<f64>, Option<f64>)> {
    let (a, b) = s.split_once('-')?;
    let num = |x: &str| -> Option<Option<f64>> {
        if x.is_empty() {
            Some(None)
        } else {
            x.parse::<f64>().ok().filter(|v| v.is_finite()).map(Some)
        }
    };
    let r = (num(a)?, num(b)?);
    (r != (None, None)).then_some(r)
}

/// A HAL collection page over `items` (already filtered), with links like the vehicle list's;
/// `url` is the collection's own URL without a query.
fn collection(url: &str, email: &str, name: &str, items: Vec<Value>, req: &PageReq) -> Value {
    let lo = (req.start as usize).min(items.len());
    let hi = req
        .end
        .map_or(items.len(), |e| (e as usize + 1).min(items.len()))
        .max(lo);
    let selected = &items[lo..hi];
    let total = u32::try_from(selected.len()).unwrap_or(u32::MAX);
    let total_pages = total.div_ceil(req.size).max(1);
    let page = req.page.clamp(1, total_pages);
    let from = ((page - 1) * req.size) as usize;
    let to = (from + req.size as usize).min(selected.len());
    let link = |p: u32| {
        json!({"href": format!(
            "{url}?pageToken={}",
            encode_page_token_ext(email, p, req.size, req.start, req.end, &req.filter)
        )})
    };
    let mut links = serde_json::Map::new();
    links.insert("last".into(), link(total_pages));
    links.insert("self".into(), link(page));
    links.insert("first".into(), link(1));
    if page > 1 {
        links.insert("prev".into(), link(page - 1));
    }
    if page < total_pages {
        links.insert("next".into(), link(page + 1));
    }
    json!({
        "_links": links,
        "total": total,
        "totalPage": total_pages,
        "currentPage": page,
        "_embedded": {name: selected[from.min(to)..to].to_vec()},
    })
}

fn position(lon_lat: [f64; 2], at: DateTime<Utc>, heading: u32) -> Value {
    json!({"type": "Feature",
        "geometry": {"type": "Point", "coordinates": [round6(lon_lat[0]), round6(lon_lat[1])]},
        "properties": {"createdAt": api_time(at), "heading": heading, "type": "Acquire"}})
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn hex_id(prefix: &str, salt: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{prefix}-{salt}").as_bytes());
    let tail: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{tail}", &prefix[..prefix.len().min(65)])
}

/// The trip id of a drive: 129 hex characters sharing the vehicle id's prefix, as in captures.
pub fn trip_id(d: &SimDrive) -> String {
    hex_id(&d.vehicle_id, &format!("trip-{}", d.started.timestamp()))
}

fn lite_energies(l: &Life, soc: Option<f64>, fuel: Option<f64>) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(s) = soc {
        out.push(
            json!({"type": "Electric", "subType": "ElectricEnergy", "level": s,
                        "autonomy": l.electric_autonomy(s)}),
        );
    }
    if let Some(f) = fuel {
        out.push(
            json!({"type": "Fuel", "subType": "FossilEnergy", "level": f,
                        "autonomy": l.fuel_autonomy(f)}),
        );
    }
    out
}

/// A finished drive as the `Trip` object: `distance` km, `duration` s, `startMileage` km;
/// `energyConsumptions[].consumption` in kWh (electric) or litres (fuel), `avgConsumption` in
/// Wh/100 km or cl/100 km (the official schema's units).
pub fn trip_json(l: &Life, d: &SimDrive, api_base: &str) -> Value {
    let stopped = d.ended.unwrap_or(d.started);
    let id = trip_id(d);
    let vbase = format!("{api_base}/user/vehicles/{}", d.vehicle_id);
    let per100 = |x: f64| {
        if d.distance_km > 0.0 {
            (x / d.distance_km * 100.0 * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    let mut consumptions = Vec::new();
    if l.kind.has_battery() {
        consumptions.push(json!({"type": "Electric", "subType": "ElectricEnergy",
            "consumption": d.energy_kwh, "avgConsumption": per100(d.energy_kwh * 1000.0)}));
    }
    if l.kind.has_fuel() && (l.kind == Powertrain::Thermic || d.fuel_l > 0.0) {
        consumptions.push(json!({"type": "Fuel", "subType": "FossilEnergy",
            "consumption": d.fuel_l, "avgConsumption": per100(d.fuel_l * 100.0)}));
    }
    json!({
        "_links": {
            "self": {"href": format!("{vbase}/trips/{id}")},
            "vehicle": {"href": vbase},
            "wayPoints": {"href": format!("{vbase}/trips/{id}/wayPoints")},
            "alerts": {"href": format!("{vbase}/trips/{id}/alerts")},
            "collisions": {"href": format!("{vbase}/trips/{id}/collisions")},
        },
        "id": id,
        "createdAt": api_time(stopped),
        "updatedAt": api_time(stopped),
        "startedAt": api_time(d.started),
        "stoppedAt": api_time(stopped),
        "startPosition": position(d.start_position, d.started, d.heading),
        "stopPosition": position(d.end_position, stopped, d.heading),
        "duration": (stopped - d.started).num_seconds(),
        "distance": d.distance_km,
        "startMileage": d.start_odometer_km,
        "startEnergies": lite_energies(l, d.start_soc, d.start_fuel),
        "endEnergies": lite_energies(l, d.end_soc, d.end_fuel),
        "energyConsumptions": consumptions,
        "kinetic": {"avgSpeed": d.avg_speed_kmh, "maxSpeed": d.max_speed_kmh},
        "done": true,
    })
}

/// An alert as the `Alert` object.
pub fn alert_json(a: &SimAlert, api_base: &str) -> Value {
    let vbase = format!("{api_base}/user/vehicles/{}", a.vehicle_id);
    let mut o = serde_json::Map::new();
    o.insert(
        "_links".into(),
        json!({"self": {"href": format!("{vbase}/alerts/{}", a.id)}, "vehicle": {"href": vbase}}),
    );
    o.insert("id".into(), json!(a.id));
    o.insert("active".into(), json!(a.ended.is_none()));
    o.insert("type".into(), json!(a.kind));
    o.insert("severity".into(), json!(a.severity));
    o.insert("createdAt".into(), json!(api_time(a.started)));
    o.insert(
        "updatedAt".into(),
        json!(api_time(a.ended.unwrap_or(a.started))),
    );
    o.insert("startedAt".into(), json!(api_time(a.started)));
    o.insert(
        "startPosition".into(),
        position(a.start_position, a.started, 0),
    );
    if let (Some(end), Some(p)) = (a.ended, a.end_position) {
        o.insert("endAt".into(), json!(api_time(end)));
        o.insert("endPosition".into(), position(p, end, 0));
    }
    Value::Object(o)
}

async fn trips(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (req, filter) = match filtered_page(&o, &q, raw.as_deref(), PAGE_MAX) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let life = &o.vehicle.life;
    let items: Vec<Value> = life
        .drives
        .iter()
        .filter(|d| d.ended.is_some())
        .filter(|d| {
            let secs = d.ended.map_or(0, |e| (e - d.started).num_seconds()) as f64;
            filter.admits(d.started, d.distance_km, secs)
        })
        .map(|d| trip_json(life, d, &o.base))
        .collect();
    if items.is_empty() {
        return backend_error(
            o.now,
            StatusCode::NOT_FOUND,
            40400,
            "Not Found: No trip was found.",
        );
    }
    let url = format!("{}/user/vehicles/{id}/trips", o.base);
    let body = collection(&url, &o.email, "trips", items, &req);
    hal_ok(&sh, &body, o.caller.limits)
}

/// A collection request's page and its parsed filter.
fn filtered_page(
    o: &Opened,
    q: &HashMap<String, String>,
    raw: Option<&str>,
    max: u32,
) -> Result<(PageReq, Filter), Response> {
    let req = page_request(o.now, q, raw, max)?;
    let filter = Filter::parse(&req.filter).map_err(|e| bad_request(o.now, &e))?;
    Ok((req, filter))
}

async fn alerts(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (req, filter) = match filtered_page(&o, &q, raw.as_deref(), PAGE_MAX) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let items: Vec<Value> = o
        .vehicle
        .life
        .alerts
        .iter()
        .filter(|a| filter.admits(a.started, 0.0, 0.0))
        .map(|a| alert_json(a, &o.base))
        .collect();
    let url = format!("{}/user/vehicles/{id}/alerts", o.base);
    let body = collection(&url, &o.email, "alerts", items, &req);
    hal_ok(&sh, &body, o.caller.limits)
}

async fn maintenance(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (life, now, base) = (&o.vehicle.life, o.now, &o.base);
    let fraction = sh.lock().cfg.maintenance_missing_fraction;
    if life.maintenance_draw < fraction {
        return backend_error(
            now,
            StatusCode::NOT_FOUND,
            40400,
            "Not Found: Maintenance Not Found for Given Vehicle.",
        );
    }
    let (due_at, due_km) = life.maintenance_due;
    let day = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |d| d.and_utc());
    let vbase = format!("{base}/user/vehicles/{id}");
    let km = ((due_km - life.rep.odometer) * 10.0).round() / 10.0;
    let body = json!({
        "createdAt": api_time(day),
        "updatedAt": api_time(day),
        "daysBeforeMaintenance": (due_at - now).num_days(),
        "mileageBeforeMaintenance": km,
        "_links": {"self": {"href": format!("{vbase}/maintenance")}, "vehicle": {"href": vbase},
                   "alerts": {"href": format!("{vbase}/alerts")}},
    });
    hal_ok(&sh, &body, o.caller.limits)
}

/// The `type` values `/alarms` takes (`AlarmTypeEnum`).
const ALARM_TYPES: [&str; 2] = ["vehicle.alarm.status", "vehicle.alarm.trigger"];

/// The theft alarm's status changes as `AlarmDetails` items, ascending: `Active` when the car
/// came to the account parked, then `Inactive` at each departure and `Active` at each arrival,
/// as `/status`' `alarm.status` shows them. A simulated alarm never goes off, so
/// `type=vehicle.alarm.trigger` lists nothing.
async fn alarms(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (req, filter) = match filtered_page(&o, &q, raw.as_deref(), PAGE_MAX) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut types = Vec::new();
    for (k, v) in url::form_urlencoded::parse(req.filter.as_bytes()) {
        if k == "type" {
            for t in v.split(',').map(str::trim) {
                if !ALARM_TYPES.contains(&t) {
                    return bad_request(o.now, &format!("invalid type `{t}`"));
                }
                types.push(t.to_owned());
            }
        }
    }
    let statuses = types.is_empty() || types.iter().any(|t| t == ALARM_TYPES[0]);
    let life = &o.vehicle.life;
    let mut changes = vec![(life.born, "Active")];
    for d in &life.drives {
        changes.push((d.started, "Inactive"));
        if let Some(end) = d.ended {
            changes.push((end, "Active"));
        }
    }
    let items: Vec<Value> = changes
        .into_iter()
        .filter(|_| statuses)
        .filter(|(at, _)| filter.admits(*at, 0.0, 0.0))
        .map(|(at, activation)| {
            json!({"id": hex_id(&life.vehicle_id, &format!("alarm-{}-{activation}", at.timestamp())),
                   "status": {"createdAt": api_time(at), "activation": activation}})
        })
        .collect();
    let url = format!("{}/user/vehicles/{id}/alarms", o.base);
    let body = collection(&url, &o.email, "alarms", items, &req);
    hal_ok(&sh, &body, o.caller.limits)
}

/// Deprecated `lastPosition`: the position of the car's last report, as `/status` carries it,
/// in the content type the official file declares.
async fn last_position(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut resp = hal_ok(&sh, &world::last_position_json(&o.vehicle), o.caller.limits);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/vnd.geo+json"),
    );
    resp
}

/// Deprecated `telemetry`: the car's last report as one `Telemetry` message (the simulator keeps
/// no older reports), filtered by `timestamps` on its `createdAt`. `type` and `extension` are
/// accepted and every block is sent.
async fn telemetry(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (req, filter) = match filtered_page(&o, &q, raw.as_deref(), PAGE_MAX_HIGH_FREQUENCY) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let url = format!("{}/user/vehicles/{id}/telemetry", o.base);
    let status = world::status_json(&o.vehicle, &o.base, false);
    let mut vehicle = serde_json::Map::new();
    for block in [
        "energies",
        "engines",
        "ignition",
        "doorsState",
        "battery",
        "odometer",
        "kinetic",
        "alarm",
    ] {
        if let Some(b) = status.get(block) {
            vehicle.insert(block.into(), b.clone());
        }
    }
    let message = json!({
        "createdAt": status["createdAt"],
        "_links": {"self": {"href": url}, "vehicle": {"href": format!("{}/user/vehicles/{id}", o.base)}},
        "privacy": status["privacy"],
        "vehicle": vehicle,
        "environment": status["environment"],
    });
    let items = if filter.admits(o.vehicle.life.rep.at, 0.0, 0.0) {
        vec![message]
    } else {
        Vec::new()
    };
    let body = collection(&url, &o.email, "telemetries", items, &req);
    hal_ok(&sh, &body, o.caller.limits)
}

/// Deprecated `collisions`: an empty collection (`_embedded.Collisions`, the official spelling):
/// simulated cars never collide.
async fn collisions(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let o = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match filtered_page(&o, &q, raw.as_deref(), PAGE_MAX) {
        Ok((req, _)) => req,
        Err(r) => return r,
    };
    let url = format!("{}/user/vehicles/{id}/collisions", o.base);
    let body = collection(&url, &o.email, "Collisions", Vec::new(), &req);
    hal_ok(&sh, &body, o.caller.limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_instant(s).unwrap()
    }

    #[test]
    fn intervals() {
        let a = "2026-01-05T00:00:00Z";
        let b = "2026-01-06T12:00:00Z";
        assert_eq!(
            parse_interval(&format!("{a}/{b}")),
            Some((Some(t(a)), Some(t(b))))
        );
        assert_eq!(parse_interval(&format!("{a}/")), Some((Some(t(a)), None)));
        assert_eq!(parse_interval(&format!("/{b}")), Some((None, Some(t(b)))));
        assert_eq!(
            parse_interval(&format!("{a}/P1DT12H")),
            Some((Some(t(a)), Some(t(b))))
        );
        assert_eq!(
            parse_interval(&format!("P1DT12H/{b}")),
            Some((Some(t(a)), Some(t(b))))
        );
        for bad in [
            "",
            "/",
            "yesterday/",
            &format!("{b}/{a}"),
            &format!("{a}/P1Y"),
            &format!("{a}/PT"),
            &format!("{a}/P1DT"),
            a,
        ] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("P2W"), Some(TimeDelta::days(14)));
        assert_eq!(parse_duration("PT90M"), Some(TimeDelta::minutes(90)));
    }

    #[test]
    fn filters() {
        let f = Filter::parse("timestamps=2026-01-05T00%3A00%3A00Z%2F&distance=0.1-").unwrap();
        assert!(f.admits(t("2026-01-05T08:00:00Z"), 3.0, 60.0));
        assert!(!f.admits(t("2026-01-04T23:59:59Z"), 3.0, 60.0));
        assert!(!f.admits(t("2026-01-05T08:00:00Z"), 0.0, 60.0));
        let many = (0..11)
            .map(|_| "timestamps=2026-01-05T00%3A00%3A00Z%2F")
            .collect::<Vec<_>>()
            .join("&");
        assert!(Filter::parse(&many).is_err());
        assert!(Filter::parse("timestamps=nope").is_err());
        assert!(Filter::parse("distance=a-b").is_err());
        assert_eq!(parse_range("-5"), Some((None, Some(5.0))));
        assert_eq!(parse_range("-"), None);
    }
}
