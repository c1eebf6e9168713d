//! A simulator of the Stellantis `connectedcar/v4` B2C API and its `idpcvs` OAuth2 identity
//! provider, faithful to the facts collected in `docs/simulator.md`: rotating refresh tokens with an absolute lifetime, expiring
//! access tokens, HAL pagination with opaque `pageToken` links, the gateway's and the backend's
//! error bodies, per-client quotas with `X-RateLimit-*` headers and `Retry-After`, and switchable
//! faults (5xx bursts, "CORVET Error", slow and dropped responses, truncated or malformed JSON, a
//! 200 without `_embedded`, an IdP that times out).
//!
//! It owns one listener that serves both hosts' paths: `/am/oauth2/...` (IdP) and
//! `/connectedcar/v4/...` (API), plus an admin surface under `/_sim/` for black-box scripts.
//! This module owns the shared state ([`SimHandle`], the clock, the quota table); `config` the
//! settings and fault switches, `tokens` the IdP's token tables, `server` the router, counting
//! middleware and accept loop, `stats` the counters, `world` the users and vehicles, `idp` and
//! `api` the handlers, `admin` the `/_sim/` surface.
//! In-process tests drive it through [`SimHandle`]. It shares nothing with the client code except
//! the brand fact table, so a client bug cannot hide behind a matching simulator bug.

mod admin;
mod api;
mod config;
mod idp;
mod server;
mod stats;
mod tokens;
pub mod world;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, PasswordGrant, RetryAfterForm, SimConfig,
};
pub(crate) use server::ConnKill;
pub use stats::Stats;
pub use world::{SimUser, WorldEvent};

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
    tokens: tokens::Tokens,
    quota: HashMap<String, Quota>,
    stats: Stats,
    rng: StdRng,
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
        let now = self.now();
        let ttl = self.cfg.access_ttl;
        self.tokens.issue_chain(user, client_id, scope, now, ttl)
    }

    /// Applies `n` world mutations now; returns the number of events logged.
    fn tick(&mut self, n: usize) -> usize {
        let wall = self.wall_now();
        (0..n).map(|_| self.world.tick(wall)).sum()
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
            tokens: tokens::Tokens::default(),
            quota: HashMap::new(),
            stats: Stats::default(),
            clock_offset: Duration::ZERO,
            last_auto_tick: Instant::now(),
        }),
    });
    let router = server::router(shared.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server::accept_loop(listener, router, cancel.clone()));
    Ok(SimHandle {
        addr,
        shared,
        cancel,
        task: Some(task),
    })
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
            g.tokens.revoke_user(u);
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
        g.tokens
            .refresh
            .values()
            .filter(|t| t.user == u && t.state == tokens::RefreshState::Live && now < t.born + ttl)
            .count()
    }
    /// Whether the IdP would accept this refresh token now.
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        let g = self.shared.lock();
        g.tokens.refresh_is_live(token, g.now(), g.cfg.refresh_ttl)
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
