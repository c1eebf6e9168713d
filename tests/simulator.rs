//! The simulator against the spec: each IdP grant and error, rotation, expiry, pagination, the
//! empty account, quotas, every fault switch, the OpenAPI schemas of the bodies (with integers
//! checked in the raw text), the world clock and the cars' lives against the ground truth, and
//! `/trips`, `/alerts`, `/maintenance`.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use stellantis_sync::sim::{self, Faults, PasswordGrant, RetryAfterForm, SimConfig, SimHandle};

async fn start(cfg: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(listener, cfg).unwrap()
}

/// One client for the whole test binary: building a TLS-capable client is slow.
fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap()
        })
        .clone()
}

const ID: &str = sim::DEFAULT_CLIENT_ID;
const SECRET: &str = sim::DEFAULT_CLIENT_SECRET;

async fn token_call(h: &SimHandle, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(format!("{}/am/oauth2/access_token", h.base_url()))
        .basic_auth(ID, Some(SECRET))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn login(h: &SimHandle, user: &str, pass: &str) -> Value {
    let (s, body) = token_call(
        h,
        &[
            ("grant_type", "password"),
            ("username", user),
            ("password", pass),
            ("scope", "openid profile"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    body
}

async fn list(h: &SimHandle, token: &str, realm: &str, extra: &str) -> reqwest::Response {
    http()
        .get(format!(
            "{}/user/vehicles?client_id={ID}{extra}",
            h.api_base()
        ))
        .bearer_auth(token)
        .header("x-introspect-realm", realm)
        .header("accept", "application/hal+json")
        .send()
        .await
        .unwrap()
}

fn at(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_owned()
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

#[tokio::test]
async fn password_grant_body_is_as_the_spec_shows() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    let keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "scope",
            "expires_in",
            "token_type",
            "refresh_token",
            "id_token",
            "access_token"
        ]
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3599);
    assert_eq!(t["scope"], "openid profile");
    assert!(is_uuid(t["access_token"].as_str().unwrap()));
    assert!(is_uuid(t["refresh_token"].as_str().unwrap()));
    assert_eq!(t["id_token"].as_str().unwrap().split('.').count(), 3);
    // Wrong password: the pre-2024 answer.
    let (s, e) = token_call(
        &h,
        &[
            ("grant_type", "password"),
            ("username", "user1@example.com"),
            ("password", "nope"),
        ],
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn password_grant_dead_switch_answers_server_error() {
    let h = start(SimConfig {
        password_grant: PasswordGrant::Dead,
        ..SimConfig::default()
    })
    .await;
    let (s, e) = token_call(
        &h,
        &[
            ("grant_type", "password"),
            ("username", "user1@example.com"),
            ("password", "password1"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"], "server_error");
    assert_eq!(e["error_description"], "Internal Server Error");
}

#[tokio::test]
async fn client_authentication_is_required() {
    let h = start(SimConfig::default()).await;
    let url = format!("{}/am/oauth2/access_token", h.base_url());
    let form = [
        ("grant_type", "password"),
        ("username", "user1@example.com"),
        ("password", "password1"),
    ];
    let missing = http().post(&url).form(&form).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let wrong = http()
        .post(&url)
        .basic_auth(ID, Some("bad"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn parameters_may_come_in_the_query_string() {
    let h = start(SimConfig::default()).await;
    let r = http()
        .post(format!(
            "{}/am/oauth2/access_token?grant_type=password&username=user2%40example.com&password=password2&realm=clientsB2CCitroen",
            h.base_url()
        ))
        .basic_auth(ID, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_dies() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    let old = t["refresh_token"].as_str().unwrap().to_owned();
    let (s, t2) = token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &old)],
    )
    .await;
    assert_eq!(s, 200);
    let new = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(h.refresh_token_is_live(&new) && !h.refresh_token_is_live(&old));
    let (s, e) = token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &old)],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        e,
        serde_json::json!({"error": "invalid_grant", "error_description": "grant is invalid"})
    );
    assert_eq!(h.stats().reused_refresh, 1);
    // Without family revocation the live token survives the replay.
    assert!(h.refresh_token_is_live(&new));
}

#[tokio::test]
async fn family_revocation_kills_the_chain_on_replay() {
    let h = start(SimConfig {
        family_revocation: true,
        ..SimConfig::default()
    })
    .await;
    let t = login(&h, "user1@example.com", "password1").await;
    let old = t["refresh_token"].as_str().unwrap().to_owned();
    let (_, t2) = token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &old)],
    )
    .await;
    let new = t2["refresh_token"].as_str().unwrap().to_owned();
    token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &old)],
    )
    .await;
    assert!(!h.refresh_token_is_live(&new));
}

#[tokio::test]
async fn refresh_tokens_die_at_an_absolute_age_and_access_tokens_expire() {
    let h = start(SimConfig {
        access_ttl: Duration::from_secs(60),
        refresh_ttl: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let t = login(&h, "user1@example.com", "password1").await;
    assert_eq!(t["expires_in"], 60);
    assert_eq!(
        list(&h, &at(&t), "clientsB2CPeugeot", "").await.status(),
        200
    );
    h.advance_clock(Duration::from_secs(61));
    let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["httpCode"], "401");
    // Refreshing does not extend the chain's absolute lifetime.
    let mut rt = t["refresh_token"].as_str().unwrap().to_owned();
    let (s, t2) = token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(s, 200);
    rt = t2["refresh_token"].as_str().unwrap().to_owned();
    h.advance_clock(Duration::from_secs(3600));
    let (s, e) = token_call(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
}

fn pkce_pair() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier = "a-very-long-verifier-string-with-enough-entropy-0123456789abcdef".to_owned();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn authorize(h: &SimHandle, challenge: Option<&str>) -> String {
    let redirect = "mymap://oauth2redirect/fr";
    let mut q = vec![
        ("client_id", ID.to_owned()),
        ("response_type", "code".into()),
        ("redirect_uri", redirect.into()),
        ("scope", "openid profile".into()),
        ("state", "xyz".into()),
    ];
    if let Some(c) = challenge {
        q.push(("code_challenge", c.into()));
        q.push(("code_challenge_method", "S256".into()));
    }
    let page = http()
        .get(format!("{}/am/oauth2/authorize", h.base_url()))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form"));
    let mut form = q.clone();
    form.push(("username", "user1@example.com".into()));
    form.push(("password", "password1".into()));
    let r = http()
        .post(format!("{}/am/oauth2/authorize", h.base_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("mymap://oauth2redirect/fr?code="), "{loc}");
    let url = url::Url::parse(&loc).unwrap();
    let pairs: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs["state"], "xyz");
    assert!(is_uuid(&pairs["code"]));
    pairs["code"].clone()
}

#[tokio::test]
async fn authorization_code_with_pkce_is_single_use() {
    let h = start(SimConfig::default()).await;
    let (verifier, challenge) = pkce_pair();
    let code = authorize(&h, Some(&challenge)).await;
    let redirect = "mymap://oauth2redirect/fr";
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
    ];
    let mut bad = base.to_vec();
    bad.push(("code_verifier", "wrong-verifier"));
    let (s, e) = token_call(&h, &bad).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    // A failed attempt used the code up, as a real single-use code would be.
    let code = authorize(&h, Some(&challenge)).await;
    let good = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier.as_str()),
    ];
    let (s, t) = token_call(&h, &good).await;
    assert_eq!(s, 200, "{t}");
    assert!(is_uuid(t["refresh_token"].as_str().unwrap()));
    let (s, e) = token_call(&h, &good).await;
    assert_eq!(
        (s, e["error_description"].as_str()),
        (
            400,
            Some("The provided access grant is invalid, expired, or revoked.")
        )
    );
}

#[tokio::test]
async fn authorization_code_without_pkce_and_expiry() {
    let h = start(SimConfig::default()).await;
    let code = authorize(&h, None).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "mymap://oauth2redirect/fr"),
    ];
    let code2 = authorize(&h, None).await;
    let (s, _) = token_call(&h, &form).await;
    assert_eq!(s, 200);
    h.advance_clock(Duration::from_secs(121));
    let form2 = [
        ("grant_type", "authorization_code"),
        ("code", code2.as_str()),
        ("redirect_uri", "mymap://oauth2redirect/fr"),
    ];
    let (s, _) = token_call(&h, &form2).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn revoke_kills_refresh_and_access_tokens() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    let rt = t["refresh_token"].as_str().unwrap();
    let r = http()
        .post(format!(
            "{}/am/oauth2/token/revoke?realm=clientsB2CPeugeot",
            h.base_url()
        ))
        .basic_auth(ID, Some(SECRET))
        .form(&[("token", rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!h.refresh_token_is_live(rt));
    assert_eq!(
        list(&h, &at(&t), "clientsB2CPeugeot", "").await.status(),
        401
    );
}

#[tokio::test]
async fn gateway_checks_client_id_token_and_realm() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    let no_client = http()
        .get(format!("{}/user/vehicles", h.api_base()))
        .bearer_auth(at(&t))
        .header("x-introspect-realm", "clientsB2CPeugeot")
        .send()
        .await
        .unwrap();
    assert_eq!(no_client.status(), 401);
    assert_eq!(
        no_client.json::<Value>().await.unwrap()["moreInformation"],
        "Invalid client id or secret."
    );
    let bad_token = list(
        &h,
        "00000000-0000-0000-0000-000000000000",
        "clientsB2CPeugeot",
        "",
    )
    .await;
    assert_eq!(bad_token.status(), 401);
    assert_eq!(
        bad_token.json::<Value>().await.unwrap()["moreInformation"],
        "Token is invalid"
    );
    assert_eq!(list(&h, &at(&t), "clientsB2COpel", "").await.status(), 401);
    // The realm header is case-insensitive and Accept is not required.
    let ok = http()
        .get(format!("{}/user/vehicles?client_id={ID}", h.api_base()))
        .bearer_auth(at(&t))
        .header("X-Introspect-Realm", "clientsB2CPeugeot")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "application/hal+json");
}

#[tokio::test]
async fn pagination_over_130_vehicles() {
    let h = start(SimConfig {
        vehicle_counts: vec![130],
        users: 1,
        ..SimConfig::default()
    })
    .await;
    let t = login(&h, "user1@example.com", "password1").await;
    let mut ids = Vec::new();
    let first: Value = list(&h, &at(&t), "clientsB2CPeugeot", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            first["total"].as_u64(),
            first["totalPage"].as_u64(),
            first["currentPage"].as_u64()
        ),
        (Some(130), Some(3), Some(1))
    );
    assert!(
        first["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .contains("pageToken=")
    );
    assert!(
        !first["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("client_id")
    );
    assert!(first.get("_links").unwrap().get("prev").is_none());
    let mut page = first;
    let mut sizes = Vec::new();
    loop {
        let items = page["_embedded"]["vehicles"].as_array().unwrap();
        sizes.push(items.len());
        ids.extend(items.iter().map(|v| v["id"].as_str().unwrap().to_owned()));
        let Some(next) = page["_links"]["next"]["href"].as_str() else {
            break;
        };
        page = http()
            .get(format!("{next}&client_id={ID}"))
            .bearer_auth(at(&t))
            .header("x-introspect-realm", "clientsB2CPeugeot")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    assert_eq!(sizes, [60, 60, 10]);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 130);
    assert_eq!(page["currentPage"], 3);
    assert!(page["_links"]["prev"].is_object());
    // pageSize and indexRange.
    let p: Value = list(
        &h,
        &at(&t),
        "clientsB2CPeugeot",
        "&pageSize=7&indexRange=10-29",
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (p["total"].as_u64(), p["totalPage"].as_u64()),
        (Some(20), Some(3))
    );
    assert_eq!(
        p["_embedded"]["vehicles"][0]["id"].as_str().unwrap(),
        ids[10]
    );
    assert_eq!(
        list(&h, &at(&t), "clientsB2CPeugeot", "&pageSize=61")
            .await
            .status(),
        400
    );
    assert_eq!(
        list(&h, &at(&t), "clientsB2CPeugeot", "&pageSize=0")
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn an_empty_account_is_a_404_no_vehicle_found() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user3@example.com", "password3").await;
    let r = list(&h, &at(&t), "clientsB2CDS", "").await;
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["code"].as_u64(), b["message"].as_str()),
        (Some(40400), Some("No vehicle found"))
    );
    assert!(is_uuid(b["uuid"].as_str().unwrap()));
    let legacy = start(SimConfig {
        legacy_shapes: true,
        ..SimConfig::default()
    })
    .await;
    let t = login(&legacy, "user3@example.com", "password3").await;
    let b: Value = list(&legacy, &at(&t), "clientsB2CDS", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (b["code"].as_u64(), b["message"].as_str()),
        (Some(40410), Some("No vehicule found"))
    );
}

async fn quota_429(form: RetryAfterForm) -> reqwest::Response {
    let h = start(SimConfig {
        burst_per_second: 5,
        ..SimConfig::default()
    })
    .await;
    h.set_faults(Faults {
        retry_after_form: form,
        ..Faults::default()
    });
    let t = login(&h, "user1@example.com", "password1").await;
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            last = Some(r);
        } else {
            assert!(r.headers().contains_key("x-ratelimit-remaining-2"));
        }
    }
    // The first five in a second pass; the sixth is over the burst (unless a whole second has
    // gone by, which the first 429 below would then show as missing).
    assert_eq!(&codes[..5], [200; 5]);
    assert_eq!(codes[5], 429, "{codes:?}");
    let stats = h.stats();
    assert!(stats.over_quota >= 1);
    assert_eq!(
        stats.over_quota,
        codes.iter().filter(|c| **c == 429).count() as u64
    );
    assert!(stats.peak_api_rps >= 6);
    last.unwrap()
}

#[tokio::test]
async fn quota_answers_429_beyond_the_burst_in_each_retry_after_form() {
    let r = quota_429(RetryAfterForm::Seconds).await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-ratelimit-remaining-2"], "0");
    assert_eq!(r.headers()["x-ratelimit-limit-2"], "5");
    let r = quota_429(RetryAfterForm::HttpDate).await;
    assert!(httpdate::parse_http_date(r.headers()["retry-after"].to_str().unwrap()).is_ok());
    let r = quota_429(RetryAfterForm::Odd).await;
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .starts_with("name=rate-limit-2,")
    );
    let r = quota_429(RetryAfterForm::Absent).await;
    assert!(!r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn daily_quota() {
    let h = start(SimConfig {
        burst_per_second: 0,
        daily_limit: 3,
        ..SimConfig::default()
    })
    .await;
    let t = login(&h, "user1@example.com", "password1").await;
    for _ in 0..3 {
        assert_eq!(
            list(&h, &at(&t), "clientsB2CPeugeot", "").await.status(),
            200
        );
    }
    let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-1"], "0");
}

/// Sets one fault to probability 1 and returns the listing response.
async fn with_fault(set: &str) -> (SimHandle, Result<reqwest::Response, reqwest::Error>) {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    let mut f = Faults {
        slow_ms: 300,
        ..Faults::default()
    };
    f.set(set).unwrap();
    h.set_faults(f);
    let r = http()
        .get(format!("{}/user/vehicles?client_id={ID}", h.api_base()))
        .bearer_auth(at(&t))
        .header("x-introspect-realm", "clientsB2CPeugeot")
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    (h, r)
}

#[tokio::test]
async fn each_api_fault_switch() {
    let (_h, r) = with_fault("gateway_500=1").await;
    let r = r.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-backside-transport"], "FAIL FAIL");
    assert_eq!(
        r.json::<Value>().await.unwrap()["moreInformation"],
        "Internal Error"
    );

    let (_h, r) = with_fault("corvet_500=1").await;
    let b: Value = r.unwrap().json().await.unwrap();
    assert_eq!(
        (b["code"].as_u64(), b["message"].as_str()),
        (Some(50000), Some("CORVET Error"))
    );

    let (_h, r) = with_fault("cvs_50038=1").await;
    let b: Value = r.unwrap().json().await.unwrap();
    assert_eq!(b["code"], 50038);

    let (_h, r) = with_fault("unavailable_503=1").await;
    assert_eq!(r.unwrap().status(), 503);

    let (_h, r) = with_fault("rate_limit_storm=1").await;
    assert_eq!(r.unwrap().status(), 429);

    let (_h, r) = with_fault("truncated_json=1").await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err() && text.starts_with('{'));

    let (_h, r) = with_fault("malformed_json=1").await;
    let text = r.unwrap().text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let (_h, r) = with_fault("no_embedded=1").await;
    let b: Value = r.unwrap().json().await.unwrap();
    assert_eq!(b["total"], 2);
    assert!(b.get("_embedded").is_none());

    let (h, r) = with_fault("drop_connection=1").await;
    let e = r.unwrap_err();
    assert!(
        !e.is_timeout(),
        "a dropped connection is not a timeout: {e}"
    );
    assert_eq!(h.stats().faults_injected["drop_connection"], 1);

    let started = std::time::Instant::now();
    let (_h, r) = with_fault("slow=1").await;
    assert_eq!(r.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn idp_fault_switches() {
    let h = start(SimConfig::default()).await;
    h.set_faults(Faults {
        idp_down: 1.0,
        ..Faults::default()
    });
    let (s, _) = token_call(
        &h,
        &[
            ("grant_type", "password"),
            ("username", "user1@example.com"),
            ("password", "password1"),
        ],
    )
    .await;
    assert_eq!(s, 503);
    h.set_faults(Faults {
        idp_timeout: 1.0,
        idp_timeout_ms: 5_000,
        ..Faults::default()
    });
    let r = http()
        .post(format!("{}/am/oauth2/access_token", h.base_url()))
        .basic_auth(ID, Some(SECRET))
        .form(&[
            ("grant_type", "password"),
            ("username", "user1@example.com"),
            ("password", "password1"),
        ])
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
}

#[tokio::test]
async fn page_shift_changes_the_list_between_pages() {
    let h = start(SimConfig {
        vehicle_counts: vec![100],
        users: 1,
        ..SimConfig::default()
    })
    .await;
    h.set_faults(Faults {
        page_shift: 1.0,
        ..Faults::default()
    });
    let t = login(&h, "user1@example.com", "password1").await;
    let first: Value = list(&h, &at(&t), "clientsB2CPeugeot", "")
        .await
        .json()
        .await
        .unwrap();
    let next = first["_links"]["next"]["href"].as_str().unwrap();
    let before = h.events().len();
    let r = http()
        .get(format!("{next}&client_id={ID}"))
        .bearer_auth(at(&t))
        .header("x-introspect-realm", "clientsB2CPeugeot")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.events().len() > before, "the world changed while paging");
}

#[tokio::test]
async fn world_changes_are_logged() {
    let h = start(SimConfig {
        users: 5,
        ..SimConfig::default()
    })
    .await;
    let n = h.tick(50);
    let events = h.events();
    assert_eq!(n, events.len());
    assert!(
        events
            .iter()
            .all(|e| ["added", "removed", "changed"].contains(&e.kind))
    );
    for e in events.iter().filter(|e| e.kind == "changed") {
        assert!(e.field.as_deref().unwrap().starts_with('/'));
        assert_ne!(e.old, e.new);
    }
}

/// An official schema (as derived by tools/openapi-to-jsonschema.py) and its validator.
struct Schema {
    raw: Value,
    validator: jsonschema::Validator,
}

fn schema(file: &str) -> Schema {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut raw: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    if file == "status.schema.json" {
        // Known exception, real traffic wins: the official schema (4.17.2) types the deprecated
        // `energy` block as one Energy object (`allOf: [Energy]`), but every real capture
        // (docs/simulator.md) carries an array of them.
        raw["$defs"]["Status"]["allOf"][2]["properties"]["energy"] =
            serde_json::json!({"type": "array", "items": {"$ref": "#/$defs/Energy"}});
    }
    let validator = jsonschema::validator_for(&raw).unwrap();
    Schema { raw, validator }
}

fn validator(file: &str) -> jsonschema::Validator {
    schema(file).validator
}

fn is_integer_type(t: &Value) -> bool {
    match t {
        Value::String(s) => s == "integer",
        Value::Array(a) => a.iter().any(|x| x == "integer") && !a.iter().any(|x| x == "number"),
        _ => false,
    }
}

/// Every value of `body` at a position the schema types `integer` whose JSON text has a
/// fraction or an exponent (`218.0`, `2.18e2`). The `jsonschema` crate accepts `218.0` as an
/// integer; typed clients (evcc's `Autonomy int`, serde `u32`) reject it. `body` must be parsed
/// from the raw response text: serde_json keeps a number written `218` as an integer and one
/// written `218.0` or `1e3` as a float, so `is_f64` tells what the text said; the number is also
/// written back and scanned for `.`, `e` and `E`.
fn raw_integer_violations(
    root: &Value,
    schema: &Value,
    body: &Value,
    at: &str,
    depth: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    if depth > 40 {
        return out;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        out.extend(raw_integer_violations(
            root,
            &root["$defs"][name],
            body,
            at,
            depth + 1,
        ));
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for sub in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(raw_integer_violations(root, sub, body, at, depth + 1));
        }
    }
    if schema.get("type").is_some_and(is_integer_type)
        && let Value::Number(n) = body
    {
        let text = n.to_string();
        if n.is_f64() || text.contains(['.', 'e', 'E']) {
            out.push(format!("{at}: {text} where the schema says integer"));
        }
    }
    if let (Some(props), Value::Object(obj)) =
        (schema.get("properties").and_then(Value::as_object), body)
    {
        for (k, sub) in props {
            if let Some(v) = obj.get(k) {
                out.extend(raw_integer_violations(
                    root,
                    sub,
                    v,
                    &format!("{at}/{k}"),
                    depth + 1,
                ));
            }
        }
    }
    if let (Some(items), Value::Array(arr)) = (schema.get("items"), body) {
        for (i, v) in arr.iter().enumerate() {
            out.extend(raw_integer_violations(
                root,
                items,
                v,
                &format!("{at}/{i}"),
                depth + 1,
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Validates the raw text of a body: the official schema, and integers written as integers.
fn assert_valid_raw(s: &Schema, text: &str) -> Value {
    let body: Value = serde_json::from_str(text).unwrap();
    assert_valid(&s.validator, &body);
    let ints = raw_integer_violations(&s.raw, &s.raw, &body, "", 0);
    assert!(ints.is_empty(), "{ints:#?}");
    body
}

fn assert_valid(v: &jsonschema::Validator, body: &Value) {
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_raw_integer_check_catches_what_the_schema_validator_lets_through() {
    // The simulator's /status energy blocks before issue 10 item 17 was fixed.
    let status = schema("status.schema.json");
    let old = r#"{"createdAt": "2025-09-04T07:21:52Z", "_links": {"self": {"href": "x"}},
        "energies": [{"createdAt": "2025-09-04T07:21:52Z", "type": "Electric", "level": 68.0, "autonomy": 218.0,
          "extension": {"electric": {"battery": {"load": {"createdAt": "2025-09-04T07:21:52Z",
            "capacity": 50000, "residual": 34000.0}}}}}],
        "lastPosition": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
          "properties": {"createdAt": "2025-09-04T07:21:52Z", "heading": 8e0}}}"#;
    let body: Value = serde_json::from_str(old).unwrap();
    assert!(
        status.validator.is_valid(&body),
        "the schema validator alone accepts 218.0"
    );
    let found = raw_integer_violations(&status.raw, &status.raw, &body, "", 0);
    assert_eq!(
        found,
        [
            "/energies/0/autonomy: 218.0 where the schema says integer",
            "/energies/0/extension/electric/battery/load/residual: 34000.0 where the schema says integer",
            "/lastPosition/properties/heading: 8.0 where the schema says integer",
        ],
        "the level (a float in the schema) and capacity (written 50000) pass"
    );
}

#[tokio::test]
async fn bodies_validate_against_the_official_schemas() {
    let h = start(SimConfig {
        users: 5,
        vehicle_counts: vec![3, 4, 1, 2, 4],
        ..SimConfig::default()
    })
    .await;
    let vehicles = validator("vehicles.schema.json");
    let status = schema("status.schema.json");
    let mut statuses = 0;
    for (email, pass, brand) in h.users() {
        let t = login(&h, &email, &pass).await;
        let body: Value = list(&h, &at(&t), brand.realm(), "")
            .await
            .json()
            .await
            .unwrap();
        assert_valid(&vehicles, &body);
        for v in body["_embedded"]["vehicles"].as_array().unwrap() {
            let id = v["id"].as_str().unwrap();
            let text = http()
                .get(format!(
                    "{}/user/vehicles/{id}/status?client_id={ID}",
                    h.api_base()
                ))
                .bearer_auth(at(&t))
                .header("x-introspect-realm", brand.realm())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let s = assert_valid_raw(&status, &text);
            match v["motorization"].as_str().unwrap() {
                "Electric" => assert!(s.get("engines").is_none()),
                _ => assert_eq!(s["engines"][0]["type"], "Thermic", "{s}"),
            }
            assert!(s["doorsState"]["lockedStates"].is_array());
            assert!(s["doorsState"]["opening"][0]["identifier"].is_string());
            assert!(s["energies"].is_array() && s["energy"].is_array());
            assert!(s["preconditioning"].is_object() && s["preconditionning"].is_object());
            statuses += 1;
        }
    }
    assert_eq!(statuses, 14);
    // The validator really checks: a wrong motorization and a missing `_links` are rejected.
    let mut bad: Value = serde_json::json!({"total": 1, "totalPage": 1, "currentPage": 1, "_links": {"self": {"href": "x"}, "first": {"href": "x"}},
        "_embedded": {"vehicles": [{"_links": {"self": {"href": "x"}}, "motorization": "Steam"}]}});
    assert!(!vehicles.is_valid(&bad));
    bad["_embedded"]["vehicles"][0]["motorization"] = "Electric".into();
    assert!(vehicles.is_valid(&bad));
    bad["_embedded"]["vehicles"][0]
        .as_object_mut()
        .unwrap()
        .remove("_links");
    assert!(!vehicles.is_valid(&bad));
}

// ---- The world clock and living cars ----

fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// A world on a frozen clock (moved only by `advance_clock`) starting at [`t0`], with tokens
/// that outlive the jumps (they run on the same clock).
fn frozen() -> SimConfig {
    SimConfig {
        access_ttl: Duration::from_secs(30 * 86_400),
        refresh_ttl: Duration::from_secs(30 * 86_400),
        users: 5,
        vehicle_counts: vec![3, 4, 1, 2, 4],
        time_scale: 0.0,
        start_time: Some(t0()),
        ..SimConfig::default()
    }
}

async fn api_get(h: &SimHandle, token: &str, realm: &str, path: &str) -> (u16, String) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http()
        .get(format!("{}{path}{sep}client_id={ID}", h.api_base()))
        .bearer_auth(token)
        .header("x-introspect-realm", realm)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Logs in every user; returns (vehicle JSON, access token, realm) for every vehicle.
async fn fleet(h: &SimHandle) -> Vec<(Value, String, String)> {
    let mut out = Vec::new();
    for (email, pass, brand) in h.users() {
        let t = login(h, &email, &pass).await;
        for v in h.vehicles(&email) {
            out.push((v, at(&t), brand.realm().to_owned()));
        }
    }
    out
}

fn jump_to(h: &SimHandle, t: chrono::DateTime<chrono::Utc>) {
    let by = (t - h.now()).to_std().unwrap();
    h.advance_clock(by);
    assert_eq!(h.now(), t);
}

fn energy<'a>(s: &'a Value, kind: &str) -> &'a Value {
    s["energies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap()
}

#[tokio::test]
async fn a_car_drives_parks_and_charges_on_the_sim_clock() {
    // The oracle: the same seeded world lived for three days shows what will happen.
    let oracle = start(frozen()).await;
    oracle.advance_clock(Duration::from_secs(3 * 86_400));
    let truth = oracle.drives();
    let charges = oracle.charges();
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    let (ev, token, realm) = cars
        .iter()
        .find(|(v, ..)| {
            v["motorization"] == "Electric" && {
                let vin = v["vin"].as_str().unwrap();
                charges
                    .iter()
                    .any(|c| c.vin == vin && c.ended.is_some() && c.started > t0())
            }
        })
        .expect("an EV that charges within three days");
    let vin = ev["vin"].as_str().unwrap();
    let id = ev["id"].as_str().unwrap();
    let path = format!("/user/vehicles/{id}/status");
    let status_schema = schema("status.schema.json");
    let d = truth
        .iter()
        .find(|d| d.vin == vin && d.ended.is_some())
        .unwrap();
    let ended = d.ended.unwrap();
    // Mid-drive: ignition on, moving, odometer and position between start and end.
    let mid = d.started + (ended - d.started) / 2;
    if h.now() < mid {
        jump_to(&h, mid);
        let (code, text) = api_get(&h, token, realm, &path).await;
        assert_eq!(code, 200, "{text}");
        let s = assert_valid_raw(&status_schema, &text);
        assert_eq!(s["ignition"]["type"], "Start");
        assert_eq!(s["kinetic"]["moving"], true);
        assert!(s["kinetic"]["speed"].as_f64().unwrap() > 0.0);
        let odo = s["odometer"]["mileage"].as_f64().unwrap();
        assert!(
            odo >= d.start_odometer_km && odo <= d.end_odometer_km,
            "{odo} {d:?}"
        );
        let created = chrono::DateTime::parse_from_rfc3339(s["createdAt"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(created <= mid && mid - created <= chrono::Duration::seconds(60));
        let lon = s["lastPosition"]["geometry"]["coordinates"][0]
            .as_f64()
            .unwrap();
        assert_ne!(lon, d.start_position[0]);
    }
    // Parked after the drive: the end values, and the same bytes on every poll.
    jump_to(&h, ended + chrono::Duration::seconds(30));
    let (_, parked) = api_get(&h, token, realm, &path).await;
    let s = assert_valid_raw(&status_schema, &parked);
    assert_eq!(s["ignition"]["type"], "Stop");
    assert_eq!(s["kinetic"]["moving"], false);
    assert_eq!(s["odometer"]["mileage"].as_f64(), Some(d.end_odometer_km));
    assert_eq!(energy(&s, "Electric")["level"].as_f64(), d.end_soc);
    assert_eq!(s["createdAt"], api_time(ended));
    h.advance_clock(Duration::from_secs(60));
    let (_, again) = api_get(&h, token, realm, &path).await;
    assert_eq!(parked, again, "a parked car's status does not change");
    // Charging: plugged, InProgress at the mode's rate, a remaining time; then Finished.
    let c = charges
        .iter()
        .find(|c| c.vin == vin && c.started > h.now() && c.ended.is_some())
        .unwrap();
    let c_end = c.ended.unwrap();
    jump_to(&h, c.started + (c_end - c.started) / 2);
    let (_, text) = api_get(&h, token, realm, &path).await;
    let s = assert_valid_raw(&status_schema, &text);
    let e = energy(&s, "Electric");
    let ch = &e["extension"]["electric"]["charging"];
    assert_eq!(
        (ch["plugged"].as_bool(), ch["status"].as_str()),
        (Some(true), Some("InProgress"))
    );
    assert_eq!(ch["chargingMode"], c.mode);
    assert!(ch["chargingRate"].as_u64().unwrap() > 0);
    assert_ne!(ch["remainingTime"], "PT0S");
    let level = e["level"].as_f64().unwrap();
    assert!(level > c.start_soc && level < c.end_soc, "{level} {c:?}");
    if c.outcome == "Finished" {
        jump_to(&h, c_end);
        let (_, text) = api_get(&h, token, realm, &path).await;
        let s = assert_valid_raw(&status_schema, &text);
        let e = energy(&s, "Electric");
        assert_eq!(e["extension"]["electric"]["charging"]["status"], "Finished");
        assert_eq!(e["level"].as_f64(), Some(c.end_soc));
    }
    // Ground truth is the same whenever and however often the world is observed.
    h.advance_clock((oracle.now() - h.now()).to_std().unwrap());
    assert_eq!(h.drives(), truth);
    assert_eq!(h.charges(), charges);
}

fn api_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn a_simulated_week_of_every_kind_of_car() {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    h.advance_clock(Duration::from_secs(7 * 86_400));
    let drives = h.drives();
    let charges = h.charges();
    let status_schema = schema("status.schema.json");
    let mut kinds = HashSet::new();
    for (v, token, realm) in &cars {
        let vin = v["vin"].as_str().unwrap();
        let kind = v["motorization"].as_str().unwrap();
        kinds.insert(kind.to_owned());
        let mine: Vec<_> = drives.iter().filter(|d| d.vin == vin).collect();
        assert!(
            (7..=28).contains(&mine.len()),
            "{vin}: {} drives",
            mine.len()
        );
        for d in mine.iter().filter(|d| d.ended.is_some()) {
            assert!(d.distance_km >= 1.9 && d.distance_km <= 60.1, "{d:?}");
            assert_eq!(d.start_soc.is_some(), kind != "Thermic");
            assert_eq!(d.start_fuel.is_some(), kind != "Electric");
        }
        let my_charges = charges.iter().filter(|c| c.vin == vin).count();
        if kind == "Thermic" {
            assert_eq!(my_charges, 0);
        } else {
            assert!(my_charges >= 1, "{vin} ({kind}) never charged in a week");
        }
        let (_, text) = api_get(
            &h,
            token,
            realm,
            &format!("/user/vehicles/{}/status", v["id"].as_str().unwrap()),
        )
        .await;
        let s = assert_valid_raw(&status_schema, &text);
        let types: HashSet<&str> = s["energies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        let want: HashSet<&str> = match kind {
            "Electric" => ["Electric"].into(),
            "Hybrid" => ["Electric", "Fuel"].into(),
            _ => ["Fuel"].into(),
        };
        assert_eq!(types, want);
        assert_eq!(s.get("engines").is_some(), kind != "Electric");
    }
    assert_eq!(kinds.len(), 3, "EV, PHEV and thermic cars: {kinds:?}");
    // The admin surface shows the same ground truth.
    let admin: Value = http()
        .get(format!("{}/_sim/drives", h.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin.as_array().unwrap().len(), drives.len());
    let admin: Value = http()
        .get(format!("{}/_sim/charges", h.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin[0]["vin"].as_str(), Some(charges[0].vin.as_str()));
    assert_eq!(
        admin[0]["started"].as_str(),
        Some(api_time(charges[0].started).as_str())
    );
}

#[tokio::test]
async fn the_clock_runs_at_time_scale_and_can_be_changed() {
    let h = start(SimConfig {
        time_scale: 0.0,
        start_time: Some(t0()),
        ..SimConfig::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(h.now(), t0(), "scale 0 stops the clock");
    h.set_time_scale(3600.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ran = (h.now() - t0()).num_seconds();
    assert!(
        (300..3600).contains(&ran),
        "{ran} sim seconds in 100 ms at 3600x"
    );
    h.configure(|c| c.time_scale = 0.0);
    let stopped = h.now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(h.now(), stopped);
    // Access tokens live on the same clock.
    let t = login(&h, "user1@example.com", "password1").await;
    h.advance_clock(Duration::from_secs(3600));
    assert_eq!(
        list(&h, &at(&t), "clientsB2CPeugeot", "").await.status(),
        401
    );
    let c: Value = http()
        .get(format!("{}/_sim/clock", h.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["now"], api_time(stopped + chrono::Duration::hours(1)));
    assert_eq!(c["time_scale"], 0.0);
}

// ---- Trips, alerts, maintenance, missing status, endpoints not served ----

/// A week lived on a frozen clock; returns the handle and its fleet.
async fn week() -> (SimHandle, Vec<(Value, String, String)>) {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    h.advance_clock(Duration::from_secs(7 * 86_400));
    (h, cars)
}

async fn walk_pages(h: &SimHandle, token: &str, realm: &str, first: &str) -> Vec<Value> {
    let (code, text) = api_get(h, token, realm, first).await;
    assert_eq!(code, 200, "{text}");
    let mut pages = vec![serde_json::from_str::<Value>(&text).unwrap()];
    while let Some(next) = pages.last().unwrap()["_links"]["next"]["href"].as_str() {
        assert!(pages.len() < 100, "next links loop");
        let path = next.split("/connectedcar/v4").nth(1).unwrap().to_owned();
        let (code, text) = api_get(h, token, realm, &path).await;
        assert_eq!(code, 200, "{text}");
        pages.push(serde_json::from_str(&text).unwrap());
    }
    pages
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn trips_are_paged_filtered_and_match_the_ground_truth() {
    let (h, cars) = week().await;
    let drives = h.drives();
    let trips_schema = schema("trips.schema.json");
    let (car, token, realm) = cars
        .iter()
        .max_by_key(|(v, ..)| drives.iter().filter(|d| d.vin == v["vin"]).count())
        .unwrap();
    let vin = car["vin"].as_str().unwrap();
    let id = car["id"].as_str().unwrap();
    let mine: Vec<_> = drives
        .iter()
        .filter(|d| d.vin == vin && d.ended.is_some())
        .collect();
    assert!(mine.len() >= 8, "{}", mine.len());
    let base = format!("/user/vehicles/{id}/trips");
    // Every page, 3 at a time: the schema, the envelope, ascending order, the ground truth.
    let pages = walk_pages(&h, token, realm, &format!("{base}?pageSize=3")).await;
    assert_eq!(pages.len(), mine.len().div_ceil(3));
    let mut trips = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        assert_valid_raw(&trips_schema, &p.to_string());
        assert_eq!(p["total"].as_u64(), Some(mine.len() as u64));
        assert_eq!(p["totalPage"].as_u64(), Some(pages.len() as u64));
        assert_eq!(p["currentPage"].as_u64(), Some(i as u64 + 1));
        for rel in ["self", "first", "last"] {
            assert!(
                p["_links"][rel]["href"]
                    .as_str()
                    .unwrap()
                    .contains("pageToken=")
            );
        }
        trips.extend(p["_embedded"]["trips"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(trips.len(), mine.len());
    for (t, d) in trips.iter().zip(&mine) {
        assert_eq!(t["startedAt"], api_time(d.started));
        assert_eq!(t["stoppedAt"], api_time(d.ended.unwrap()));
        assert_eq!(
            t["duration"].as_i64(),
            Some((d.ended.unwrap() - d.started).num_seconds())
        );
        assert_eq!(t["distance"].as_f64(), Some(d.distance_km));
        assert_eq!(t["startMileage"].as_f64(), Some(d.start_odometer_km));
        let c = &t["startPosition"]["geometry"]["coordinates"];
        assert!(
            (c[0].as_f64().unwrap() - d.start_position[0]).abs() < 1e-5,
            "lon first"
        );
        assert_eq!(t["done"], true);
        assert!(t["_links"]["wayPoints"]["href"].is_string());
        assert_eq!(t["id"].as_str().unwrap().len(), 129);
        assert!(t["id"].as_str().unwrap().starts_with(&id[..65]));
        assert!(t["kinetic"]["maxSpeed"].as_f64() >= t["kinetic"]["avgSpeed"].as_f64());
        if let Some(soc) = d.start_soc {
            let e = t["startEnergies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == "Electric")
                .unwrap();
            assert_eq!(e["level"].as_f64(), Some(soc));
        }
    }
    let count = |from: Option<chrono::DateTime<chrono::Utc>>,
                 to: Option<chrono::DateTime<chrono::Utc>>| {
        mine.iter()
            .filter(|d| from.is_none_or(|f| d.started >= f) && to.is_none_or(|t| d.started < t))
            .count() as u64
    };
    let day3 = t0() + chrono::Duration::days(3);
    let day5 = t0() + chrono::Duration::days(5);
    let total = |text: &str| serde_json::from_str::<Value>(text).unwrap()["total"].as_u64();
    for (ts, want) in [
        (format!("{}/", api_time(day3)), count(Some(day3), None)),
        (format!("/{}", api_time(day3)), count(None, Some(day3))),
        (
            format!("{}/{}", api_time(day3), api_time(day5)),
            count(Some(day3), Some(day5)),
        ),
        (
            format!("{}/P2D", api_time(day3)),
            count(Some(day3), Some(day5)),
        ),
        (
            format!("{}/P1D,{}/", api_time(t0()), api_time(day5)),
            count(Some(t0()), Some(t0() + chrono::Duration::days(1))) + count(Some(day5), None),
        ),
    ] {
        let (code, text) =
            api_get(&h, token, realm, &format!("{base}?timestamps={}", enc(&ts))).await;
        if want == 0 {
            assert_eq!(code, 404, "{ts}");
        } else {
            assert_eq!((code, total(&text)), (200, Some(want)), "{ts}: {text}");
        }
    }
    // Repeated parameters, the filter carried by page tokens, HASV's query.
    let filtered = walk_pages(
        &h,
        token,
        realm,
        &format!(
            "{base}?pageSize=1&timestamps={}&timestamps={}&distance=0.1-",
            enc(&format!("{}/P1D", api_time(t0()))),
            enc(&format!("{}/", api_time(day5)))
        ),
    )
    .await;
    let want = count(Some(t0()), Some(t0() + chrono::Duration::days(1))) + count(Some(day5), None);
    assert_eq!(filtered.len() as u64, want);
    assert!(filtered.iter().all(|p| p["total"].as_u64() == Some(want)));
    // Errors: malformed, too many intervals, page size, nothing found.
    for bad in [
        "timestamps=yesterday%2F".to_owned(),
        format!(
            "timestamps={}",
            enc(&format!("{}/{}", api_time(day5), api_time(day3)))
        ),
        (0..11)
            .map(|_| format!("timestamps={}", enc(&format!("{}/", api_time(day3)))))
            .collect::<Vec<_>>()
            .join("&"),
        "pageSize=61".to_owned(),
        "distance=x-".to_owned(),
    ] {
        let (code, text) = api_get(&h, token, realm, &format!("{base}?{bad}")).await;
        assert_eq!(code, 400, "{bad}: {text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 40000);
    }
    let future = format!("{}/", api_time(h.now() + chrono::Duration::days(1)));
    let (code, text) = api_get(
        &h,
        token,
        realm,
        &format!("{base}?timestamps={}", enc(&future)),
    )
    .await;
    assert_eq!(code, 404);
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (b["code"].as_u64(), b["message"].as_str()),
        (Some(40400), Some("Not Found: No trip was found."))
    );
    assert!(is_uuid(b["uuid"].as_str().unwrap()) && b["timestamp"].is_string());
    // Another account's vehicle is refused.
    let other = cars.iter().find(|(_, t, _)| t != token).unwrap();
    let (code, _) = api_get(&h, &other.1, &other.2, &base).await;
    assert_eq!(code, 403);
}

#[tokio::test]
async fn alerts_are_paged_and_match_the_ground_truth() {
    let (h, cars) = week().await;
    let truth = h.alerts();
    let alerts_schema = schema("alerts.schema.json");
    let mut seen = 0;
    for (v, token, realm) in &cars {
        let id = v["id"].as_str().unwrap();
        let mine: Vec<_> = truth.iter().filter(|a| a.vin == v["vin"]).collect();
        let pages = walk_pages(
            &h,
            token,
            realm,
            &format!("/user/vehicles/{id}/alerts?pageSize=2"),
        )
        .await;
        let mut got = Vec::new();
        for p in &pages {
            assert_valid_raw(&alerts_schema, &p.to_string());
            got.extend(p["_embedded"]["alerts"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(got.len(), mine.len());
        for (g, a) in got.iter().zip(&mine) {
            assert_eq!(g["id"].as_str(), Some(a.id.as_str()));
            assert_eq!(g["type"].as_str(), Some(a.kind));
            assert_eq!(g["active"].as_bool(), Some(a.ended.is_none()));
            assert_eq!(g["startedAt"], api_time(a.started));
            assert_eq!(g.get("endAt").is_some(), a.ended.is_some());
        }
        seen += mine.len();
        // None in the filter: an empty collection, as the official schema has it.
        let future = format!("{}/", api_time(h.now() + chrono::Duration::days(1)));
        let (code, text) = api_get(
            &h,
            token,
            realm,
            &format!("/user/vehicles/{id}/alerts?timestamps={}", enc(&future)),
        )
        .await;
        assert_eq!(code, 200);
        let b = assert_valid_raw(&alerts_schema, &text);
        assert_eq!(
            (
                b["total"].as_u64(),
                b["_embedded"]["alerts"].as_array().map(Vec::len)
            ),
            (Some(0), Some(0))
        );
    }
    assert!(
        seen >= cars.len() / 2,
        "a few alerts over a week: {seen} for {} cars",
        cars.len()
    );
    assert!(
        truth.iter().any(|a| a.kind == "FuelLevelLow")
            && truth.iter().any(|a| a.kind == "RiskOfIce")
    );
}

#[tokio::test]
async fn maintenance_counts_down_and_is_missing_for_some_cars() {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    let m_schema = schema("maintenance.schema.json");
    let mut found = Vec::new();
    let mut missing = 0;
    for (v, token, realm) in &cars {
        let path = format!("/user/vehicles/{}/maintenance", v["id"].as_str().unwrap());
        let (code, text) = api_get(&h, token, realm, &path).await;
        if code == 404 {
            let b: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (b["code"].as_u64(), b["message"].as_str()),
                (
                    Some(40400),
                    Some("Not Found: Maintenance Not Found for Given Vehicle.")
                )
            );
            assert_eq!(
                api_get(&h, token, realm, &path).await.0,
                404,
                "on every call"
            );
            missing += 1;
        } else {
            assert_eq!(code, 200, "{text}");
            let b = assert_valid_raw(&m_schema, &text);
            assert!(
                text.contains("\"mileageBeforeMaintenance\":")
                    && b["mileageBeforeMaintenance"].is_f64()
            );
            assert!(b["_links"]["alerts"]["href"].is_string());
            found.push((path, token.clone(), realm.clone(), b));
        }
    }
    assert!(
        missing >= 1 && missing < cars.len(),
        "{missing} of {}",
        cars.len()
    );
    h.advance_clock(Duration::from_secs(2 * 86_400));
    let mut drove = false;
    for (path, token, realm, before) in &found {
        let (_, text) = api_get(&h, token, realm, path).await;
        let after = assert_valid_raw(&m_schema, &text);
        assert_eq!(
            after["daysBeforeMaintenance"].as_i64().unwrap(),
            before["daysBeforeMaintenance"].as_i64().unwrap() - 2
        );
        let (a, b) = (
            after["mileageBeforeMaintenance"].as_f64().unwrap(),
            before["mileageBeforeMaintenance"].as_f64().unwrap(),
        );
        assert!(a <= b);
        drove |= a < b;
    }
    assert!(drove, "the km countdown follows the odometer");
    // The share is a knob.
    h.configure(|c| c.maintenance_missing_fraction = 1.0);
    let (v, token, realm) = &cars[0];
    let path = format!("/user/vehicles/{}/maintenance", v["id"].as_str().unwrap());
    assert_eq!(api_get(&h, token, realm, &path).await.0, 404);
    h.configure(|c| c.maintenance_missing_fraction = 0.0);
    assert_eq!(api_get(&h, token, realm, &path).await.0, 200);
}

#[tokio::test]
async fn a_status_can_be_missing() {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    let (v, token, realm) = &cars[0];
    let (v2, ..) = &cars[1];
    h.configure(|c| c.status_missing_vins = vec![v["vin"].as_str().unwrap().to_owned()]);
    let id = v["id"].as_str().unwrap();
    let (code, text) = api_get(&h, token, realm, &format!("/user/vehicles/{id}/status")).await;
    assert_eq!(code, 404);
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (b["code"].as_u64(), b["message"].as_str()),
        (
            Some(40400),
            Some("Not Found: We didn't find the status for this vehicle.")
        )
    );
    assert!(is_uuid(b["uuid"].as_str().unwrap()));
    let id2 = v2["id"].as_str().unwrap();
    assert_eq!(
        api_get(&h, token, realm, &format!("/user/vehicles/{id2}/status"))
            .await
            .0,
        200
    );
}

/// Issue 25: every endpoint a vehicle links to answers as the gateway does (a body, its content
/// type, the gateway's headers, the token checked) and is counted under its own route; `/alarms`
/// answered a bare 404 (no body, no headers, no auth check, not counted) and `lastPosition`,
/// `telemetry` and `collisions` a gateway 404.
#[tokio::test]
async fn every_endpoint_a_vehicle_links_to_is_served_through_the_gateway() {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    // A week of the car's life, so that it drove (alarm changes, trips) and reported.
    h.advance_clock(Duration::from_secs(7 * 86_400));
    let (v, token, realm) = cars
        .iter()
        .find(|(v, ..)| v["motorization"] != "Thermic")
        .unwrap();
    let id = v["id"].as_str().unwrap();
    let links = v["_links"].as_object().unwrap();
    let per_vehicle: Vec<&str> = links
        .iter()
        .filter(|(_, l)| l["href"].as_str().unwrap().contains(id))
        .map(|(rel, _)| rel.as_str())
        .filter(|rel| *rel != "self")
        .collect();
    assert_eq!(per_vehicle.len(), 8, "{per_vehicle:?}");
    h.reset_stats();
    for rel in &per_vehicle {
        let href = links[*rel]["href"].as_str().unwrap();
        let path = href.strip_prefix(&h.api_base()).unwrap();
        // Without a token: the gateway's 401, with its body and headers.
        let r = http()
            .get(format!("{href}?client_id={ID}"))
            .header("x-introspect-realm", realm.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{rel}");
        assert!(r.headers().contains_key("x-global-transaction-id"), "{rel}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["httpCode"], "401", "{rel}");
        // With one: 200 (or a documented backend 404), a JSON body, the gateway's headers.
        let r = http()
            .get(format!("{href}?client_id={ID}"))
            .bearer_auth(token)
            .header("x-introspect-realm", realm.as_str())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(r.headers().contains_key("x-global-transaction-id"), "{rel}");
        assert!(
            code != 200 || r.headers().contains_key("x-ratelimit-remaining-1"),
            "{rel}"
        );
        let text = r.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}: {text:?}"));
        match (*rel, code) {
            ("maintenance", 404) => assert_eq!(body["code"], 40400),
            (_, 200) => {}
            _ => panic!("{rel}: {code} {text}"),
        }
        let want_type = if *rel == "lastPosition" {
            "application/vnd.geo+json"
        } else {
            "application/hal+json"
        };
        assert_eq!(ctype, want_type, "{rel}");
        let key = format!(
            "GET /connectedcar/v4/user/vehicles/{{id}}{}",
            path.strip_prefix(&format!("/user/vehicles/{id}")).unwrap()
        );
        assert_eq!(h.stats().count(&key, 401), 1, "{key}");
        assert_eq!(h.stats().count(&key, code), 1, "{key}");
        // The bodies the official file describes.
        let file = match *rel {
            "alarms" => "alarms.schema.json",
            "lastPosition" => "position.schema.json",
            "telemetry" => "telemetries.schema.json",
            "collisions" => "collisions.schema.json",
            "trips" => "trips.schema.json",
            "alerts" => "alerts.schema.json",
            "maintenance" if code == 200 => "maintenance.schema.json",
            "status" => "status.schema.json",
            _ => continue,
        };
        assert_valid_raw(&schema(file), &text);
    }
    assert_eq!(h.stats().api_requests, 16);
}

/// `/alarms` follows the drives of the ground truth; the deprecated endpoints show the last
/// report.
#[tokio::test]
async fn alarms_last_position_and_telemetry_follow_the_cars_life() {
    let h = start(frozen()).await;
    let cars = fleet(&h).await;
    h.advance_clock(Duration::from_secs(3 * 86_400));
    let (v, token, realm) = &cars[0];
    let (id, vin) = (v["id"].as_str().unwrap(), v["vin"].as_str().unwrap());
    let drives: Vec<_> = h.drives().into_iter().filter(|d| d.vin == vin).collect();
    assert!(!drives.is_empty());
    let (code, text) = api_get(&h, token, realm, &format!("/user/vehicles/{id}/alarms")).await;
    assert_eq!(code, 200, "{text}");
    let b: Value = serde_json::from_str(&text).unwrap();
    let items: Vec<(String, String)> =
        walk_pages(&h, token, realm, &format!("/user/vehicles/{id}/alarms"))
            .await
            .iter()
            .flat_map(|p| p["_embedded"]["alarms"].as_array().unwrap().clone())
            .map(|a| {
                (
                    a["status"]["createdAt"].as_str().unwrap().to_owned(),
                    a["status"]["activation"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    let mut want = vec![(api_time(t0()), "Active".to_owned())];
    for d in &drives {
        want.push((api_time(d.started), "Inactive".into()));
        if let Some(e) = d.ended {
            want.push((api_time(e), "Active".into()));
        }
    }
    assert_eq!(items, want);
    assert_eq!(b["total"].as_u64(), Some(want.len() as u64));
    // Filtered by time; the trigger type lists nothing; a bad type is a 400.
    let since = enc(&format!("{}/", api_time(drives[0].started)));
    let (_, text) = api_get(
        &h,
        token,
        realm,
        &format!("/user/vehicles/{id}/alarms?timestamps={since}"),
    )
    .await;
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["total"].as_u64(), Some(want.len() as u64 - 1));
    let (_, text) = api_get(
        &h,
        token,
        realm,
        &format!("/user/vehicles/{id}/alarms?type=vehicle.alarm.trigger"),
    )
    .await;
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["total"], 0);
    let (code, _) = api_get(
        &h,
        token,
        realm,
        &format!("/user/vehicles/{id}/alarms?type=nope"),
    )
    .await;
    assert_eq!(code, 400);
    // lastPosition and telemetry carry the same report as /status.
    let status = h.status_of(vin).unwrap();
    let (_, text) = api_get(
        &h,
        token,
        realm,
        &format!("/user/vehicles/{id}/lastPosition"),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        status["lastPosition"]
    );
    let (_, text) = api_get(&h, token, realm, &format!("/user/vehicles/{id}/telemetry")).await;
    let b: Value = serde_json::from_str(&text).unwrap();
    let m = &b["_embedded"]["telemetries"][0];
    assert_eq!(m["createdAt"], status["createdAt"]);
    assert_eq!(m["vehicle"]["odometer"], status["odometer"]);
    assert_eq!(m["vehicle"]["alarm"], status["alarm"]);
    let (code, text) = api_get(
        &h,
        token,
        realm,
        &format!("/user/vehicles/{id}/telemetry?pageSize=2000"),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    // Another account's vehicle is refused on each, as everywhere.
    let (other, ..) = cars.iter().find(|(_, _, r)| r != realm).unwrap();
    let other = other["id"].as_str().unwrap();
    for rel in ["alarms", "lastPosition", "telemetry", "collisions"] {
        let (code, _) = api_get(&h, token, realm, &format!("/user/vehicles/{other}/{rel}")).await;
        assert_eq!(code, 403, "{rel}");
    }
}

/// Issue 25: error bodies carried the wall-clock time while every other time followed the sim
/// clock.
#[tokio::test]
async fn error_bodies_carry_the_sim_clock() {
    let h = start(SimConfig {
        vehicle_counts: vec![3, 4, 0, 2, 4],
        ..frozen()
    })
    .await;
    let cars = fleet(&h).await;
    h.advance_clock(Duration::from_secs(3600));
    let want = stellantis_sync::timefmt::format(h.now());
    assert!(want.starts_with("2026-01-05T01:00:00"), "{want}");
    let (v, token, realm) = &cars[0];
    let (other, ..) = cars.iter().find(|(_, _, r)| r != realm).unwrap();
    let id = v["id"].as_str().unwrap();
    for path in [
        format!("/user/vehicles/{}/status", other["id"].as_str().unwrap()),
        format!("/user/vehicles/{id}/trips?pageSize=0"),
        format!("/user/vehicles/{id}/status?extension=odometer"),
        "/user/vehicles?pageSize=99".to_owned(),
    ] {
        let (code, text) = api_get(&h, token, realm, &path).await;
        assert!(code == 400 || code == 403, "{path}: {code}");
        let b: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(b["timestamp"].as_str(), Some(want.as_str()), "{path}");
    }
    // The empty account's 404, too.
    let t = login(&h, "user3@example.com", "password3").await;
    let (code, b) = page(&h, &at(&t), "clientsB2CDS", "").await;
    assert_eq!(code, 404);
    assert_eq!(b["timestamp"].as_str(), Some(want.as_str()));
}

/// Every href in `v`.
fn hrefs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("href", Value::String(s)) => out.push(s.clone()),
                    _ => hrefs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| hrefs(x, out)),
        _ => {}
    }
}

/// Issue 25: collection links named the host of the request while item links named the real
/// API's; the real API's links all name the host its clients call.
#[tokio::test]
async fn every_link_names_one_host() {
    for public in [None, Some("https://api.groupe-psa.com/connectedcar/v4")] {
        let mut cfg = frozen();
        if let Some(p) = public {
            cfg.public_api_base = p.into();
        }
        let h = start(cfg).await;
        let base = public.map_or_else(|| h.api_base(), str::to_owned);
        let cars = fleet(&h).await;
        h.advance_clock(Duration::from_secs(7 * 86_400));
        let (v, token, realm) = cars
            .iter()
            .find(|(_, _, r)| r == "clientsB2CCitroen")
            .unwrap();
        let id = v["id"].as_str().unwrap();
        let mut links = Vec::new();
        let (_, list_body) = page(&h, token, realm, "&pageSize=1").await;
        hrefs(&list_body, &mut links);
        for rel in [
            "trips",
            "alerts",
            "alarms",
            "telemetry",
            "collisions",
            "status",
            "maintenance",
        ] {
            let (_, text) = api_get(&h, token, realm, &format!("/user/vehicles/{id}/{rel}")).await;
            hrefs(&serde_json::from_str(&text).unwrap(), &mut links);
        }
        assert!(links.len() > 40, "{}", links.len());
        let off: Vec<&String> = links
            .iter()
            .filter(|l| !l.starts_with(&format!("{base}/")))
            .collect();
        assert!(off.is_empty(), "links not under {base}: {off:?}");
    }
}

/// Issue 25: with the burst quota off (`--burst 0`), answers sent `x-ratelimit-*-2: 0` headers
/// as if a window of no request existed.
#[tokio::test]
async fn a_quota_that_is_off_sends_no_headers() {
    for (burst, daily, want) in [
        (0, 100, ["x-ratelimit-limit-1", "x-ratelimit-remaining-1"]),
        (5, 0, ["x-ratelimit-limit-2", "x-ratelimit-remaining-2"]),
    ] {
        let h = start(SimConfig {
            burst_per_second: burst,
            daily_limit: daily,
            ..SimConfig::default()
        })
        .await;
        let t = login(&h, "user1@example.com", "password1").await;
        let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
        assert_eq!(r.status(), 200);
        let sent: Vec<&str> = r
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-ratelimit-"))
            .collect();
        assert_eq!(sent, want, "burst {burst}, daily {daily}");
    }
}

/// Issue 25: labels did not match their brand (`e-208` on a Citroën) nor their motorization.
#[test]
fn labels_match_the_brand_and_the_motorization() {
    use stellantis_sync::brand::Brand;
    let mut w = sim::world::World::generate(11, 10, &[4; 10], 4);
    for _ in 0..400 {
        w.tick(chrono::Utc::now());
    }
    let mut checked = 0;
    for u in &w.users {
        for v in u.vehicles.iter().chain(&u.removed) {
            let Some(label) = &v.label else { continue };
            let model = label.split(" #").next().unwrap();
            let brand_ok = match u.brand {
                Brand::Peugeot => model
                    .trim_start_matches("NOUVEAU ")
                    .trim_start_matches("e-")
                    .starts_with(|c: char| c.is_ascii_digit()),
                Brand::Citroen => ["C", "e-C", "Ë-C"].iter().any(|p| model.starts_with(p)),
                Brand::Ds => model.starts_with("DS "),
                Brand::Opel | Brand::Vauxhall => ["CORSA", "ASTRA", "MOKKA", "GRANDLAND"]
                    .iter()
                    .any(|p| model.starts_with(p)),
            };
            assert!(brand_ok, "{model} on a {:?}", u.brand);
            let electric = ["e-", "Ë-", "-E", "E-TENSE", "ELECTRIC"]
                .iter()
                .any(|m| model.contains(m));
            let hybrid =
                model.contains("HYBRID") || (u.brand == Brand::Ds && model.contains("E-TENSE"));
            match v.motorization {
                "Electric" => assert!(electric && !model.contains("HYBRID"), "{model} on an EV"),
                "Hybrid" => assert!(hybrid, "{model} on a PHEV"),
                _ => assert!(!electric && !hybrid, "{model} on a thermic car"),
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} labels");
}

// ---- Fault switches for the hardening tests ----

fn faults(specs: &[&str]) -> Faults {
    let mut f = Faults::default();
    for s in specs {
        f.set(s).unwrap();
    }
    f
}

async fn page(h: &SimHandle, token: &str, realm: &str, href_or_query: &str) -> (u16, Value) {
    let url = if href_or_query.starts_with("http") {
        format!("{href_or_query}&client_id={ID}")
    } else {
        format!(
            "{}/user/vehicles?client_id={ID}{href_or_query}",
            h.api_base()
        )
    };
    let r = http()
        .get(url)
        .bearer_auth(token)
        .header("x-introspect-realm", realm)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn list_no_total_and_next_loops() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    h.set_faults(faults(&["list_no_total=true"]));
    let (code, b) = page(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(code, 200);
    for k in ["total", "totalPage", "currentPage"] {
        assert!(b.get(k).is_none(), "{k} in {b}");
    }
    assert_eq!(b["_embedded"]["vehicles"].as_array().unwrap().len(), 2);
    h.set_faults(faults(&["next_loops=1"]));
    let (_, p1) = page(&h, &at(&t), "clientsB2CPeugeot", "&pageSize=1").await;
    let (_, p2) = page(
        &h,
        &at(&t),
        "clientsB2CPeugeot",
        p1["_links"]["last"]["href"].as_str().unwrap(),
    )
    .await;
    assert_eq!(p2["currentPage"], 2, "the last page");
    for p in [&p1, &p2] {
        assert_eq!(p["_links"]["next"], p["_links"]["self"], "{p}");
    }
    assert_eq!(h.stats().faults_injected["next_loops"], 2);
}

#[tokio::test]
async fn bare_40400_hides_an_account_with_vehicles() {
    let h = start(SimConfig::default()).await;
    h.set_faults(faults(&["bare_40400=true"]));
    let t = login(&h, "user1@example.com", "password1").await;
    let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["uuid", "code", "timestamp"]);
    assert_eq!(b["code"], 40400);
    // The empty account still gets the documented answer.
    let t3 = login(&h, "user3@example.com", "password3").await;
    let b: Value = list(&h, &at(&t3), "clientsB2CDS", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["message"], "No vehicle found");
}

#[tokio::test]
async fn persistent_401_refuses_even_fresh_tokens() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    // Set through the admin API, as a black-box script would.
    let f = Faults {
        persistent_401: true,
        ..Faults::default()
    };
    let r = http()
        .put(format!("{}/_sim/faults", h.base_url()))
        .json(&f)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, fresh) = token_call(
        &h,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    for token in [at(&t), at(&fresh)] {
        let r = list(&h, &token, "clientsB2CPeugeot", "").await;
        assert_eq!(r.status(), 401);
        let b: Value = r.json().await.unwrap();
        assert!(
            b["moreInformation"]
                .as_str()
                .unwrap()
                .starts_with("Cannot pass the security checks")
        );
    }
    assert_eq!(h.stats().faults_injected["persistent_401"], 2);
}

#[tokio::test]
async fn token_expires_in_is_replaced_by_raw_json() {
    let h = start(SimConfig::default()).await;
    let mut rt = login(&h, "user1@example.com", "password1").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for raw in ["1e17", "-5", "\"abc\"", "null"] {
        h.set_faults(faults(&[&format!("token_expires_in={raw}")]));
        let r = http()
            .post(format!("{}/am/oauth2/access_token", h.base_url()))
            .basic_auth(ID, Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains(&format!("\"expires_in\":{raw},")), "{text}");
        let b: Value = serde_json::from_str(&text).unwrap();
        let new = b["refresh_token"].as_str().unwrap().to_owned();
        assert!(h.refresh_token_is_live(&new) && !h.refresh_token_is_live(&rt));
        rt = new;
    }
    assert!(
        Faults::default().set("token_expires_in=abc").is_err(),
        "not JSON"
    );
}

#[tokio::test]
async fn idp_stall_after_rotate_holds_the_answer_after_the_rotation() {
    let h = start(SimConfig::default()).await;
    let rt = login(&h, "user1@example.com", "password1").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    h.set_faults(faults(&["idp_stall_after_rotate_ms=1500"]));
    let started = std::time::Instant::now();
    let r = http()
        .post(format!("{}/am/oauth2/access_token", h.base_url()))
        .basic_auth(ID, Some(SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The client never saw the new token, yet the old one is already dead.
    assert!(!h.refresh_token_is_live(&rt));
    assert_eq!(h.live_refresh_tokens("user1@example.com"), 1);
    assert_eq!(h.stats().grants["refresh_token"], 1);
}

#[tokio::test]
async fn page_shift_keep_total_swaps_a_vehicle_between_pages() {
    let h = start(SimConfig {
        users: 1,
        vehicle_counts: vec![4],
        ..SimConfig::default()
    })
    .await;
    h.set_faults(faults(&["page_shift_keep_total=true"]));
    let t = login(&h, "user1@example.com", "password1").await;
    let before: Vec<String> = h
        .vehicles("user1@example.com")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let (_, p1) = page(&h, &at(&t), "clientsB2CPeugeot", "&pageSize=2").await;
    let (_, p2) = page(
        &h,
        &at(&t),
        "clientsB2CPeugeot",
        p1["_links"]["next"]["href"].as_str().unwrap(),
    )
    .await;
    let ids = |p: &Value| -> Vec<String> {
        p["_embedded"]["vehicles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        (p1["total"].as_u64(), p2["total"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(ids(&p1), before[..2]);
    let after: Vec<String> = h
        .vehicles("user1@example.com")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after[..3], before[1..], "A removed, B C D kept");
    assert_eq!(
        ids(&p2),
        [before[3].clone(), after[3].clone()],
        "D and the new E"
    );
    let kinds: Vec<&str> = h.events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["removed", "added"]);
    assert_eq!(h.events()[0].vehicle_id, before[0]);
}

#[tokio::test]
async fn daily_quota_without_retry_after() {
    let h = start(SimConfig::default()).await;
    let t = login(&h, "user1@example.com", "password1").await;
    h.set_faults(faults(&["daily_quota_no_retry_after=3600"]));
    let r = list(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-1"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset"], "3600");
    assert!(!r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn huge_body_bytes_pads_api_and_idp_answers() {
    let h = start(SimConfig::default()).await;
    h.set_faults(faults(&["huge_body_bytes=200000"]));
    let t = login(&h, "user1@example.com", "password1").await;
    assert_eq!(t["_padding"].as_str().unwrap().len(), 200_000);
    assert!(t["refresh_token"].is_string());
    let (code, b) = page(&h, &at(&t), "clientsB2CPeugeot", "").await;
    assert_eq!(code, 200);
    assert_eq!(b["_padding"].as_str().unwrap().len(), 200_000);
    assert_eq!(b["total"], 2);
    // Errors are not padded.
    let r = list(&h, "bad-token", "clientsB2CPeugeot", "").await;
    assert!(r.text().await.unwrap().len() < 1000);
}

/// Issue 26: the brand apps' preset clients work as on the real IdPs: each signs in its own
/// brand's users only, redirects only to its app's scheme, and is admitted by the gateway.
#[tokio::test]
async fn brand_app_preset_clients_sign_in_their_own_brand_only() {
    use stellantis_sync::brand::Brand;
    let h = start(SimConfig {
        users: 5,
        vehicle_counts: vec![1, 1, 1, 1, 1],
        ..SimConfig::default()
    })
    .await;
    let users = h.users();
    for b in Brand::ALL {
        let p = b.preset();
        let (own, other) = (
            users.iter().find(|u| u.2 == b).unwrap(),
            users.iter().find(|u| u.2 != b).unwrap(),
        );
        let grant = |user: &str, pass: &str| {
            let form = [
                ("grant_type", "password".to_owned()),
                ("username", user.to_owned()),
                ("password", pass.to_owned()),
            ];
            http()
                .post(format!("{}/am/oauth2/access_token", h.base_url()))
                .basic_auth(p.client_id, Some(p.client_secret))
                .form(&form)
                .send()
        };
        let r = grant(&own.0, &own.1).await.unwrap();
        assert_eq!(r.status(), 200, "{b}");
        let token = at(&r.json().await.unwrap());
        let r = grant(&other.0, &other.1).await.unwrap();
        assert_eq!(r.status(), 400, "{b}: another brand's user");
        let wrong_secret = http()
            .post(format!("{}/am/oauth2/access_token", h.base_url()))
            .basic_auth(p.client_id, Some(SECRET))
            .form(&[
                ("grant_type", "password"),
                ("username", &own.0),
                ("password", &own.1),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_secret.status(), 401, "{b}: wrong secret");
        let listed = http()
            .get(format!(
                "{}/user/vehicles?client_id={}",
                h.api_base(),
                p.client_id
            ))
            .bearer_auth(&token)
            .header("x-introspect-realm", p.realm)
            .send()
            .await
            .unwrap();
        assert_eq!(
            listed.status(),
            200,
            "{b}: the gateway admits the app client"
        );
        // The authorize page: only the app's own redirect scheme.
        let page = |redirect: String| {
            http()
                .get(format!("{}/am/oauth2/authorize", h.base_url()))
                .query(&[
                    ("client_id", p.client_id.to_owned()),
                    ("response_type", "code".into()),
                    ("redirect_uri", redirect),
                ])
                .send()
        };
        let right = format!("{}://oauth2redirect/de", p.redirect_scheme);
        assert_eq!(page(right.clone()).await.unwrap().status(), 200, "{b}");
        let wrong = "https://example.com/callback".to_owned();
        assert_eq!(page(wrong).await.unwrap().status(), 400, "{b}");
        // Signing in another brand's user on this brand's page fails like a wrong password.
        let r = http()
            .post(format!("{}/am/oauth2/authorize", h.base_url()))
            .form(&[
                ("client_id", p.client_id),
                ("response_type", "code"),
                ("redirect_uri", &right),
                ("username", &other.0),
                ("password", &other.1),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{b}: no redirect for another brand's user");
        assert!(r.text().await.unwrap().contains("Invalid login"));
    }
}
