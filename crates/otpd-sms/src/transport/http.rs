//! Delivery through an HTTP provider or webhook: one JSON POST per message. 2xx is accepted;
//! 429 is throttling and 5xx a temporary failure (both retried by the dispatcher); any other
//! status is permanent. A body with `message_id` (or `id`) gives the carrier's id.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, StatusCode};
use otpd_core::ports::{DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport};

use super::{JsonMessage, kept};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    pub url: String,
    /// One extra header, for a provider's token: `Authorization: Bearer ...`.
    pub header: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpSpecError {
    #[error("the SMS header must look like `Name: value`")]
    BadHeader,
}

impl HttpSpec {
    /// Parses the optional `Name: value` header given with `--sms-http-header`.
    pub fn new(url: &str, header: Option<&str>) -> Result<Self, HttpSpecError> {
        let header = match header.filter(|h| !h.trim().is_empty()) {
            None => None,
            Some(line) => {
                let (name, value) = line.split_once(':').ok_or(HttpSpecError::BadHeader)?;
                let (name, value) = (name.trim(), value.trim());
                HeaderName::try_from(name).map_err(|_| HttpSpecError::BadHeader)?;
                HeaderValue::try_from(value).map_err(|_| HttpSpecError::BadHeader)?;
                Some((name.to_owned(), value.to_owned()))
            }
        };
        Ok(Self {
            url: url.to_owned(),
            header,
        })
    }
}

pub struct HttpTransport {
    client: reqwest::Client,
    spec: HttpSpec,
}

static CRYPTO: Once = Once::new();

impl HttpTransport {
    pub fn new(spec: HttpSpec) -> Result<Self, reqwest::Error> {
        // rustls needs one process-wide crypto provider; ring builds without extra tools.
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("otpd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, spec })
    }
}

#[async_trait]
impl SmsTransport for HttpTransport {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        let payload = JsonMessage::from(sms);
        let mut request = self.client.post(&self.spec.url).json(&payload);
        if let Some((name, value)) = &self.spec.header {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return DeliveryReport {
                    retry_after: None,
                    status: DeliveryStatus::TemporaryFailure,
                    message_id: None,
                    status_code: 0,
                    // Without the URL: it may carry a token.
                    status_message: format!(
                        "the provider could not be reached: {}",
                        error.without_url()
                    )
                    .into(),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| asked_wait(value, SystemTime::now()));
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        let carrier_id = ["message_id", "id"]
            .iter()
            .find_map(|field| match &body[*field] {
                serde_json::Value::String(id) => Some(id.clone()),
                serde_json::Value::Number(id) => Some(id.to_string()),
                _ => None,
            })
            .and_then(|id| kept(&id, &sms.message_id));
        DeliveryReport {
            status: classify(status),
            message_id: carrier_id
                .or_else(|| status.is_success().then(|| (&sms.message_id).into())),
            status_code: status.as_u16(),
            status_message: format!("the provider answered {status}").into(),
            retry_after,
        }
    }
}

/// A `Retry-After` value (RFC 9110, section 10.2.3) as a wait from `now`: delay-seconds, or an
/// HTTP-date, which is no wait once past. `None` for anything else.
fn asked_wait(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

fn classify(status: StatusCode) -> DeliveryStatus {
    if status.is_success() {
        DeliveryStatus::Successful
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        DeliveryStatus::Throttled
    } else if status.is_server_error() {
        DeliveryStatus::TemporaryFailure
    } else {
        DeliveryStatus::PermanentFailure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let spec = HttpSpec::new("https://x", Some("Authorization: Bearer abc")).expect("valid");
        assert_eq!(
            spec.header,
            Some(("Authorization".into(), "Bearer abc".into()))
        );
        assert_eq!(
            HttpSpec::new("https://x", Some("no colon")),
            Err(HttpSpecError::BadHeader)
        );
        assert_eq!(
            HttpSpec::new("https://x", Some("Bad Name: v")),
            Err(HttpSpecError::BadHeader)
        );
        assert_eq!(HttpSpec::new("https://x", None).map(|s| s.header), Ok(None));
    }

    #[test]
    fn a_retry_after_is_read_as_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 03:00:00 GMT").expect("date");
        let wait = |value: &'static str| asked_wait(&HeaderValue::from_static(value), now);
        assert_eq!(wait("120"), Some(Duration::from_secs(120)));
        assert_eq!(wait(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            wait("Mon, 07 Dec 2026 03:01:30 GMT"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            wait("Mon, 07 Dec 2026 02:59:00 GMT"),
            Some(Duration::ZERO),
            "a date already past asks for no wait"
        );
        for unreadable in ["-5", "soon", "1.5", ""] {
            assert_eq!(wait(unreadable), None, "{unreadable:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(classify(StatusCode::OK), DeliveryStatus::Successful);
        assert_eq!(classify(StatusCode::ACCEPTED), DeliveryStatus::Successful);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            DeliveryStatus::Throttled
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR),
            DeliveryStatus::TemporaryFailure
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY),
            DeliveryStatus::TemporaryFailure
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST),
            DeliveryStatus::PermanentFailure
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED),
            DeliveryStatus::PermanentFailure
        );
    }
}
