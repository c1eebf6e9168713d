//! The configuration file as written: the serde types of every section (`RawConfig` and its
//! parts), their compiled defaults, and the duration syntax (`"30s"`, `"5m"`, `"7d"`). Nothing here
//! is validated; `validate` turns these into a `Config`.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The environment-variable prefix (`STELLANTIS_SYNC_RATE_LIMIT__BURST=5`).
pub const ENV_PREFIX: &str = "STELLANTIS_SYNC_";
/// The API's production base URL.
pub const DEFAULT_API_BASE: &str = "https://api.groupe-psa.com/connectedcar/v4";

/// Keys whose values are secrets: never echoed in an error message.
pub(super) const SECRET_KEYS: [&str; 3] = ["client_secret", "password", "refresh_token"];

/// A duration written as seconds (`300`) or with a unit (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurationInput", into = "String")]
pub struct Span(pub Duration);

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationInput {
    Seconds(u64),
    Text(String),
}

impl TryFrom<DurationInput> for Span {
    type Error = String;
    fn try_from(v: DurationInput) -> Result<Self, String> {
        match v {
            DurationInput::Seconds(s) => Ok(Span(Duration::from_secs(s))),
            DurationInput::Text(t) => parse_duration(&t).map(Span),
        }
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        format!("{}ms", s.0.as_millis())
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a duration (e.g. 30s, 5m, 2h, 7d)"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit.trim() {
        "" | "s" => Ok(secs(1)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" | "min" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        other => Err(format!(
            "unknown duration unit `{other}` in `{t}` (use ms, s, m, h or d)"
        )),
    }
}

/// The configuration file as written, before validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub database: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub schedule: String,
    pub schedule_jitter: Span,
    pub run_at_startup: bool,
    pub max_concurrent_accounts: u32,
    pub shutdown_timeout: Span,
    pub refresh_margin: Span,
    pub refresh_token_max_age: Span,
    pub refresh_token_warn_before: Span,
    pub rate_limit: RawRateLimit,
    pub api: RawApi,
    pub idp: RawIdp,
    #[serde(default)]
    pub app: RawApp,
    #[serde(default)]
    pub accounts: Vec<RawAccount>,
    #[serde(default)]
    pub telemetry: crate::telemetry::config::RawTelemetry,
    // Operations (src/ops.rs): metrics listener, textfile, backups, retention, Litestream.
    #[serde(default)]
    pub http: crate::ops::RawHttp,
    #[serde(default)]
    pub metrics_textfile: Option<PathBuf>,
    #[serde(default)]
    pub backup: crate::ops::RawBackup,
    #[serde(default)]
    pub retention: crate::ops::RawRetention,
    #[serde(default)]
    pub external_checkpointing: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub base_url: String,
    pub timeout: Span,
    pub max_retries: u32,
    pub page_size: u32,
    pub retry_base: Span,
    pub retry_cap: Span,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdp {
    pub base_url: Option<String>,
    pub timeout: Span,
    pub requests_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub client_id: Option<String>,
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub name: String,
    pub brand: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_country")]
    pub country: String,
    pub client_id: Option<String>,
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing)]
    pub refresh_token: Option<SecretString>,
    pub refresh_token_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn default_country() -> String {
    "fr".into()
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            database: None,
            state_dir: PathBuf::from("/var/lib/stellantis-sync"),
            schedule: "0 */5 * * * *".into(),
            schedule_jitter: Span(Duration::ZERO),
            run_at_startup: true,
            max_concurrent_accounts: 4,
            shutdown_timeout: Span(Duration::from_secs(10)),
            refresh_margin: Span(Duration::from_secs(300)),
            refresh_token_max_age: Span(Duration::from_secs(7 * 86_400)),
            refresh_token_warn_before: Span(Duration::from_secs(86_400)),
            rate_limit: RawRateLimit {
                requests_per_second: 5,
                burst: 1,
            },
            api: RawApi {
                base_url: DEFAULT_API_BASE.into(),
                timeout: Span(Duration::from_secs(30)),
                max_retries: 3,
                page_size: 60,
                retry_base: Span(Duration::from_secs(1)),
                retry_cap: Span(Duration::from_secs(30)),
            },
            idp: RawIdp {
                base_url: None,
                timeout: Span(Duration::from_secs(30)),
                requests_per_second: 2,
                burst: 1,
            },
            app: RawApp::default(),
            accounts: Vec::new(),
            telemetry: crate::telemetry::config::RawTelemetry::default(),
            http: crate::ops::RawHttp::default(),
            metrics_textfile: None,
            backup: crate::ops::RawBackup::default(),
            retention: crate::ops::RawRetention::default(),
            external_checkpointing: false,
        }
    }
}
