//! The optional operations listener (`[http] listen`): `/metrics` (Prometheus text format),
//! `/healthz` (the event loop is alive: the watchdog's signal) and `/readyz` (database writable,
//! last pass recent). axum on its own task; it stops when the daemon's shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::ops::Shared;

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("[http] listen = \"{addr}\": cannot listen: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves until `stop`; returns the bound address and the server's task.
pub async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ListenError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("the operations listener failed: {e}");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || shared.metrics.render()).await;
    match rendered {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let silence = shared.liveness.silence();
    if shared.liveness.is_alive() {
        text(
            StatusCode::OK,
            format!("ok: event loop turned {} ms ago\n", silence.as_millis()),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop silent for {} s\n", silence.as_secs()),
        )
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let r = tokio::task::spawn_blocking(move || shared.readiness()).await;
    match r {
        Ok(r) => text(
            if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            r.lines.join("\n") + "\n",
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
