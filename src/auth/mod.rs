//! OAuth2 tokens for every account: where they come from, when they are refreshed, and how a
//! rotated refresh token is made durable before anything else happens.
//!
//! Sources, in order (decided by the pure [`plan`]): a configured `refresh_token` the store has not
//! seen yet (bootstrap: a new value in the configuration is adopted, the same one is never
//! replayed); the token store; the password grant when `username`/`password` are set;
//! `stellantis-sync login` (see [`login`]). A refresh token the identity provider refused is never
//! presented again.
//!
//! A token exchange, once sent, always finishes and is saved: it runs in a task of its own that
//! a cancelled pass does not cancel, and shutdown waits for it ([`TokenManager::drain`]). A record
//! that cannot be saved (disk full) is kept in memory, across reloads, and written again at every
//! pass, on reload and at shutdown, never over a newer chain ([`plan::pending_supersedes`]).
//!
//! Refresh protocol (`docs/tokens.md`): single flight per account (an in-process mutex
//! plus the store's cross-process lock), re-read the store under the lock, check the store is
//! writable, POST, write the new refresh token durably, and only then use the access token.
//! `invalid_grant` → re-read once, then log in with the password if one is configured, otherwise
//! the account is `needs_reauth` and no further token request is made until its inputs change
//! (a `login`, or a new bootstrap token or password in the configuration).
//!
//! This module never logs a token; its functions are not `#[instrument]`ed.

pub mod grant;
pub mod login;
pub mod plan;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Account, IdpSettings, TokenPolicy};
use crate::faultpoint;
use crate::ratelimit::Limits;
use crate::timefmt;
use grant::{GrantError, Tokens};
use plan::Plan;
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
    /// The API keeps refusing freshly issued tokens (401 after a refresh): not a token problem.
    #[error(
        "account {account}: the API refuses freshly issued access tokens (a 401 persisted after a refresh within the last hour); the token is not the problem: check the account's `brand` (the realm sent is {realm}) and that the app's client_id may use the API"
    )]
    RefusedByApi {
        account: String,
        realm: &'static str,
    },
}

impl AuthError {
    /// The error's class as recorded in `sync_runs.error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::NeedsReauth { .. } => "needs_reauth",
            AuthError::InvalidClient { .. } => "invalid_client",
            AuthError::Transient { .. } => "auth_transient",
            AuthError::Store {
                source: StoreError::Locked { .. },
                ..
            } => "token_store_locked",
            AuthError::Store { .. } => "token_store",
            AuthError::RefusedByApi { .. } => "api_refuses_token",
        }
    }
}

/// Token records whose durable write failed: each holds the only live refresh token of its
/// account. Shared across reloads (a reload builds a new [`TokenManager`] around the same map), and
/// written again at every pass, on reload and on shutdown.
#[derive(Debug, Default)]
pub struct PendingTokens(Mutex<HashMap<String, TokenRecord>>);

impl PendingTokens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenRecord>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The accounts whose rotated token is only in memory.
    pub fn accounts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map().keys().cloned().collect();
        v.sort();
        v
    }
}

/// Hands out access tokens and keeps refresh tokens alive.
///
/// Every token exchange runs in a task of its own, tracked by the manager: once a request has been
/// sent to the identity provider, cancelling the caller (a pass abandoned at shutdown) does not
/// cancel the exchange, which finishes and is saved; [`TokenManager::drain`] waits for them.
pub struct TokenManager {
    inner: Arc<Inner>,
    tracker: tokio_util::task::TaskTracker,
}

struct Inner {
    store: TokenStore,
    http: reqwest::Client,
    limits: Arc<Limits>,
    policy: TokenPolicy,
    idp: IdpSettings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    warned: Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    pending: Arc<PendingTokens>,
    install_key: std::sync::OnceLock<Option<Vec<u8>>>,
}

/// Why a password grant was refused, for the account's re-authorization reason.
fn password_refusal(status: u16, error: &str, description: &str) -> String {
    if error == "server_error" {
        format!(
            "the identity provider refused the password grant ({status} {error}: {description}), as it has for every user since January 2024"
        )
    } else {
        format!("the password grant was refused ({status} {error})")
    }
}

/// Fingerprint of the configured bootstrap refresh token.
fn boot_fp(a: &Account) -> Option<String> {
    a.refresh_token.as_ref().map(fingerprint)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`, as hex.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    use sha2::Digest;
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = sha2::Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    sha2::Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenManager {
    /// A manager over `store`, with its own HTTP client, the token policy and the IdP's settings.
    pub fn new(
        store: TokenStore,
        http: reqwest::Client,
        limits: Arc<Limits>,
        policy: TokenPolicy,
        idp: IdpSettings,
    ) -> TokenManager {
        TokenManager::with_pending(store, http, limits, policy, idp, Arc::default())
    }

    /// A manager that shares `pending` (the unsaved records) with its predecessor (a reload).
    pub fn with_pending(
        store: TokenStore,
        http: reqwest::Client,
        limits: Arc<Limits>,
        policy: TokenPolicy,
        idp: IdpSettings,
        pending: Arc<PendingTokens>,
    ) -> TokenManager {
        TokenManager {
            inner: Arc::new(Inner {
                store,
                http,
                limits,
                policy,
                idp,
                locks: Mutex::new(HashMap::new()),
                warned: Mutex::new(HashMap::new()),
                pending,
                install_key: std::sync::OnceLock::new(),
            }),
            tracker: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The manager of a reloaded configuration: it shares this one's records kept in memory and
    /// its tracked exchanges (so shutdown still waits for one the old manager started).
    pub fn reconfigured(
        &self,
        state_dir: &Path,
        policy: TokenPolicy,
        idp: &IdpSettings,
        limits: Arc<Limits>,
    ) -> TokenManager {
        let mut m = TokenManager::with_pending(
            TokenStore::new(state_dir),
            crate::http::client(idp.timeout),
            limits,
            policy,
            idp.clone(),
            self.pending(),
        );
        m.tracker = self.tracker.clone();
        m
    }

    /// The token manager of a state directory: its store, an HTTP client with the identity
    /// provider's timeout, and the refresh policy.
    pub fn in_dir(
        state_dir: &Path,
        policy: TokenPolicy,
        idp: &IdpSettings,
        limits: Arc<Limits>,
    ) -> TokenManager {
        TokenManager::new(
            TokenStore::new(state_dir),
            crate::http::client(idp.timeout),
            limits,
            policy,
            idp.clone(),
        )
    }

    /// The store (for `status` and `login`).
    pub fn store(&self) -> &TokenStore {
        &self.inner.store
    }

    /// The records kept in memory after a failed save (hand them to the next manager on reload).
    pub fn pending(&self) -> Arc<PendingTokens> {
        self.inner.pending.clone()
    }

    /// The accounts whose rotated refresh token is only in memory.
    pub fn unsaved_accounts(&self) -> Vec<String> {
        self.inner.pending.accounts()
    }

    /// A valid access token for the account, refreshing or logging in if needed.
    pub async fn access_token(&self, a: &Account) -> Result<SecretString, AuthError> {
        self.obtain(a, None).await
    }

    /// The API rejected `rejected` (401): get a new access token, unless another task already did.
    /// A 401 makes the daemon refresh at most once an hour per account: a fresh token refused
    /// again says the token is not the problem ([`AuthError::RefusedByApi`]).
    pub async fn after_rejection(
        &self,
        a: &Account,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        self.obtain(a, Some(fingerprint(rejected))).await
    }

    /// Runs the exchange in a tracked task of its own: dropping this future (a pass cut off at
    /// shutdown) does not cancel a request already sent to the identity provider.
    async fn obtain(
        &self,
        a: &Account,
        rejected: Option<String>,
    ) -> Result<SecretString, AuthError> {
        let inner = self.inner.clone();
        let account = a.clone();
        let task = self
            .tracker
            .spawn(async move { inner.obtain(&account, rejected).await });
        task.await.unwrap_or_else(|e| {
            Err(AuthError::Transient {
                account: a.name.clone(),
                reason: format!("the token task failed: {e}"),
            })
        })
    }

    /// The API refused an access token that a 401 had just made us fetch: the token is not the
    /// problem. Remembered in the store, so that for the next hour a 401 fails at once
    /// ([`AuthError::RefusedByApi`]) instead of rotating the chain every pass.
    pub async fn note_fresh_token_refused(&self, a: &Account) {
        let inner = self.inner.clone();
        let account = a.clone();
        let _ = self
            .tracker
            .spawn(async move {
                let mutex = inner.account_mutex(&account.name);
                let _guard = mutex.lock().await;
                let Ok(_lock) = inner
                    .store
                    .lock(&account.name, inner.idp.lock_wait())
                    .await
                else {
                    return;
                };
                if let Ok(Some(mut rec)) = inner.store.load(&account.name) {
                    rec.unauthorized_refresh_at = Some(timefmt::now());
                    if let Err(e) = inner.store.save(&rec) {
                        tracing::warn!(account = %account.name, "cannot record the refused token: {e}");
                    }
                }
            })
            .await;
    }

    /// Waits until every token exchange in flight has finished and been saved, up to the identity
    /// provider's timeout plus `extra`. Returns whether none is left.
    pub async fn drain(&self, extra: Duration) -> bool {
        self.tracker.close();
        let busy = self.tracker.len();
        if busy > 0 {
            tracing::info!(
                "waiting for {busy} token exchange(s) with the identity provider to finish and be saved"
            );
        }
        let idp = &self.inner.idp;
        let limit = idp
            .timeout
            .saturating_add(idp.lock_wait())
            .saturating_add(extra);
        let done = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        done
    }

    /// Writes every record kept in memory (under each account's lock, never over a newer
    /// record). Returns the accounts still unsaved.
    pub async fn flush_pending(&self) -> Vec<String> {
        for name in self.inner.pending.accounts() {
            let _ = self.inner.flush_one(&name).await;
        }
        self.inner.pending.accounts()
    }
}

impl Inner {
    fn idp_base(&self, a: &Account) -> String {
        self.idp.base_for(a.brand)
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

    /// The per-installation key of [`Inner::pw_fp`] (`tokens/.install-key`, 0600, made once).
    fn install_key(&self) -> Option<&[u8]> {
        self.install_key
            .get_or_init(|| {
                let path = self.store.dir().join(".install-key");
                if let Ok(text) = std::fs::read_to_string(&path)
                    && text.trim().len() == 64
                {
                    return Some(text.trim().as_bytes().to_vec());
                }
                let key: String = (0..32)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                crate::fsutil::write_atomic(&path, key.as_bytes(), 0o600, true)
                    .map_err(|e| tracing::warn!("cannot create {}: {e}", path.display()))
                    .ok()
                    .map(|()| key.into_bytes())
            })
            .as_deref()
    }

    /// Keyed hash of the configured password (only to notice that it changed).
    fn pw_fp(&self, a: &Account) -> Option<String> {
        let p = a.password.as_ref()?;
        let key = self.install_key()?;
        Some(hmac_sha256(
            key,
            format!("{}:{}", a.name, p.expose_secret()).as_bytes(),
        ))
    }

    /// Whether the configuration now offers something the record has not seen: a new bootstrap
    /// token or a changed password. Only that lifts a `needs_reauth` without `login`.
    fn inputs_changed(&self, a: &Account, r: &TokenRecord) -> bool {
        let boot = boot_fp(a);
        let pw = self.pw_fp(a);
        let refused = |fp: &Option<String>| {
            fp.as_ref()
                .is_some_and(|f| r.refused_sha256.iter().any(|x| x == f))
        };
        (boot.is_some() && boot != r.bootstrap_sha256 && !refused(&boot))
            || (pw.is_some() && pw != r.password_hmac)
    }

    async fn obtain(
        &self,
        a: &Account,
        rejected: Option<String>,
    ) -> Result<SecretString, AuthError> {
        let mutex = self.account_mutex(&a.name);
        let _guard = mutex.lock().await;
        self.flush_one(&a.name).await?;
        let rec = self
            .store
            .load(&a.name)
            .map_err(|e| Self::store_err(a, e))?;
        if let Some(r) = &rec
            && r.needs_reauth
            && !self.inputs_changed(a, r)
        {
            return Err(AuthError::NeedsReauth {
                account: a.name.clone(),
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no valid refresh token".into()),
            });
        }
        let usable = |rec: &Option<TokenRecord>| {
            rec.as_ref().and_then(|r| {
                plan::usable_access(r, self.policy.margin, Utc::now(), rejected.as_deref())
            })
        };
        if let Some(tok) = usable(&rec) {
            self.warn_if_old(a, rec.as_ref());
            return Ok(tok);
        }
        if rejected.is_some() && !plan::may_refresh_after_401(rec.as_ref(), Utc::now()) {
            return Err(AuthError::RefusedByApi {
                account: a.name.clone(),
                realm: a.brand.realm(),
            });
        }
        // The network is needed: take the cross-process lock and look again.
        let _lock = self
            .store
            .lock(&a.name, self.idp.lock_wait())
            .await
            .map_err(|e| Self::store_err(a, e))?;
        let rec = self
            .store
            .load(&a.name)
            .map_err(|e| Self::store_err(a, e))?;
        if let Some(tok) = usable(&rec) {
            return Ok(tok);
        }
        self.exchange(a, rec).await
    }

    /// Presents grants until one works or nothing is left (under the account's locks).
    async fn exchange(
        &self,
        a: &Account,
        mut rec: Option<TokenRecord>,
    ) -> Result<SecretString, AuthError> {
        // A bootstrap token this installation already presented (under another account name,
        // before a rename) is never presented again.
        let boot = boot_fp(a).filter(|fp| !self.store.bootstrap_used(fp));
        let offered = plan::Offered {
            bootstrap: a.refresh_token.as_ref().zip(boot.as_deref()),
            password: a.password.is_some() && a.username.is_some(),
        };
        let mut refused = HashSet::new();
        let mut password_tried = false;
        let mut last_refusal: Option<String> = None;
        for _ in 0..4 {
            let plan = plan::plan(offered, rec.as_ref(), password_tried, &refused);
            let presented = match &plan {
                Plan::Reauth(reason) => {
                    let reason = last_refusal.clone().unwrap_or_else(|| reason.clone());
                    return Err(self.mark_reauth(a, rec, &refused, reason));
                }
                Plan::Refresh { token, .. } => Some(fingerprint(token)),
                Plan::Password => {
                    password_tried = true;
                    None
                }
            };
            self.store.preflight().map_err(|e| Self::store_err(a, e))?;
            let result = self.post(a, &plan).await;
            self.note_bootstrap_presented(a, &plan, &result);
            match result {
                Ok(tokens) => return self.keep_issued(a, rec.as_ref(), &plan, tokens, &refused),
                Err(GrantError::InvalidGrant(desc)) => {
                    let what = match presented {
                        None => "the username or password was rejected".to_owned(),
                        Some(fp) => {
                            refused.insert(fp);
                            format!("the refresh token was rejected (invalid_grant: {desc})")
                        }
                    };
                    // Another process may have rotated the token meanwhile: look once more.
                    let (again, rotated) = self.look_again(a, rec.as_ref())?;
                    if let Some(tok) = rotated {
                        return Ok(tok);
                    }
                    if offered.password && !password_tried {
                        tracing::warn!(account = %a.name, "{what}; logging in again with the configured password");
                    }
                    last_refusal = Some(what);
                    rec = again;
                }
                Err(GrantError::Refused {
                    status,
                    error,
                    description,
                }) if matches!(plan, Plan::Password) => {
                    let reason = password_refusal(status, &error, &description);
                    return Err(self.mark_reauth(a, rec, &refused, reason));
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

    /// A bootstrap token the IdP took (or refused as invalid) is recorded as used: it is never
    /// presented again.
    fn note_bootstrap_presented(
        &self,
        a: &Account,
        plan: &Plan,
        result: &Result<Tokens, GrantError>,
    ) {
        if let Plan::Refresh {
            token,
            bootstrap: true,
            ..
        } = plan
            && matches!(result, Ok(_) | Err(GrantError::InvalidGrant(_)))
            && let Err(e) = self.store.mark_bootstrap_used(&fingerprint(token))
        {
            tracing::warn!(account = %a.name, "cannot record the used bootstrap token: {e}");
        }
    }

    /// The IdP issued tokens: the new record (remembering every refused token) saved durably
    /// before its access token is handed out.
    fn keep_issued(
        &self,
        a: &Account,
        rec: Option<&TokenRecord>,
        plan: &Plan,
        tokens: Tokens,
        refused: &HashSet<String>,
    ) -> Result<SecretString, AuthError> {
        faultpoint::hit("after_refresh_response");
        let mut new = self.record_from(a, rec, plan, tokens);
        for fp in refused
            .iter()
            .chain(rec.iter().flat_map(|r| &r.refused_sha256))
        {
            plan::remember_refused(&mut new, fp.clone());
        }
        let access = new.access_token.clone();
        self.save_durably(a, new)?;
        faultpoint::hit("after_store_durable");
        access.ok_or_else(|| AuthError::Transient {
            account: a.name.clone(),
            reason:
                "the identity provider returned no access token (its new refresh token was kept)"
                    .into(),
        })
    }

    /// After an `invalid_grant`: the stored record read again, and its access token when another
    /// process rotated the refresh token meanwhile (a usable access token under a different
    /// refresh token than `rec`'s).
    fn look_again(
        &self,
        a: &Account,
        rec: Option<&TokenRecord>,
    ) -> Result<(Option<TokenRecord>, Option<SecretString>), AuthError> {
        let again = self
            .store
            .load(&a.name)
            .map_err(|e| Self::store_err(a, e))?;
        let refresh_fp =
            |r: Option<&TokenRecord>| r.and_then(|r| r.refresh_token.as_ref().map(fingerprint));
        let rotated = again
            .as_ref()
            .and_then(|r| plan::usable_access(r, self.policy.margin, Utc::now(), None))
            .filter(|_| refresh_fp(again.as_ref()) != refresh_fp(rec));
        Ok((again, rotated))
    }

    /// One POST to the token endpoint for a refresh or password plan.
    async fn post(&self, a: &Account, plan: &Plan) -> Result<Tokens, GrantError> {
        let idp = self.idp_base(a);
        match plan {
            Plan::Refresh { token, .. } => {
                faultpoint::hit("before_refresh_post");
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.expose_secret()),
                ];
                grant::request(&self.http, &self.limits, &idp, a, &form).await
            }
            Plan::Password => {
                let user = a.username.as_deref().unwrap_or_default();
                let pass = a
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned())
                    .unwrap_or_default();
                let form = [
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", &pass),
                    ("realm", a.brand.realm()),
                    ("scope", a.brand.preset().scopes),
                ];
                grant::request(&self.http, &self.limits, &idp, a, &form).await
            }
            Plan::Reauth(_) => Err(GrantError::Transient("nothing to present".into())),
        }
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
        let mut rec = self.issued_record(
            a,
            t.access_token,
            refresh,
            t.expires_in,
            &source,
            chain_start,
            previous,
        );
        rec.unauthorized_refresh_at = old.and_then(|r| r.unauthorized_refresh_at.clone());
        rec
    }

    /// Saves with retries; if every try fails, keeps the record in memory (it holds the only
    /// live refresh token) and says so loudly. It is written again at every pass, on reload and
    /// on shutdown.
    fn save_durably(&self, a: &Account, rec: TokenRecord) -> Result<(), AuthError> {
        let mut last = None;
        for attempt in 0..3 {
            match self.store.save(&rec) {
                Ok(()) => {
                    self.pending.map().remove(&a.name);
                    self.store.restore_ballast();
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
            "the rotated refresh token could NOT be written to {}; it is kept in memory and written again at every pass, on reload and at shutdown — free space or fix permissions",
            self.store.path(&a.name).display()
        );
        self.pending.map().insert(a.name.clone(), rec);
        Err(Self::store_err(
            a,
            last.unwrap_or(StoreError::Locked {
                path: self.store.path(&a.name),
            }),
        ))
    }

    /// Writes the account's record kept in memory, if any: under the cross-process lock, and only
    /// if the file does not hold a newer chain meanwhile.
    async fn flush_one(&self, name: &str) -> Result<(), AuthError> {
        let Some(rec) = self.pending.map().get(name).cloned() else {
            return Ok(());
        };
        let err = |source| AuthError::Store {
            account: name.to_owned(),
            source,
        };
        let _lock = self
            .store
            .lock(name, self.idp.lock_wait())
            .await
            .map_err(err)?;
        let disk = self.store.load(name).map_err(err)?;
        if plan::pending_supersedes(disk.as_ref(), &rec) {
            self.store.save(&rec).map_err(err)?;
            tracing::info!(account = %name, "the token record kept in memory was written");
        } else {
            tracing::info!(account = %name, "the token record kept in memory is older than the file (a login or another process wrote a newer one); the file wins");
        }
        self.pending.map().remove(name);
        Ok(())
    }

    fn mark_reauth(
        &self,
        a: &Account,
        rec: Option<TokenRecord>,
        refused: &HashSet<String>,
        reason: String,
    ) -> AuthError {
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
            password_hmac: None,
            refused_sha256: Vec::new(),
            unauthorized_refresh_at: None,
            needs_reauth: false,
            reason: None,
            updated_at: now.clone(),
        });
        if let Some(t) = r.refresh_token.take() {
            r.previous_refresh_sha256 = Some(fingerprint(&t));
        }
        for fp in refused {
            plan::remember_refused(&mut r, fp.clone());
        }
        r.access_token = None;
        r.needs_reauth = true;
        r.reason = Some(reason.clone());
        r.bootstrap_sha256 = boot_fp(a);
        r.password_hmac = self.pw_fp(a);
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
            chrono::Duration::from_std(self.policy.max_age),
            chrono::Duration::from_std(self.policy.warn_before),
        ) else {
            return;
        };
        let Some(dies) = start.checked_add_signed(max) else {
            return;
        };
        let now = Utc::now();
        if dies.checked_sub_signed(before).is_none_or(|t| now < t) {
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
            self.policy.max_age.as_secs() / 86_400,
            a.name
        );
    }

    /// The record of freshly issued tokens (after a refresh, a password grant or a login).
    #[allow(clippy::too_many_arguments)]
    fn issued_record(
        &self,
        a: &Account,
        access: Option<SecretString>,
        refresh: Option<SecretString>,
        expires_in: u64,
        source: &str,
        chain_started_at: Option<String>,
        previous_refresh_sha256: Option<String>,
    ) -> TokenRecord {
        let now = Utc::now();
        let secs = i64::try_from(expires_in.min(grant::MAX_EXPIRES_IN)).unwrap_or(0);
        let expires = chrono::Duration::try_seconds(secs)
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now);
        TokenRecord {
            version: 1,
            account: a.name.clone(),
            brand: a.brand.key().into(),
            refresh_token: refresh,
            access_expires_at: access.as_ref().map(|_| timefmt::format(expires)),
            access_token: access,
            chain_started_at,
            refreshed_at: Some(timefmt::format(now)),
            source: Some(source.to_owned()),
            previous_refresh_sha256,
            bootstrap_sha256: boot_fp(a),
            password_hmac: self.pw_fp(a),
            refused_sha256: Vec::new(),
            unauthorized_refresh_at: None,
            needs_reauth: false,
            reason: None,
            updated_at: timefmt::format(now),
        }
    }
}
