//! Client-side rate limiting. Two governor limiters, one for every request to the API (all
//! accounts together) and one for the identity provider, plus a shared cooldown: a 429 slows the
//! whole client, not only the request that got it.
//!
//! The budget outlives the process: the time of the last API request and any `Retry-After`
//! cooldown are written to `state_dir/budget.json`, so a restart or a `--once` run from cron every
//! minute starts where the last one stopped instead of bursting.
//!
//! With `burst = 1` (the default) no one-second window ever holds more than
//! `requests_per_second` requests (see [`quota`] for how that holds at high rates), with a 1 %
//! guard band against network jitter. A larger `burst` allows `burst - 1` extra requests in a
//! window.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::config::Rate;

/// What is kept on disk between runs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Budget {
    /// Unix milliseconds of the last API request.
    last_api_request_ms: Option<u64>,
    /// Unix milliseconds until which no API request may be sent (a server-asked cooldown).
    cooldown_until_ms: Option<u64>,
}

/// The limiters shared by every account.
pub struct Limits {
    api: DefaultDirectRateLimiter,
    idp: DefaultDirectRateLimiter,
    api_period: Duration,
    budget: Mutex<Budget>,
    path: Option<PathBuf>,
    /// Whether this process has sent an API request yet: the previous process's last request
    /// matters only before our first one (after that, governor spaces the requests).
    started: std::sync::atomic::AtomicBool,
}

/// The governor quota for a configured rate. GCRA admits at most `burst + n - 1` requests in
/// any one-second window at `n` per second. Timers wake up to a millisecond late; with a burst of
/// 1 every late wake-up is lost for good (at 200/s that costs about 10 %). So at rates of 20/s
/// and more, a configured burst of 1 becomes an internal burst of 2 at `n - 1` per second: the
/// limiter can catch up after a late wake-up, and no window ever holds more than `n`.
fn quota(rate: Rate) -> (Quota, Duration) {
    let n = rate.per_second.get();
    let (per_second, burst) = if rate.burst.get() == 1 && n >= 20 {
        (n - 1, NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN))
    } else {
        (n, rate.burst)
    };
    // A 1 % guard band against network jitter between us and the server's counter.
    let period = Duration::from_secs(1).mul_f64(1.01) / per_second;
    let q = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(rate.per_second))
        .allow_burst(burst);
    (q, period)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Limits {
    /// Limiters for these rates; with a state directory, the saved budget is loaded from it.
    pub fn new(api: Rate, idp: Rate, state_dir: Option<&Path>) -> Limits {
        let (api_quota, api_period) = quota(api);
        let (idp_quota, _) = quota(idp);
        let path = state_dir.map(|d| d.join("budget.json"));
        let budget = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Limits {
            api: RateLimiter::direct(api_quota),
            idp: RateLimiter::direct(idp_quota),
            api_period,
            budget: Mutex::new(budget),
            path,
            started: std::sync::atomic::AtomicBool::new(false),
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
            let next = last + u64::try_from(self.api_period.as_millis()).unwrap_or(0);
            until = until.max(next);
        }
        Duration::from_millis(until.saturating_sub(now))
    }

    /// Waits until an API request may be sent, then takes a permit.
    pub async fn api_permit(&self) {
        loop {
            let wait = self.wait_from_budget();
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        self.api.until_ready().await;
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.budget().last_api_request_ms = Some(unix_ms(SystemTime::now()));
    }

    /// Waits until an identity-provider request may be sent.
    pub async fn idp_permit(&self) {
        self.idp.until_ready().await;
    }

    /// The server asked every request to wait `d` (a 429): applies to all accounts, and is
    /// saved at once so that the next process honours it too.
    pub fn cooldown(&self, d: Duration) {
        let until = unix_ms(SystemTime::now() + d);
        {
            let mut b = self.budget();
            b.cooldown_until_ms = Some(b.cooldown_until_ms.unwrap_or(0).max(until));
        }
        self.save();
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

    /// Writes the budget to the state directory (temp file + rename; losing it costs at most
    /// one second of spacing, so it is not fsynced).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let Some(dir) = path.parent() else { return };
        let bytes = match serde_json::to_vec(&*self.budget()) {
            Ok(b) => b,
            Err(_) => return,
        };
        let result = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.persist(path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = result {
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

    #[tokio::test]
    async fn requests_are_spaced_by_the_rate() {
        // Below 20/s a burst of 1 means strict spacing: 10 gaps of at least 100 ms.
        let l = Limits::new(rate(10, 1), rate(1, 1), None);
        let start = std::time::Instant::now();
        for _ in 0..11 {
            l.api_permit().await;
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
            l.api_permit().await;
            times.push(std::time::Instant::now());
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 200, "{in_window} permits within one second");
        }
        // And the rate is used: at least 95 % of 200/s over the run.
        let rate_seen = times.len() as f64 / start.elapsed().as_secs_f64();
        assert!(rate_seen >= 190.0, "{rate_seen:.1}/s");
    }

    #[tokio::test]
    async fn cooldown_is_shared_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let l = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        l.cooldown(Duration::from_millis(400));
        let again = Limits::new(rate(100, 1), rate(1, 1), Some(dir.path()));
        assert!(again.cooldown_remaining() > Duration::from_millis(200));
        let start = std::time::Instant::now();
        again.api_permit().await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
