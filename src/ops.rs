//! Operations glue: the `[http]`, `[backup]`, `[retention]`, `metrics_textfile` and
//! `external_checkpointing` settings, and the runtime the daemon starts next to its event loop —
//! the metrics registry, the liveness beaten by the loop, the optional HTTP listener, and
//! [`run_retention`] (scheduled backups and retention run as the daemon's jobs, see `jobs`). The
//! daemon calls [`Ops::start`], [`Ops::attach`] (after
//! every build, so a reload keeps counting into the same registry), [`Ops::beat`],
//! [`Ops::pass_done`] and [`Ops::shutdown`]; `--once` calls [`Ops::for_once`] and
//! [`Ops::after_once`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Span;
use crate::daemon::{App, PassSummary};
use crate::health::{LastPass, Liveness, Readiness};
use crate::metrics::{Metrics, Source};

/// `[http]` as written.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `"127.0.0.1:9187"`; no listener unless set.
    pub listen: Option<String>,
}

/// `[backup]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    /// Cron expression (six fields, seconds first); no scheduled backups unless set.
    pub schedule: Option<String>,
    /// Where backups go; default `state_dir/backups`.
    pub dir: Option<PathBuf>,
    /// How many scheduled backups to keep (the oldest are removed).
    pub keep: u32,
}

impl Default for RawBackup {
    fn default() -> Self {
        RawBackup {
            schedule: None,
            dir: None,
            keep: 7,
        }
    }
}

/// `[retention]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Raw status bodies first fetched longer ago than this are deleted; kept forever unless set.
    pub status_bodies_max_age: Option<Span>,
    /// Rows deleted per transaction.
    pub batch_size: u32,
    /// Free pages returned to the file system after pruning (`PRAGMA incremental_vacuum(N)`).
    pub vacuum_pages: u32,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            status_bodies_max_age: None,
            batch_size: 1000,
            vacuum_pages: 5000,
        }
    }
}

/// Retention, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub batch_size: u32,
    pub vacuum_pages: u32,
}

/// The operations settings, validated.
#[derive(Debug, Clone, Default)]
pub struct OpsConfig {
    pub http_listen: Option<SocketAddr>,
    pub metrics_textfile: Option<PathBuf>,
    pub backup_schedule: Option<String>,
    pub backup_dir: PathBuf,
    pub backup_keep: usize,
    pub retention: Option<Retention>,
    /// Litestream (or another tool) checkpoints the WAL: `wal_autocheckpoint = 0` and no
    /// checkpoints after passes.
    pub external_checkpointing: bool,
}

/// Validates the operations settings; problems are `(key, reason)`.
pub fn validate(
    http: RawHttp,
    metrics_textfile: Option<PathBuf>,
    backup: RawBackup,
    retention: RawRetention,
    external_checkpointing: bool,
    state_dir: &Path,
) -> (OpsConfig, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let http_listen = http.listen.as_deref().and_then(|a| match a.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push((
                "http.listen".to_owned(),
                format!("`{a}` is not an address:port (e.g. \"127.0.0.1:9187\")"),
            ));
            None
        }
    });
    if let Some(s) = &backup.schedule
        && let Err(e) = crate::config::cron_is_valid(s)
    {
        problems.push(("backup.schedule".to_owned(), e));
    }
    if let Some(d) = &backup.dir
        && d.exists()
        && !d.is_dir()
    {
        problems.push((
            "backup.dir".to_owned(),
            format!("{} exists and is not a directory", d.display()),
        ));
    }
    if backup.keep == 0 {
        problems.push(("backup.keep".to_owned(), "must be at least 1".to_owned()));
    }
    if retention.batch_size == 0 {
        problems.push((
            "retention.batch_size".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if let Some(p) = &metrics_textfile {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        if p.file_name().is_none() {
            problems.push((
                "metrics_textfile".to_owned(),
                format!("{} is not a file path", p.display()),
            ));
        } else if let Some(d) = parent
            && !d.is_dir()
        {
            problems.push((
                "metrics_textfile".to_owned(),
                format!(
                    "its directory {} does not exist (node_exporter's textfile directory)",
                    d.display()
                ),
            ));
        }
    }
    let retention = retention.status_bodies_max_age.map(|a| Retention {
        max_age: a.0,
        batch_size: retention.batch_size,
        vacuum_pages: retention.vacuum_pages,
    });
    (
        OpsConfig {
            http_listen,
            metrics_textfile,
            backup_schedule: backup.schedule,
            backup_dir: backup.dir.unwrap_or_else(|| state_dir.join("backups")),
            backup_keep: backup.keep as usize,
            retention,
            external_checkpointing,
        },
        problems,
    )
}

/// What the HTTP handlers share with the daemon.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub liveness: Arc<Liveness>,
    /// (database, schedule), replaced on reload.
    view: Mutex<(PathBuf, String)>,
    last_pass: Mutex<Option<LastPass>>,
}

impl Shared {
    /// `/readyz`.
    pub fn readiness(&self) -> Readiness {
        let (db, schedule) = self.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let last = *self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
        crate::health::readiness(&db, &schedule, last, SystemTime::now())
    }
}

/// The operations runtime.
pub struct Ops {
    pub shared: Arc<Shared>,
    /// The address the listener bound, when `[http] listen` is set.
    pub http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Ops {
    fn new(app: &App) -> Ops {
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            liveness: Arc::new(Liveness::default()),
            view: Mutex::new((app.cfg.database.clone(), app.cfg.schedule.cron.clone())),
            last_pass: Mutex::new(None),
        });
        let ops = Ops {
            shared,
            http_addr: None,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        ops.attach(app);
        ops
    }

    /// For the daemon: the listener (if configured).
    pub async fn start(app: &App) -> Result<Ops, crate::http_server::ListenError> {
        let mut ops = Ops::new(app);
        let o = &app.cfg.ops;
        if let Some(addr) = o.http_listen {
            let (bound, task) =
                crate::http_server::start(addr, ops.shared.clone(), ops.stop.clone()).await?;
            ops.http_addr = Some(bound);
            ops.tasks.push(task);
        }
        Ok(ops)
    }

    /// For `--once`: metrics only.
    pub fn for_once(app: &App) -> Ops {
        Ops::new(app)
    }

    /// Connects a (re)built app: its requests count into this registry, scrapes read its
    /// accounts, and the database leaves checkpoints to Litestream when configured.
    pub fn attach(&self, app: &App) {
        app.limits.set_metrics(self.shared.metrics.clone());
        self.shared.metrics.set_source(Source {
            database: app.cfg.database.clone(),
            state_dir: app.cfg.state_dir.clone(),
            accounts: app
                .cfg
                .accounts
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        a.refresh_token.is_some() || a.password.is_some(),
                    )
                })
                .collect(),
            refresh_token_max_age: app.cfg.tokens.max_age,
            schedule: app.cfg.schedule.cron.clone(),
            daily_request_budget: app.cfg.telemetry.daily_request_budget,
        });
        *self.shared.view.lock().unwrap_or_else(|e| e.into_inner()) =
            (app.cfg.database.clone(), app.cfg.schedule.cron.clone());
        // Both ways: a reload may turn Litestream mode off again (the WAL would grow for ever).
        let mut db = app.engine.db.lock().unwrap_or_else(|e| e.into_inner());
        let switched = if app.cfg.ops.external_checkpointing {
            db.leave_checkpoints_to_others()
        } else {
            db.take_checkpoints_back()
        };
        if let Err(e) = switched {
            tracing::error!("cannot set who checkpoints the database: {e}");
        }
    }

    /// The event loop turned.
    pub fn beat(&self) {
        self.shared.liveness.beat();
    }

    /// The liveness the loop beats (for the watchdog).
    pub fn liveness(&self) -> &Liveness {
        &self.shared.liveness
    }

    /// After a pass: metrics and readiness (the daemon then runs retention as a job, `jobs`).
    pub fn pass_done(&self, summary: &PassSummary) {
        self.record_pass(summary);
    }

    fn record_pass(&self, summary: &PassSummary) {
        let now = SystemTime::now();
        self.shared.metrics.pass_finished(summary.elapsed, now);
        *self
            .shared
            .last_pass
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(LastPass {
            finished: now,
            synced: summary
                .outcomes
                .iter()
                .filter(|(_, o)| matches!(o, crate::sync::Outcome::Ok { .. }))
                .count(),
            accounts: summary.outcomes.len(),
        });
    }

    /// After `--once`'s pass: retention (waited for) and the textfile, if configured. Returns
    /// false if the textfile could not be written (`--once` then exits 74: a cron job must not
    /// look healthy while node_exporter serves stale numbers).
    pub async fn after_once(&self, app: &App, summary: &PassSummary) -> bool {
        self.record_pass(summary);
        if let Some(r) = app.cfg.ops.retention {
            let db = app.engine.db.clone();
            let metrics = self.shared.metrics.clone();
            let _ = tokio::task::spawn_blocking(move || run_retention(&db, r, &metrics)).await;
        }
        if let Some(path) = app.cfg.ops.metrics_textfile.clone() {
            let metrics = self.shared.metrics.clone();
            let written = tokio::task::spawn_blocking(move || {
                write_textfile(&path, &metrics.render()).map(|()| path)
            })
            .await;
            match written {
                Ok(Ok(p)) => tracing::info!(file = %p.display(), "metrics written"),
                Ok(Err(e)) => {
                    tracing::error!("{e}");
                    return false;
                }
                Err(e) => {
                    tracing::error!("metrics textfile task failed: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Stops the listener.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// One retention run (blocking): prunes, counts into `metrics`, logs.
pub fn run_retention(db: &Arc<Mutex<crate::store::Db>>, r: Retention, metrics: &Metrics) {
    let now = chrono::Utc::now().timestamp();
    match crate::retention::prune(db, r.max_age, r.batch_size, r.vacuum_pages, now) {
        Ok(p) if p.bodies > 0 => {
            metrics.pruned(p.bodies);
            tracing::info!(
                bodies = p.bodies,
                batches = p.batches,
                pages_freed = p.pages_freed,
                "retention: old status bodies deleted"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Writes `text` to `path` atomically (a temporary file in the same directory, fsync, rename),
/// readable by node_exporter (mode 0644).
pub fn write_textfile(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| format!("metrics_textfile {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".stellantis-sync-metrics")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_dir_that_is_a_file_and_a_textfile_without_its_directory_are_refused() {
        let (_, p) = validate(
            RawHttp::default(),
            Some(PathBuf::from("/nonexistent-dir-of-node-exporter/x.prom")),
            RawBackup {
                dir: Some(PathBuf::from("/etc/passwd")),
                ..RawBackup::default()
            },
            RawRetention::default(),
            false,
            Path::new("/x"),
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["backup.dir", "metrics_textfile"], "{p:?}");
    }

    #[test]
    fn defaults_turn_everything_off_and_bad_values_name_their_key() {
        let (c, p) = validate(
            RawHttp::default(),
            None,
            RawBackup::default(),
            RawRetention::default(),
            false,
            Path::new("/var/lib/x"),
        );
        assert!(p.is_empty());
        assert!(c.http_listen.is_none() && c.backup_schedule.is_none() && c.retention.is_none());
        assert_eq!(c.backup_dir, Path::new("/var/lib/x/backups"));
        let (_, p) = validate(
            RawHttp {
                listen: Some("localhost".into()),
            },
            Some(PathBuf::from("/")),
            RawBackup {
                schedule: Some("daily".into()),
                dir: None,
                keep: 0,
            },
            RawRetention {
                batch_size: 0,
                ..RawRetention::default()
            },
            false,
            Path::new("/x"),
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.listen",
                "backup.schedule",
                "backup.keep",
                "retention.batch_size",
                "metrics_textfile"
            ]
        );
    }

    #[test]
    fn the_textfile_is_replaced_atomically_and_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
