//! The `[telemetry]` section of the configuration: as written ([`RawTelemetry`], with its
//! defaults) and validated ([`Settings`]).

use serde::{Deserialize, Serialize};

use super::schedule::Intervals;
use crate::config::Span;
use std::time::Duration;

/// `[telemetry]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    pub enabled: bool,
    pub active_interval: Span,
    pub parked_interval: Span,
    pub trips_safety_interval: Span,
    pub alerts_interval: Span,
    pub maintenance_interval: Span,
    pub unavailable_backoff: Span,
    pub gap_limit: Span,
    pub daily_request_budget: u64,
    pub max_concurrent_vehicles: u32,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        let s = |secs| Span(Duration::from_secs(secs));
        RawTelemetry {
            enabled: true,
            active_interval: s(120),
            parked_interval: s(1200),
            trips_safety_interval: s(6 * 3600),
            alerts_interval: s(3600),
            maintenance_interval: s(86_400),
            unavailable_backoff: s(86_400),
            gap_limit: s(3600),
            daily_request_budget: 100_000,
            max_concurrent_vehicles: 4,
        }
    }
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    pub intervals: Intervals,
    /// Seconds of the vehicle's own time.
    pub gap_limit: i64,
    pub daily_request_budget: u64,
    pub max_concurrent_vehicles: usize,
}

impl Default for Settings {
    fn default() -> Self {
        validate(&RawTelemetry::default()).unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

fn secs(d: Span) -> i64 {
    i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX)
}

/// Validates the section; every problem as (key, reason), keys prefixed `telemetry.`.
pub fn validate(raw: &RawTelemetry) -> Result<Settings, Vec<(String, String)>> {
    let mut bad = Vec::new();
    let mut at_least = |key: &str, v: Span, min: u64, what: &str| {
        if v.0.as_secs() < min {
            bad.push((
                format!("telemetry.{key}"),
                format!("must be at least {what}"),
            ));
        }
    };
    at_least("active_interval", raw.active_interval, 1, "1s");
    at_least("parked_interval", raw.parked_interval, 1, "1s");
    at_least("trips_safety_interval", raw.trips_safety_interval, 1, "1s");
    at_least("alerts_interval", raw.alerts_interval, 1, "1s");
    at_least("maintenance_interval", raw.maintenance_interval, 1, "1s");
    at_least("unavailable_backoff", raw.unavailable_backoff, 1, "1s");
    at_least("gap_limit", raw.gap_limit, 1, "1s");
    if raw.parked_interval.0 < raw.active_interval.0 {
        bad.push((
            "telemetry.parked_interval".into(),
            "must not be shorter than active_interval (a parked car changes less)".into(),
        ));
    }
    if raw.gap_limit.0 <= raw.active_interval.0 {
        bad.push((
            "telemetry.gap_limit".into(),
            "must be longer than active_interval, or every poll would be a gap".into(),
        ));
    }
    if raw.daily_request_budget == 0 {
        bad.push((
            "telemetry.daily_request_budget".into(),
            "must be at least 1 (set enabled = false to poll nothing but the vehicle list)".into(),
        ));
    }
    if raw.max_concurrent_vehicles == 0 {
        bad.push((
            "telemetry.max_concurrent_vehicles".into(),
            "must be at least 1".into(),
        ));
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(Settings {
        enabled: raw.enabled,
        intervals: Intervals {
            active: secs(raw.active_interval),
            parked: secs(raw.parked_interval),
            trips_safety: secs(raw.trips_safety_interval),
            alerts: secs(raw.alerts_interval),
            maintenance: secs(raw.maintenance_interval),
            unavailable_backoff: secs(raw.unavailable_backoff),
        },
        gap_limit: secs(raw.gap_limit),
        daily_request_budget: raw.daily_request_budget,
        max_concurrent_vehicles: raw.max_concurrent_vehicles as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::default();
        assert!(s.enabled);
        assert_eq!(s.intervals, Intervals::default());
        assert_eq!(s.gap_limit, 3600);
        assert_eq!(s.daily_request_budget, 100_000);
    }

    #[test]
    fn every_problem_is_named() {
        let raw = RawTelemetry {
            active_interval: Span(Duration::from_secs(600)),
            parked_interval: Span(Duration::from_secs(60)),
            gap_limit: Span(Duration::from_secs(300)),
            daily_request_budget: 0,
            max_concurrent_vehicles: 0,
            ..RawTelemetry::default()
        };
        let keys: Vec<String> = validate(&raw)
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "telemetry.parked_interval",
                "telemetry.gap_limit",
                "telemetry.daily_request_budget",
                "telemetry.max_concurrent_vehicles"
            ]
        );
    }
}
