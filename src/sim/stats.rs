//! Counters the simulator keeps for tests and benchmarks: requests by route key and status, peak
//! request rates, grants, refresh-token reuse and injected faults.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// `"GET /connectedcar/v4/user/vehicles"` → status → count.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    pub api_requests: u64,
    pub idp_requests: u64,
    /// The most API requests that arrived within any one-second window.
    pub peak_api_rps: usize,
    /// The same for the identity provider.
    pub peak_idp_rps: usize,
    /// 429s because a client went over its quota.
    pub over_quota: u64,
    /// Successful grants by `grant_type`.
    pub grants: BTreeMap<String, u64>,
    pub invalid_grant: u64,
    /// Presentations of a refresh token that had already been rotated out.
    pub reused_refresh: u64,
    /// Faults injected, by switch name.
    pub faults_injected: BTreeMap<String, u64>,
    #[serde(skip)]
    api_window: VecDeque<Instant>,
    #[serde(skip)]
    idp_window: VecDeque<Instant>,
}

impl Stats {
    pub(super) fn arrival(&mut self, api: bool) {
        let now = Instant::now();
        let (window, peak) = if api {
            self.api_requests += 1;
            (&mut self.api_window, &mut self.peak_api_rps)
        } else {
            self.idp_requests += 1;
            (&mut self.idp_window, &mut self.peak_idp_rps)
        };
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        window.push_back(now);
        *peak = (*peak).max(window.len());
    }

    /// Total responses with this status for this endpoint key.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Total responses with this status over all endpoints.
    pub fn status_total(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    pub(super) fn fault(&mut self, name: &str) {
        *self.faults_injected.entry(name.to_owned()).or_default() += 1;
    }
}
