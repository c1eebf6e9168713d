//! The token decisions, pure: no IO, no clock of their own (`now` is an argument), so each rule
//! is a row in a table test.
//!
//! - which grant to present next ([`plan`]): a changed bootstrap token from the configuration is
//!   adopted; the stored refresh token comes next; then the password grant; otherwise a person
//!   must run `login`. A refresh token the identity provider has refused is never presented
//!   again, whatever its source.
//! - whether a stored access token is still usable ([`usable_access`]);
//! - whether a 401 of the API may trigger a refresh ([`may_refresh_after_401`]): not within an
//!   hour of a freshly refreshed token being refused too, because a 401 that persists with a
//!   fresh token says the token is not the problem;
//! - whether a record kept in memory after a failed save still supersedes the file
//!   ([`pending_supersedes`]): never overwrite a newer chain (a `login` meanwhile).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::store::{TokenRecord, fingerprint};
use crate::timefmt;

/// What is about to be presented to the identity provider.
#[derive(Debug)]
pub enum Plan {
    Refresh {
        token: SecretString,
        /// How the chain began (`login`, `password`, `bootstrap`).
        source: String,
        /// The token comes from the configuration (a new chain starts).
        bootstrap: bool,
    },
    Password,
    /// Nothing left to try: a person must run `login`.
    Reauth(String),
}

/// What the configuration offers for one account.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// The configured `refresh_token` and its fingerprint.
    pub bootstrap: Option<(&'a SecretString, &'a str)>,
    /// A username and password are configured.
    pub password: bool,
}

/// The next grant to try. `refused` holds fingerprints refused during this attempt, beside the
/// record's own `refused_sha256`.
pub fn plan(
    offered: Offered<'_>,
    rec: Option<&TokenRecord>,
    password_tried: bool,
    refused: &HashSet<String>,
) -> Plan {
    let is_refused = |fp: &str| {
        refused.contains(fp) || rec.is_some_and(|r| r.refused_sha256.iter().any(|x| x == fp))
    };
    if let Some((token, fp)) = offered.bootstrap
        && rec.is_none_or(|r| r.bootstrap_sha256.as_deref() != Some(fp))
        && !is_refused(fp)
    {
        return Plan::Refresh {
            token: token.clone(),
            source: "bootstrap".into(),
            bootstrap: true,
        };
    }
    if let Some(r) = rec
        && !r.needs_reauth
        && let Some(tok) = &r.refresh_token
        && !is_refused(&fingerprint(tok))
    {
        return Plan::Refresh {
            token: tok.clone(),
            source: r.source.clone().unwrap_or_else(|| "store".into()),
            bootstrap: false,
        };
    }
    if offered.password && !password_tried {
        return Plan::Password;
    }
    Plan::Reauth(match rec {
        Some(r) if r.needs_reauth => r
            .reason
            .clone()
            .unwrap_or_else(|| "no valid refresh token".into()),
        Some(_) => "the refresh token was rejected and nothing else is configured".into(),
        None => "no token yet: no refresh_token or password is configured".into(),
    })
}

/// The stored access token, if it is valid for at least `margin` more and is not the one the API
/// just rejected.
pub fn usable_access(
    rec: &TokenRecord,
    margin: Duration,
    now: DateTime<Utc>,
    rejected_fp: Option<&str>,
) -> Option<SecretString> {
    if rec.needs_reauth {
        return None;
    }
    let tok = rec.access_token.as_ref()?;
    let expires = timefmt::parse(rec.access_expires_at.as_deref()?)?;
    let margin = chrono::Duration::from_std(margin).ok()?;
    let fresh = expires.checked_sub_signed(margin).is_some_and(|t| t > now);
    (fresh && rejected_fp != Some(fingerprint(tok).as_str())).then(|| tok.clone())
}

/// How long after a fresh token was refused too (`unauthorized_refresh_at`) a 401 may again
/// trigger a refresh.
pub const UNAUTHORIZED_REFRESH_EVERY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Whether a 401 may make the daemon refresh now. A time in the future (a clock stepped back)
/// does not block for longer than the period.
pub fn may_refresh_after_401(rec: Option<&TokenRecord>, now: DateTime<Utc>) -> bool {
    let Some(last) = rec
        .and_then(|r| r.unauthorized_refresh_at.as_deref())
        .and_then(timefmt::parse)
    else {
        return true;
    };
    let age = now.signed_duration_since(last);
    age >= UNAUTHORIZED_REFRESH_EVERY || age < -UNAUTHORIZED_REFRESH_EVERY
}

/// Whether a record that could not be saved (kept in memory) should replace what is on disk now:
/// only while the disk still holds the refresh token it was rotated from (or nothing). If the file
/// moved on (a `login`, another process), the newer file wins.
pub fn pending_supersedes(disk: Option<&TokenRecord>, pending: &TokenRecord) -> bool {
    let Some(d) = disk else { return true };
    let disk_fp = d.refresh_token.as_ref().map(fingerprint);
    let pending_fp = pending.refresh_token.as_ref().map(fingerprint);
    if disk_fp.is_some() && disk_fp == pending_fp {
        // Already written (by us, on an earlier try).
        return false;
    }
    match (&disk_fp, &pending.previous_refresh_sha256) {
        (Some(fp), Some(prev)) => fp == prev,
        (None, _) => {
            !d.needs_reauth || d.previous_refresh_sha256 == pending.previous_refresh_sha256
        }
        (Some(_), None) => false,
    }
}

/// Adds a refused fingerprint to a record's list (newest last, at most 8 kept).
pub fn remember_refused(rec: &mut TokenRecord, fp: String) {
    if !rec.refused_sha256.contains(&fp) {
        rec.refused_sha256.push(fp);
    }
    let n = rec.refused_sha256.len();
    if n > 8 {
        rec.refused_sha256.drain(..n - 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn rec(refresh: Option<&str>) -> TokenRecord {
        TokenRecord {
            version: 1,
            account: "a".into(),
            brand: "peugeot".into(),
            refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
            access_token: Some(SecretString::from("acc".to_owned())),
            access_expires_at: Some("2026-01-01T01:00:00.000Z".into()),
            chain_started_at: None,
            refreshed_at: None,
            source: Some("login".into()),
            previous_refresh_sha256: None,
            bootstrap_sha256: None,
            password_hmac: None,
            refused_sha256: Vec::new(),
            unauthorized_refresh_at: None,
            needs_reauth: false,
            reason: None,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn fp(s: &str) -> String {
        fingerprint(&SecretString::from(s.to_owned()))
    }

    fn describe(p: &Plan) -> String {
        match p {
            Plan::Refresh { token, source, .. } => {
                format!("refresh {} ({source})", token.expose_secret())
            }
            Plan::Password => "password".into(),
            Plan::Reauth(_) => "reauth".into(),
        }
    }

    /// A row: name, what is offered, the stored record, password tried, refused, expected plan.
    type Row<'a> = (
        &'a str,
        Offered<'a>,
        Option<&'a TokenRecord>,
        bool,
        &'a HashSet<String>,
        &'a str,
    );

    #[test]
    fn the_plan_table() {
        let boot = SecretString::from("boot".to_owned());
        let boot_fp = fp("boot");
        let with_boot = Offered {
            bootstrap: Some((&boot, &boot_fp)),
            password: false,
        };
        let with_pw = Offered {
            bootstrap: None,
            password: true,
        };
        let both = Offered {
            bootstrap: Some((&boot, &boot_fp)),
            password: true,
        };
        let none = HashSet::new();
        let mut seen_boot = rec(Some("stored"));
        seen_boot.bootstrap_sha256 = Some(boot_fp.clone());
        let mut reauth = rec(None);
        reauth.needs_reauth = true;
        let mut stored_refused = rec(Some("stored"));
        stored_refused.refused_sha256 = vec![fp("stored")];
        let just_refused: HashSet<String> = [fp("boot")].into();
        let stored = rec(Some("stored"));
        let cases: Vec<Row<'_>> = vec![
            (
                "first run, bootstrap",
                with_boot,
                None,
                false,
                &none,
                "refresh boot (bootstrap)",
            ),
            (
                "bootstrap already seen: use the store",
                with_boot,
                Some(&seen_boot),
                false,
                &none,
                "refresh stored (login)",
            ),
            // Item 14: a changed bootstrap token is adopted, even over a stored chain.
            (
                "changed bootstrap is adopted",
                with_boot,
                Some(&stored),
                false,
                &none,
                "refresh boot (bootstrap)",
            ),
            (
                "store first without bootstrap",
                with_pw,
                Some(&stored),
                false,
                &none,
                "refresh stored (login)",
            ),
            (
                "store refused earlier: password",
                with_pw,
                Some(&stored_refused),
                false,
                &none,
                "password",
            ),
            // Item 14: a token refused in this attempt is never presented again.
            (
                "bootstrap just refused, password next",
                both,
                None,
                false,
                &just_refused,
                "password",
            ),
            (
                "bootstrap just refused, no password",
                with_boot,
                None,
                false,
                &just_refused,
                "reauth",
            ),
            (
                "password tried: reauth",
                with_pw,
                Some(&reauth),
                true,
                &none,
                "reauth",
            ),
            (
                "needs_reauth, password offered",
                with_pw,
                Some(&reauth),
                false,
                &none,
                "password",
            ),
            (
                "nothing configured",
                Offered {
                    bootstrap: None,
                    password: false,
                },
                None,
                false,
                &none,
                "reauth",
            ),
        ];
        for (name, offered, r, tried, refused, want) in cases {
            assert_eq!(describe(&plan(offered, r, tried, refused)), want, "{name}");
        }
    }

    #[test]
    fn access_tokens_expire_with_the_margin_and_a_rejected_one_is_not_reused() {
        let r = rec(Some("x"));
        let t = |s: &str| timefmt::parse(s).unwrap();
        let m = Duration::from_secs(300);
        assert!(usable_access(&r, m, t("2026-01-01T00:54:00Z"), None).is_some());
        assert!(usable_access(&r, m, t("2026-01-01T00:56:00Z"), None).is_none());
        assert!(usable_access(&r, m, t("2026-01-01T00:10:00Z"), Some(&fp("acc"))).is_none());
        // An expiry far in the future (a hostile expires_in, clamped elsewhere) cannot overflow.
        let mut far = rec(Some("x"));
        far.access_expires_at = Some("+262142-12-31T23:59:59Z".into());
        let _ = usable_access(&far, Duration::MAX, t("2026-01-01T00:00:00Z"), None);
    }

    #[test]
    fn a_401_refreshes_at_most_once_an_hour() {
        let t = |s: &str| timefmt::parse(s).unwrap();
        let mut r = rec(Some("x"));
        assert!(may_refresh_after_401(Some(&r), t("2026-01-01T00:00:00Z")));
        r.unauthorized_refresh_at = Some("2026-01-01T00:00:00.000Z".into());
        assert!(!may_refresh_after_401(Some(&r), t("2026-01-01T00:59:00Z")));
        assert!(may_refresh_after_401(Some(&r), t("2026-01-01T01:00:00Z")));
        // A clock stepped back by more than the period does not block refreshes for good.
        assert!(may_refresh_after_401(Some(&r), t("2025-12-31T22:00:00Z")));
        assert!(may_refresh_after_401(None, t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn a_pending_record_never_overwrites_a_newer_chain() {
        let mut pending = rec(Some("new"));
        pending.previous_refresh_sha256 = Some(fp("old"));
        assert!(pending_supersedes(None, &pending));
        assert!(
            pending_supersedes(Some(&rec(Some("old"))), &pending),
            "disk still has the rotated-out token"
        );
        assert!(
            !pending_supersedes(Some(&rec(Some("new"))), &pending),
            "already written"
        );
        assert!(
            !pending_supersedes(Some(&rec(Some("from-login"))), &pending),
            "a login wrote a newer chain"
        );
        let mut marked = rec(None);
        marked.needs_reauth = true;
        marked.previous_refresh_sha256 = Some(fp("other"));
        assert!(!pending_supersedes(Some(&marked), &pending));
    }

    #[test]
    fn refused_fingerprints_are_bounded() {
        let mut r = rec(None);
        for i in 0..20 {
            remember_refused(&mut r, format!("{i}"));
        }
        remember_refused(&mut r, "19".into());
        assert_eq!(r.refused_sha256.len(), 8);
        assert_eq!(r.refused_sha256.last().map(String::as_str), Some("19"));
    }
}
