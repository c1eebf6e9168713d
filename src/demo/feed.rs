//! The demo's live view: what the database gained since the last look, one line per event (a
//! vehicle added, removed or changed, a charge started or finished, a trip, an account that
//! needs a login), and the totals printed at the end. It only reads the database, through the
//! documented tables and views, as an analyst would; it knows nothing of the daemon.

use std::collections::HashSet;
use std::fmt;

use rusqlite::Connection;

/// One line of the live view.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it happened, Unix seconds: a list change when the pass saw it, a charge or a trip at
    /// the car's own time.
    pub at: i64,
    pub account: String,
    /// Brand, model and the VIN's last six characters; empty for an account's event.
    pub vehicle: String,
    pub what: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = chrono::DateTime::from_timestamp(self.at, 0)
            .map(|t| t.format("%a %H:%M").to_string())
            .unwrap_or_default();
        write!(
            f,
            "{at}  {:<7} {:<30} {}",
            self.account, self.vehicle, self.what
        )
    }
}

/// What has been shown already.
#[derive(Debug, Default)]
pub struct Feed {
    last_change: i64,
    charges_started: HashSet<i64>,
    charges_ended: HashSet<i64>,
    trips: HashSet<(String, String)>,
    needs_login: HashSet<String>,
}

/// Counts for the closing summary.
#[derive(Debug, Default, PartialEq)]
pub struct Totals {
    pub accounts: i64,
    pub vehicles: i64,
    pub changes: i64,
    pub charges: i64,
    pub trips: i64,
}

impl Feed {
    /// The events recorded since the last call, in the order they were recorded (list changes
    /// first, then charges, trips and accounts).
    pub fn poll(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Event>> {
        let mut out = self.list_changes(conn)?;
        out.extend(self.charges(conn)?);
        out.extend(self.new_trips(conn)?);
        out.extend(self.accounts(conn)?);
        Ok(out)
    }

    /// A pass's changes to one vehicle as one line: `added`, `removed`, a re-spray (the picture
    /// URLs' `color=`), one field's old and new value, or the fields that changed.
    fn list_changes(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Event>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT change_id, run_id, account, coalesce(vin, ''), kind, field, old_value, \
                 new_value, observed_at FROM vehicle_history WHERE change_id > ?1 \
                 ORDER BY change_id LIMIT 2000",
            )?
            .query_map([self.last_change], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        // Group by (run, vehicle), in the order the groups first appear.
        let mut groups: Vec<((i64, String, String), Vec<Row>)> = Vec::new();
        for row in rows {
            self.last_change = row.0;
            let key = (row.1, row.2.clone(), row.3.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, rows)) => rows.push(row),
                None => groups.push((key, vec![row])),
            }
        }
        let mut out = Vec::new();
        for ((_, account, vin), rows) in groups {
            let at = rows
                .last()
                .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.8).ok())
                .map_or(0, |t| t.timestamp());
            let kinds: Vec<&str> = rows.iter().map(|r| r.4.as_str()).collect();
            let what = if kinds.contains(&"removed") {
                "removed from the account".to_owned()
            } else if kinds.contains(&"added") {
                "added".to_owned()
            } else {
                describe_changes(
                    &rows
                        .iter()
                        .map(|r| (r.5.clone(), r.6.clone(), r.7.clone()))
                        .collect::<Vec<_>>(),
                )
            };
            out.push(Event {
                at,
                vehicle: vehicle_name(conn, &account, &vin),
                account,
                what,
            });
        }
        Ok(out)
    }

    fn charges(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Event>> {
        type Row = (
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<String>,
        );
        let mut rows: Vec<Row> = conn
            .prepare(
                "SELECT s.session_id, a.name, s.vin, s.started_ts, s.ended_ts, s.start_soc, \
                 s.end_soc, s.energy_added_kwh, s.end_reason \
                 FROM charging_sessions AS s JOIN accounts AS a USING (account_id) \
                 ORDER BY s.session_id DESC LIMIT 100",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        let mut out = Vec::new();
        for (id, account, vin, started, ended, soc0, soc1, kwh, reason) in rows {
            let vehicle = vehicle_name(conn, &account, &vin);
            if self.charges_started.insert(id) && ended.is_none() {
                out.push(Event {
                    at: started,
                    account: account.clone(),
                    vehicle: vehicle.clone(),
                    what: format!("charge started at {}", pct(soc0)),
                });
            }
            if let Some(end) = ended
                && self.charges_ended.insert(id)
            {
                let how = match reason.as_deref() {
                    Some("finished") => "charge finished".to_owned(),
                    Some(r) => format!("charge ended ({r})"),
                    None => "charge ended".to_owned(),
                };
                let kwh = kwh.map(|k| format!(", {k:.1} kWh")).unwrap_or_default();
                out.push(Event {
                    at: end,
                    account,
                    vehicle,
                    what: format!(
                        "{how}: {} → {}{kwh} in {} min",
                        pct(soc0),
                        pct(soc1),
                        (end - started) / 60
                    ),
                });
            }
        }
        Ok(out)
    }

    fn new_trips(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Event>> {
        type Row = (
            String,
            String,
            String,
            i64,
            Option<f64>,
            Option<i64>,
            Option<f64>,
            Option<f64>,
        );
        let mut rows: Vec<Row> = conn
            .prepare(
                "SELECT a.name, t.vin, t.trip_id, t.started_ts, t.distance_km, t.duration_s, \
                 t.electric_avg_consumption, t.fuel_avg_consumption \
                 FROM trips AS t JOIN accounts AS a USING (account_id) \
                 WHERE t.done IS NOT 0 ORDER BY t.started_ts DESC LIMIT 100",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        let mut out = Vec::new();
        for (account, vin, trip_id, started, km, secs, kwh100, l100) in rows {
            if !self.trips.insert((vin.clone(), trip_id)) {
                continue;
            }
            let consumption = match (kwh100, l100) {
                (Some(e), _) => format!(", {e:.1} kWh/100 km"),
                (None, Some(l)) => format!(", {l:.1} l/100 km"),
                (None, None) => String::new(),
            };
            out.push(Event {
                at: started,
                vehicle: vehicle_name(conn, &account, &vin),
                account,
                what: format!(
                    "drove {:.1} km in {} min{consumption}",
                    km.unwrap_or(0.0),
                    secs.unwrap_or(0) / 60
                ),
            });
        }
        Ok(out)
    }

    fn accounts(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Event>> {
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT name, state FROM accounts ORDER BY name")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (name, state) in rows {
            if state != "needs_reauth" {
                self.needs_login.remove(&name);
            } else if self.needs_login.insert(name.clone()) {
                out.push(Event {
                    at: chrono::Utc::now().timestamp(),
                    what: format!("needs a login: stellantis-sync login --account {name}"),
                    account: name,
                    vehicle: String::new(),
                });
            }
        }
        Ok(out)
    }
}

/// What a pass changed on one vehicle, from its `(field, old, new)` rows.
fn describe_changes(rows: &[(Option<String>, Option<String>, Option<String>)]) -> String {
    let mut roots: Vec<String> = Vec::new();
    for (field, _, _) in rows {
        let f = field.as_deref().unwrap_or("");
        // `/pictures/3` -> `/pictures`
        let root = match f.rsplit_once('/') {
            Some((head, tail)) if !head.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) => {
                head
            }
            _ => f,
        };
        if !roots.iter().any(|r| r == root) {
            roots.push(root.to_owned());
        }
    }
    if roots == ["/pictures"] {
        let first = rows
            .iter()
            .find(|(f, _, _)| f.as_deref() == Some("/pictures/0"));
        let colour = |v: &Option<String>| v.as_deref().and_then(paint_code);
        return match first.map(|(_, old, new)| (colour(old), colour(new))) {
            Some((Some(old), Some(new))) if old != new => format!("re-sprayed: {old} → {new}"),
            _ => "new pictures".to_owned(),
        };
    }
    if let [(Some(field), old, new)] = rows {
        let short = |v: &Option<String>| {
            let v = v.as_deref().unwrap_or("(none)");
            let mut s: String = v.chars().take(32).collect();
            if v.chars().count() > 32 {
                s.push('…');
            }
            s
        };
        return format!("{field}: {} → {}", short(old), short(new));
    }
    let shown: Vec<&str> = roots.iter().take(4).map(String::as_str).collect();
    let more = if roots.len() > 4 { ", …" } else { "" };
    format!("changed {}{more}", shown.join(", "))
}

/// The paint code in a picture URL's `color=` parameter (a JSON string value).
fn paint_code(json: &str) -> Option<String> {
    let url: String = serde_json::from_str(json).ok()?;
    let rest = url.split_once("color=")?.1;
    let code = rest.split('&').next()?;
    (!code.is_empty()).then(|| code.to_owned())
}

/// `Peugeot e-208 …000001`: the brand as `vehicle_list` spells it, the label or the
/// motorization, and the VIN's end.
fn vehicle_name(conn: &Connection, account: &str, vin: &str) -> String {
    let listed: Option<(Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT brand, coalesce(label, motorization) FROM vehicle_list \
             WHERE account = ?1 AND vin = ?2 LIMIT 1",
            [account, vin],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let tail: String = vin
        .chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let (brand, model) = listed.unwrap_or_default();
    let mut name: Vec<String> = [brand, model].into_iter().flatten().collect();
    name.push(format!("…{tail}"));
    name.join(" ")
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}%"))
}

/// The closing summary's counts.
pub fn totals(conn: &Connection) -> rusqlite::Result<Totals> {
    let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    Ok(Totals {
        accounts: n("SELECT count(*) FROM accounts")?,
        vehicles: n("SELECT count(*) FROM vehicles WHERE removed_at IS NULL")?,
        changes: n("SELECT count(*) FROM vehicle_changes")?,
        charges: n("SELECT count(*) FROM charging_sessions")?,
        trips: n("SELECT count(*) FROM trips")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn a_pass_on_one_vehicle_is_one_line() {
        let pic = |c: &str| {
            some(&format!(
                "\"https://visuel3d-secure.citroen.com/V3DImage.ashx?client=x&version=1&color={c}&trim=0&view=001\""
            ))
        };
        let respray: Vec<_> = (0..12)
            .map(|i| {
                (
                    some(&format!("/pictures/{i}")),
                    pic("0MM00N9V"),
                    pic("0MP00NWP"),
                )
            })
            .collect();
        assert_eq!(
            describe_changes(&respray),
            "re-sprayed: 0MM00N9V → 0MP00NWP"
        );
        assert_eq!(
            describe_changes(&[(
                some("/label"),
                some("\"5008\""),
                some("\"NOUVEAU 5008 #73\"")
            )]),
            "/label: \"5008\" → \"NOUVEAU 5008 #73\""
        );
        assert_eq!(
            describe_changes(&[
                (some("/label"), some("1"), some("2")),
                (some("/pictures/0"), some("1"), some("2")),
                (some("/pictures/1"), some("1"), some("2")),
            ]),
            "changed /label, /pictures"
        );
        let long = "x".repeat(100);
        assert_eq!(
            describe_changes(&[(some("/a"), None, some(&long))]),
            format!("/a: (none) → {}…", "x".repeat(32))
        );
    }

    #[test]
    fn an_event_line_has_the_time_account_vehicle_and_what() {
        let e = Event {
            at: 1_767_258_000, // 2026-01-01T09:00:00Z, a Thursday
            account: "user1".into(),
            vehicle: "Peugeot e-208 …000001".into(),
            what: "charge started at 20%".into(),
        };
        assert_eq!(
            e.to_string(),
            "Thu 09:00  user1   Peugeot e-208 …000001          charge started at 20%"
        );
    }

    #[test]
    fn each_charge_and_trip_is_shown_once_with_its_account_and_vehicle() {
        use crate::store::Db;
        use crate::store::telemetry::{Batch, StatusFetch};
        use crate::telemetry::{records, status};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite");
        let mut db = Db::open(&path).unwrap();
        let id = db.account_id("a", "peugeot").unwrap();
        let fetch = |at: i64, soc: f64, st: &str| {
            let body = serde_json::json!({"createdAt": "2026-01-01T00:00:00Z", "energies": [{
                "createdAt": format!("2026-01-01T00:{:02}:00Z", at), "type": "Electric", "level": soc,
                "extension": {"electric": {"charging": {"status": st}}}}]})
            .to_string();
            StatusFetch {
                vin: "VR3UHZKXZMT000001".into(),
                fetched_ts: 1_767_225_600 + at * 60 + 30,
                parsed: status::parse(body.as_bytes()).unwrap(),
                body,
            }
        };
        let conn = crate::store::open_read_only(&path).unwrap();
        let mut feed = Feed::default();
        let write = |db: &mut Db, b: Batch| db.write_telemetry(id, &b, 3600).unwrap();
        write(
            &mut db,
            Batch {
                statuses: vec![fetch(1, 20.0, "InProgress")],
                ..Batch::default()
            },
        );
        let lines = |feed: &mut Feed| -> Vec<String> {
            feed.poll(&conn)
                .unwrap()
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert_eq!(
            lines(&mut feed),
            ["Thu 00:01  a       …000001                        charge started at 20%"]
        );
        assert!(lines(&mut feed).is_empty(), "shown once");
        let trip = records::trip(
            &serde_json::json!({"id": "t1", "startedAt": "2026-01-01T00:30:00Z",
            "distance": 12.34, "duration": 900,
            "energyConsumptions": [{"type": "Electric", "avgConsumption": 16_200.0}]}),
        )
        .unwrap();
        write(
            &mut db,
            Batch {
                statuses: vec![fetch(21, 60.0, "Finished")],
                trips: vec![("VR3UHZKXZMT000001".into(), vec![trip])],
                ..Batch::default()
            },
        );
        assert_eq!(
            lines(&mut feed),
            [
                "Thu 00:21  a       …000001                        charge finished: 20% → 60% in 20 min",
                "Thu 00:30  a       …000001                        drove 12.3 km in 15 min, 16.2 kWh/100 km"
            ]
        );
        assert!(lines(&mut feed).is_empty());
        db.conn()
            .execute("UPDATE accounts SET state = 'needs_reauth'", [])
            .unwrap();
        let l = lines(&mut feed);
        assert_eq!(l.len(), 1);
        assert!(
            l[0].ends_with("a                                      needs a login: stellantis-sync login --account a"),
            "{l:?}"
        );
        assert!(lines(&mut feed).is_empty());
    }
}
