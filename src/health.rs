//! Liveness and readiness: the signals behind systemd's watchdog, `/healthz` and `/readyz`.
//!
//! [`Liveness`] is beaten by the daemon's event loop on every turn and on a short timer; it is
//! alive while the last beat is recent. The same value decides whether the loop sends
//! `WATCHDOG=1` and whether `/healthz` answers 200, so a loop that stops turning turns both red.
//!
//! Readiness ([`readiness`]) asks three questions: can the database be written (a one-page write
//! from a separate connection with a short busy timeout; a writer holding the lock counts as
//! writable), did the last list pass finish recently (before the schedule fired twice more, about
//! twice the schedule's period, [`schedule_period`]), and did that pass sync at least one
//! account. An instance that syncs no account does not do its job, whatever the reason (every
//! account failing, needing a login, or none configured for its shard), so it is not ready.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the event loop beats when nothing else happens.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A loop silent for longer than this is not alive.
pub const MAX_SILENCE: Duration = Duration::from_secs(15);

/// The event loop's heartbeat, shared (`Arc`) with the HTTP listener.
#[derive(Debug)]
pub struct Liveness {
    last: Mutex<Instant>,
    max_silence: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new(MAX_SILENCE)
    }
}

impl Liveness {
    /// A liveness that is alive now and stays so for `max_silence` without a beat.
    pub fn new(max_silence: Duration) -> Liveness {
        Liveness {
            last: Mutex::new(Instant::now()),
            max_silence,
        }
    }

    /// Records that the event loop turned.
    pub fn beat(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Time since the last beat.
    pub fn silence(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Whether the loop beat within `max_silence`.
    pub fn is_alive(&self) -> bool {
        self.silence() <= self.max_silence
    }

    /// Sends `WATCHDOG=1` to systemd, only while alive; returns whether it did.
    pub fn feed_watchdog(&self) -> bool {
        if self.is_alive() {
            crate::notify::notify("WATCHDOG=1");
            true
        } else {
            tracing::warn!(
                silence_s = self.silence().as_secs(),
                "event loop silent: not feeding the watchdog"
            );
            false
        }
    }
}

/// The period of a cron schedule (six fields, seconds first): the time between its next two
/// fire times after `now`. `None` if the expression does not parse or never fires twice.
pub fn schedule_period(expr: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .ok()?;
    let first = cron.find_next_occurrence(&now, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

/// The next fire time of a cron schedule after `now`.
pub fn next_fire(
    expr: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .ok()?
        .find_next_occurrence(&now, false)
        .ok()
}

/// What readiness needs of the last finished list pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPass {
    pub finished: SystemTime,
    /// Accounts the pass synced (`ok`).
    pub synced: usize,
    /// Accounts the pass tried.
    pub accounts: usize,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// One line per check, `ok` or the reason.
    pub lines: Vec<String>,
}

/// Whether the database can be written: one page written and committed from a separate
/// connection (`BEGIN IMMEDIATE`, set `user_version` to itself, `COMMIT`). A busy database means
/// another connection is writing, which counts as writable.
pub fn database_writable(path: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    // Never checkpoint from here: with Litestream, checkpoints are its job.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(|e| e.to_string())?;
    let probe = (|| -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        conn.execute_batch(&format!("PRAGMA user_version = {v}; COMMIT;"))
    })();
    match probe {
        Ok(()) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(format!("{} is not writable: {e}", path.display()))
        }
    }
}

/// `/readyz`: the database is writable, the last pass finished within about twice the period,
/// and it synced at least one account.
pub fn readiness(
    database: &Path,
    schedule: &str,
    last_pass: Option<LastPass>,
    now: SystemTime,
) -> Readiness {
    let last_pass_finished = last_pass.map(|p| p.finished);
    let mut lines = Vec::new();
    let mut ready = true;
    match database_writable(database) {
        Ok(()) => lines.push("database: ok".to_owned()),
        Err(e) => {
            ready = false;
            lines.push(format!("database: {e}"));
        }
    }
    let period = schedule_period(schedule, chrono::DateTime::<chrono::Utc>::from(now));
    match (last_pass_finished, period) {
        (None, _) => {
            ready = false;
            lines.push("last pass: none has finished yet".to_owned());
        }
        (Some(_), None) => {
            ready = false;
            lines.push(format!("last pass: schedule `{schedule}` has no period"));
        }
        (Some(at), Some(period)) => {
            // Late when the schedule has fired twice since the last pass finished and a period
            // more has passed: on a regular schedule about twice the period, and a schedule with
            // gaps (`* * 6-8 * * *`) is not late overnight. Measured from the pass's own time, so
            // a clock set back does not make it late either.
            let at_utc = chrono::DateTime::<chrono::Utc>::from(at);
            let deadline = next_fire(schedule, at_utc)
                .and_then(|f1| next_fire(schedule, f1).map(|f2| (f1, f2)))
                .map(|(f1, f2)| f2 + (f2 - f1));
            let age = now.duration_since(at).unwrap_or_default();
            match deadline {
                Some(d) if chrono::DateTime::<chrono::Utc>::from(now) <= d => {
                    lines.push(format!("last pass: ok ({} s ago)", age.as_secs()));
                }
                _ => {
                    ready = false;
                    lines.push(format!(
                        "last pass: finished {} s ago, and the schedule has fired twice since (more than twice its period, {} s)",
                        age.as_secs(),
                        period.as_secs()
                    ));
                }
            }
        }
    }
    match last_pass {
        None => {}
        Some(p) if p.accounts == 0 => {
            ready = false;
            lines.push(
                "accounts: none to sync (no account is configured for this instance)".to_owned(),
            );
        }
        Some(p) if p.synced == 0 => {
            ready = false;
            lines.push(format!(
                "accounts: the last pass synced none of {} (`stellantis-sync status` shows why)",
                p.accounts
            ));
        }
        Some(p) => lines.push(format!(
            "accounts: ok ({} of {} synced in the last pass)",
            p.synced, p.accounts
        )),
    }
    Readiness { ready, lines }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_goes_silent_without_beats_and_recovers_on_a_beat() {
        let l = Liveness::new(Duration::from_millis(50));
        assert!(l.is_alive());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!l.is_alive());
        assert!(!l.feed_watchdog());
        l.beat();
        assert!(l.is_alive());
        assert!(l.feed_watchdog());
    }

    #[test]
    fn the_period_is_the_gap_between_the_next_two_fire_times() {
        let now = chrono::Utc::now();
        assert_eq!(
            schedule_period("0 */5 * * * *", now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            schedule_period("*/2 * * * * *", now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            schedule_period("0 0 3 * * *", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(schedule_period("not cron", now), None);
    }

    #[test]
    fn readiness_needs_a_recent_pass_and_a_writable_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        let now = SystemTime::now();
        let at = |finished| {
            Some(LastPass {
                finished,
                synced: 1,
                accounts: 2,
            })
        };
        let r = readiness(&db, "0 */5 * * * *", at(now), now);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.lines[2], "accounts: ok (1 of 2 synced in the last pass)");
        let r = readiness(&db, "0 */5 * * * *", None, now);
        assert!(!r.ready);
        assert!(r.lines[1].contains("none has finished"), "{r:?}");
        // A pass finished at 08:00:01; the schedule fires at 08:05 and 08:10; late after 08:15.
        let pass = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_371_201);
        let r = readiness(
            &db,
            "0 */5 * * * *",
            at(pass),
            pass + Duration::from_secs(898),
        );
        assert!(r.ready, "{r:?}");
        let r = readiness(
            &db,
            "0 */5 * * * *",
            at(pass),
            pass + Duration::from_secs(900),
        );
        assert!(!r.ready);
        assert!(r.lines[1].contains("fired twice since"), "{r:?}");
        // A schedule with gaps (business hours) is not late overnight (the ops adversarial
        // pass: it was red all night); it is late once it fired twice more without a pass.
        let evening = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_374_799); // 08:59:59 UTC
        let night = evening + Duration::from_secs(6 * 3600);
        let r = readiness(&db, "*/10 * 6-8 * * *", at(evening), night);
        assert!(r.ready, "{r:?}");
        let morning = evening + Duration::from_secs(21 * 3600 + 60);
        let r = readiness(&db, "*/10 * 6-8 * * *", at(evening), morning);
        assert!(!r.ready, "{r:?}");
        let r = readiness(
            &dir.path().join("missing.sqlite"),
            "0 */5 * * * *",
            at(now),
            now,
        );
        assert!(!r.ready);
        assert!(r.lines[0].contains("cannot open"), "{r:?}");
    }

    /// Issue 25: `/readyz` said ready while every account was failing (a gateway answering 500 to
    /// all); an instance that syncs no account is not ready, nor one with no account at all.
    #[test]
    fn an_instance_that_syncs_no_account_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        let now = SystemTime::now();
        let pass = |synced, accounts| {
            readiness(
                &db,
                "0 */5 * * * *",
                Some(LastPass {
                    finished: now,
                    synced,
                    accounts,
                }),
                now,
            )
        };
        let r = pass(0, 3);
        assert!(!r.ready, "{r:?}");
        assert_eq!(
            r.lines,
            [
                "database: ok",
                "last pass: ok (0 s ago)",
                "accounts: the last pass synced none of 3 (`stellantis-sync status` shows why)"
            ]
        );
        let r = pass(0, 0);
        assert!(!r.ready, "{r:?}");
        assert!(r.lines[2].contains("none to sync"), "{r:?}");
        assert!(pass(1, 3).ready);
        assert!(pass(3, 3).ready);
    }

    #[test]
    fn a_locked_database_counts_as_writable() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        let holder = rusqlite::Connection::open(&db).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        assert_eq!(database_writable(&db), Ok(()));
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(database_writable(&db), Ok(()));
    }
}
