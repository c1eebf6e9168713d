//! Prometheus metrics, built with `prometheus-client` on a registry owned here (no global one).
//!
//! Two kinds of values:
//! - counted in this process by instrumentation calls ([`Metrics::api_response`],
//!   [`Metrics::idp_response`], [`Metrics::pass_finished`]): requests by endpoint and status code,
//!   their durations, 429s, the quota the gateway reports, pass durations;
//! - read at scrape time ([`Source`]) from the database (a read-only connection: `sync_health`,
//!   `vehicle_changes`, the telemetry tables), the token store (only timestamps: the end of each
//!   refresh-token chain, never a token) and the backup record.
//!
//! Labels are account names, VINs, endpoint names and status codes; never a secret or a token.
//! [`Metrics::render`] returns the Prometheus text format (version 0.0.4), which Prometheus,
//! `promtool check metrics` and node_exporter's textfile collector all read: the OpenMetrics
//! text of `prometheus-client` with counters' `HELP`/`TYPE` named after their `_total` samples
//! and without `# UNIT` and `# EOF`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::auth::store::TokenStore;

/// The prefix of every metric name.
pub const PREFIX: &str = "stellantis_sync";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    code: String,
}

/// An API request's labels: the account it was made for (a configured account's name, so the
/// series are bounded by the configuration), the endpoint and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    account: String,
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValueLabels {
    endpoint: String,
    column: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What a scrape reads besides the counters: where the database, the token store and the backup
/// record are, and which accounts are configured. Replaced on reload.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub database: PathBuf,
    pub state_dir: PathBuf,
    /// Configured accounts: (name, has a configured refresh token or password).
    pub accounts: Vec<(String, bool)>,
    pub refresh_token_max_age: Duration,
    /// The pass schedule (cron), exported as its period for alert rules.
    pub schedule: String,
    /// `[telemetry] daily_request_budget`, per app client id (this instance's share).
    pub daily_request_budget: u64,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiRequestLabels, Counter>,
    api_duration: Family<EndpointLabels, Histogram>,
    idp_requests: Family<RequestLabels, Counter>,
    idp_duration: Family<EndpointLabels, Histogram>,
    rate_limited: Family<UpstreamLabels, Counter>,
    quota_remaining: Family<WindowLabels, FloatGauge>,
    quota_limit: Family<WindowLabels, FloatGauge>,
    pass_duration: Histogram,
    last_pass: FloatGauge,
    pruned_bodies: Counter,
    out_of_range: Family<ValueLabels, Counter>,
    source: std::sync::Arc<Mutex<Source>>,
}

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.025, 2.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The version of stellantis-sync (always 1)",
            build,
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Stellantis API by account, endpoint and HTTP status code (code \"error\": no answer)",
            api_requests.clone(),
        );
        let api_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        registry.register(
            "api_request_duration_seconds",
            "Duration of API requests, until the answer's headers arrived",
            api_duration.clone(),
        );
        let idp_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "idp_requests",
            "Requests to the identity provider by endpoint and HTTP status code (code \"error\": no answer)",
            idp_requests.clone(),
        );
        let idp_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        registry.register(
            "idp_request_duration_seconds",
            "Duration of identity provider requests, until the answer's headers arrived",
            idp_duration.clone(),
        );
        let rate_limited = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Answers 429 Too Many Requests, by upstream (api or idp)",
            rate_limited.clone(),
        );
        let quota_remaining = Family::<WindowLabels, FloatGauge>::default();
        registry.register(
            "quota_remaining",
            "Requests left in the gateway's quota window (X-RateLimit-Remaining-1: day, -2: burst), from the last answer",
            quota_remaining.clone(),
        );
        let quota_limit = Family::<WindowLabels, FloatGauge>::default();
        registry.register(
            "quota_limit",
            "Size of the gateway's quota window (X-RateLimit-Limit-1: day, -2: burst), from the last answer",
            quota_limit.clone(),
        );
        let pass_duration = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "pass_duration_seconds",
            "Duration of passes over every account",
            pass_duration.clone(),
        );
        let last_pass = FloatGauge::default();
        registry.register(
            "last_pass_timestamp_seconds",
            "When the last pass finished (Unix time)",
            last_pass.clone(),
        );
        let pruned_bodies = Counter::default();
        registry.register(
            "retention_pruned_status_bodies",
            "Raw status bodies deleted by retention",
            pruned_bodies.clone(),
        );
        let out_of_range = Family::<ValueLabels, Counter>::default();
        registry.register(
            "out_of_range_values",
            "Values outside their physical range (docs/schema.md, Bounds), stored as NULL, by endpoint and column",
            out_of_range.clone(),
        );
        let source = std::sync::Arc::new(Mutex::new(Source::default()));
        registry.register_collector(Box::new(Scraped {
            source: source.clone(),
        }));
        Metrics {
            registry,
            api_requests,
            api_duration,
            idp_requests,
            idp_duration,
            rate_limited,
            quota_remaining,
            quota_limit,
            pass_duration,
            last_pass,
            pruned_bodies,
            out_of_range,
            source,
        }
    }

    /// Sets what scrapes read (at start and after a reload).
    pub fn set_source(&self, source: Source) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// Records one API request made for `account`: `status` is `None` when no answer arrived;
    /// `headers` carry the gateway's `X-RateLimit-*` quota.
    pub fn api_response(
        &self,
        account: &str,
        endpoint: &str,
        status: Option<u16>,
        elapsed: Duration,
        headers: Option<&reqwest::header::HeaderMap>,
    ) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                account: account.into(),
                endpoint: endpoint.into(),
                code: code_label(status),
            })
            .inc();
        self.api_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
        if status == Some(429) {
            self.rate_limited
                .get_or_create(&UpstreamLabels {
                    upstream: "api".into(),
                })
                .inc();
        }
        if let Some(h) = headers {
            for (suffix, window) in [("1", "day"), ("2", "burst")] {
                let read = |name: String| {
                    h.get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                };
                let labels = WindowLabels {
                    window: window.into(),
                };
                if let Some(v) = read(format!("x-ratelimit-remaining-{suffix}")) {
                    self.quota_remaining.get_or_create(&labels).set(v);
                }
                if let Some(v) = read(format!("x-ratelimit-limit-{suffix}")) {
                    self.quota_limit.get_or_create(&labels).set(v);
                }
            }
        }
    }

    /// Records one API request for `account` from its URL (the endpoint is named by its path,
    /// never by a vehicle id) and its answer (`None`: no answer arrived).
    pub fn api_answer(
        &self,
        account: &str,
        url: &str,
        answer: Option<&reqwest::Response>,
        elapsed: Duration,
    ) {
        self.api_response(
            account,
            endpoint_of(url),
            answer.map(|r| r.status().as_u16()),
            elapsed,
            answer.map(reqwest::Response::headers),
        );
    }

    /// Records one request to the identity provider.
    pub fn idp_response(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
        count(&self.idp_requests, endpoint, status);
        self.idp_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
        if status == Some(429) {
            self.rate_limited
                .get_or_create(&UpstreamLabels {
                    upstream: "idp".into(),
                })
                .inc();
        }
    }

    /// Records a finished pass.
    pub fn pass_finished(&self, elapsed: Duration, at: SystemTime) {
        self.pass_duration.observe(elapsed.as_secs_f64());
        self.last_pass.set(unix(at));
    }

    /// Records status bodies deleted by retention.
    pub fn pruned(&self, bodies: u64) {
        self.pruned_bodies.inc_by(bodies);
    }

    /// Records a value outside its physical range (stored as NULL).
    pub fn out_of_range(&self, endpoint: &str, column: &str) {
        self.out_of_range
            .get_or_create(&ValueLabels {
                endpoint: endpoint.into(),
                column: column.into(),
            })
            .inc();
    }

    /// The exposition in the Prometheus text format. Reads the database and the token store, so
    /// call it off the async runtime's worker threads.
    pub fn render(&self) -> String {
        let mut open = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        openmetrics_to_prometheus_text(&open)
    }
}

/// The endpoint label of an API URL: the last path segment when it names a collection
/// (`vehicles`, `status`, `trips`, …); `vehicle` for one vehicle; `other` for anything else. A
/// vehicle id never becomes a label.
pub fn endpoint_of(url: &str) -> &'static str {
    const KNOWN: [&str; 11] = [
        "vehicles",
        "status",
        "trips",
        "alerts",
        "maintenance",
        "lastPosition",
        "telemetry",
        "collisions",
        "wayPoints",
        "callbacks",
        "monitors",
    ];
    let path = url.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let last = segments.next().unwrap_or("");
    if let Some(k) = KNOWN.iter().find(|k| **k == last) {
        return k;
    }
    if segments.next() == Some("vehicles") {
        return "vehicle";
    }
    "other"
}

fn count(family: &Family<RequestLabels, Counter>, endpoint: &str, status: Option<u16>) {
    family
        .get_or_create(&RequestLabels {
            endpoint: endpoint.into(),
            code: code_label(status),
        })
        .inc();
}

/// The `code` label: the HTTP status, or `error` when no answer arrived.
fn code_label(status: Option<u16>) -> String {
    status.map_or_else(|| "error".to_owned(), |s| s.to_string())
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Converts `prometheus-client`'s OpenMetrics text to the Prometheus text format 0.0.4: a
/// counter's `HELP` and `TYPE` carry the `_total` name of its samples; `# UNIT` and `# EOF` go.
pub fn openmetrics_to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The values read at scrape time.
#[derive(Debug)]
struct Scraped {
    source: std::sync::Arc<Mutex<Source>>,
}

/// One family of values with labels.
struct Series {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Series {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Series {
        Series {
            name,
            help,
            kind,
            rows: Vec::new(),
        }
    }
    fn push(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.rows.push((labels, v));
    }
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut m = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.rows {
            let e = m.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(*v).encode(e)?,
                _ => ConstGauge::new(*v).encode(e)?,
            }
        }
        Ok(())
    }
}

/// The states an account can be in, each a 0/1 series of `account_state`.
pub const ACCOUNT_STATES: [&str; 5] = ["ok", "failing", "needs_reauth", "needs_login", "unknown"];

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for s in collect(&source, SystemTime::now()) {
            s.encode(&mut encoder)?;
        }
        Ok(())
    }
}

fn account(name: &str) -> Vec<(&'static str, String)> {
    vec![("account", name.to_owned())]
}

/// Reads the database, the token store and the backup record.
fn collect(src: &Source, now: SystemTime) -> Vec<Series> {
    use MetricType::{Counter as C, Gauge as G};
    let mut state = Series::new(
        "account_state",
        "1 for the state each account is in (ok, failing, needs_reauth, needs_login, unknown), else 0",
        G,
    );
    let mut success = Series::new(
        "last_success_timestamp_seconds",
        "When the account's last successful sync finished (Unix time)",
        G,
    );
    let mut failures = Series::new(
        "consecutive_failures",
        "Failed syncs of the account since its last success",
        G,
    );
    let mut chain_end = Series::new(
        "refresh_token_chain_end_timestamp_seconds",
        "When the account's refresh-token chain ends and a login is needed (Unix time)",
        G,
    );
    let mut vehicles = Series::new("vehicles", "Vehicles the account has now", G);
    let mut changes = Series::new(
        "changes_recorded",
        "Changes recorded in the database for the account",
        C,
    );
    let mut db_size = Series::new("database_size_bytes", "Size of the database file", G);
    let mut wal_size = Series::new(
        "database_wal_size_bytes",
        "Size of the database's write-ahead log",
        G,
    );
    let mut soc = Series::new(
        "vehicle_soc_percent",
        "The vehicle's state of charge in its newest observation",
        G,
    );
    let mut age = Series::new(
        "vehicle_data_age_seconds",
        "Age of the vehicle's newest observation (its own timestamp)",
        G,
    );
    let mut unavailable = Series::new(
        "vehicle_endpoint_unavailable",
        "1 when a telemetry endpoint answers that it is unavailable for the vehicle (403/404), else 0",
        G,
    );
    let mut backup = Series::new(
        "backup_last_success_timestamp_seconds",
        "When the last backup finished and passed its integrity check (Unix time)",
        G,
    );
    let mut backup_size = Series::new("backup_last_size_bytes", "Size of the last backup", G);
    let mut period = Series::new(
        "schedule_period_seconds",
        "Time between two scheduled passes (alert rules compare ages with it)",
        G,
    );
    if let Some(p) = crate::health::schedule_period(&src.schedule, now.into()) {
        period.push(vec![], p.as_secs_f64());
    }
    let now_s = unix(now);

    let file_size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len() as f64).ok();
    if let Some(s) = file_size(src.database.clone()) {
        db_size.push(vec![], s);
        wal_size.push(
            vec![],
            file_size(PathBuf::from(format!("{}-wal", src.database.display()))).unwrap_or(0.0),
        );
    }
    let conn = if src.database.exists() {
        crate::store::open_read_only(&src.database).ok()
    } else {
        None
    };
    let tokens = TokenStore::new(&src.state_dir);
    let change_counts: std::collections::HashMap<String, f64> = conn
        .as_ref()
        .and_then(|c| {
            let mut st = c
                .prepare(
                    "SELECT a.name, count(*) FROM vehicle_changes c JOIN accounts a USING (account_id)
                     GROUP BY c.account_id",
                )
                .ok()?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as f64)))
                .ok()?;
            Some(rows.flatten().collect())
        })
        .unwrap_or_default();
    for (name, has_bootstrap) in &src.accounts {
        let health = conn.as_ref().and_then(|c| {
            c.query_row(
                "SELECT state, last_success_at, consecutive_failures, vehicles FROM sync_health WHERE account = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .ok()
        });
        let rec = tokens.load(name).ok().flatten();
        let current = if rec.as_ref().is_some_and(|r| r.needs_reauth) {
            "needs_reauth"
        } else if rec.as_ref().is_none_or(|r| r.refresh_token.is_none()) && !has_bootstrap {
            "needs_login"
        } else {
            match health.as_ref().and_then(|h| h.0.as_deref()) {
                Some("ok") => "ok",
                Some("needs_reauth") => "needs_reauth",
                Some("failing") => "failing",
                _ => "unknown",
            }
        };
        for s in ACCOUNT_STATES {
            let mut l = account(name);
            l.push(("state", s.to_owned()));
            state.push(l, if s == current { 1.0 } else { 0.0 });
        }
        if let Some((_, last_ok, fails, n)) = &health {
            if let Some(t) = last_ok.as_deref().and_then(crate::timefmt::parse) {
                success.push(account(name), t.timestamp_millis() as f64 / 1000.0);
            }
            failures.push(account(name), *fails as f64);
            vehicles.push(account(name), *n as f64);
        }
        changes.push(
            account(name),
            change_counts.get(name).copied().unwrap_or(0.0),
        );
        if let Some(start) = rec
            .as_ref()
            .filter(|r| !r.needs_reauth && r.refresh_token.is_some())
            .and_then(|r| r.chain_started_at.as_deref())
            .and_then(crate::timefmt::parse)
        {
            let end =
                start.timestamp_millis() as f64 / 1000.0 + src.refresh_token_max_age.as_secs_f64();
            chain_end.push(account(name), end);
        }
    }
    if let Some(c) = &conn {
        let names: std::collections::HashSet<&str> =
            src.accounts.iter().map(|(n, _)| n.as_str()).collect();
        if let Ok(mut st) = c.prepare(
            "SELECT a.name, s.vin, s.soc, max(s.observed_ts) FROM vehicle_status s
             JOIN accounts a USING (account_id) GROUP BY s.account_id, s.vin",
        ) && let Ok(rows) = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<f64>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        }) {
            for (a, vin, s, observed) in rows.flatten() {
                if !names.contains(a.as_str()) {
                    continue;
                }
                let l = vec![("account", a), ("vin", vin)];
                if let Some(s) = s {
                    soc.push(l.clone(), s);
                }
                age.push(l, (now_s - observed as f64).max(0.0));
            }
        }
        if let Ok(mut st) = c.prepare(
            "SELECT a.name, t.vin, t.endpoint, t.unavailable_since_ts IS NOT NULL
             FROM telemetry_endpoints t JOIN accounts a USING (account_id)",
        ) && let Ok(rows) = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
            ))
        }) {
            for (a, vin, endpoint, down) in rows.flatten() {
                if names.contains(a.as_str()) {
                    unavailable.push(
                        vec![("account", a), ("vin", vin), ("endpoint", endpoint)],
                        if down { 1.0 } else { 0.0 },
                    );
                }
            }
        }
    }
    let mut budget = Series::new(
        "daily_request_budget",
        "Requests a day each app client id may send (daily_request_budget; this instance's share)",
        G,
    );
    let mut spent = Series::new(
        "api_requests_today",
        "API requests sent today (UTC) per app client id and purpose (list, telemetry), counted against daily_request_budget",
        G,
    );
    if src.daily_request_budget > 0 {
        budget.push(vec![], src.daily_request_budget as f64);
    }
    let today = crate::spend::today(&src.state_dir, chrono::DateTime::<chrono::Utc>::from(now));
    for (client, s) in today.map(|d| d.clients).unwrap_or_default() {
        for (purpose, n) in [("list", s.list), ("telemetry", s.telemetry)] {
            spent.push(
                vec![
                    ("client_id", client.clone()),
                    ("purpose", purpose.to_owned()),
                ],
                n as f64,
            );
        }
    }
    if let Some(b) = crate::backup::last_backup(&src.state_dir) {
        if let Some(t) = crate::timefmt::parse(&b.finished_at) {
            backup.push(vec![], t.timestamp_millis() as f64 / 1000.0);
        }
        backup_size.push(vec![], b.bytes as f64);
    }
    vec![
        period,
        state,
        success,
        failures,
        chain_end,
        vehicles,
        changes,
        db_size,
        wal_size,
        backup,
        backup_size,
        soc,
        age,
        unavailable,
        budget,
        spent,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_counted_by_endpoint_and_column() {
        let m = Metrics::new();
        m.out_of_range("status", "soc");
        m.out_of_range("status", "soc");
        m.out_of_range("trips", "distance_km");
        let text = m.render();
        assert!(
            text.contains(
                "stellantis_sync_out_of_range_values_total{endpoint=\"status\",column=\"soc\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("stellantis_sync_out_of_range_values_total{endpoint=\"trips\",column=\"distance_km\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counters_are_named_after_their_samples_and_openmetrics_markers_go() {
        let m = Metrics::new();
        m.api_response(
            "alice",
            "vehicles",
            Some(200),
            Duration::from_millis(30),
            None,
        );
        m.api_response(
            "alice",
            "vehicles",
            Some(429),
            Duration::from_millis(30),
            None,
        );
        m.api_response("bob", "status", None, Duration::from_millis(30), None);
        m.idp_response("access_token", None, Duration::from_millis(5));
        let text = m.render();
        assert!(
            text.contains("# TYPE stellantis_sync_api_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "stellantis_sync_api_requests_total{account=\"alice\",endpoint=\"vehicles\",code=\"429\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "stellantis_sync_api_requests_total{account=\"bob\",endpoint=\"status\",code=\"error\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("stellantis_sync_rate_limited_total{upstream=\"api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "stellantis_sync_idp_requests_total{endpoint=\"access_token\",code=\"error\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("stellantis_sync_build_info{version="),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn endpoints_are_named_by_path_never_by_vehicle_id() {
        let base = "https://api.groupe-psa.com/connectedcar/v4/user/vehicles";
        assert_eq!(
            endpoint_of(&format!("{base}?client_id=x&pageSize=60")),
            "vehicles"
        );
        assert_eq!(
            endpoint_of(&format!("{base}/AbC123/status?client_id=x")),
            "status"
        );
        assert_eq!(
            endpoint_of(&format!("{base}/AbC123/trips?pageToken=q")),
            "trips"
        );
        assert_eq!(
            endpoint_of(&format!("{base}/AbC123?client_id=x")),
            "vehicle"
        );
        assert_eq!(endpoint_of("https://x/elsewhere/AbC123"), "other");
    }

    #[test]
    fn quota_headers_become_gauges() {
        let m = Metrics::new();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-remaining-1", "90502".parse().unwrap());
        h.insert("x-ratelimit-limit-1", "100000".parse().unwrap());
        h.insert("x-ratelimit-remaining-2", "47".parse().unwrap());
        m.api_response(
            "a",
            "vehicles",
            Some(200),
            Duration::from_millis(1),
            Some(&h),
        );
        let text = m.render();
        assert!(
            text.contains("stellantis_sync_quota_remaining{window=\"day\"} 90502"),
            "{text}"
        );
        assert!(
            text.contains("stellantis_sync_quota_limit{window=\"day\"} 100000"),
            "{text}"
        );
        assert!(
            text.contains("stellantis_sync_quota_remaining{window=\"burst\"} 47"),
            "{text}"
        );
    }
}
