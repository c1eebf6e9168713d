//! The typed rows of `/trips`, `/alerts` and `/maintenance` items, read tolerantly (missing
//! fields stay NULL; numbers may be integers, floats or numeric strings). Pure.
//!
//! Units are converted here, at the boundary, to the ones `docs/schema.md` documents: the
//! official schema gives a trip's `energyConsumptions[].avgConsumption` in Wh/100 km (electric)
//! and cl/100 km (fuel), stored as kWh/100 km and l/100 km; `consumption` is already kWh or
//! litres (docs/api.md, "Units").

use serde_json::Value;

use super::status::ts;

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
}

/// A trip item; `None` without an `id` or a `startedAt`.
pub fn trip(v: &Value) -> Option<Trip> {
    let trip_id = text(v, "id")?;
    let started_ts = time(v, "startedAt")?;
    let (start_longitude, start_latitude) = point(v, "startPosition");
    let (end_longitude, end_latitude) = point(v, "stopPosition");
    let consumption =
        |kind: &str, k: &str| by_type(v, "energyConsumptions", kind).and_then(|e| num(e, &[k]));
    // Wh/100 km → kWh/100 km; cl/100 km → l/100 km.
    let per_100_km =
        |kind: &str, per_unit: f64| consumption(kind, "avgConsumption").map(|x| x / per_unit);
    #[allow(clippy::cast_possible_truncation)]
    Some(Trip {
        trip_id,
        started_ts,
        ended_ts: time(v, "stoppedAt"),
        distance_km: num(v, &["distance"]),
        duration_s: num(v, &["duration"]).map(|d| d.round() as i64),
        start_odometer_km: num(v, &["startMileage"]),
        start_soc: by_type(v, "startEnergies", "Electric").and_then(|e| num(e, &["level"])),
        end_soc: by_type(v, "endEnergies", "Electric").and_then(|e| num(e, &["level"])),
        electric_consumption: consumption("Electric", "consumption"),
        electric_avg_consumption: per_100_km("Electric", 1000.0),
        fuel_consumption: consumption("Fuel", "consumption"),
        fuel_avg_consumption: per_100_km("Fuel", 100.0),
        avg_speed_kmh: num(v, &["kinetic", "avgSpeed"]),
        max_speed_kmh: num(v, &["kinetic", "maxSpeed"]),
        start_latitude,
        start_longitude,
        end_latitude,
        end_longitude,
        done: v.get("done").and_then(Value::as_bool),
        data: v.to_string(),
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
        assert!(trip(&json!({"id": "x"})).is_none());
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
