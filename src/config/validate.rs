//! Validation, one function per section: the schedule and limits, the URLs, each account and its
//! secrets (inline, `…_file`, or systemd's `$CREDENTIALS_DIRECTORY`), the directories. Every
//! problem is collected with its file, key and reason before failing; nothing is created or
//! written; a value given for a secret key is never echoed.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::brand::Brand;

use super::*;

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

/// Whether `name` is a valid account name (it names files in the token store).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Whether the daemon's schedule accepts this cron expression (six or seven fields, seconds first).
pub fn cron_is_valid(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "`{expr}` has {fields} fields; expected 6 (sec min hour day month weekday), e.g. \"0 */5 * * * *\""
        ));
    }
    // The parser (and its settings) of `health::next_fire`, which the daemon's job queue uses.
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|_| format!("`{expr}` is not a valid cron expression"))
}

pub(super) fn validate(raw: RawConfig, path: &Path, checks: Checks) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    let mut v = Validator {
        source: &label,
        problems: Vec::new(),
    };
    let limits = limits(&mut v, &raw);
    let database = raw
        .database
        .clone()
        .unwrap_or_else(|| raw.state_dir.join("stellantis-sync.sqlite"));
    let accounts = accounts(&mut v, &raw.app, raw.accounts);
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
        directories(&mut v, &raw.state_dir, &database);
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
        schedule: Schedule {
            cron: raw.schedule,
            jitter: raw.schedule_jitter.0,
            run_at_startup: raw.run_at_startup,
            max_concurrent_accounts: raw.max_concurrent_accounts as usize,
            shutdown_timeout: raw.shutdown_timeout.0,
        },
        api: ApiSettings {
            base: limits.api_base,
            timeout: raw.api.timeout.0,
            page_size: raw.api.page_size,
            rate: limits.api_rate,
        },
        idp: IdpSettings {
            base: limits.idp_base,
            timeout: raw.idp.timeout.0,
            rate: limits.idp_rate,
        },
        tokens: TokenPolicy {
            margin: raw.refresh_margin.0,
            max_age: raw.refresh_token_max_age.0,
            warn_before: raw.refresh_token_warn_before.0,
        },
        retry: RetryPolicy {
            max_retries: raw.api.max_retries,
            base: raw.api.retry_base.0,
            cap: raw.api.retry_cap.0,
        },
        accounts,
        telemetry,
        ops,
    })
}

/// The validated rates and base URLs.
struct Limits {
    api_rate: Rate,
    idp_rate: Rate,
    api_base: Url,
    idp_base: Option<Url>,
}

/// The schedule, concurrency, rates, timeouts and URLs.
fn limits(v: &mut Validator<'_>, raw: &RawConfig) -> Limits {
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
    if raw.state_dir.as_os_str().is_empty() {
        v.bad("state_dir", "must not be empty");
    } else if !raw.state_dir.is_absolute() {
        v.bad("state_dir", RELATIVE);
    }
    if raw.database.as_ref().is_some_and(|d| !d.is_absolute()) {
        v.bad("database", RELATIVE);
    }
    Limits {
        api_rate,
        idp_rate,
        api_base: api_base.unwrap_or_else(|| Url::parse(DEFAULT_API_BASE).expect("constant URL")),
        idp_base,
    }
}

/// Every account, with the `[app]` credentials, then the brand preset's, as defaults. Names are unique (case-insensitively)
/// and no refresh token is configured twice.
fn accounts(v: &mut Validator<'_>, app: &RawApp, list: Vec<RawAccount>) -> Vec<Account> {
    let app_secret = v.secret(
        "app.client_secret",
        app.client_secret.clone(),
        app.client_secret_file.as_deref(),
        "client_secret",
    );
    let mut names = HashSet::new();
    // A refresh token belongs to one account: two accounts presenting it would rotate it twice.
    let mut bootstrap_tokens: Vec<(usize, SecretString)> = Vec::new();
    if list.is_empty() {
        v.bad("accounts", "no [[accounts]] configured");
    }
    list.into_iter()
        .enumerate()
        .filter_map(|(i, a)| account(v, i, a, app, &app_secret, &mut names, &mut bootstrap_tokens))
        .collect()
}

/// One account; `None` when it is disabled or unusable (the problems are recorded).
fn account(
    v: &mut Validator<'_>,
    i: usize,
    a: RawAccount,
    app: &RawApp,
    app_secret: &Option<SecretString>,
    names: &mut HashSet<String>,
    bootstrap_tokens: &mut Vec<(usize, SecretString)>,
) -> Option<Account> {
    let key = |k: &str| format!("accounts[{i}].{k}");
    account_name(v, &key("name"), &a.name, names);
    let brand = match a.brand.parse::<Brand>() {
        Ok(b) => Some(b),
        Err(e) => {
            v.bad(key("brand"), e.to_string());
            None
        }
    };
    let own_secret = v.secret(
        &key("client_secret"),
        a.client_secret,
        a.client_secret_file.as_deref(),
        &format!("{}.client_secret", a.name),
    );
    let (client_id, client_secret) = client(
        v,
        &key,
        brand,
        a.client_id.clone().or_else(|| app.client_id.clone()),
        own_secret.or_else(|| app_secret.clone()),
    );
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
        one_account_per_token(v, i, t, bootstrap_tokens);
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
    let (Some(brand), Some(client_id), Some(client_secret), true) =
        (brand, client_id, client_secret, a.enabled)
    else {
        return None;
    };
    {
        Some(Account {
            name: a.name,
            brand,
            country: a.country.to_ascii_lowercase(),
            client_id,
            client_secret,
            username: a.username,
            password,
            refresh_token,
        })
    }
}

/// The account's app client: its own `client_id`/`client_secret`, else `[app]`'s, else (when
/// neither is set anywhere) the brand preset's. A client id without a secret (or the reverse) is
/// refused rather than paired with the preset's other half, which would be refused by the IdP.
fn client(
    v: &mut Validator<'_>,
    key: &dyn Fn(&str) -> String,
    brand: Option<Brand>,
    id: Option<String>,
    secret: Option<SecretString>,
) -> (Option<String>, Option<SecretString>) {
    match (id, secret) {
        (Some(id), Some(secret)) => (Some(id), Some(secret)),
        (None, None) => match brand {
            Some(b) => (
                Some(b.preset().client_id.to_owned()),
                Some(SecretString::from(b.preset().client_secret)),
            ),
            None => (None, None),
        },
        (Some(_), None) => {
            v.bad(
                key("client_secret"),
                "missing: a client_id is set (here or in [app]) without its client_secret (set it here, in [app], as a _file, or as a systemd credential; or remove client_id to use the brand app's preset client)",
            );
            (None, None)
        }
        (None, Some(_)) => {
            v.bad(
                key("client_id"),
                "missing: a client_secret is set (here or in [app]) without its client_id (set it, or remove the secret to use the brand app's preset client)",
            );
            (None, None)
        }
    }
}

/// A valid account name, unique case-insensitively.
fn account_name(v: &mut Validator<'_>, key: &str, name: &str, names: &mut HashSet<String>) {
    if !valid_name(name) {
        v.bad(
            key,
            format!("`{name}` is not a valid name (letters, digits, - _ . @; at most 64)"),
        );
    } else if !names.insert(name.to_ascii_lowercase()) {
        v.bad(key, format!("duplicate account name `{name}`"));
    }
}

/// Account `i`'s bootstrap refresh token is configured for no other account.
fn one_account_per_token(
    v: &mut Validator<'_>,
    i: usize,
    token: &SecretString,
    bootstrap_tokens: &mut Vec<(usize, SecretString)>,
) {
    use secrecy::ExposeSecret;
    if let Some((j, _)) = bootstrap_tokens
        .iter()
        .find(|(_, o)| o.expose_secret() == token.expose_secret())
    {
        v.bad(
            format!("accounts[{i}].refresh_token"),
            format!("the same refresh token as accounts[{j}] (value not shown): a refresh token belongs to one account, and presenting it twice kills it"),
        );
    } else {
        bootstrap_tokens.push((i, token.clone()));
    }
}

/// The state directory and the database's directory are usable (nothing is created).
/// Why a relative state directory or database is refused (issue 23, F12).
const RELATIVE: &str = "must be an absolute path: a relative one is resolved against the directory the command runs in, so the same configuration run from another directory would use another token store, present the configured refresh_token again and end the account's live chain";

fn directories(v: &mut Validator<'_>, state_dir: &Path, database: &Path) {
    check_dir_usable(v, "state_dir", state_dir);
    // The daemon creates `state_dir` (and the database's directory inside it); any other
    // database directory must already exist, so a typo is caught here.
    match database.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if dir.starts_with(state_dir) => {}
        Some(dir) if !dir.is_dir() => v.bad(
            "database",
            format!(
                "the directory {} does not exist (create it, or put the database under state_dir)",
                dir.display()
            ),
        ),
        Some(dir) => check_dir_usable(v, "database", dir),
        None => check_dir_usable(v, "database", Path::new(".")),
    }
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
