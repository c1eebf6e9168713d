//! Backoff and `Retry-After`. `Retry-After` comes as seconds, as an HTTP-date, or (in real
//! Stellantis traffic) as `name=rate-limit-1,22248`, which means nothing reliable: that form and
//! anything else unreadable yield `None`, and the caller falls back to exponential backoff.
//! Backoff is "full jitter": a uniform draw in `[0, min(cap, base · 2^attempt)]`.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Parses `Retry-After`; `now` is the reference for HTTP-dates. At most one hour is honoured.
pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    let d = if let Ok(secs) = t.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(at) = httpdate::parse_http_date(t) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        return None;
    };
    Some(d.min(Duration::from_secs(3600)))
}

/// Parses `X-RateLimit-Reset`: seconds until the quota window resets (the documented form), or
/// a Unix time in seconds (some gateways send that). At most a day is honoured.
pub fn parse_reset(raw: &str, now: SystemTime) -> Option<Duration> {
    let n: u64 = raw.trim().parse().ok()?;
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = if n > 1_000_000_000 {
        n.saturating_sub(now_s)
    } else {
        n
    };
    Some(Duration::from_secs(secs.min(86_400)))
}

/// The upper bound of the backoff before retry number `attempt` (0-based).
pub fn backoff_cap(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(20));
    base.saturating_mul(factor).min(cap)
}

/// A full-jitter delay before retry number `attempt`.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let hi = backoff_cap(attempt, base, cap);
    let ms = u64::try_from(hi.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("name=rate-limit-1,22248", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn rate_limit_reset_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_reset("1045", now), Some(Duration::from_secs(1045)));
        assert_eq!(
            parse_reset("1700000600", now),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse_reset("999999", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_reset("soon", now), None);
    }

    #[test]
    fn full_jitter_stays_in_bounds_and_averages_half_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..10 {
            let hi = backoff_cap(attempt, base, cap);
            let n = 2_000u32;
            let mut sum = Duration::ZERO;
            for _ in 0..n {
                let d = full_jitter(attempt, base, cap);
                assert!(d <= hi);
                sum += d;
            }
            let mean = sum / n;
            let expect = hi / 2;
            let tolerance = hi / 10;
            assert!(
                mean + tolerance >= expect && mean <= expect + tolerance,
                "attempt {attempt}: {mean:?} vs {expect:?}"
            );
        }
        assert_eq!(backoff_cap(30, base, cap), cap);
    }
}
