//! The typed rows of `/trips`, `/alerts` and `/maintenance` items, read tolerantly (missing
//! fields stay NULL; numbers may be integers, floats or numeric strings). Pure.
//!
//! Units are converted here, at the boundary, to the ones `docs/schema.md` documents: the
//! official schema gives a trip's `energyConsumptions[].avgConsumption` in Wh/100 km (electric)
//! and cl/100 km (fuel), stored as kWh/100 km and l/100 km; `consumption` is already kWh or
//! litres (docs/api.md, "Units"). A trip's values outside their physical range
//! ([`super::status::BOUNDS`]) are `None`, their columns named in [`Trip::out_of_range`].

use serde_json::Value;

use super::status::{self, ts};

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn text(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn time(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_str).and_then(ts)
}

fn by_type<'a>(v: &'a Value, k: &str, kind: &str) -> Option<&'a Value> {
    v.get(k)?
        .as_array()?
        .iter()
        .find(|e| e.get("type").and_then(Value::as_str) == Some(kind))
}

/// (longitude, latitude) of a GeoJSON point feature (longitude first).
fn point(v: &Value, k: &str) -> (Option<f64>, Option<f64>) {
    let c = v.get(k).and_then(|p| p.pointer("/geometry/coordinates"));
    match c {
        Some(c) => (
            c.get(0).and_then(Value::as_f64),
            c.get(1).and_then(Value::as_f64),
        ),
        None => (None, None),
    }
}

/// One `trips` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trip {
    pub trip_id: String,
    pub started_ts: i64,
    pub ended_ts: Option<i64>,
    pub distance_km: Option<f64>,
    pub duration_s: Option<i64>,
    pub start_odometer_km: Option<f64>,
    pub start_soc: Option<f64>,
    pub end_soc: Option<f64>,
    pub electric_consumption: Option<f64>,
    pub electric_avg_consumption: Option<f64>,
    pub fuel_consumption: Option<f64>,
    pub fuel_avg_consumption: Option<f64>,
    pub avg_speed_kmh: Option<f64>,
    pub max_speed_kmh: Option<f64>,
    pub start_latitude: Option<f64>,
    pub start_longitude: Option<f64>,
    pub end_latitude: Option<f64>,
    pub end_longitude: Option<f64>,
    pub done: Option<bool>,
    /// The item as the API sent it.
    pub data: String,
    /// The columns whose value was outside its bound (and is `None` here).
    pub out_of_range: Vec<&'static str>,
}

/// A trip item; `None` without an `id` or a `startedAt`.
pub fn trip(v: &Value) -> Option<Trip> {
    let trip_id = text(v, "id")?;
    let started_ts = time(v, "startedAt")?;
    let mut out = Vec::new();
    let (start_longitude, start_latitude) = point(v, "startPosition");
    let (end_longitude, end_latitude) = point(v, "stopPosition");
    let consumption =
        |kind: &str, k: &str| by_type(v, "energyConsumptions", kind).and_then(|e| num(e, &[k]));
    // Wh/100 km → kWh/100 km; cl/100 km → l/100 km.
    let per_100_km =
        |kind: &str, per_unit: f64| consumption(kind, "avgConsumption").map(|x| x / per_unit);
    let level = |k: &str| by_type(v, k, "Electric").and_then(|e| num(e, &["level"]));
    Some(Trip {
        trip_id,
        started_ts,
        ended_ts: time(v, "stoppedAt"),
        distance_km: status::TRIP_DISTANCE.check("distance_km", num(v, &["distance"]), &mut out),
        duration_s: status::TRIP_DURATION.check_int("duration_s", num(v, &["duration"]), &mut out),
        start_odometer_km: status::ODOMETER.check(
            "start_odometer_km",
            num(v, &["startMileage"]),
            &mut out,
        ),
        start_soc: status::LEVEL.check("start_soc", level("startEnergies"), &mut out),
        end_soc: status::LEVEL.check("end_soc", level("endEnergies"), &mut out),
        electric_consumption: status::TRIP_ENERGY.check(
            "electric_consumption",
            consumption("Electric", "consumption"),
            &mut out,
        ),
        electric_avg_consumption: status::TRIP_ELECTRIC_AVG.check(
            "electric_avg_consumption",
            per_100_km("Electric", 1000.0),
            &mut out,
        ),
        fuel_consumption: status::TRIP_FUEL.check(
            "fuel_consumption",
            consumption("Fuel", "consumption"),
            &mut out,
        ),
        fuel_avg_consumption: status::TRIP_FUEL_AVG.check(
            "fuel_avg_consumption",
            per_100_km("Fuel", 100.0),
            &mut out,
        ),
        avg_speed_kmh: status::SPEED.check(
            "avg_speed_kmh",
            num(v, &["kinetic", "avgSpeed"]),
            &mut out,
        ),
        max_speed_kmh: status::SPEED.check(
            "max_speed_kmh",
            num(v, &["kinetic", "maxSpeed"]),
            &mut out,
        ),
        start_latitude: status::LATITUDE.check("start_latitude", start_latitude, &mut out),
        start_longitude: status::LONGITUDE.check("start_longitude", start_longitude, &mut out),
        end_latitude: status::LATITUDE.check("end_latitude", end_latitude, &mut out),
        end_longitude: status::LONGITUDE.check("end_longitude", end_longitude, &mut out),
        done: v.get("done").and_then(Value::as_bool),
        data: v.to_string(),
        out_of_range: out,
    })
}

/// One `vehicle_alerts` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alert {
    pub alert_id: String,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub active: Option<bool>,
    pub started_ts: Option<i64>,
    pub ended_ts: Option<i64>,
}

/// An alert item; `None` without an `id`.
pub fn alert(v: &Value) -> Option<Alert> {
    Some(Alert {
        alert_id: text(v, "id")?,
        kind: text(v, "type"),
        severity: text(v, "severity"),
        active: v.get("active").and_then(Value::as_bool),
        started_ts: time(v, "startedAt"),
        ended_ts: time(v, "endAt").or_else(|| time(v, "endedAt")),
    })
}

/// A `maintenance` observation: (days_before, km_before).
pub fn maintenance(v: &Value) -> (Option<i64>, Option<f64>) {
    #[allow(clippy::cast_possible_truncation)]
    let days = num(v, &["daysBeforeMaintenance"]).map(|d| d.round() as i64);
    (days, num(v, &["mileageBeforeMaintenance"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_real_shaped_trip() {
        let v = json!({"id": "10fd0abc", "startedAt": "2024-06-01T08:00:00Z", "stoppedAt": "2024-06-01T08:31:00Z",
            "duration": 1860, "distance": 23.4, "done": true, "startMileage": 12000.5,
            "startPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}, "properties": {"heading": 1}},
            "stopPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.40, 48.80]}},
            "startEnergies": [{"type": "Fuel", "level": 50}, {"type": "Electric", "subType": "ElectricEnergy", "level": 80, "autonomy": 200}],
            "endEnergies": [{"type": "Electric", "level": 74.0}],
            // The official schema's units: kWh and Wh/100 km, litres and cl/100 km.
            "energyConsumptions": [{"type": "Electric", "consumption": 3.9, "avgConsumption": 16_700},
                                   {"type": "Fuel", "consumption": "1.5", "avgConsumption": 640.5}],
            "kinetic": {"avgSpeed": 45.2, "maxSpeed": 98}});
        let t = trip(&v).unwrap();
        assert_eq!(t.trip_id, "10fd0abc");
        assert_eq!(t.ended_ts.unwrap() - t.started_ts, 1860);
        assert_eq!((t.distance_km, t.duration_s), (Some(23.4), Some(1860)));
        assert_eq!((t.start_soc, t.end_soc), (Some(80.0), Some(74.0)));
        assert_eq!(
            (t.start_longitude, t.start_latitude),
            (Some(2.35), Some(48.85))
        );
        assert_eq!(t.end_latitude, Some(48.80));
        assert_eq!(
            (
                t.electric_consumption,
                t.electric_avg_consumption,
                t.fuel_consumption,
                t.fuel_avg_consumption
            ),
            (Some(3.9), Some(16.7), Some(1.5), Some(6.405))
        );
        assert_eq!(t.max_speed_kmh, Some(98.0));
        assert_eq!(t.done, Some(true));
        assert!(t.out_of_range.is_empty());
        assert!(trip(&json!({"id": "x"})).is_none());
    }

    #[test]
    fn impossible_trip_values_are_none_and_named() {
        let v = json!({"id": "t", "startedAt": "2024-06-01T08:00:00Z", "distance": 1e12, "duration": -60,
            "startEnergies": [{"type": "Electric", "level": 250}],
            "energyConsumptions": [{"type": "Electric", "consumption": 3.9, "avgConsumption": 9e9}],
            "kinetic": {"avgSpeed": 45.2, "maxSpeed": 1e6}});
        let t = trip(&v).unwrap();
        assert_eq!(
            (t.distance_km, t.duration_s, t.start_soc),
            (None, None, None)
        );
        assert_eq!((t.electric_avg_consumption, t.max_speed_kmh), (None, None));
        assert_eq!(
            (t.electric_consumption, t.avg_speed_kmh),
            (Some(3.9), Some(45.2))
        );
        assert_eq!(
            t.out_of_range,
            [
                "distance_km",
                "duration_s",
                "start_soc",
                "electric_avg_consumption",
                "max_speed_kmh"
            ]
        );
    }

    #[test]
    fn alerts_and_maintenance() {
        let a = alert(&json!({"id": 7, "type": "FuelLevelLow", "severity": "Warning", "active": false,
                              "startedAt": "2024-06-01T08:00:00Z", "endAt": "2024-06-01T09:00:00Z"}))
        .unwrap();
        assert_eq!(a.alert_id, "7");
        assert_eq!(a.ended_ts.unwrap() - a.started_ts.unwrap(), 3600);
        assert_eq!(
            maintenance(
                &json!({"daysBeforeMaintenance": 691, "mileageBeforeMaintenance": 23120.0})
            ),
            (Some(691), Some(23120.0))
        );
        assert_eq!(maintenance(&json!({})), (None, None));
    }
}
