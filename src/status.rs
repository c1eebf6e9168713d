//! `stellantis-sync status`: one line per account — state, access token valid until, refresh
//! token age, last sync and its result, vehicles, last error. Reads the token store and the
//! database read-only, so it works while the daemon runs; it never shows a token.

use std::fmt::Write as _;

use chrono::Utc;

use crate::auth::store::TokenStore;
use crate::config::Config;
use crate::store;
use crate::timefmt;

/// Renders the status table.
pub fn render(cfg: &Config) -> String {
    let tokens = TokenStore::new(&cfg.state_dir);
    let conn = if cfg.database.exists() {
        store::open_read_only(&cfg.database).ok()
    } else {
        None
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<13} {:<25} {:<9} {:<25} {:<7} {:>8}  LAST ERROR",
        "ACCOUNT", "STATE", "TOKEN VALID UNTIL", "RT AGE", "LAST SYNC", "RESULT", "VEHICLES"
    );
    for a in &cfg.accounts {
        let rec = tokens.load(&a.name).ok().flatten();
        let (db_state, reason, vehicles) = conn
            .as_ref()
            .and_then(|c| {
                c.query_row(
                    "SELECT state, state_reason, vehicles FROM sync_health WHERE account = ?1",
                    [&a.name],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .ok()
            })
            .unwrap_or_else(|| ("unknown".into(), None, 0));
        let state = if rec.as_ref().is_some_and(|r| r.needs_reauth) {
            "needs_reauth".to_owned()
        } else if rec.as_ref().is_none_or(|r| r.refresh_token.is_none())
            && a.refresh_token.is_none()
            && a.password.is_none()
        {
            "needs_login".to_owned()
        } else {
            db_state
        };
        let valid = rec
            .as_ref()
            .filter(|r| !r.needs_reauth)
            .and_then(|r| r.access_expires_at.clone())
            .unwrap_or_else(|| "-".into());
        let age = rec
            .as_ref()
            .and_then(|r| r.chain_started_at.as_deref())
            .and_then(timefmt::parse)
            .map(|t| {
                let d = Utc::now() - t;
                if d.num_hours() >= 48 {
                    format!("{}d", d.num_days())
                } else {
                    format!("{}h", d.num_hours())
                }
            })
            .unwrap_or_else(|| "-".into());
        let last = conn
            .as_ref()
            .and_then(|c| store::last_run(c, &a.name).ok().flatten());
        let (when, result, err) = match last {
            Some((at, status, kind, msg)) => (
                at,
                status,
                kind.map(|k| format!("{k}: {}", msg.unwrap_or_default()))
                    .unwrap_or_default(),
            ),
            None => ("never".into(), "-".into(), String::new()),
        };
        let err = if state == "needs_reauth" {
            let why = rec
                .as_ref()
                .and_then(|r| r.reason.clone())
                .or(reason)
                .unwrap_or_default();
            format!("run `stellantis-sync login --account {}`: {why}", a.name)
        } else {
            err
        };
        let err: String = crate::redact::printable(&err).chars().take(240).collect();
        let _ = writeln!(
            out,
            "{:<16} {:<13} {:<25} {:<9} {:<25} {:<7} {:>8}  {}",
            a.name, state, valid, age, when, result, vehicles, err
        );
    }
    if let Some(until) = crate::ratelimit::Limits::saved_cooldown(&cfg.state_dir) {
        let _ = writeln!(
            out,
            "rate limit: the API asked every request to wait until {until}; passes fail fast (rate_limited) until then"
        );
    }
    out.push_str(&spend_lines(cfg, chrono::Utc::now()));
    if let Some(c) = &conn {
        out.push_str(&crate::telemetry::status_lines(c, cfg));
    }
    let _ = writeln!(out, "{}", last_backup_line(cfg));
    out
}

/// `requests today: <n> of <budget> (<list> list, <telemetry> telemetry) for app client <id>`,
/// one line per app client id of the configuration.
fn spend_lines(cfg: &Config, now: chrono::DateTime<chrono::Utc>) -> String {
    let budget = cfg.telemetry.daily_request_budget;
    let today = crate::spend::today(&cfg.state_dir, now).unwrap_or_default();
    let mut clients: Vec<&str> = cfg.accounts.iter().map(|a| a.client_id.as_str()).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut out = String::new();
    for c in clients {
        let s = today.clients.get(c).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "requests today (UTC): {} of daily_request_budget {budget} ({} list, {} telemetry), app client {c}",
            s.total(),
            s.list,
            s.telemetry
        );
    }
    out
}

/// `last backup: <time> <file> (<bytes> bytes, <seconds> s, <kind>)` or `last backup: none …`.
fn last_backup_line(cfg: &Config) -> String {
    match crate::backup::last_backup(&cfg.state_dir) {
        Some(b) => format!(
            "last backup: {} {} ({} bytes, {:.2} s, {})",
            b.finished_at,
            b.path.display(),
            b.bytes,
            b.seconds,
            b.kind
        ),
        None => "last backup: none (stellantis-sync backup, or [backup] schedule)".to_owned(),
    }
}
