//! The resource API client: one page of `GET /user/vehicles` at a time, with the headers the API
//! requires (`client_id`, bearer token, `x-introspect-realm`, `Accept: application/hal+json`),
//! every request through the shared rate limiter, and every failure classified ([`ApiError`]).
//! Only this module (and `auth::grant`) speaks HTTP.

pub mod model;
pub mod retry;
pub mod telemetry;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::Account;
use crate::http::{BodyError, TransportError, TransportKind};
use crate::ratelimit::Limits;
use crate::spend::Purpose;
pub use model::{ListedVehicle, Page, parse_page};

/// How a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 401: the access token was refused.
    #[error("HTTP 401 {0}")]
    Unauthorized(String),
    /// 429: over quota. `retry_after` from `Retry-After` when readable, `reset` from
    /// `X-RateLimit-Reset`; `day_exhausted` when `X-RateLimit-Remaining-1` is 0.
    #[error("HTTP 429 rate limited (Retry-After: {raw})")]
    RateLimited {
        retry_after: Option<Duration>,
        reset: Option<Duration>,
        day_exhausted: bool,
        raw: String,
    },
    /// A cooldown asked by an earlier 429 lasts longer than a pass may wait; nothing was sent.
    #[error(transparent)]
    CoolingDown(#[from] crate::ratelimit::CoolingDown),
    /// 5xx from the gateway or the backend.
    #[error("HTTP {status} {message}")]
    Server { status: u16, message: String },
    /// 404 with code 40400/40410 and the documented "No vehicle found": the account has no
    /// vehicles. A 404 that says anything else (or nothing) is a [`ApiError::Client`] error.
    #[error("no vehicle found")]
    NoVehicles,
    /// Any other 4xx.
    #[error("HTTP {status} {message}")]
    Client { status: u16, message: String },
    /// Timeouts, refused or reset connections, cut-off bodies.
    #[error("{0}")]
    Transport(TransportError),
    /// A body that is not the JSON the API sends (or is too large to be one).
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
            ApiError::RateLimited { .. } | ApiError::CoolingDown(_) => "rate_limited",
            ApiError::Server { .. } => "server_error",
            ApiError::NoVehicles => "no_vehicles",
            ApiError::Client { .. } => "client_error",
            ApiError::Transport(t) if t.kind == TransportKind::Timeout => "timeout",
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

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::Transport(t) => ApiError::Transport(t),
            BodyError::TooLarge { .. } => ApiError::Malformed(e.to_string()),
        }
    }
}

/// A header's value as text (lossy), if present.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
}

/// The API client shared by every account.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    limits: Arc<Limits>,
    page_size: u32,
}

/// The largest `pageSize` the API takes (1–60).
pub const MAX_PAGE_SIZE: u32 = 60;

impl ApiClient {
    pub fn new(http: reqwest::Client, base: Url, limits: Arc<Limits>, page_size: u32) -> ApiClient {
        ApiClient {
            http,
            base,
            limits,
            page_size,
        }
    }

    /// The process's metrics, once the daemon or `--once` has set them.
    pub fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.limits.metrics()
    }

    /// The `pageSize` asked for on every listing.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The rate limiter (the sync engine reports 429 cooldowns to it).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The URL of the first page of the vehicle list.
    pub fn first_page_url(&self, a: &Account) -> String {
        self.first_page_url_sized(a, self.page_size)
    }

    /// The URL of the first page of the vehicle list with pages of `page_size`.
    pub fn first_page_url_sized(&self, a: &Account, page_size: u32) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        format!(
            "{base}/user/vehicles?client_id={}&pageSize={page_size}",
            url::form_urlencoded::byte_serialize(a.client_id.as_bytes()).collect::<String>(),
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
        let (status, body) = self.get(a, url, token, Purpose::List).await?;
        match status {
            200 => parse_page(&body),
            404 if model::is_no_vehicle(&body) => Err(ApiError::NoVehicles),
            s => Err(classify(s, &body)),
        }
    }

    /// One authorised GET through the rate limiter and the day's budget (`purpose`: whose
    /// share of it), with the body read under the size cap. 401 and 429 are errors here
    /// already; any other status is returned with its body.
    pub async fn get(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
        purpose: Purpose,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        self.limits.api_permit(&a.client_id, purpose).await?;
        let started = std::time::Instant::now();
        let sent = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header("x-introspect-realm", a.brand.realm())
            .header(reqwest::header::ACCEPT, "application/hal+json")
            .send()
            .await;
        if let Some(m) = self.limits.metrics() {
            m.api_answer(&a.name, url, sent.as_ref().ok(), started.elapsed());
        }
        let resp = sent.map_err(|e| ApiError::Transport(TransportError::from_reqwest(&e)))?;
        let status = resp.status().as_u16();
        self.limits
            .usage
            .api_answer(&a.name, status, resp.headers());
        let rate_limited = (status == 429).then(|| {
            let raw = header(&resp, "retry-after").unwrap_or_default();
            let now = std::time::SystemTime::now();
            ApiError::RateLimited {
                retry_after: retry::parse_retry_after(&raw, now),
                reset: header(&resp, "x-ratelimit-reset").and_then(|v| retry::parse_reset(&v, now)),
                day_exhausted: header(&resp, "x-ratelimit-remaining-1").as_deref() == Some("0"),
                raw,
            }
        });
        let body = crate::http::read_capped(resp, crate::http::API_BODY_LIMIT).await?;
        match status {
            401 => Err(ApiError::Unauthorized(model::error_message(&body))),
            429 => Err(rate_limited.unwrap_or(ApiError::RateLimited {
                retry_after: None,
                reset: None,
                day_exhausted: false,
                raw: String::new(),
            })),
            s => {
                if s < 400 {
                    self.limits.note_success();
                }
                Ok((s, body))
            }
        }
    }
}

/// The error for a status that is not success, 401 or 429.
pub fn classify(status: u16, body: &[u8]) -> ApiError {
    let message = model::error_message(body);
    if status >= 500 {
        ApiError::Server { status, message }
    } else {
        ApiError::Client { status, message }
    }
}

/// A response as it arrived: status, `Retry-After` (raw) and body.
pub(crate) struct RawResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl ApiClient {
    /// GETs `url` with the API's headers, through the rate limiter and the body cap; 401 and 429
    /// are already errors ([`ApiClient::get`]); the telemetry endpoints classify the rest in
    /// `api::telemetry`.
    pub(crate) async fn get_raw(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
    ) -> Result<RawResponse, ApiError> {
        let (status, body) = self.get(a, url, token, Purpose::Telemetry).await?;
        Ok(RawResponse {
            status,
            retry_after: None,
            body,
        })
    }
}
