//! A simulator of the Stellantis `connectedcar/v4` B2C API and its `idpcvs` OAuth2 identity
//! provider, faithful to `docs/api.md`: rotating refresh tokens with an absolute lifetime, expiring
//! access tokens, HAL pagination with opaque `pageToken` links, the gateway's and the backend's
//! error bodies, per-client quotas with `X-RateLimit-*` headers and `Retry-After`, and switchable
//! faults (5xx bursts, "CORVET Error", slow and dropped responses, truncated or malformed JSON, a
//! 200 without `_embedded`, an IdP that times out).
//!
//! It owns one listener that serves both hosts' paths: `/am/oauth2/...` (IdP) and
//! `/connectedcar/v4/...` (API), plus an admin surface under `/_sim/` for black-box scripts.
//! In-process tests drive it through [`SimHandle`]. It shares nothing with the client code except
//! the brand fact table, so a client bug cannot hide behind a matching simulator bug.

mod admin;
mod api;
mod idp;
pub mod world;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use world::{SimUser, WorldEvent};

/// The app credentials every simulated brand app uses unless configured otherwise.
pub const DEFAULT_CLIENT_ID: &str = "sim-client-id";
/// See [`DEFAULT_CLIENT_ID`].
pub const DEFAULT_CLIENT_SECRET: &str = "sim-client-secret";

/// How `grant_type=password` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PasswordGrant {
    /// As the Stellantis quick-start documents it: username and password give tokens.
    #[default]
    Working,
    /// As the real IdP has answered since January 2024: 400 `server_error`.
    Dead,
}

/// The form of `Retry-After` on a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterForm {
    /// Delay in seconds (`Retry-After: 2`), as the official docs show.
    #[default]
    Seconds,
    /// An HTTP-date (RFC 9110).
    HttpDate,
    /// The form seen in real traffic: `Retry-After: name=rate-limit-1,22248`.
    Odd,
    /// No `Retry-After` header at all.
    Absent,
}

/// Fault switches. Each probability is in `[0, 1]` and is drawn per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Gateway 500 `{"httpCode":"500",…,"moreInformation":"Internal Error"}`.
    pub gateway_500: f64,
    /// Backend 500 code 50000 "CORVET Error".
    pub corvet_500: f64,
    /// 503 from the gateway.
    pub unavailable_503: f64,
    /// 500 code 50038 "CVS error/user-vins".
    pub cvs_50038: f64,
    /// 429 regardless of the quota (a "429 storm").
    pub rate_limit_storm: f64,
    /// Delay the response by `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// A 200 whose JSON body is cut in half (with a matching Content-Length).
    pub truncated_json: f64,
    /// A 200 whose body is not JSON.
    pub malformed_json: f64,
    /// A 200 listing without `_embedded` (a transient fault seen in real traffic).
    pub no_embedded: f64,
    /// The TCP connection is closed without a response.
    pub drop_connection: f64,
    /// The IdP's token endpoint stalls for `idp_timeout_ms` before answering.
    pub idp_timeout: f64,
    pub idp_timeout_ms: u64,
    /// The IdP answers 503.
    pub idp_down: f64,
    /// Before serving page 2+ of a listing, the account's vehicle list changes.
    pub page_shift: f64,
    /// Pages numbered this or higher answer a gateway 500 (0 = off): a listing that fails
    /// halfway through.
    pub fail_from_page: u32,
    /// The form of `Retry-After` on 429s.
    pub retry_after_form: RetryAfterForm,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            gateway_500: 0.0,
            corvet_500: 0.0,
            unavailable_503: 0.0,
            cvs_50038: 0.0,
            rate_limit_storm: 0.0,
            slow: 0.0,
            slow_ms: 2_000,
            truncated_json: 0.0,
            malformed_json: 0.0,
            no_embedded: 0.0,
            drop_connection: 0.0,
            idp_timeout: 0.0,
            idp_timeout_ms: 30_000,
            idp_down: 0.0,
            page_shift: 0.0,
            fail_from_page: 0,
            retry_after_form: RetryAfterForm::Seconds,
        }
    }
}

impl Faults {
    /// Sets one switch by name (`gateway_500=0.2`), as the `simulate --fault` flag does.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("fault `{spec}`: expected NAME=VALUE"))?;
        let mut v = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let obj = v.as_object_mut().ok_or("faults are not an object")?;
        if !obj.contains_key(name) {
            return Err(format!(
                "unknown fault `{name}` (known: {})",
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let parsed: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        obj.insert(name.to_owned(), parsed);
        *self = serde_json::from_value(v).map_err(|e| format!("fault `{name}`: {e}"))?;
        Ok(())
    }
}

/// Everything that shapes a simulated world. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the world and of the fault draws.
    pub seed: u64,
    /// Number of users (`user1@example.com`/`password1`, …), brands round-robin.
    pub users: usize,
    /// Exact vehicle counts for the first users (others get 0–`max_vehicles` at random).
    /// Default `[2, 3, 0]`: user1 has two vehicles, user2 three, user3 none (the 404 case).
    pub vehicle_counts: Vec<usize>,
    pub max_vehicles: usize,
    pub client_id: String,
    pub client_secret: String,
    /// Access-token lifetime (`expires_in`).
    pub access_ttl: Duration,
    /// Absolute refresh-token lifetime, counted from the login that started the chain.
    pub refresh_ttl: Duration,
    /// Lifetime of an authorization code.
    pub code_ttl: Duration,
    pub password_grant: PasswordGrant,
    /// RFC 9700 §4.14.2: a replayed rotated refresh token revokes the live one of its chain.
    pub family_revocation: bool,
    /// A rotated refresh token still works once within this window (0 = strict, the default).
    pub refresh_grace: Duration,
    /// Per-client burst quota (requests per second); 0 disables the quota.
    pub burst_per_second: u32,
    /// Per-client daily quota (fixed 24 h windows from start); 0 disables it.
    pub daily_limit: u64,
    /// The world mutates once per this interval (lazily, on requests); `None` = only on demand.
    pub change_every: Option<Duration>,
    /// 2021 body shapes: `404 40410 "No vehicule found"` and an envelope without `totalPage`.
    pub legacy_shapes: bool,
    /// Base URL used in vehicles' own `_links` (the real host, as in captures).
    pub public_api_base: String,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            users: 3,
            vehicle_counts: vec![2, 3, 0],
            max_vehicles: 4,
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            access_ttl: Duration::from_secs(3599),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            code_ttl: Duration::from_secs(120),
            password_grant: PasswordGrant::Working,
            family_revocation: false,
            refresh_grace: Duration::ZERO,
            burst_per_second: 100,
            daily_limit: 100_000,
            change_every: None,
            legacy_shapes: false,
            public_api_base: "https://api.groupe-psa.com/connectedcar/v4".into(),
            faults: Faults::default(),
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// `"GET /connectedcar/v4/user/vehicles"` → status → count.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    pub api_requests: u64,
    pub idp_requests: u64,
    /// The most API requests that arrived within any one-second window.
    pub peak_api_rps: usize,
    /// The same for the identity provider.
    pub peak_idp_rps: usize,
    /// 429s because a client went over its quota.
    pub over_quota: u64,
    /// Successful grants by `grant_type`.
    pub grants: BTreeMap<String, u64>,
    pub invalid_grant: u64,
    /// Presentations of a refresh token that had already been rotated out.
    pub reused_refresh: u64,
    /// Faults injected, by switch name.
    pub faults_injected: BTreeMap<String, u64>,
    #[serde(skip)]
    api_window: VecDeque<Instant>,
    #[serde(skip)]
    idp_window: VecDeque<Instant>,
}

impl Stats {
    fn arrival(&mut self, api: bool) {
        let now = Instant::now();
        let (window, peak) = if api {
            self.api_requests += 1;
            (&mut self.api_window, &mut self.peak_api_rps)
        } else {
            self.idp_requests += 1;
            (&mut self.idp_window, &mut self.peak_idp_rps)
        };
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        window.push_back(now);
        *peak = (*peak).max(window.len());
    }

    /// Total responses with this status for this endpoint key.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Total responses with this status over all endpoints.
    pub fn status_total(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    fn fault(&mut self, name: &str) {
        *self.faults_injected.entry(name.to_owned()).or_default() += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshState {
    Live,
    Rotated,
    Revoked,
}

#[derive(Debug, Clone)]
struct RefreshToken {
    user: usize,
    client_id: String,
    chain: u64,
    /// When the login that started this chain happened (absolute lifetime).
    born: Instant,
    state: RefreshState,
    rotated_at: Option<Instant>,
    scope: String,
}

#[derive(Debug, Clone)]
struct AccessToken {
    user: usize,
    chain: u64,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct AuthCode {
    user: usize,
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    scope: String,
    expires: Instant,
    used: bool,
}

#[derive(Debug, Default)]
struct Quota {
    second: VecDeque<Instant>,
    day_start: Option<Instant>,
    day_used: u64,
}

/// The simulator's mutable state, behind one mutex (handlers hold it briefly, never across IO).
struct Inner {
    cfg: SimConfig,
    world: world::World,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, AuthCode>,
    quota: HashMap<String, Quota>,
    stats: Stats,
    rng: StdRng,
    next_chain: u64,
    clock_offset: Duration,
    last_auto_tick: Instant,
}

impl Inner {
    /// The simulator's clock for token lifetimes (tests can move it forward).
    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn wall_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::from_std(self.clock_offset).unwrap_or(chrono::Duration::zero())
    }

    fn draw(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn auto_tick(&mut self) {
        if let Some(every) = self.cfg.change_every
            && !every.is_zero()
        {
            let now = Instant::now();
            while now.duration_since(self.last_auto_tick) >= every {
                self.last_auto_tick += every;
                let wall = self.wall_now();
                self.world.tick(wall);
            }
        }
    }

    /// Issues a fresh access + refresh token pair for a new login chain.
    fn issue_chain(&mut self, user: usize, client_id: &str, scope: &str) -> (String, String) {
        self.next_chain += 1;
        let chain = self.next_chain;
        let born = self.now();
        self.issue_pair(user, client_id, chain, born, scope)
    }

    fn issue_pair(
        &mut self,
        user: usize,
        client_id: &str,
        chain: u64,
        born: Instant,
        scope: &str,
    ) -> (String, String) {
        let access = uuid::Uuid::new_v4().to_string();
        let refresh = uuid::Uuid::new_v4().to_string();
        let expires = self.now() + self.cfg.access_ttl;
        self.access.insert(
            access.clone(),
            AccessToken {
                user,
                chain,
                expires,
            },
        );
        self.refresh.insert(
            refresh.clone(),
            RefreshToken {
                user,
                client_id: client_id.to_owned(),
                chain,
                born,
                state: RefreshState::Live,
                rotated_at: None,
                scope: scope.to_owned(),
            },
        );
        (access, refresh)
    }

    /// Revokes every token of user `u` server-side.
    fn revoke_user(&mut self, u: usize) {
        let chains: Vec<u64> = self
            .refresh
            .values()
            .filter(|t| t.user == u)
            .map(|t| t.chain)
            .collect();
        for c in chains {
            self.revoke_chain(c);
        }
    }

    /// Applies `n` world mutations now; returns the number of events logged.
    fn tick(&mut self, n: usize) -> usize {
        let wall = self.wall_now();
        (0..n).map(|_| self.world.tick(wall)).sum()
    }

    fn revoke_chain(&mut self, chain: u64) {
        for t in self.refresh.values_mut().filter(|t| t.chain == chain) {
            t.state = RefreshState::Revoked;
        }
        self.access.retain(|_, a| a.chain != chain);
    }
}

/// State shared by every handler.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A handler that panicked mid-update cannot leave a half-updated token table behind in a
        // way that matters to tests, so a poisoned lock is taken over rather than propagated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-connection switch a handler uses to drop its TCP connection without answering.
#[derive(Clone)]
pub(crate) struct ConnKill(CancellationToken);

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the simulator on an already-bound listener (use port 0 in tests).
pub fn spawn(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let world = world::World::generate(cfg.seed, cfg.users, &cfg.vehicle_counts, cfg.max_vehicles);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(1)),
            cfg,
            world,
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            quota: HashMap::new(),
            stats: Stats::default(),
            next_chain: 0,
            clock_offset: Duration::ZERO,
            last_auto_tick: Instant::now(),
        }),
    });
    let router = router(shared.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, router, cancel.clone()));
    Ok(SimHandle {
        addr,
        shared,
        cancel,
        task: Some(task),
    })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(idp::routes())
        .merge(api::routes())
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), record))
        .merge(admin::routes())
        .with_state(shared)
}

/// Counts every request of the IdP and the API, by endpoint and status, and tracks peak rates.
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

async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
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

impl SimHandle {
    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`: the IdP base URL (its paths start with `/am/oauth2`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The API base URL, `…/connectedcar/v4`.
    pub fn api_base(&self) -> String {
        format!("http://{}/connectedcar/v4", self.addr)
    }
    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }
    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.shared.lock().stats = Stats::default();
    }
    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().cfg.faults = faults;
    }
    /// Changes any setting at run time (lifetimes, quotas, password grant, …).
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.shared.lock().cfg);
    }
    /// Applies `n` world mutations now; returns the number of events logged.
    pub fn tick(&self, n: usize) -> usize {
        self.shared.lock().tick(n)
    }
    /// Everything the simulator did to vehicle lists, in order.
    pub fn events(&self) -> Vec<WorldEvent> {
        self.shared.lock().world.log.clone()
    }
    /// The users (e-mail, password, brand) in order.
    pub fn users(&self) -> Vec<(String, String, crate::brand::Brand)> {
        self.shared
            .lock()
            .world
            .users
            .iter()
            .map(|u| (u.email.clone(), u.password.clone(), u.brand))
            .collect()
    }
    /// A user's current vehicles as the API would list them (id, vin, JSON).
    pub fn vehicles(&self, email: &str) -> Vec<serde_json::Value> {
        let g = self.shared.lock();
        let base = g.cfg.public_api_base.clone();
        g.world
            .user_index(email)
            .map(|u| {
                let user = &g.world.users[u];
                user.vehicles
                    .iter()
                    .map(|v| world::vehicle_json(user.brand, v, &base))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Logs a user in out of band (as the phone app would) and returns a live refresh token.
    pub fn issue_refresh_token(&self, email: &str) -> Option<String> {
        let mut g = self.shared.lock();
        let u = g.world.user_index(email)?;
        let client = g.cfg.client_id.clone();
        Some(g.issue_chain(u, &client, "openid profile").1)
    }
    /// Revokes every token of a user server-side.
    pub fn revoke_user(&self, email: &str) {
        let mut g = self.shared.lock();
        if let Some(u) = g.world.user_index(email) {
            g.revoke_user(u);
        }
    }
    /// How many refresh tokens of this user the IdP would accept now.
    pub fn live_refresh_tokens(&self, email: &str) -> usize {
        let g = self.shared.lock();
        let Some(u) = g.world.user_index(email) else {
            return 0;
        };
        let now = g.now();
        let ttl = g.cfg.refresh_ttl;
        g.refresh
            .values()
            .filter(|t| t.user == u && t.state == RefreshState::Live && now < t.born + ttl)
            .count()
    }
    /// Whether the IdP would accept this refresh token now.
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        let g = self.shared.lock();
        let now = g.now();
        g.refresh
            .get(token)
            .is_some_and(|t| t.state == RefreshState::Live && now < t.born + g.cfg.refresh_ttl)
    }
    /// Moves the token clock forward (expiry tests without sleeping).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock_offset += by;
    }
    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs the simulator in the foreground until Ctrl-C (the `simulate` subcommand).
pub async fn serve_forever(listen: SocketAddr, cfg: SimConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let users = cfg.users;
    let handle = spawn(listener, cfg)?;
    tracing::info!(
        idp = %handle.base_url(),
        api = %handle.api_base(),
        users,
        "simulator listening; client id `{DEFAULT_CLIENT_ID}`, users user1@example.com/password1 …"
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
