//! The program people run: one pass over every account (`--once`), or the daemon that runs
//! passes on the cron schedule until SIGTERM.
//!
//! One event loop owns the state (`Event::Tick`, `Event::Signal`, `Event::PassDone`): the cron
//! job only sends ticks, so "passes never overlap" is decided in one place. SIGTERM/SIGINT stop
//! scheduling and let the running pass finish within `shutdown_timeout` (its database writes are
//! whole transactions, so cutting it off loses nothing committed); a second SIGINT exits at once.
//! SIGHUP reloads the configuration and keeps the old one if the new one is invalid. One instance
//! per state directory (`daemon.lock`).

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::auth::store::TokenStore;
use crate::auth::{TokenManager, http_client};
use crate::config::{self, Account, Checks, Config};
use crate::ratelimit::Limits;
use crate::store::{Db, DbError};
use crate::sync::{Engine, Outcome, RetryPolicy};
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

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::AlreadyRunning { .. } => exit::TEMPFAIL,
            StartError::StateDir { .. } => exit::IOERR,
            StartError::Db(e) if e.is_io() => exit::IOERR,
            StartError::Db(DbError::TooNew { .. }) => exit::CONFIG,
            StartError::Db(_) => exit::SOFTWARE,
        }
    }
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
    /// The `--once` exit code: 77 if any account needs re-authorization, else 74 if a local file
    /// could not be written, else 75 if any account failed, else 0.
    pub fn exit_code(&self) -> u8 {
        let any = |f: fn(&Outcome) -> bool| self.outcomes.iter().any(|(_, o)| f(o));
        if any(|o| matches!(o, Outcome::NeedsReauth { .. })) {
            exit::NOPERM
        } else if any(|o| matches!(o, Outcome::LocalIo { .. })) {
            exit::IOERR
        } else if any(|o| matches!(o, Outcome::Temporary { .. })) {
            exit::TEMPFAIL
        } else {
            exit::OK
        }
    }

    /// One line for logs and `STATUS=`.
    pub fn line(&self) -> String {
        let ok = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ok { .. }))
            .count();
        let changes: usize = self
            .outcomes
            .iter()
            .map(|(_, o)| {
                if let Outcome::Ok { changes, .. } = o {
                    *changes
                } else {
                    0
                }
            })
            .sum();
        let reauth = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::NeedsReauth { .. }))
            .count();
        format!(
            "last pass: {ok}/{} accounts synced, {changes} changes, {reauth} need re-authorization, {:.1} s",
            self.outcomes.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Takes the per-state-directory instance lock (held until the returned file is dropped).
pub fn instance_lock(state_dir: &Path) -> Result<File, StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(state_dir)
        .map_err(|e| StartError::StateDir {
            dir: state_dir.display().to_string(),
            reason: e.to_string(),
        })?;
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::StateDir {
            dir: state_dir.display().to_string(),
            reason: e.to_string(),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => Err(StartError::AlreadyRunning {
            dir: state_dir.display().to_string(),
            lock: path.display().to_string(),
        }),
    }
}

/// Builds the engine for a configuration (the database connection may be reused).
pub fn build(cfg: Config, db: Option<Arc<Mutex<Db>>>) -> Result<App, StartError> {
    let tokens_store = TokenStore::new(&cfg.state_dir);
    tokens_store.prepare().map_err(|e| StartError::StateDir {
        dir: cfg.state_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let db = match db {
        Some(d) => d,
        None => {
            if let Some(parent) = cfg.database.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| StartError::StateDir {
                    dir: parent.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            Arc::new(Mutex::new(Db::open(&cfg.database)?))
        }
    };
    let limits = Arc::new(Limits::new(
        cfg.api_rate,
        cfg.idp_rate,
        Some(&cfg.state_dir),
    ));
    let api_http = http_client(cfg.api_timeout);
    let tokens = Arc::new(TokenManager::for_config(&cfg, limits.clone()));
    let api = ApiClient::new(
        api_http,
        cfg.api_base.clone(),
        limits.clone(),
        cfg.page_size,
    );
    let engine = Arc::new(Engine {
        api,
        tokens,
        db,
        retry: RetryPolicy {
            max_retries: cfg.api_max_retries,
            base: cfg.retry_base,
            cap: cfg.retry_cap,
        },
    });
    Ok(App {
        cfg,
        engine,
        limits,
    })
}

/// One pass over `accounts`, at most `max_concurrent` at a time. Accounts not yet started when
/// `stop` fires are skipped.
pub async fn run_pass(
    engine: Arc<Engine>,
    accounts: Vec<Account>,
    max_concurrent: usize,
    stop: CancellationToken,
) -> PassSummary {
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(max_concurrent.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for a in accounts {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p,
            () = stop.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let engine = engine.clone();
        set.spawn(async move {
            let outcome = engine.sync_account(&a).await;
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
    {
        let db = engine.db.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut g = db.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = g.checkpoint_if_large(8 * 1024 * 1024) {
                tracing::warn!("WAL checkpoint failed: {e}");
            }
        })
        .await;
    }
    PassSummary {
        outcomes,
        elapsed: started.elapsed(),
    }
}

/// `--once`: one pass over every account; returns the exit code.
pub async fn once(cfg: Config) -> u8 {
    let _lock = match instance_lock(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let app = match build(cfg, None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let summary = run_pass(
        app.engine.clone(),
        app.cfg.accounts.clone(),
        app.cfg.max_concurrent_accounts,
        CancellationToken::new(),
    )
    .await;
    tracing::info!("{}", summary.line());
    crate::telemetry::after_once(&app.cfg, app.engine.clone(), summary.exit_code()).await
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

enum Event {
    Tick,
    Signal(i32),
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
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })?;
    Ok(handle)
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

/// The daemon: passes on the schedule until SIGTERM/SIGINT (or `hooks.stop`). Returns the exit code.
pub async fn run(config_path: &Path, cfg: Config, hooks: Hooks) -> u8 {
    let _lock = match instance_lock(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let mut app = match build(cfg, None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let signals = match spawn_signal_thread(tx.clone()) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return exit::SOFTWARE;
        }
    };
    let mut sched = match tokio_cron_scheduler::JobScheduler::new().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start the scheduler: {e}");
            return exit::SOFTWARE;
        }
    };
    let mut job = match schedule(&sched, &app.cfg.schedule, tx.clone()).await {
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
        schedule = %app.cfg.schedule,
        database = %app.cfg.database.display(),
        "stellantis-sync {} started",
        env!("CARGO_PKG_VERSION")
    );
    notify::notify("READY=1\nSTATUS=started, waiting for the first pass");
    if app.cfg.run_at_startup {
        let _ = tx.send(Event::Tick);
    }
    let mut telemetry = crate::telemetry::Background::start(&app.cfg, app.engine.clone());
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut pass: Option<(tokio::task::JoinHandle<()>, CancellationToken)> = None;
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            () = hooks.stop.cancelled() => Event::Signal(signal_hook::consts::SIGTERM),
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                notify::notify("WATCHDOG=1");
                continue;
            }
        };
        match event {
            Event::Tick => {
                if pass.is_some() {
                    tracing::warn!("schedule tick skipped: the previous pass is still running");
                    continue;
                }
                let stop = CancellationToken::new();
                let engine = app.engine.clone();
                let accounts = app.cfg.accounts.clone();
                let max = app.cfg.max_concurrent_accounts;
                let jitter = app.cfg.schedule_jitter;
                let tx = tx.clone();
                let s = stop.clone();
                let handle = tokio::spawn(async move {
                    if !jitter.is_zero() {
                        let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
                        let d = Duration::from_millis(rand::rng().random_range(0..=ms));
                        tokio::select! { () = tokio::time::sleep(d) => {}, () = s.cancelled() => return }
                    }
                    let summary = run_pass(engine, accounts, max, s).await;
                    let _ = tx.send(Event::PassDone(summary));
                });
                pass = Some((handle, stop));
            }
            Event::PassDone(summary) => {
                pass = None;
                tracing::info!("{}", summary.line());
                notify::notify(&format!("STATUS={}", summary.line()));
                if let Some(f) = &hooks.on_pass {
                    f(&summary);
                }
            }
            Event::Signal(signal_hook::consts::SIGHUP) => {
                notify::notify("RELOADING=1");
                match config::load(config_path, Checks::Full) {
                    Ok(mut new) => {
                        if let Some((i, n)) = hooks.shard {
                            new.keep_shard(i, n);
                        }
                        if new.database != app.cfg.database || new.state_dir != app.cfg.state_dir {
                            tracing::warn!(
                                "database and state_dir changes take effect after a restart"
                            );
                        }
                        let schedule_changed = new.schedule != app.cfg.schedule;
                        new.database = app.cfg.database.clone();
                        new.state_dir = app.cfg.state_dir.clone();
                        app.limits.save();
                        match build(new, Some(app.engine.db.clone())) {
                            Ok(next) => {
                                if schedule_changed {
                                    let _ = sched.remove(&job).await;
                                    match schedule(&sched, &next.cfg.schedule, tx.clone()).await {
                                        Ok(j) => job = j,
                                        Err(e) => tracing::error!("{e}"),
                                    }
                                }
                                tracing::info!(accounts = next.cfg.accounts.len(), schedule = %next.cfg.schedule, "configuration reloaded");
                                telemetry.restart(&next.cfg, next.engine.clone());
                                app = next;
                            }
                            Err(e) => {
                                tracing::error!("reload failed, keeping the old configuration: {e}")
                            }
                        }
                    }
                    Err(e) => tracing::error!("reload refused, keeping the old configuration: {e}"),
                }
                notify::notify("READY=1");
            }
            Event::Signal(sig) => {
                // Shutdown: the loop ends below, so no later event is handled here; a second
                // signal during the wait is handled inside it.
                let name = if sig == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("received {name}, shutting down");
                notify::notify("STOPPING=1");
                let _ = sched.remove(&job).await;
                match pass.take() {
                    None => break,
                    Some((handle, stop)) => {
                        stop.cancel();
                        let timeout = app.cfg.shutdown_timeout;
                        let abort = handle.abort_handle();
                        let mut handle = handle;
                        tokio::select! {
                            _ = &mut handle => {}
                            () = tokio::time::sleep(timeout) => {
                                tracing::warn!("the running pass did not finish within {timeout:?}; abandoning it (its uncommitted work is rolled back)");
                                abort.abort();
                            }
                            Some(Event::Signal(s)) = rx.recv() => {
                                if s == signal_hook::consts::SIGINT {
                                    tracing::warn!("second SIGINT: exiting now (committed data is safe)");
                                }
                                abort.abort();
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    telemetry.shutdown(app.cfg.shutdown_timeout).await;
    let _ = sched.shutdown().await;
    signals.close();
    app.limits.save();
    let unsaved = app.engine.tokens.has_unsaved();
    if !unsaved.is_empty() {
        tracing::error!(accounts = ?unsaved, "rotated refresh tokens could not be written and are lost at exit; these accounts will need `login`");
    }
    tracing::info!("stopped");
    exit::OK
}
