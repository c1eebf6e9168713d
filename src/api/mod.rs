//! The resource API client: one page of `GET /user/vehicles` at a time, with the headers the API
//! requires (`client_id`, bearer token, `x-introspect-realm`, `Accept: application/hal+json`),
//! every request through the shared rate limiter, and every failure classified ([`ApiError`]).
//! Only this module (and `auth::grant`) speaks HTTP.

pub mod model;
pub mod retry;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::auth::grant::describe;
use crate::config::Account;
use crate::ratelimit::Limits;
pub use model::{ListedVehicle, Page, parse_page};

/// How a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 401: the access token was refused.
    #[error("HTTP 401 {0}")]
    Unauthorized(String),
    /// 429: over quota; `retry_after` when the header could be read.
    #[error("HTTP 429 rate limited (Retry-After: {raw})")]
    RateLimited {
        retry_after: Option<Duration>,
        raw: String,
    },
    /// 5xx from the gateway or the backend.
    #[error("HTTP {status} {message}")]
    Server { status: u16, message: String },
    /// 404 with code 40400/40410 "No vehicle found": the account has no vehicles.
    #[error("no vehicle found")]
    NoVehicles,
    /// Any other 4xx.
    #[error("HTTP {status} {message}")]
    Client { status: u16, message: String },
    /// Timeouts, refused or reset connections, cut-off bodies.
    #[error("{0}")]
    Transport(String),
    /// A body that is not the JSON the API sends.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A listing that cannot be complete (no `_embedded`, totals that do not add up, …).
    #[error("incomplete listing: {0}")]
    Incomplete(String),
}

impl ApiError {
    /// The class recorded in `sync_runs.error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Server { .. } => "server_error",
            ApiError::NoVehicles => "no_vehicles",
            ApiError::Client { .. } => "client_error",
            ApiError::Transport(m) if m.contains("timed out") => "timeout",
            ApiError::Transport(_) => "transport",
            ApiError::Malformed(_) => "malformed",
            ApiError::Incomplete(_) => "incomplete",
        }
    }

    /// Worth retrying within the same run (with backoff).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. } | ApiError::Server { .. } | ApiError::Transport(_)
        )
    }
}

/// The API client shared by every account.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    limits: Arc<Limits>,
    page_size: u32,
}

impl ApiClient {
    pub fn new(http: reqwest::Client, base: Url, limits: Arc<Limits>, page_size: u32) -> ApiClient {
        ApiClient {
            http,
            base,
            limits,
            page_size,
        }
    }

    /// The rate limiter (the sync engine reports 429 cooldowns to it).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The URL of the first page of the vehicle list.
    pub fn first_page_url(&self, a: &Account) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        format!(
            "{base}/user/vehicles?client_id={}&pageSize={}",
            url::form_urlencoded::byte_serialize(a.client_id.as_bytes()).collect::<String>(),
            self.page_size
        )
    }

    /// The URL of a `_links.next` href: it must be on the API's own origin (the bearer token goes
    /// nowhere else), and `client_id` is added since the API does not echo it in links.
    pub fn next_page_url(&self, a: &Account, href: &str) -> Result<String, ApiError> {
        let mut u = self
            .base
            .join(href)
            .map_err(|e| ApiError::Malformed(format!("next link is not a URL: {e}")))?;
        if u.origin() != self.base.origin() {
            return Err(ApiError::Malformed(format!(
                "next link points to another host ({}), refusing to send the token there",
                u.host_str().unwrap_or("?")
            )));
        }
        if !u.query_pairs().any(|(k, _)| k == "client_id") {
            u.query_pairs_mut().append_pair("client_id", &a.client_id);
        }
        Ok(u.into())
    }

    /// GETs one page and classifies the answer.
    pub async fn get_page(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
    ) -> Result<Page, ApiError> {
        self.limits.api_permit().await;
        let resp = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header("x-introspect-realm", a.brand.realm())
            .header(reqwest::header::ACCEPT, "application/hal+json")
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        match status {
            200 => parse_page(&body),
            401 => Err(ApiError::Unauthorized(model::error_message(&body))),
            429 => {
                let raw = retry_after.unwrap_or_default();
                Err(ApiError::RateLimited {
                    retry_after: retry::parse_retry_after(&raw, std::time::SystemTime::now()),
                    raw,
                })
            }
            404 if model::is_no_vehicle(&body) => Err(ApiError::NoVehicles),
            s if s >= 500 => Err(ApiError::Server {
                status: s,
                message: model::error_message(&body),
            }),
            s => Err(ApiError::Client {
                status: s,
                message: model::error_message(&body),
            }),
        }
    }
}

/// A response as it arrived: status, `Retry-After` (raw) and body.
pub(crate) struct RawResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl ApiClient {
    /// GETs `url` with the API's headers, through the rate limiter; no classification (the
    /// telemetry endpoints classify in `api::telemetry`).
    pub(crate) async fn get_raw(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
    ) -> Result<RawResponse, ApiError> {
        self.limits.api_permit().await;
        let resp = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header("x-introspect-realm", a.brand.realm())
            .header(reqwest::header::ACCEPT, "application/hal+json")
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?
            .to_vec();
        Ok(RawResponse {
            status,
            retry_after,
            body,
        })
    }
}
