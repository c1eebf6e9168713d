//! Timestamps as this project writes them: RFC 3339, UTC, milliseconds, `Z`
//! (`2026-11-28T08:15:38.123Z`), so that they sort correctly as text in SQLite.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a UTC instant the one way the project stores time.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, formatted.
pub fn now() -> String {
    format(Utc::now())
}

/// Parses a timestamp written by [`format`] (or any RFC 3339 text).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn millis_and_z_and_sortable() {
        let t = Utc.with_ymd_and_hms(2026, 11, 28, 8, 15, 38).unwrap()
            + chrono::Duration::milliseconds(123);
        assert_eq!(format(t), "2026-11-28T08:15:38.123Z");
        let earlier = format(t - chrono::Duration::milliseconds(1));
        assert!(earlier < format(t));
        assert_eq!(parse(&format(t)), Some(t));
    }
}
