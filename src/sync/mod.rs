//! One account's pass: get a token, fetch every page of the vehicle list, and record either the
//! complete listing (one transaction: changes, vehicles, run, account state) or the failure (the
//! run row and the account state, nothing else).
//!
//! Failure handling per request: 401 → one token refresh and retry; 429 → wait
//! `max(Retry-After, backoff)` and slow every account down (shared cooldown); 5xx, timeouts and
//! resets → retry with full-jitter exponential backoff, at most `max_retries` times per page;
//! malformed or truncated bodies → the run fails at once. A listing is complete only when every
//! page arrived, ids are unique and their number equals `total`; a 404 "No vehicle found" on the
//! first page is a complete, empty listing.

pub mod diff;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{ApiClient, ApiError, retry};
use crate::auth::{AuthError, TokenManager};
use crate::config::Account;
use crate::store::{Db, DbError};
use diff::CompleteListing;

/// How one account's pass ended, for exit codes and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Synced: vehicles seen and changes recorded.
    Ok { vehicles: usize, changes: usize },
    /// Failed for a reason that may pass.
    Temporary { kind: String, message: String },
    /// A person must re-authorize the account.
    NeedsReauth { message: String },
    /// The database or the token store could not be written.
    LocalIo { message: String },
}

/// Retry tuning (configurable so tests can run fast).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

/// The engine shared by every account's pass.
pub struct Engine {
    pub api: ApiClient,
    pub tokens: Arc<TokenManager>,
    pub db: Arc<Mutex<Db>>,
    pub retry: RetryPolicy,
}

enum FetchError {
    Api(ApiError),
    Auth(AuthError),
}

impl Engine {
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|e| panic!("database task failed: {e}"))
    }

    /// Runs one pass for one account. Never panics on bad input; every failure is recorded.
    pub async fn sync_account(&self, a: &Account) -> Outcome {
        let (name, brand) = (a.name.clone(), a.brand.key().to_owned());
        let ids = self
            .db(move |db| {
                let id = db.account_id(&name, &brand)?;
                Ok((id, db.begin_run(id)?))
            })
            .await;
        let (account_id, run_id) = match ids {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(account = %a.name, "{e}");
                return Outcome::LocalIo {
                    message: e.to_string(),
                };
            }
        };
        let mut requests = 0u32;
        let fetched = self.fetch(a, &mut requests).await;
        let outcome = match fetched {
            Ok(listing) => {
                let n = listing.len();
                let r = self
                    .db(move |db| db.apply_listing(run_id, account_id, &listing, requests))
                    .await;
                match r {
                    Ok(applied) => {
                        tracing::info!(account = %a.name, vehicles = n, changes = applied.changes, requests, "synced");
                        return Outcome::Ok {
                            vehicles: applied.vehicles_seen,
                            changes: applied.changes,
                        };
                    }
                    Err(e) => {
                        tracing::error!(account = %a.name, "cannot record the listing: {e}");
                        Outcome::LocalIo {
                            message: e.to_string(),
                        }
                    }
                }
            }
            Err(FetchError::Auth(e)) => {
                let message = e.to_string();
                match e {
                    AuthError::NeedsReauth { .. } | AuthError::InvalidClient { .. } => {
                        Outcome::NeedsReauth { message }
                    }
                    AuthError::Store { .. } => Outcome::LocalIo { message },
                    AuthError::Transient { .. } => Outcome::Temporary {
                        kind: e.kind().into(),
                        message,
                    },
                }
            }
            Err(FetchError::Api(e)) => Outcome::Temporary {
                kind: e.kind().into(),
                message: e.to_string(),
            },
        };
        let (kind, message, state) = match &outcome {
            Outcome::NeedsReauth { message } => {
                ("needs_reauth".to_owned(), message.clone(), "needs_reauth")
            }
            Outcome::Temporary { kind, message } => (kind.clone(), message.clone(), "failing"),
            Outcome::LocalIo { message } => ("local_io".to_owned(), message.clone(), "failing"),
            Outcome::Ok { .. } => unreachable!("handled above"),
        };
        if !matches!(outcome, Outcome::NeedsReauth { .. }) {
            tracing::warn!(account = %a.name, kind = %kind, requests, "sync failed: {message}");
        }
        let k = kind.clone();
        if let Err(e) = self
            .db(move |db| db.finish_failed(run_id, account_id, &k, &message, requests, state))
            .await
        {
            tracing::error!(account = %a.name, "cannot record the failed run: {e}");
            return Outcome::LocalIo {
                message: e.to_string(),
            };
        }
        outcome
    }

    async fn fetch(&self, a: &Account, requests: &mut u32) -> Result<CompleteListing, FetchError> {
        let mut token = self
            .tokens
            .access_token(a)
            .await
            .map_err(FetchError::Auth)?;
        crate::faultpoint::hit("after_token");
        let mut refreshed = false;
        let mut url = self.api.first_page_url(a);
        let mut vehicles = Vec::new();
        let mut seen = HashSet::new();
        let mut total: Option<u64> = None;
        let mut page_no = 0u32;
        loop {
            page_no += 1;
            let mut attempt = 0u32;
            let page = loop {
                *requests += 1;
                match self.api.get_page(a, &url, &token).await {
                    Ok(p) => break p,
                    Err(ApiError::NoVehicles) if page_no == 1 => {
                        return Ok(CompleteListing::new(Vec::new()));
                    }
                    Err(ApiError::NoVehicles) => {
                        return Err(FetchError::Api(ApiError::Incomplete(format!(
                            "page {page_no} answered \"No vehicle found\""
                        ))));
                    }
                    Err(ApiError::Unauthorized(m)) if !refreshed => {
                        tracing::info!(account = %a.name, "access token refused ({m}); refreshing once");
                        refreshed = true;
                        token = self
                            .tokens
                            .after_rejection(a, &token)
                            .await
                            .map_err(FetchError::Auth)?;
                    }
                    Err(e) if e.is_retryable() && attempt < self.retry.max_retries => {
                        let backoff = retry::full_jitter(attempt, self.retry.base, self.retry.cap);
                        let wait = match &e {
                            ApiError::RateLimited { retry_after, .. } => {
                                let w = retry_after
                                    .map_or(backoff, |r| r.max(backoff))
                                    .max(self.retry.base);
                                self.api.limits().cooldown(w);
                                w
                            }
                            _ => backoff,
                        };
                        attempt += 1;
                        tracing::debug!(account = %a.name, error = %e, attempt, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        if let ApiError::RateLimited { retry_after, .. } = &e {
                            self.api
                                .limits()
                                .cooldown(retry_after.unwrap_or(self.retry.cap));
                        }
                        return Err(FetchError::Api(e));
                    }
                }
            };
            crate::faultpoint::hit("mid_pagination");
            match (total, page.total) {
                (None, t) => total = t,
                (Some(a_), Some(b_)) if a_ != b_ => {
                    return Err(FetchError::Api(ApiError::Incomplete(format!(
                        "the total changed from {a_} to {b_} while paging (the list changed)"
                    ))));
                }
                _ => {}
            }
            for v in page.vehicles {
                let id = v.id.clone();
                if !seen.insert(id.clone()) {
                    return Err(FetchError::Api(ApiError::Incomplete(format!(
                        "vehicle {} listed twice (the list changed while paging)",
                        short(&id)
                    ))));
                }
                vehicles.push(v);
            }
            match page.next {
                Some(href) => {
                    if page_no >= 1000 {
                        return Err(FetchError::Api(ApiError::Malformed(
                            "more than 1000 pages".into(),
                        )));
                    }
                    url = self.api.next_page_url(a, &href).map_err(FetchError::Api)?;
                }
                None => break,
            }
        }
        if let Some(t) = total
            && t != vehicles.len() as u64
        {
            return Err(FetchError::Api(ApiError::Incomplete(format!(
                "total says {t} vehicles but {} arrived",
                vehicles.len()
            ))));
        }
        Ok(CompleteListing::new(vehicles))
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}
