//! The `/status` body, read: its canonical content hash and the typed [`Observation`] stored in
//! `vehicle_status`. Pure: no IO, no clock.
//!
//! Tolerances, each from real traffic: `energies[]` (new) and `energy[]` (deprecated) are both
//! read, matched on `type` because a PHEV's order is not stable, the new block winning field by
//! field; a `Fuel` entry without a `level` is the placeholder some EVs carry and is ignored;
//! numbers may be integers or floats (or numeric strings); any block may be missing; pre-2023
//! bodies date blocks with `updatedAt` instead of `createdAt`. GeoJSON coordinates are
//! longitude first.
//!
//! Values outside their physical range ([`BOUNDS`]: a SoC of 1e308 %, a range of 2^63 km) are
//! not facts about the car: they become `None` and their column is named in
//! [`ParsedStatus::out_of_range`], for the poller to count and log; the raw body is kept as it
//! came.
//!
//! The hash is XXH3-128 (big-endian bytes) of the canonical text: object keys sorted (the crate
//! keeps insertion order, so they are sorted here), arrays in order, except `energies`/`energy`,
//! which are ordered by `type` so that a shuffled PHEV body is the same observation.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The typed columns of one `vehicle_status` row (plus the battery capacity, which only feeds
/// the charging session's energy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The vehicle's own newest block time (Unix seconds).
    pub observed_ts: Option<i64>,
    /// Every block time of the body (`createdAt`/`updatedAt` below the top level, else the
    /// body's own), ascending: the store dates the body by the newest that is not in the future
    /// (`derive::observation_time`).
    pub block_times: Vec<i64>,
    pub soc: Option<f64>,
    pub range_km: Option<i64>,
    pub fuel_pct: Option<f64>,
    pub fuel_range_km: Option<i64>,
    pub odometer_km: Option<f64>,
    pub charging_status: Option<String>,
    pub plugged: Option<bool>,
    pub charging_rate_kmh: Option<f64>,
    pub charging_mode: Option<String>,
    pub charging_remaining_min: Option<i64>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub position_ts: Option<i64>,
    pub ignition: Option<String>,
    pub moving: Option<bool>,
    pub speed_kmh: Option<f64>,
    pub outside_temp_c: Option<f64>,
    pub doors_locked: Option<bool>,
    /// `battery.load.capacity` of the traction battery, Wh.
    pub battery_capacity_wh: Option<f64>,
}

/// A `/status` body that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the /status body is not a JSON object: {0}")]
pub struct StatusParseError(pub String);

/// A parsed body: the value, its canonical hash and the observation.
#[derive(Debug, Clone)]
pub struct ParsedStatus {
    pub hash: [u8; 16],
    pub observation: Observation,
    /// The columns whose value was outside its [`Bound`] (and is `None` in the observation).
    pub out_of_range: Vec<&'static str>,
}

/// The physically possible range of a quantity, in the unit of its columns; a value outside it
/// (a sensor's or the backend's error) is stored as NULL. Generous on purpose: the bounds catch
/// the impossible, never the unusual.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The columns it applies to (`vehicle_status`, `trips`; `battery_capacity_wh` is the
    /// capacity behind `charging_sessions.energy_added_kwh`).
    pub columns: &'static [&'static str],
    pub min: f64,
    pub max: f64,
    pub unit: &'static str,
}

impl Bound {
    /// `x` when it lies within the bound; otherwise `None`, and `column` is added to `out`.
    pub fn check(
        &self,
        column: &'static str,
        x: Option<f64>,
        out: &mut Vec<&'static str>,
    ) -> Option<f64> {
        let x = x?;
        if (self.min..=self.max).contains(&x) {
            Some(x)
        } else {
            out.push(column);
            None
        }
    }

    /// [`Bound::check`] rounded to an integer.
    pub fn check_int(
        &self,
        column: &'static str,
        x: Option<f64>,
        out: &mut Vec<&'static str>,
    ) -> Option<i64> {
        // Within the bound, the value fits an i64.
        #[allow(clippy::cast_possible_truncation)]
        self.check(column, x, out).map(|x| x.round() as i64)
    }
}

/// State of charge and fuel level.
pub const LEVEL: Bound = Bound {
    columns: &["soc", "fuel_pct", "start_soc", "end_soc"],
    min: 0.0,
    max: 100.0,
    unit: "%",
};
/// Electric and fuel range.
pub const RANGE: Bound = Bound {
    columns: &["range_km", "fuel_range_km"],
    min: 0.0,
    max: 3000.0,
    unit: "km",
};
/// Odometer.
pub const ODOMETER: Bound = Bound {
    columns: &["odometer_km", "start_odometer_km"],
    min: 0.0,
    max: 2_000_000.0,
    unit: "km",
};
/// Charging rate (the official schema's `maximum`).
pub const CHARGING_RATE: Bound = Bound {
    columns: &["charging_rate_kmh"],
    min: 0.0,
    max: 500.0,
    unit: "km/h",
};
/// Time left in a charge: a week.
pub const REMAINING: Bound = Bound {
    columns: &["charging_remaining_min"],
    min: 0.0,
    max: 10_080.0,
    unit: "min",
};
/// Speeds.
pub const SPEED: Bound = Bound {
    columns: &["speed_kmh", "avg_speed_kmh", "max_speed_kmh"],
    min: 0.0,
    max: 400.0,
    unit: "km/h",
};
/// Outside temperature (the records on Earth are −89 °C and +57 °C).
pub const TEMPERATURE: Bound = Bound {
    columns: &["outside_temp_c"],
    min: -90.0,
    max: 60.0,
    unit: "°C",
};
/// The traction battery's capacity: from a small hybrid's to a large truck's.
pub const CAPACITY: Bound = Bound {
    columns: &["battery_capacity_wh"],
    min: 1000.0,
    max: 250_000.0,
    unit: "Wh",
};
/// Latitude.
pub const LATITUDE: Bound = Bound {
    columns: &["latitude", "start_latitude", "end_latitude"],
    min: -90.0,
    max: 90.0,
    unit: "degrees",
};
/// Longitude.
pub const LONGITUDE: Bound = Bound {
    columns: &["longitude", "start_longitude", "end_longitude"],
    min: -180.0,
    max: 180.0,
    unit: "degrees",
};
/// A trip's distance.
pub const TRIP_DISTANCE: Bound = Bound {
    columns: &["distance_km"],
    min: 0.0,
    max: 5000.0,
    unit: "km",
};
/// A trip's duration: a week.
pub const TRIP_DURATION: Bound = Bound {
    columns: &["duration_s"],
    min: 0.0,
    max: 604_800.0,
    unit: "s",
};
/// A trip's electric energy.
pub const TRIP_ENERGY: Bound = Bound {
    columns: &["electric_consumption"],
    min: 0.0,
    max: 1000.0,
    unit: "kWh",
};
/// A trip's average electric consumption.
pub const TRIP_ELECTRIC_AVG: Bound = Bound {
    columns: &["electric_avg_consumption"],
    min: 0.0,
    max: 200.0,
    unit: "kWh/100 km",
};
/// A trip's fuel.
pub const TRIP_FUEL: Bound = Bound {
    columns: &["fuel_consumption"],
    min: 0.0,
    max: 1000.0,
    unit: "l",
};
/// A trip's average fuel consumption.
pub const TRIP_FUEL_AVG: Bound = Bound {
    columns: &["fuel_avg_consumption"],
    min: 0.0,
    max: 100.0,
    unit: "l/100 km",
};

/// Every bound (docs/schema.md, "Bounds", shows this table).
pub const BOUNDS: &[Bound] = &[
    LEVEL,
    RANGE,
    ODOMETER,
    CHARGING_RATE,
    REMAINING,
    SPEED,
    TEMPERATURE,
    CAPACITY,
    LATITUDE,
    LONGITUDE,
    TRIP_DISTANCE,
    TRIP_DURATION,
    TRIP_ENERGY,
    TRIP_ELECTRIC_AVG,
    TRIP_FUEL,
    TRIP_FUEL_AVG,
];

/// Parses a `/status` body.
pub fn parse(body: &[u8]) -> Result<ParsedStatus, StatusParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| StatusParseError(e.to_string()))?;
    if !v.is_object() {
        return Err(StatusParseError("not an object".into()));
    }
    let (observation, out_of_range) = observe_bounded(&v);
    Ok(ParsedStatus {
        hash: canonical_hash(&v),
        observation,
        out_of_range,
    })
}

/// XXH3-128 of the canonical text of a body.
pub fn canonical_hash(v: &Value) -> [u8; 16] {
    let mut out = String::with_capacity(4096);
    write_canonical(v, None, &mut out);
    xxhash_rust::xxh3::xxh3_128(out.as_bytes()).to_be_bytes()
}

fn write_canonical(v: &Value, key: Option<&str>, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], Some(k), out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            let mut parts: Vec<String> = items
                .iter()
                .map(|item| {
                    let mut s = String::new();
                    write_canonical(item, None, &mut s);
                    s
                })
                .collect();
            if matches!(key, Some("energies" | "energy")) {
                // Order by type first, then by the whole text, so any permutation is one form.
                let mut keyed: Vec<(String, String)> = items
                    .iter()
                    .zip(parts)
                    .map(|(item, s)| (str_at(item, &["type"]).unwrap_or_default(), s))
                    .collect();
                keyed.sort();
                parts = keyed.into_iter().map(|(_, s)| s).collect();
            }
            out.push('[');
            out.push_str(&parts.join(","));
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    at(v, path).and_then(Value::as_str).map(str::to_owned)
}

fn num_at(v: &Value, path: &[&str]) -> Option<f64> {
    match at(v, path)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    match at(v, path)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp to Unix seconds.
pub fn ts(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp())
}

fn ts_at(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_str).and_then(ts)
}

/// An ISO-8601 duration (`PT2H55M`, `P1DT2H`, `PT0S`, `PT90.5S`) in whole minutes (rounded).
pub fn iso_duration_minutes(s: &str) -> Option<i64> {
    let s = s.trim();
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut secs = 0f64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
            } else {
                let mult = units.iter().find(|(u, _)| *u == c)?.1;
                secs += num.parse::<f64>().ok()? * mult;
                num.clear();
                any = true;
            }
        }
        num.is_empty().then_some(())
    };
    take(
        date,
        &[
            ('Y', 365.0 * 86_400.0),
            ('W', 7.0 * 86_400.0),
            ('D', 86_400.0),
        ],
    )?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    #[allow(clippy::cast_possible_truncation)]
    any.then(|| (secs / 60.0).round() as i64)
}

/// The newest `createdAt`/`updatedAt` of the body's blocks (below the top level); the top-level
/// times when no block carries one.
fn newest_block_time(v: &Value) -> Option<i64> {
    block_times(v).last().copied()
}

/// Every block's time, ascending (see [`Observation::block_times`]).
fn block_times(v: &Value) -> Vec<i64> {
    fn walk(v: &Value, depth: usize, out: &mut Vec<i64>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if depth > 0
                        && matches!(k.as_str(), "createdAt" | "updatedAt")
                        && let Some(t) = x.as_str().and_then(ts)
                    {
                        out.push(t);
                    } else if k != "_links" {
                        walk(x, depth + 1, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, depth + 1, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, 0, &mut out);
    if out.is_empty() {
        out.extend(
            [ts_at(v, &["createdAt"]), ts_at(v, &["updatedAt"])]
                .into_iter()
                .flatten(),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The entry of `energies` (or `energy`) of this `type`.
fn energy_entry<'a>(v: &'a Value, block: &str, kind: &str) -> Option<&'a Value> {
    v.get(block)?
        .as_array()?
        .iter()
        .find(|e| e.get("type").and_then(Value::as_str) == Some(kind))
}

/// The typed observation of a body (values outside their [`Bound`] are `None`).
pub fn observe(v: &Value) -> Observation {
    observe_bounded(v).0
}

/// The typed observation of a body, and the columns whose value was outside its bound.
fn observe_bounded(v: &Value) -> (Observation, Vec<&'static str>) {
    let mut out = Vec::new();
    let e_new = energy_entry(v, "energies", "Electric");
    let e_old = energy_entry(v, "energy", "Electric");
    // A field of the electric entry: from `energies`, else from the deprecated `energy`.
    let electric = |new_path: &[&str], old_path: &[&str]| -> Option<&Value> {
        e_new
            .and_then(|e| at(e, new_path))
            .or_else(|| e_old.and_then(|e| at(e, old_path)))
    };
    let charging_new = ["extension", "electric", "charging"];
    let ch = |f: &str| -> Option<&Value> {
        let mut p = charging_new.to_vec();
        p.push(f);
        electric(&p, &["charging", f])
    };
    let num = |x: Option<&Value>| x.and_then(|x| num_at(x, &[]));
    let text = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_owned);

    // Fuel: an entry without `level` is the placeholder an EV may carry.
    let fuel = [
        energy_entry(v, "energies", "Fuel"),
        energy_entry(v, "energy", "Fuel"),
    ]
    .into_iter()
    .flatten()
    .find(|f| num_at(f, &["level"]).is_some());

    let coords = at(v, &["lastPosition", "geometry", "coordinates"]).and_then(Value::as_array);
    let coord = |i: usize| coords.and_then(|c| c.get(i)).and_then(|x| num_at(x, &[]));
    // A point is both coordinates or none.
    let (longitude, latitude) = match (
        LONGITUDE.check("longitude", coord(0), &mut out),
        LATITUDE.check("latitude", coord(1), &mut out),
    ) {
        (Some(lon), Some(lat)) => (Some(lon), Some(lat)),
        _ => (None, None),
    };
    let position_ts = latitude.and_then(|_| {
        ts_at(v, &["lastPosition", "properties", "createdAt"])
            .or_else(|| ts_at(v, &["lastPosition", "properties", "updatedAt"]))
    });

    let doors_locked = at(v, &["doorsState", "lockedStates"])
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let states: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            states
                .iter()
                .any(|s| matches!(*s, "Locked" | "SuperLocked"))
                && !states.contains(&"Unlocked")
        });

    let o = Observation {
        observed_ts: newest_block_time(v),
        block_times: block_times(v),
        soc: LEVEL.check("soc", num(electric(&["level"], &["level"])), &mut out),
        range_km: RANGE.check_int(
            "range_km",
            num(electric(&["autonomy"], &["autonomy"])),
            &mut out,
        ),
        fuel_pct: LEVEL.check(
            "fuel_pct",
            fuel.and_then(|f| num_at(f, &["level"])),
            &mut out,
        ),
        fuel_range_km: RANGE.check_int(
            "fuel_range_km",
            fuel.and_then(|f| num_at(f, &["autonomy"])),
            &mut out,
        ),
        odometer_km: ODOMETER.check(
            "odometer_km",
            num_at(v, &["odometer", "mileage"])
                .or_else(|| num_at(v, &["timed", "odometer", "mileage"])),
            &mut out,
        ),
        charging_status: text(ch("status")),
        plugged: ch("plugged").and_then(|x| bool_at(x, &[])),
        charging_rate_kmh: CHARGING_RATE.check(
            "charging_rate_kmh",
            num(ch("chargingRate")),
            &mut out,
        ),
        charging_mode: text(ch("chargingMode")),
        #[allow(clippy::cast_precision_loss)]
        charging_remaining_min: REMAINING.check_int(
            "charging_remaining_min",
            text(ch("remainingTime"))
                .as_deref()
                .and_then(iso_duration_minutes)
                .map(|m| m as f64),
            &mut out,
        ),
        latitude,
        longitude,
        position_ts,
        ignition: str_at(v, &["ignition", "type"]),
        moving: bool_at(v, &["kinetic", "moving"]),
        speed_kmh: SPEED.check("speed_kmh", num_at(v, &["kinetic", "speed"]), &mut out),
        outside_temp_c: TEMPERATURE.check(
            "outside_temp_c",
            num_at(v, &["environment", "air", "temp"]),
            &mut out,
        ),
        doors_locked,
        battery_capacity_wh: CAPACITY.check(
            "battery_capacity_wh",
            num(electric(
                &["extension", "electric", "battery", "load", "capacity"],
                &["battery", "load", "capacity"],
            )),
            &mut out,
        ),
    };
    (o, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Option<i64> {
        ts(s)
    }

    fn ev() -> Value {
        json!({
          "createdAt": "2025-09-04T07:21:52Z", "updatedAt": "2025-09-04T07:21:52Z",
          "lastPosition": {"type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-3.3556, 47.7492, 7.0]},
            "properties": {"createdAt": "2025-09-04T05:33:15Z", "heading": 8, "type": "Acquire", "signalQuality": 9, "fixStatus": "3D"}},
          "ignition": {"createdAt": "2025-09-04T07:21:52Z", "type": "Stop"},
          "battery": {"voltage": 87.0, "createdAt": "2025-09-04T07:21:52Z"},
          "service": {"createdAt": "2023-07-03T14:39:40Z", "type": "Electric"},
          "environment": {"luminosity": {"createdAt": "2025-09-04T07:21:52Z", "day": true},
                          "air": {"createdAt": "2025-09-04T07:21:52Z", "temp": 18.0}},
          "odometer": {"createdAt": "2025-09-04T07:21:52Z", "mileage": 96034.1},
          "kinetic": {"createdAt": "2025-09-04T05:33:15Z", "moving": false},
          "_links": {"self": {"href": "https://x/status?profile=endUser"}},
          "energies": [{"createdAt": "2026-09-19T14:28:05Z", "type": "Electric", "subType": "ElectricEnergy", "level": 72.0, "autonomy": 190,
            "extension": {"electric": {
              "battery": {"load": {"createdAt": "2026-09-19T14:28:05Z", "capacity": 32192, "residual": 20576}},
              "charging": {"plugged": true, "status": "InProgress", "remainingTime": "PT2H55M", "chargingRate": 20,
                           "chargingMode": "Slow", "nextDelayedTime": "PT1M", "schedule": []}}}}],
          "energy": [{"createdAt": "2026-09-19T14:28:05Z", "updatedAt": "2026-09-19T14:28:05Z", "type": "Electric", "level": 72.0, "autonomy": 190,
            "charging": {"plugged": true, "status": "InProgress", "remainingTime": "PT2H55M", "chargingRate": 20, "chargingMode": "Slow"},
            "battery": {"load": {"capacity": 32192, "residual": 20576}}}]
        })
    }

    fn phev(fuel_first: bool) -> Value {
        let fuel = json!({"createdAt": "2024-03-01T10:00:00Z", "type": "Fuel", "subType": "FossilEnergy", "level": 41, "autonomy": 310,
                          "extension": {"fuel": {"consumptions": {"total": 12}}}});
        let elec = json!({"createdAt": "2024-03-01T10:00:00Z", "type": "Electric", "subType": "ElectricEnergy", "level": 88, "autonomy": 45,
                          "extension": {"electric": {"charging": {"plugged": false, "status": "Disconnected", "remainingTime": "PT0S",
                                                                 "chargingRate": 0, "chargingMode": "No"}}}});
        let (a, b) = if fuel_first {
            (fuel, elec)
        } else {
            (elec, fuel)
        };
        json!({"createdAt": "2024-03-01T10:00:00Z", "odometer": {"createdAt": "2024-03-01T10:00:00Z", "mileage": 12000},
               "ignition": {"createdAt": "2024-03-01T10:00:00Z", "type": "Start"},
               "kinetic": {"createdAt": "2024-03-01T10:00:00Z", "moving": true, "speed": 87},
               "energies": [a, b]})
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            body: Value,
            check: fn(&Observation),
        }
        let cases = vec![
            Case {
                name: "EV charging (real shape)",
                body: ev(),
                check: |o| {
                    assert_eq!(o.soc, Some(72.0));
                    assert_eq!(o.range_km, Some(190));
                    assert_eq!(o.fuel_pct, None);
                    assert_eq!(o.charging_status.as_deref(), Some("InProgress"));
                    assert_eq!(o.plugged, Some(true));
                    assert_eq!(o.charging_rate_kmh, Some(20.0));
                    assert_eq!(o.charging_mode.as_deref(), Some("Slow"));
                    assert_eq!(o.charging_remaining_min, Some(175));
                    assert_eq!(o.longitude, Some(-3.3556), "GeoJSON: longitude first");
                    assert_eq!(o.latitude, Some(47.7492));
                    assert_eq!(o.position_ts, t("2025-09-04T05:33:15Z"));
                    assert_eq!(o.ignition.as_deref(), Some("Stop"));
                    assert_eq!(o.moving, Some(false));
                    assert_eq!(o.odometer_km, Some(96034.1));
                    assert_eq!(o.outside_temp_c, Some(18.0));
                    assert_eq!(o.battery_capacity_wh, Some(32192.0));
                    assert_eq!(o.observed_ts, t("2026-09-19T14:28:05Z"), "newest block");
                },
            },
            Case {
                name: "PHEV, fuel first, integers",
                body: phev(true),
                check: |o| {
                    assert_eq!(o.soc, Some(88.0));
                    assert_eq!(o.range_km, Some(45));
                    assert_eq!(o.fuel_pct, Some(41.0));
                    assert_eq!(o.fuel_range_km, Some(310));
                    assert_eq!(o.moving, Some(true));
                    assert_eq!(o.speed_kmh, Some(87.0));
                    assert_eq!(o.odometer_km, Some(12000.0));
                    assert_eq!(o.charging_status.as_deref(), Some("Disconnected"));
                    assert_eq!(o.latitude, None);
                },
            },
            Case {
                name: "thermic with engines[] and doorsState",
                body: json!({"createdAt": "2024-05-01T08:00:00Z",
                    "engines": [{"createdAt": "2024-05-01T08:00:00Z", "type": "Thermic", "extension": {"thermic": {"coolant": {"temp": 80}, "oil": {"temp": 90}}}}],
                    "energies": [{"createdAt": "2024-05-01T07:59:00Z", "type": "Fuel", "subType": "FossilEnergy", "level": 63.5, "autonomy": 540}],
                    "doorsState": {"createdAt": "2024-05-01T08:00:00Z", "lockedStates": ["Locked"], "opening": [{"identifier": "Driver", "state": "Closed"}]},
                    "odometer": {"createdAt": "2024-05-01T08:00:00Z", "mileage": 45012.7}}),
                check: |o| {
                    assert_eq!(o.soc, None);
                    assert_eq!(o.fuel_pct, Some(63.5));
                    assert_eq!(o.fuel_range_km, Some(540));
                    assert_eq!(o.doors_locked, Some(true));
                    assert_eq!(o.charging_status, None);
                    assert_eq!(o.observed_ts, t("2024-05-01T08:00:00Z"));
                },
            },
            Case {
                name: "fuel placeholder on an EV",
                body: json!({"createdAt": "2024-05-01T08:00:00Z",
                    "energies": [{"type": "Fuel", "subType": "FossilEnergy", "autonomy": 0, "extension": {"fuel": {"consumptions": {"total": 0}}}},
                                 {"createdAt": "2024-05-01T08:00:00Z", "type": "Electric", "level": 55.5, "autonomy": 201.4}],
                    "doorsState": {"lockedStates": ["Unlocked"]}}),
                check: |o| {
                    assert_eq!(o.fuel_pct, None);
                    assert_eq!(o.fuel_range_km, None);
                    assert_eq!(o.soc, Some(55.5));
                    assert_eq!(o.range_km, Some(201));
                    assert_eq!(o.doors_locked, Some(false));
                },
            },
            Case {
                name: "missing blocks",
                body: json!({"createdAt": "2024-05-01T08:00:00Z", "_links": {"self": {"href": "x"}}}),
                check: |o| {
                    assert_eq!(
                        *o,
                        Observation {
                            observed_ts: t("2024-05-01T08:00:00Z"),
                            block_times: t("2024-05-01T08:00:00Z").into_iter().collect(),
                            ..Observation::default()
                        }
                    );
                },
            },
            Case {
                name: "pre-2023 shape: updatedAt, deprecated energy[] only, odometer.createdAt null",
                body: json!({"updatedAt": "2021-03-01T09:00:00+00:00",
                    "lastPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                                     "properties": {"updatedAt": "2021-03-01T08:50:00Z", "type": "Estimated"}},
                    "odometer": {"createdAt": null, "mileage": 3100.5},
                    "energy": [{"updatedAt": "2021-03-01T08:55:00Z", "type": "Electric", "level": 80, "autonomy": 250,
                                "charging": {"plugged": true, "status": "Finished", "remainingTime": "PT0S", "chargingRate": 0, "chargingMode": "No"},
                                "battery": {"load": {"capacity": 46000, "residual": 36800}}}]}),
                check: |o| {
                    assert_eq!(o.soc, Some(80.0));
                    assert_eq!(o.charging_status.as_deref(), Some("Finished"));
                    assert_eq!(o.charging_remaining_min, Some(0));
                    assert_eq!(o.latitude, Some(48.85));
                    assert_eq!(o.longitude, Some(2.35));
                    assert_eq!(o.position_ts, t("2021-03-01T08:50:00Z"));
                    assert_eq!(o.odometer_km, Some(3100.5));
                    assert_eq!(o.battery_capacity_wh, Some(46000.0));
                    assert_eq!(o.observed_ts, t("2021-03-01T08:55:00Z"));
                },
            },
            Case {
                name: "new block wins, deprecated fills its gaps",
                body: json!({"energies": [{"createdAt": "2024-01-01T00:00:00Z", "type": "Electric", "level": 60}],
                             "energy": [{"createdAt": "2024-01-01T00:00:00Z", "type": "Electric", "level": 59, "autonomy": 150,
                                         "charging": {"status": "InProgress", "chargingRate": "35"}}]}),
                check: |o| {
                    assert_eq!(o.soc, Some(60.0));
                    assert_eq!(o.range_km, Some(150));
                    assert_eq!(o.charging_rate_kmh, Some(35.0));
                },
            },
        ];
        for c in cases {
            let text = serde_json::to_vec(&c.body).unwrap();
            let p = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            eprintln!("case: {}", c.name);
            (c.check)(&p.observation);
        }
    }

    #[test]
    fn the_hash_ignores_key_order_and_phev_energy_order_but_not_values() {
        let a = phev(true);
        let b = phev(false);
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        // Keys in another order (preserve_order keeps it): same hash.
        let reordered: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let sorted: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(canonical_hash(&reordered), canonical_hash(&sorted));
        // Other arrays keep their order; values matter.
        let swapped: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [2, 1]}, "b": 1}"#).unwrap();
        assert_ne!(canonical_hash(&swapped), canonical_hash(&sorted));
        let mut c = phev(true);
        c["energies"][0]["level"] = json!(40);
        assert_ne!(canonical_hash(&c), canonical_hash(&a));
    }

    #[test]
    fn impossible_values_are_none_and_named() {
        let mut b = ev();
        b["energies"][0]["level"] = json!(1e308);
        b["energies"][0]["autonomy"] = json!(9_223_372_036_854_775_807u64);
        b["energies"][0]["extension"]["electric"]["battery"]["load"]["capacity"] = json!("inf");
        b["energies"][0]["extension"]["electric"]["charging"]["remainingTime"] = json!("P30D");
        b["odometer"]["mileage"] = json!(-1);
        b["environment"]["air"]["temp"] = json!("NaN");
        b["lastPosition"]["geometry"]["coordinates"] = json!([2.35, 91.0]);
        let p = parse(&serde_json::to_vec(&b).unwrap()).unwrap();
        let o = &p.observation;
        assert_eq!((o.soc, o.range_km, o.odometer_km), (None, None, None));
        assert_eq!(
            (o.battery_capacity_wh, o.charging_remaining_min),
            (None, None)
        );
        assert_eq!(
            (o.latitude, o.longitude, o.outside_temp_c),
            (None, None, None)
        );
        assert_eq!(o.charging_rate_kmh, Some(20.0), "the others stay");
        // Not finite (the string "inf", "NaN") is no value at all; finite but impossible is named.
        assert_eq!(
            p.out_of_range,
            [
                "latitude",
                "soc",
                "range_km",
                "odometer_km",
                "charging_remaining_min"
            ]
        );
        // The bounds themselves are values.
        let mut edge = ev();
        edge["energies"][0]["level"] = json!(100);
        edge["energies"][0]["autonomy"] = json!(0);
        let p = parse(&serde_json::to_vec(&edge).unwrap()).unwrap();
        assert_eq!(
            (p.observation.soc, p.observation.range_km),
            (Some(100.0), Some(0))
        );
        assert!(p.out_of_range.is_empty());
    }

    #[test]
    fn durations_and_bad_bodies() {
        assert_eq!(iso_duration_minutes("PT2H55M"), Some(175));
        assert_eq!(iso_duration_minutes("PT0S"), Some(0));
        assert_eq!(iso_duration_minutes("P1DT1H"), Some(1500));
        assert_eq!(iso_duration_minutes("PT90S"), Some(2));
        assert_eq!(iso_duration_minutes("2h"), None);
        assert_eq!(iso_duration_minutes("PT5X"), None);
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{").is_err());
    }
}
