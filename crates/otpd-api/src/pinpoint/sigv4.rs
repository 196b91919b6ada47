//! Checking AWS Signature Version 4 on incoming requests.
//!
//! The signing math is aws-sigv4's: the request is rebuilt from exactly the headers the client
//! says it signed, its `x-amz-date`, its raw (still percent-encoded) path and query, and the body
//! bytes; it is signed again with the account's secret and the two signatures are compared in
//! constant time.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::request::Parts;
use otpd_core::AccessKeyId;
use otpd_core::ids::SecretAccessKey;
use subtle::ConstantTimeEq;
use time::{Date, Month, PrimitiveDateTime, Time};

/// The service name Pinpoint requests are signed for.
pub const SERVICE: &str = "mobiletargeting";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a request's signature was not accepted. Each becomes a 403 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error(
        "Authorization header requires the AWS4-HMAC-SHA256 algorithm with Credential, SignedHeaders and Signature"
    )]
    Malformed,
    #[error(
        "Credential should be scoped to a valid date, region and the service 'mobiletargeting'"
    )]
    BadScope,
    #[error("The request must carry and sign an X-Amz-Date header and sign the Host header")]
    MissingDate,
    #[error("Signature expired: the request time is more than 15 minutes from the server time")]
    Skewed,
    #[error("The security token included in the request is invalid")]
    UnknownKey,
    #[error("The request signature we calculated does not match the signature you provided")]
    Mismatch,
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: AccessKeyId,
    pub date: String,
    pub region: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        let rest = header
            .strip_prefix(ALGORITHM)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(SignatureError::Malformed)?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match name {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed_headers = Some(value),
                "Signature" => signature = Some(value),
                _ => return Err(SignatureError::Malformed),
            }
        }
        let (credential, signed_headers, signature) = match (credential, signed_headers, signature)
        {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            _ => return Err(SignatureError::Malformed),
        };
        let scope: Vec<&str> = credential.split('/').collect();
        let [key, date, region, service, terminator] = scope.as_slice() else {
            return Err(SignatureError::BadScope);
        };
        if *service != SERVICE
            || *terminator != "aws4_request"
            || date.len() != 8
            || region.is_empty()
        {
            return Err(SignatureError::BadScope);
        }
        let signature_ok =
            signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit());
        if !signature_ok {
            return Err(SignatureError::Malformed);
        }
        Ok(Self {
            access_key_id: AccessKeyId::parse(key).ok_or(SignatureError::UnknownKey)?,
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            signed_headers: signed_headers
                .split(';')
                .map(str::to_ascii_lowercase)
                .collect(),
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// The request time from `x-amz-date` (`YYYYMMDDTHHMMSSZ`), checked against the scope's date,
/// the list of signed headers and the allowed skew.
pub fn request_time(
    parts: &Parts,
    authorization: &Authorization,
    now: SystemTime,
    max_skew: Duration,
) -> Result<SystemTime, SignatureError> {
    let signs = |name: &str| authorization.signed_headers.iter().any(|h| h == name);
    if !signs("x-amz-date") || !signs("host") {
        return Err(SignatureError::MissingDate);
    }
    let stamp = parts
        .headers
        .get("x-amz-date")
        .and_then(|value| value.to_str().ok())
        .ok_or(SignatureError::MissingDate)?;
    if !stamp.starts_with(&authorization.date) {
        return Err(SignatureError::BadScope);
    }
    let time = parse_amz_date(stamp).ok_or(SignatureError::MissingDate)?;
    let skew = match now.duration_since(time) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    if skew > max_skew {
        return Err(SignatureError::Skewed);
    }
    Ok(time)
}

/// Signs the request again with `secret` and compares, in constant time.
pub fn verify(
    parts: &Parts,
    body: &[u8],
    authorization: &Authorization,
    time: SystemTime,
    secret: &SecretAccessKey,
) -> Result<(), SignatureError> {
    let mut headers = Vec::with_capacity(authorization.signed_headers.len());
    for name in &authorization.signed_headers {
        let mut values = parts.headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return Err(SignatureError::Mismatch);
        }
        for value in values {
            let value = value.to_str().map_err(|_| SignatureError::Mismatch)?;
            headers.push((name.as_str(), value));
        }
    }
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let signable = SignableRequest::new(
        parts.method.as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| SignatureError::Mismatch)?;
    let identity: Identity = Credentials::new(
        authorization.access_key_id.as_str(),
        secret.expose(),
        None,
        None,
        "otpd",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Sign exactly what the client signed: nothing is excluded, not even `user-agent`.
    settings.excluded_headers = Some(Vec::<Cow<'static, str>>::new());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&authorization.region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| SignatureError::Mismatch)?
        .into();
    let expected = sign(signable, &params).map_err(|_| SignatureError::Mismatch)?;
    let matches = expected
        .signature()
        .as_bytes()
        .ct_eq(authorization.signature.as_bytes());
    if bool::from(matches) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn parse_amz_date(stamp: &str) -> Option<SystemTime> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = stamp.get(range)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let month = Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let date = Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        month,
        u8::try_from(number(6..8)?).ok()?,
    )
    .ok()?;
    let time = Time::from_hms(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "AWS4-HMAC-SHA256 Credential=OTPDABCDEFGHIJKLMNOP/20261121/eu-west-1/mobiletargeting/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_authorization_header() {
        let parsed = Authorization::parse(HEADER).expect("parses");
        assert_eq!(parsed.access_key_id.as_str(), "OTPDABCDEFGHIJKLMNOP");
        assert_eq!(parsed.region, "eu-west-1");
        assert_eq!(parsed.date, "20261121");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            Authorization::parse("Basic abc"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            Authorization::parse(&HEADER.replace("mobiletargeting", "s3")),
            Err(SignatureError::BadScope)
        );
        assert_eq!(
            Authorization::parse(&HEADER.replace("Signature=0123", "Signature=zz23")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            Authorization::parse(&HEADER.replace(", Signature=", ", Nonsense=")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            Authorization::parse(&HEADER.replace("OTPDABCDEFGHIJKLMNOP", "KEY")),
            Err(SignatureError::UnknownKey)
        );
    }

    #[test]
    fn parses_amz_dates() {
        let time = parse_amz_date("20261121T223216Z").expect("parses");
        let seconds = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs();
        assert_eq!(seconds, 1_795_300_336);
        assert!(parse_amz_date("20261321T223216Z").is_none());
        assert!(parse_amz_date("2026-11-21T22:32:16Z").is_none());
        assert!(parse_amz_date("20261121T22321+Z").is_none());
    }
}
