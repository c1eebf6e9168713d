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
//! | `POST /_sim/clock/advance?secs=N` | move the sim clock forward (tokens, cars, ticks) |
//! | `GET /_sim/clock` | `{"now": sim time, "time_scale": f}` |
//! | `PUT /_sim/clock?scale=F` | set the clock's speed (sim seconds per real second) |
//! | `GET /_sim/drives`, `GET /_sim/charges`, `GET /_sim/alerts` | the ground truth, in sim time |

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
        .route("/_sim/clock", get(clock).put(set_clock))
        .route("/_sim/drives", get(drives))
        .route("/_sim/charges", get(charges))
        .route("/_sim/alerts", get(alerts))
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
    sh.lock().clock.advance(Duration::from_secs(secs));
    StatusCode::NO_CONTENT.into_response()
}

async fn clock(State(sh): State<Arc<Shared>>) -> Response {
    let g = sh.lock();
    Json(json!({"now": super::life::api_time(g.wall_now()), "time_scale": g.clock.scale()}))
        .into_response()
}

async fn set_clock(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(scale) = q.get("scale").and_then(|s| s.parse::<f64>().ok()) else {
        return (StatusCode::BAD_REQUEST, "scale=F expected").into_response();
    };
    let mut g = sh.lock();
    g.clock.set_scale(scale);
    g.cfg.time_scale = g.clock.scale();
    StatusCode::NO_CONTENT.into_response()
}

async fn drives(State(sh): State<Arc<Shared>>) -> Response {
    let mut g = sh.lock();
    g.advance_lives();
    let mut all: Vec<&super::SimDrive> = g.world.lives().flat_map(|l| l.drives.iter()).collect();
    all.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
    Json(json!(all)).into_response()
}

async fn charges(State(sh): State<Arc<Shared>>) -> Response {
    let mut g = sh.lock();
    g.advance_lives();
    let mut all: Vec<&super::SimCharge> = g.world.lives().flat_map(|l| l.charges.iter()).collect();
    all.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
    Json(json!(all)).into_response()
}

async fn alerts(State(sh): State<Arc<Shared>>) -> Response {
    let mut g = sh.lock();
    g.advance_lives();
    let mut all: Vec<&super::SimAlert> = g.world.lives().flat_map(|l| l.alerts.iter()).collect();
    all.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
    Json(json!(all)).into_response()
}
