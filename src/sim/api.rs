//! The resource API under `/connectedcar/v4`: `GET /user/vehicles` (HAL collection with
//! `pageToken` pagination), `GET /user/vehicles/{id}` and `GET /user/vehicles/{id}/status`.
//!
//! Each request passes, in the gateway's order: `client_id` check, quota, bearer token and realm,
//! injected backend faults, the handler, then body faults.

// Handlers short-circuit with a ready `Response` as their error; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{ConnKill, Inner, RetryAfterForm, Shared, world};
use crate::brand::Brand;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/connectedcar/v4/user/vehicles", get(list_vehicles))
        .route("/connectedcar/v4/user/vehicles/{id}", get(one_vehicle))
        .route("/connectedcar/v4/user/vehicles/{id}/status", get(status))
}

/// The caller, once the gateway let it through.
pub(super) struct Caller {
    pub user: usize,
    pub brand: Brand,
    pub limits: Option<RateHeaders>,
    /// The sim clock when the gateway let the request through (error bodies' `timestamp`).
    pub now: DateTime<Utc>,
}

#[derive(Clone, Copy)]
pub(super) struct RateHeaders {
    day_limit: u64,
    day_remaining: u64,
    burst_limit: u32,
    burst_remaining: u32,
}

fn base_headers(resp: &mut Response, ok: bool, limits: Option<RateHeaders>) {
    let h = resp.headers_mut();
    let tid = format!("{:x}", rand::random::<u64>());
    h.insert("x-global-transaction-id", hv(&tid));
    h.insert(
        "x-backside-transport",
        hv(if ok { "OK OK" } else { "FAIL FAIL" }),
    );
    h.insert(
        header::CACHE_CONTROL,
        hv("no-store, no-cache, must-revalidate, private"),
    );
    h.insert(header::EXPIRES, hv("0"));
    h.insert(
        "access-control-expose-headers",
        hv("APIm-Debug-Trans-Id, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Global-Transaction-ID"),
    );
    // Only the windows that exist: a quota switched off (0) sends no headers of its own.
    if let Some(l) = limits {
        if l.day_limit > 0 {
            h.insert("x-ratelimit-limit-1", hv(&l.day_limit.to_string()));
            h.insert("x-ratelimit-remaining-1", hv(&l.day_remaining.to_string()));
        }
        if l.burst_limit > 0 {
            h.insert("x-ratelimit-limit-2", hv(&l.burst_limit.to_string()));
            h.insert(
                "x-ratelimit-remaining-2",
                hv(&l.burst_remaining.to_string()),
            );
        }
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// An IBM API Connect gateway error (`httpCode/httpMessage/moreInformation`).
pub(super) fn gateway_error(status: StatusCode, message: &str, more: &str) -> Response {
    let body = json!({"httpCode": status.as_u16().to_string(), "httpMessage": message, "moreInformation": more});
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    base_headers(&mut resp, false, None);
    resp
}

/// A backend error in the documented `{uuid, code, message, timestamp}` form; `at` is the sim
/// clock (like every other time the simulator sends).
pub(super) fn backend_error(
    at: DateTime<Utc>,
    status: StatusCode,
    code: u32,
    message: &str,
) -> Response {
    let body = json!({
        "uuid": uuid::Uuid::new_v4().to_string(),
        "code": code,
        "message": message,
        "timestamp": crate::timefmt::format(at),
    });
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/hal+json")],
        body.to_string(),
    )
        .into_response();
    base_headers(&mut resp, true, None);
    resp
}

fn too_many(limits: Option<RateHeaders>, form: RetryAfterForm, secs: u64, which: u8) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"httpCode": "429", "httpMessage": "Too Many Requests", "moreInformation": "Rate Limit exceeded"}).to_string(),
    )
        .into_response();
    base_headers(&mut resp, false, limits);
    let h = resp.headers_mut();
    h.insert("x-ratelimit-reset", hv(&secs.to_string()));
    match form {
        RetryAfterForm::Seconds => {
            h.insert(header::RETRY_AFTER, hv(&secs.to_string()));
        }
        RetryAfterForm::HttpDate => {
            let at = SystemTime::now() + Duration::from_secs(secs + 1);
            h.insert(header::RETRY_AFTER, hv(&httpdate::fmt_http_date(at)));
        }
        RetryAfterForm::Odd => {
            h.insert(
                header::RETRY_AFTER,
                hv(&format!("name=rate-limit-{which},{}", 20_000 + secs)),
            );
        }
        RetryAfterForm::Absent => {}
    }
    resp
}

/// The gateway: client id, quota, token, realm; then injected faults.
pub(super) async fn gate(
    sh: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    kill: Option<&ConnKill>,
) -> Result<Caller, Response> {
    enum Pre {
        Drop,
        Slow(u64),
        Go,
    }
    let pre = {
        let mut g = sh.lock();
        g.auto_tick();
        let p_drop = g.cfg.faults.drop_connection;
        let p_slow = g.cfg.faults.slow;
        if g.draw(p_drop) {
            g.stats.fault("drop_connection");
            Pre::Drop
        } else if g.draw(p_slow) {
            g.stats.fault("slow");
            Pre::Slow(g.cfg.faults.slow_ms)
        } else {
            Pre::Go
        }
    };
    let slow_ms = match pre {
        Pre::Drop => {
            if let Some(k) = kill {
                k.0.cancel();
            }
            // The connection task drops the socket; this request never answers.
            std::future::pending::<()>().await;
            0
        }
        Pre::Slow(ms) => ms,
        Pre::Go => 0,
    };
    if slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
    }
    let mut g = sh.lock();
    let Some(client_id) = query.get("client_id").filter(|c| !c.is_empty()) else {
        return Err(gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Invalid client id or secret.",
        ));
    };
    if super::idp::Client::by_id(&g.cfg, client_id).is_none() {
        let mut r = gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Not registered to plan",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, hv("default"));
        return Err(r);
    }
    let daily_reset = g.cfg.faults.daily_quota_no_retry_after;
    if daily_reset > 0 {
        // A spent daily quota as the official docs describe it, without `Retry-After`.
        g.stats.fault("daily_quota_no_retry_after");
        let limits = RateHeaders {
            day_limit: g.cfg.daily_limit,
            day_remaining: 0,
            burst_limit: g.cfg.burst_per_second,
            burst_remaining: g.cfg.burst_per_second,
        };
        return Err(too_many(
            Some(limits),
            RetryAfterForm::Absent,
            daily_reset,
            1,
        ));
    }
    let limits = check_quota(&mut g, client_id)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let now = g.now();
    let access = token.and_then(|t| g.tokens.access.get(t)).cloned();
    let Some(access) = access else {
        return Err(gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Token is invalid",
        ));
    };
    if now >= access.expires {
        let mut r = gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Cannot pass the security checks that are required by the target API or operation, Enable debug headers for more details.",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, hv("Bearer error='invalid_token'"));
        return Err(r);
    }
    if g.cfg.faults.persistent_401 {
        g.stats.fault("persistent_401");
        return Err(gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Cannot pass the security checks that are required by the target API or operation, Enable debug headers for more details.",
        ));
    }
    let brand = g.world.users[access.user].brand;
    let realm = headers
        .get("x-introspect-realm")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !realm.eq_ignore_ascii_case(brand.realm()) {
        return Err(gateway_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Cannot pass the security checks that are required by the target API or operation, Enable debug headers for more details.",
        ));
    }
    let f = g.cfg.faults.clone();
    if g.draw(f.rate_limit_storm) {
        g.stats.fault("rate_limit_storm");
        return Err(too_many(limits, f.retry_after_form, 2, 2));
    }
    if g.draw(f.gateway_500) {
        g.stats.fault("gateway_500");
        return Err(gateway_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "Internal Error",
        ));
    }
    if g.draw(f.unavailable_503) {
        g.stats.fault("unavailable_503");
        return Err(gateway_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "Service Unavailable",
        ));
    }
    if g.draw(f.corvet_500) {
        g.stats.fault("corvet_500");
        return Err(backend_error(
            g.wall_now(),
            StatusCode::INTERNAL_SERVER_ERROR,
            50000,
            "CORVET Error",
        ));
    }
    if g.draw(f.cvs_50038) {
        g.stats.fault("cvs_50038");
        return Err(backend_error(
            g.wall_now(),
            StatusCode::INTERNAL_SERVER_ERROR,
            50038,
            "CVS error/user-vins",
        ));
    }
    Ok(Caller {
        user: access.user,
        brand,
        limits,
        now: g.wall_now(),
    })
}

fn check_quota(g: &mut Inner, client_id: &str) -> Result<Option<RateHeaders>, Response> {
    let burst = g.cfg.burst_per_second;
    let daily = g.cfg.daily_limit;
    if burst == 0 && daily == 0 {
        return Ok(None);
    }
    let form = g.cfg.faults.retry_after_form;
    let now = Instant::now();
    let q = g.quota.entry(client_id.to_owned()).or_default();
    while q
        .second
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        q.second.pop_front();
    }
    let day_start = *q.day_start.get_or_insert(now);
    if now.duration_since(day_start) >= Duration::from_secs(86_400) {
        q.day_start = Some(now);
        q.day_used = 0;
    }
    let used_burst = u32::try_from(q.second.len()).unwrap_or(u32::MAX);
    let mut limits = RateHeaders {
        day_limit: daily,
        day_remaining: daily.saturating_sub(q.day_used),
        burst_limit: burst,
        burst_remaining: burst.saturating_sub(used_burst),
    };
    if daily > 0 && q.day_used >= daily {
        let reset = 86_400 - now.duration_since(q.day_start.unwrap_or(now)).as_secs();
        g.stats.over_quota += 1;
        return Err(too_many(Some(limits), form, reset.max(1), 1));
    }
    if burst > 0 && used_burst >= burst {
        g.stats.over_quota += 1;
        return Err(too_many(Some(limits), form, 1, 2));
    }
    q.second.push_back(now);
    q.day_used += 1;
    limits.day_remaining = limits.day_remaining.saturating_sub(1);
    limits.burst_remaining = limits.burst_remaining.saturating_sub(1);
    Ok(Some(limits))
}

/// A successful HAL response, with body faults applied where the switches say so.
pub(super) fn hal_ok(sh: &Shared, body: &Value, limits: Option<RateHeaders>) -> Response {
    let pad = sh.lock().cfg.faults.huge_body_bytes;
    let mut text = if pad > 0 {
        sh.lock().stats.fault("huge_body_bytes");
        padded(body, pad)
    } else {
        body.to_string()
    };
    {
        let mut g = sh.lock();
        let (pt, pm) = (g.cfg.faults.truncated_json, g.cfg.faults.malformed_json);
        if g.draw(pt) {
            g.stats.fault("truncated_json");
            let mut cut = text.len() / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        } else if g.draw(pm) {
            g.stats.fault("malformed_json");
            text = format!(
                "<html><body>Bad Gateway</body></html>{}",
                &text[..text.len().min(40)]
            );
        }
    }
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, hv("application/hal+json"));
    base_headers(&mut resp, true, limits);
    resp
}

/// `body` with an extra `_padding` field whose value is `bytes` bytes long.
pub(super) fn padded(body: &Value, bytes: usize) -> String {
    let mut b = body.clone();
    if let Some(obj) = b.as_object_mut() {
        obj.insert("_padding".into(), Value::String("x".repeat(bytes)));
    }
    b.to_string()
}

/// `pageToken`: 32 hex characters, then base64 of (page, pageSize, start, end) as big-endian u32s.
pub(super) fn encode_page_token(
    user_email: &str,
    page: u32,
    size: u32,
    start: u32,
    end: Option<u32>,
) -> String {
    encode_page_token_ext(user_email, page, size, start, end, "")
}

/// [`encode_page_token`] with the listing's filter (a query string) carried after the four
/// numbers, so that the next page applies the same filter without the server keeping any state.
pub(super) fn encode_page_token_ext(
    user_email: &str,
    page: u32,
    size: u32,
    start: u32,
    end: Option<u32>,
    filter: &str,
) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(user_email.as_bytes());
    let prefix: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let mut raw = Vec::with_capacity(16 + filter.len());
    for n in [page, size, start, end.unwrap_or(u32::MAX)] {
        raw.extend_from_slice(&n.to_be_bytes());
    }
    raw.extend_from_slice(filter.as_bytes());
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn decode_page_token(token: &str) -> Option<(u32, u32, u32, Option<u32>)> {
    decode_page_token_ext(token)
        .filter(|t| t.4.is_empty())
        .map(|t| (t.0, t.1, t.2, t.3))
}

/// Page, page size, start, end and filter of a token made by [`encode_page_token_ext`].
pub(super) fn decode_page_token_ext(token: &str) -> Option<(u32, u32, u32, Option<u32>, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.get(32..)?)
        .ok()?;
    if raw.len() < 16 {
        return None;
    }
    let n = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let end = n(12);
    let filter = String::from_utf8(raw[16..].to_vec()).ok()?;
    Some((n(0), n(4), n(8), (end != u32::MAX).then_some(end), filter))
}

pub(super) fn parse_index_range(s: &str) -> Option<(u32, Option<u32>)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    if a.is_empty() || !a.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let start = a.parse().ok()?;
    let end = match b {
        None | Some("") => None,
        Some(b) if b.bytes().all(|c| c.is_ascii_digit()) => Some(b.parse().ok()?),
        Some(_) => return None,
    };
    Some((start, end))
}

async fn list_vehicles(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let caller = match gate(&sh, &headers, &q, kill.as_ref().map(|k| &k.0)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = caller.now;
    let (page, size, start, end) = if let Some(t) = q.get("pageToken") {
        match decode_page_token(t) {
            Some(v) => v,
            None => {
                return backend_error(
                    now,
                    StatusCode::BAD_REQUEST,
                    40000,
                    "Bad Request: invalid pageToken",
                );
            }
        }
    } else {
        let size = match q.get("pageSize").map(|s| s.parse::<u32>()) {
            None => 60,
            Some(Ok(n)) if (1..=60).contains(&n) => n,
            Some(_) => {
                return backend_error(
                    now,
                    StatusCode::BAD_REQUEST,
                    40000,
                    "Bad Request: pageSize must be between 1 and 60",
                );
            }
        };
        let (start, end) = match q.get("indexRange").map(|s| parse_index_range(s)) {
            None => (0, None),
            Some(Some(r)) => r,
            Some(None) => {
                return backend_error(
                    now,
                    StatusCode::BAD_REQUEST,
                    40000,
                    "Bad Request: invalid indexRange",
                );
            }
        };
        (1, size, start, end)
    };
    let mut g = sh.lock();
    let fail_from = g.cfg.faults.fail_from_page;
    if fail_from > 0 && page >= fail_from {
        g.stats.fault("fail_from_page");
        drop(g);
        return gateway_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "Internal Error",
        );
    }
    if page == 2 && g.cfg.faults.page_shift_keep_total {
        g.stats.fault("page_shift_keep_total");
        let wall = g.wall_now();
        g.world.shift_keep_total(caller.user, wall);
    }
    if page > 1 {
        let p = g.cfg.faults.page_shift;
        if g.draw(p) {
            g.stats.fault("page_shift");
            let wall = g.wall_now();
            g.world.mutate_user(caller.user, wall);
        }
    }
    if g.cfg.faults.bare_40400 && !g.world.users[caller.user].vehicles.is_empty() {
        g.stats.fault("bare_40400");
        drop(g);
        let body = json!({"uuid": uuid::Uuid::new_v4().to_string(), "code": 40400,
                          "timestamp": crate::timefmt::format(now)});
        let mut resp = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/hal+json")],
            body.to_string(),
        )
            .into_response();
        base_headers(&mut resp, true, None);
        return resp;
    }
    let legacy = g.cfg.legacy_shapes;
    let (no_total, next_loops) = (g.cfg.faults.list_no_total, g.cfg.faults.next_loops);
    if no_total {
        g.stats.fault("list_no_total");
    }
    if next_loops {
        g.stats.fault("next_loops");
    }
    let user = &g.world.users[caller.user];
    let email = user.email.clone();
    let all = &user.vehicles;
    let lo = (start as usize).min(all.len());
    let hi = end
        .map_or(all.len(), |e| (e as usize + 1).min(all.len()))
        .max(lo);
    let selected = &all[lo..hi];
    if selected.is_empty() {
        drop(g);
        return if legacy {
            backend_error(now, StatusCode::NOT_FOUND, 40410, "No vehicule found")
        } else {
            backend_error(now, StatusCode::NOT_FOUND, 40400, "No vehicle found")
        };
    }
    let total = u32::try_from(selected.len()).unwrap_or(u32::MAX);
    let total_pages = total.div_ceil(size).max(1);
    let page = page.clamp(1, total_pages);
    let from = ((page - 1) * size) as usize;
    let to = (from + size as usize).min(selected.len());
    let base_api = g.cfg.public_api_base.clone();
    let items: Vec<Value> = selected[from..to]
        .iter()
        .map(|v| world::vehicle_json(caller.brand, v, &base_api))
        .collect();
    let no_embedded = {
        let p = g.cfg.faults.no_embedded;
        let hit = g.draw(p);
        if hit {
            g.stats.fault("no_embedded");
        }
        hit
    };
    drop(g);
    let link = |p: u32| {
        json!({"href": format!(
            "{base_api}/user/vehicles?pageToken={}",
            encode_page_token(&email, p, size, start, end)
        )})
    };
    let mut links = serde_json::Map::new();
    if legacy {
        links.insert(
            "self".into(),
            json!({"href": format!("{base_api}/user/vehicles?indexRange={start}-&pageSize={size}&locale=fr-FR")}),
        );
    } else {
        links.insert("last".into(), link(total_pages));
        links.insert("self".into(), link(page));
        links.insert("first".into(), link(1));
        if page > 1 {
            links.insert("prev".into(), link(page - 1));
        }
    }
    if next_loops {
        links.insert("next".into(), link(page));
    } else if page < total_pages {
        links.insert("next".into(), link(page + 1));
    }
    let mut body = serde_json::Map::new();
    body.insert("_links".into(), Value::Object(links));
    if !no_total {
        body.insert("total".into(), json!(total));
    }
    if !legacy && !no_total {
        body.insert("totalPage".into(), json!(total_pages));
        body.insert("currentPage".into(), json!(page));
    }
    if !no_embedded {
        body.insert("_embedded".into(), json!({"vehicles": items}));
    }
    hal_ok(&sh, &Value::Object(body), caller.limits)
}

async fn one_vehicle(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let caller = match gate(&sh, &headers, &q, kill.as_ref().map(|k| &k.0)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let g = sh.lock();
    let base = g.cfg.public_api_base.clone();
    let found = g.world.users[caller.user]
        .vehicles
        .iter()
        .find(|v| v.id == id)
        .map(|v| world::vehicle_json(caller.brand, v, &base));
    drop(g);
    match found {
        Some(v) => hal_ok(&sh, &v, caller.limits),
        None => not_associated(caller.now),
    }
}

/// 403 for a vehicle id that is not on the caller's account.
pub(super) fn not_associated(at: DateTime<Utc>) -> Response {
    backend_error(
        at,
        StatusCode::FORBIDDEN,
        40300,
        "Forbidden: this vehicle is not associated with the user",
    )
}

async fn status(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    let caller = match gate(&sh, &headers, &q, kill.as_ref().map(|k| &k.0)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if q.contains_key("extension") {
        return backend_error(
            caller.now,
            StatusCode::BAD_REQUEST,
            40000,
            "Bad Request: unsupported parameter extension",
        );
    }
    let mut g = sh.lock();
    let shuffle = g.draw(0.5);
    let base = g.cfg.public_api_base.clone();
    let missing = g.cfg.status_missing_vins.clone();
    let found = g.observe(caller.user, &id).map(|v| {
        if missing.iter().any(|m| m.eq_ignore_ascii_case(&v.vin)) {
            None
        } else {
            Some(world::status_json(v, &base, shuffle))
        }
    });
    drop(g);
    match found {
        Some(Some(v)) => hal_ok(&sh, &v, caller.limits),
        Some(None) => backend_error(
            caller.now,
            StatusCode::NOT_FOUND,
            40400,
            "Not Found: We didn't find the status for this vehicle.",
        ),
        None => not_associated(caller.now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let t = encode_page_token("user1@example.com", 3, 60, 0, None);
        assert!(t.len() > 32);
        assert_eq!(decode_page_token(&t), Some((3, 60, 0, None)));
        let t = encode_page_token("u", 1, 10, 5, Some(20));
        assert_eq!(decode_page_token(&t), Some((1, 10, 5, Some(20))));
        assert_eq!(decode_page_token("short"), None);
    }

    #[test]
    fn index_ranges() {
        assert_eq!(parse_index_range("0-"), Some((0, None)));
        assert_eq!(parse_index_range("0-9"), Some((0, Some(9))));
        assert_eq!(parse_index_range("12"), Some((12, None)));
        assert_eq!(parse_index_range("a-"), None);
        assert_eq!(parse_index_range("-3"), None);
    }
}
