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
    /// Absent only in a broken answer that still carried a refresh token (kept, never dropped).
    pub access_token: Option<SecretString>,
    /// Absent if the server did not rotate (RFC 6749 §6: then keep the old one).
    pub refresh_token: Option<SecretString>,
    /// Seconds, already clamped to [`MIN_EXPIRES_IN`, `MAX_EXPIRES_IN`].
    pub expires_in: u64,
}

/// The shortest access-token lifetime believed (a missing, negative or unreadable `expires_in`
/// counts as this: the token is refreshed again soon rather than trusted for long).
pub const MIN_EXPIRES_IN: u64 = 60;
/// The longest believed (Stellantis issues 3599 s; `1e17` must not overflow a date).
pub const MAX_EXPIRES_IN: u64 = 86_400;

/// Reads a successful token answer defensively: once the identity provider has sent a new
/// refresh token it is kept, whatever else in the body is wrong. `None` only when the body is not
/// a JSON object or carries neither token.
pub fn parse_tokens(body: &[u8]) -> Option<Tokens> {
    // A byte-order mark is not JSON, but a token behind it is still a token.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Some(v) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object)
    else {
        return salvage(body);
    };
    let obj = v.as_object()?;
    let secret = |k: &str| {
        obj.get(k)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
    };
    let access_token = secret("access_token");
    let refresh_token = secret("refresh_token");
    if access_token.is_none() && refresh_token.is_none() {
        return None;
    }
    let expires_in = match obj.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(clamp_f64)
        }),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .unwrap_or(MIN_EXPIRES_IN)
    .clamp(MIN_EXPIRES_IN, MAX_EXPIRES_IN);
    Some(Tokens {
        access_token,
        refresh_token,
        expires_in,
    })
}

/// The tokens of a broken answer (cut off, oversized, not quite JSON): the string values of
/// `"refresh_token"` and `"access_token"` found in the text. A token the IdP has rotated must not
/// be lost because the rest of its answer is broken; the lifetime is then taken as short.
fn salvage(body: &[u8]) -> Option<Tokens> {
    let text = String::from_utf8_lossy(body);
    let find = |key: &str| -> Option<SecretString> {
        let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        let rest = rest.strip_prefix('"')?;
        let end = rest.find('"')?;
        let value = &rest[..end];
        let plausible = !value.is_empty()
            && value.len() <= 4096
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        plausible.then(|| SecretString::from(value.to_owned()))
    };
    let refresh_token = find("refresh_token");
    let access_token = find("access_token");
    if refresh_token.is_none() && access_token.is_none() {
        return None;
    }
    Some(Tokens {
        access_token,
        refresh_token,
        expires_in: MIN_EXPIRES_IN,
    })
}

/// A non-negative finite float of seconds as whole seconds, saturating (no `as` overflow).
fn clamp_f64(f: f64) -> u64 {
    if f >= MAX_EXPIRES_IN as f64 {
        MAX_EXPIRES_IN
    } else {
        // In range [0, 86400): the conversion is exact enough and cannot overflow.
        format!("{:.0}", f.floor())
            .parse()
            .unwrap_or(MIN_EXPIRES_IN)
    }
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
    let started = std::time::Instant::now();
    limits.usage.idp_request(&account.name);
    let url = format!("{idp_base}/am/oauth2/access_token");
    let resp = http
        .post(&url)
        .basic_auth(
            &account.client_id,
            Some(account.client_secret.expose_secret()),
        )
        .form(params)
        .send()
        .await;
    if let Some(m) = limits.metrics() {
        m.idp_response(
            "access_token",
            resp.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        );
    }
    let resp = resp.map_err(|e| {
        GrantError::Transient(crate::http::TransportError::from_reqwest(&e).message)
    })?;
    let status = resp.status();
    // Read at most the cap; an oversized success is still searched for its tokens.
    let (body, _cut) = crate::http::read_prefix(resp, crate::http::IDP_BODY_LIMIT)
        .await
        .map_err(|e| GrantError::Transient(e.to_string()))?;
    if status.is_success() {
        return parse_tokens(&body).ok_or_else(|| {
            GrantError::Transient(format!(
                "token response is not the expected JSON ({})",
                serde_json::from_slice::<serde_json::Value>(&body)
                    .err()
                    .map_or("no token in it", |e| e.classify_name())
            ))
        });
    }
    let err: Option<RawError> = serde_json::from_slice(&body).ok();
    let (code, description) = err
        .map(|e| {
            (
                // RFC 6749 §5.2 error codes are short words; anything else (a server that echoes
                // the request, refresh token included, in `error`) is not quoted.
                error_code(e.error.unwrap_or_default()),
                // Some servers echo the request (with its refresh token) in the description.
                crate::redact::tokens(&e.error_description.unwrap_or_default()),
            )
        })
        .unwrap_or_default();
    match (status.as_u16(), code.as_str()) {
        // RFC 6749 §5.2: invalid_grant comes with 400. The same word in a 5xx body is a server
        // failure, and must not kill a token the IdP may still accept.
        (400, "invalid_grant") => Err(GrantError::InvalidGrant(description)),
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

/// The `error` of an OAuth error body if it looks like an error code (a word of at most 64
/// letters, digits, `_`, `-`, `.`), else a placeholder: it is quoted in logs, `status` and the
/// database.
fn error_code(raw: String) -> String {
    let word = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if word || raw.is_empty() {
        raw
    } else {
        "unreadable_error_code".to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn token_answers_are_read_defensively() {
        let rt = |t: &Tokens| {
            t.refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
        };
        let t =
            parse_tokens(br#"{"access_token":"a","refresh_token":"r","expires_in":3599}"#).unwrap();
        assert_eq!((rt(&t).as_deref(), t.expires_in), (Some("r"), 3599));
        // Issue 10 item 4: hostile lifetimes are clamped, never trusted or overflowed.
        for (body, want) in [
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":100000000000000000}"#,
                MAX_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":1e17}"#,
                MAX_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":-5}"#,
                MIN_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":"soon"}"#,
                MIN_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":null}"#,
                MIN_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r"}"#,
                MIN_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":"7200"}"#,
                7200,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":12.7}"#,
                MIN_EXPIRES_IN,
            ),
            (
                r#"{"access_token":"a","refresh_token":"r","expires_in":600.4}"#,
                600,
            ),
        ] {
            let t = parse_tokens(body.as_bytes()).unwrap();
            assert_eq!(t.expires_in, want, "{body}");
            assert_eq!(rt(&t).as_deref(), Some("r"), "{body}");
        }
        // Adversarial review: a cut-off answer, a byte-order mark, an oversized id_token.
        let t = parse_tokens(br#"{"access_token":"a-1","refresh_token":"r-2","id_tok"#).unwrap();
        assert_eq!(rt(&t).as_deref(), Some("r-2"));
        assert_eq!(t.expires_in, MIN_EXPIRES_IN);
        let t = parse_tokens(
            b"\xEF\xBB\xBF{\"access_token\":\"a\",\"refresh_token\":\"r\",\"expires_in\":3599}",
        )
        .unwrap();
        assert_eq!((rt(&t).as_deref(), t.expires_in), (Some("r"), 3599));
        let big = format!(
            r#"{{"scope":"x","refresh_token":"r-3","id_token":"{}"#,
            "x".repeat(70_000)
        );
        let t = parse_tokens(&big.as_bytes()[..65_536]).unwrap();
        assert_eq!(rt(&t).as_deref(), Some("r-3"));
        // Once a new refresh token arrived, it is kept whatever else is wrong.
        let t = parse_tokens(br#"{"refresh_token":"r","access_token":42}"#).unwrap();
        assert!(t.access_token.is_none());
        assert_eq!(rt(&t).as_deref(), Some("r"));
        assert!(parse_tokens(b"[1]").is_none());
        assert!(parse_tokens(b"{}").is_none());
        assert!(parse_tokens(b"not json").is_none());
    }
}
