//! Configuration: figment layers (compiled defaults → TOML file → `STELLANTIS_SYNC_*` environment
//! variables, `__` for nesting) deserialized into [`RawConfig`], then validated into [`Config`],
//! whose invariants live in its types. Secrets come inline, from `…_file` paths, or from
//! systemd's `$CREDENTIALS_DIRECTORY`.
//!
//! Validation collects every problem before failing, each naming the file (or variable), the key
//! and the reason. Loading never creates or writes a file, so a bad config touches nothing.
//! Error messages never echo a value given for a secret key.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::brand::Brand;

/// The environment-variable prefix (`STELLANTIS_SYNC_RATE_LIMIT__BURST=5`).
pub const ENV_PREFIX: &str = "STELLANTIS_SYNC_";
/// The API's production base URL.
pub const DEFAULT_API_BASE: &str = "https://api.groupe-psa.com/connectedcar/v4";

/// Keys whose values are secrets: never echoed in an error message.
const SECRET_KEYS: [&str; 3] = ["client_secret", "password", "refresh_token"];

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

/// One account, validated, with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub brand: Brand,
    pub country: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
}

/// Rate limit: requests per second and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    pub database: PathBuf,
    pub state_dir: PathBuf,
    pub schedule: String,
    pub schedule_jitter: Duration,
    pub run_at_startup: bool,
    pub max_concurrent_accounts: usize,
    pub shutdown_timeout: Duration,
    pub refresh_margin: Duration,
    pub refresh_token_max_age: Duration,
    pub refresh_token_warn_before: Duration,
    pub api_base: Url,
    pub api_timeout: Duration,
    pub api_max_retries: u32,
    pub page_size: u32,
    /// Backoff base and cap for retries within a run.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub api_rate: Rate,
    pub idp_base: Option<Url>,
    pub idp_timeout: Duration,
    pub idp_rate: Rate,
    pub accounts: Vec<Account>,
    /// `[telemetry]`: what is polled per vehicle, and how often.
    pub telemetry: crate::telemetry::config::Settings,
    /// Metrics, health, backups, retention, Litestream (src/ops.rs).
    pub ops: crate::ops::OpsConfig,
}

impl Config {
    /// The identity provider's base URL for a brand.
    pub fn idp_base_for(&self, brand: Brand) -> String {
        match &self.idp_base {
            Some(u) => u.as_str().trim_end_matches('/').to_owned(),
            None => brand.idp_base_url().to_owned(),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or environment variable the value came from.
    pub source: String,
    /// The key, e.g. `accounts[1].brand`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.reason)
    }
}

/// Every problem found; the configuration is unusable.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// How much checking `load` does beyond parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// Also check that the state directory and the database's directory are usable.
    Full,
    /// Parse and validate values only (for tools that do not write).
    ValuesOnly,
}

/// Loads and validates the configuration at `path` (plus environment overrides).
pub fn load(path: &Path, checks: Checks) -> Result<Config, ConfigError> {
    let file_label = path.display().to_string();
    if !path.exists() {
        return Err(ConfigError {
            problems: vec![Problem {
                source: file_label,
                key: "-".into(),
                reason: "the configuration file does not exist (pass --config PATH)".into(),
            }],
        });
    }
    let figment = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(ENV_PREFIX).split("__"));
    let raw: RawConfig = figment.extract().map_err(|e| ConfigError {
        problems: e
            .into_iter()
            .map(|e| figment_problem(&e, &file_label))
            .collect(),
    })?;
    validate(raw, path, checks)
}

fn figment_problem(e: &figment::Error, file_label: &str) -> Problem {
    let source = e.metadata.as_ref().map_or_else(
        || file_label.to_owned(),
        |m| match &m.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ if m.name.contains("environment") => format!("environment ({ENV_PREFIX}*)"),
            _ => m.name.to_string(),
        },
    );
    let key = if e.path.is_empty() {
        "-".to_owned()
    } else {
        e.path.join(".")
    };
    let last = e.path.last().map(String::as_str).unwrap_or("");
    let reason = if SECRET_KEYS.contains(&last) {
        // figment and serde echo the offending value; for a secret that would leak it.
        match &e.kind {
            figment::error::Kind::InvalidType(..) => {
                "has the wrong type (expected a string)".into()
            }
            _ => "is invalid (value not shown: it is a secret)".into(),
        }
    } else {
        match &e.kind {
            figment::error::Kind::Message(m) if m.contains("TOML") || m.contains("parse") => {
                format!("not valid TOML: {}", m.lines().next().unwrap_or(m))
            }
            k => k.to_string(),
        }
    };
    Problem {
        source,
        key,
        reason,
    }
}

struct Validator<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn bad(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            source: self.source.to_owned(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn rate(&mut self, key: &str, per_second: u32, burst: u32) -> Rate {
        let p = NonZeroU32::new(per_second);
        let b = NonZeroU32::new(burst);
        if p.is_none() {
            self.bad(format!("{key}.requests_per_second"), "must be at least 1");
        }
        if b.is_none() {
            self.bad(format!("{key}.burst"), "must be at least 1");
        }
        Rate {
            per_second: p.unwrap_or(NonZeroU32::MIN),
            burst: b.unwrap_or(NonZeroU32::MIN),
        }
    }

    fn url(&mut self, key: &str, text: &str) -> Option<Url> {
        match Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.bad(key, format!("`{text}` is not an http(s) URL"));
                None
            }
            Err(e) => {
                self.bad(key, format!("`{text}` is not a URL: {e}"));
                None
            }
        }
    }

    /// Resolves a secret: inline value, `…_file`, then `$CREDENTIALS_DIRECTORY/<credential>`.
    fn secret(
        &mut self,
        key: &str,
        inline: Option<SecretString>,
        file: Option<&Path>,
        credential: &str,
    ) -> Option<SecretString> {
        if inline.is_some() && file.is_some() {
            self.bad(key, format!("set either `{key}` or `{key}_file`, not both"));
        }
        if let Some(v) = inline {
            return Some(v);
        }
        if let Some(path) = file {
            return match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(SecretString::from(text.trim().to_owned()))
                }
                Ok(_) => {
                    self.bad(
                        format!("{key}_file"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.bad(
                        format!("{key}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            };
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        let path = Path::new(&dir).join(credential);
        std::fs::read_to_string(path)
            .ok()
            .map(|t| SecretString::from(t.trim().to_owned()))
            .filter(|s| !secrecy::ExposeSecret::expose_secret(s).is_empty())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Whether the scheduler accepts this cron expression (six or seven fields, seconds first).
pub fn cron_is_valid(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "`{expr}` has {fields} fields; expected 6 (sec min hour day month weekday), e.g. \"0 */5 * * * *\""
        ));
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| format!("`{expr}` is not a valid cron expression"))
}

fn validate(raw: RawConfig, path: &Path, checks: Checks) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    let mut v = Validator {
        source: &label,
        problems: Vec::new(),
    };
    if let Err(e) = cron_is_valid(&raw.schedule) {
        v.bad("schedule", e);
    }
    if raw.max_concurrent_accounts == 0 {
        v.bad("max_concurrent_accounts", "must be at least 1");
    }
    let api_rate = v.rate(
        "rate_limit",
        raw.rate_limit.requests_per_second,
        raw.rate_limit.burst,
    );
    let idp_rate = v.rate("idp", raw.idp.requests_per_second, raw.idp.burst);
    if !(1..=60).contains(&raw.api.page_size) {
        v.bad(
            "api.page_size",
            "must be between 1 and 60 (the API's limit)",
        );
    }
    if raw.api.timeout.0.is_zero() {
        v.bad("api.timeout", "must be longer than zero");
    }
    if raw.idp.timeout.0.is_zero() {
        v.bad("idp.timeout", "must be longer than zero");
    }
    // A timeout of years is a typo, and arithmetic on it must not overflow.
    for (key, d) in [
        ("api.timeout", raw.api.timeout.0),
        ("idp.timeout", raw.idp.timeout.0),
        ("shutdown_timeout", raw.shutdown_timeout.0),
        ("api.retry_cap", raw.api.retry_cap.0),
    ] {
        if d > Duration::from_secs(3600) {
            v.bad(key, "must be at most 1h");
        }
    }
    if raw.refresh_token_max_age.0 <= raw.refresh_margin.0 {
        v.bad(
            "refresh_token_max_age",
            "must be longer than refresh_margin",
        );
    }
    let api_base = v.url("api.base_url", &raw.api.base_url);
    let idp_base = raw
        .idp
        .base_url
        .as_deref()
        .and_then(|u| v.url("idp.base_url", u));
    if !raw.state_dir.is_absolute() && raw.state_dir.as_os_str().is_empty() {
        v.bad("state_dir", "must not be empty");
    }
    let database = raw
        .database
        .clone()
        .unwrap_or_else(|| raw.state_dir.join("stellantis-sync.sqlite"));

    let app_secret = v.secret(
        "app.client_secret",
        raw.app.client_secret,
        raw.app.client_secret_file.as_deref(),
        "client_secret",
    );
    let mut names = HashSet::new();
    // A refresh token belongs to one account: two accounts presenting it would rotate it twice.
    let mut bootstrap_tokens: Vec<(usize, SecretString)> = Vec::new();
    let mut accounts = Vec::new();
    if raw.accounts.is_empty() {
        v.bad("accounts", "no [[accounts]] configured");
    }
    for (i, a) in raw.accounts.into_iter().enumerate() {
        let key = |k: &str| format!("accounts[{i}].{k}");
        if !valid_name(&a.name) {
            v.bad(
                key("name"),
                format!(
                    "`{}` is not a valid name (letters, digits, - _ . @; at most 64)",
                    a.name
                ),
            );
        } else if !names.insert(a.name.to_ascii_lowercase()) {
            v.bad(key("name"), format!("duplicate account name `{}`", a.name));
        }
        let brand = match a.brand.parse::<Brand>() {
            Ok(b) => Some(b),
            Err(e) => {
                v.bad(key("brand"), e.to_string());
                None
            }
        };
        let client_id = a.client_id.clone().or_else(|| raw.app.client_id.clone());
        if client_id.is_none() {
            v.bad(key("client_id"), "missing (set it here or in [app])");
        }
        let own_secret = v.secret(
            &key("client_secret"),
            a.client_secret,
            a.client_secret_file.as_deref(),
            &format!("{}.client_secret", a.name),
        );
        let client_secret = own_secret.or_else(|| app_secret.clone());
        if client_secret.is_none() {
            v.bad(
                key("client_secret"),
                "missing (set it here, in [app], as a _file, or as a systemd credential)",
            );
        }
        let password = v.secret(
            &key("password"),
            a.password,
            a.password_file.as_deref(),
            &format!("{}.password", a.name),
        );
        let refresh_token = v.secret(
            &key("refresh_token"),
            a.refresh_token,
            a.refresh_token_file.as_deref(),
            &format!("{}.refresh_token", a.name),
        );
        if let Some(t) = &refresh_token {
            use secrecy::ExposeSecret;
            if let Some((j, _)) = bootstrap_tokens
                .iter()
                .find(|(_, o)| o.expose_secret() == t.expose_secret())
            {
                v.bad(
                    key("refresh_token"),
                    format!("the same refresh token as accounts[{j}] (value not shown): a refresh token belongs to one account, and presenting it twice kills it"),
                );
            } else {
                bootstrap_tokens.push((i, t.clone()));
            }
        }
        if password.is_some() && a.username.is_none() {
            v.bad(key("username"), "a password is set but no username");
        }
        if a.country.len() != 2 || !a.country.chars().all(|c| c.is_ascii_alphabetic()) {
            v.bad(
                key("country"),
                format!("`{}` is not a two-letter country code", a.country),
            );
        }
        if let (Some(brand), Some(client_id), Some(client_secret), true) =
            (brand, client_id, client_secret, a.enabled)
        {
            accounts.push(Account {
                name: a.name,
                brand,
                country: a.country.to_ascii_lowercase(),
                client_id,
                client_secret,
                username: a.username,
                password,
                refresh_token,
            });
        }
    }
    let telemetry = crate::telemetry::config::validate(&raw.telemetry).unwrap_or_else(|bad| {
        bad.into_iter().for_each(|(k, r)| v.bad(k, r));
        crate::telemetry::config::Settings::default()
    });
    let (ops, ops_problems) = crate::ops::validate(
        raw.http,
        raw.metrics_textfile,
        raw.backup,
        raw.retention,
        raw.external_checkpointing,
        &raw.state_dir,
    );
    for (key, reason) in ops_problems {
        v.bad(key, reason);
    }
    if checks == Checks::Full {
        check_dir_usable(&mut v, "state_dir", &raw.state_dir);
        // The daemon creates `state_dir` (and the database's directory inside it); any other
        // database directory must already exist, so a typo is caught here.
        match database.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if dir.starts_with(&raw.state_dir) => {}
            Some(dir) if !dir.is_dir() => v.bad(
                "database",
                format!("the directory {} does not exist (create it, or put the database under state_dir)", dir.display()),
            ),
            Some(dir) => check_dir_usable(&mut v, "database", dir),
            None => check_dir_usable(&mut v, "database", Path::new(".")),
        }
    }
    if !v.problems.is_empty() {
        return Err(ConfigError {
            problems: v.problems,
        });
    }
    Ok(Config {
        source: path.to_owned(),
        database,
        state_dir: raw.state_dir,
        schedule: raw.schedule,
        schedule_jitter: raw.schedule_jitter.0,
        run_at_startup: raw.run_at_startup,
        max_concurrent_accounts: raw.max_concurrent_accounts as usize,
        shutdown_timeout: raw.shutdown_timeout.0,
        refresh_margin: raw.refresh_margin.0,
        refresh_token_max_age: raw.refresh_token_max_age.0,
        refresh_token_warn_before: raw.refresh_token_warn_before.0,
        api_base: api_base.unwrap_or_else(|| Url::parse(DEFAULT_API_BASE).expect("constant URL")),
        api_timeout: raw.api.timeout.0,
        api_max_retries: raw.api.max_retries,
        page_size: raw.api.page_size,
        retry_base: raw.api.retry_base.0,
        retry_cap: raw.api.retry_cap.0,
        api_rate,
        idp_base,
        idp_timeout: raw.idp.timeout.0,
        idp_rate,
        accounts,
        telemetry,
        ops,
    })
}

/// A directory is usable if it exists and is writable, or if it can be created (its nearest
/// existing ancestor is a writable directory). Nothing is created here.
fn check_dir_usable(v: &mut Validator<'_>, key: &str, dir: &Path) {
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => {
                if m.permissions().readonly() || !writable(probe) {
                    v.bad(key, format!("{} is not writable", probe.display()));
                }
                return;
            }
            Ok(_) => {
                v.bad(key, format!("{} is not a directory", probe.display()));
                return;
            }
            Err(_) => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => {
                    v.bad(key, format!("{} does not exist", dir.display()));
                    return;
                }
            },
        }
    }
}

/// `access(W_OK)` without unsafe code: ask the OS by creating nothing, via the permission bits
/// and our user; root can write anywhere that is not read-only.
fn writable(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(dir) else {
        return false;
    };
    let uid = current_uid();
    if uid == 0 {
        return true;
    }
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o200 != 0
    } else {
        // Group membership is not known without libc; accept group or other write bits.
        mode & 0o022 != 0
    }
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
        state_dir = "STATE"
        schedule = "*/10 * * * * *"
        [app]
        client_id = "cid"
        client_secret = "app-secret-value"
        [[accounts]]
        name = "alice"
        brand = "peugeot"
        refresh_token = "rt-alice"
        [[accounts]]
        name = "bob"
        brand = "opel"
        client_secret = "bob-own-secret"
        username = "bob@example.com"
        password = "bob-password"
    "#;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn a_good_config_loads_with_app_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("STATE", &dir.path().join("state").display().to_string());
        let cfg = load(&write(dir.path(), &text), Checks::Full).unwrap();
        assert_eq!(cfg.accounts.len(), 2);
        assert_eq!(
            cfg.accounts[0].client_secret.expose_secret(),
            "app-secret-value"
        );
        assert_eq!(
            cfg.accounts[1].client_secret.expose_secret(),
            "bob-own-secret"
        );
        assert_eq!(
            cfg.database,
            dir.path().join("state/stellantis-sync.sqlite")
        );
        assert_eq!(cfg.idp_base_for(Brand::Opel), "https://idpcvs.opel.com");
        // Loading created nothing.
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("STATE", &dir.path().display().to_string());
        let cfg = load(&write(dir.path(), &text), Checks::ValuesOnly).unwrap();
        let debug = format!("{cfg:?}");
        for secret in [
            "app-secret-value",
            "bob-own-secret",
            "bob-password",
            "rt-alice",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert!(debug.contains("REDACTED"));
    }

    #[test]
    fn problems_name_key_and_reason_and_never_echo_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
            state_dir = "/tmp"
            schedule = "every day"
            [rate_limit]
            requests_per_second = 0
            [[accounts]]
            name = "a"
            brand = "fiat"
            client_id = "x"
            client_secret = "s"
            [[accounts]]
            name = "a"
            brand = "ds"
            client_id = "x"
            client_secret_file = "/nonexistent/secret"
        "#;
        let err = load(&write(dir.path(), text), Checks::ValuesOnly).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "schedule",
            "rate_limit.requests_per_second",
            "accounts[0].brand",
            "unknown brand `fiat`",
            "accounts[1].name",
            "duplicate",
            "accounts[1].client_secret_file",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
        let wrong_type = "state_dir = \"/tmp\"\n[[accounts]]\nname = \"a\"\nbrand = \"ds\"\nclient_id = \"x\"\npassword = 987654321\n";
        let err = load(&write(dir.path(), wrong_type), Checks::ValuesOnly)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("accounts.0.password") || err.contains("password"),
            "{err}"
        );
        assert!(!err.contains("987654321"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = "state_dir = \"/tmp\"\nshedule = \"* * * * * *\"\n";
        let err = load(&write(dir.path(), text), Checks::ValuesOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shedule"), "{err}");
    }

    #[test]
    fn cron_needs_seconds() {
        assert!(cron_is_valid("0 */5 * * * *").is_ok());
        assert!(cron_is_valid("*/5 * * * *").is_err());
        assert!(cron_is_valid("61 * * * * *").is_err());
    }
}
