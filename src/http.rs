//! HTTP plumbing shared by the API client and the identity-provider client: the one place a
//! `reqwest::Client` is built (timeouts on everything, a user agent, no redirects), a typed
//! transport error (so callers branch on a kind, never on message text), and reading a response
//! body with a size cap (a hostile or broken server cannot make the daemon buffer 50 MB).
//!
//! Nothing here logs a URL or a body: URLs can carry codes and bodies can carry tokens.

use std::time::Duration;

/// The most the identity provider's token answer may weigh (a real one is about 2 KiB).
pub const IDP_BODY_LIMIT: usize = 64 * 1024;
/// The most one API page or document may weigh (a real page of 60 vehicles is about 300 KiB).
pub const API_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The HTTP client every component shares: timeouts on everything, a user agent, no redirects
/// (an API redirect would carry the bearer token elsewhere).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stellantis-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// What kind of transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The request or the response took longer than the timeout.
    Timeout,
    /// No connection could be made (refused, DNS, TLS).
    Connect,
    /// The connection broke while the body was read, or the body was cut off.
    Body,
    /// Anything else reqwest reports.
    Other,
}

/// A failure below HTTP: described without the URL or any body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub kind: TransportKind,
    pub message: String,
}

impl TransportError {
    /// Describes a reqwest error without its URL (which could carry a code) or any body.
    pub fn from_reqwest(e: &reqwest::Error) -> TransportError {
        let (kind, label) = if e.is_timeout() {
            (TransportKind::Timeout, "timed out")
        } else if e.is_connect() {
            (TransportKind::Connect, "connection failed")
        } else if e.is_body() || e.is_decode() {
            (TransportKind::Body, "response body broken")
        } else if e.is_request() {
            (TransportKind::Other, "request failed")
        } else {
            (TransportKind::Other, "HTTP error")
        };
        let mut source = std::error::Error::source(e);
        let mut detail = String::new();
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        let message = if detail.is_empty() {
            label.to_owned()
        } else {
            format!("{label}: {detail}")
        };
        TransportError { kind, message }
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The body is larger than the limit; nothing of it is kept.
    #[error("the response body is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Reads at most `limit` bytes of a response body; the flag says whether it was cut there.
pub async fn read_prefix(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), TransportError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TransportError::from_reqwest(&e))?
    {
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// Reads a response body, refusing (and not buffering) more than `limit` bytes.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TransportError::from_reqwest(&e))?
    {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
