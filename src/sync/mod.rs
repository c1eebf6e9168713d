//! One account's pass: get a token, fetch every page of the vehicle list, and record either the
//! complete listing (one transaction: changes, vehicles, run, account state) or the failure (the
//! run row and the account state, nothing else).
//!
//! Failure handling per request: 401 → one token refresh and retry (a 401 that persists with the
//! fresh token is a configuration problem, exit 78, and for an hour a 401 no longer refreshes); 429 →
//! wait `max(Retry-After, backoff)` and slow every account down (shared cooldown; with no hint,
//! `X-RateLimit-Reset` or an exponential back-off across passes); 5xx, timeouts and resets →
//! retry with full-jitter exponential backoff, at most `max_retries` times per page; malformed or
//! truncated bodies → the run fails at once. Whether the pages add up to a complete listing is
//! decided by the pure [`crate::listing::ListingBuilder`]; what changed, by the pure
//! [`crate::diff`].

pub use crate::diff;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{ApiClient, ApiError, retry};
use crate::auth::{AuthError, TokenManager};
use crate::config::Account;
use crate::diff::CompleteListing;
use crate::listing::{ListingBuilder, Step};
use crate::store::{Db, FinishedRun, RunEnd};

/// How one account's pass ended, for exit codes and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Synced: vehicles seen and changes recorded.
    Ok { vehicles: usize, changes: usize },
    /// Failed for a reason that may pass.
    Temporary { kind: String, message: String },
    /// A person must re-authorize the account.
    NeedsReauth { message: String },
    /// The configuration is wrong for this account (app credentials, brand/realm).
    Config { kind: String, message: String },
    /// The database or the token store could not be written.
    LocalIo { message: String },
}

/// Retry tuning: the configuration's `[api]` retry section.
pub use crate::config::RetryPolicy;

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
    /// The API refused a freshly issued token: a configuration problem.
    Refused(String),
}

/// The outcome of an account whose token could not be had.
fn auth_outcome(e: AuthError) -> Outcome {
    let message = e.to_string();
    match e {
        AuthError::NeedsReauth { .. } => Outcome::NeedsReauth { message },
        AuthError::InvalidClient { .. } | AuthError::RefusedByApi { .. } => Outcome::Config {
            kind: e.kind().into(),
            message,
        },
        // Another process (a `login`, a second `--once`) holds the account's lock: it passes.
        AuthError::Store {
            source: crate::auth::store::StoreError::Locked { .. },
            ..
        } => Outcome::Temporary {
            kind: e.kind().into(),
            message,
        },
        AuthError::Store { .. } => Outcome::LocalIo { message },
        AuthError::Transient { .. } => Outcome::Temporary {
            kind: e.kind().into(),
            message,
        },
    }
}

impl Engine {
    /// Runs one pass for one account whose run `ids` (account_id, run_id) the pass opened, or
    /// the outcome of an account the pass could not open a run for. Never panics on bad input;
    /// every failure is recorded, through `writer` (group commit); nothing is logged as done
    /// before it is committed.
    pub async fn sync_account(
        &self,
        a: &Account,
        ids: Result<(i64, i64), Outcome>,
        writer: &RunWriter,
    ) -> Outcome {
        let (account_id, run_id) = match ids {
            Ok(v) => v,
            Err(o) => return o,
        };
        let started_at = crate::timefmt::now();
        // This run's own tally: what other requests of the account saw before it is not its own.
        self.api.limits().usage.take(&a.name);
        let mut requests = 0u32;
        let fetched = match self.fetch(a, &mut requests, self.api.page_size()).await {
            Ok(listing) => {
                self.confirm_removals(a, account_id, listing, &mut requests)
                    .await
            }
            Err(e) => Err(e),
        };
        let usage = self.api.limits().usage.take(&a.name);
        let run = |end| FinishedRun {
            run_id,
            account_id,
            started_at: Some(started_at.clone()),
            http_requests: requests,
            usage: Some(usage),
            end,
        };
        let outcome = match fetched {
            Ok(listing) => {
                let n = listing.len();
                return match writer.finish(run(RunEnd::Listed { listing })).await {
                    Ok(changes) => {
                        tracing::info!(account = %a.name, vehicles = n, changes, requests, "synced");
                        Outcome::Ok {
                            vehicles: n,
                            changes,
                        }
                    }
                    Err(message) => {
                        tracing::error!(account = %a.name, "cannot record the listing: {message}");
                        Outcome::LocalIo { message }
                    }
                };
            }
            Err(FetchError::Auth(e)) => auth_outcome(e),
            Err(FetchError::Api(e)) => Outcome::Temporary {
                kind: e.kind().into(),
                message: e.to_string(),
            },
            Err(FetchError::Refused(message)) => Outcome::Config {
                kind: "api_refuses_token".into(),
                message,
            },
        };
        let (kind, message, state) = match &outcome {
            Outcome::NeedsReauth { message } => {
                ("needs_reauth".to_owned(), message.clone(), "needs_reauth")
            }
            Outcome::Temporary { kind, message } | Outcome::Config { kind, message } => {
                (kind.clone(), message.clone(), "failing")
            }
            Outcome::LocalIo { message } => ("local_io".to_owned(), message.clone(), "failing"),
            Outcome::Ok { vehicles, changes } => {
                // Handled above; kept total so a future variant cannot slip through.
                return Outcome::Ok {
                    vehicles: *vehicles,
                    changes: *changes,
                };
            }
        };
        // Whatever a server echoed back: the account's own secrets never reach a log or the
        // database.
        let message = crate::redact::known(
            &message,
            [
                Some(&a.client_secret),
                a.password.as_ref(),
                a.refresh_token.as_ref(),
            ]
            .into_iter()
            .flatten(),
        );
        if !matches!(outcome, Outcome::NeedsReauth { .. }) {
            tracing::warn!(account = %a.name, kind = %kind, requests, "sync failed: {message}");
        }
        let end = RunEnd::Failed {
            kind,
            message,
            state: state.to_owned(),
        };
        if let Err(message) = writer.finish(run(end)).await {
            tracing::error!(account = %a.name, "cannot record the failed run: {message}");
            return Outcome::LocalIo { message };
        }
        outcome
    }

    /// A listing of several pages (or an empty one) confirms the removal of a vehicle already
    /// missing from the previous listing. Pages can shift between requests in a way no check
    /// sees (a vehicle leaves before the cursor while another arrives: the same total, no
    /// duplicate), and the same vehicle can sit at the shifting boundary twice in a row, so two
    /// such listings prove nothing (issue 14's adversarial pass recorded a removal that never
    /// happened). Before such a confirmation the list is fetched once more in one page
    /// (`pageSize` 60, the API's largest), one answer of the server and so a consistent
    /// snapshot, and that listing is the one recorded. An account with more vehicles than one
    /// page holds gets a third listing instead.
    async fn confirm_removals(
        &self,
        a: &Account,
        account_id: i64,
        listing: CompleteListing,
        requests: &mut u32,
    ) -> Result<CompleteListing, FetchError> {
        if !listing.removals_need_confirmation() {
            return Ok(listing);
        }
        let missing = crate::store::with_db(&self.db, move |db| db.missing_vehicles(account_id))
            .await
            .unwrap_or_default();
        let present: std::collections::HashSet<&str> =
            listing.vehicles().iter().map(|v| v.id.as_str()).collect();
        if missing.iter().all(|m| present.contains(m.as_str())) {
            return Ok(listing);
        }
        tracing::info!(account = %a.name, "a vehicle missing from two listings of several pages: listing once more in one page before recording it removed");
        self.fetch(a, requests, crate::api::MAX_PAGE_SIZE).await
    }

    async fn fetch(
        &self,
        a: &Account,
        requests: &mut u32,
        page_size: u32,
    ) -> Result<CompleteListing, FetchError> {
        let mut token = self
            .tokens
            .access_token(a)
            .await
            .map_err(FetchError::Auth)?;
        crate::faultpoint::hit("after_token");
        let mut refreshed = false;
        let mut url = self.api.first_page_url_sized(a, page_size);
        let mut listing = ListingBuilder::new(&url, page_size);
        loop {
            let mut attempt = 0u32;
            let page = loop {
                *requests += 1;
                match self.api.get_page(a, &url, &token).await {
                    Ok(p) => break p,
                    Err(e @ ApiError::CoolingDown(_)) => {
                        // Nothing was sent.
                        *requests -= 1;
                        return Err(FetchError::Api(e));
                    }
                    Err(ApiError::NoVehicles) => {
                        return listing
                            .empty_account()
                            .map_err(|e| FetchError::Api(ApiError::Incomplete(e.0)));
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
                    Err(ApiError::Unauthorized(m)) => {
                        self.tokens.note_fresh_token_refused(a).await;
                        return Err(FetchError::Refused(format!(
                            "the API refused a freshly issued access token (HTTP 401 {m}); the token is not the problem: check the account's `brand` (the realm sent is {}) and that the app's client_id may use the API",
                            a.brand.realm()
                        )));
                    }
                    Err(e) if e.is_retryable() && attempt < self.retry.max_retries => {
                        let wait = self.wait_before_retry(&e, attempt);
                        if wait > crate::ratelimit::MAX_BLOCKING_WAIT {
                            // A daily quota: the cooldown is recorded; the next passes fail fast
                            // until it ends instead of this one sleeping for hours.
                            return Err(FetchError::Api(e));
                        }
                        attempt += 1;
                        tracing::debug!(account = %a.name, error = %e, attempt, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        if let ApiError::RateLimited { .. } = &e {
                            self.cooldown_after_429(&e);
                        }
                        return Err(FetchError::Api(e));
                    }
                }
            };
            crate::faultpoint::hit("mid_pagination");
            match listing.push(page) {
                Ok(Step::Done(complete)) => return Ok(complete),
                Ok(Step::Next(href)) => {
                    url = self.api.next_page_url(a, &href).map_err(FetchError::Api)?;
                }
                Err(e) => return Err(FetchError::Api(ApiError::Incomplete(e.0))),
            }
        }
    }

    /// How long to wait before retrying a request that failed with `e` (attempt `attempt`).
    fn wait_before_retry(&self, e: &ApiError, attempt: u32) -> Duration {
        let backoff = retry::full_jitter(attempt, self.retry.base, self.retry.cap);
        match e {
            ApiError::RateLimited { .. } => self.cooldown_after_429(e).max(backoff),
            _ => backoff,
        }
    }

    /// Applies the shared cooldown a 429 asks for: `Retry-After`, else `X-RateLimit-Reset`, else
    /// an exponential back-off across passes. Returns the cooldown.
    fn cooldown_after_429(&self, e: &ApiError) -> Duration {
        let ApiError::RateLimited {
            retry_after, reset, ..
        } = e
        else {
            return Duration::ZERO;
        };
        let limits = self.api.limits();
        match retry_after.or(*reset) {
            Some(d) => {
                let d = d.max(self.retry.base);
                limits.cooldown(d);
                d
            }
            None => limits.unhinted_429(self.retry.cap),
        }
    }
}

/// The group committer of a pass: accounts hand their finished runs to one writer task, which
/// commits whatever has queued up meanwhile in one transaction ([`Db::finish_runs`]) and then
/// answers each account. One commit serves many accounts when they finish together.
#[derive(Clone)]
pub struct RunWriter {
    tx: tokio::sync::mpsc::UnboundedSender<(
        FinishedRun,
        tokio::sync::oneshot::Sender<Result<usize, String>>,
    )>,
}

/// The most runs one transaction takes.
const GROUP_MAX: usize = 256;

impl RunWriter {
    /// Starts the writer task for `db`; it ends when every [`RunWriter`] clone is dropped and
    /// the queue is written.
    pub fn start(db: Arc<Mutex<Db>>) -> (RunWriter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            FinishedRun,
            tokio::sync::oneshot::Sender<Result<usize, String>>,
        )>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(more) => group.push(more),
                        Err(_) => break,
                    }
                }
                let (runs, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let results = crate::store::with_db(&db, move |db| db.finish_runs(&runs)).await;
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
        });
        (RunWriter { tx }, task)
    }

    /// Hands over a finished run and waits until it is committed (or refused).
    pub async fn finish(&self, run: FinishedRun) -> Result<usize, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((run, reply))
            .map_err(|_| "the run writer has stopped".to_owned())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the run writer has stopped".to_owned()))
    }
}
