//! The simulated world: users, their vehicles and each vehicle's telemetry, generated
//! deterministically from a seed, and mutated over time. Every mutation of vehicle-list data is
//! appended to a log ([`WorldEvent`]) that tests compare with what the daemon recorded.
//!
//! The log is written from the simulator's point of view (what it did), never by diffing JSON, so
//! a test that compares it with the daemon's history checks the daemon's diff, not itself.

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use super::life::{Birth, Life, api_time, iso_duration};
use crate::brand::Brand;

/// One simulated end user of a brand app.
#[derive(Debug, Clone)]
pub struct SimUser {
    pub email: String,
    pub password: String,
    pub brand: Brand,
    pub vehicles: Vec<Vehicle>,
    /// Vehicles taken off this account, which may come back later.
    pub removed: Vec<Vehicle>,
}

/// One vehicle as the API lists it, plus the telemetry that `/status` reports.
#[derive(Debug, Clone)]
pub struct Vehicle {
    pub id: String,
    pub vin: String,
    pub brand_label: String,
    pub motorization: &'static str,
    pub label: Option<String>,
    pub version: String,
    pub color: String,
    /// The car's life on the simulator's clock: what `/status` shows and what really happened.
    pub life: Life,
}

/// What the simulator did to an account's vehicle list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorldEvent {
    pub seq: u64,
    pub at: String,
    pub user: String,
    pub vehicle_id: String,
    pub vin: String,
    /// `added`, `removed` or `changed`.
    pub kind: &'static str,
    /// For `changed`: the JSON pointer of the leaf that changed.
    pub field: Option<String>,
    /// The old value; `None` when the field did not exist.
    pub old: Option<Value>,
    /// The new value; `None` when the field no longer exists.
    pub new: Option<Value>,
}

/// The whole world and its random source.
#[derive(Debug)]
pub struct World {
    pub users: Vec<SimUser>,
    pub log: Vec<WorldEvent>,
    rng: StdRng,
    serial: u32,
    max_vehicles: usize,
}

const MOTORIZATIONS: [&str; 4] = ["Electric", "Hybrid", "Thermic", "Electric"];
/// How many values a label draw takes (the draw picks among a brand's models of the car's
/// motorization, so a Citroën is never labelled `e-208` nor a thermic car `CORSA-E`).
const LABEL_DRAWS: usize = 8;

/// A model name (`label`, "Version of a vehicle" in the official file) of `brand` for a car of
/// `motorization`, chosen by `draw` (any number).
pub fn label_for(brand: Brand, motorization: &str, draw: usize) -> &'static str {
    let models: &[&'static str] = match (brand, motorization) {
        (Brand::Peugeot, "Electric") => &["e-208", "e-2008", "e-308"],
        (Brand::Peugeot, "Hybrid") => &["3008 HYBRID4", "308 HYBRID"],
        (Brand::Peugeot, _) => &["NOUVEAU 5008", "208", "2008"],
        (Brand::Citroen, "Electric") => &["e-C4", "Ë-C3"],
        (Brand::Citroen, "Hybrid") => &["C5 AIRCROSS HYBRID", "C5 X HYBRID"],
        (Brand::Citroen, _) => &["C5 AIRCROSS", "C3", "C4"],
        (Brand::Ds, "Electric") => &["DS 3 CROSSBACK E-TENSE", "DS 3 E-TENSE"],
        (Brand::Ds, "Hybrid") => &["DS 7 E-TENSE 4x4", "DS 4 E-TENSE"],
        (Brand::Ds, _) => &["DS 7", "DS 4"],
        (Brand::Opel | Brand::Vauxhall, "Electric") => &["CORSA-E", "MOKKA-E", "ASTRA ELECTRIC"],
        (Brand::Opel | Brand::Vauxhall, "Hybrid") => &["GRANDLAND HYBRID4", "ASTRA HYBRID"],
        (Brand::Opel | Brand::Vauxhall, _) => &["CORSA", "ASTRA", "MOKKA"],
    };
    models[draw % models.len()]
}
const COLORS: [&str; 6] = [
    "0MM60NSM", "0MM00N9V", "0MP00NWP", "0MM00NHR", "0MZ00N9M", "0MM00NF3",
];

impl World {
    /// Generates `users` users (brands round-robin) with 0–`max_vehicles` vehicles each, or
    /// exactly `counts[i]` vehicles for user `i` where given; their lives start now.
    pub fn generate(seed: u64, users: usize, counts: &[usize], max_vehicles: usize) -> World {
        World::generate_at(seed, users, counts, max_vehicles, Utc::now())
    }

    /// [`World::generate`] with the cars' lives starting at `start` (sim time).
    pub fn generate_at(
        seed: u64,
        users: usize,
        counts: &[usize],
        max_vehicles: usize,
        start: DateTime<Utc>,
    ) -> World {
        let mut world = World {
            users: Vec::with_capacity(users),
            log: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            serial: 0,
            max_vehicles,
        };
        for i in 0..users {
            let brand = Brand::ALL[i % Brand::ALL.len()];
            let n = counts
                .get(i)
                .copied()
                .unwrap_or_else(|| world.rng.random_range(0..=max_vehicles));
            let vehicles = (0..n).map(|_| world.new_vehicle(brand, start)).collect();
            world.users.push(SimUser {
                email: format!("user{}@example.com", i + 1),
                password: format!("password{}", i + 1),
                brand,
                vehicles,
                removed: Vec::new(),
            });
        }
        world
    }

    fn new_vehicle(&mut self, brand: Brand, now: DateTime<Utc>) -> Vehicle {
        self.serial += 1;
        let mut id = String::with_capacity(200);
        while id.len() < 193 {
            id.push_str(&format!("{:016x}", self.rng.random::<u64>()));
        }
        id.truncate(193);
        let motorization = MOTORIZATIONS[self.rng.random_range(0..MOTORIZATIONS.len())];
        let label = if self.rng.random_bool(0.3) {
            let draw = self.rng.random_range(0..LABEL_DRAWS);
            Some(label_for(brand, motorization, draw).to_owned())
        } else {
            None
        };
        let vin = make_vin(brand, self.serial, &mut self.rng);
        let version = format!("1PP2A5ZESFB0A0D{}", self.rng.random_range(0..10));
        let color = COLORS[self.rng.random_range(0..COLORS.len())].to_owned();
        let birth = Birth {
            level: f64::from(self.rng.random_range(20..100u32)),
            fuel_level: f64::from(self.rng.random_range(10..100u32)),
            odometer: f64::from(self.rng.random_range(100..90_000u32)),
            lon: -3.3556 + self.rng.random_range(-2.0..2.0),
            lat: 47.7492 + self.rng.random_range(-2.0..2.0),
        };
        let life = Life::new(&id, &vin, motorization, &birth, now);
        Vehicle {
            vin,
            id,
            brand_label: brand.display().to_owned(),
            motorization,
            label,
            version,
            color,
            life,
        }
    }

    /// Every car's life, on an account or taken off one.
    pub fn lives(&self) -> impl Iterator<Item = &Life> {
        self.users
            .iter()
            .flat_map(|u| u.vehicles.iter().chain(u.removed.iter()))
            .map(|v| &v.life)
    }

    /// Index of the user with this e-mail (case-insensitive).
    pub fn user_index(&self, email: &str) -> Option<usize> {
        self.users
            .iter()
            .position(|u| u.email.eq_ignore_ascii_case(email))
    }

    /// Applies one random mutation to one random account's vehicle list. Returns how many
    /// events were logged. (Telemetry is not touched: each car lives on the clock, see `life`.)
    pub fn tick(&mut self, now: DateTime<Utc>) -> usize {
        if self.users.is_empty() {
            return 0;
        }
        let u = self.rng.random_range(0..self.users.len());
        self.mutate_user(u, now)
    }

    /// Applies one random mutation to user `u`'s vehicle list.
    pub fn mutate_user(&mut self, u: usize, now: DateTime<Utc>) -> usize {
        let before = self.log.len();
        let at = crate::timefmt::format(now);
        let brand = self.users[u].brand;
        let n = self.users[u].vehicles.len();
        let op = if n == 0 {
            0
        } else {
            self.rng.random_range(0..6u32)
        };
        match op {
            0 | 1 if n < self.max_vehicles.max(1) || n == 0 => {
                // Add: a vehicle that left earlier comes back half the time.
                let back = !self.users[u].removed.is_empty() && self.rng.random_bool(0.5);
                let v = if back {
                    let i = self.rng.random_range(0..self.users[u].removed.len());
                    self.users[u].removed.remove(i)
                } else {
                    self.new_vehicle(brand, now)
                };
                self.push_event(&at, u, &v, "added", None, None, None);
                let pos = self.rng.random_range(0..=n);
                self.users[u].vehicles.insert(pos, v);
            }
            0..=2 => {
                let i = self.rng.random_range(0..n);
                let v = self.users[u].vehicles.remove(i);
                self.push_event(&at, u, &v, "removed", None, None, None);
                self.users[u].removed.push(v);
            }
            3 => {
                // Label appears, changes or disappears.
                let i = self.rng.random_range(0..n);
                let old = self.users[u].vehicles[i].label.clone();
                let new = match &old {
                    Some(_) if self.rng.random_bool(0.5) => None,
                    _ => Some(format!(
                        "{} #{}",
                        label_for(
                            brand,
                            self.users[u].vehicles[i].motorization,
                            self.rng.random_range(0..LABEL_DRAWS)
                        ),
                        self.rng.random_range(1..100u32)
                    )),
                };
                let v = self.users[u].vehicles[i].clone();
                self.push_event(
                    &at,
                    u,
                    &v,
                    "changed",
                    Some("/label".into()),
                    old.map(Value::String),
                    new.clone().map(Value::String),
                );
                self.users[u].vehicles[i].label = new;
            }
            4 => {
                // A re-spray: every picture URL carries the colour code.
                let i = self.rng.random_range(0..n);
                let old_v = self.users[u].vehicles[i].clone();
                let mut color = old_v.color.clone();
                while color == old_v.color {
                    color = COLORS[self.rng.random_range(0..COLORS.len())].to_owned();
                }
                let mut new_v = old_v.clone();
                new_v.color = color;
                let (old_p, new_p) = (pictures(brand, &old_v), pictures(brand, &new_v));
                for (k, (a, b)) in old_p.iter().zip(new_p.iter()).enumerate() {
                    self.push_event(
                        &at,
                        u,
                        &old_v,
                        "changed",
                        Some(format!("/pictures/{k}")),
                        Some(Value::String(a.clone())),
                        Some(Value::String(b.clone())),
                    );
                }
                self.users[u].vehicles[i] = new_v;
            }
            _ => {
                // The brand string is respelled (it is deprecated and has varied in real traffic).
                let i = self.rng.random_range(0..n);
                let v = self.users[u].vehicles[i].clone();
                let new = if v.brand_label == brand.display() {
                    brand.display().to_uppercase()
                } else {
                    brand.display().to_owned()
                };
                if new != v.brand_label {
                    self.push_event(
                        &at,
                        u,
                        &v,
                        "changed",
                        Some("/brand".into()),
                        Some(Value::String(v.brand_label.clone())),
                        Some(Value::String(new.clone())),
                    );
                    self.users[u].vehicles[i].brand_label = new;
                }
            }
        }
        self.log.len() - before
    }

    /// Removes user `u`'s first vehicle and appends a new one (the vehicle count stays the
    /// same), logging both. Nothing happens on an empty account.
    pub fn shift_keep_total(&mut self, u: usize, now: DateTime<Utc>) -> usize {
        if self.users[u].vehicles.is_empty() {
            return 0;
        }
        let at = crate::timefmt::format(now);
        let brand = self.users[u].brand;
        let gone = self.users[u].vehicles.remove(0);
        self.push_event(&at, u, &gone, "removed", None, None, None);
        self.users[u].removed.push(gone);
        let v = self.new_vehicle(brand, now);
        self.push_event(&at, u, &v, "added", None, None, None);
        self.users[u].vehicles.push(v);
        2
    }

    #[allow(clippy::too_many_arguments)]
    fn push_event(
        &mut self,
        at: &str,
        u: usize,
        v: &Vehicle,
        kind: &'static str,
        field: Option<String>,
        old: Option<Value>,
        new: Option<Value>,
    ) {
        let seq = self.log.len() as u64 + 1;
        self.log.push(WorldEvent {
            seq,
            at: at.to_owned(),
            user: self.users[u].email.clone(),
            vehicle_id: v.id.clone(),
            vin: v.vin.clone(),
            kind,
            field,
            old,
            new,
        });
    }
}

/// A syntactically valid 17-character VIN with the brand's WMI and a correct check digit
/// (position 9, ISO 3779 / FMVSS 115 weights); never contains I, O or Q.
pub fn make_vin(brand: Brand, serial: u32, rng: &mut StdRng) -> String {
    const VDS: &str = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
    let vds: Vec<char> = VDS.chars().collect();
    let mut vin: Vec<char> = brand.vin_prefix().chars().collect();
    for _ in 0..5 {
        vin.push(vds[rng.random_range(0..vds.len())]);
    }
    vin.push('0'); // check digit placeholder
    vin.push(['L', 'M', 'N', 'P', 'R'][rng.random_range(0..5)]); // model year 2020-2024
    vin.push(['T', 'W', 'Y'][rng.random_range(0..3)]); // plant
    for c in format!("{:06}", serial % 1_000_000).chars() {
        vin.push(c);
    }
    vin[8] = vin_check_digit(&vin);
    vin.into_iter().collect()
}

/// The ISO 3779 check digit of a 17-character VIN (position 9 ignored).
pub fn vin_check_digit(vin: &[char]) -> char {
    const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    let value = |c: char| -> u32 {
        match c {
            '0'..='9' => c.to_digit(10).unwrap_or(0),
            'A' | 'J' => 1,
            'B' | 'K' | 'S' => 2,
            'C' | 'L' | 'T' => 3,
            'D' | 'M' | 'U' => 4,
            'E' | 'N' | 'V' => 5,
            'F' | 'W' => 6,
            'G' | 'P' | 'X' => 7,
            'H' | 'Y' => 8,
            'R' | 'Z' => 9,
            _ => 0,
        }
    };
    let sum: u32 = vin
        .iter()
        .zip(WEIGHTS)
        .map(|(c, w)| value(*c) * w)
        .sum::<u32>()
        % 11;
    if sum == 10 {
        'X'
    } else {
        char::from_digit(sum, 10).unwrap_or('0')
    }
}

/// The twelve 3D-visual URLs of a vehicle (`view=001` … `view=012`).
pub fn pictures(brand: Brand, v: &Vehicle) -> Vec<String> {
    (1..=12)
        .map(|view| {
            format!(
                "https://{}/V3DImage.ashx?client=miseco&back=0&format=png&version={}&color={}&trim=0PD70RFX&OPT1=DLZ0&OPT2=DNA0&view={view:03}",
                brand.picture_host(),
                v.version,
                v.color
            )
        })
        .collect()
}

/// The vehicle as `GET /user/vehicles` lists it (2024+ shape; `label` only while set).
pub fn vehicle_json(brand: Brand, v: &Vehicle, api_base: &str) -> Value {
    let base = format!("{api_base}/user/vehicles/{}", v.id);
    let mut links = serde_json::Map::new();
    for rel in [
        "collisions",
        "alarms",
        "alerts",
        "lastPosition",
        "maintenance",
        "status",
        "telemetry",
        "trips",
    ] {
        links.insert(rel.into(), json!({"href": format!("{base}/{rel}")}));
    }
    links.insert(
        "callbacks".into(),
        json!({"href": format!("{api_base}/user/callbacks")}),
    );
    links.insert("user".into(), json!({"href": format!("{api_base}/user")}));
    links.insert("self".into(), json!({"href": base}));
    let mut obj = serde_json::Map::new();
    obj.insert("_links".into(), Value::Object(links));
    obj.insert("id".into(), json!(v.id));
    obj.insert("vin".into(), json!(v.vin));
    obj.insert("motorization".into(), json!(v.motorization));
    obj.insert("brand".into(), json!(v.brand_label));
    if let Some(label) = &v.label {
        obj.insert("label".into(), json!(label));
    }
    obj.insert("pictures".into(), json!(pictures(brand, v)));
    Value::Object(obj)
}

/// The position of the car's last report that had one: a GeoJSON Feature, longitude first (the
/// `lastPosition` block of `/status` and the deprecated `/lastPosition` endpoint).
pub fn last_position_json(v: &Vehicle) -> Value {
    let r = &v.life.rep;
    json!({"type": "Feature",
        "geometry": {"type": "Point", "coordinates": [r.lon, r.lat, 7.0]},
        "properties": {"createdAt": api_time(r.position_at), "heading": r.heading, "type": "Acquire",
                       "signalQuality": 9, "fixStatus": "3D"}})
}

/// The `/status` body: new blocks (`energies`, `preconditioning`) and the deprecated ones
/// (`energy` as an array, `preconditionning`, `service`) side by side, as the real API sends them,
/// built from the car's last report only: while the car is parked the body does not change
/// (`shuffle` swaps a PHEV's two energies, whose order is unstable in real traffic). Integers
/// where the official schema says integer (autonomy km, capacity and residual Wh, chargingRate
/// km/h, heading): `218`, never `218.0`.
pub fn status_json(v: &Vehicle, api_base: &str, shuffle: bool) -> Value {
    let l = &v.life;
    let r = &l.rep;
    let ts = api_time(r.at);
    let older = api_time(l.born - ChronoDuration::days(3));
    let autonomy = l.reported_electric_autonomy();
    let residual = l.reported_residual_wh();
    let fuel_autonomy = l.reported_fuel_autonomy();
    let capacity = i64::from(l.capacity_wh);
    let remaining = iso_duration(r.remaining_secs);
    let charging = json!({"plugged": r.plugged, "status": r.charge_status, "remainingTime": remaining,
        "chargingRate": r.charging_rate_kmh, "chargingMode": r.charge_mode,
        "nextDelayedTime": "PT0S"});
    let mut charging_new = charging.clone();
    charging_new["schedule"] = json!([]);
    let electric_new = json!({
        "createdAt": ts, "type": "Electric", "subType": "ElectricEnergy", "level": r.soc, "autonomy": autonomy,
        "extension": {"electric": {
            "battery": {"load": {"createdAt": ts, "capacity": capacity, "residual": residual},
                        "health": {"createdAt": ts, "resistance": 91}},
            "charging": charging_new}}
    });
    let fuel_new = json!({
        "createdAt": ts, "type": "Fuel", "subType": "FossilEnergy", "level": r.fuel,
        "autonomy": fuel_autonomy, "extension": {"fuel": {"consumptions": {"total": 0}}}
    });
    let electric_old = json!({
        "createdAt": ts, "updatedAt": ts, "type": "Electric", "level": r.soc, "autonomy": autonomy,
        "charging": charging,
        "battery": {"load": {"capacity": capacity, "residual": residual}}
    });
    let fuel_old = json!({"createdAt": ts, "updatedAt": ts, "type": "Fuel", "level": r.fuel,
                          "autonomy": fuel_autonomy});
    let (mut energies, mut energy) = match v.motorization {
        "Electric" => (vec![electric_new], vec![electric_old]),
        "Hybrid" => (vec![fuel_new, electric_new], vec![fuel_old, electric_old]),
        _ => (vec![fuel_new], vec![fuel_old]),
    };
    if shuffle {
        // PHEV energy order is not stable in real traffic.
        energies.reverse();
        energy.reverse();
    }
    let service = match v.motorization {
        "Electric" => "Electric",
        "Hybrid" => "Hybrid",
        _ => "Unknown",
    };
    let precond =
        json!({"airConditioning": {"createdAt": older, "updatedAt": older, "status": "Disabled"}});
    let kinetic = if r.driving {
        json!({"createdAt": ts, "moving": true, "speed": r.speed})
    } else {
        json!({"createdAt": ts, "moving": false})
    };
    let locked = if r.driving { "Unlocked" } else { "Locked" };
    let opening: Vec<Value> = ["Driver", "Passenger", "RearLeft", "RearRight", "Trunk"]
        .iter()
        .map(|d| json!({"identifier": d, "state": "Closed"}))
        .collect();
    let doors = json!({"createdAt": ts, "lockedStates": [locked], "opening": opening});
    let mut body = json!({
        "createdAt": ts, "updatedAt": ts,
        "lastPosition": last_position_json(v),
        "ignition": {"createdAt": ts, "type": if r.driving {"Start"} else {"Stop"}},
        "battery": {"voltage": 87.0, "createdAt": ts},
        "privacy": {"createdAt": ts, "state": "None"},
        "service": {"createdAt": "2023-07-03T14:39:40Z", "type": service},
        "environment": {"luminosity": {"createdAt": ts, "day": (7..19).contains(&r.at.hour())},
                        "air": {"createdAt": ts, "temp": r.air_temp}},
        "odometer": {"createdAt": ts, "mileage": r.odometer},
        "kinetic": kinetic,
        "doorsState": doors,
        "alarm": {"status": {"createdAt": ts, "activation": if r.driving {"Inactive"} else {"Active"}}},
        "_links": {"self": {"href": format!("{api_base}/user/vehicles/{}/status?profile=endUser", v.id)},
                   "vehicle": {"href": format!("{api_base}/user/vehicles/{}", v.id)}},
        "preconditioning": precond.clone(),
        "energies": energies,
        "preconditionning": precond,
        "energy": energy,
    });
    if v.motorization != "Electric"
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert(
            "engines".into(),
            json!([{"createdAt": ts, "type": "Thermic",
                "extension": {"thermic": {"coolant": {"temp": r.coolant_temp}, "oil": {"temp": r.oil_temp},
                                          "air": {"temp": r.air_temp}}}}]),
        );
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_vins_are_valid() {
        let a = World::generate(7, 10, &[], 4);
        let b = World::generate(7, 10, &[], 4);
        for (ua, ub) in a.users.iter().zip(&b.users) {
            assert_eq!(ua.vehicles.len(), ub.vehicles.len());
            for (va, vb) in ua.vehicles.iter().zip(&ub.vehicles) {
                assert_eq!(va.vin, vb.vin);
                assert_eq!(va.id, vb.id);
                assert_eq!(va.vin.len(), 17);
                assert!(va.vin.starts_with(ua.brand.vin_prefix()));
                assert!(!va.vin.contains(['I', 'O', 'Q']));
                let chars: Vec<char> = va.vin.chars().collect();
                assert_eq!(chars[8], vin_check_digit(&chars));
                assert_eq!(va.id.len(), 193);
            }
        }
        assert_eq!(a.users[0].email, "user1@example.com");
        assert_eq!(a.users[1].brand, Brand::Citroen);
    }

    #[test]
    fn known_vin_check_digit() {
        // A textbook example VIN with check digit X.
        let vin: Vec<char> = "1M8GDM9AXKP042788".chars().collect();
        assert_eq!(vin_check_digit(&vin), 'X');
    }

    #[test]
    fn every_tick_logs_what_it_changed() {
        let mut w = World::generate(1, 3, &[2, 2, 2], 4);
        let mut total = 0;
        for _ in 0..200 {
            total += w.tick(Utc::now());
        }
        assert_eq!(total, w.log.len());
        assert!(w.log.iter().any(|e| e.kind == "added"));
        assert!(w.log.iter().any(|e| e.kind == "removed"));
        assert!(w.log.iter().any(|e| e.kind == "changed"));
    }
}
