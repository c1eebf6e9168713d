//! OAuth2 tokens for every account: where they come from, when they are refreshed, and how a
//! rotated refresh token is made durable before anything else happens.
//!
//! Sources, in order: the token store; a configured `refresh_token` (bootstrap, used once: a new
//! value in the configuration is adopted, the same one is never replayed); the password grant when
//! `username`/`password` are set; `stellantis-sync login` (see [`login`]).
//!
//! Refresh protocol (`reliability-notes.md` §1.5): single flight per account (an in-process mutex
//! plus the store's cross-process lock), re-read the store under the lock, check the store is
//! writable, POST, write the new refresh token durably, and only then use the access token.
//! `invalid_grant` → re-read once, then log in with the password if one is configured, otherwise
//! the account is `needs_reauth` and no further token request is made until its inputs change
//! (a `login`, or a new bootstrap token or password in the configuration).
//!
//! This module never logs a token; its functions are not `#[instrument]`ed.

pub mod grant;
pub mod login;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Account, Config};
use crate::faultpoint;
use crate::ratelimit::Limits;
use crate::timefmt;
use grant::{GrantError, Tokens};
use store::{StoreError, TokenRecord, TokenStore, fingerprint};

/// Why an account has no usable access token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A person must act: `stellantis-sync login --account NAME`.
    #[error(
        "account {account} needs re-authorization: {reason}; run `stellantis-sync login --account {account}`"
    )]
    NeedsReauth { account: String, reason: String },
    /// The app's client id or secret was refused.
    #[error(
        "account {account}: the identity provider refused the app credentials (invalid_client); check client_id and client_secret"
    )]
    InvalidClient { account: String },
    /// The identity provider is down, slow or answered oddly; may pass.
    #[error("account {account}: token request failed: {reason}")]
    Transient { account: String, reason: String },
    /// The token store could not be read or written.
    #[error("account {account}: {source}")]
    Store {
        account: String,
        #[source]
        source: StoreError,
    },
}

impl AuthError {
    /// The error's class as recorded in `sync_runs.error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::NeedsReauth { .. } => "needs_reauth",
            AuthError::InvalidClient { .. } => "invalid_client",
            AuthError::Transient { .. } => "auth_transient",
            AuthError::Store { .. } => "token_store",
        }
    }
}

/// Settings the token manager needs from the configuration.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub margin: Duration,
    pub max_age: Duration,
    pub warn_before: Duration,
    pub idp_override: Option<String>,
    pub lock_wait: Duration,
}

impl TokenSettings {
    /// From the validated configuration.
    pub fn from_config(cfg: &Config) -> TokenSettings {
        TokenSettings {
            margin: cfg.refresh_margin,
            max_age: cfg.refresh_token_max_age,
            warn_before: cfg.refresh_token_warn_before,
            idp_override: cfg
                .idp_base
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            lock_wait: Duration::from_secs(30),
        }
    }
}

/// Hands out access tokens and keeps refresh tokens alive.
pub struct TokenManager {
    store: TokenStore,
    http: reqwest::Client,
    limits: Arc<Limits>,
    settings: TokenSettings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    warned: Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    /// Records whose durable write failed: kept in memory and written again first thing.
    unsaved: Mutex<HashMap<String, TokenRecord>>,
}

/// What is about to be presented to the IdP.
enum Plan {
    Refresh {
        token: SecretString,
        source: String,
        bootstrap: bool,
    },
    Password,
    Reauth(String),
}

fn still_valid(rec: &TokenRecord, margin: Duration) -> Option<SecretString> {
    if rec.needs_reauth {
        return None;
    }
    let expires = timefmt::parse(rec.access_expires_at.as_deref()?)?;
    let margin = chrono::Duration::from_std(margin).ok()?;
    (expires - margin > Utc::now())
        .then(|| rec.access_token.clone())
        .flatten()
}

/// Fingerprint of the configured bootstrap refresh token.
fn boot_fp(a: &Account) -> Option<String> {
    a.refresh_token.as_ref().map(fingerprint)
}

/// Salted fingerprint of the configured password (only to notice that it changed).
fn pw_fp(a: &Account) -> Option<String> {
    a.password.as_ref().map(|p| {
        fingerprint(&SecretString::from(format!(
            "stellantis-sync:{}:{}",
            a.name,
            p.expose_secret()
        )))
    })
}

/// Whether the configuration now offers something the record has not seen: a new bootstrap
/// token or a changed password. Only that lifts a `needs_reauth` without `login`.
fn inputs_changed(a: &Account, r: &TokenRecord) -> bool {
    let boot = boot_fp(a);
    let pw = pw_fp(a);
    (boot.is_some() && boot != r.bootstrap_sha256) || (pw.is_some() && pw != r.password_sha256)
}

impl TokenManager {
    pub fn new(
        store: TokenStore,
        http: reqwest::Client,
        limits: Arc<Limits>,
        settings: TokenSettings,
    ) -> TokenManager {
        TokenManager {
            store,
            http,
            limits,
            settings,
            locks: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(HashMap::new()),
        }
    }

    /// The token manager of a configuration: its state directory's store, an HTTP client with
    /// the identity provider's timeout, and its refresh settings.
    pub fn for_config(cfg: &Config, limits: Arc<Limits>) -> TokenManager {
        TokenManager::new(
            TokenStore::new(&cfg.state_dir),
            http_client(cfg.idp_timeout),
            limits,
            TokenSettings::from_config(cfg),
        )
    }

    /// The store (for `status` and `login`).
    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    fn idp_base(&self, a: &Account) -> String {
        self.settings
            .idp_override
            .clone()
            .unwrap_or_else(|| a.brand.idp_base_url().to_owned())
    }

    fn account_mutex(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn store_err(a: &Account, source: StoreError) -> AuthError {
        AuthError::Store {
            account: a.name.clone(),
            source,
        }
    }

    /// A valid access token for the account, refreshing or logging in if needed.
    pub async fn access_token(&self, a: &Account) -> Result<SecretString, AuthError> {
        self.obtain(a, None).await
    }

    /// The API rejected `rejected` (401): get a new access token, unless another task already did.
    pub async fn after_rejection(
        &self,
        a: &Account,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        self.obtain(a, Some(fingerprint(rejected))).await
    }

    async fn obtain(
        &self,
        a: &Account,
        rejected: Option<String>,
    ) -> Result<SecretString, AuthError> {
        let mutex = self.account_mutex(&a.name);
        let _guard = mutex.lock().await;
        self.flush_unsaved(a)?;
        let usable = |rec: &Option<TokenRecord>| -> Option<SecretString> {
            let r = rec.as_ref()?;
            let tok = still_valid(r, self.settings.margin)?;
            (rejected.as_deref() != Some(fingerprint(&tok).as_str())).then_some(tok)
        };
        let rec = self
            .store
            .load(&a.name)
            .map_err(|e| Self::store_err(a, e))?;
        if let Some(r) = &rec
            && r.needs_reauth
            && !inputs_changed(a, r)
        {
            return Err(AuthError::NeedsReauth {
                account: a.name.clone(),
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no valid refresh token".into()),
            });
        }
        if let Some(tok) = usable(&rec) {
            self.warn_if_old(a, rec.as_ref());
            return Ok(tok);
        }
        // The network is needed: take the cross-process lock and look again.
        let _lock = self
            .store
            .lock(&a.name, self.settings.lock_wait)
            .await
            .map_err(|e| Self::store_err(a, e))?;
        let rec = self
            .store
            .load(&a.name)
            .map_err(|e| Self::store_err(a, e))?;
        if let Some(tok) = usable(&rec) {
            return Ok(tok);
        }
        let mut password_tried = false;
        let mut rec = rec;
        for _ in 0..3 {
            let plan = self.plan(a, rec.as_ref(), password_tried);
            let result = match &plan {
                Plan::Reauth(reason) => return Err(self.mark_reauth(a, rec, reason.clone())),
                Plan::Refresh { token, .. } => {
                    self.store.preflight().map_err(|e| Self::store_err(a, e))?;
                    faultpoint::hit("before_refresh_post");
                    grant::request(
                        &self.http,
                        &self.limits,
                        &self.idp_base(a),
                        a,
                        &[
                            ("grant_type", "refresh_token"),
                            ("refresh_token", token.expose_secret()),
                        ],
                    )
                    .await
                }
                Plan::Password => {
                    password_tried = true;
                    self.store.preflight().map_err(|e| Self::store_err(a, e))?;
                    let user = a.username.as_deref().unwrap_or_default();
                    let pass = a
                        .password
                        .as_ref()
                        .map(|p| p.expose_secret().to_owned())
                        .unwrap_or_default();
                    grant::request(
                        &self.http,
                        &self.limits,
                        &self.idp_base(a),
                        a,
                        &[
                            ("grant_type", "password"),
                            ("username", user),
                            ("password", &pass),
                            ("realm", a.brand.realm()),
                            ("scope", "openid profile"),
                        ],
                    )
                    .await
                }
            };
            match result {
                Ok(tokens) => {
                    faultpoint::hit("after_refresh_response");
                    let new = self.record_from(a, rec.as_ref(), &plan, tokens);
                    let access = new.access_token.clone();
                    self.save_durably(a, new)?;
                    faultpoint::hit("after_store_durable");
                    return access.ok_or_else(|| AuthError::Transient {
                        account: a.name.clone(),
                        reason: "the identity provider returned no access token".into(),
                    });
                }
                Err(GrantError::InvalidGrant(desc)) => {
                    // Another process may have rotated the token meanwhile: look once more.
                    let again = self
                        .store
                        .load(&a.name)
                        .map_err(|e| Self::store_err(a, e))?;
                    let changed = match (&again, &rec) {
                        (Some(x), Some(y)) => {
                            x.refresh_token.as_ref().map(fingerprint)
                                != y.refresh_token.as_ref().map(fingerprint)
                        }
                        (Some(_), None) => true,
                        _ => false,
                    };
                    if changed {
                        if let Some(tok) = usable(&again) {
                            return Ok(tok);
                        }
                        rec = again;
                        continue;
                    }
                    let what = match plan {
                        Plan::Password => "the username or password was rejected".to_owned(),
                        _ => format!("the refresh token was rejected (invalid_grant: {desc})"),
                    };
                    if a.password.is_some() && !password_tried {
                        tracing::warn!(account = %a.name, "{what}; logging in again with the configured password");
                        // Forget the dead refresh token so the plan moves on to the password.
                        rec = rec.map(|mut r| {
                            r.refresh_token = None;
                            r.access_token = None;
                            r
                        });
                        continue;
                    }
                    return Err(self.mark_reauth(a, rec, what));
                }
                Err(GrantError::Refused {
                    status,
                    error,
                    description,
                }) if matches!(plan, Plan::Password) => {
                    let reason = if error == "server_error" {
                        format!(
                            "the identity provider refused the password grant ({status} {error}: {description}), as it has for every user since January 2024"
                        )
                    } else {
                        format!("the password grant was refused ({status} {error})")
                    };
                    return Err(self.mark_reauth(a, rec, reason));
                }
                Err(GrantError::InvalidClient) => {
                    return Err(AuthError::InvalidClient {
                        account: a.name.clone(),
                    });
                }
                Err(e) => {
                    return Err(AuthError::Transient {
                        account: a.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Err(AuthError::Transient {
            account: a.name.clone(),
            reason: "the token store kept changing during the refresh".into(),
        })
    }

    fn plan(&self, a: &Account, rec: Option<&TokenRecord>, password_tried: bool) -> Plan {
        // A configured refresh token is used once: only while no record has seen it.
        let boot_new = boot_fp(a).is_some() && rec.is_none_or(|r| boot_fp(a) != r.bootstrap_sha256);
        if let Some(r) = rec
            && !r.needs_reauth
            && let Some(tok) = &r.refresh_token
        {
            return Plan::Refresh {
                token: tok.clone(),
                source: r.source.clone().unwrap_or_else(|| "store".into()),
                bootstrap: false,
            };
        }
        if let Some(tok) = &a.refresh_token
            && boot_new
        {
            return Plan::Refresh {
                token: tok.clone(),
                source: "bootstrap".into(),
                bootstrap: true,
            };
        }
        if a.password.is_some() && a.username.is_some() && !password_tried {
            return Plan::Password;
        }
        Plan::Reauth(if rec.is_some_and(|r| r.needs_reauth) {
            rec.and_then(|r| r.reason.clone())
                .unwrap_or_else(|| "no valid refresh token".into())
        } else {
            "no token yet: no refresh_token or password is configured".into()
        })
    }

    fn record_from(
        &self,
        a: &Account,
        old: Option<&TokenRecord>,
        plan: &Plan,
        t: Tokens,
    ) -> TokenRecord {
        let now = Utc::now();
        let (source, chain_start, previous) = match plan {
            Plan::Refresh {
                token,
                source,
                bootstrap,
            } => (
                source.clone(),
                if *bootstrap {
                    Some(timefmt::format(now))
                } else {
                    old.and_then(|r| r.chain_started_at.clone())
                        .or_else(|| Some(timefmt::format(now)))
                },
                Some(fingerprint(token)),
            ),
            _ => ("password".to_owned(), Some(timefmt::format(now)), None),
        };
        // RFC 6749 §6: no new refresh token means the old one stays valid.
        let refresh = t.refresh_token.or_else(|| match plan {
            Plan::Refresh { token, .. } => Some(token.clone()),
            _ => None,
        });
        issued_record(
            a,
            t.access_token,
            refresh,
            t.expires_in,
            &source,
            chain_start,
            previous,
        )
    }

    /// Saves with retries; if every try fails, keeps the record in memory (it holds the only
    /// live refresh token) and says so loudly.
    fn save_durably(&self, a: &Account, rec: TokenRecord) -> Result<(), AuthError> {
        let mut last = None;
        for attempt in 0..3 {
            match self.store.save(&rec) {
                Ok(()) => {
                    self.unsaved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&a.name);
                    return Ok(());
                }
                Err(e) => {
                    if attempt < 2 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    last = Some(e);
                }
            }
        }
        tracing::error!(
            account = %a.name,
            "the rotated refresh token could NOT be written to {}; it is kept in memory and will be written at the next attempt — free space or fix permissions before stopping the daemon",
            self.store.path(&a.name).display()
        );
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.name.clone(), rec);
        Err(Self::store_err(
            a,
            last.unwrap_or(StoreError::Locked {
                path: self.store.path(&a.name),
            }),
        ))
    }

    fn flush_unsaved(&self, a: &Account) -> Result<(), AuthError> {
        let pending = self
            .unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&a.name)
            .cloned();
        if let Some(rec) = pending {
            self.store.save(&rec).map_err(|e| Self::store_err(a, e))?;
            self.unsaved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&a.name);
            tracing::info!(account = %a.name, "the pending token record was written");
        }
        Ok(())
    }

    /// Whether any rotated token is still only in memory (shutdown must say so).
    pub fn has_unsaved(&self) -> Vec<String> {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn mark_reauth(&self, a: &Account, rec: Option<TokenRecord>, reason: String) -> AuthError {
        let now = timefmt::now();
        let mut r = rec.unwrap_or_else(|| TokenRecord {
            version: 1,
            account: a.name.clone(),
            brand: a.brand.key().into(),
            refresh_token: None,
            access_token: None,
            access_expires_at: None,
            chain_started_at: None,
            refreshed_at: None,
            source: None,
            previous_refresh_sha256: None,
            bootstrap_sha256: None,
            password_sha256: None,
            needs_reauth: false,
            reason: None,
            updated_at: now.clone(),
        });
        if let Some(t) = r.refresh_token.take() {
            r.previous_refresh_sha256 = Some(fingerprint(&t));
        }
        r.access_token = None;
        r.needs_reauth = true;
        r.reason = Some(reason.clone());
        r.bootstrap_sha256 = boot_fp(a);
        r.password_sha256 = pw_fp(a);
        r.updated_at = now;
        if let Err(e) = self.store.save(&r) {
            tracing::error!(account = %a.name, "cannot record needs_reauth in the token store: {e}");
        }
        let err = AuthError::NeedsReauth {
            account: a.name.clone(),
            reason,
        };
        tracing::error!("{err}");
        err
    }

    fn warn_if_old(&self, a: &Account, rec: Option<&TokenRecord>) {
        let Some(start) = rec
            .and_then(|r| r.chain_started_at.as_deref())
            .and_then(timefmt::parse)
        else {
            return;
        };
        let (Ok(max), Ok(before)) = (
            chrono::Duration::from_std(self.settings.max_age),
            chrono::Duration::from_std(self.settings.warn_before),
        ) else {
            return;
        };
        let dies = start + max;
        let now = Utc::now();
        if now < dies - before {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned
            .get(&a.name)
            .is_some_and(|t| now - *t < chrono::Duration::hours(6))
        {
            return;
        }
        warned.insert(a.name.clone(), now);
        let hours = (dies - now).num_hours().max(0);
        tracing::warn!(
            account = %a.name,
            "the refresh token chain started {}; Stellantis ends it after about {} days, in about {hours} h: run `stellantis-sync login --account {}` before then",
            timefmt::format(start),
            self.settings.max_age.as_secs() / 86_400,
            a.name
        );
    }
}

/// The record of freshly issued tokens (after a refresh, a password grant or a login).
pub(crate) fn issued_record(
    a: &Account,
    access: SecretString,
    refresh: Option<SecretString>,
    expires_in: u64,
    source: &str,
    chain_started_at: Option<String>,
    previous_refresh_sha256: Option<String>,
) -> TokenRecord {
    let now = Utc::now();
    let secs = i64::try_from(expires_in).unwrap_or(3599);
    TokenRecord {
        version: 1,
        account: a.name.clone(),
        brand: a.brand.key().into(),
        refresh_token: refresh,
        access_token: Some(access),
        access_expires_at: Some(timefmt::format(now + chrono::Duration::seconds(secs))),
        chain_started_at,
        refreshed_at: Some(timefmt::format(now)),
        source: Some(source.to_owned()),
        previous_refresh_sha256,
        bootstrap_sha256: boot_fp(a),
        password_sha256: pw_fp(a),
        needs_reauth: false,
        reason: None,
        updated_at: timefmt::format(now),
    }
}

/// The HTTP client every component shares: timeouts on everything, a user agent, no redirects
/// (an API redirect would carry the bearer token elsewhere).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stellantis-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
