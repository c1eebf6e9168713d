//! `stellantis-sync login --account NAME`: the authorization-code flow with PKCE (S256).
//!
//! The brand apps only accept their private-scheme redirect URI (`mymap://oauth2redirect/fr`, …),
//! which no browser can deliver to us, so the user opens the printed URL, signs in, and pastes
//! back the code or the whole redirect URL (browsers show it in the address bar or the developer
//! tools). The pending verifier is kept in `tokens/pending-login/NAME.json` (0600; a directory no
//! account's token file can be in) for ten minutes, so the code can also be given later with
//! `--code`.
// Printing is this command's job: login is a dialogue with the person signing in.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::BufRead;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::store::fingerprint;
use super::{AuthError, TokenManager, grant};
use crate::config::Account;
use crate::timefmt;

#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    state: String,
    redirect_uri: String,
    created_at: String,
}

/// How a login ended without tokens.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "no code was given; open the URL above, sign in, then run `stellantis-sync login --account {0} --code '<code or redirect URL>'` within 10 minutes"
    )]
    NoCode(String),
    #[error(
        "no pending login for account {0} (or it is older than 10 minutes); run `stellantis-sync login --account {0}` first"
    )]
    NoPending(String),
    #[error("the pasted redirect URL belongs to another login attempt (state mismatch)")]
    StateMismatch,
    #[error(
        "`{0}` does not look like an authorization code (a 36-character UUID) or a redirect URL containing code="
    )]
    BadCode(String),
    #[error("account {account}: the identity provider refused the code: {reason}")]
    Refused { account: String, reason: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Io(String),
}

fn random_string(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// The S256 challenge of a verifier (RFC 7636).
pub fn challenge(verifier: &str) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The URL the user opens to sign in.
pub fn authorize_url(
    idp_base: &str,
    a: &Account,
    redirect_uri: &str,
    state: &str,
    verifier: &str,
) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("client_id", &a.client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", a.brand.preset().scopes)
        .append_pair("state", state)
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair(
            "locale",
            &format!("{}-{}", a.country, a.country.to_ascii_uppercase()),
        );
    format!("{idp_base}/am/oauth2/authorize?{}", q.finish())
}

/// Extracts the code (and state, if present) from what the user pasted.
pub fn parse_pasted(input: &str) -> Result<(String, Option<String>), LoginError> {
    let text = input.trim();
    if let Some(idx) = text.find("code=") {
        let query = text[text.find('?').map_or(idx, |q| q + 1)..].trim_start_matches('#');
        let mut code = None;
        let mut state = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                _ => {}
            }
        }
        return code
            .filter(|c| !c.is_empty())
            .map(|c| (c, state))
            .ok_or_else(|| LoginError::BadCode(redact(text)));
    }
    if text.len() == 36 && uuid::Uuid::parse_str(text).is_ok() {
        return Ok((text.to_owned(), None));
    }
    Err(LoginError::BadCode(redact(text)))
}

/// Shows at most the first 8 characters of something pasted (it could be a secret).
fn redact(s: &str) -> String {
    let head: String = s.chars().take(8).collect();
    if s.chars().count() > 8 {
        format!("{head}…")
    } else {
        head
    }
}

impl TokenManager {
    /// Runs the login for one account. `code` is the `--code` argument; without it the URL is
    /// printed and the code read from standard input.
    pub async fn login(&self, a: &Account, code: Option<String>) -> Result<(), LoginError> {
        let pending_path = self.prepare_login(a)?;
        let idp = self.inner.idp_base(a);
        let (pending, input) = match code {
            Some(c) => (resume_pending(a, &pending_path)?, c),
            None => ask_for_code(a, &idp, &pending_path)?,
        };
        let (code, state) = parse_pasted(&input)?;
        if state.is_some_and(|s| s != pending.state) {
            return Err(LoginError::StateMismatch);
        }
        self.redeem_code(a, &idp, &code, &pending).await?;
        let _ = std::fs::remove_file(&pending_path);
        println!(
            "Account `{}` is logged in; a running daemon uses the new tokens at its next pass.",
            a.name
        );
        Ok(())
    }

    /// The token store ready, and the 0700 directory of the pending login's file; its path.
    fn prepare_login(&self, a: &Account) -> Result<std::path::PathBuf, LoginError> {
        let store = self.store();
        store.prepare().map_err(|e| LoginError::Io(e.to_string()))?;
        let pending_path = store.pending_login_path(&a.name);
        if let Some(dir) = pending_path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LoginError::Io(format!("{}: {e}", dir.display())))?;
        }
        Ok(pending_path)
    }

    /// Exchanges the code for tokens under the account's lock and saves them durably.
    async fn redeem_code(
        &self,
        a: &Account,
        idp: &str,
        code: &str,
        pending: &Pending,
    ) -> Result<(), LoginError> {
        let (inner, store) = (&self.inner, self.store());
        let _lock = store
            .lock(&a.name, Duration::from_secs(30))
            .await
            .map_err(|e| LoginError::Io(e.to_string()))?;
        store
            .preflight()
            .map_err(|e| LoginError::Io(e.to_string()))?;
        let refused = |reason: String| LoginError::Refused {
            account: a.name.clone(),
            reason,
        };
        let tokens = grant::request(
            &inner.http,
            &inner.limits,
            idp,
            a,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &pending.redirect_uri),
                ("code_verifier", &pending.verifier),
            ],
        )
        .await
        .map_err(|e| refused(e.to_string()))?;
        let Some(refresh) = tokens.refresh_token else {
            return Err(refused("no refresh token in the answer".into()));
        };
        let previous = store
            .load(&a.name)
            .ok()
            .flatten()
            .and_then(|r| r.refresh_token.as_ref().map(fingerprint));
        let record = inner.issued_record(
            a,
            tokens.access_token,
            Some(refresh),
            tokens.expires_in,
            "login",
            Some(timefmt::format(Utc::now())),
            previous,
        );
        inner.save_durably(a, record)?;
        Ok(())
    }
}

/// `--code`: the login started earlier (at most 10 minutes ago) for this account.
fn resume_pending(a: &Account, pending_path: &std::path::Path) -> Result<Pending, LoginError> {
    std::fs::read(pending_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|p: &Pending| {
            timefmt::parse(&p.created_at)
                .is_some_and(|t| Utc::now() - t < chrono::Duration::minutes(10))
        })
        .ok_or_else(|| LoginError::NoPending(a.name.clone()))
}

/// Starts a login: saves a fresh PKCE verifier and state, prints the authorize URL, and reads
/// what the user pastes back.
fn ask_for_code(
    a: &Account,
    idp: &str,
    pending_path: &std::path::Path,
) -> Result<(Pending, String), LoginError> {
    let p = Pending {
        verifier: random_string(64),
        state: random_string(24),
        redirect_uri: a.brand.app_redirect_uri(&a.country),
        created_at: timefmt::now(),
    };
    write_private(pending_path, &serde_json::to_vec(&p).unwrap_or_default())?;
    let url = authorize_url(idp, a, &p.redirect_uri, &p.state, &p.verifier);
    println!(
        "Open this URL in a browser and sign in as the owner of account `{}`:\n\n  {url}\n",
        a.name
    );
    println!(
        "The browser then tries to open {}?code=… and fails; copy that address (or just the code)\nfrom the address bar or the developer tools' network tab, and paste it here:",
        p.redirect_uri
    );
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| LoginError::Io(e.to_string()))?;
    if n == 0 || line.trim().is_empty() {
        return Err(LoginError::NoCode(a.name.clone()));
    }
    Ok((p, line))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), LoginError> {
    crate::fsutil::write_atomic(path, bytes, 0o600, true)
        .map_err(|e| LoginError::Io(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_codes_and_urls() {
        let code = "728a51bb-1111-2222-3333-444455556666";
        assert_eq!(parse_pasted(code).unwrap(), (code.to_owned(), None));
        let url = format!("mymap://oauth2redirect/fr?code={code}&scope=openid%20profile&state=abc");
        assert_eq!(
            parse_pasted(&url).unwrap(),
            (code.to_owned(), Some("abc".into()))
        );
        assert!(matches!(parse_pasted("hello"), Err(LoginError::BadCode(_))));
        // A pasted secret-looking string is not echoed whole.
        let e = parse_pasted("averylongsecretvaluethatisnotacode")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("averylongsecretvalue"));
    }

    #[test]
    fn s256_challenge_known_answer() {
        // Computed independently: base64url(sha256(v)) without padding, with Python's hashlib.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXWcFjvlw"),
            "ktVq7B0aoX3ID-6pzDthZWLE9wV0RoH3cLt1Wv-l5Mc"
        );
    }
}
