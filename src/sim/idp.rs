//! The identity provider under `/am/oauth2`: `access_token` (password, refresh_token and
//! authorization_code grants, HTTP Basic client authentication, parameters in the body or the
//! query string), `authorize` (a plain login form that redirects with a single-use code, PKCE S256
//! checked when a challenge was given) and `token/revoke`.
//!
//! Clients: the simulator's own (`SimConfig::client_id`, any user) and each brand app's preset
//! client (`brand::Preset`), which, as on the real IdPs whose realms are separate user bases, signs
//! in only that brand's users and redirects only to that app's `<scheme>://oauth2redirect/<cc>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;

use super::tokens::{AuthCode, RefreshState};
use super::{PasswordGrant, Shared, SimConfig};
use crate::brand::Brand;

/// Whose users a client signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Client {
    /// The simulator's own client: every user.
    Own,
    /// A brand app's preset client: that brand's users only.
    App(Brand),
}

impl Client {
    /// The client with this id, if the simulator knows it (no secret: the authorize page and the
    /// gateway see only the id).
    pub(super) fn by_id(cfg: &SimConfig, id: &str) -> Option<Client> {
        if id == cfg.client_id {
            return Some(Client::Own);
        }
        Brand::from_app_client_id(id).map(Client::App)
    }

    /// The client these credentials authenticate, if any.
    fn authenticate(cfg: &SimConfig, id: &str, secret: &str) -> Option<Client> {
        if id == cfg.client_id && secret == cfg.client_secret {
            return Some(Client::Own);
        }
        Brand::from_app_client(id, secret).map(Client::App)
    }

    /// Whether this client may sign in a user of `brand`.
    fn admits(self, brand: Brand) -> bool {
        match self {
            Client::Own => true,
            Client::App(b) => b == brand,
        }
    }

    /// Whether this client may redirect to `uri` (a preset client: only its app's scheme, with a
    /// two-letter lower-case country).
    fn redirect_allowed(self, uri: &str) -> bool {
        match self {
            Client::Own => true,
            Client::App(b) => uri
                .strip_prefix(b.preset().redirect_scheme)
                .and_then(|r| r.strip_prefix("://oauth2redirect/"))
                .is_some_and(|cc| cc.len() == 2 && cc.bytes().all(|c| c.is_ascii_lowercase())),
        }
    }
}

/// The client of a token-endpoint or revoke request (HTTP Basic), if it authenticates.
fn client_of(cfg: &SimConfig, headers: &HeaderMap) -> Option<Client> {
    basic_client(headers).and_then(|(id, secret)| Client::authenticate(cfg, &id, &secret))
}

/// The answer to a request whose client did not authenticate.
fn client_failed() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Client authentication failed",
    )
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/am/oauth2/access_token", post(token))
        .route(
            "/am/oauth2/authorize",
            get(authorize_form).post(authorize_submit),
        )
        .route("/am/oauth2/token/revoke", post(revoke))
}

const GRANT_INVALID: &str = "grant is invalid";
const CODE_INVALID: &str = "The provided access grant is invalid, expired, or revoked.";

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

/// Query parameters, then form-body parameters on top (real clients use either).
fn params(query: HashMap<String, String>, body: &[u8]) -> HashMap<String, String> {
    let mut p = query;
    for (k, v) in url::form_urlencoded::parse(body) {
        p.insert(k.into_owned(), v.into_owned());
    }
    p
}

fn basic_client(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT-shaped `id_token` (header.payload.signature); the signature is random bytes.
fn id_token(client_id: &str, realm: &str, ttl: Duration) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"typ": "JWT", "kid": "sim-signing-key", "alg": "RS256"});
    let payload = json!({
        "sub": uuid::Uuid::new_v4().to_string(),
        "aud": client_id,
        "iss": format!("https://idpcvs.example/am/oauth2/realms/root/realms/{realm}"),
        "iat": now,
        "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(3599),
        "tokenName": "id_token",
        "realm": format!("/{realm}"),
    });
    let sig: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes()),
        b64url(&sig)
    )
}

/// Body faults of a token answer: a raw `expires_in` value and padding.
struct Shape {
    expires_in_raw: String,
    pad: usize,
}

/// Placeholder replaced by the raw `expires_in` text.
const EXPIRES_MARK: &str = "@@sim-expires-in@@";

fn token_response(
    access: &str,
    refresh: &str,
    scope: &str,
    client_id: &str,
    realm: &str,
    ttl: Duration,
    shape: &Shape,
) -> Response {
    let expires_in = if shape.expires_in_raw.is_empty() {
        json!(ttl.as_secs())
    } else {
        json!(EXPIRES_MARK)
    };
    let mut body = json!({
        "scope": scope,
        "expires_in": expires_in,
        "token_type": "Bearer",
        "refresh_token": refresh,
        "id_token": id_token(client_id, realm, ttl),
        "access_token": access,
    });
    if shape.pad > 0
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("_padding".into(), json!("x".repeat(shape.pad)));
    }
    let mut text = body.to_string();
    if !shape.expires_in_raw.is_empty() {
        text = text.replace(
            &serde_json::to_string(EXPIRES_MARK).unwrap_or_default(),
            &shape.expires_in_raw,
        );
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
            (header::SET_COOKIE, "PSACountry=FR; Path=/"),
        ],
        text,
    )
        .into_response()
}

async fn idp_faults(sh: &Shared) -> Option<Response> {
    let delay = {
        let mut g = sh.lock();
        let f = g.cfg.faults.clone();
        if g.draw(f.idp_down) {
            g.stats.fault("idp_down");
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body><h1>503 Service Unavailable</h1></body></html>",
                )
                    .into_response(),
            );
        }
        if g.draw(f.idp_timeout) {
            g.stats.fault("idp_timeout");
            f.idp_timeout_ms
        } else {
            0
        }
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        return Some(oauth_error(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "Gateway Timeout",
        ));
    }
    None
}

async fn token(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = idp_faults(&sh).await {
        return r;
    }
    // The lock lives in this block only: it is never held across the stall below.
    let (resp, stall) = {
        let p = params(query, &body);
        let mut g = sh.lock();
        let Some(client) = client_of(&g.cfg, &headers) else {
            return client_failed();
        };
        let client_id = basic_client(&headers).map(|(id, _)| id).unwrap_or_default();
        let grant = p.get("grant_type").map(String::as_str).unwrap_or("");
        let ttl = g.cfg.access_ttl;
        let shape = Shape {
            expires_in_raw: g.cfg.faults.token_expires_in.clone(),
            pad: g.cfg.faults.huge_body_bytes,
        };
        if !shape.expires_in_raw.is_empty() {
            g.stats.fault("token_expires_in");
        }
        if shape.pad > 0 {
            g.stats.fault("huge_body_bytes");
        }
        let mut stall = 0;
        let scope_req = p
            .get("scope")
            .cloned()
            .unwrap_or_else(|| "openid profile".into());
        let resp = match grant {
            "password" => {
                if g.cfg.password_grant == PasswordGrant::Dead {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "server_error",
                        "Internal Server Error",
                    );
                }
                let (Some(user), Some(pass)) = (p.get("username"), p.get("password")) else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "Missing username or password",
                    );
                };
                let found = g
                    .world
                    .user_index(user)
                    .filter(|&u| g.world.users[u].password == *pass)
                    .filter(|&u| client.admits(g.world.users[u].brand))
                    .filter(|&u| {
                        p.get("realm")
                            .is_none_or(|r| r == g.world.users[u].brand.realm())
                    });
                let Some(u) = found else {
                    g.stats.invalid_grant += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", CODE_INVALID);
                };
                let (a, r) = g.issue_chain(u, &client_id, &scope_req);
                *g.stats.grants.entry("password".into()).or_default() += 1;
                let realm = g.world.users[u].brand.realm();
                token_response(&a, &r, &scope_req, &client_id, realm, ttl, &shape)
            }
            "refresh_token" => {
                let Some(presented) = p.get("refresh_token") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "Missing refresh_token",
                    );
                };
                let now = g.now();
                let refresh_ttl = g.cfg.refresh_ttl;
                let grace = g.cfg.refresh_grace;
                let Some(rt) = g.tokens.refresh.get(presented).cloned() else {
                    g.stats.invalid_grant += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", GRANT_INVALID);
                };
                let in_grace = rt.state == RefreshState::Rotated
                    && rt.rotated_at.is_some_and(|t| now.duration_since(t) < grace);
                if rt.state == RefreshState::Rotated {
                    g.stats.reused_refresh += 1;
                }
                let usable = rt.state == RefreshState::Live || in_grace;
                if !usable || now >= rt.born + refresh_ttl || rt.client_id != client_id {
                    g.stats.invalid_grant += 1;
                    if rt.state == RefreshState::Rotated && g.cfg.family_revocation {
                        g.tokens.revoke_chain(rt.chain);
                    }
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", GRANT_INVALID);
                }
                let scope = p.get("scope").cloned().unwrap_or_else(|| rt.scope.clone());
                let (a, r) = g
                    .tokens
                    .rotate(presented, &rt, &client_id, &scope, now, ttl);
                *g.stats.grants.entry("refresh_token".into()).or_default() += 1;
                stall = g.cfg.faults.idp_stall_after_rotate_ms;
                if stall > 0 {
                    g.stats.fault("idp_stall_after_rotate_ms");
                }
                let realm = g.world.users[rt.user].brand.realm();
                token_response(&a, &r, &scope, &client_id, realm, ttl, &shape)
            }
            "authorization_code" => {
                let (Some(code), Some(redirect)) = (p.get("code"), p.get("redirect_uri")) else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "Missing code or redirect_uri",
                    );
                };
                let now = g.now();
                let Some(c) = g.tokens.codes.get(code).cloned() else {
                    g.stats.invalid_grant += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", CODE_INVALID);
                };
                if let Some(stored) = g.tokens.codes.get_mut(code) {
                    stored.used = true;
                }
                let pkce_ok = match &c.challenge {
                    None => true,
                    Some(challenge) => p.get("code_verifier").is_some_and(|v| {
                        use sha2::Digest;
                        b64url(&sha2::Sha256::digest(v.as_bytes())) == *challenge
                    }),
                };
                if c.used
                    || now >= c.expires
                    || c.client_id != client_id
                    || c.redirect_uri != *redirect
                    || !pkce_ok
                {
                    g.stats.invalid_grant += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", CODE_INVALID);
                }
                let (a, r) = g.issue_chain(c.user, &client_id, &c.scope);
                *g.stats
                    .grants
                    .entry("authorization_code".into())
                    .or_default() += 1;
                let realm = g.world.users[c.user].brand.realm();
                token_response(&a, &r, &c.scope, &client_id, realm, ttl, &shape)
            }
            "" => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type",
            ),
            other => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Grant type is not supported: {other}"),
            ),
        };
        (resp, stall)
    };
    if stall > 0 {
        // The rotation is done (the old token is dead); the answer is held back.
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn login_page(p: &HashMap<String, String>, error: Option<&str>) -> Response {
    let mut hidden = String::new();
    for key in [
        "client_id",
        "response_type",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        "locale",
    ] {
        if let Some(v) = p.get(key) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{key}\" value=\"{}\">\n",
                escape(v)
            ));
        }
    }
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><title>Sign in (simulated IdP)</title></head><body>\n\
         <h1>Sign in</h1>{err}\n<form method=\"post\" action=\"/am/oauth2/authorize\">\n{hidden}\
         <label>E-mail <input name=\"username\" type=\"email\"></label>\n\
         <label>Password <input name=\"password\" type=\"password\"></label>\n\
         <button type=\"submit\">Sign in</button>\n</form></body></html>\n"
    ))
    .into_response()
}

fn check_authorize_params(sh: &Shared, p: &HashMap<String, String>) -> Option<Response> {
    let g = sh.lock();
    let client = p.get("client_id").and_then(|id| Client::by_id(&g.cfg, id));
    let Some(client) = client else {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                Html("<p>invalid_client: unknown client_id</p>"),
            )
                .into_response(),
        );
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                Html("<p>unsupported_response_type</p>"),
            )
                .into_response(),
        );
    }
    if p.get("redirect_uri").is_none_or(String::is_empty) {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                Html("<p>invalid_request: redirect_uri missing</p>"),
            )
                .into_response(),
        );
    }
    if !p
        .get("redirect_uri")
        .is_some_and(|u| client.redirect_allowed(u))
    {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                Html("<p>invalid_request: redirect_uri is not registered for this client</p>"),
            )
                .into_response(),
        );
    }
    if p.get("code_challenge").is_some()
        && p.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                Html("<p>invalid_request: only S256 is supported</p>"),
            )
                .into_response(),
        );
    }
    None
}

async fn authorize_form(
    State(sh): State<Arc<Shared>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check_authorize_params(&sh, &p) {
        return r;
    }
    login_page(&p, None)
}

async fn authorize_submit(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let p = params(HashMap::new(), &body);
    if let Some(r) = check_authorize_params(&sh, &p) {
        return r;
    }
    let mut g = sh.lock();
    let client = p.get("client_id").and_then(|id| Client::by_id(&g.cfg, id));
    let user = p
        .get("username")
        .and_then(|u| g.world.user_index(u))
        .filter(|&u| p.get("password") == Some(&g.world.users[u].password))
        .filter(|&u| client.is_some_and(|c| c.admits(g.world.users[u].brand)));
    let Some(user) = user else {
        drop(g);
        return login_page(&p, Some("Invalid login or password"));
    };
    let code = uuid::Uuid::new_v4().to_string();
    let scope = p
        .get("scope")
        .cloned()
        .unwrap_or_else(|| "openid profile".into());
    let redirect = p.get("redirect_uri").cloned().unwrap_or_default();
    let expires = g.now() + g.cfg.code_ttl;
    g.tokens.codes.insert(
        code.clone(),
        AuthCode {
            user,
            client_id: p.get("client_id").cloned().unwrap_or_default(),
            redirect_uri: redirect.clone(),
            challenge: p.get("code_challenge").cloned(),
            scope: scope.clone(),
            expires,
            used: false,
        },
    );
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("code", &code).append_pair("scope", &scope);
    if let Some(state) = p.get("state") {
        q.append_pair("state", state);
    }
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!("{redirect}{sep}{}", q.finish());
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn revoke(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let p = params(query, &body);
    let mut g = sh.lock();
    if client_of(&g.cfg, &headers).is_none() {
        return client_failed();
    }
    let Some(token) = p.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing token");
    };
    if let Some(chain) = g.tokens.refresh.get(token).map(|t| t.chain) {
        g.tokens.revoke_chain(chain);
    } else {
        g.tokens.access.remove(token);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}
