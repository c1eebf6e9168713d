//! Configuration: figment layers (compiled defaults → TOML file → `STELLANTIS_SYNC_*` environment
//! variables, `__` for nesting) deserialized into [`RawConfig`], then validated into [`Config`],
//! whose invariants live in its types. Secrets come inline, from `…_file` paths, or from
//! systemd's `$CREDENTIALS_DIRECTORY`.
//!
//! Validation collects every problem before failing, each naming the file (or variable), the key
//! and the reason. Loading never creates or writes a file, so a bad config touches nothing.
//! Error messages never echo a value given for a secret key.
//!
//! Layout: `raw` (the file's serde types and defaults), `validate` (one function per section),
//! and here the validated `Config` and `load`, the one load path of start-up, `check-config` and
//! SIGHUP.

mod raw;
mod validate;

pub use raw::*;
use validate::validate;
pub use validate::{cron_is_valid, valid_name};

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use url::Url;

use crate::brand::Brand;

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

/// The validated configuration, in sections: each consumer is handed only its own.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    pub database: PathBuf,
    pub state_dir: PathBuf,
    /// When list passes run, how many accounts at once, how long a stop may take.
    pub schedule: Schedule,
    /// The API: base URL, timeout, page size, rate.
    pub api: ApiSettings,
    /// The identity provider: base URL override, timeout, rate.
    pub idp: IdpSettings,
    /// When tokens are refreshed and when an ageing refresh token is warned about.
    pub tokens: TokenPolicy,
    /// Retries within a run.
    pub retry: RetryPolicy,
    pub accounts: Vec<Account>,
    /// `[telemetry]`: what is polled per vehicle, and how often.
    pub telemetry: crate::telemetry::config::Settings,
    /// Metrics, health, backups, retention, Litestream (src/ops.rs).
    pub ops: crate::ops::OpsConfig,
}

/// The list passes' schedule (`schedule`, `schedule_jitter`, `run_at_startup`,
/// `max_concurrent_accounts`, `shutdown_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The cron expression (with seconds).
    pub cron: String,
    /// A random delay of up to this before each pass.
    pub jitter: Duration,
    pub run_at_startup: bool,
    pub max_concurrent_accounts: usize,
    /// How long a running pass (or telemetry round) may take to finish at shutdown.
    pub shutdown_timeout: Duration,
}

/// The `[api]` and `[rate_limit]` sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub base: Url,
    pub timeout: Duration,
    pub page_size: u32,
    pub rate: Rate,
}

/// The `[idp]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpSettings {
    /// Overrides every brand's identity provider (tests, the simulator).
    pub base: Option<Url>,
    pub timeout: Duration,
    pub rate: Rate,
}

impl IdpSettings {
    /// The identity provider's base URL for a brand.
    pub fn base_for(&self, brand: Brand) -> String {
        match &self.base {
            Some(u) => u.as_str().trim_end_matches('/').to_owned(),
            None => brand.idp_base_url(),
        }
    }

    /// How long to wait for another process that holds an account's token lock: it is
    /// refreshing, which takes at most one IdP timeout.
    pub fn lock_wait(&self) -> Duration {
        self.timeout.saturating_add(Duration::from_secs(2))
    }
}

impl Default for IdpSettings {
    /// The compiled defaults (every brand's own IdP, `[idp]`'s default timeout and rate).
    fn default() -> Self {
        let raw = RawConfig::default().idp;
        IdpSettings {
            base: None,
            timeout: raw.timeout.0,
            rate: Rate::or_min(raw.requests_per_second, raw.burst),
        }
    }
}

/// `refresh_margin`, `refresh_token_max_age`, `refresh_token_warn_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Refresh an access token this long before it expires.
    pub margin: Duration,
    /// How long the IdP honours a refresh token.
    pub max_age: Duration,
    /// Warn this long before a refresh token reaches `max_age`.
    pub warn_before: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        let raw = RawConfig::default();
        TokenPolicy {
            margin: raw.refresh_margin.0,
            max_age: raw.refresh_token_max_age.0,
            warn_before: raw.refresh_token_warn_before.0,
        }
    }
}

/// Retries within a run (`api.max_retries`, `api.retry_base`, `api.retry_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    /// Backoff base and cap.
    pub base: Duration,
    pub cap: Duration,
}

impl Rate {
    /// A rate from raw numbers, a zero replaced by one (validation reports zeros).
    pub fn or_min(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
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
    // Opened, not only probed: "does not exist" for a file this user may not read sends the
    // operator looking in the wrong place.
    if let Err(e) = std::fs::File::open(path) {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "the configuration file does not exist (pass --config PATH)".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => format!(
                "the configuration file cannot be read by this user ({e}); the daemon's user reads it through its group (`root:stellantis-sync`, mode 0640, in a directory it may enter)"
            ),
            _ => format!("the configuration file cannot be read: {e}"),
        };
        return Err(ConfigError {
            problems: vec![Problem {
                source: file_label,
                key: "-".into(),
                reason,
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
        assert_eq!(cfg.idp.base_for(Brand::Opel), "https://idpcvs.opel.com");
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
    fn without_client_values_the_brand_presets_are_used_and_overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let text = "state_dir = \"/tmp\"\n\
            [[accounts]]\nname = \"a\"\nbrand = \"peugeot\"\n\
            [[accounts]]\nname = \"b\"\nbrand = \"vauxhall\"\ncountry = \"gb\"\n\
            [[accounts]]\nname = \"c\"\nbrand = \"ds\"\nclient_id = \"own\"\nclient_secret = \"own-secret\"\n";
        let cfg = load(&write(dir.path(), text), Checks::ValuesOnly).unwrap();
        for (a, brand) in cfg.accounts[..2]
            .iter()
            .zip([Brand::Peugeot, Brand::Vauxhall])
        {
            assert_eq!(a.client_id, brand.preset().client_id);
            assert_eq!(
                a.client_secret.expose_secret(),
                brand.preset().client_secret
            );
        }
        assert_eq!(cfg.accounts[2].client_id, "own");
        assert_eq!(cfg.accounts[2].client_secret.expose_secret(), "own-secret");
        // A preset's secret is redacted like any other.
        let debug = format!("{cfg:?}");
        for b in [Brand::Peugeot, Brand::Vauxhall] {
            assert!(!debug.contains(b.preset().client_secret), "{debug}");
        }
        // [app] overrides the presets for every account that sets nothing itself.
        let with_app =
            format!("{text}[app]\nclient_id = \"app-id\"\nclient_secret = \"app-secret\"\n");
        let cfg = load(&write(dir.path(), &with_app), Checks::ValuesOnly).unwrap();
        assert_eq!(cfg.accounts[0].client_id, "app-id");
        assert_eq!(cfg.accounts[1].client_secret.expose_secret(), "app-secret");
        assert_eq!(cfg.accounts[2].client_id, "own");
    }

    #[test]
    fn half_a_client_is_refused_not_paired_with_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        let text = "state_dir = \"/tmp\"\n\
            [[accounts]]\nname = \"a\"\nbrand = \"opel\"\nclient_id = \"only-id\"\n\
            [[accounts]]\nname = \"b\"\nbrand = \"opel\"\nclient_secret = \"only-secret\"\n";
        let err = load(&write(dir.path(), text), Checks::ValuesOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains("accounts[0].client_secret"), "{err}");
        assert!(err.contains("accounts[1].client_id"), "{err}");
        assert!(err.contains("preset"), "{err}");
        assert!(!err.contains("only-secret"), "{err}");
    }

    #[test]
    fn the_shipped_example_configs_need_no_client_value() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["minimal.toml", "stellantis-sync.toml"] {
            let path = root.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let active = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.starts_with("client_id") || l.starts_with("client_secret"));
            assert!(!active, "{name} sets a client value");
            let cfg = load(&path, Checks::ValuesOnly).unwrap_or_else(|e| panic!("{name}: {e}"));
            for a in &cfg.accounts {
                assert_eq!(a.client_id, a.brand.preset().client_id, "{name}");
            }
        }
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
