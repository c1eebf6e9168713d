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
//! - `lastPosition`, `telemetry`, `collisions`: deprecated, not served (gateway 404), but routed
//!   so the statistics count them under their own key.

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
    Caller, backend_error, decode_page_token_ext, encode_page_token_ext, gate, gateway_error,
    hal_ok, not_associated, parse_index_range,
};
use super::life::{Life, Powertrain, SimAlert, SimDrive, api_time};
use super::{ConnKill, Shared};

const V: &str = "/connectedcar/v4/user/vehicles/{id}";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(&format!("{V}/trips"), get(trips))
        .route(&format!("{V}/alerts"), get(alerts))
        .route(&format!("{V}/maintenance"), get(maintenance))
        .route(&format!("{V}/lastPosition"), get(not_served))
        .route(&format!("{V}/telemetry"), get(not_served))
        .route(&format!("{V}/collisions"), get(not_served))
}

/// Every request here starts like this: through the gateway, then the vehicle must be the
/// caller's. Returns the caller and a copy of the car's life played up to now.
async fn open(
    sh: &Shared,
    id: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    kill: Option<&axum::Extension<ConnKill>>,
) -> Result<(Caller, Life, DateTime<Utc>, String, String), Response> {
    let caller = gate(sh, headers, q, kill.map(|k| &k.0)).await?;
    let mut g = sh.lock();
    let now = g.wall_now();
    let base = g.cfg.public_api_base.clone();
    let email = g.world.users[caller.user].email.clone();
    let life = g
        .observe(caller.user, id)
        .map(|v| v.life.clone())
        .ok_or_else(not_associated)?;
    Ok((caller, life, now, base, email))
}

fn bad_request(what: &str) -> Response {
    backend_error(
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

const FILTER_KEYS: [&str; 3] = ["timestamps", "distance", "duration"];

fn page_request(q: &HashMap<String, String>, raw: Option<&str>) -> Result<PageReq, Response> {
    if let Some(t) = q.get("pageToken") {
        let (page, size, start, end, filter) =
            decode_page_token_ext(t).ok_or_else(|| bad_request("invalid pageToken"))?;
        return Ok(PageReq {
            page,
            size,
            start,
            end,
            filter,
        });
    }
    let size = match q.get("pageSize").map(|s| s.parse::<u32>()) {
        None => 60,
        Some(Ok(n)) if (1..=60).contains(&n) => n,
        Some(_) => return Err(bad_request("pageSize must be between 1 and 60")),
    };
    let (start, end) = match q.get("indexRange").map(|s| parse_index_range(s)) {
        None => (0, None),
        Some(Some(r)) => r,
        Some(None) => return Err(bad_request("invalid indexRange")),
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

/// A HAL collection page over `items` (already filtered), with links like the vehicle list's.
fn collection(
    host: &str,
    path: &str,
    email: &str,
    name: &str,
    items: Vec<Value>,
    req: &PageReq,
) -> Value {
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
            "http://{host}{path}?pageToken={}",
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

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned()
}

async fn trips(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let (caller, life, _now, base, email) = match open(&sh, &id, &headers, &q, kill.as_ref()).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match page_request(&q, raw.as_deref()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let filter = match Filter::parse(&req.filter) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let items: Vec<Value> = life
        .drives
        .iter()
        .filter(|d| d.ended.is_some())
        .filter(|d| {
            let secs = d.ended.map_or(0, |e| (e - d.started).num_seconds()) as f64;
            filter.admits(d.started, d.distance_km, secs)
        })
        .map(|d| trip_json(&life, d, &base))
        .collect();
    if items.is_empty() {
        return backend_error(
            StatusCode::NOT_FOUND,
            40400,
            "Not Found: No trip was found.",
        );
    }
    let path = format!("/connectedcar/v4/user/vehicles/{id}/trips");
    let body = collection(&host_of(&headers), &path, &email, "trips", items, &req);
    hal_ok(&sh, &body, caller.limits)
}

async fn alerts(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let (caller, life, _now, base, email) = match open(&sh, &id, &headers, &q, kill.as_ref()).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match page_request(&q, raw.as_deref()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let filter = match Filter::parse(&req.filter) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let items: Vec<Value> = life
        .alerts
        .iter()
        .filter(|a| filter.admits(a.started, 0.0, 0.0))
        .map(|a| alert_json(a, &base))
        .collect();
    let path = format!("/connectedcar/v4/user/vehicles/{id}/alerts");
    let body = collection(&host_of(&headers), &path, &email, "alerts", items, &req);
    hal_ok(&sh, &body, caller.limits)
}

async fn maintenance(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let (caller, life, now, base, _) = match open(&sh, &id, &headers, &q, kill.as_ref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let fraction = sh.lock().cfg.maintenance_missing_fraction;
    if life.maintenance_draw < fraction {
        return backend_error(
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
    hal_ok(&sh, &body, caller.limits)
}

/// Deprecated endpoints the simulator does not serve: they still cost a request.
async fn not_served(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    if let Err(r) = gate(&sh, &headers, &q, kill.as_ref().map(|k| &k.0)).await {
        return r;
    }
    gateway_error(
        StatusCode::NOT_FOUND,
        "Not Found",
        "The requested resource is not available.",
    )
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
