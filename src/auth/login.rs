//! `stellantis-sync login --account NAME`: the authorization-code flow with PKCE (S256).
//!
//! The brand apps only accept their private-scheme redirect URI (`mymap://oauth2redirect/fr`, …),
//! which no browser can deliver to us, so the user opens the printed URL, signs in, and pastes
//! back the code or the whole redirect URL; the printed steps say where browsers show it (the
//! address bar on phones, the developer tools' network tab on desktops) and that the code lives
//! minutes. A pasted URL must be the account's brand app's redirect for its country
//! ([`check_redirect`]) and answer this login (`state`). The pending verifier is kept in
//! `tokens/pending-login/NAME.json` (0600; a directory no account's token file can be in) for ten
//! minutes, so the code can also be given later with `--code`. Listing the account's vehicles
//! afterwards is the caller's (`lib.rs`), which has the API client.
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
    #[error(
        "the pasted redirect URL belongs to another login attempt (state mismatch); paste the address of the sign-in started by this `login`, or run `login` again"
    )]
    StateMismatch,
    #[error(
        "the pasted address `{pasted}` is {found}, but account {account} is a {brand} account (its app redirects to `{expected}`); sign in through the URL printed by this `login`, or fix the account's `brand`"
    )]
    WrongBrand {
        account: String,
        brand: &'static str,
        found: String,
        pasted: String,
        expected: String,
    },
    #[error(
        "the pasted address `{pasted}` is for country `{found}`, but this login expects `{expected}` (account {account}, country `{country}`); set the account's `country` (or `login --country {found}`) if that is the account's country, then run `login` again"
    )]
    WrongCountry {
        account: String,
        country: String,
        found: String,
        pasted: String,
        expected: String,
    },
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

/// Checks that a pasted redirect URL (anything with `://` before its query) is the one this login
/// expects, `<scheme>://oauth2redirect/<cc>` of the account's brand and country; a bare code
/// passes. The error names which part differs.
pub fn check_redirect(a: &Account, expected: &str, input: &str) -> Result<(), LoginError> {
    let text = input.trim();
    let base = text.split(['?', '#']).next().unwrap_or(text);
    let Some((scheme, rest)) = base.split_once("://") else {
        return Ok(());
    };
    if base.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let expected_scheme = expected.split("://").next().unwrap_or("");
    if !scheme.eq_ignore_ascii_case(expected_scheme) {
        let found = crate::brand::Brand::ALL
            .into_iter()
            .find(|b| b.preset().redirect_scheme.eq_ignore_ascii_case(scheme))
            .map_or_else(
                || format!("not a brand app's redirect (scheme `{scheme}`)"),
                |b| format!("the {} app's redirect", b.display()),
            );
        return Err(LoginError::WrongBrand {
            account: a.name.clone(),
            brand: a.brand.display(),
            found,
            pasted: base.to_owned(),
            expected: expected.to_owned(),
        });
    }
    let found = rest
        .strip_prefix("oauth2redirect/")
        .unwrap_or(rest)
        .trim_end_matches('/')
        .to_owned();
    Err(LoginError::WrongCountry {
        account: a.name.clone(),
        country: a.country.clone(),
        found,
        pasted: base.to_owned(),
        expected: expected.to_owned(),
    })
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
        check_redirect(a, &pending.redirect_uri, &input)?;
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
    println!("{}", instructions(a, &url, &p.redirect_uri));
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

/// What a person reads to sign in: the URL, then where the failed app address shows up.
pub fn instructions(a: &Account, url: &str, redirect_uri: &str) -> String {
    format!(
        "Signing in account `{name}` ({brand}, country {cc}).\n\
         \n\
         1. Open this URL in a browser and sign in with the e-mail and password of the My{brand} app:\n\
         \n  {url}\n\
         \n\
         2. After the sign-in the page sends the browser to the app's own address,\n   \
            {redirect_uri}?code=…\n   \
            which a browser cannot open, so it fails. That failed address holds the code:\n   \
            - phone or tablet: the address bar shows it (or the \"cannot open\" message); copy it all;\n   \
            - desktop: before signing in, open the developer tools (F12), tab Network, tick\n     \
              \"Preserve log\"; after signing in, the last request (failed or blocked) is\n     \
              {redirect_uri}?code=…: right-click it, Copy URL.\n\
         \n\
         3. Paste the whole address, or only the code (36 characters), here and press Enter.\n   \
            The code works once and only for a few minutes: paste it right away (if it was too\n   \
            slow, run this command again).\n",
        name = a.name,
        brand = a.brand.display(),
        cc = a.country,
    )
}

/// Why the vehicles could not be listed after a login (the tokens are stored either way).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(
        "account {account} is logged in, but no access token could be had for the listing: {source}"
    )]
    Token {
        account: String,
        #[source]
        source: AuthError,
    },
    #[error(
        "account {account} is logged in, but the API refused the new access token (gateway 401: {message}). A fresh token refused means the realm or the client: the realm sent is {realm} (is `brand` right?), the client id is the {client}; see docs/real-account.md"
    )]
    Refused {
        account: String,
        message: String,
        realm: &'static str,
        client: String,
    },
    #[error(
        "account {account} is logged in, but its vehicles could not be listed now ({source}); the next pass (`--once` or the daemon) tries again"
    )]
    Api {
        account: String,
        #[source]
        source: crate::api::ApiError,
    },
}

impl ListError {
    /// The exit code (`exit::HELP`): 75 may pass, 77 a login is needed, 78 the account's
    /// configuration is refused (client, brand), 74 the token store failed.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            ListError::Token { source, .. } => match source {
                AuthError::NeedsReauth { .. } => exit::NOPERM,
                AuthError::InvalidClient { .. } | AuthError::RefusedByApi { .. } => exit::CONFIG,
                AuthError::Transient { .. } => exit::TEMPFAIL,
                AuthError::Store { .. } => exit::IOERR,
            },
            ListError::Refused { .. } => exit::CONFIG,
            ListError::Api { source, .. } if source.is_retryable() => exit::TEMPFAIL,
            ListError::Api { .. } => exit::CONFIG,
        }
    }
}

/// After a login: lists the account's vehicles (the first page; one API request) so the person
/// sees at once that the car is reachable, or why not.
pub async fn list_vehicles(
    api: &crate::api::ApiClient,
    tokens: &TokenManager,
    a: &Account,
) -> Result<(), ListError> {
    use crate::api::ApiError;
    let token = tokens
        .access_token(a)
        .await
        .map_err(|source| ListError::Token {
            account: a.name.clone(),
            source,
        })?;
    let page = match api.get_page(a, &api.first_page_url(a), &token).await {
        Ok(p) => p,
        Err(ApiError::NoVehicles) => {
            println!(
                "Account `{}` has no vehicle yet: add the car in the My{} app (the API lists what the app lists), then run a pass.",
                a.name,
                a.brand.display()
            );
            return Ok(());
        }
        Err(ApiError::Unauthorized(message)) => {
            let client = if a.client_id == a.brand.preset().client_id {
                format!("{} app's preset", a.brand.display())
            } else {
                "one configured in client_id".into()
            };
            return Err(ListError::Refused {
                account: a.name.clone(),
                message,
                realm: a.brand.realm(),
                client,
            });
        }
        Err(source) => {
            return Err(ListError::Api {
                account: a.name.clone(),
                source,
            });
        }
    };
    let total = page.total.unwrap_or(page.vehicles.len() as u64);
    println!("Vehicles of account `{}` ({total}):", a.name);
    for v in &page.vehicles {
        let j = v.value();
        let field = |k: &str| j.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        println!("  {}  {}  {}", field("vin"), field("brand"), field("label"));
    }
    let more = total.saturating_sub(page.vehicles.len() as u64);
    if more > 0 {
        println!("  … and {more} more (the first pass records them all)");
    }
    Ok(())
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

    fn account(brand: crate::brand::Brand, country: &str) -> Account {
        Account {
            name: "me".into(),
            brand,
            country: country.into(),
            client_id: brand.preset().client_id.into(),
            client_secret: secrecy::SecretString::from(brand.preset().client_secret),
            username: None,
            password: None,
            refresh_token: None,
        }
    }

    #[test]
    fn a_pasted_address_must_be_the_accounts_brand_and_country() {
        use crate::brand::Brand;
        let code = "728a51bb-1111-2222-3333-444455556666";
        let a = account(Brand::Peugeot, "fr");
        let expected = Brand::Peugeot.app_redirect_uri("fr");
        assert!(check_redirect(&a, &expected, code).is_ok());
        let ok = format!("mymap://oauth2redirect/fr?code={code}&state=s");
        assert!(check_redirect(&a, &expected, &ok).is_ok());
        let opel = format!("mymopsdk://oauth2redirect/fr?code={code}");
        let e = check_redirect(&a, &expected, &opel).unwrap_err();
        assert!(matches!(e, LoginError::WrongBrand { .. }), "{e}");
        assert!(e.to_string().contains("Opel app"), "{e}");
        assert!(!e.to_string().contains(code), "the code is not echoed: {e}");
        let odd = format!("https://example.com/cb?code={code}");
        let e = check_redirect(&a, &expected, &odd).unwrap_err().to_string();
        assert!(e.contains("not a brand app's redirect"), "{e}");
        let de = format!("mymap://oauth2redirect/de?code={code}");
        let e = check_redirect(&a, &expected, &de).unwrap_err();
        assert!(
            matches!(&e, LoginError::WrongCountry { found, .. } if found == "de"),
            "{e}"
        );
        assert!(e.to_string().contains("--country de"), "{e}");
    }

    #[test]
    fn the_instructions_name_the_url_the_redirect_and_both_browsers() {
        let a = account(crate::brand::Brand::Vauxhall, "gb");
        let text = instructions(
            &a,
            "https://idp/authorize?x",
            "mymvxsdk://oauth2redirect/gb",
        );
        for needle in [
            "https://idp/authorize?x",
            "mymvxsdk://oauth2redirect/gb?code=",
            "address bar",
            "Network",
            "few minutes",
            "only the code",
            "MyVauxhall",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
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
