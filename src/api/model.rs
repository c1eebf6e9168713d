//! The HAL bodies of the vehicle list, parsed tolerantly: unknown fields are kept (each vehicle
//! stays the JSON it arrived as), optional ones may be missing, the 2021 envelope (no
//! `totalPage`/`currentPage`) and the 2024+ one are both accepted. What cannot be trusted is an
//! error, never a guess: a page without `_embedded` is incomplete, not empty.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::ApiError;

/// One vehicle of a listing: its id and its JSON exactly as received. The JSON is parsed into a
/// tree only when needed (a vehicle that changed), which keeps a poll in which nothing changed
/// cheap.
#[derive(Debug, Clone)]
pub struct ListedVehicle {
    pub id: String,
    raw: Box<RawValue>,
}

impl PartialEq for ListedVehicle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.raw.get() == other.raw.get()
    }
}

impl ListedVehicle {
    /// The JSON text as the API sent it.
    pub fn json(&self) -> &str {
        self.raw.get()
    }
    /// The JSON as a tree (it was validated as JSON when the page was parsed).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.raw.get()).unwrap_or(Value::Null)
    }
    /// From a tree (tests, benchmarks, the simulator's own listings). `None` without a string id.
    pub fn from_value(v: &Value) -> Option<ListedVehicle> {
        let id = v.get("id")?.as_str()?.to_owned();
        let raw = RawValue::from_string(v.to_string()).ok()?;
        Some(ListedVehicle { id, raw })
    }
}

/// A VIN as a vehicle's identity: without any whitespace (around it or inside it) and in upper
/// case (a VIN is 17 ASCII capitals and digits, ISO 3779, never a space), so that a listing that
/// spells it ` vr3… ` or `VR3UHZKXZMT 000001` names the car it named as `VR3…`. `None` for an
/// empty one. The vehicle's JSON keeps it as received.
pub fn normalize_vin(raw: &str) -> Option<String> {
    let vin: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (!vin.is_empty()).then_some(vin)
}

/// The normalized `vin` of a listed vehicle's JSON ([`normalize_vin`]).
pub fn vin_of(v: &Value) -> Option<String> {
    v.get("vin").and_then(Value::as_str).and_then(normalize_vin)
}

/// One page of the vehicle list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub total: Option<u64>,
    pub total_pages: Option<u64>,
    pub current_page: Option<u64>,
    /// `_links.next.href`, when there is a next page.
    pub next: Option<String>,
    /// The vehicles, each as received.
    pub vehicles: Vec<ListedVehicle>,
}

#[derive(Deserialize)]
struct Envelope {
    total: Option<Value>,
    #[serde(rename = "totalPage")]
    total_page: Option<Value>,
    #[serde(rename = "currentPage")]
    current_page: Option<Value>,
    #[serde(rename = "_links")]
    links: Option<Value>,
    #[serde(rename = "_embedded")]
    embedded: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Embedded {
    vehicles: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Head {
    id: Option<Value>,
}

fn malformed_json(body: &[u8], e: &serde_json::Error) -> ApiError {
    ApiError::Malformed(match e.classify() {
        serde_json::error::Category::Eof => format!("truncated JSON after {} bytes", body.len()),
        serde_json::error::Category::Syntax => format!(
            "not JSON ({} bytes; line {} column {})",
            body.len(),
            e.line(),
            e.column()
        ),
        _ => format!("unexpected JSON structure ({e})"),
    })
}

/// Deeper vehicles are refused: the API's are about 4 levels deep, and a vehicle accepted here
/// must parse later (serde_json stops at 128).
const MAX_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in a JSON text, by a byte scan that skips strings.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses one page. Bodies that are not a JSON object, pages without `_embedded.vehicles`, and
/// vehicles without a string `id` are refused.
pub fn parse_page(body: &[u8]) -> Result<Page, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // Still tell truncated and non-JSON bodies apart in the message.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => malformed_json(body, &e),
                Ok(_) => ApiError::Malformed("the body is not a JSON object".into()),
            },
        );
    }
    // Validate the whole body as JSON first (syntax, depth), without building a tree.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| malformed_json(body, &e))?;
    let env: Envelope = serde_json::from_slice(body).map_err(|e| malformed_json(body, &e))?;
    let num = |v: &Option<Value>, k: &str| -> Result<Option<u64>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::Malformed(format!("`{k}` is not a non-negative integer"))),
            Some(_) => Err(ApiError::Malformed(format!("`{k}` is not a number"))),
        }
    };
    let total = num(&env.total, "total")?;
    let total_pages = num(&env.total_page, "totalPage")?;
    let current_page = num(&env.current_page, "currentPage")?;
    let next = match env.links.as_ref().and_then(|l| l.get("next")) {
        None | Some(Value::Null) => None,
        Some(link) => Some(
            link.get("href")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::Malformed("`_links.next` has no string href".into()))?
                .to_owned(),
        ),
    };
    let embedded = env.embedded.ok_or_else(|| {
        ApiError::Incomplete("a 200 without `_embedded` (a transient fault of the API)".into())
    })?;
    if !embedded.get().trim_start().starts_with('{') {
        return Err(ApiError::Malformed("`_embedded` is not an object".into()));
    }
    let embedded: Embedded = serde_json::from_str(embedded.get())
        .map_err(|_| ApiError::Malformed("`_embedded` is not an object".into()))?;
    let raw_list = embedded
        .vehicles
        .ok_or_else(|| ApiError::Incomplete("`_embedded` without `vehicles`".into()))?;
    let raws: Vec<Box<RawValue>> = serde_json::from_str(raw_list.get())
        .map_err(|_| ApiError::Malformed("`_embedded.vehicles` is not an array".into()))?;
    let mut vehicles = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let head: Option<Head> = if raw.get().trim_start().starts_with('{') {
            serde_json::from_str(raw.get()).ok()
        } else {
            None
        };
        if nesting_depth(raw.get()) > MAX_DEPTH {
            return Err(ApiError::Malformed(format!(
                "vehicle {i} is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match head.and_then(|h| h.id) {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 4096 => {
                vehicles.push(ListedVehicle { id, raw });
            }
            _ => {
                return Err(ApiError::Malformed(format!(
                    "vehicle {i} has no usable `id`"
                )));
            }
        }
    }
    Ok(Page {
        total,
        total_pages,
        current_page,
        next,
        vehicles,
    })
}

/// Whether a 404 body is the API's documented "No vehicle found" (codes 40400/40410, as number
/// or string, with the message `No vehicle found` / `No vehicule found`). A 404 with the code but
/// another message, or none, is not: it would otherwise record every vehicle removed.
pub fn is_no_vehicle(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let code = match v.get("code") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let msg = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    // The exact documented messages only: "Error: no vehicle found in CORVET for VIN" is not an
    // empty account, and treating it as one would record every vehicle removed.
    matches!(code, Some(40400 | 40410)) && (msg == "no vehicle found" || msg == "no vehicule found")
}

/// A short, safe message from any of the API's three error-body families
/// (`httpMessage/moreInformation`, `code/message`, `error/error_description`).
pub fn error_message(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return format!("(non-JSON body, {} bytes)", body.len());
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let text = if let Some(more) = s("moreInformation") {
        format!("{}: {more}", s("httpMessage").unwrap_or_default())
    } else if let Some(msg) = s("message") {
        let code = v
            .get("code")
            .map(|c| c.to_string().trim_matches('"').to_owned())
            .unwrap_or_default();
        format!("{code} {msg}")
    } else if let Some(err) = s("error") {
        format!("{err}: {}", s("error_description").unwrap_or_default())
    } else {
        "(unrecognised error body)".into()
    };
    // A server may echo the request, bearer token included: never quote a credential.
    crate::redact::tokens(&text).chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vins_are_trimmed_and_upper_case() {
        assert_eq!(
            normalize_vin(" vr3uhzkxzmt000001\t").as_deref(),
            Some("VR3UHZKXZMT000001")
        );
        assert_eq!(
            normalize_vin("VR3UHZKXZMT000001").as_deref(),
            Some("VR3UHZKXZMT000001")
        );
        // Issue 22, second adversarial review (F2): an inner space split the car in two.
        assert_eq!(
            normalize_vin("VR3UHZKXZMT 000001").as_deref(),
            Some("VR3UHZKXZMT000001")
        );
        assert_eq!(normalize_vin(" \n"), None);
        assert_eq!(vin_of(&serde_json::json!({"vin": 7})), None);
    }

    #[test]
    fn current_and_2021_shapes() {
        let now = br#"{"_links":{"self":{"href":"x"},"next":{"href":"/v?pageToken=a"}},"total":2,"totalPage":2,"currentPage":1,
            "_embedded":{"vehicles":[{"id":"abc","vin":"VR3","extra":{"kept":true}}]}}"#;
        let p = parse_page(now).unwrap();
        assert_eq!(
            (p.total, p.total_pages, p.next.as_deref()),
            (Some(2), Some(2), Some("/v?pageToken=a"))
        );
        assert_eq!(p.vehicles[0].value()["extra"]["kept"], true);
        assert_eq!(
            p.vehicles[0].json(),
            r#"{"id":"abc","vin":"VR3","extra":{"kept":true}}"#
        );
        let old = br#"{"_links":{"self":{"href":"x?indexRange=0-&pageSize=60"}},"total":1,"_embedded":{"vehicles":[{"id":"a","label":"e-208"}]}}"#;
        let p = parse_page(old).unwrap();
        assert_eq!((p.total, p.total_pages, p.next), (Some(1), None, None));
    }

    #[test]
    fn nesting_depth_skips_strings() {
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        assert_eq!(nesting_depth(r#""\"[[""#), 0);
        assert_eq!(nesting_depth("1"), 0);
    }

    #[test]
    fn what_is_refused() {
        assert!(
            matches!(parse_page(b"{\"total\":1,"), Err(ApiError::Malformed(m)) if m.contains("truncated"))
        );
        assert!(matches!(parse_page(b"<html>"), Err(ApiError::Malformed(_))));
        assert!(matches!(parse_page(b"[1]"), Err(ApiError::Malformed(_))));
        assert!(matches!(
            parse_page(br#"{"total":3,"_links":{}}"#),
            Err(ApiError::Incomplete(_))
        ));
        assert!(matches!(
            parse_page(br#"{"_embedded":{"vehicles":[{"vin":"x"}]}}"#),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_page(br#"{"total":"3","_embedded":{"vehicles":[]}}"#),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_page(br#"{"total":-1,"_embedded":{"vehicles":[]}}"#),
            Err(ApiError::Malformed(_))
        ));
    }

    #[test]
    fn no_vehicle_bodies() {
        assert!(is_no_vehicle(
            br#"{"uuid":"u","code":40400,"message":"No vehicle found"}"#
        ));
        assert!(is_no_vehicle(
            br#"{"uuid":"u","code":40410,"message":"No vehicule found"}"#
        ));
        assert!(is_no_vehicle(
            br#"{"code":"40400","message":"No vehicle found"}"#
        ));
        assert!(!is_no_vehicle(
            br#"{"code":40400,"message":"Not Found: No trip was found."}"#
        ));
        assert!(!is_no_vehicle(b"not json"));
        // Issue 10 item 8: the code alone, or with another message, is not an empty account.
        assert!(!is_no_vehicle(br#"{"uuid":"u","code":40400}"#));
        assert!(!is_no_vehicle(br#"{"code":40400,"message":""}"#));
        // Adversarial review: a message that merely contains the words.
        for m in [
            "Error: no vehicle found in CORVET for VIN",
            "No vehicle found (CVS upstream timeout, retry)",
            "No vehicle found for this VIN",
            "No vehicle found ",
        ] {
            let body = serde_json::json!({"code": 40400, "message": m}).to_string();
            assert!(!is_no_vehicle(body.as_bytes()), "{m}");
        }
        assert!(!is_no_vehicle(
            br#"{"code":40400,"message":"Not Found: We didn't find the status for this vehicle."}"#
        ));
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| serde_json::json!(f)),
                ".{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(5, 32, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("id".to_owned()),
                            Just("_embedded".to_owned()),
                            Just("vehicles".to_owned()),
                            Just("total".to_owned()),
                            Just("_links".to_owned()),
                            Just("next".to_owned()),
                            Just("href".to_owned()),
                            "[a-z]{1,5}"
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Whatever `parse_page` accepts is trustworthy: every vehicle has a usable string id.
        fn check(body: &[u8]) {
            if let Ok(page) = parse_page(body) {
                for v in &page.vehicles {
                    assert!(!v.id.is_empty());
                    assert_eq!(
                        v.value().get("id").and_then(Value::as_str),
                        Some(v.id.as_str())
                    );
                }
            }
            let _ = is_no_vehicle(body);
            let _ = error_message(body);
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                check(&bytes);
            }

            #[test]
            fn random_json_never_panics(v in json()) {
                check(v.to_string().as_bytes());
                let wrapped = serde_json::json!({"total": 1, "_embedded": {"vehicles": [v]}});
                check(wrapped.to_string().as_bytes());
            }
        }

        #[test]
        fn deep_nesting_and_odd_numbers_are_refused_or_parsed_without_panic() {
            let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            assert!(parse_page(deep.as_bytes()).is_err());
            let deep_obj = format!(
                r#"{{"_embedded":{{"vehicles":[{{"id":"a","x":{}1{}}}]}}}}"#,
                "[".repeat(5_000),
                "]".repeat(5_000)
            );
            assert!(parse_page(deep_obj.as_bytes()).is_err());
            for n in [
                "1e999",
                "-0",
                "18446744073709551616",
                "0.1e-400",
                "NaN",
                "Infinity",
            ] {
                check(format!(r#"{{"total":{n},"_embedded":{{"vehicles":[]}}}}"#).as_bytes());
            }
            check(b"\xff\xfe{\"total\":1}");
            check(&[0xff, 0xfe, b'{', b'}']);
            let huge = serde_json::json!({"total": 1, "_embedded": {"vehicles": [{"id": "a", "vin": "x".repeat(5_000_000)}]}});
            assert!(parse_page(huge.to_string().as_bytes()).is_ok());
            let huge_id = serde_json::json!({"total": 1, "_embedded": {"vehicles": [{"id": "a".repeat(100_000)}]}});
            assert!(
                parse_page(huge_id.to_string().as_bytes()).is_err(),
                "an id longer than 4 KiB is refused"
            );
            check("{\"_embedded\":{\"vehicles\":[{\"id\":\"\u{0}\"}]}}".as_bytes());
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(error_message(br#"{"httpCode":"401","httpMessage":"Unauthorized","moreInformation":"Token is invalid"}"#), "Unauthorized: Token is invalid");
        assert_eq!(
            error_message(br#"{"uuid":"u","code":50000,"message":"CORVET Error"}"#),
            "50000 CORVET Error"
        );
        assert_eq!(error_message(b"oops"), "(non-JSON body, 4 bytes)");
    }
}
