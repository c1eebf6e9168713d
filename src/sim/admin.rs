//! The simulator's admin surface under `/_sim/`, for black-box scripts (the Rust handle offers the
//! same to in-process tests). Requests here are not counted in the statistics.
//!
//! | Method and path | Effect |
//! |---|---|
//! | `GET /_sim/stats` | counters as JSON |
//! | `POST /_sim/stats/reset` | zero the counters |
//! | `GET /_sim/faults`, `PUT /_sim/faults` | read or replace the fault switches (JSON) |
//! | `POST /_sim/tick?n=N` | apply N world mutations |
//! | `GET /_sim/events` | the world's change log |
//! | `GET /_sim/users` | users, passwords, brands, vehicle counts |
//! | `POST /_sim/revoke?user=EMAIL` | revoke a user's tokens |
//! | `POST /_sim/clock/advance?secs=N` | move the token clock forward |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{Faults, Shared, Stats};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/stats/reset", post(reset))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/tick", post(tick))
        .route("/_sim/events", get(events))
        .route("/_sim/users", get(users))
        .route("/_sim/revoke", post(revoke))
        .route("/_sim/clock/advance", post(advance))
}

async fn stats(State(sh): State<Arc<Shared>>) -> Json<Stats> {
    Json(sh.lock().stats.clone())
}

async fn reset(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.lock().stats = Stats::default();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(sh): State<Arc<Shared>>) -> Json<Faults> {
    Json(sh.lock().cfg.faults.clone())
}

async fn put_faults(State(sh): State<Arc<Shared>>, Json(f): Json<Faults>) -> StatusCode {
    sh.lock().cfg.faults = f;
    StatusCode::NO_CONTENT
}

async fn tick(State(sh): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    let events = sh.lock().tick(n);
    Json(json!({"events": events})).into_response()
}

async fn events(State(sh): State<Arc<Shared>>) -> Response {
    Json(json!(sh.lock().world.log)).into_response()
}

async fn users(State(sh): State<Arc<Shared>>) -> Response {
    let g = sh.lock();
    let list: Vec<_> = g
        .world
        .users
        .iter()
        .map(|u| json!({"email": u.email, "password": u.password, "brand": u.brand, "realm": u.brand.realm(), "vehicles": u.vehicles.len()}))
        .collect();
    Json(json!(list)).into_response()
}

async fn revoke(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = sh.lock();
    let Some(u) = q.get("user").and_then(|e| g.world.user_index(e)) else {
        return (StatusCode::NOT_FOUND, "unknown user").into_response();
    };
    g.tokens.revoke_user(u);
    StatusCode::NO_CONTENT.into_response()
}

async fn advance(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let secs: u64 = q.get("secs").and_then(|n| n.parse().ok()).unwrap_or(0);
    sh.lock().clock_offset += Duration::from_secs(secs);
    StatusCode::NO_CONTENT.into_response()
}
