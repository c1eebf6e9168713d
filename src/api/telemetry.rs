//! The per-vehicle telemetry endpoints: `GET /user/vehicles/{id}/status`, `/trips` (paged, with
//! a `timestamps` filter), `/alerts` (paged) and `/maintenance`, every request through the
//! shared rate limiter, every answer classified ([`TelemetryError`]).
//!
//! A 403 (not this user's car) and a 404 on `/status` or `/maintenance` ("We didn't find the
//! status for this vehicle", "Maintenance Not Found for Given Vehicle") mean the endpoint is
//! unavailable for this car: [`TelemetryError::Unavailable`], which the poller backs off from
//! and never counts against the account. A 404 on `/trips` or `/alerts` ("No trip was found")
//! is an empty collection. Never requested, by design: `lastPosition`, `telemetry`,
//! `collisions` (deprecated) and any remote or wake-up endpoint.

use secrecy::SecretString;
use serde_json::Value;

use super::{ApiClient, ApiError, RawResponse, model, retry};
use crate::config::Account;

/// How a telemetry request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    /// 403, or a 404 that says the car has no such data: not an error of the account.
    #[error("HTTP {status} {message} (unavailable for this vehicle)")]
    Unavailable { status: u16, message: String },
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl TelemetryError {
    /// A short class for `telemetry_endpoints.unavailable_reason` and logs.
    pub fn kind(&self) -> String {
        match self {
            TelemetryError::Unavailable { status, .. } => format!("http_{status}"),
            TelemetryError::Api(e) => e.kind().to_owned(),
        }
    }
}

/// One page of `_embedded.<name>`, with its `next` link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collection {
    pub items: Vec<Value>,
    pub next: Option<String>,
    pub total: Option<u64>,
}

fn classify(r: RawResponse, empty_on_404: bool) -> Result<Option<Vec<u8>>, TelemetryError> {
    match r.status {
        200 => Ok(Some(r.body)),
        401 => Err(ApiError::Unauthorized(model::error_message(&r.body)).into()),
        429 => {
            let raw = r.retry_after.unwrap_or_default();
            Err(ApiError::RateLimited {
                reset: None,
                day_exhausted: false,
                retry_after: retry::parse_retry_after(&raw, std::time::SystemTime::now()),
                raw,
            }
            .into())
        }
        404 if empty_on_404 => Ok(None),
        403 | 404 => Err(TelemetryError::Unavailable {
            status: r.status,
            message: model::error_message(&r.body),
        }),
        s if s >= 500 => Err(ApiError::Server {
            status: s,
            message: model::error_message(&r.body),
        }
        .into()),
        s => Err(ApiError::Client {
            status: s,
            message: model::error_message(&r.body),
        }
        .into()),
    }
}

fn json(body: &[u8]) -> Result<Value, TelemetryError> {
    serde_json::from_slice(body)
        .map_err(|e| TelemetryError::Api(ApiError::Malformed(format!("not JSON: {e}"))))
}

fn collection(body: Option<Vec<u8>>, name: &str) -> Result<Collection, TelemetryError> {
    let Some(body) = body else {
        return Ok(Collection::default());
    };
    let v = json(&body)?;
    let items = match v.get("_embedded").and_then(|e| e.get(name)) {
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ApiError::Malformed(format!("_embedded.{name} is not an array")).into());
        }
        None => Vec::new(),
    };
    Ok(Collection {
        items,
        next: v
            .pointer("/_links/next/href")
            .and_then(Value::as_str)
            .map(str::to_owned),
        total: v.get("total").and_then(Value::as_u64),
    })
}

impl ApiClient {
    /// `…/user/vehicles/{id}/{endpoint}?client_id=…` plus `query`.
    pub fn vehicle_url(
        &self,
        a: &Account,
        vehicle_id: &str,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        let id: String = url::form_urlencoded::byte_serialize(vehicle_id.as_bytes()).collect();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("client_id", &a.client_id);
        for (k, v) in query {
            q.append_pair(k, v);
        }
        format!("{base}/user/vehicles/{id}/{endpoint}?{}", q.finish())
    }

    /// The first `/trips` page: trips that started at or after `since` (RFC 3339), oldest first.
    pub fn trips_url(&self, a: &Account, vehicle_id: &str, since: Option<&str>) -> String {
        let filter = since.map(|s| format!("{s}/"));
        let mut q: Vec<(&str, &str)> = vec![("pageSize", "60")];
        if let Some(f) = &filter {
            q.push(("timestamps", f));
        }
        self.vehicle_url(a, vehicle_id, "trips", &q)
    }

    /// The first `/alerts` page.
    pub fn alerts_url(&self, a: &Account, vehicle_id: &str) -> String {
        self.vehicle_url(a, vehicle_id, "alerts", &[("pageSize", "60")])
    }

    /// A `next` link of a telemetry collection (same origin checks as the vehicle list).
    pub fn telemetry_next_url(&self, a: &Account, href: &str) -> Result<String, TelemetryError> {
        self.next_page_url(a, href).map_err(TelemetryError::Api)
    }

    /// `GET /user/vehicles/{id}/status`: the body as it arrived (parsed by `telemetry::status`).
    pub async fn get_status(
        &self,
        a: &Account,
        vehicle_id: &str,
        token: &SecretString,
    ) -> Result<Vec<u8>, TelemetryError> {
        let url = self.vehicle_url(a, vehicle_id, "status", &[]);
        let body = classify(self.get_raw(a, &url, token).await?, false)?.unwrap_or_default();
        if !json(&body)?.is_object() {
            return Err(ApiError::Malformed("the status body is not an object".into()).into());
        }
        Ok(body)
    }

    /// One page of `/trips` (a 404 "No trip was found" is an empty page).
    pub async fn get_trips_page(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
    ) -> Result<Collection, TelemetryError> {
        collection(classify(self.get_raw(a, url, token).await?, true)?, "trips")
    }

    /// One page of `/alerts` (a 404 is an empty page).
    pub async fn get_alerts_page(
        &self,
        a: &Account,
        url: &str,
        token: &SecretString,
    ) -> Result<Collection, TelemetryError> {
        collection(
            classify(self.get_raw(a, url, token).await?, true)?,
            "alerts",
        )
    }

    /// `GET /user/vehicles/{id}/maintenance`.
    pub async fn get_maintenance(
        &self,
        a: &Account,
        vehicle_id: &str,
        token: &SecretString,
    ) -> Result<Value, TelemetryError> {
        let url = self.vehicle_url(a, vehicle_id, "maintenance", &[]);
        json(&classify(self.get_raw(a, &url, token).await?, false)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: &str) -> RawResponse {
        RawResponse {
            status,
            retry_after: Some("7".into()),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn classification() {
        let nf = r#"{"uuid":"x","code":40400,"message":"Not Found: We didn't find the status for this vehicle."}"#;
        assert!(matches!(
            classify(raw(404, nf), false),
            Err(TelemetryError::Unavailable { status: 404, .. })
        ));
        assert_eq!(classify(raw(404, nf), true), Ok(None));
        assert!(matches!(
            classify(raw(403, "{}"), true),
            Err(TelemetryError::Unavailable { status: 403, .. })
        ));
        assert!(matches!(
            classify(raw(401, "{}"), false),
            Err(TelemetryError::Api(ApiError::Unauthorized(_)))
        ));
        assert!(matches!(
            classify(raw(429, "{}"), false),
            Err(TelemetryError::Api(ApiError::RateLimited { retry_after: Some(d), .. })) if d.as_secs() == 7
        ));
        assert!(matches!(
            classify(raw(500, "{}"), false),
            Err(TelemetryError::Api(ApiError::Server { status: 500, .. }))
        ));
        assert!(matches!(
            classify(raw(400, "{}"), false),
            Err(TelemetryError::Api(ApiError::Client { status: 400, .. }))
        ));
        assert_eq!(classify(raw(200, "{}"), false), Ok(Some(b"{}".to_vec())));
    }

    #[test]
    fn collections() {
        let page = br#"{"total": 3, "_embedded": {"trips": [{"id": "a"}, {"id": "b"}]},
                        "_links": {"self": {"href": "x"}, "next": {"href": "/connectedcar/v4/user/vehicles/v/trips?pageToken=t2"}}}"#;
        let c = collection(Some(page.to_vec()), "trips").unwrap();
        assert_eq!(c.items.len(), 2);
        assert_eq!(c.total, Some(3));
        assert!(c.next.unwrap().contains("pageToken=t2"));
        assert_eq!(collection(None, "trips").unwrap(), Collection::default());
        assert!(collection(Some(br#"{"_embedded": {"trips": 3}}"#.to_vec()), "trips").is_err());
        assert!(collection(Some(b"{".to_vec()), "trips").is_err());
    }
}
