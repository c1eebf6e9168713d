//! The daily request budget as a ceiling (issue 22, defect 9). `[telemetry]
//! daily_request_budget` is a promise to the operator: Stellantis' quotas are undocumented and an
//! account that exceeds them may be cut off. So every API request is counted before it is sent,
//! per app client id and UTC day, in `state_dir/requests-today.json`, and a request the day cannot
//! afford is not sent. Two rules decide ([`fits`], pure and table-tested):
//!
//! - the day's requests of an app client id never exceed the budget (list passes included);
//! - telemetry leaves the list passes their share of the rest of the day, and spends its own
//!   share no faster than the day goes, plus a slack of 5 % of it (at least 10 requests): cars
//!   that wake the planner all morning cannot spend the budget by late and leave the evening's
//!   charge unseen.
//!
//! The interval planner (`telemetry::schedule::stretch`) still aims below the budget; this is
//! the guard that holds whatever the cars do, in the daemon, under `--once` from a timer, and
//! across processes: a request locks the file, reads it, counts and rewrites it (atomically,
//! not fsynced: a killed process loses nothing of the count; a power cut may lose the last
//! seconds). A clock stepped back into an earlier day keeps the later day's count.
//!
//! **Leases.** Locking and rewriting the file costs about 0.2 ms, which at thousands of requests
//! a second is most of a core. So a process that asks again within a second of its last visit
//! to the file counts several requests at once (doubling up to [`MAX_LEASE`], never more than a
//! 64th of what is left of the day, each one checked by [`fits`]) and spends them from memory.
//! A process asking a few times a minute, as the daemon does, counts one at a time, so the file
//! is exact. Counted units not yet spent go back to the file on [`DailyBudget::release`] (at the
//! end of `--once`, at shutdown, on a reload); a killed process loses them, so the file may
//! over-count by at most `MAX_LEASE - 1` per app client id and purpose and process: never
//! under.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A page of `/user/vehicles` (list passes, `login`'s listing).
    List,
    /// Any per-vehicle endpoint (`/status`, `/trips`, `/alerts`, `/maintenance`).
    Telemetry,
}

/// One app client id's requests on one day.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    pub list: u64,
    pub telemetry: u64,
}

impl Spend {
    pub fn total(&self) -> u64 {
        self.list.saturating_add(self.telemetry)
    }
}

/// The file's content.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Day {
    /// The UTC date counted (`2026-12-07`).
    pub day: String,
    /// Per app client id.
    pub clients: BTreeMap<String, Spend>,
}

/// Why a request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The day's budget is spent (or what is left is the list passes' share).
    Spent { spent: u64, budget: u64 },
    /// Telemetry is ahead of the day's pace: more requests become affordable as the day goes.
    AheadOfPace { telemetry: u64, allowed: u64 },
}

/// Whether one more request of `purpose` fits the day: `budget` requests a day (0: no budget),
/// `list_per_day` of them for list passes, `spent` so far, `day_fraction` of the UTC day gone.
pub fn fits(
    budget: u64,
    list_per_day: f64,
    spent: Spend,
    purpose: Purpose,
    day_fraction: f64,
) -> Result<(), Refusal> {
    if budget == 0 {
        return Ok(());
    }
    let total = spent.total();
    let refused = Refusal::Spent {
        spent: total,
        budget,
    };
    if total >= budget {
        return Err(refused);
    }
    if purpose == Purpose::List {
        return Ok(());
    }
    let f = day_fraction.clamp(0.0, 1.0);
    let list_day = list_per_day.max(0.0).min(budget as f64);
    // The list passes of the rest of the day keep their share.
    let reserve = (list_day * (1.0 - f)).ceil() as u64;
    if total + 1 + reserve > budget {
        return Err(refused);
    }
    let share = budget as f64 - list_day;
    // The slack: 5 % of telemetry's share, at least 10 requests, never more than the share.
    let slack = (share * 0.05).max(10.0).min(share);
    let allowed = (share * f + slack).floor() as u64;
    if spent.telemetry + 1 > allowed {
        return Err(Refusal::AheadOfPace {
            telemetry: spent.telemetry,
            allowed,
        });
    }
    Ok(())
}

/// The budget and its list share per app client id, set from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Requests a day per app client id (0: none).
    pub budget: u64,
    /// List requests a day, per app client id.
    pub list_per_day: HashMap<String, f64>,
}

/// A clock for the day's count (the real one unless a test or a benchmark runs a simulated day).
pub type Clock = std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The counter of one state directory (none: nothing is counted or refused).
#[derive(Default)]
pub struct DailyBudget {
    path: Option<PathBuf>,
    plan: Mutex<Plan>,
    clock: std::sync::OnceLock<Clock>,
    lease: Mutex<Lease>,
}

/// The most requests one visit to the file counts at once.
pub const MAX_LEASE: u64 = 16;

/// Requests counted in the file and not yet sent, per app client id and purpose, for one day.
#[derive(Debug, Default)]
struct Lease {
    day: String,
    held: HashMap<(String, Purpose), Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// Counted in the file, not sent.
    left: u64,
    /// How many the last visit to the file counted.
    last_grant: u64,
    /// When that visit was.
    at: std::time::Instant,
}

impl std::fmt::Debug for DailyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DailyBudget")
            .field("path", &self.path)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// The file's name in the state directory.
pub const FILE: &str = "requests-today.json";

/// The UTC date and the fraction of that day gone at `now`.
fn day_of(now: DateTime<Utc>) -> (String, f64) {
    let day = now.format("%Y-%m-%d").to_string();
    let secs = now.timestamp().rem_euclid(86_400) as f64;
    (day, secs / 86_400.0)
}

impl DailyBudget {
    pub fn new(state_dir: Option<&Path>) -> DailyBudget {
        DailyBudget {
            path: state_dir.map(|d| d.join(FILE)),
            plan: Mutex::new(Plan::default()),
            clock: std::sync::OnceLock::new(),
            lease: Mutex::new(Lease::default()),
        }
    }

    /// Counts days on `clock` instead of the real clock (the first call wins): a benchmark or a
    /// test that runs a simulated day.
    pub fn set_clock(&self, clock: Clock) {
        let _ = self.clock.set(clock);
    }

    /// The time the day's count goes by.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.get().map_or_else(Utc::now, |c| c())
    }

    /// A reload's budget and list shares (what was counted ahead under the old plan goes back).
    pub fn set_plan(&self, plan: Plan) {
        self.release();
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    pub fn plan(&self) -> Plan {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one request of `client` for `purpose` at `now`, or refuses it. Holds the file's
    /// lock from the read to the write, so processes sharing the state directory count as one;
    /// a request already counted by this process's lease is taken from memory.
    pub fn take(&self, client: &str, purpose: Purpose, now: DateTime<Utc>) -> Result<(), Refusal> {
        let plan = self.plan();
        let Some(path) = &self.path else {
            return Ok(());
        };
        if plan.budget == 0 {
            return Ok(());
        }
        let (today, fraction) = day_of(now);
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        // A new day: what was counted ahead stays in the day before (over-counted, never under).
        // A clock stepped back keeps spending the later day's lease, as the file keeps its count.
        if today > lease.day {
            *lease = Lease {
                day: today.clone(),
                held: HashMap::new(),
            };
        }
        let key = (client.to_owned(), purpose);
        let last = lease.held.get(&key).copied();
        if let Some(h) = last.filter(|h| h.left > 0) {
            lease.held.insert(
                key,
                Held {
                    left: h.left - 1,
                    ..h
                },
            );
            return Ok(());
        }
        // Asked again within a second of the last visit: count more at once next time.
        let want = match last {
            Some(h) if h.at.elapsed() < std::time::Duration::from_secs(1) => {
                (h.last_grant * 2).min(MAX_LEASE)
            }
            _ => 1,
        };
        let granted = count_in_file(path, &plan, client, purpose, (&today, fraction), want)?;
        lease.held.insert(
            key,
            Held {
                left: granted - 1,
                last_grant: granted,
                at: std::time::Instant::now(),
            },
        );
        Ok(())
    }

    /// Gives back what this process counted and did not send (at the end of `--once`, at
    /// shutdown, on a reload), so the file holds what was sent.
    pub fn release(&self) {
        let Some(path) = &self.path else { return };
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let unsent: Vec<((String, Purpose), u64)> = lease
            .held
            .iter_mut()
            .filter(|(_, h)| h.left > 0)
            .map(|(k, h)| (k.clone(), std::mem::take(&mut h.left)))
            .collect();
        if unsent.is_empty() {
            return;
        }
        let lock = lock(path);
        let Some(mut day) = read(path).filter(|d| d.day == lease.day) else {
            return;
        };
        for ((client, purpose), n) in unsent {
            if let Some(s) = day.clients.get_mut(&client) {
                match purpose {
                    Purpose::List => s.list = s.list.saturating_sub(n),
                    Purpose::Telemetry => s.telemetry = s.telemetry.saturating_sub(n),
                }
            }
        }
        write(path, &day);
        drop(lock);
    }
}

/// Counts up to `want` requests of `client` for `purpose` in the file, each one checked by
/// [`fits`], under the file's lock; how many were counted, or why not even one.
fn count_in_file(
    path: &Path,
    plan: &Plan,
    client: &str,
    purpose: Purpose,
    (today, fraction): (&str, f64),
    want: u64,
) -> Result<u64, Refusal> {
    let lock = lock(path);
    let mut day = read(path).unwrap_or_default();
    if today > day.day.as_str() {
        day = Day {
            day: today.to_owned(),
            clients: BTreeMap::new(),
        };
    }
    let mut spent = day.clients.get(client).copied().unwrap_or_default();
    let list = plan.list_per_day.get(client).copied().unwrap_or(0.0);
    // Never more than a 64th of what the day has left: near the end, one at a time.
    let room = plan.budget.saturating_sub(spent.total()) / 64;
    let want = want.min(room.max(1));
    let mut granted = 0;
    while granted < want {
        if let Err(r) = fits(plan.budget, list, spent, purpose, fraction) {
            if granted == 0 {
                return Err(r);
            }
            break;
        }
        match purpose {
            Purpose::List => spent.list += 1,
            Purpose::Telemetry => spent.telemetry += 1,
        }
        granted += 1;
    }
    day.clients.insert(client.to_owned(), spent);
    write(path, &day);
    drop(lock);
    Ok(granted)
}

fn write(path: &Path, day: &Day) {
    match serde_json::to_vec(day) {
        Ok(bytes) => {
            if let Err(e) = crate::fsutil::write_atomic(path, &bytes, 0o640, false) {
                tracing::warn!("cannot count the request in {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("cannot count the request in {}: {e}", path.display()),
    }
}

/// The day's spend recorded in a state directory (for `status` and `/metrics`): the day and
/// the requests per app client id, if that day is today (UTC).
pub fn today(state_dir: &Path, now: DateTime<Utc>) -> Option<Day> {
    let day = read(&state_dir.join(FILE))?;
    (day.day == day_of(now).0).then_some(day)
}

fn read(path: &Path) -> Option<Day> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// An exclusive lock on `FILE.lock` beside the counter (released when dropped); without one
/// (a read-only directory) the count goes on unlocked.
fn lock(path: &Path) -> Option<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(crate::fsutil::with_suffix(path, ".lock"))
        .ok()?;
    f.lock().ok()?;
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(list: u64, telemetry: u64) -> Spend {
        Spend { list, telemetry }
    }

    #[test]
    fn the_day_never_holds_more_than_the_budget_and_the_lists_keep_their_share() {
        use Purpose::{List, Telemetry};
        // (budget, list a day, spent, purpose, fraction of the day, fits)
        let cases = [
            (0, 0.0, spend(10_000, 10_000), Telemetry, 0.5, true),
            (1000, 288.0, spend(0, 0), Telemetry, 0.0, true),
            (1000, 288.0, spend(0, 0), List, 0.0, true),
            // The total is spent: nothing, not even a list page.
            (1000, 288.0, spend(300, 700), List, 0.99, false),
            (1000, 288.0, spend(300, 700), Telemetry, 0.99, false),
            (1000, 288.0, spend(299, 700), List, 0.99, true),
            // Telemetry leaves the rest of the day's list passes their share: at 21:36, 29.
            (1000, 288.0, spend(300, 670), Telemetry, 0.9, true),
            (1000, 288.0, spend(300, 671), Telemetry, 0.9, false),
            (1000, 288.0, spend(300, 671), List, 0.9, true),
            // Paced: at 06:00 a quarter of telemetry's 712 plus 5 % (35): 213.
            (1000, 288.0, spend(72, 212), Telemetry, 0.25, true),
            (1000, 288.0, spend(72, 213), Telemetry, 0.25, false),
            // The slack is at least 10 requests: a small budget can poll at midnight.
            (100, 10.0, spend(0, 9), Telemetry, 0.0, true),
            (100, 10.0, spend(0, 10), Telemetry, 0.0, false),
            // A list share above the budget leaves telemetry nothing.
            (100, 500.0, spend(0, 0), Telemetry, 0.5, false),
        ];
        for (i, (budget, list, spent, purpose, f, ok)) in cases.into_iter().enumerate() {
            assert_eq!(
                fits(budget, list, spent, purpose, f).is_ok(),
                ok,
                "case {i}: {budget} {list} {spent:?} {purpose:?} {f}"
            );
        }
    }

    /// Whatever is asked, a simulated day never spends more than the budget: a request is tried
    /// four times a second all day (345,600: more than these budgets allow), one in 80 a list
    /// page (4,320 a day, a pass every 20 s).
    #[test]
    fn a_day_of_requests_asked_four_times_a_second_stays_within_the_budget() {
        let steps = 4 * 86_400u32;
        for (budget, list) in [(1000u64, 288.0), (100_000, 4_320.0), (50, 100.0)] {
            let mut s = spend(0, 0);
            for i in 0..steps {
                let purpose = if i % 80 == 0 {
                    Purpose::List
                } else {
                    Purpose::Telemetry
                };
                if fits(budget, list, s, purpose, f64::from(i) / f64::from(steps)).is_ok() {
                    match purpose {
                        Purpose::List => s.list += 1,
                        Purpose::Telemetry => s.telemetry += 1,
                    }
                }
            }
            assert!(s.total() <= budget, "{budget}: {s:?}");
            // Not starved either: the budget is nearly all used.
            assert!(
                s.total() as f64 >= budget as f64 * 0.95,
                "{budget}: only {s:?}"
            );
        }
    }

    #[test]
    fn the_count_is_shared_by_processes_and_starts_afresh_each_day() {
        let dir = tempfile::tempdir().unwrap();
        let plan = || Plan {
            budget: 30,
            list_per_day: HashMap::from([("c".to_owned(), 10.0)]),
        };
        let a = DailyBudget::new(Some(dir.path()));
        let b = DailyBudget::new(Some(dir.path()));
        a.set_plan(plan());
        b.set_plan(plan());
        let late = DateTime::parse_from_rfc3339("2026-12-07T23:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut granted = 0;
        for i in 0..100 {
            let who = if i % 2 == 0 { &a } else { &b };
            let purpose = if i % 3 == 0 {
                Purpose::List
            } else {
                Purpose::Telemetry
            };
            if who.take("c", purpose, late).is_ok() {
                granted += 1;
            }
        }
        assert_eq!(granted, 30, "two counters on one directory are one budget");
        let t = today(dir.path(), late).unwrap();
        assert_eq!(t.clients["c"].total(), 30);
        // Another client id has its own budget.
        assert!(a.take("other", Purpose::List, late).is_ok());
        // The next day starts afresh; a clock stepped back to the day before keeps it.
        let tomorrow = late + chrono::TimeDelta::minutes(2);
        assert!(a.take("c", Purpose::List, tomorrow).is_ok());
        assert_eq!(today(dir.path(), tomorrow).unwrap().clients["c"].list, 1);
        assert!(today(dir.path(), late).is_none());
        for _ in 0..40 {
            let _ = a.take("c", Purpose::List, late);
        }
        assert_eq!(
            today(dir.path(), tomorrow).unwrap().clients["c"].total(),
            30,
            "the day before counts into today after a step back"
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn large(budget: u64) -> Plan {
        Plan {
            budget,
            list_per_day: HashMap::from([("c".to_owned(), 0.0)]),
        }
    }

    /// Asked thousands of times a second, two processes count ahead and spend from memory; the
    /// file never counts less than was sent, at most 15 more per counter and purpose, and after
    /// `release` exactly what was sent.
    #[test]
    fn leases_count_ahead_by_at_most_fifteen_and_release_gives_the_rest_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = DailyBudget::new(Some(dir.path()));
        let b = DailyBudget::new(Some(dir.path()));
        a.set_plan(large(1_000_000));
        b.set_plan(large(1_000_000));
        let noon = at("2026-12-07T12:00:00Z");
        let mut sent = 0u64;
        let mut visits = 0u64;
        for i in 0..4_000u64 {
            let who = if i % 2 == 0 { &a } else { &b };
            let purpose = if i % 3 == 0 {
                Purpose::List
            } else {
                Purpose::Telemetry
            };
            let before = std::fs::metadata(dir.path().join(FILE))
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            who.take("c", purpose, noon).unwrap();
            sent += 1;
            let after = std::fs::metadata(dir.path().join(FILE))
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if before != after || before.is_none() {
                visits += 1;
            }
            let counted = today(dir.path(), noon).unwrap().clients["c"].total();
            assert!(counted >= sent, "the file never counts less than was sent");
            assert!(
                counted <= sent + 4 * (MAX_LEASE - 1),
                "{counted} counted, {sent} sent"
            );
        }
        assert!(
            visits < 4_000 / 4,
            "leases spare the file: {visits} visits for 4000 requests"
        );
        a.release();
        b.release();
        let t = today(dir.path(), noon).unwrap().clients["c"];
        assert_eq!(t.total(), sent);
        assert_eq!(t.list, (0..4_000u64).filter(|i| i % 3 == 0).count() as u64);
    }

    /// Leases never let the day exceed its budget, and between them the counters still reach it.
    #[test]
    fn leases_keep_the_ceiling_and_spend_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = DailyBudget::new(Some(dir.path()));
        let b = DailyBudget::new(Some(dir.path()));
        a.set_plan(large(5_000));
        b.set_plan(large(5_000));
        let noon = at("2026-12-07T12:00:00Z");
        let mut granted = 0u64;
        for i in 0..20_000 {
            let who = if i % 2 == 0 { &a } else { &b };
            if who.take("c", Purpose::List, noon).is_ok() {
                granted += 1;
            }
        }
        assert_eq!(granted, 5_000);
        a.release();
        b.release();
        assert_eq!(today(dir.path(), noon).unwrap().clients["c"].total(), 5_000);
    }

    /// A lease belongs to its day: the next day counts afresh in the file; a clock stepped back
    /// spends the later day's lease (as the file keeps the later day's count); a reload gives
    /// the lease back.
    #[test]
    fn a_lease_belongs_to_its_day_and_a_reload_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = DailyBudget::new(Some(dir.path()));
        a.set_plan(large(1_000_000));
        let late = at("2026-12-07T23:59:59Z");
        for _ in 0..100 {
            a.take("c", Purpose::List, late).unwrap();
        }
        let tomorrow = at("2026-12-08T00:00:01Z");
        a.take("c", Purpose::List, tomorrow).unwrap();
        assert_eq!(today(dir.path(), tomorrow).unwrap().clients["c"].list, 1);
        // Stepped back: spent from the later day's lease or counted into the later day.
        for _ in 0..30 {
            a.take("c", Purpose::List, late).unwrap();
        }
        assert!(today(dir.path(), late).is_none());
        a.set_plan(large(1_000_000));
        assert_eq!(today(dir.path(), tomorrow).unwrap().clients["c"].list, 31);
    }
}
