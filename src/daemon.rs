//! The program people run: one pass over every account (`--once`), or the daemon that runs
//! passes on the cron schedule until SIGTERM.
//!
//! One event loop owns the state. It runs typed jobs (list pass, telemetry round, backup,
//! retention; `jobs`) from a due-time [`JobQueue`], each in a task that only sends its result back
//! ([`Event::Done`]); the signal thread only sends [`Sig`]s. [`Daemon`]'s `on_due`, `on_done`,
//! `on_reload` and `on_shutdown` are plain methods, so "a job never overlaps itself" (passes never
//! overlap) is decided in one place.
//!
//! Stopping (SIGTERM/SIGINT, in the daemon and in `--once` alike): scheduling stops, the running
//! pass and telemetry round get one `shutdown_timeout` together to finish (a second signal cuts
//! that short), then their API fetches are abandoned (database writes are whole transactions,
//! so nothing committed is lost). A token
//! exchange that has been sent is NOT abandoned: it runs in a task of its own, and shutdown waits
//! for every one to finish and be saved, whatever signal arrives ([`TokenManager::drain`]); records
//! that could not be saved are written once more. Runs cut off are closed as `aborted`.
//!
//! SIGHUP reloads the configuration and keeps the old one if the new one is invalid; records kept
//! in memory after a failed save survive the reload. One instance per state directory
//! (`daemon.lock`). The watchdog is fed only while no pass is stuck.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::auth::TokenManager;
use crate::auth::store::TokenStore;
use crate::config::{self, Account, Checks, Config};
use crate::jobs::{self, Job, JobQueue};
use crate::ratelimit::Limits;
use crate::store::{Db, DbError};
use crate::sync::{Engine, Outcome};
use crate::telemetry::Telemetry;
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
    /// The token store is a copy of another state directory's (issue 23): nothing is presented.
    #[error(transparent)]
    CopiedState(crate::auth::store::StoreError),
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
    tokens_store.prepare().map_err(|e| match e {
        e @ crate::auth::store::StoreError::Copied { .. } => StartError::CopiedState(e),
        e => StartError::StateDir {
            dir: cfg.state_dir.display().to_string(),
            reason: e.to_string(),
        },
    })?;
    crate::backup::sweep_leftovers(&cfg.state_dir, &cfg.ops.backup_dir);
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
            let mut db = Db::open_for(&cfg)?;
            // We hold the instance lock: a run still `running` belongs to a process that died.
            db.close_abandoned_runs("the process running it ended before it finished")?;
            Arc::new(Mutex::new(db))
        }
    };
    // One limiter per process: a reload changes its rates in place, so the jobs still running
    // on the old configuration and those started on the new one share one budget.
    let limits = match prev {
        Some(p) => p.limits.clone(),
        None => Arc::new(Limits::new(
            cfg.api.rate,
            cfg.idp.rate,
            Some(&cfg.state_dir),
        )),
    };
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
    if prev.is_some() {
        limits.set_rates(cfg.api.rate, cfg.idp.rate);
    }
    limits.set_daily_budget(crate::telemetry::budget_plan(&cfg));
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
    // The pass's `running` markers, one commit for all accounts; finished runs are committed in
    // groups by one writer (issue 14: two commits per account were most of the own cost).
    let names: Vec<(String, String)> = accounts
        .iter()
        .map(|a| (a.name.clone(), a.brand.key().to_owned()))
        .collect();
    let opened = crate::store::with_db(&engine.db, move |db| db.begin_pass(&names)).await;
    let (writer, written) = crate::sync::RunWriter::start(engine.db.clone());
    let sem = Arc::new(Semaphore::new(max_concurrent.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let mut spawned = 0;
    for (i, a) in accounts.into_iter().enumerate() {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p,
            () = stop.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let ids = match &opened {
            Ok(ids) => ids.get(i).copied().ok_or_else(|| Outcome::LocalIo {
                message: "no run was opened for this account".into(),
            }),
            Err(e) if e.is_busy() => Err(Outcome::Temporary {
                kind: "database_busy".into(),
                message: e.to_string(),
            }),
            Err(e) => Err(Outcome::LocalIo {
                message: e.to_string(),
            }),
        };
        let (engine, progress, writer) = (engine.clone(), progress.clone(), writer.clone());
        set.spawn(async move {
            let outcome = engine.sync_account(&a, ids, &writer).await;
            progress.store(now_ms(), Ordering::Relaxed);
            drop(permit);
            (a.name, outcome)
        });
        spawned = i + 1;
    }
    match &opened {
        Err(e) => tracing::error!("cannot open the pass's runs: {e}"),
        // A stop before an account's turn: it was not attempted, so it has no run.
        Ok(ids) if spawned < ids.len() => {
            let unused: Vec<i64> = ids[spawned..].iter().map(|(_, run)| *run).collect();
            let db = engine.db.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut g = db.lock().unwrap_or_else(|e| e.into_inner());
                g.drop_unstarted_runs(&unused)
            })
            .await;
        }
        Ok(_) => {}
    }
    drop(writer);
    let mut outcomes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => tracing::error!("an account task failed: {e}"),
        }
    }
    let _ = written.await;
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

/// What the event loop reacts to (besides the due times of its [`JobQueue`]).
enum Event {
    Signal(Sig),
    /// A job's task ended.
    Done(Finished),
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

/// The next SIGTERM or SIGINT while stopping; a SIGHUP (a log rotation's reload, say) does not
/// cut a stop short, and other events are dropped: the daemon is going away.
async fn next_stop_signal(rx: &mut mpsc::UnboundedReceiver<Event>) -> Sig {
    loop {
        match rx.recv().await {
            Some(Event::Signal(s)) if s != Sig::Reload => return s,
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

/// Stops a job: cancels it, waits for it to end on its own until `deadline` (`timeout` after
/// the stop began; a second SIGTERM or SIGINT cuts the wait short), then abandons it: its API
/// fetches stop, its token exchanges carry on (see [`finish`]). `what` names it in the log;
/// returns whether a signal cut the wait short.
async fn stop_job(
    mut handle: tokio::task::JoinHandle<()>,
    stop: &CancellationToken,
    what: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
    rx: &mut mpsc::UnboundedReceiver<Event>,
) -> bool {
    stop.cancel();
    let abort = handle.abort_handle();
    let cut_short = tokio::select! {
        _ = &mut handle => return false,
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("{what} did not finish within {timeout:?}; abandoning its requests (its uncommitted work is rolled back)");
            false
        }
        s = next_stop_signal(rx) => {
            tracing::warn!("second signal ({}): abandoning {what} now (committed data is safe; token exchanges in flight still finish)", s.name());
            true
        }
    };
    abort.abort();
    let _ = handle.await;
    cut_short
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
            let timeout = app.cfg.schedule.shutdown_timeout;
            let deadline = tokio::time::Instant::now() + timeout;
            stop_job(handle, &stop, "the running pass", deadline, timeout, &mut rx).await;
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
    let mut code = code;
    if let Some(s) = &summary
        && !ops.after_once(&app, s).await
        && matches!(code, exit::OK | exit::TEMPFAIL)
    {
        code = exit::IOERR;
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

/// How a job's run ended (sent by its task to the event loop).
enum Finished {
    Pass(PassSummary),
    /// A telemetry round that started at `started` and found the next vehicle endpoint due at
    /// `next_due` (unix seconds).
    Telemetry {
        started: DateTime<Utc>,
        next_due: Option<i64>,
    },
    Backup,
    Retention,
}

impl Finished {
    fn job(&self) -> Job {
        match self {
            Finished::Pass(_) => Job::ListPass,
            Finished::Telemetry { .. } => Job::TelemetryRound,
            Finished::Backup => Job::Backup,
            Finished::Retention => Job::Retention,
        }
    }
}

/// A job in progress: its task (which sends [`Event::Done`]) and what asks it to stop.
struct Running {
    handle: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

/// Scheduled backups follow the configuration the daemon started with (a reload does not
/// change them).
struct BackupPlan {
    schedule: String,
    database: PathBuf,
    dir: PathBuf,
    keep: usize,
    state_dir: PathBuf,
}

impl BackupPlan {
    fn of(cfg: &Config) -> Option<BackupPlan> {
        let o = &cfg.ops;
        let schedule = o.backup_schedule.clone()?;
        tracing::info!(schedule = %schedule, dir = %o.backup_dir.display(), keep = o.backup_keep, "scheduled backups on");
        Some(BackupPlan {
            schedule,
            database: cfg.database.clone(),
            dir: o.backup_dir.clone(),
            keep: o.backup_keep,
            state_dir: cfg.state_dir.clone(),
        })
    }
}

/// The daemon's state, owned by its event loop.
struct Daemon<'a> {
    config_path: &'a Path,
    app: App,
    hooks: Hooks,
    tx: mpsc::UnboundedSender<Event>,
    /// When each job is next due, and which run.
    queue: JobQueue,
    running: HashMap<Job, Running>,
    /// Unix ms of the running pass's last progress (an account finished, or the pass started).
    progress: Arc<AtomicU64>,
    stalled: bool,
    /// The vehicles' telemetry (`None` when `[telemetry] enabled = false`).
    telemetry: Option<Arc<Telemetry>>,
    backup: Option<BackupPlan>,
    /// Metrics, health, the listener (src/ops.rs).
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

/// The telemetry runner of a configuration, if telemetry is on.
fn telemetry_of(app: &App) -> Option<Arc<Telemetry>> {
    app.cfg
        .telemetry
        .enabled
        .then(|| Arc::new(Telemetry::new(&app.cfg, app.engine.clone())))
}

/// Sleeps until the wall-clock time `at` (forever when `None`).
async fn sleep_until(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

impl Daemon<'_> {
    /// The first occurrences: the list pass (now, with `run_at_startup`), telemetry now, backups
    /// at their first fire time.
    fn schedule_first(&mut self, now: DateTime<Utc>) {
        if self.app.cfg.schedule.run_at_startup {
            self.queue.schedule(Job::ListPass, now);
        } else {
            self.schedule_next_pass(now);
        }
        if self.telemetry.is_some() {
            self.queue.schedule(Job::TelemetryRound, now);
        }
        if let Some(at) = self.next_backup(now) {
            self.queue.schedule(Job::Backup, at);
        }
    }

    /// The list pass's next cron fire after `after` (the cron ticks whether or not a pass runs).
    fn schedule_next_pass(&mut self, after: DateTime<Utc>) {
        match crate::health::next_fire(&self.app.cfg.schedule.cron, after) {
            Some(at) => self.queue.schedule(Job::ListPass, at),
            None => tracing::error!(
                "schedule `{}` never fires again; no more list passes",
                self.app.cfg.schedule.cron
            ),
        }
    }

    fn next_backup(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let plan = self.backup.as_ref()?;
        let at = crate::health::next_fire(&plan.schedule, after);
        if at.is_none() {
            tracing::error!(
                "backup schedule `{}` never fires; scheduled backups are off",
                plan.schedule
            );
        }
        at
    }

    /// Starts every job due at `now`. A list pass due while the previous one runs is skipped.
    fn on_due(&mut self, now: DateTime<Utc>) {
        while let Some(job) = self.queue.pop_due(now) {
            if job == Job::ListPass {
                self.schedule_next_pass(now);
            }
            if !self.queue.start(job) {
                if job == Job::ListPass {
                    tracing::warn!("schedule tick skipped: the previous pass is still running");
                }
                continue;
            }
            let run = match job {
                Job::ListPass => self.start_pass(),
                Job::TelemetryRound => self.start_telemetry(),
                Job::Backup => self.start_backup(),
                Job::Retention => self.start_retention(),
            };
            match run {
                Some(r) => {
                    self.running.insert(job, r);
                }
                None => self.queue.complete(job, None),
            }
        }
    }

    /// Spawns a job's task; what it returns is sent to the loop as [`Event::Done`].
    fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F) -> Running
    where
        F: Future<Output = Option<Finished>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let (fut, tx) = (task(stop.clone()), self.tx.clone());
        let handle = tokio::spawn(async move {
            if let Some(f) = fut.await {
                let _ = tx.send(Event::Done(f));
            }
        });
        Running { handle, stop }
    }

    fn start_pass(&mut self) -> Option<Running> {
        let engine = self.app.engine.clone();
        let accounts = self.app.cfg.accounts.clone();
        let max = self.app.cfg.schedule.max_concurrent_accounts;
        let jitter = self.app.cfg.schedule.jitter;
        let progress = self.progress.clone();
        progress.store(now_ms(), Ordering::Relaxed);
        Some(self.spawn(move |s| async move {
            if !jitter.is_zero() {
                let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
                let d = Duration::from_millis(rand::rng().random_range(0..=ms));
                tokio::select! { () = tokio::time::sleep(d) => {}, () = s.cancelled() => return None }
            }
            Some(Finished::Pass(
                run_pass(engine, accounts, max, s, progress).await,
            ))
        }))
    }

    fn start_telemetry(&mut self) -> Option<Running> {
        let t = self.telemetry.clone()?;
        Some(self.spawn(move |stop| async move {
            let started = Utc::now();
            let s = t.run_due(started.timestamp(), stop).await;
            if s.requests > 0 {
                tracing::info!("{}", s.line());
            }
            Some(Finished::Telemetry {
                started,
                next_due: s.next_due,
            })
        }))
    }

    fn start_backup(&mut self) -> Option<Running> {
        let p = self.backup.as_ref()?;
        let (db, dir, keep, state) = (
            p.database.clone(),
            p.dir.clone(),
            p.keep,
            p.state_dir.clone(),
        );
        Some(self.spawn(move |_| async move {
            crate::backup::scheduled(db, dir, keep, state).await;
            Some(Finished::Backup)
        }))
    }

    fn start_retention(&mut self) -> Option<Running> {
        let r = self.app.cfg.ops.retention?;
        let db = self.app.engine.db.clone();
        let metrics = self.ops.shared.metrics.clone();
        Some(self.spawn(move |_| async move {
            let _ =
                tokio::task::spawn_blocking(move || crate::ops::run_retention(&db, r, &metrics))
                    .await;
            Some(Finished::Retention)
        }))
    }

    /// A job's run ended: its next occurrence, and what the list pass reports.
    fn on_done(&mut self, f: Finished) {
        let job = f.job();
        self.running.remove(&job);
        let now = Utc::now();
        let next = match &f {
            Finished::Telemetry { started, next_due } => {
                Some(jobs::next_telemetry_round(*started, now, *next_due))
            }
            Finished::Backup => self.next_backup(now),
            Finished::Pass(_) | Finished::Retention => None,
        };
        self.queue.complete(job, next);
        if let Finished::Pass(summary) = f {
            self.on_pass_done(&summary, now);
        }
    }

    fn on_pass_done(&mut self, summary: &PassSummary, now: DateTime<Utc>) {
        self.stalled = false;
        tracing::info!("{}", summary.line());
        notify::notify(&format!("STATUS={}", summary.line()));
        if let Some(f) = &self.hooks.on_pass {
            f(summary);
        }
        self.ops.pass_done(summary);
        // Retention after every pass, unless the previous one still runs.
        if self.app.cfg.ops.retention.is_some() && !self.queue.is_running(Job::Retention) {
            self.queue.schedule(Job::Retention, now);
        }
    }

    async fn on_reload(&mut self) {
        notify::notify("RELOADING=1");
        match config::load(self.config_path, Checks::Full) {
            Ok(new) => self.reload_with(new).await,
            Err(e) => tracing::error!("reload refused, keeping the old configuration: {e}"),
        }
        notify::notify("READY=1");
    }

    /// Rebuilds the app for a new configuration (the database and state directory stay), and
    /// re-plans the jobs that depend on it.
    async fn reload_with(&mut self, mut new: Config) {
        if let Some((i, n)) = self.hooks.shard {
            crate::shard::keep(&mut new, i, n);
        }
        if new.database != self.app.cfg.database || new.state_dir != self.app.cfg.state_dir {
            tracing::warn!("database and state_dir changes take effect after a restart");
        }
        let schedule_changed = new.schedule.cron != self.app.cfg.schedule.cron;
        new.database = self.app.cfg.database.clone();
        new.state_dir = self.app.cfg.state_dir.clone();
        self.app.limits.save();
        let next = match build(new, Some(&self.app)) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("reload failed, keeping the old configuration: {e}");
                return;
            }
        };
        tracing::info!(accounts = next.cfg.accounts.len(), schedule = %next.cfg.schedule.cron, "configuration reloaded");
        self.app = next;
        if schedule_changed {
            self.schedule_next_pass(Utc::now());
        }
        self.restart_telemetry();
        self.ops.attach(&self.app);
        let unsaved = self.app.engine.tokens.flush_pending().await;
        if !unsaved.is_empty() {
            tracing::error!(accounts = ?unsaved, "rotated refresh tokens are still only in memory after the reload");
        }
    }

    /// After a reload: a running round stops starting vehicles, and the next round uses the new
    /// configuration: now, or (when a round is still finishing) at most 5 s after it ends.
    fn restart_telemetry(&mut self) {
        self.telemetry = telemetry_of(&self.app);
        if let Some(r) = self.running.get(&Job::TelemetryRound) {
            r.stop.cancel();
        } else if self.telemetry.is_some() {
            self.queue.schedule(Job::TelemetryRound, Utc::now());
        }
        if self.telemetry.is_none() {
            self.queue.unschedule(Job::TelemetryRound);
        }
    }

    /// Stops the telemetry round and the list pass together: both are cancelled at once and
    /// share one `shutdown_timeout` (a second signal cuts the wait short), so a stop never takes
    /// longer than one timeout, whatever is running.
    async fn on_shutdown(&mut self, sig: Sig, rx: &mut mpsc::UnboundedReceiver<Event>) {
        tracing::info!("received {}, shutting down", sig.name());
        notify::notify("STOPPING=1");
        self.queue.clear();
        let timeout = self.app.cfg.schedule.shutdown_timeout;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let round = self.running.remove(&Job::TelemetryRound);
        let pass = self.running.remove(&Job::ListPass);
        // Both stop starting work now; then each is waited for until the one deadline.
        for r in round.iter().chain(pass.iter()) {
            r.stop.cancel();
        }
        if let Some(Running { handle, stop }) = round {
            let what = "the telemetry round";
            if stop_job(handle, &stop, what, deadline, timeout, rx).await {
                deadline = tokio::time::Instant::now();
            }
        }
        if let Some(Running { handle, stop }) = pass {
            stop_job(handle, &stop, "the running pass", deadline, timeout, rx).await;
        }
        finish(&self.app).await;
    }

    /// The last steps after the loop: a backup in progress gets 5 s, then the listener stops.
    async fn stop_rest(mut self) {
        if let Some(r) = self.running.remove(&Job::Backup) {
            r.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
        }
        self.ops.shutdown().await;
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
        if self.running.contains_key(&Job::ListPass) && Duration::from_millis(idle_ms) > limit {
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

/// Start-up: the instance lock, the app, the operations runtime; `Err` is the exit code.
async fn start(cfg: Config) -> Result<(File, App, crate::ops::Ops), u8> {
    let log = |e: &dyn std::fmt::Display| tracing::error!("{e}");
    let lock = instance_lock(&cfg.state_dir).map_err(|e| {
        log(&e);
        exit::for_start(&e)
    })?;
    let app = build(cfg, None).map_err(|e| {
        log(&e);
        exit::for_start(&e)
    })?;
    let ops = crate::ops::Ops::start(&app).await.map_err(|e| {
        log(&e);
        exit::TEMPFAIL
    })?;
    Ok((lock, app, ops))
}

/// The event loop: sleeps until the next job is due, an event arrives, the heartbeat or the
/// watchdog ticks; returns after shutdown (or when every sender is gone).
async fn event_loop(d: &mut Daemon<'_>, rx: &mut mpsc::UnboundedReceiver<Event>) {
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let stop = d.hooks.stop.clone();
    let mut heartbeat = tokio::time::interval(crate::health::BEAT_EVERY);
    let mut clocks = (Utc::now(), Instant::now());
    loop {
        d.beat();
        let now = Utc::now();
        if let Some(back) = jobs::clock_step_back(clocks.0, clocks.1.elapsed(), now) {
            tracing::warn!(
                "the clock was stepped back by {} s; the pending jobs keep their real times",
                back.num_seconds()
            );
            d.queue.stepped_back(back);
        }
        clocks = (now, Instant::now());
        let wake = d.queue.next_due(now).map(|(at, _)| at);
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            () = stop.cancelled() => Event::Signal(Sig::Terminate),
            () = sleep_until(wake) => {
                d.on_due(Utc::now());
                continue;
            }
            _ = heartbeat.tick() => continue,
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                d.on_watchdog();
                continue;
            }
        };
        match event {
            Event::Done(f) => d.on_done(f),
            Event::Signal(Sig::Reload) => d.on_reload().await,
            Event::Signal(sig) => {
                d.on_shutdown(sig, rx).await;
                break;
            }
        }
    }
}

/// The daemon: runs its jobs (list passes on the schedule, telemetry rounds, backups,
/// retention) until SIGTERM/SIGINT (or `hooks.stop`). Returns the exit code.
pub async fn run(config_path: &Path, cfg: Config, hooks: Hooks) -> u8 {
    let (_lock, app, ops) = match start(cfg).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let Ok(signals) = spawn_signal_thread(tx.clone()) else {
        tracing::error!("cannot install signal handlers");
        return exit::SOFTWARE;
    };
    tracing::info!(
        accounts = app.cfg.accounts.len(),
        schedule = %app.cfg.schedule.cron,
        database = %app.cfg.database.display(),
        "stellantis-sync {} started",
        env!("CARGO_PKG_VERSION")
    );
    notify::notify("READY=1\nSTATUS=started, waiting for the first pass");
    let mut d = Daemon {
        config_path,
        telemetry: telemetry_of(&app),
        backup: BackupPlan::of(&app.cfg),
        app,
        hooks,
        tx,
        queue: JobQueue::default(),
        running: HashMap::new(),
        progress: Arc::new(AtomicU64::new(now_ms())),
        stalled: false,
        ops,
    };
    d.schedule_first(Utc::now());
    event_loop(&mut d, &mut rx).await;
    d.stop_rest().await;
    signals.close();
    tracing::info!("stopped");
    exit::OK
}
