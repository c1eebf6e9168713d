//! A simulator of the Stellantis `connectedcar/v4` B2C API and its `idpcvs` OAuth2 identity
//! provider, faithful to the facts in `docs/api.md` and `docs/simulator.md`: rotating refresh
//! tokens with an absolute lifetime, expiring access tokens, HAL pagination with opaque
//! `pageToken` links, the gateway's and the backend's error bodies, per-client quotas with
//! `X-RateLimit-*` headers and `Retry-After`, and switchable faults (5xx bursts, "CORVET
//! Error", slow and dropped responses, truncated or malformed JSON, a 200 without `_embedded`,
//! an IdP that times out, and the adversarial switches). Its cars live
//! on one clock (`time_scale`): they drive, park and charge, and `/status`, `/trips`, `/alerts`
//! and `/maintenance` report it, while [`SimHandle::drives`] and friends keep the ground truth.
//!
//! It owns one listener that serves both hosts' paths: `/am/oauth2/...` (IdP) and
//! `/connectedcar/v4/...` (API), plus an admin surface under `/_sim/` for black-box scripts.
//! This module owns the shared state ([`SimHandle`], the quota table); `config` the settings and
//! fault switches, `clock` the one sim clock, `tokens` the IdP's token tables, `server` the
//! router, counting middleware and accept loop, `stats` the counters, `world` the users and
//! vehicles, `life` each car's life and the ground truth, `idp`, `api` and `telematics` the
//! handlers, `admin` the `/_sim/` surface.
//! In-process tests drive it through [`SimHandle`]. It shares nothing with the client code except
//! the brand fact table, so a client bug cannot hide behind a matching simulator bug.

mod admin;
mod api;
mod clock;
mod config;
mod idp;
pub mod life;
mod server;
mod stats;
mod telematics;
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
pub use life::{SimAlert, SimCharge, SimDrive};
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
    clock: clock::SimClock,
    /// Sim time of the last list mutation made by `change_every`.
    last_auto_tick: chrono::DateTime<chrono::Utc>,
}

impl Inner {
    /// The sim clock as an `Instant`, for token and code lifetimes.
    fn now(&self) -> Instant {
        self.clock.instant()
    }

    /// The sim clock.
    fn wall_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Plays every car's life up to now (cars taken off an account live on too).
    fn advance_lives(&mut self) {
        let now = self.wall_now();
        for u in &mut self.world.users {
            for v in u.vehicles.iter_mut().chain(u.removed.iter_mut()) {
                v.life.advance(now);
            }
        }
    }

    /// User `user`'s vehicle with this id, its life played up to now.
    fn observe(&mut self, user: usize, id: &str) -> Option<&world::Vehicle> {
        let now = self.wall_now();
        let v = self.world.users[user]
            .vehicles
            .iter_mut()
            .find(|v| v.id == id)?;
        v.life.advance(now);
        Some(v)
    }

    fn draw(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn auto_tick(&mut self) {
        if let Some(every) = self.cfg.change_every
            && !every.is_zero()
        {
            let now = self.wall_now();
            let step = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
            // A long jump of the clock catches up at most 1,000 mutations.
            if now - self.last_auto_tick > step * 1_000 {
                self.last_auto_tick = now - step * 1_000;
            }
            while now - self.last_auto_tick >= step {
                self.last_auto_tick += step;
                let at = self.last_auto_tick;
                self.world.tick(at);
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
pub fn spawn(listener: TcpListener, mut cfg: SimConfig) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    if cfg.public_api_base.is_empty() {
        cfg.public_api_base = format!("http://{addr}/connectedcar/v4");
    }
    let start = cfg.start_time.unwrap_or_else(chrono::Utc::now);
    let world = world::World::generate_at(
        cfg.seed,
        cfg.users,
        &cfg.vehicle_counts,
        cfg.max_vehicles,
        start,
    );
    let mut clock = clock::SimClock::new(start, cfg.time_scale);
    if cfg.catch_up_to_now {
        clock = clock.capped_at_real_time();
    }
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(1)),
            cfg,
            world,
            tokens: tokens::Tokens::default(),
            quota: HashMap::new(),
            stats: Stats::default(),
            clock,
            last_auto_tick: start,
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
    /// Changes any setting at run time (lifetimes, quotas, password grant, `time_scale`, …).
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut g = self.shared.lock();
        f(&mut g.cfg);
        if g.cfg.time_scale != g.clock.scale() {
            let scale = g.cfg.time_scale;
            g.clock.set_scale(scale);
            g.cfg.time_scale = g.clock.scale();
        }
    }
    /// Sets the clock's speed (sim seconds per real second) from now on.
    pub fn set_time_scale(&self, scale: f64) {
        self.configure(|c| c.time_scale = scale);
    }
    /// The simulator's clock now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.lock().wall_now()
    }
    /// Every drive of every car (including cars taken off an account) up to now, in sim time,
    /// ordered by start; a drive under way has `ended: None`.
    pub fn drives(&self) -> Vec<SimDrive> {
        let mut g = self.shared.lock();
        g.advance_lives();
        let mut out: Vec<SimDrive> = g.world.lives().flat_map(|l| l.drives.clone()).collect();
        out.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
        out
    }
    /// Every charge of every car up to now, in sim time, ordered by start; a charge under way
    /// has `ended: None`.
    pub fn charges(&self) -> Vec<SimCharge> {
        let mut g = self.shared.lock();
        g.advance_lives();
        let mut out: Vec<SimCharge> = g.world.lives().flat_map(|l| l.charges.clone()).collect();
        out.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
        out
    }
    /// Every alert every car raised up to now, ordered by start; an active one has
    /// `ended: None`.
    pub fn alerts(&self) -> Vec<SimAlert> {
        let mut g = self.shared.lock();
        g.advance_lives();
        let mut out: Vec<SimAlert> = g.world.lives().flat_map(|l| l.alerts.clone()).collect();
        out.sort_by(|a, b| (a.started, &a.vin).cmp(&(b.started, &b.vin)));
        out
    }
    /// The `/status` body a vehicle (by VIN) would get now, without a request (PHEV energies
    /// in their first order).
    pub fn status_of(&self, vin: &str) -> Option<serde_json::Value> {
        let mut g = self.shared.lock();
        g.advance_lives();
        let base = g.cfg.public_api_base.clone();
        g.world
            .users
            .iter()
            .flat_map(|u| u.vehicles.iter())
            .find(|v| v.vin == vin)
            .map(|v| world::status_json(v, &base, false))
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
    /// Moves the sim clock forward (token expiry, cars' lives, list ticks) without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock.advance(by);
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
pub async fn serve_forever(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let users = cfg.users;
    let handle = spawn(listener, cfg)?;
    tracing::info!(
        idp = %handle.base_url(),
        api = %handle.api_base(),
        users,
        "simulator listening; client id `{DEFAULT_CLIENT_ID}` (or a brand app's preset client), users user1@example.com/password1 …"
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
