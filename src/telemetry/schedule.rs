//! When each vehicle's endpoints are next due, and the daily request budget. Pure: time is an
//! argument (Unix seconds), never read from a clock here.
//!
//! - `/status`: every `active` seconds while the vehicle is driving or charging, or reported
//!   within the last [`AWAKE_SECS`]; every `parked` seconds otherwise.
//! - `/trips`: as soon as a drive has ended, and every `trips_safety` seconds in any case.
//! - `/alerts`: every `alerts` seconds; `/maintenance`: every `maintenance` seconds.
//! - A 403 or a 404 that means "nothing for this car" marks the endpoint unavailable and backs
//!   off `unavailable_backoff`; other failures retry at the endpoint's normal interval.
//! - A stored due time the clock cannot explain ([`due_at`]: last attempted after now, or
//!   further ahead than any interval) is due now: a clock stepped back, or a `--once` run under a
//!   clock a month ahead, does not silence a vehicle.
//!
//! The budget: the requests one app client id makes in a day (list passes included) must stay
//! within `daily_request_budget`. [`stretch`] projects the day from the vehicles' current states
//! and, when it would not fit, lengthens every interval by the same factor.

use std::fmt;

/// One of `telemetry_endpoints.endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Status,
    Trips,
    Alerts,
    Maintenance,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Status,
        Endpoint::Trips,
        Endpoint::Alerts,
        Endpoint::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Status => "status",
            Endpoint::Trips => "trips",
            Endpoint::Alerts => "alerts",
            Endpoint::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The configured intervals, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intervals {
    pub active: i64,
    pub parked: i64,
    pub trips_safety: i64,
    pub alerts: i64,
    pub maintenance: i64,
    pub unavailable_backoff: i64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            active: 120,
            parked: 1200,
            trips_safety: 6 * 3600,
            alerts: 3600,
            maintenance: 86_400,
            unavailable_backoff: 86_400,
        }
    }
}

/// How a request ended, for the next due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 403, or a 404 meaning "not for this car".
    Unavailable,
    /// Anything else (5xx, timeouts, 429, bad bodies).
    Failed,
    /// Not sent: a cooldown in force, or the day's request budget cannot afford it now. Due
    /// again at its interval, not counted as a failure.
    Deferred,
}

/// A vehicle whose newest report is younger than this (seconds) is polled at the active
/// interval even when parked: it has just parked (people plug in a few minutes later, and the
/// first charging report carries the start SoC) or is otherwise awake. A parked car that
/// sleeps stops reporting, and its status stops changing.
pub const AWAKE_SECS: i64 = 900;

/// The assumptions of the projection: a typical car drives or charges about three hours a day
/// and makes about three drives (each fetches `/trips` once).
pub const ACTIVE_SHARE: f64 = 0.125;
pub const DRIVES_PER_DAY: f64 = 3.0;

/// The share of the day a typical car is polled at the active interval: driving or charging
/// ([`ACTIVE_SHARE`]), plus [`AWAKE_SECS`] after each drive while it is still awake. The
/// projection used `ACTIVE_SHARE` alone and forecast 8 % less than a simulated day sent
/// (BENCHMARKS.md, scenario 10); with the awake time it forecasts a little more.
pub fn polled_active_share() -> f64 {
    ACTIVE_SHARE + DRIVES_PER_DAY * AWAKE_SECS as f64 / DAY
}
/// The share of the budget the scheduler plans to use (the rest absorbs retries).
pub const BUDGET_USE: f64 = 0.95;

const DAY: f64 = 86_400.0;

/// Requests a day for `active` and `parked` vehicles at these intervals, telemetry only.
pub fn telemetry_per_day(iv: &Intervals, active: f64, parked: f64) -> f64 {
    let per = |secs: i64| DAY / secs.max(1) as f64;
    let n = active + parked;
    active * per(iv.active)
        + parked * per(iv.parked)
        + n * (per(iv.trips_safety) + DRIVES_PER_DAY + per(iv.alerts) + per(iv.maintenance))
}

/// The most [`stretch`] lengthens the intervals.
pub const MAX_STRETCH: f64 = 1000.0;

/// The factor (≥ 1) by which every interval is lengthened so that the projected day (at the
/// current mix of active and parked vehicles, plus `list_per_day` list requests) fits in
/// `budget`. When even the list passes do not fit, the telemetry is stretched as far as
/// [`MAX_STRETCH`].
pub fn stretch(
    iv: &Intervals,
    budget: u64,
    list_per_day: f64,
    active: usize,
    parked: usize,
) -> f64 {
    let want = telemetry_per_day(iv, active as f64, parked as f64);
    if want <= 0.0 {
        return 1.0;
    }
    let room = budget as f64 * BUDGET_USE - list_per_day;
    if room <= 0.0 {
        return MAX_STRETCH;
    }
    (want / room).clamp(1.0, MAX_STRETCH)
}

/// The next due time of an endpoint after a request that ended with `outcome` at `now`;
/// `active` is the vehicle's state after it.
pub fn next_due(
    ep: Endpoint,
    outcome: Outcome,
    now: i64,
    active: bool,
    iv: &Intervals,
    stretch: f64,
) -> i64 {
    let s = |secs: i64| {
        // Rounded up so that a stretched interval is never shorter than asked.
        #[allow(clippy::cast_possible_truncation)]
        let v = (secs as f64 * stretch.max(1.0)).ceil() as i64;
        v.max(1)
    };
    match outcome {
        Outcome::Unavailable => now + s(iv.unavailable_backoff.max(1)),
        Outcome::Ok | Outcome::Failed | Outcome::Deferred => match ep {
            Endpoint::Status if active => now + s(iv.active),
            Endpoint::Status => now + s(iv.parked),
            Endpoint::Trips => now + s(iv.trips_safety),
            Endpoint::Alerts => now + s(iv.alerts),
            Endpoint::Maintenance => now + s(iv.maintenance),
        },
    }
}

/// A status poll that changed the state can move the next one earlier: a parked car that
/// starts charging is next polled at the active interval, not 20 minutes later.
pub fn status_due_after_change(
    current_due: i64,
    now: i64,
    active: bool,
    iv: &Intervals,
    stretch: f64,
) -> i64 {
    current_due.min(next_due(
        Endpoint::Status,
        Outcome::Ok,
        now,
        active,
        iv,
        stretch,
    ))
}

/// How far the wall clock may step back before the due times written before the step stop
/// being obeyed (seconds). A smaller step delays a poll by at most the step.
pub const CLOCK_STEP_TOLERANCE_SECS: i64 = 30;

/// When an endpoint is due, at `now`, from its bookkeeping: its stored due time `stored`
/// (never polled: now), unless the clock cannot explain it, and then now:
/// - it was last attempted more than [`CLOCK_STEP_TOLERANCE_SECS`] after `now`: the clock has
///   been stepped back since, or the run that wrote it (a `--once` under a clock a month ahead)
///   ran ahead. Obeyed, its due time would silence the endpoint for as long as the step.
/// - it is further ahead than the endpoint's longest interval at the longest stretch (a due
///   time written with no attempt to explain it, under a clock ahead, or damaged).
///
/// Due now rather than clamped to now plus an interval: a clamp read afresh every round moves
/// with the clock and is never reached. The poll rewrites the bookkeeping from the right clock.
pub fn due_at(
    ep: Endpoint,
    stored: Option<i64>,
    last_attempt: Option<i64>,
    now: i64,
    iv: &Intervals,
) -> i64 {
    let Some(due) = stored else {
        return now;
    };
    let stepped_back =
        last_attempt.is_some_and(|a| a > now.saturating_add(CLOCK_STEP_TOLERANCE_SECS));
    let longest = [
        (Outcome::Ok, true),
        (Outcome::Ok, false),
        (Outcome::Unavailable, false),
    ]
    .into_iter()
    .map(|(o, active)| next_due(ep, o, now, active, iv, MAX_STRETCH))
    .max()
    .unwrap_or(now);
    if stepped_back || due > longest {
        now
    } else {
        due
    }
}

/// The projection `status` and `check-config` print.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub vehicles: usize,
    pub requests_per_day: f64,
    pub list_per_day: f64,
    pub budget: u64,
    /// How many vehicles fit in the budget at the configured intervals.
    pub vehicles_that_fit: u64,
    pub stretch: f64,
}

/// Requests a day at the configured intervals for `vehicles` vehicles (with the typical share of
/// time active), against the budget.
pub fn projection(iv: &Intervals, budget: u64, vehicles: usize, list_per_day: f64) -> Projection {
    let n = vehicles as f64;
    let share = polled_active_share();
    let active = n * share;
    let tele = telemetry_per_day(iv, active, n - active);
    let per_vehicle = telemetry_per_day(iv, share, 1.0 - share);
    let room = (budget as f64 * BUDGET_USE - list_per_day).max(0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let fit = (room / per_vehicle).floor().max(0.0) as u64;
    Projection {
        vehicles,
        requests_per_day: tele + list_per_day,
        list_per_day,
        budget,
        vehicles_that_fit: fit,
        stretch: if room <= 0.0 {
            1000.0
        } else {
            (tele / room).clamp(1.0, 1000.0)
        },
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "telemetry: {} vehicle{} → about {:.0} requests/day at the configured intervals \
             ({:.0} of them list passes), budget {}/day per app client id",
            self.vehicles,
            if self.vehicles == 1 { "" } else { "s" },
            self.requests_per_day,
            self.list_per_day,
            self.budget
        )?;
        if self.list_per_day > self.budget as f64 * BUDGET_USE {
            write!(
                f,
                "; over budget: the list passes alone exceed it (telemetry intervals stretched ×{:.0})",
                self.stretch
            )?;
        } else if self.stretch > 1.0 {
            write!(f, "; over budget: intervals stretched ×{:.2}", self.stretch)?;
        } else {
            write!(
                f,
                "; fits (about {} vehicles would)",
                self.vehicles_that_fit
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Issue 22, defect 7: due times written under another clock are not obeyed blindly.
    #[test]
    fn a_due_time_the_clock_cannot_explain_is_due_now() {
        let iv = Intervals::default();
        let now = 1_800_000_000;
        let day = 86_400;
        // (case, endpoint, next_due, last_attempt, due at)
        let cases = [
            ("never polled", Endpoint::Status, None, None, now),
            (
                "due in a minute",
                Endpoint::Status,
                Some(now + 60),
                Some(now - 60),
                now + 60,
            ),
            (
                "overdue",
                Endpoint::Status,
                Some(now - 5),
                Some(now - 125),
                now - 5,
            ),
            (
                "attempted within the tolerance ahead",
                Endpoint::Status,
                Some(now + 150),
                Some(now + CLOCK_STEP_TOLERANCE_SECS),
                now + 150,
            ),
            (
                "the clock stepped back 3 minutes after a poll",
                Endpoint::Status,
                Some(now + 180 + 120),
                Some(now + 180),
                now,
            ),
            (
                "written by a --once under a clock 30 days ahead",
                Endpoint::Status,
                Some(now + 30 * day + 120),
                Some(now + 30 * day),
                now,
            ),
            (
                "maintenance, 30 days ahead",
                Endpoint::Maintenance,
                Some(now + 31 * day),
                Some(now + 30 * day),
                now,
            ),
            (
                "a long backoff at the longest stretch",
                Endpoint::Alerts,
                Some(now + 500 * day),
                Some(now - 1),
                now + 500 * day,
            ),
            (
                "dated 2099, no attempt to explain it",
                Endpoint::Trips,
                Some(4_070_908_800),
                None,
                now,
            ),
        ];
        for (case, ep, due, attempt, want) in cases {
            assert_eq!(due_at(ep, due, attempt, now, &iv), want, "{case}");
        }
    }

    #[test]
    fn intervals_follow_the_state_and_the_outcome() {
        let iv = Intervals::default();
        assert_eq!(
            next_due(Endpoint::Status, Outcome::Ok, 1000, true, &iv, 1.0),
            1120
        );
        assert_eq!(
            next_due(Endpoint::Status, Outcome::Ok, 1000, false, &iv, 1.0),
            2200
        );
        assert_eq!(
            next_due(Endpoint::Status, Outcome::Failed, 1000, false, &iv, 1.0),
            2200
        );
        assert_eq!(
            next_due(
                Endpoint::Maintenance,
                Outcome::Unavailable,
                0,
                false,
                &iv,
                1.0
            ),
            86_400
        );
        assert_eq!(
            next_due(Endpoint::Alerts, Outcome::Ok, 0, false, &iv, 2.0),
            7200
        );
        assert_eq!(
            next_due(Endpoint::Trips, Outcome::Ok, 0, true, &iv, 1.0),
            6 * 3600
        );
        // A car that starts charging is polled sooner.
        assert_eq!(status_due_after_change(2200, 1000, true, &iv, 1.0), 1120);
        assert_eq!(status_due_after_change(1050, 1000, true, &iv, 1.0), 1050);
    }

    #[test]
    fn the_projection_and_the_stretch() {
        let iv = Intervals::default();
        let p = projection(&iv, 100_000, 100, 288.0);
        assert!(p.stretch == 1.0, "{p}");
        assert!(p.to_string().contains("fits"), "{p}");
        let per_vehicle = telemetry_per_day(&iv, ACTIVE_SHARE, 1.0 - ACTIVE_SHARE);
        // 0.125 × 720 + 0.875 × 72 + 4 + 3 + 24 + 1 = 90 + 63 + 32 = 185
        assert!((per_vehicle - 185.0).abs() < 0.01, "{per_vehicle}");
        // The example the README gives.
        assert_eq!(
            projection(&iv, 100_000, 100, 288.0).to_string(),
            "telemetry: 100 vehicles → about 20813 requests/day at the configured intervals (288 of them list passes), \
             budget 100000/day per app client id; fits (about 461 vehicles would)"
        );
        let big = projection(&iv, 100_000, 1000, 288.0);
        assert!(
            big.stretch > 1.0 && big.to_string().contains("stretched"),
            "{big}"
        );
        assert_eq!(stretch(&iv, 1_000_000, 0.0, 10, 10), 1.0);
        assert!(stretch(&iv, 1000, 0.0, 10, 10) > 1.0);
        assert_eq!(stretch(&iv, 10, 100.0, 10, 10), 1000.0);
        assert_eq!(stretch(&iv, 10, 0.0, 0, 0), 1.0);
    }

    /// One simulated day of `n` vehicles with a fake clock: every vehicle drives twice and
    /// charges once at random times; the scheduler decides every request. Returns (requests,
    /// the gaps between status polls while active / parked when unstretched).
    fn simulate_day(
        n: usize,
        budget: u64,
        list_per_day: f64,
        seed: u64,
    ) -> (u64, Vec<(bool, i64, f64)>) {
        let iv = Intervals::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Per vehicle: active windows [start, end).
        let windows: Vec<Vec<(i64, i64)>> = (0..n)
            .map(|_| {
                let mut w: Vec<(i64, i64)> = (0..3)
                    .map(|k| {
                        let start = rng.random_range(0..80_000);
                        let len = if k == 2 {
                            rng.random_range(3600..10_800)
                        } else {
                            rng.random_range(600..3600)
                        };
                        (start, start + len)
                    })
                    .collect();
                w.sort_unstable();
                w
            })
            .collect();
        let active_at = |v: usize, t: i64| windows[v].iter().any(|(a, b)| (*a..*b).contains(&t));
        let mut state = vec![false; n];
        let mut heap = BinaryHeap::new();
        for v in 0..n {
            for (k, ep) in Endpoint::ALL.into_iter().enumerate() {
                heap.push(Reverse((rng.random_range(0..60) + k as i64, v, ep)));
            }
        }
        let mut requests = 0u64;
        let mut last_status: Vec<Option<i64>> = vec![None; n];
        let mut gaps = Vec::new();
        let list_every = if list_per_day > 0.0 {
            (DAY / list_per_day) as i64
        } else {
            i64::MAX
        };
        let mut next_list = 0i64;
        while let Some(Reverse((t, v, ep))) = heap.pop() {
            if t >= 86_400 {
                break;
            }
            while next_list <= t {
                requests += 1;
                next_list += list_every;
            }
            requests += 1;
            let was = state[v];
            if ep == Endpoint::Status {
                state[v] = active_at(v, t);
            }
            let actives = state.iter().filter(|a| **a).count();
            let k = stretch(&iv, budget, list_per_day, actives, n - actives);
            if ep == Endpoint::Status {
                if let Some(prev) = last_status[v] {
                    gaps.push((was, t - prev, k));
                }
                last_status[v] = Some(t);
            }
            let due = next_due(ep, Outcome::Ok, t, state[v], &iv, k);
            heap.push(Reverse((due, v, ep)));
        }
        while next_list < 86_400 {
            requests += 1;
            next_list += list_every;
        }
        (requests, gaps)
    }

    #[test]
    fn a_day_of_1000_vehicles_stays_within_the_budget() {
        // A tight budget: well under what the default intervals would want (~185k).
        let budget = 100_000;
        let (requests, gaps) = simulate_day(1000, budget, 288.0, 7);
        assert!(
            requests <= budget,
            "{requests} requests for a budget of {budget}"
        );
        assert!(
            requests > budget / 2,
            "the budget is used, not wasted: {requests}"
        );
        assert!(
            gaps.iter().any(|(_, _, k)| *k > 1.0),
            "the intervals were stretched"
        );
    }

    #[test]
    fn with_room_in_the_budget_the_intervals_are_honoured() {
        let iv = Intervals::default();
        let (requests, gaps) = simulate_day(1000, 10_000_000, 288.0, 8);
        assert!(requests < 10_000_000);
        assert!(gaps.iter().all(|(_, _, k)| *k == 1.0));
        let active: Vec<i64> = gaps
            .iter()
            .filter(|(a, _, _)| *a)
            .map(|(_, g, _)| *g)
            .collect();
        let parked: Vec<i64> = gaps
            .iter()
            .filter(|(a, _, _)| !*a)
            .map(|(_, g, _)| *g)
            .collect();
        assert!(!active.is_empty() && !parked.is_empty());
        assert!(
            active.iter().all(|g| *g == iv.active),
            "active polls every 2 min"
        );
        assert!(
            parked.iter().all(|g| *g == iv.parked),
            "parked polls every 20 min"
        );
    }

    #[test]
    fn endpoint_names_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::parse(e.as_str()), Some(e));
        }
        assert_eq!(Endpoint::parse("lastPosition"), None);
    }
}
