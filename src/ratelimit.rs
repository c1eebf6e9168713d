//! Client-side rate limiting. Two limiters ([`Pacer`], GCRA), one for every request to the API
//! (all accounts together) and one for the identity provider, plus a shared cooldown: a 429 slows
//! the whole client, not only the request that got it.
//!
//! There is one [`Limits`] per process: a reload (SIGHUP) changes its rates in place
//! ([`Limits::set_rates`]) instead of building another one, so the jobs still running on the old
//! configuration and those started on the new one draw on the same budget (issue 22: a limiter
//! per reload put 4–5 requests in one second at `requests_per_second = 2`).
//!
//! The budget outlives the process: the time of the last API request and any `Retry-After`
//! cooldown are written to `state_dir/budget.json`, so a restart or a `--once` run from cron every
//! minute starts where the last one stopped instead of bursting. What is read back is clamped (a
//! clock stepped back must not turn a cooldown into a day of silence), and a cooldown longer than
//! [`MAX_BLOCKING_WAIT`] is not slept through inside a pass: the request fails at once with
//! [`CoolingDown`], so a pass always ends and says why.
//!
//! A 429 that says nothing about when to come back (no readable `Retry-After`, no
//! `X-RateLimit-Reset`) backs off exponentially across passes (`retry_cap` × 2^n, at most an
//! hour), so a daily quota is not hammered by every account on every pass.
//!
//! With `burst = 1` (the default) no one-second window ever holds more than
//! `requests_per_second` requests (see [`quota`] for how that holds at high rates), with a 1 %
//! guard band against network jitter. A larger `burst` allows `burst - 1` extra requests in a
//! window.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Rate;

/// What is kept on disk between runs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Budget {
    /// Unix milliseconds of the last API request.
    last_api_request_ms: Option<u64>,
    /// Unix milliseconds until which no API request may be sent (a server-asked cooldown).
    cooldown_until_ms: Option<u64>,
    /// 429s in a row that gave no hint of when to come back (the exponent of the back-off).
    #[serde(default)]
    unhinted_429s: u32,
}

/// The longest cooldown ever believed: a daily quota resets within a day.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(86_400);
/// The longest a request waits for a cooldown inside a pass; beyond, it fails with [`CoolingDown`].
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(60);
/// The longest back-off after 429s without a hint.
pub const MAX_UNHINTED_BACKOFF: Duration = Duration::from_secs(3600);

/// No request was sent: the API asked us to wait longer than a pass should block, or the day's
/// request budget cannot afford it ([`crate::spend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct CoolingDown {
    /// When requests may resume (RFC 3339).
    pub until: TimeText,
    /// Whose rule it is.
    pub why: Wait,
}

/// Why no request may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A cooldown the server asked for (429).
    Server,
    /// `daily_request_budget`: spent, or telemetry ahead of the day's pace.
    Budget(crate::spend::Refusal),
}

fn describe(c: &CoolingDown) -> String {
    use crate::spend::Refusal;
    match c.why {
        Wait::Server => format!(
            "the API asked every request to wait until {} (rate limit); no request sent",
            c.until
        ),
        Wait::Budget(Refusal::Spent { spent, budget }) => format!(
            "the day's request budget is spent ({spent} of daily_request_budget = {budget} for this app client id, the rest kept for list passes); no request sent until {}",
            c.until
        ),
        Wait::Budget(Refusal::AheadOfPace { telemetry, allowed }) => format!(
            "telemetry is ahead of the day's pace ({telemetry} requests today, {allowed} affordable by now under daily_request_budget); no request sent"
        ),
    }
}

/// The next midnight UTC after `now_ms` (when the day's budget starts afresh).
fn next_midnight_ms(now_ms: u64) -> u64 {
    (now_ms / 86_400_000 + 1) * 86_400_000
}

/// A Unix-millisecond instant that prints as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeText(pub u64);

impl std::fmt::Display for TimeText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = chrono::DateTime::from_timestamp_millis(i64::try_from(self.0).unwrap_or(i64::MAX))
            .unwrap_or_default();
        f.write_str(&crate::timefmt::format(t))
    }
}

impl Budget {
    /// Clamps what was read from disk: nothing further than [`MAX_COOLDOWN`] ahead (a clock
    /// stepped back, a corrupt file), no last request in the future.
    fn clamped(mut self, now_ms: u64) -> Budget {
        let max = now_ms.saturating_add(u64::try_from(MAX_COOLDOWN.as_millis()).unwrap_or(0));
        if self.cooldown_until_ms.is_some_and(|c| c > max) {
            self.cooldown_until_ms = Some(max);
        }
        if self.last_api_request_ms.is_some_and(|l| l > now_ms) {
            self.last_api_request_ms = None;
        }
        self
    }
}

/// A GCRA limiter (the generic cell rate algorithm, as a leaky bucket seen from the next
/// request): one permit per `period`, up to `burst` at once after a quiet spell. Its rate can
/// change in place while requests wait: the new rate applies to what was already spent (the
/// theoretical arrival time is kept), so a reload with the same rate changes nothing and never
/// grants an extra permit. The decision ([`Pacer::take_at`]) is pure: it is given the instant.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Clone, Copy)]
struct PacerState {
    period: Duration,
    burst: u32,
    /// The theoretical arrival time of the next request (`None`: never used).
    tat: Option<std::time::Instant>,
}

impl Pacer {
    /// A limiter of one permit per `period`, `burst` at once.
    pub fn new(period: Duration, burst: NonZeroU32) -> Pacer {
        Pacer {
            state: Mutex::new(PacerState {
                period,
                burst: burst.get(),
                tat: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the rate for every later permit, keeping what was already spent.
    pub fn set_rate(&self, period: Duration, burst: NonZeroU32) {
        let mut s = self.state();
        s.period = period;
        s.burst = burst.get();
    }

    /// Takes a permit at `now`, or says how long to wait before asking again.
    pub fn take_at(&self, now: std::time::Instant) -> Result<(), Duration> {
        let mut s = self.state();
        let tat = s.tat.unwrap_or(now).max(now);
        // The burst tolerance: a request may come this long before its theoretical time.
        let tolerance = s.period.saturating_mul(s.burst.saturating_sub(1));
        let allowed_from = tat.checked_sub(tolerance).unwrap_or(now);
        if now < allowed_from {
            return Err(allowed_from - now);
        }
        s.tat = Some(tat + s.period);
        Ok(())
    }

    /// Waits for a permit.
    pub async fn until_ready(&self) {
        while let Err(wait) = self.take_at(std::time::Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The limiters shared by every account.
pub struct Limits {
    api: Pacer,
    idp: Pacer,
    /// The API's spacing, in milliseconds (what the persisted last request is spaced by).
    api_period_ms: std::sync::atomic::AtomicU64,
    budget: Mutex<Budget>,
    path: Option<PathBuf>,
    /// Whether this process has sent an API request yet: the previous process's last request
    /// matters only before our first one (after that, the pacer spaces the requests).
    started: std::sync::atomic::AtomicBool,
    /// Where requests are counted (src/metrics.rs), once the operations runtime attaches it.
    metrics: std::sync::OnceLock<std::sync::Arc<crate::metrics::Metrics>>,
    /// Per-account requests and quota headers, recorded in `sync_runs`.
    pub usage: crate::api::usage::Usage,
    /// The day's requests against `daily_request_budget` (set by [`Limits::set_daily_budget`]).
    pub daily: crate::spend::DailyBudget,
}

/// The period and burst of the limiter for a configured rate. GCRA admits at most
/// `burst + n - 1` requests in any one-second window at `n` per second. Timers wake up to a millisecond late; with a burst of
/// 1 every late wake-up is lost for good (at 200/s that costs about 10 %). So at rates of 20/s
/// and more, a configured burst of 1 becomes an internal burst of 2 at `n - 1` per second: the
/// limiter can catch up after a late wake-up, and no window ever holds more than `n`.
fn quota(rate: Rate) -> (Duration, NonZeroU32) {
    let n = rate.per_second.get();
    let (per_second, burst) = if rate.burst.get() == 1 && n >= 20 {
        (n - 1, NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN))
    } else {
        (n, rate.burst)
    };
    // A guard band against jitter between our permit and the server's counter: 1 %, and at low
    // rates at least 30 ms (a request that needs a new connection arrives later than the next
    // one on a warm connection; at 2/s the adversarial review saw three arrivals within 979 ms).
    let guard = (Duration::from_secs(1) / per_second)
        .mul_f64(0.01)
        .max(if n < 20 {
            Duration::from_millis(30)
        } else {
            Duration::ZERO
        });
    let period = Duration::from_secs(1) / per_second + guard;
    (period, burst)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Limits {
    /// Limiters for these rates; with a state directory, the saved budget is loaded from it.
    pub fn new(api: Rate, idp: Rate, state_dir: Option<&Path>) -> Limits {
        let (api_period, api_burst) = quota(api);
        let (idp_period, idp_burst) = quota(idp);
        let path = state_dir.map(|d| d.join("budget.json"));
        let budget = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Budget>(&b).ok())
            .unwrap_or_default()
            .clamped(unix_ms(SystemTime::now()));
        Limits {
            api: Pacer::new(api_period, api_burst),
            idp: Pacer::new(idp_period, idp_burst),
            api_period_ms: std::sync::atomic::AtomicU64::new(millis(api_period)),
            budget: Mutex::new(budget),
            path,
            started: std::sync::atomic::AtomicBool::new(false),
            metrics: std::sync::OnceLock::new(),
            usage: crate::api::usage::Usage::default(),
            daily: crate::spend::DailyBudget::new(state_dir),
        }
    }

    /// Unlimited limiters (for tools and tests that do not talk to a quota).
    pub fn unlimited() -> Limits {
        let big = Rate {
            per_second: NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MAX),
            burst: NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MAX),
        };
        Limits::new(big, big, None)
    }

    /// A reload: new rates for every later permit, on the same budget (the requests already
    /// sent and the cooldown count against the new rates too).
    pub fn set_rates(&self, api: Rate, idp: Rate) {
        let (api_period, api_burst) = quota(api);
        let (idp_period, idp_burst) = quota(idp);
        self.api.set_rate(api_period, api_burst);
        self.idp.set_rate(idp_period, idp_burst);
        self.api_period_ms
            .store(millis(api_period), std::sync::atomic::Ordering::Relaxed);
    }

    /// The daily budget and the list passes' share of it per app client id (at start and on
    /// every reload).
    pub fn set_daily_budget(&self, plan: crate::spend::Plan) {
        self.daily.set_plan(plan);
    }

    /// Counts this limiter's requests into `m` (the first call wins).
    pub fn set_metrics(&self, m: std::sync::Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(m);
    }

    /// The metrics requests are counted into, if attached.
    pub fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.metrics.get().map(|m| &**m)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long to wait before the next API request may go out, from the persisted state.
    fn wait_from_budget(&self) -> Duration {
        let now = unix_ms(SystemTime::now());
        let b = self.budget();
        let mut until = b.cooldown_until_ms.unwrap_or(0);
        let started = self.started.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(last) = b.last_api_request_ms.filter(|_| !started) {
            let period = self
                .api_period_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let next = last.saturating_add(period);
            until = until.max(next);
        }
        Duration::from_millis(until.saturating_sub(now))
    }

    /// Waits until an API request may be sent, then takes a permit and counts the request into
    /// the day's budget; fails at once when the cooldown lasts longer than
    /// [`MAX_BLOCKING_WAIT`], or when the day cannot afford the request (`client`: the account's
    /// app client id, whose budget it is).
    pub async fn api_permit(
        &self,
        client: &str,
        purpose: crate::spend::Purpose,
    ) -> Result<(), CoolingDown> {
        loop {
            let wait = self.wait_from_budget();
            if wait.is_zero() {
                break;
            }
            if wait > MAX_BLOCKING_WAIT {
                let until = unix_ms(SystemTime::now())
                    .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                return Err(CoolingDown {
                    until: TimeText(until),
                    why: Wait::Server,
                });
            }
            tokio::time::sleep(wait).await;
        }
        self.api.until_ready().await;
        let now = self.daily.now();
        if let Err(refusal) = self.daily.take(client, purpose, now) {
            let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
            return Err(CoolingDown {
                until: TimeText(next_midnight_ms(now_ms)),
                why: Wait::Budget(refusal),
            });
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.budget().last_api_request_ms = Some(unix_ms(SystemTime::now()));
        Ok(())
    }

    /// Waits until an identity-provider request may be sent.
    pub async fn idp_permit(&self) {
        self.idp.until_ready().await;
    }

    /// A 429 with no usable hint of when to come back: the cooldown doubles with every such 429
    /// in a row (from `base`, at most [`MAX_UNHINTED_BACKOFF`]), across passes and processes.
    /// Returns the cooldown applied.
    pub fn unhinted_429(&self, base: Duration) -> Duration {
        let n = {
            let mut b = self.budget();
            b.unhinted_429s = b.unhinted_429s.saturating_add(1);
            b.unhinted_429s
        };
        let d = base
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)))
            .min(MAX_UNHINTED_BACKOFF);
        self.cooldown(d);
        d
    }

    /// A request went through: the next hint-less 429 starts the back-off from the beginning.
    pub fn note_success(&self) {
        let mut b = self.budget();
        if b.unhinted_429s != 0 {
            b.unhinted_429s = 0;
        }
    }

    /// The server asked every request to wait `d` (a 429): applies to all accounts, and is
    /// saved at once so that the next process honours it too.
    pub fn cooldown(&self, d: Duration) {
        let until = unix_ms(SystemTime::now() + d.min(MAX_COOLDOWN));
        {
            let mut b = self.budget();
            b.cooldown_until_ms = Some(b.cooldown_until_ms.unwrap_or(0).max(until));
        }
        self.save();
    }

    /// The cooldown saved in a state directory, if one is in force: when it ends (for `status`).
    pub fn saved_cooldown(state_dir: &Path) -> Option<TimeText> {
        let now = unix_ms(SystemTime::now());
        let b: Budget =
            serde_json::from_slice(&std::fs::read(state_dir.join("budget.json")).ok()?).ok()?;
        let until = b.clamped(now).cooldown_until_ms?;
        (until > now).then_some(TimeText(until))
    }

    /// How long the current cooldown still lasts.
    pub fn cooldown_remaining(&self) -> Duration {
        let now = unix_ms(SystemTime::now());
        Duration::from_millis(
            self.budget()
                .cooldown_until_ms
                .unwrap_or(0)
                .saturating_sub(now),
        )
    }

    /// Writes the budget to the state directory (atomic; losing the last write costs at most
    /// one second of spacing, so it is not fsynced).
    /// Also gives back the daily budget's requests counted ahead and not sent
    /// ([`crate::spend::DailyBudget::release`]).
    pub fn save(&self) {
        self.daily.release();
        let Some(path) = &self.path else { return };
        let bytes = match serde_json::to_vec(&*self.budget()) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = crate::fsutil::write_atomic(path, &bytes, 0o640, false) {
            tracing::warn!(
                "cannot save the rate-limit budget to {}: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(p: u32, b: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(p).unwrap(),
            burst: NonZeroU32::new(b).unwrap(),
        }
    }

    #[test]
    fn low_rates_keep_a_guard_band_for_connection_jitter() {
        // Adversarial review: at 2/s three token requests arrived within 979 ms.
        let (period, _) = quota(rate(2, 1));
        assert!(period >= Duration::from_millis(530), "{period:?}");
        let (period, _) = quota(rate(200, 1));
        assert!(period < Duration::from_millis(6), "{period:?}");
    }

    /// Issue 22 defect 8: a reload changes the rate of the one limiter in place. Simulated
    /// time, 1 ms steps: a request is tried every millisecond for 5 s at 2/s with a reload
    /// every 50 ms (100 reloads), and no one-second window holds more than 2 permits; a change
    /// to a faster rate mid-burst grants nothing before the spacing already promised.
    #[test]
    fn a_reload_mid_burst_keeps_one_budget() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (period, burst) = quota(rate(2, 1));
        let p = Pacer::new(period, burst);
        let mut permits = Vec::new();
        for ms in 0..5000u64 {
            if ms % 50 == 25 {
                p.set_rate(period, burst);
            }
            if p.take_at(at(ms)).is_ok() {
                permits.push(ms);
            }
        }
        assert_eq!(permits.len(), 10, "{permits:?}");
        for (i, first) in permits.iter().enumerate() {
            let in_window = permits[i..]
                .iter()
                .take_while(|t| **t < first + 1000)
                .count();
            assert!(
                in_window <= 2,
                "{in_window} permits from {first} ms: {permits:?}"
            );
        }
        // Now 10/s (130 ms with the guard band) with a burst of 3: what was spent stays spent.
        // The next permit comes at the time the last 2/s permit promised (530 ms after it)
        // less the new burst's tolerance (2 × 130 ms), not at once as from a new limiter.
        let last = *permits.last().unwrap();
        let (fast, fast_burst) = quota(rate(10, 3));
        p.set_rate(fast, fast_burst);
        let next = (last + 1..last + 2000)
            .find(|ms| p.take_at(at(*ms)).is_ok())
            .unwrap();
        assert_eq!(next, last + 530 - 2 * 130);
    }

    #[test]
    fn a_burst_is_granted_after_a_quiet_spell_and_then_spaced() {
        let t0 = std::time::Instant::now();
        let p = Pacer::new(Duration::from_millis(100), NonZeroU32::new(3).unwrap());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(p.take_at(at(0)), Ok(()));
        }
        assert_eq!(p.take_at(at(0)), Err(Duration::from_millis(100)));
        assert_eq!(p.take_at(at(100)), Ok(()));
        assert_eq!(p.take_at(at(150)), Err(Duration::from_millis(50)));
        // After a quiet second the full burst is back, not more.
        let granted = (0..5).filter(|_| p.take_at(at(1300)).is_ok()).count();
        assert_eq!(granted, 3);
    }

    #[tokio::test]
    async fn requests_are_spaced_by_the_rate() {
        // Below 20/s a burst of 1 means strict spacing: 10 gaps of at least 100 ms.
        let l = Limits::new(rate(10, 1), rate(1, 1), None);
        let start = std::time::Instant::now();
        for _ in 0..11 {
            l.api_permit("c", crate::spend::Purpose::List)
                .await
                .unwrap();
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn no_one_second_window_holds_more_than_the_rate() {
        // 200/s for 1.5 s: record every permit and check every window starting at a permit.
        let l = Limits::new(rate(200, 1), rate(1, 1), None);
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        while start.elapsed() < Duration::from_millis(1500) {
            l.api_permit("c", crate::spend::Purpose::List)
                .await
                .unwrap();
            times.push(std::time::Instant::now());
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 200, "{in_window} permits within one second");
        }
        // And the rate is used: not a limiter that waits twice as long as it must. (How close
        // the pacing comes to the rate is a benchmark figure, scenarios 1 and 8 of
        // `cargo bench --bench sync`: a timed assertion at 95 % failed on a loaded machine,
        // where every sleep rounds up to the timer's millisecond.)
        let rate_seen = times.len() as f64 / start.elapsed().as_secs_f64();
        assert!(rate_seen >= 120.0, "{rate_seen:.1}/s");
    }

    #[tokio::test]
    async fn cooldown_is_shared_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let l = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        l.cooldown(Duration::from_millis(400));
        let again = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        assert!(again.cooldown_remaining() > Duration::from_millis(200));
        let start = std::time::Instant::now();
        again
            .api_permit("c", crate::spend::Purpose::List)
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_cooldown_read_back_from_the_future_is_clamped_and_long_ones_fail_fast() {
        // Issue 10 item 10: a budget written before the clock was stepped back by a year.
        let dir = tempfile::tempdir().unwrap();
        let year = unix_ms(SystemTime::now()) + 365 * 86_400_000;
        std::fs::write(
            dir.path().join("budget.json"),
            format!("{{\"last_api_request_ms\":{year},\"cooldown_until_ms\":{year}}}"),
        )
        .unwrap();
        let l = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        assert!(l.cooldown_remaining() <= MAX_COOLDOWN);
        // A long cooldown is not slept through: the permit fails at once, saying until when.
        let start = std::time::Instant::now();
        let err = l
            .api_permit("c", crate::spend::Purpose::List)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(err.to_string().contains("wait until"), "{err}");
    }

    #[test]
    fn hintless_429s_back_off_exponentially_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let base = Duration::from_secs(30);
        let l = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        assert_eq!(l.unhinted_429(base), Duration::from_secs(30));
        assert_eq!(l.unhinted_429(base), Duration::from_secs(60));
        let again = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        assert_eq!(again.unhinted_429(base), Duration::from_secs(120));
        for _ in 0..20 {
            again.unhinted_429(base);
        }
        assert_eq!(again.unhinted_429(base), MAX_UNHINTED_BACKOFF);
        again.note_success();
        assert_eq!(again.unhinted_429(base), Duration::from_secs(30));
    }
}
