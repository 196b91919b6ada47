//! The requests the benchmark sends, signed and authenticated as real clients do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// Credentials and ids the requests need.
#[derive(Clone)]
pub struct Client {
    pub host: String,
    pub app_id: String,
    identity: Identity,
    basic: String,
}

/// A distinct destination for every send, in no order, as real traffic has.
static DESTINATIONS: AtomicU64 = AtomicU64::new(0);

pub fn next_destination() -> String {
    destination(DESTINATIONS.fetch_add(1, Ordering::Relaxed))
}

/// The `i`th destination: `i` times a multiplier coprime with 10^8, modulo 10^8, so the first 10^8
/// are distinct, and each lands far from the one before (the multiplier is 10^8 over the golden
/// ratio). Ascending numbers would put every send's entry on the destination index's last page;
/// real traffic puts each on a page of its own.
fn destination(i: u64) -> String {
    const SPREAD: u64 = 61_803_399;
    format!("3934{:08}", i % 100_000_000 * SPREAD % 100_000_000)
}

impl Client {
    pub fn new(host: String, access_key_id: String, secret: String, app_id: String) -> Arc<Self> {
        let identity = Credentials::new(&access_key_id, &secret, None, None, "bench").into();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{access_key_id}:{secret}"))
        );
        Arc::new(Self {
            host,
            app_id,
            identity,
            basic,
        })
    }

    fn signed(&self, path: &str, body: String) -> Request<Full<Bytes>> {
        let headers = [
            ("host", self.host.as_str()),
            ("content-type", "application/json"),
        ];
        let signable = SignableRequest::new(
            "POST",
            path,
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .expect("a valid request");
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region("eu-west-1")
            .name("mobiletargeting")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("complete signing parameters")
            .into();
        let (instructions, _) = sign(signable, &params).expect("signable").into_parts();
        let mut builder = Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        for header in instructions.into_parts().0 {
            builder = builder.header(header.name(), header.value());
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }

    pub fn pinpoint_send(&self, to: &str, allowed_attempts: Option<u8>) -> Request<Full<Bytes>> {
        let mut body = serde_json::json!({
            "Channel": "SMS",
            "BrandName": "Bench",
            "OriginationIdentity": "Bench",
            "DestinationIdentity": format!("+{to}"),
            "ReferenceId": "bench",
        });
        if let Some(attempts) = allowed_attempts {
            body["AllowedAttempts"] = attempts.into();
        }
        self.signed(&format!("/v1/apps/{}/otp", self.app_id), body.to_string())
    }

    pub fn pinpoint_verify(&self, to: &str, code: &str) -> Request<Full<Bytes>> {
        let body = serde_json::json!({
            "DestinationIdentity": format!("+{to}"),
            "Otp": code,
            "ReferenceId": "bench",
        });
        self.signed(
            &format!("/v1/apps/{}/verify-otp", self.app_id),
            body.to_string(),
        )
    }

    pub fn amm_send(&self, to: &str, max_retry: Option<u8>) -> Request<Full<Bytes>> {
        let mut body = format!("to={to}&text=Codice+%24%7Bverify_code%7D");
        if let Some(retries) = max_retry {
            body.push_str(&format!("&max_retry={retries}"));
        }
        Request::post("/sms/v2/verify/send")
            .header("host", &self.host)
            .header("authorization", &self.basic)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }

    pub fn amm_check(&self, verify_id: &str, code: &str) -> Request<Full<Bytes>> {
        Request::get(format!(
            "/sms/v2/verify/check?verify_id={verify_id}&verify_code={code}"
        ))
        .header("host", &self.host)
        .header("authorization", &self.basic)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
    }

    pub fn ceiling(&self) -> Request<Full<Bytes>> {
        Request::post("/")
            .header("host", &self.host)
            .body(Full::new(Bytes::from_static(b"{\"value\":1}")))
            .expect("a valid request")
    }
}

/// A wrong code for `code`: same length, first digit changed.
pub fn wrong(code: &str) -> String {
    let first = if code.starts_with('1') { '2' } else { '1' };
    format!("{first}{}", &code[1..])
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::destination;

    #[test]
    fn destinations_are_distinct_and_in_no_order() {
        let first: Vec<String> = (0..200_000).map(destination).collect();
        assert_eq!(first.iter().collect::<HashSet<_>>().len(), first.len());
        assert!(first.iter().all(|number| number.len() == 12));
        let ascending = first.windows(2).filter(|pair| pair[0] < pair[1]).count();
        let share = ascending as f64 / (first.len() - 1) as f64;
        assert!((0.3..0.7).contains(&share), "{share} of neighbours ascend");
    }
}
