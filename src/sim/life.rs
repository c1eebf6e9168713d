//! The life of one simulated car on the simulator's clock: parked for hours, driving (ignition,
//! speed, odometer, position along a route, state of charge or fuel going down), parking,
//! charging for EVs and PHEVs (plugged, `InProgress` at the mode's rate, `Finished` at the target,
//! later unplugged), refuelling for thermic cars, and the alerts that follow (low fuel, risk of
//! ice). The life is deterministic: its random draws come from a generator seeded by the vehicle
//! and are taken in event order, so observing a car earlier or later never changes what it does.
//!
//! A life is evaluated lazily: [`Life::advance`] plays every event up to a given instant. What
//! `/status` shows is the car's last [`Report`]: cars report on every state change and every
//! [`DRIVE_REPORT_SECS`] while driving, [`CHARGE_REPORT_SECS`] while charging; parked, they stay
//! silent and the body does not change. What really happened is kept as ground truth
//! ([`SimDrive`], [`SimCharge`], [`SimAlert`]). `docs/simulator.md` documents the physics.

use chrono::{DateTime, Datelike, Duration as TimeDelta, NaiveDate, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Serialize, Serializer};

/// Seconds between two reports while driving.
pub const DRIVE_REPORT_SECS: i64 = 60;
/// Seconds between two reports while charging.
pub const CHARGE_REPORT_SECS: i64 = 120;
/// AC charging power (`chargingMode: Slow`), kW at the plug.
pub const SLOW_KW: f64 = 7.0;
/// DC charging power (`chargingMode: Quick`), kW at the plug (EVs only).
pub const QUICK_KW: f64 = 50.0;
/// Share of the power at the plug that ends up in the battery.
pub const CHARGE_EFFICIENCY: f64 = 0.9;
/// A car plugs in after a drive that leaves it under this state of charge (%).
pub const CHARGE_BELOW_SOC: f64 = 40.0;
/// `FuelLevelLow` is active while the reported fuel level is under this (%).
pub const LOW_FUEL: f64 = 15.0;
/// `RiskOfIce` starts at a report whose air temperature is under this (°C).
pub const ICE_BELOW_C: f64 = 3.0;

/// What drives a car.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Powertrain {
    /// `motorization: Electric`: battery only.
    Electric,
    /// `motorization: Hybrid` (PHEV): battery first, then fuel.
    Hybrid,
    /// `motorization: Thermic`: fuel only.
    Thermic,
}

impl Powertrain {
    pub fn from_motorization(m: &str) -> Powertrain {
        match m {
            "Electric" => Powertrain::Electric,
            "Hybrid" => Powertrain::Hybrid,
            _ => Powertrain::Thermic,
        }
    }
    pub fn has_battery(self) -> bool {
        self != Powertrain::Thermic
    }
    pub fn has_fuel(self) -> bool {
        self != Powertrain::Electric
    }
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&api_time(*t))
}

fn ser_opt_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&api_time(*t)),
        None => s.serialize_none(),
    }
}

/// A timestamp as the API writes it: RFC 3339, UTC, whole seconds, `Z`.
pub fn api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An ISO-8601 duration as `remainingTime` carries it (`PT2H55M`, `PT35M`, `PT0S`).
pub fn iso_duration(secs: i64) -> String {
    let mins = (secs.max(0) + 59) / 60;
    match (mins / 60, mins % 60) {
        (0, 0) => "PT0S".into(),
        (0, m) => format!("PT{m}M"),
        (h, 0) => format!("PT{h}H"),
        (h, m) => format!("PT{h}H{m}M"),
    }
}

/// One drive, as it really happened (sim time). `ended` is `None` while it is under way, and
/// the end values are then those of the last report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimDrive {
    pub vin: String,
    pub vehicle_id: String,
    #[serde(serialize_with = "ser_time")]
    pub started: DateTime<Utc>,
    #[serde(serialize_with = "ser_opt_time")]
    pub ended: Option<DateTime<Utc>>,
    /// State of charge (%) at the start and end (none for thermic cars).
    pub start_soc: Option<f64>,
    pub end_soc: Option<f64>,
    /// Fuel level (%) at the start and end (none for EVs).
    pub start_fuel: Option<f64>,
    pub end_fuel: Option<f64>,
    pub start_odometer_km: f64,
    pub end_odometer_km: f64,
    pub distance_km: f64,
    /// `[lon, lat]`.
    pub start_position: [f64; 2],
    pub end_position: [f64; 2],
    pub avg_speed_kmh: f64,
    pub max_speed_kmh: f64,
    /// Battery energy used, kWh.
    pub energy_kwh: f64,
    /// Fuel used, litres.
    pub fuel_l: f64,
    /// Heading at start and at the end, degrees.
    pub heading: u32,
}

/// One charge, as it really happened (sim time): from the start of charging to `Finished` (the
/// target reached) or to the unplug that interrupted it. `ended` is `None` while charging.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimCharge {
    pub vin: String,
    pub vehicle_id: String,
    #[serde(serialize_with = "ser_time")]
    pub started: DateTime<Utc>,
    #[serde(serialize_with = "ser_opt_time")]
    pub ended: Option<DateTime<Utc>>,
    pub start_soc: f64,
    pub end_soc: f64,
    /// `Slow` or `Quick`.
    pub mode: &'static str,
    /// Power at the plug, kW.
    pub power_kw: f64,
    /// Energy added to the battery, kWh (`(end_soc - start_soc) × capacity`).
    pub energy_kwh: f64,
    /// `Finished` (target reached), `Stopped` (unplugged before), `InProgress`.
    pub outcome: &'static str,
    pub odometer_km: f64,
    /// `[lon, lat]`.
    pub position: [f64; 2],
}

/// One alert, as the car raised it (sim time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimAlert {
    pub vin: String,
    pub vehicle_id: String,
    pub id: String,
    /// The `AlertMsgEnum` value (`FuelLevelLow`, `RiskOfIce`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub severity: &'static str,
    #[serde(serialize_with = "ser_time")]
    pub started: DateTime<Utc>,
    #[serde(serialize_with = "ser_opt_time")]
    pub ended: Option<DateTime<Utc>>,
    pub start_position: [f64; 2],
    pub end_position: Option<[f64; 2]>,
}

/// What the car last reported: what `/status` shows until the next report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub at: DateTime<Utc>,
    /// Position fix time (the last report that had one).
    pub position_at: DateTime<Utc>,
    pub soc: f64,
    pub fuel: f64,
    pub odometer: f64,
    pub lon: f64,
    pub lat: f64,
    pub heading: u32,
    pub driving: bool,
    pub speed: f64,
    pub plugged: bool,
    /// `Disconnected`, `InProgress`, `Finished`, `Stopped`.
    pub charge_status: &'static str,
    /// `No`, `Slow`, `Quick`.
    pub charge_mode: &'static str,
    pub charging_rate_kmh: u32,
    pub remaining_secs: i64,
    pub air_temp: f64,
    pub coolant_temp: f64,
    pub oil_temp: f64,
}

#[derive(Debug, Clone)]
struct ActiveDrive {
    rec: usize,
    from: [f64; 2],
    to: [f64; 2],
    distance: f64,
    avg_speed: f64,
    started: DateTime<Utc>,
    ends: DateTime<Utc>,
    next_report: DateTime<Utc>,
    start_soc: f64,
    start_fuel: f64,
    start_odo: f64,
}

#[derive(Debug, Clone)]
struct ActiveCharge {
    rec: usize,
    started: DateTime<Utc>,
    start_soc: f64,
    /// % per hour.
    rate: f64,
    target: f64,
    finish: DateTime<Utc>,
    next_report: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    PlugIn,
    ChargeReport,
    ChargeFinish,
    Unplug,
    Depart,
    DriveReport,
    DriveEnd,
}

/// One car's life: its constants, its true state, its last report and its ground truth.
#[derive(Debug, Clone)]
pub struct Life {
    pub vin: String,
    pub vehicle_id: String,
    pub kind: Powertrain,
    /// Usable battery capacity, Wh (0 for thermic cars).
    pub capacity_wh: u32,
    /// kWh per 100 km on electricity.
    pub kwh_per_100km: f64,
    pub tank_l: f64,
    /// Litres per 100 km on fuel.
    pub l_per_100km: f64,
    /// A draw in [0, 1) that picks the cars without maintenance data.
    pub maintenance_draw: f64,
    /// When the next service is due, and at what odometer (km).
    pub maintenance_due: (DateTime<Utc>, f64),
    /// When the simulator created this life (the world's start, or when the car was added).
    pub born: DateTime<Utc>,
    pub rep: Report,
    pub drives: Vec<SimDrive>,
    pub charges: Vec<SimCharge>,
    pub alerts: Vec<SimAlert>,
    rng: StdRng,
    seed: u64,
    soc: f64,
    fuel: f64,
    odometer: f64,
    pos: [f64; 2],
    heading: u32,
    home: [f64; 2],
    drive: Option<ActiveDrive>,
    charge: Option<ActiveCharge>,
    plugged: bool,
    pending_mode: &'static str,
    pending_target: f64,
    plug_at: Option<DateTime<Utc>>,
    unplug_at: Option<DateTime<Utc>>,
    refuel_pending: bool,
    day_plan: Vec<DateTime<Utc>>,
    planned_until: Option<NaiveDate>,
    next_departure: Option<DateTime<Utc>>,
    low_fuel_alert: Option<usize>,
    ice_alert: Option<usize>,
    evaluated_to: DateTime<Utc>,
}

/// Initial values the world draws for a new car.
pub struct Birth {
    pub level: f64,
    pub fuel_level: f64,
    pub odometer: f64,
    pub lon: f64,
    pub lat: f64,
}

fn seed_of(id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Great-circle distance in km.
fn haversine(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (lon1, lat1, lon2, lat2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// The point `km` away from `p` towards `bearing` degrees (flat-earth, fine at these scales).
fn offset(p: [f64; 2], bearing: f64, km: f64) -> [f64; 2] {
    let b = bearing.to_radians();
    let dlat = km * b.cos() / 111.32;
    let dlon = km * b.sin() / (111.32 * p[1].to_radians().cos().max(0.1));
    [p[0] + dlon, p[1] + dlat]
}

fn bearing(a: [f64; 2], b: [f64; 2]) -> u32 {
    let dx = (b[0] - a[0]) * a[1].to_radians().cos();
    let dy = b[1] - a[1];
    if dx == 0.0 && dy == 0.0 {
        return 0;
    }
    (dx.atan2(dy).to_degrees().rem_euclid(360.0).round() as u32) % 360
}

impl Life {
    /// A car created at `born` (parked since some hours before).
    pub fn new(
        vehicle_id: &str,
        vin: &str,
        motorization: &str,
        b: &Birth,
        born: DateTime<Utc>,
    ) -> Life {
        let seed = seed_of(vehicle_id);
        let mut rng = StdRng::seed_from_u64(seed);
        let kind = Powertrain::from_motorization(motorization);
        let (capacity_wh, kwh_per_100km) = match kind {
            Powertrain::Electric => ([46_300u32, 50_000, 54_000][rng.random_range(0..3)], 16.0),
            Powertrain::Hybrid => (12_400, 18.0),
            Powertrain::Thermic => (0, 0.0),
        };
        let (tank_l, l_per_100km) = match kind {
            Powertrain::Electric => (0.0, 0.0),
            Powertrain::Hybrid => (43.0, 6.0),
            Powertrain::Thermic => (50.0, 6.5),
        };
        let parked_since = born - TimeDelta::minutes(rng.random_range(60..12 * 60));
        let maintenance_draw = rng.random::<f64>();
        let maintenance_due = (
            born + TimeDelta::days(rng.random_range(-20..700)),
            b.odometer + f64::from(rng.random_range(-500..30_000)),
        );
        let soc = if kind.has_battery() { b.level } else { 0.0 };
        let fuel = if kind.has_fuel() { b.fuel_level } else { 0.0 };
        let mut life = Life {
            vin: vin.to_owned(),
            vehicle_id: vehicle_id.to_owned(),
            kind,
            capacity_wh,
            kwh_per_100km,
            tank_l,
            l_per_100km,
            maintenance_draw,
            maintenance_due,
            born,
            rep: Report {
                at: parked_since,
                position_at: parked_since,
                soc: 0.0,
                fuel: 0.0,
                odometer: 0.0,
                lon: 0.0,
                lat: 0.0,
                heading: 0,
                driving: false,
                speed: 0.0,
                plugged: false,
                charge_status: "Disconnected",
                charge_mode: "No",
                charging_rate_kmh: 0,
                remaining_secs: 0,
                air_temp: 0.0,
                coolant_temp: 0.0,
                oil_temp: 0.0,
            },
            drives: Vec::new(),
            charges: Vec::new(),
            alerts: Vec::new(),
            rng,
            seed,
            soc,
            fuel,
            odometer: b.odometer,
            pos: [b.lon, b.lat],
            heading: 0,
            home: [b.lon, b.lat],
            drive: None,
            charge: None,
            plugged: false,
            pending_mode: "Slow",
            pending_target: 100.0,
            plug_at: None,
            unplug_at: None,
            refuel_pending: false,
            day_plan: Vec::new(),
            planned_until: None,
            next_departure: None,
            low_fuel_alert: None,
            ice_alert: None,
            evaluated_to: born,
        };
        life.report(parked_since);
        if kind.has_battery() && life.soc < CHARGE_BELOW_SOC {
            life.plug_at = Some(born + TimeDelta::minutes(1));
            life.pending_mode = "Slow";
            life.pending_target = 100.0;
        }
        if kind.has_fuel() && life.fuel < LOW_FUEL {
            life.refuel_pending = true;
        }
        life.next_departure = Some(life.plan_departure(born));
        life
    }

    /// Air temperature (°C) at `t`: a daily mean between 1 and 14 °C (drawn from the date),
    /// plus a swing of ±6 °C, coldest around 03:00 UTC.
    pub fn air_temp(&self, t: DateTime<Utc>) -> f64 {
        let day = t.date_naive().num_days_from_ce() as u64;
        let h = seed_of(&format!("{}-{day}", self.seed));
        let mean = 1.0 + 13.0 * (h % 1000) as f64 / 1000.0;
        let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
        mean + 6.0 * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin()
    }

    /// Electric autonomy (km) at this state of charge.
    pub fn electric_autonomy(&self, soc: f64) -> i64 {
        if self.capacity_wh == 0 {
            return 0;
        }
        (soc / 100.0 * f64::from(self.capacity_wh) / 1000.0 / self.kwh_per_100km * 100.0).round()
            as i64
    }

    /// Fuel autonomy (km) at this fuel level.
    pub fn fuel_autonomy(&self, fuel: f64) -> i64 {
        if self.tank_l == 0.0 {
            return 0;
        }
        (fuel / 100.0 * self.tank_l / self.l_per_100km * 100.0).round() as i64
    }

    /// Electric autonomy (km) of the last report.
    pub fn reported_electric_autonomy(&self) -> i64 {
        self.electric_autonomy(self.rep.soc)
    }

    /// Fuel autonomy (km) of the last report.
    pub fn reported_fuel_autonomy(&self) -> i64 {
        self.fuel_autonomy(self.rep.fuel)
    }

    /// Residual battery energy (Wh) of the last report.
    pub fn reported_residual_wh(&self) -> i64 {
        (self.rep.soc / 100.0 * f64::from(self.capacity_wh)).round() as i64
    }

    /// The next departure after `after` (at least 15 minutes later), planning days as needed:
    /// each day has 1–4 departures between 07:00 and 21:30 UTC.
    fn plan_departure(&mut self, after: DateTime<Utc>) -> DateTime<Utc> {
        let earliest = after + TimeDelta::minutes(15);
        loop {
            if let Some(t) = self.day_plan.iter().copied().find(|t| *t >= earliest) {
                self.day_plan.retain(|x| *x > t);
                return t;
            }
            let day = match self.planned_until {
                None => after.date_naive(),
                Some(d) => d.succ_opt().unwrap_or(d),
            };
            self.planned_until = Some(day);
            let n = self.rng.random_range(1..=4);
            let mut mins: Vec<i64> = (0..n)
                .map(|_| self.rng.random_range(7 * 60..21 * 60 + 30))
                .collect();
            mins.sort_unstable();
            let midnight = day
                .and_hms_opt(0, 0, 0)
                .map(|d| d.and_utc())
                .unwrap_or(after);
            self.day_plan = mins
                .into_iter()
                .map(|m| midnight + TimeDelta::minutes(m))
                .collect();
        }
    }

    /// Plays every event up to `to`.
    pub fn advance(&mut self, to: DateTime<Utc>) {
        if to <= self.evaluated_to {
            return;
        }
        loop {
            let (t, ev) = self.next_event();
            if t > to {
                break;
            }
            self.apply(t, ev);
        }
        self.evaluated_to = to;
    }

    fn next_event(&mut self) -> (DateTime<Utc>, Ev) {
        if let Some(d) = &self.drive {
            return if d.next_report < d.ends {
                (d.next_report, Ev::DriveReport)
            } else {
                (d.ends, Ev::DriveEnd)
            };
        }
        let departure = match self.next_departure {
            Some(t) => t,
            None => {
                let t = self.plan_departure(self.evaluated_to);
                self.next_departure = Some(t);
                t
            }
        };
        let mut best = (departure, Ev::Depart);
        let mut consider = |t: Option<DateTime<Utc>>, ev: Ev| {
            if let Some(t) = t
                && t <= best.0
            {
                best = (t, ev);
            }
        };
        if let Some(c) = &self.charge {
            if c.next_report < c.finish {
                consider(Some(c.next_report), Ev::ChargeReport);
            } else {
                consider(Some(c.finish), Ev::ChargeFinish);
            }
        }
        consider(self.plug_at, Ev::PlugIn);
        consider(self.unplug_at, Ev::Unplug);
        best
    }

    fn apply(&mut self, t: DateTime<Utc>, ev: Ev) {
        match ev {
            Ev::Depart => self.depart(t),
            Ev::DriveReport => {
                self.drive_progress(t);
                if let Some(d) = &mut self.drive {
                    d.next_report += TimeDelta::seconds(DRIVE_REPORT_SECS);
                }
            }
            Ev::DriveEnd => self.arrive(t),
            Ev::PlugIn => self.plug_in(t),
            Ev::ChargeReport => {
                self.charge_progress(t);
                if let Some(c) = &mut self.charge {
                    c.next_report += TimeDelta::seconds(CHARGE_REPORT_SECS);
                }
                self.report(t);
            }
            Ev::ChargeFinish => self.finish_charge(t, "Finished"),
            Ev::Unplug => {
                self.unplug_at = None;
                self.plugged = false;
                self.report(t);
            }
        }
    }

    fn depart(&mut self, t: DateTime<Utc>) {
        self.next_departure = None;
        self.plug_at = None;
        self.unplug_at = None;
        if self.charge.is_some() {
            self.finish_charge(t, "Stopped");
        }
        self.plugged = false;
        if self.refuel_pending {
            // A stop at the pump on the way out.
            self.fuel = 95.0 + self.rng.random_range(0.0..5.0);
            self.refuel_pending = false;
        }
        let u: f64 = self.rng.random();
        let mut distance = 5.0 + 55.0 * u * u;
        let away = haversine(self.pos, self.home);
        let bearing_draw = self.rng.random_range(0.0..360.0);
        let go_home = away > 1.0 && self.rng.random_bool(0.6);
        let to = if go_home {
            distance = (away * 1.3).clamp(5.0, 60.0);
            let b = f64::from(bearing(self.pos, self.home));
            offset(self.pos, b, (distance / 1.3).min(away))
        } else {
            offset(self.pos, bearing_draw, distance / 1.3)
        };
        let speed_draw: f64 = self.rng.random();
        if self.kind == Powertrain::Electric {
            let max = (self.soc - 5.0) / 100.0 * f64::from(self.capacity_wh)
                / 1000.0
                / self.kwh_per_100km
                * 100.0;
            if max < 2.0 {
                // Too low to go anywhere: charge quickly instead, try again later.
                self.pending_mode = "Quick";
                self.pending_target = 80.0;
                self.plug_in(t);
                self.next_departure = Some(self.plan_departure(t + TimeDelta::hours(1)));
                return;
            }
            distance = distance.min(max);
        }
        let avg_speed = if distance < 10.0 {
            20.0 + 30.0 * speed_draw
        } else {
            30.0 + 60.0 * speed_draw
        };
        let secs = (distance / avg_speed * 3600.0).round().max(120.0) as i64;
        self.heading = bearing(self.pos, to);
        self.drives.push(SimDrive {
            vin: self.vin.clone(),
            vehicle_id: self.vehicle_id.clone(),
            started: t,
            ended: None,
            start_soc: self.kind.has_battery().then_some(round1(self.soc)),
            end_soc: None,
            start_fuel: self.kind.has_fuel().then_some(round1(self.fuel)),
            end_fuel: None,
            start_odometer_km: round1(self.odometer),
            end_odometer_km: round1(self.odometer),
            distance_km: 0.0,
            start_position: self.pos,
            end_position: self.pos,
            avg_speed_kmh: 0.0,
            max_speed_kmh: 0.0,
            energy_kwh: 0.0,
            fuel_l: 0.0,
            heading: self.heading,
        });
        self.drive = Some(ActiveDrive {
            rec: self.drives.len() - 1,
            from: self.pos,
            to,
            distance,
            avg_speed,
            started: t,
            ends: t + TimeDelta::seconds(secs),
            next_report: t + TimeDelta::seconds(DRIVE_REPORT_SECS),
            start_soc: self.soc,
            start_fuel: self.fuel,
            start_odo: self.odometer,
        });
        self.report_driving(t, avg_speed * 0.5);
    }

    /// Moves the car to where it is at `t` of its current drive and reports.
    fn drive_progress(&mut self, t: DateTime<Utc>) {
        let Some(d) = self.drive.clone() else {
            return;
        };
        let total = (d.ends - d.started).num_seconds().max(1) as f64;
        let f = ((t - d.started).num_seconds() as f64 / total).clamp(0.0, 1.0);
        let km = d.distance * f;
        self.odometer = d.start_odo + km;
        self.pos = [
            d.from[0] + (d.to[0] - d.from[0]) * f,
            d.from[1] + (d.to[1] - d.from[1]) * f,
        ];
        let (mut e_km, mut f_km) = (0.0, km);
        if self.kind.has_battery() {
            // Electricity first (a PHEV down to 0 %, an EV never below 5 % by construction).
            let avail_km =
                d.start_soc / 100.0 * f64::from(self.capacity_wh) / 1000.0 / self.kwh_per_100km
                    * 100.0;
            e_km = km.min(avail_km);
            f_km = km - e_km;
            let used_kwh = e_km * self.kwh_per_100km / 100.0;
            self.soc =
                (d.start_soc - used_kwh * 1000.0 / f64::from(self.capacity_wh) * 100.0).max(0.0);
        }
        if self.kind.has_fuel() {
            let used_l = f_km * self.l_per_100km / 100.0;
            self.fuel = (d.start_fuel - used_l / self.tank_l * 100.0).max(0.0);
        }
        let _ = e_km;
        let speed = if f >= 1.0 {
            0.0
        } else {
            (d.avg_speed * self.rng.random_range(0.7..1.35)).min(130.0)
        };
        if f < 1.0 {
            self.report_driving(t, speed);
        }
        let rec = &mut self.drives[d.rec];
        rec.max_speed_kmh = rec.max_speed_kmh.max(round1(speed));
        rec.end_odometer_km = round1(self.odometer);
        rec.distance_km = round1(rec.end_odometer_km - rec.start_odometer_km);
        rec.end_position = self.pos;
        rec.end_soc = self.kind.has_battery().then_some(round1(self.soc));
        rec.end_fuel = self.kind.has_fuel().then_some(round1(self.fuel));
        let hours = (t - d.started).num_seconds() as f64 / 3600.0;
        rec.avg_speed_kmh = if hours > 0.0 { round1(km / hours) } else { 0.0 };
        if let (Some(a), Some(b)) = (rec.start_soc, rec.end_soc) {
            rec.energy_kwh = ((a - b) / 100.0 * f64::from(self.capacity_wh) / 10.0).round() / 100.0;
        }
        if let (Some(a), Some(b)) = (rec.start_fuel, rec.end_fuel) {
            rec.fuel_l = ((a - b) / 100.0 * self.tank_l * 100.0).round() / 100.0;
        }
    }

    fn arrive(&mut self, t: DateTime<Utc>) {
        self.drive_progress(t);
        let Some(d) = self.drive.take() else {
            return;
        };
        self.drives[d.rec].ended = Some(t);
        self.report(t);
        if self.kind.has_fuel() && self.fuel < LOW_FUEL {
            self.refuel_pending = true;
        }
        if self.kind.has_battery() {
            let evening = t.hour() >= 18;
            let draw: f64 = self.rng.random();
            let target = [80.0, 90.0, 100.0][self.rng.random_range(0..3)];
            let delay = TimeDelta::minutes(self.rng.random_range(2..10));
            if self.soc < CHARGE_BELOW_SOC {
                let quick = self.kind == Powertrain::Electric && self.soc < 25.0 && draw < 0.5;
                self.pending_mode = if quick { "Quick" } else { "Slow" };
                self.pending_target = if quick { 80.0 } else { target };
                self.plug_at = Some(t + delay);
            } else if evening && self.soc < 80.0 && draw < 0.7 {
                self.pending_mode = "Slow";
                self.pending_target = target.max(self.soc + 5.0).min(100.0);
                self.plug_at = Some(t + delay);
            }
        }
        self.next_departure = Some(self.plan_departure(t));
    }

    fn rate_pct_per_hour(&self, mode: &str) -> f64 {
        let kw = if mode == "Quick" { QUICK_KW } else { SLOW_KW };
        kw * CHARGE_EFFICIENCY * 1000.0 / f64::from(self.capacity_wh.max(1)) * 100.0
    }

    fn plug_in(&mut self, t: DateTime<Utc>) {
        self.plug_at = None;
        self.plugged = true;
        let mode = self.pending_mode;
        let target = self.pending_target.max(self.soc.ceil()).min(100.0);
        let rate = self.rate_pct_per_hour(mode);
        let hours = (target - self.soc).max(0.0) / rate;
        let finish = t + TimeDelta::seconds((hours * 3600.0).round() as i64);
        self.charges.push(SimCharge {
            vin: self.vin.clone(),
            vehicle_id: self.vehicle_id.clone(),
            started: t,
            ended: None,
            start_soc: round1(self.soc),
            end_soc: round1(self.soc),
            mode,
            power_kw: if mode == "Quick" { QUICK_KW } else { SLOW_KW },
            energy_kwh: 0.0,
            outcome: "InProgress",
            odometer_km: round1(self.odometer),
            position: self.pos,
        });
        self.charge = Some(ActiveCharge {
            rec: self.charges.len() - 1,
            started: t,
            start_soc: self.soc,
            rate,
            target,
            finish,
            next_report: t + TimeDelta::seconds(CHARGE_REPORT_SECS),
        });
        self.report(t);
    }

    fn charge_progress(&mut self, t: DateTime<Utc>) {
        let Some(c) = &self.charge else {
            return;
        };
        let hours = (t - c.started).num_seconds() as f64 / 3600.0;
        self.soc = (c.start_soc + c.rate * hours).min(c.target);
        let (rec, cap) = (c.rec, f64::from(self.capacity_wh));
        let r = &mut self.charges[rec];
        r.end_soc = round1(self.soc);
        r.energy_kwh = ((r.end_soc - r.start_soc) / 100.0 * cap / 10.0).round() / 100.0;
    }

    fn finish_charge(&mut self, t: DateTime<Utc>, outcome: &'static str) {
        self.charge_progress(t);
        let Some(c) = self.charge.take() else {
            return;
        };
        let r = &mut self.charges[c.rec];
        r.ended = Some(t);
        r.outcome = outcome;
        if outcome == "Finished" {
            self.unplug_at = Some(t + TimeDelta::minutes(self.rng.random_range(30..240)));
            self.report(t);
        }
    }

    fn report_driving(&mut self, t: DateTime<Utc>, speed: f64) {
        self.report(t);
        self.rep.driving = true;
        self.rep.speed = round1(speed);
    }

    /// Takes a report of the true state at `t`, and raises or ends alerts from it.
    fn report(&mut self, t: DateTime<Utc>) {
        let air = round1(self.air_temp(t));
        let driving = self.drive.is_some();
        let (status, mode, rate_kmh, remaining) = match &self.charge {
            Some(c) => {
                let kw = if self.pending_mode == "Quick" {
                    QUICK_KW
                } else {
                    SLOW_KW
                };
                let rate = (kw * CHARGE_EFFICIENCY / self.kwh_per_100km * 100.0).round() as u32;
                let left = ((c.target - self.soc).max(0.0) / c.rate * 3600.0).round() as i64;
                ("InProgress", self.pending_mode, rate, left)
            }
            None if self.plugged => {
                let finished = self.charges.last().is_some_and(|c| c.outcome == "Finished");
                (
                    if finished { "Finished" } else { "Stopped" },
                    self.pending_mode,
                    0,
                    0,
                )
            }
            None => ("Disconnected", "No", 0, 0),
        };
        let (coolant, oil) = if driving {
            (
                88.0 + f64::from(self.heading % 5),
                92.0 + f64::from(self.heading % 7),
            )
        } else {
            (air + 1.0, air + 1.5)
        };
        self.rep = Report {
            at: t,
            position_at: t,
            soc: round1(self.soc),
            fuel: round1(self.fuel),
            odometer: round1(self.odometer),
            lon: (self.pos[0] * 1e6).round() / 1e6,
            lat: (self.pos[1] * 1e6).round() / 1e6,
            heading: self.heading,
            driving,
            speed: 0.0,
            plugged: self.plugged,
            charge_status: status,
            charge_mode: mode,
            charging_rate_kmh: rate_kmh,
            remaining_secs: remaining,
            air_temp: air,
            coolant_temp: round1(coolant),
            oil_temp: round1(oil),
        };
        self.check_alerts(t);
    }

    fn alert_id(&self, n: usize) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{}-alert-{n}", self.vehicle_id).as_bytes());
        let tail: String = d.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}{tail}",
            &self.vehicle_id[..self.vehicle_id.len().min(65)]
        )
    }

    fn check_alerts(&mut self, t: DateTime<Utc>) {
        let pos = [self.rep.lon, self.rep.lat];
        if self.kind.has_fuel() {
            let low = self.rep.fuel < LOW_FUEL;
            self.toggle_alert(t, pos, low, true, "FuelLevelLow", "Warning");
        }
        let cold = self.rep.air_temp < ICE_BELOW_C;
        let warm = self.rep.air_temp >= ICE_BELOW_C + 1.0;
        if cold || warm {
            self.toggle_alert(t, pos, cold, false, "RiskOfIce", "Information");
        }
    }

    fn toggle_alert(
        &mut self,
        t: DateTime<Utc>,
        pos: [f64; 2],
        on: bool,
        fuel: bool,
        kind: &'static str,
        severity: &'static str,
    ) {
        let slot = if fuel {
            self.low_fuel_alert
        } else {
            self.ice_alert
        };
        match (slot, on) {
            (None, true) => {
                let id = self.alert_id(self.alerts.len());
                self.alerts.push(SimAlert {
                    vin: self.vin.clone(),
                    vehicle_id: self.vehicle_id.clone(),
                    id,
                    kind,
                    severity,
                    started: t,
                    ended: None,
                    start_position: pos,
                    end_position: None,
                });
                let i = Some(self.alerts.len() - 1);
                if fuel {
                    self.low_fuel_alert = i;
                } else {
                    self.ice_alert = i;
                }
            }
            (Some(i), false) => {
                self.alerts[i].ended = Some(t);
                self.alerts[i].end_position = Some(pos);
                if fuel {
                    self.low_fuel_alert = None;
                } else {
                    self.ice_alert = None;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn birth(level: f64) -> Birth {
        Birth {
            level,
            fuel_level: 50.0,
            odometer: 12_000.0,
            lon: 2.35,
            lat: 48.85,
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn durations_are_iso_8601() {
        assert_eq!(iso_duration(0), "PT0S");
        assert_eq!(iso_duration(35 * 60), "PT35M");
        assert_eq!(iso_duration(2 * 3600 + 55 * 60), "PT2H55M");
        assert_eq!(iso_duration(3600), "PT1H");
        assert_eq!(iso_duration(61), "PT2M");
    }

    #[test]
    fn observing_more_often_changes_nothing() {
        let mut a = Life::new("a1b2c3", "VR3XXXXXXXXXXXXXX", "Hybrid", &birth(60.0), t0());
        let mut b = a.clone();
        let end = t0() + TimeDelta::days(7);
        a.advance(end);
        let mut t = t0();
        while t < end {
            t += TimeDelta::seconds(97);
            b.advance(t.min(end));
        }
        assert_eq!(a.drives, b.drives);
        assert_eq!(a.charges, b.charges);
        assert_eq!(a.alerts, b.alerts);
        assert_eq!(a.rep, b.rep);
    }

    #[test]
    fn an_ev_week_drives_and_charges_with_consistent_ground_truth() {
        let mut l = Life::new(
            "ffee0011",
            "VR3XXXXXXXXXXXXXX",
            "Electric",
            &birth(70.0),
            t0(),
        );
        l.advance(t0() + TimeDelta::days(7));
        let drives: Vec<_> = l.drives.iter().filter(|d| d.ended.is_some()).collect();
        assert!((7..=28).contains(&drives.len()), "{}", drives.len());
        for d in &drives {
            assert!((1.9..=60.1).contains(&d.distance_km), "{d:?}");
            assert!(d.end_soc < d.start_soc);
            assert!(d.end_soc.unwrap() >= 4.9);
            assert!((d.end_odometer_km - d.start_odometer_km - d.distance_km).abs() < 0.11);
        }
        for w in l.drives.windows(2) {
            assert!(w[0].ended.unwrap() <= w[1].started);
            assert!((w[0].end_odometer_km - w[1].start_odometer_km).abs() < 0.01);
        }
        assert!(!l.charges.is_empty());
        for c in l.charges.iter().filter(|c| c.outcome == "Finished") {
            let hours = (c.ended.unwrap() - c.started).num_seconds() as f64 / 3600.0;
            let kw = if c.mode == "Quick" { QUICK_KW } else { SLOW_KW };
            let expect = kw * CHARGE_EFFICIENCY * hours;
            assert!((c.energy_kwh - expect).abs() < 0.2, "{c:?} vs {expect}");
        }
    }

    #[test]
    fn a_parked_car_keeps_its_report() {
        let mut l = Life::new(
            "0badcafe",
            "VR3XXXXXXXXXXXXXX",
            "Thermic",
            &birth(0.0),
            t0(),
        );
        l.advance(t0());
        let parked = l.rep.clone();
        let first = l.next_departure.unwrap();
        l.advance(first - TimeDelta::seconds(1));
        assert_eq!(l.rep, parked);
        l.advance(first + TimeDelta::seconds(61));
        assert!(l.rep.driving && l.rep.speed > 0.0);
        assert_eq!(l.rep.at, first + TimeDelta::seconds(60));
    }
}
