//! The simulator's configuration: [`SimConfig`] (the world, the IdP's lifetimes, quotas, body
//! shapes), the fault switches [`Faults`] with their `NAME=VALUE` parser, and the enums they use.
//! Nothing here holds state; `SimHandle::configure` changes a running simulator's copy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The app credentials every simulated brand app uses unless configured otherwise.
pub const DEFAULT_CLIENT_ID: &str = "sim-client-id";
/// See [`DEFAULT_CLIENT_ID`].
pub const DEFAULT_CLIENT_SECRET: &str = "sim-client-secret";

/// How `grant_type=password` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PasswordGrant {
    /// As the Stellantis quick-start documents it: username and password give tokens.
    #[default]
    Working,
    /// As the real IdP has answered since January 2024: 400 `server_error`.
    Dead,
}

/// The form of `Retry-After` on a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterForm {
    /// Delay in seconds (`Retry-After: 2`), as the official docs show.
    #[default]
    Seconds,
    /// An HTTP-date (RFC 9110).
    HttpDate,
    /// The form seen in real traffic: `Retry-After: name=rate-limit-1,22248`.
    Odd,
    /// No `Retry-After` header at all.
    Absent,
}

/// Fault switches. Each probability is in `[0, 1]` and is drawn per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Gateway 500 `{"httpCode":"500",…,"moreInformation":"Internal Error"}`.
    pub gateway_500: f64,
    /// Backend 500 code 50000 "CORVET Error".
    pub corvet_500: f64,
    /// 503 from the gateway.
    pub unavailable_503: f64,
    /// 500 code 50038 "CVS error/user-vins".
    pub cvs_50038: f64,
    /// 429 regardless of the quota (a "429 storm").
    pub rate_limit_storm: f64,
    /// Delay the response by `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// A 200 whose JSON body is cut in half (with a matching Content-Length).
    pub truncated_json: f64,
    /// A 200 whose body is not JSON.
    pub malformed_json: f64,
    /// A 200 listing without `_embedded` (a transient fault seen in real traffic).
    pub no_embedded: f64,
    /// The TCP connection is closed without a response.
    pub drop_connection: f64,
    /// The IdP's token endpoint stalls for `idp_timeout_ms` before answering.
    pub idp_timeout: f64,
    pub idp_timeout_ms: u64,
    /// The IdP answers 503.
    pub idp_down: f64,
    /// Before serving page 2+ of a listing, the account's vehicle list changes.
    pub page_shift: f64,
    /// Pages numbered this or higher answer a gateway 500 (0 = off): a listing that fails
    /// halfway through.
    pub fail_from_page: u32,
    /// The form of `Retry-After` on 429s.
    pub retry_after_form: RetryAfterForm,
    /// Vehicle-list pages carry no `total`, `totalPage` or `currentPage`.
    pub list_no_total: bool,
    /// Every vehicle-list page's `next` link points to the page itself, even on the last page.
    pub next_loops: bool,
    /// The vehicle list of an account that has vehicles answers 404
    /// `{"uuid","code":40400,"timestamp"}`, with no message.
    pub bare_40400: bool,
    /// The gateway refuses every bearer token, even a fresh one, with the 401 "Cannot pass the
    /// security checks…" body (as on a realm mismatch).
    pub persistent_401: bool,
    /// Raw JSON text that replaces the value of `expires_in` in token answers (`1e17`, `-5`,
    /// `"abc"`, `null`); empty = off. The answer still carries a rotated refresh token.
    pub token_expires_in: String,
    /// After rotating a refresh token (the old one is dead at once), the IdP holds its answer
    /// this many ms before sending it (0 = off).
    pub idp_stall_after_rotate_ms: u64,
    /// Between page 1 and page 2 of a vehicle listing (each time page 2 is requested), the
    /// account's first vehicle is removed and a new one appended: the total stays the same.
    pub page_shift_keep_total: bool,
    /// Every API request answers 429 with `X-RateLimit-Remaining-1: 0`,
    /// `X-RateLimit-Reset: <this many seconds>` and no `Retry-After` (0 = off).
    pub daily_quota_no_retry_after: u64,
    /// 200 bodies of the API and the IdP carry an extra JSON field (`_padding`) whose value is
    /// this many bytes (0 = off).
    pub huge_body_bytes: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            gateway_500: 0.0,
            corvet_500: 0.0,
            unavailable_503: 0.0,
            cvs_50038: 0.0,
            rate_limit_storm: 0.0,
            slow: 0.0,
            slow_ms: 2_000,
            truncated_json: 0.0,
            malformed_json: 0.0,
            no_embedded: 0.0,
            drop_connection: 0.0,
            idp_timeout: 0.0,
            idp_timeout_ms: 30_000,
            idp_down: 0.0,
            page_shift: 0.0,
            fail_from_page: 0,
            retry_after_form: RetryAfterForm::Seconds,
            list_no_total: false,
            next_loops: false,
            bare_40400: false,
            persistent_401: false,
            token_expires_in: String::new(),
            idp_stall_after_rotate_ms: 0,
            page_shift_keep_total: false,
            daily_quota_no_retry_after: 0,
            huge_body_bytes: 0,
        }
    }
}

impl Faults {
    /// Sets one switch by name (`gateway_500=0.2`), as the `simulate --fault` flag does.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("fault `{spec}`: expected NAME=VALUE"))?;
        let mut v = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let obj = v.as_object_mut().ok_or("faults are not an object")?;
        if !obj.contains_key(name) {
            return Err(format!(
                "unknown fault `{name}` (known: {})",
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let parsed = if name == "token_expires_in" {
            // Kept as raw JSON text, written verbatim into token answers.
            if !value.is_empty() && serde_json::from_str::<serde_json::Value>(value).is_err() {
                return Err(format!(
                    "fault `{name}`: `{value}` is not JSON (a string needs its quotes: \"abc\")"
                ));
            }
            serde_json::Value::String(value.to_owned())
        } else {
            match (&obj[name], value) {
                (serde_json::Value::Bool(_), "1" | "on" | "yes") => serde_json::Value::Bool(true),
                (serde_json::Value::Bool(_), "0" | "off" | "no") => serde_json::Value::Bool(false),
                _ => serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_owned())),
            }
        };
        obj.insert(name.to_owned(), parsed);
        *self = serde_json::from_value(v).map_err(|e| format!("fault `{name}`: {e}"))?;
        Ok(())
    }
}

/// Everything that shapes a simulated world. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the world and of the fault draws.
    pub seed: u64,
    /// Number of users (`user1@example.com`/`password1`, …), brands round-robin.
    pub users: usize,
    /// Exact vehicle counts for the first users (others get 0–`max_vehicles` at random).
    /// Default `[2, 3, 0]`: user1 has two vehicles, user2 three, user3 none (the 404 case).
    pub vehicle_counts: Vec<usize>,
    pub max_vehicles: usize,
    pub client_id: String,
    pub client_secret: String,
    /// Access-token lifetime (`expires_in`).
    pub access_ttl: Duration,
    /// Absolute refresh-token lifetime, counted from the login that started the chain.
    pub refresh_ttl: Duration,
    /// Lifetime of an authorization code.
    pub code_ttl: Duration,
    pub password_grant: PasswordGrant,
    /// RFC 9700 §4.14.2: a replayed rotated refresh token revokes the live one of its chain.
    pub family_revocation: bool,
    /// A rotated refresh token still works once within this window (0 = strict, the default).
    pub refresh_grace: Duration,
    /// Per-client burst quota (requests per second); 0 disables the quota.
    pub burst_per_second: u32,
    /// Per-client daily quota (fixed 24 h windows from start); 0 disables it.
    pub daily_limit: u64,
    /// The world's vehicle lists mutate once per this interval of sim time (lazily, on
    /// requests); `None` = only on demand.
    pub change_every: Option<Duration>,
    /// 2021 body shapes: `404 40410 "No vehicule found"` and an envelope without `totalPage`.
    pub legacy_shapes: bool,
    /// Base URL of every `_links` href (collections and items alike). Empty (the default): this
    /// simulator's own API base (`SimHandle::api_base`), as the real API's links name the host
    /// its clients call (`https://api.groupe-psa.com/connectedcar/v4` in captures). Set it to
    /// another host to see a client refuse to follow a link off its API's origin.
    pub public_api_base: String,
    /// Sim seconds per real second (1.0 = real time; 1000.0 lives a week in ten minutes). The
    /// whole world runs on this clock: cars, token and code lifetimes, `change_every`, body
    /// timestamps. Only the quotas count real time. Change it at run time with
    /// `SimHandle::configure` or `SimHandle::set_time_scale`.
    pub time_scale: f64,
    /// The sim clock's start (`None`: the real time at spawn).
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The sim clock never runs ahead of the real one: a world started in the past at a
    /// `time_scale` above 1 catches up with now, then runs in real time (the demo). Without it a
    /// scaled clock runs into the future, where the client takes body times for wrong clocks.
    pub catch_up_to_now: bool,
    /// VINs whose `/status` answers 404 code 40400 "Not Found: We didn't find the status for
    /// this vehicle." (a car that never uploaded a status).
    pub status_missing_vins: Vec<String>,
    /// Share of cars (picked by a per-car seeded draw) whose `/maintenance` answers 404 code
    /// 40400 "Not Found: Maintenance Not Found for Given Vehicle." on every call.
    pub maintenance_missing_fraction: f64,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            users: 3,
            vehicle_counts: vec![2, 3, 0],
            max_vehicles: 4,
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            access_ttl: Duration::from_secs(3599),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            code_ttl: Duration::from_secs(120),
            password_grant: PasswordGrant::Working,
            family_revocation: false,
            refresh_grace: Duration::ZERO,
            burst_per_second: 100,
            daily_limit: 100_000,
            change_every: None,
            legacy_shapes: false,
            public_api_base: String::new(),
            time_scale: 1.0,
            start_time: None,
            catch_up_to_now: false,
            status_missing_vins: Vec::new(),
            maintenance_missing_fraction: 1.0 / 3.0,
            faults: Faults::default(),
        }
    }
}
