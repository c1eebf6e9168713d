//! What each account's requests cost, as the servers reported it, for `sync_runs`: identity-provider
//! requests, 429 answers, and the latest `X-RateLimit-*` values (`-1` = the sliding 24-hour
//! quota, `-2` = the one-second burst quota). Collected per account name while a run goes on and
//! taken by the run when it is recorded. Holds numbers only, never a header value as text.

use std::collections::HashMap;
use std::sync::Mutex;

/// What one account's requests saw since it was last taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub idp_requests: u32,
    pub rate_limited: u32,
    pub day_limit: Option<i64>,
    pub day_remaining: Option<i64>,
    pub burst_limit: Option<i64>,
    pub burst_remaining: Option<i64>,
}

/// The per-account tally, shared by the API client and the token grant (through `Limits`).
#[derive(Debug, Default)]
pub struct Usage {
    by_account: Mutex<HashMap<String, Seen>>,
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<i64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Usage {
    fn with(&self, account: &str, f: impl FnOnce(&mut Seen)) {
        let mut map = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(account.to_owned()).or_default());
    }

    /// One API answer: its status and its `X-RateLimit-*` headers (absent ones keep the values
    /// seen before).
    pub fn api_answer(&self, account: &str, status: u16, h: &reqwest::header::HeaderMap) {
        self.with(account, |s| {
            s.rate_limited += u32::from(status == 429);
            s.day_limit = header(h, "x-ratelimit-limit-1").or(s.day_limit);
            s.day_remaining = header(h, "x-ratelimit-remaining-1").or(s.day_remaining);
            s.burst_limit = header(h, "x-ratelimit-limit-2").or(s.burst_limit);
            s.burst_remaining = header(h, "x-ratelimit-remaining-2").or(s.burst_remaining);
        });
    }

    /// One request to the identity provider's token endpoint.
    pub fn idp_request(&self, account: &str) {
        self.with(account, |s| s.idp_requests += 1);
    }

    /// What the account's requests saw since the last call, and a fresh tally.
    pub fn take(&self, account: &str) -> Seen {
        let mut map = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(account).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn tallies_per_account_and_keeps_the_latest_quota() {
        let u = Usage::default();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-1", HeaderValue::from_static("100000"));
        h.insert("x-ratelimit-remaining-1", HeaderValue::from_static("90502"));
        h.insert("x-ratelimit-remaining-2", HeaderValue::from_static(" 47 "));
        u.api_answer("a", 200, &h);
        h.insert("x-ratelimit-remaining-1", HeaderValue::from_static("90501"));
        h.insert(
            "x-ratelimit-remaining-2",
            HeaderValue::from_static("not a number"),
        );
        u.api_answer("a", 429, &h);
        u.api_answer("a", 200, &HeaderMap::new());
        u.idp_request("a");
        u.idp_request("b");
        let a = u.take("a");
        assert_eq!(
            a,
            Seen {
                idp_requests: 1,
                rate_limited: 1,
                day_limit: Some(100_000),
                day_remaining: Some(90_501),
                burst_limit: None,
                burst_remaining: Some(47),
            }
        );
        assert_eq!(u.take("a"), Seen::default());
        assert_eq!(u.take("b").idp_requests, 1);
    }
}
