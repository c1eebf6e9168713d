//! The daemon's typed jobs and their due-time queue. Pure: no clock, no IO, no task. The caller
//! passes `now`; the daemon's event loop sleeps until [`JobQueue::next_due`], takes what is due
//! with [`JobQueue::pop_due`], marks it running with [`JobQueue::start`] (refused while the
//! previous run of that job still runs), and reports the end with [`JobQueue::complete`].
//!
//! Each job has at most one pending occurrence and at most one run in progress, so two runs of
//! the same job never overlap. When several jobs are overdue, they start in [`Job`] order (the
//! list pass first), not by how late they are.
//!
//! Due times are wall-clock instants (a cron fires at wall times); the loop's sleeps are
//! monotonic and it asks again on waking. A wall clock stepped back would leave every pending
//! occurrence as far ahead as the step (a list pass planned under a clock a month ahead, a month
//! away; a telemetry round 5 s ahead, 3 minutes away after a step of 3 minutes), so the loop
//! measures the step ([`clock_step_back`]: the wall clock against the monotonic one) and
//! [`JobQueue::stepped_back`] moves every occurrence earlier by it: each still comes after the
//! same real time. A step forward leaves occurrences overdue: they run at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What the daemon runs. The order is the priority among jobs due at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// A pass over every account's vehicle list, on the `schedule` cron.
    ListPass,
    /// One telemetry round: what is due per vehicle (`[telemetry]`).
    TelemetryRound,
    /// A checked `VACUUM INTO` backup, on `[backup] schedule`.
    Backup,
    /// Pruning of old status bodies (`[retention]`), after each list pass.
    Retention,
}

impl Job {
    /// For logs.
    pub fn name(self) -> &'static str {
        match self {
            Job::ListPass => "list pass",
            Job::TelemetryRound => "telemetry round",
            Job::Backup => "backup",
            Job::Retention => "retention",
        }
    }
}

/// When each job is next due, and which jobs run.
#[derive(Debug, Clone, Default)]
pub struct JobQueue {
    due: BTreeMap<Job, DateTime<Utc>>,
    running: BTreeSet<Job>,
}

impl JobQueue {
    /// Sets when `job` is next due, replacing its pending occurrence.
    pub fn schedule(&mut self, job: Job, at: DateTime<Utc>) {
        self.due.insert(job, at);
    }

    /// Forgets `job`'s pending occurrence (a run in progress is not affected).
    pub fn unschedule(&mut self, job: Job) {
        self.due.remove(&job);
    }

    /// Forgets every pending occurrence: nothing new starts (shutdown).
    pub fn clear(&mut self) {
        self.due.clear();
    }

    /// The next occurrence to act on and when: overdue occurrences count as due `now`, so among
    /// them the [`Job`] order decides. `None` when nothing is scheduled.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Job)> {
        self.due.iter().map(|(&job, &at)| (at.max(now), job)).min()
    }

    /// Removes and returns the occurrence due at `now`, if one is.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<Job> {
        let (at, job) = self.next_due(now)?;
        if at > now {
            return None;
        }
        self.due.remove(&job);
        Some(job)
    }

    /// Marks `job` running; `false` (and nothing changes) when its previous run still runs.
    pub fn start(&mut self, job: Job) -> bool {
        self.running.insert(job)
    }

    /// `job`'s run ended. Its next occurrence is `next`, unless one scheduled meanwhile (by a
    /// reload, say) comes earlier.
    pub fn complete(&mut self, job: Job, next: Option<DateTime<Utc>>) {
        self.running.remove(&job);
        if let Some(n) = next {
            let at = self.due.get(&job).map_or(n, |&d| d.min(n));
            self.due.insert(job, at);
        }
    }

    /// The wall clock was stepped back by `by`: every pending occurrence moves `by` earlier, so
    /// it comes after the same real time as planned.
    pub fn stepped_back(&mut self, by: chrono::Duration) {
        for at in self.due.values_mut() {
            *at -= by;
        }
    }

    /// Whether `job` has a run in progress.
    pub fn is_running(&self, job: Job) -> bool {
        self.running.contains(&job)
    }

    /// When `job` is next due, if it is scheduled.
    pub fn due_at(&self, job: Job) -> Option<DateTime<Utc>> {
        self.due.get(&job).copied()
    }
}

/// When the next telemetry round starts, after one that started at `started`, ended at `ended`
/// and found the next vehicle endpoint due at `next_due` (unix seconds; `None` when nothing is
/// scheduled yet): when that is due, but at least a second after this round and at most five
/// seconds after it started (so vehicles the list pass adds or removes are followed).
pub fn next_telemetry_round(
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    next_due: Option<i64>,
) -> DateTime<Utc> {
    const PAUSE: Duration = Duration::from_secs(1);
    const RELOAD_EVERY: Duration = Duration::from_secs(5);
    let earliest = ended + PAUSE;
    let Some(due) = next_due.and_then(|d| DateTime::from_timestamp(d, 0)) else {
        return earliest;
    };
    due.min(started + RELOAD_EVERY).max(earliest)
}

/// A step back of the wall clock smaller than this is not acted on (reading the two clocks
/// one after the other, and a clock slewed by NTP, differ by far less).
pub const STEP_TOLERANCE: Duration = Duration::from_secs(1);

/// How far the wall clock was stepped back since it read `last_wall`, `elapsed` ago on the
/// monotonic clock: `None` for a steady clock (within [`STEP_TOLERANCE`]) or one stepped
/// forward (a suspended machine's monotonic clock stands still while the wall clock runs).
pub fn clock_step_back(
    last_wall: DateTime<Utc>,
    elapsed: Duration,
    now: DateTime<Utc>,
) -> Option<chrono::Duration> {
    let expected = last_wall + chrono::Duration::from_std(elapsed).ok()?;
    let back = expected - now;
    (back > chrono::Duration::from_std(STEP_TOLERANCE).ok()?).then_some(back)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake time: `t(s)` is `s` seconds after a fixed instant.
    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("in range")
    }

    #[test]
    fn an_empty_queue_has_nothing_due() {
        let mut q = JobQueue::default();
        assert_eq!(q.next_due(t(0)), None);
        assert_eq!(q.pop_due(t(0)), None);
    }

    #[test]
    fn the_earliest_occurrence_comes_first_and_nothing_runs_early() {
        let mut q = JobQueue::default();
        q.schedule(Job::Backup, t(30));
        q.schedule(Job::ListPass, t(60));
        assert_eq!(q.next_due(t(0)), Some((t(30), Job::Backup)));
        assert_eq!(q.pop_due(t(29)), None, "not before its time");
        assert_eq!(q.pop_due(t(30)), Some(Job::Backup));
        assert_eq!(q.next_due(t(30)), Some((t(60), Job::ListPass)));
        assert_eq!(q.pop_due(t(45)), None);
        assert_eq!(q.pop_due(t(61)), Some(Job::ListPass));
        assert_eq!(q.next_due(t(61)), None);
    }

    #[test]
    fn a_step_back_is_measured_against_the_monotonic_clock() {
        let secs = Duration::from_secs;
        // (case, wall clock read before, monotonic time since, wall clock now, step back)
        let cases = [
            ("steady", t(0), secs(2), t(2), None),
            ("within the tolerance", t(0), secs(2), t(1), None),
            ("3 minutes back", t(0), secs(2), t(2 - 180), Some(180)),
            (
                "a month back",
                t(0),
                secs(5),
                t(5 - 30 * 86_400),
                Some(30 * 86_400),
            ),
            ("forward", t(0), secs(2), t(3600), None),
            ("a suspended machine", t(0), secs(0), t(8 * 3600), None),
        ];
        for (case, last, elapsed, now, want) in cases {
            assert_eq!(
                clock_step_back(last, elapsed, now).map(|d| d.num_seconds()),
                want,
                "{case}"
            );
        }
    }

    /// Issue 22, defect 7: the wall clock steps back after the jobs were planned; each pending
    /// occurrence still comes after the same real time.
    #[test]
    fn a_step_back_keeps_each_occurrence_at_its_real_time() {
        let mut q = JobQueue::default();
        q.start(Job::TelemetryRound);
        let next = next_telemetry_round(t(0), t(1), Some(t(600).timestamp()));
        q.complete(Job::TelemetryRound, Some(next));
        assert_eq!(q.due_at(Job::TelemetryRound), Some(t(5)));
        // The list pass in 15 minutes.
        q.schedule(Job::ListPass, t(900));
        // The loop wakes 5 s later (its sleep is monotonic); the clock reads 3 minutes earlier.
        let now = t(5 - 180);
        assert_eq!(q.pop_due(now), None, "obeyed blindly: 3 minutes of nothing");
        q.stepped_back(clock_step_back(t(0), Duration::from_secs(5), now).unwrap());
        assert_eq!(q.pop_due(now), Some(Job::TelemetryRound));
        assert_eq!(q.due_at(Job::ListPass), Some(t(900 - 180)));
        assert_eq!(q.pop_due(now), None, "the pass 15 minutes on, as planned");
        assert_eq!(q.pop_due(t(900 - 180)), Some(Job::ListPass));
    }

    #[test]
    fn overdue_jobs_start_in_job_order_not_by_lateness() {
        let mut q = JobQueue::default();
        q.schedule(Job::Retention, t(1));
        q.schedule(Job::Backup, t(2));
        q.schedule(Job::ListPass, t(9));
        assert_eq!(q.next_due(t(10)), Some((t(10), Job::ListPass)));
        let order: Vec<Job> = std::iter::from_fn(|| q.pop_due(t(10))).collect();
        assert_eq!(order, [Job::ListPass, Job::Backup, Job::Retention]);
    }

    #[test]
    fn scheduling_again_replaces_the_pending_occurrence() {
        let mut q = JobQueue::default();
        q.schedule(Job::ListPass, t(10));
        q.schedule(Job::ListPass, t(20));
        assert_eq!(q.pop_due(t(15)), None);
        assert_eq!(q.due_at(Job::ListPass), Some(t(20)));
        q.unschedule(Job::ListPass);
        assert_eq!(q.next_due(t(0)), None);
    }

    #[test]
    fn a_job_never_runs_twice_at_once() {
        let mut q = JobQueue::default();
        assert!(q.start(Job::ListPass));
        assert!(q.is_running(Job::ListPass));
        assert!(!q.start(Job::ListPass), "the second start is refused");
        assert!(q.start(Job::TelemetryRound), "other jobs are independent");
        q.complete(Job::ListPass, None);
        assert!(!q.is_running(Job::ListPass));
        assert!(q.start(Job::ListPass));
    }

    #[test]
    fn complete_schedules_the_next_occurrence_unless_an_earlier_one_is_pending() {
        let mut q = JobQueue::default();
        q.start(Job::Backup);
        q.complete(Job::Backup, Some(t(100)));
        assert_eq!(q.due_at(Job::Backup), Some(t(100)));

        // A reload asked for a round now while one ran: the earlier occurrence stands.
        q.start(Job::TelemetryRound);
        q.schedule(Job::TelemetryRound, t(5));
        q.complete(Job::TelemetryRound, Some(t(50)));
        assert_eq!(q.due_at(Job::TelemetryRound), Some(t(5)));

        // A later one is replaced by the run's own next time.
        q.start(Job::TelemetryRound);
        q.schedule(Job::TelemetryRound, t(90));
        q.complete(Job::TelemetryRound, Some(t(60)));
        assert_eq!(q.due_at(Job::TelemetryRound), Some(t(60)));

        // No next time: the job stays unscheduled (retention waits for the next pass).
        q.start(Job::Retention);
        q.complete(Job::Retention, None);
        assert_eq!(q.due_at(Job::Retention), None);
    }

    #[test]
    fn clear_forgets_every_occurrence_but_not_the_runs() {
        let mut q = JobQueue::default();
        q.schedule(Job::ListPass, t(1));
        q.schedule(Job::Backup, t(2));
        q.start(Job::TelemetryRound);
        q.clear();
        assert_eq!(q.pop_due(t(100)), None);
        assert!(q.is_running(Job::TelemetryRound));
    }

    #[test]
    fn telemetry_rounds_follow_the_due_time_within_one_and_five_seconds() {
        // Nothing known yet: a second after the round.
        assert_eq!(next_telemetry_round(t(0), t(0), None), t(1));
        // Due in a minute: re-read the vehicles five seconds after the start anyway.
        assert_eq!(
            next_telemetry_round(t(0), t(0), Some(t(60).timestamp())),
            t(5)
        );
        // Due in three seconds: then.
        assert_eq!(
            next_telemetry_round(t(0), t(1), Some(t(3).timestamp())),
            t(3)
        );
        // Overdue, or a long round: never sooner than a second after its end.
        assert_eq!(
            next_telemetry_round(t(0), t(8), Some(t(2).timestamp())),
            t(9)
        );
        assert_eq!(
            next_telemetry_round(t(0), t(0), Some(t(-5).timestamp())),
            t(1)
        );
    }
}
