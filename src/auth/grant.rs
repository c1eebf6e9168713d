//! HTTP calls to the identity provider's token endpoint (`POST /am/oauth2/access_token`) with
//! HTTP Basic client authentication, and the classification of its answers.
//!
//! The request body carries secrets (password, refresh token, code) and reqwest guards only the
//! `Authorization` header, so nothing here logs a request or a raw response body; the response is
//! deserialized straight into `SecretString`s, and errors keep only the IdP's `error` codes.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::Account;
use crate::ratelimit::Limits;

/// Tokens from a successful grant.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: SecretString,
    /// Absent if the server did not rotate (RFC 6749 §6: then keep the old one).
    pub refresh_token: Option<SecretString>,
    pub expires_in: u64,
}

#[derive(Deserialize)]
struct RawTokens {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<String>,
    error_description: Option<String>,
}

/// How a grant failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    /// 400 `invalid_grant`: the refresh token, code or password is dead. Permanent.
    #[error("the identity provider rejected the grant (invalid_grant: {0})")]
    InvalidGrant(String),
    /// 401 `invalid_client`: the app's client id or secret is wrong. Permanent.
    #[error("the identity provider rejected the app credentials (invalid_client)")]
    InvalidClient,
    /// Any other 4xx with an OAuth error body (e.g. the dead password grant's `server_error`).
    #[error("the identity provider answered {status} {error}: {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    /// 5xx, timeouts, resets, unreadable bodies: may pass.
    #[error("the identity provider is unavailable: {0}")]
    Transient(String),
}

/// POSTs one grant. `params` may contain secrets; they go only into the form body.
pub async fn request(
    http: &reqwest::Client,
    limits: &Limits,
    idp_base: &str,
    account: &Account,
    params: &[(&str, &str)],
) -> Result<Tokens, GrantError> {
    limits.idp_permit().await;
    let url = format!("{idp_base}/am/oauth2/access_token");
    let resp = http
        .post(&url)
        .basic_auth(
            &account.client_id,
            Some(account.client_secret.expose_secret()),
        )
        .form(params)
        .send()
        .await
        .map_err(|e| GrantError::Transient(describe(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| GrantError::Transient(describe(&e)))?;
    if status.is_success() {
        let raw: RawTokens = serde_json::from_slice(&body).map_err(|e| {
            GrantError::Transient(format!(
                "token response is not the expected JSON ({})",
                e.classify_name()
            ))
        })?;
        let expires_in = match raw.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(3599),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(3599),
            _ => 3599,
        };
        return Ok(Tokens {
            access_token: raw.access_token,
            refresh_token: raw.refresh_token,
            expires_in,
        });
    }
    let err: Option<RawError> = serde_json::from_slice(&body).ok();
    let (code, description) = err
        .map(|e| {
            (
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    match (status.as_u16(), code.as_str()) {
        (_, "invalid_grant") => Err(GrantError::InvalidGrant(description)),
        (_, "invalid_client") | (401, _) => Err(GrantError::InvalidClient),
        (s, _) if status.is_server_error() || s == 429 || s == 408 => {
            Err(GrantError::Transient(format!(
                "HTTP {s}{}",
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" {code}")
                }
            )))
        }
        (s, c) if !c.is_empty() => Err(GrantError::Refused {
            status: s,
            error: c.to_owned(),
            description,
        }),
        (s, _) => Err(GrantError::Transient(format!("unexpected HTTP {s}"))),
    }
}

/// A reqwest error without its URL (which could carry a code) and without any body.
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body broken"
    } else if e.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Serde's error category name, for messages that must not quote the body.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}
