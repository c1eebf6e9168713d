//! The program people run: one pass over every account (`--once`), or the daemon that runs
//! passes on the cron schedule until SIGTERM.
//!
//! One event loop owns the state: the cron job and the signal thread only send typed events
//! ([`Event`], [`Sig`]); [`Daemon`]'s `on_tick`, `on_pass_done`, `on_reload` and `on_shutdown` are
//! plain methods, so "passes never overlap" is decided in one place.
//!
//! Stopping (SIGTERM/SIGINT, in the daemon and in `--once` alike): scheduling stops, the running
//! pass gets `shutdown_timeout` to finish (a second signal cuts that short), then its API fetches
//! are abandoned (database writes are whole transactions, so nothing committed is lost). A token
//! exchange that has been sent is NOT abandoned: it runs in a task of its own, and shutdown waits
//! for every one to finish and be saved, whatever signal arrives ([`TokenManager::drain`]); records
//! that could not be saved are written once more. Runs cut off are closed as `aborted`.
//!
//! SIGHUP reloads the configuration and keeps the old one if the new one is invalid; records kept
//! in memory after a failed save survive the reload. One instance per state directory
//! (`daemon.lock`). The watchdog is fed only while no pass is stuck.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::auth::TokenManager;
use crate::auth::store::TokenStore;
use crate::config::{self, Account, Checks, Config};
use crate::ratelimit::Limits;
use crate::store::{Db, DbError};
use crate::sync::{Engine, Outcome};
use crate::{exit, notify};

/// Why the program could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "another stellantis-sync is already running with state directory {dir} (lock {lock}); stop it first"
    )]
    AlreadyRunning { dir: String, lock: String },
    #[error("cannot create or open the state directory {dir}: {reason}")]
    StateDir { dir: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Everything a pass needs; rebuilt on reload.
pub struct App {
    pub cfg: Config,
    pub engine: Arc<Engine>,
    pub limits: Arc<Limits>,
}

/// The summary of one pass.
#[derive(Debug, Clone, Default)]
pub struct PassSummary {
    pub outcomes: Vec<(String, Outcome)>,
    pub elapsed: Duration,
}

impl PassSummary {
    /// One line for logs and `STATUS=`.
    pub fn line(&self) -> String {
        let count = |f: fn(&Outcome) -> bool| self.outcomes.iter().filter(|(_, o)| f(o)).count();
        let ok = count(|o| matches!(o, Outcome::Ok { .. }));
        let reauth = count(|o| matches!(o, Outcome::NeedsReauth { .. }));
        let changes: usize = self
            .outcomes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Ok { changes, .. } => *changes,
                _ => 0,
            })
            .sum();
        format!(
            "last pass: {ok}/{} accounts synced, {changes} changes, {reauth} need re-authorization, {:.1} s",
            self.outcomes.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Takes the per-state-directory instance lock (held until the returned file is dropped).
pub fn instance_lock(state_dir: &Path) -> Result<File, StartError> {
    let state_err = |e: std::io::Error| StartError::StateDir {
        dir: state_dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(state_dir)
        .map_err(state_err)?;
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(state_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => Err(StartError::AlreadyRunning {
            dir: state_dir.display().to_string(),
            lock: path.display().to_string(),
        }),
    }
}

/// Builds the engine for a configuration. On reload, `prev` hands over the database connection
/// and the token manager's records kept in memory and exchanges in flight.
pub fn build(cfg: Config, prev: Option<&App>) -> Result<App, StartError> {
    let tokens_store = TokenStore::new(&cfg.state_dir);
    tokens_store.prepare().map_err(|e| StartError::StateDir {
        dir: cfg.state_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(&cfg.state_dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
            tracing::warn!(
                "the state directory {} is world-writable: anyone could replace the rate budget or the database; run `chmod o-w` on it (tokens/ stays 0700)",
                cfg.state_dir.display()
            );
        }
    }
    let db = match prev {
        Some(p) => p.engine.db.clone(),
        None => {
            if let Some(parent) = cfg.database.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| StartError::StateDir {
                    dir: parent.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let mut db = Db::open(&cfg.database)?;
            // We hold the instance lock: a run still `running` belongs to a process that died.
            db.close_abandoned_runs("the process running it ended before it finished")?;
            Arc::new(Mutex::new(db))
        }
    };
    let limits = Arc::new(Limits::new(
        cfg.api.rate,
        cfg.idp.rate,
        Some(&cfg.state_dir),
    ));
    let tokens = Arc::new(match prev {
        Some(p) => {
            p.engine
                .tokens
                .reconfigured(&cfg.state_dir, cfg.tokens, &cfg.idp, limits.clone())
        }
        None => TokenManager::in_dir(&cfg.state_dir, cfg.tokens, &cfg.idp, limits.clone()),
    });
    let api = ApiClient::new(
        crate::http::client(cfg.api.timeout),
        cfg.api.base.clone(),
        limits.clone(),
        cfg.api.page_size,
    );
    let engine = Arc::new(Engine {
        api,
        tokens,
        db,
        retry: cfg.retry,
    });
    Ok(App {
        cfg,
        engine,
        limits,
    })
}

/// Unix milliseconds now (for the progress stamp).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One pass over `accounts`, at most `max_concurrent` at a time. Accounts not yet started when
/// `stop` fires are skipped. `progress` is stamped whenever an account finishes.
pub async fn run_pass(
    engine: Arc<Engine>,
    accounts: Vec<Account>,
    max_concurrent: usize,
    stop: CancellationToken,
    progress: Arc<AtomicU64>,
) -> PassSummary {
    let started = Instant::now();
    progress.store(now_ms(), Ordering::Relaxed);
    let unsaved = engine.tokens.flush_pending().await;
    if !unsaved.is_empty() {
        tracing::error!(accounts = ?unsaved, "rotated refresh tokens are still only in memory: free space or fix permissions in the state directory");
    }
    let sem = Arc::new(Semaphore::new(max_concurrent.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for a in accounts {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p,
            () = stop.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let (engine, progress) = (engine.clone(), progress.clone());
        set.spawn(async move {
            let outcome = engine.sync_account(&a).await;
            progress.store(now_ms(), Ordering::Relaxed);
            drop(permit);
            (a.name, outcome)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => tracing::error!("an account task failed: {e}"),
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    engine.api.limits().save();
    let db = engine.db.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut g = db.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = g.checkpoint_if_large(8 * 1024 * 1024) {
            tracing::warn!("WAL checkpoint failed: {e}");
        }
    })
    .await;
    PassSummary {
        outcomes,
        elapsed: started.elapsed(),
    }
}

/// The signals the program handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM: stop.
    Terminate,
    /// SIGINT (Ctrl-C): stop.
    Interrupt,
    /// SIGHUP: reload the configuration.
    Reload,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Terminate => "SIGTERM",
            Sig::Interrupt => "SIGINT",
            Sig::Reload => "SIGHUP",
        }
    }
}

/// What the event loop reacts to.
enum Event {
    Tick,
    Signal(Sig),
    PassDone(PassSummary),
}

fn spawn_signal_thread(
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let sig = match s {
                    SIGHUP => Sig::Reload,
                    SIGINT => Sig::Interrupt,
                    _ => Sig::Terminate,
                };
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(handle)
}

/// The end of every run, after the last pass: wait for token exchanges in flight, write what was
/// kept in memory, close runs that were cut off, save the budget.
async fn finish(app: &App) {
    let tokens = &app.engine.tokens;
    if !tokens.drain(Duration::from_secs(5)).await {
        tracing::error!("a token exchange did not finish within the identity provider's timeout");
    }
    let mut unsaved = tokens.flush_pending().await;
    for _ in 0..4 {
        if unsaved.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        unsaved = tokens.flush_pending().await;
    }
    if !unsaved.is_empty() {
        tracing::error!(accounts = ?unsaved, "rotated refresh tokens could not be written and are lost at exit; these accounts will need `login`");
    }
    let db = app.engine.db.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut g = db.lock().unwrap_or_else(|e| e.into_inner());
        g.close_abandoned_runs(
            "the run could not be recorded as finished (stopped by a signal, or its outcome could not be written)",
        )
    })
    .await;
    app.limits.save();
}

/// Waits for a pass to end on its own within `timeout` (a signal cuts the wait short), then
/// abandons it: its API fetches stop, its token exchanges carry on (see [`finish`]).
async fn stop_pass(
    mut handle: tokio::task::JoinHandle<()>,
    stop: &CancellationToken,
    timeout: Duration,
    rx: &mut mpsc::UnboundedReceiver<Event>,
) {
    stop.cancel();
    let abort = handle.abort_handle();
    tokio::select! {
        _ = &mut handle => return,
        () = tokio::time::sleep(timeout) => {
            tracing::warn!("the running pass did not finish within {timeout:?}; abandoning its requests (its uncommitted work is rolled back)");
        }
        Some(Event::Signal(s)) = rx.recv() => {
            tracing::warn!("second signal ({}): abandoning the running pass now (committed data is safe; token exchanges in flight still finish)", s.name());
        }
    }
    abort.abort();
    let _ = handle.await;
}

/// `--once`: one pass over every account; returns the exit code. SIGTERM/SIGINT stop it like the
/// daemon (token exchanges in flight finish and are saved).
pub async fn once(cfg: Config) -> u8 {
    let _lock = match instance_lock(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_start(&e);
        }
    };
    let app = match build(cfg, None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_start(&e);
        }
    };
    let ops = crate::ops::Ops::for_once(&app);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let signals = spawn_signal_thread(tx.clone()).ok();
    let stop = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (engine, accounts, s) = (app.engine.clone(), app.cfg.accounts.clone(), stop.clone());
    let max = app.cfg.schedule.max_concurrent_accounts;
    let handle = tokio::spawn(async move {
        let summary = run_pass(engine, accounts, max, s, Arc::default()).await;
        let _ = done_tx.send(summary);
    });
    let summary = tokio::select! {
        Some(summary) = done_rx.recv() => Some(summary),
        Some(Event::Signal(sig)) = rx.recv() => {
            tracing::info!("received {}, stopping", sig.name());
            stop_pass(handle, &stop, app.cfg.schedule.shutdown_timeout, &mut rx).await;
            done_rx.try_recv().ok()
        }
    };
    let code = match &summary {
        Some(s) => {
            tracing::info!("{}", s.line());
            // Then the vehicles' telemetry, unless a signal stopped the pass; a signal during it
            // stops it from starting more vehicles (token exchanges still finish, see `finish`).
            let list_code = exit::for_pass(s);
            let stop = CancellationToken::new();
            let (cfg, engine, st) = (app.cfg.clone(), app.engine.clone(), stop.clone());
            let mut round = tokio::spawn(async move {
                crate::telemetry::after_once_until(&cfg, engine, list_code, st).await
            });
            tokio::select! {
                r = &mut round => r.unwrap_or(list_code),
                Some(Event::Signal(sig)) = rx.recv() => {
                    tracing::info!("received {}, stopping the telemetry round", sig.name());
                    stop.cancel();
                    match tokio::time::timeout(app.cfg.schedule.shutdown_timeout, &mut round).await {
                        Ok(r) => r.unwrap_or(list_code),
                        Err(_) => {
                            round.abort();
                            list_code
                        }
                    }
                }
            }
        }
        None => exit::TEMPFAIL,
    };
    if let Some(s) = &summary {
        ops.after_once(&app, s).await;
    }
    finish(&app).await;
    if let Some(h) = signals {
        h.close();
    }
    code
}

/// A callback run after every pass.
pub type PassHook = Box<dyn Fn(&PassSummary) + Send + Sync>;

/// Hooks for callers that embed the daemon (the demo).
#[derive(Default)]
pub struct Hooks {
    /// Ends the daemon like SIGTERM.
    pub stop: CancellationToken,
    /// Called after every pass.
    pub on_pass: Option<PassHook>,
    /// `--shard I/N`: applied again to every reloaded configuration.
    pub shard: Option<(u32, u32)>,
}

async fn schedule(
    sched: &tokio_cron_scheduler::JobScheduler,
    expr: &str,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<uuid::Uuid, String> {
    let job = tokio_cron_scheduler::Job::new_async(expr, move |_, _| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(Event::Tick);
        })
    })
    .map_err(|e| format!("schedule `{expr}`: {e}"))?;
    sched
        .add(job)
        .await
        .map_err(|e| format!("cannot add the scheduled job: {e}"))
}

/// A pass in progress.
struct Running {
    handle: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

/// The daemon's state, owned by its event loop.
struct Daemon<'a> {
    config_path: &'a Path,
    app: App,
    hooks: Hooks,
    tx: mpsc::UnboundedSender<Event>,
    sched: tokio_cron_scheduler::JobScheduler,
    job: uuid::Uuid,
    pass: Option<Running>,
    /// Unix ms of the running pass's last progress (an account finished, or the pass started).
    progress: Arc<AtomicU64>,
    stalled: bool,
    /// The vehicles' telemetry polls, beside the list passes.
    telemetry: Option<crate::telemetry::Background>,
    /// Metrics, health, backups, retention (src/ops.rs).
    ops: crate::ops::Ops,
}

/// How long a pass may go without any account finishing before it counts as stuck (then the
/// watchdog is no longer fed and systemd restarts the service).
fn stall_limit(cfg: &Config) -> Duration {
    let one_account = cfg
        .api
        .timeout
        .saturating_mul(cfg.retry.max_retries.saturating_add(1).saturating_mul(2))
        .saturating_add(cfg.idp.timeout.saturating_mul(2));
    one_account.max(Duration::from_secs(300))
}

impl Daemon<'_> {
    fn on_tick(&mut self) {
        if self.pass.is_some() {
            tracing::warn!("schedule tick skipped: the previous pass is still running");
            return;
        }
        let stop = CancellationToken::new();
        let engine = self.app.engine.clone();
        let accounts = self.app.cfg.accounts.clone();
        let max = self.app.cfg.schedule.max_concurrent_accounts;
        let jitter = self.app.cfg.schedule.jitter;
        let (tx, s, progress) = (self.tx.clone(), stop.clone(), self.progress.clone());
        progress.store(now_ms(), Ordering::Relaxed);
        let handle = tokio::spawn(async move {
            if !jitter.is_zero() {
                let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
                let d = Duration::from_millis(rand::rng().random_range(0..=ms));
                tokio::select! { () = tokio::time::sleep(d) => {}, () = s.cancelled() => return }
            }
            let summary = run_pass(engine, accounts, max, s, progress).await;
            let _ = tx.send(Event::PassDone(summary));
        });
        self.pass = Some(Running { handle, stop });
    }

    fn on_pass_done(&mut self, summary: &PassSummary) {
        self.pass = None;
        self.stalled = false;
        tracing::info!("{}", summary.line());
        notify::notify(&format!("STATUS={}", summary.line()));
        if let Some(f) = &self.hooks.on_pass {
            f(summary);
        }
        self.ops.pass_done(&self.app, summary);
    }

    async fn on_reload(&mut self) {
        notify::notify("RELOADING=1");
        match config::load(self.config_path, Checks::Full) {
            Ok(mut new) => {
                if let Some((i, n)) = self.hooks.shard {
                    crate::shard::keep(&mut new, i, n);
                }
                if new.database != self.app.cfg.database || new.state_dir != self.app.cfg.state_dir
                {
                    tracing::warn!("database and state_dir changes take effect after a restart");
                }
                let schedule_changed = new.schedule.cron != self.app.cfg.schedule.cron;
                new.database = self.app.cfg.database.clone();
                new.state_dir = self.app.cfg.state_dir.clone();
                self.app.limits.save();
                match build(new, Some(&self.app)) {
                    Ok(next) => {
                        if schedule_changed {
                            let _ = self.sched.remove(&self.job).await;
                            match schedule(&self.sched, &next.cfg.schedule.cron, self.tx.clone())
                                .await
                            {
                                Ok(j) => self.job = j,
                                Err(e) => tracing::error!("{e}"),
                            }
                        }
                        tracing::info!(accounts = next.cfg.accounts.len(), schedule = %next.cfg.schedule.cron, "configuration reloaded");
                        if let Some(t) = self.telemetry.as_mut() {
                            t.restart(&next.cfg, next.engine.clone());
                        }
                        self.app = next;
                        self.ops.attach(&self.app);
                        let unsaved = self.app.engine.tokens.flush_pending().await;
                        if !unsaved.is_empty() {
                            tracing::error!(accounts = ?unsaved, "rotated refresh tokens are still only in memory after the reload");
                        }
                    }
                    Err(e) => tracing::error!("reload failed, keeping the old configuration: {e}"),
                }
            }
            Err(e) => tracing::error!("reload refused, keeping the old configuration: {e}"),
        }
        notify::notify("READY=1");
    }

    async fn on_shutdown(&mut self, sig: Sig, rx: &mut mpsc::UnboundedReceiver<Event>) {
        tracing::info!("received {}, shutting down", sig.name());
        notify::notify("STOPPING=1");
        let _ = self.sched.remove(&self.job).await;
        if let Some(t) = self.telemetry.take() {
            t.shutdown(self.app.cfg.schedule.shutdown_timeout).await;
        }
        if let Some(Running { handle, stop }) = self.pass.take() {
            stop_pass(handle, &stop, self.app.cfg.schedule.shutdown_timeout, rx).await;
        }
        finish(&self.app).await;
    }

    /// Feeds the watchdog while the liveness is alive (see [`Daemon::beat`]).
    fn on_watchdog(&mut self) {
        if self.beat() {
            self.ops.liveness().feed_watchdog();
        }
    }

    /// Beats the liveness behind `/healthz` and the watchdog, unless a pass is stuck (no account
    /// finished for [`stall_limit`]); returns whether it beat.
    fn beat(&mut self) -> bool {
        let idle_ms = now_ms().saturating_sub(self.progress.load(Ordering::Relaxed));
        let limit = stall_limit(&self.app.cfg);
        if self.pass.is_some() && Duration::from_millis(idle_ms) > limit {
            if !self.stalled {
                self.stalled = true;
                tracing::error!(
                    "the running pass has made no progress for {} s; the watchdog is no longer fed, so systemd restarts the service",
                    idle_ms / 1000
                );
                notify::notify("STATUS=stuck: the running pass makes no progress");
            }
            return false;
        }
        self.ops.beat();
        true
    }
}

/// The daemon: passes on the schedule until SIGTERM/SIGINT (or `hooks.stop`). Returns the exit code.
pub async fn run(config_path: &Path, cfg: Config, hooks: Hooks) -> u8 {
    let _lock = match instance_lock(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_start(&e);
        }
    };
    let app = match build(cfg, None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_start(&e);
        }
    };
    let ops = match crate::ops::Ops::start(&app).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e}");
            return exit::TEMPFAIL;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let Ok(signals) = spawn_signal_thread(tx.clone()) else {
        tracing::error!("cannot install signal handlers");
        return exit::SOFTWARE;
    };
    let Ok(sched) = tokio_cron_scheduler::JobScheduler::new().await else {
        tracing::error!("cannot start the scheduler");
        return exit::SOFTWARE;
    };
    let job = match schedule(&sched, &app.cfg.schedule.cron, tx.clone()).await {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    if let Err(e) = sched.start().await {
        tracing::error!("cannot start the scheduler: {e}");
        return exit::SOFTWARE;
    }
    tracing::info!(
        accounts = app.cfg.accounts.len(),
        schedule = %app.cfg.schedule.cron,
        database = %app.cfg.database.display(),
        "stellantis-sync {} started",
        env!("CARGO_PKG_VERSION")
    );
    notify::notify("READY=1\nSTATUS=started, waiting for the first pass");
    if app.cfg.schedule.run_at_startup {
        let _ = tx.send(Event::Tick);
    }
    let mut d = Daemon {
        config_path,
        app,
        hooks,
        tx,
        sched,
        job,
        pass: None,
        progress: Arc::new(AtomicU64::new(now_ms())),
        stalled: false,
        telemetry: None,
        ops,
    };
    d.telemetry = Some(crate::telemetry::Background::start(
        &d.app.cfg,
        d.app.engine.clone(),
    ));
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let stop = d.hooks.stop.clone();
    let mut heartbeat = tokio::time::interval(crate::health::BEAT_EVERY);
    loop {
        d.beat();
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            () = stop.cancelled() => Event::Signal(Sig::Terminate),
            _ = heartbeat.tick() => continue,
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                d.on_watchdog();
                continue;
            }
        };
        match event {
            Event::Tick => d.on_tick(),
            Event::PassDone(summary) => d.on_pass_done(&summary),
            Event::Signal(Sig::Reload) => d.on_reload().await,
            Event::Signal(sig) => {
                d.on_shutdown(sig, &mut rx).await;
                break;
            }
        }
    }
    let _ = d.sched.shutdown().await;
    d.ops.shutdown().await;
    signals.close();
    tracing::info!("stopped");
    exit::OK
}
