//! The simulator's one clock: real time multiplied by `time_scale` (sim seconds per real second)
//! plus the jumps made by `advance_clock`. Cars, token lifetimes, authorization codes, the
//! list-change ticks and every timestamp in a body read it; only the gateway's quotas count real
//! time (the client's budget is real).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Debug, Clone)]
pub(super) struct SimClock {
    /// Sim time and real instant at the last change of scale.
    anchor_sim: DateTime<Utc>,
    anchor_real: Instant,
    scale: f64,
    /// The sum of the jumps.
    offset: Duration,
    /// The sim time and real instant at start, to express sim time as an `Instant`.
    start_sim: DateTime<Utc>,
    start_real: Instant,
    /// Never ahead of the real clock: a scaled world started in the past catches up with now,
    /// then runs in real time (as real cars' reports are never dated after the fetch).
    capped: bool,
}

impl SimClock {
    pub fn new(start: DateTime<Utc>, scale: f64) -> SimClock {
        let now = Instant::now();
        SimClock {
            anchor_sim: start,
            anchor_real: now,
            scale: sane_scale(scale),
            offset: Duration::ZERO,
            start_sim: start,
            start_real: now,
            capped: false,
        }
    }

    /// A clock that never runs ahead of the real one ([`SimClock::now`]).
    pub fn capped_at_real_time(mut self) -> SimClock {
        self.capped = true;
        self
    }

    /// The sim time now.
    pub fn now(&self) -> DateTime<Utc> {
        let real = self.anchor_real.elapsed().as_secs_f64() * self.scale;
        let scaled = chrono::Duration::from_std(
            Duration::try_from_secs_f64(real.clamp(0.0, 1e12)).unwrap_or_default(),
        )
        .unwrap_or(chrono::Duration::zero());
        let jump = chrono::Duration::from_std(self.offset).unwrap_or(chrono::Duration::zero());
        let t = self.anchor_sim + scaled + jump;
        if self.capped { t.min(Utc::now()) } else { t }
    }

    /// The sim time now as an `Instant` (for the token tables): the real start instant plus
    /// the sim time elapsed since start.
    pub fn instant(&self) -> Instant {
        let elapsed = (self.now() - self.start_sim)
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.start_real + elapsed
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Changes the speed from now on (sim time does not jump).
    pub fn set_scale(&mut self, scale: f64) {
        let jump = chrono::Duration::from_std(self.offset).unwrap_or(chrono::Duration::zero());
        self.anchor_sim = self.now() - jump;
        self.anchor_real = Instant::now();
        self.scale = sane_scale(scale);
    }

    /// Jumps forward.
    pub fn advance(&mut self, by: Duration) {
        self.offset += by;
    }
}

/// A negative or non-finite scale would run time backwards or nowhere: clamp to [0, 1e6].
fn sane_scale(s: f64) -> f64 {
    if s.is_finite() {
        s.clamp(0.0, 1e6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_clock_catches_up_with_now_and_never_passes_it() {
        let start = Utc::now() - chrono::Duration::hours(1);
        let c = SimClock::new(start, 1e6).capped_at_real_time();
        let uncapped = SimClock::new(start, 1e6);
        std::thread::sleep(Duration::from_millis(20));
        let (before, t, after) = (Utc::now(), c.now(), Utc::now());
        assert!(
            before - chrono::Duration::seconds(1) <= t && t <= after,
            "{t} is now"
        );
        assert!(uncapped.now() > Utc::now() + chrono::Duration::hours(1));
    }

    #[test]
    fn scale_and_jumps() {
        let start = Utc::now();
        let mut c = SimClock::new(start, 0.0);
        assert_eq!(c.now(), start);
        c.advance(Duration::from_secs(3600));
        assert_eq!(c.now(), start + chrono::Duration::hours(1));
        c.set_scale(1000.0);
        std::thread::sleep(Duration::from_millis(20));
        let d = (c.now() - start - chrono::Duration::hours(1)).num_milliseconds();
        assert!((19_000..2_000_000).contains(&d), "{d}");
        let before = c.now();
        c.set_scale(0.0);
        assert!(c.now() >= before);
        assert!(c.instant() >= Instant::now() + Duration::from_secs(3599));
    }
}
