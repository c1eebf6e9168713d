//! The simulator's HTTP plumbing: the router that merges the IdP, API and admin routes, the
//! middleware that counts every IdP and API request by route key and status, the accept loop
//! (HTTP/1.1 with keep-alive) and [`ConnKill`], the per-connection switch a handler uses to drop
//! its TCP connection without answering.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Shared, admin, api, idp, telematics};

/// Per-connection switch a handler uses to drop its TCP connection without answering.
#[derive(Clone)]
pub(crate) struct ConnKill(pub(super) CancellationToken);

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(idp::routes())
        .merge(api::routes())
        .merge(telematics::routes())
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), record))
        .merge(admin::routes())
        .with_state(shared)
}

/// Counts every request of the IdP and the API, by endpoint and status, and tracks peak rates.
/// The key is the method and the matched route (`GET /connectedcar/v4/user/vehicles/{id}/trips`).
async fn record(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let key = format!("{} {endpoint}", req.method());
    let is_api = endpoint.starts_with("/connectedcar/");
    sh.lock().stats.arrival(is_api);
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    *sh.lock()
        .stats
        .requests
        .entry(key)
        .or_default()
        .entry(status)
        .or_default() += 1;
    resp
}

pub(super) async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let kill = CancellationToken::new();
            let k = kill.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnKill(k.clone()));
                    router.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            // Dropping the connection future closes the socket without a response.
            tokio::select! {
                _ = conn => {}
                () = kill.cancelled() => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}
