//! Checking AWS Signature Version 4 on incoming requests.
//!
//! The request is put in canonical form from exactly the headers the client says it signed, its
//! raw (still percent-encoded) path and query, and the body bytes; the signature that form should
//! carry is computed with the account's secret and compared with the client's in constant time.
//! aws-sigv4 is a client's signer (it derives the key again and builds an `Authorization` header
//! on every call, a sixth of a verify's CPU), so the server side is written here, and its tests
//! hold it to aws-sigv4's signatures.

mod canonical;
mod keys;

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::request::Parts;
use otpd_core::AccessKeyId;
use otpd_core::crypto::hmac_sha256;
use otpd_core::ids::SecretAccessKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Date, Month, PrimitiveDateTime, Time};

pub use keys::SigningKeys;

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

/// The parsed `Authorization` header, borrowing its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'header> {
    pub access_key_id: AccessKeyId,
    pub date: &'header str,
    pub region: &'header str,
    /// Lowercase, in the order given (the SDKs send them lowercase already).
    pub signed_headers: Vec<Cow<'header, str>>,
    /// Lowercase hex.
    pub signature: [u8; 64],
}

impl<'header> Authorization<'header> {
    pub fn parse(header: &'header str) -> Result<Self, SignatureError> {
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
        let mut scope = credential.split('/');
        let (Some(key), Some(date), Some(region), Some(service), Some(terminator), None) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(SignatureError::BadScope);
        };
        if service != SERVICE
            || terminator != "aws4_request"
            || date.len() != 8
            || region.is_empty()
        {
            return Err(SignatureError::BadScope);
        }
        let signature: [u8; 64] = signature
            .as_bytes()
            .try_into()
            .map_err(|_| SignatureError::Malformed)?;
        if !signature.iter().all(u8::is_ascii_hexdigit) {
            return Err(SignatureError::Malformed);
        }
        Ok(Self {
            access_key_id: AccessKeyId::parse(key).ok_or(SignatureError::UnknownKey)?,
            date,
            region,
            signed_headers: signed_headers.split(';').map(lowercase).collect(),
            signature: signature.map(|byte| byte.to_ascii_lowercase()),
        })
    }
}

/// `text` in lowercase, copied only if it has an uppercase letter.
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// Checks the request time, `x-amz-date` (`YYYYMMDDTHHMMSSZ`): signed, on the scope's date, and
/// within the allowed skew of `now`. Returns it as written, for the string to sign.
pub fn check_request_time<'a>(
    parts: &'a Parts,
    authorization: &Authorization<'_>,
    now: SystemTime,
    max_skew: Duration,
) -> Result<&'a str, SignatureError> {
    let signs = |name: &str| authorization.signed_headers.iter().any(|h| h == name);
    if !signs("x-amz-date") || !signs("host") {
        return Err(SignatureError::MissingDate);
    }
    let stamp = parts
        .headers
        .get("x-amz-date")
        .and_then(|value| value.to_str().ok())
        .ok_or(SignatureError::MissingDate)?;
    if !stamp.starts_with(authorization.date) {
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
    Ok(stamp)
}

/// Computes the signature the request should carry under each of `secrets` in turn (an
/// account's secret, then one a rotation keeps for a while) and compares, in constant time,
/// until one matches. `stamp` is the request time [`check_request_time`] accepted.
pub fn verify<'s>(
    parts: &Parts,
    body: &[u8],
    authorization: &Authorization<'_>,
    stamp: &str,
    secrets: impl IntoIterator<Item = &'s SecretAccessKey>,
    keys: &SigningKeys,
) -> Result<(), SignatureError> {
    let canonical = canonical::canonical_request(parts, body, &authorization.signed_headers)
        .map_err(|_| SignatureError::Mismatch)?;
    let mut string_to_sign = format!(
        "{ALGORITHM}\n{stamp}\n{date}/{region}/{SERVICE}/aws4_request\n",
        date = authorization.date,
        region = authorization.region,
    );
    push_hex(
        &mut string_to_sign,
        &Sha256::digest(canonical.as_bytes()).into(),
    );
    let mut expected = String::with_capacity(64);
    for secret in secrets {
        let key = keys.key_for(
            &authorization.access_key_id,
            secret,
            authorization.date,
            authorization.region,
        );
        expected.clear();
        push_hex(
            &mut expected,
            &hmac_sha256(key.as_slice(), string_to_sign.as_bytes()),
        );
        if bool::from(expected.as_bytes().ct_eq(&authorization.signature)) {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Appends the lowercase hex of a SHA-256 digest or HMAC. Through a buffer on the stack:
/// `hex::encode` builds its string a char at a time, which for a request's three digests cost
/// 4% of a verify's instructions on the async thread.
fn push_hex(out: &mut String, digest: &[u8; 32]) {
    let mut hex = [0u8; 64];
    if hex::encode_to_slice(digest, &mut hex).is_ok() {
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
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
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_smithy_runtime_api::client::identity::Identity;
    use proptest::prelude::*;

    const KEY_ID: &str = "OTPDABCDEFGHIJKLMNOP";

    fn secret() -> SecretAccessKey {
        SecretAccessKey::from_bytes(b"9dUqM2xv0Vb1kq8cXrHnOZtE3pL6yWfA4sJgTiCe").expect("utf-8")
    }

    /// A request signed by aws-sigv4, as an AWS SDK signs it, with `headers` (all signed).
    fn signed_by_the_sdk(
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Parts {
        let signable = SignableRequest::new(
            method,
            format!("http://otpd.test{path_and_query}"),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .expect("signable");
        let identity: Identity =
            Credentials::new(KEY_ID, secret().expose(), None, None, "test").into();
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(Vec::new());
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-south-1")
            .name(SERVICE)
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_300_336))
            .settings(settings)
            .build()
            .expect("params")
            .into();
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let mut request = http::Request::builder().method(method).uri(path_and_query);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for header in instructions.headers() {
            request = request.header(header.0, header.1);
        }
        request.body(()).expect("request").into_parts().0
    }

    fn check(parts: &Parts, body: &[u8], keys: &SigningKeys) -> Result<(), SignatureError> {
        let header = parts.headers["authorization"].to_str().expect("ascii");
        let stamp = parts.headers["x-amz-date"].to_str().expect("ascii");
        verify(
            parts,
            body,
            &Authorization::parse(header)?,
            stamp,
            [&secret()],
            keys,
        )
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_~!$'()*+,;=:@-]{0,6}",
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            "%[0-9A-F]{2}",
        ]
    }

    fn query_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9._~-]{0,5}",
            Just("+".to_owned()),
            Just("%2B".to_owned()),
            Just("%20a".to_owned())
        ]
    }

    proptest! {
        /// Whatever the SDK signs, this module accepts, and a changed body it refuses.
        #[test]
        fn agrees_with_the_sdk_signer(
            segments in proptest::collection::vec(segment(), 0..6),
            query in proptest::collection::vec((query_part(), query_part()), 0..4),
            custom in proptest::collection::vec("[ a-zA-Z0-9\t;,]{0,12}", 0..3),
            method in prop_oneof![Just("GET"), Just("POST")],
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut target = format!("/{}", segments.join("/"));
            if !query.is_empty() {
                let pairs: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
                target = format!("{target}?{}", pairs.join("&"));
            }
            let mut headers = vec![("host", "otpd.test"), ("content-type", "application/json")];
            headers.extend(custom.iter().map(|value| ("x-custom", value.as_str())));
            let parts = signed_by_the_sdk(method, &target, &headers, &body);
            let keys = SigningKeys::default();
            prop_assert_eq!(check(&parts, &body, &keys), Ok(()));
            let mut tampered = body.clone();
            tampered.push(b'!');
            prop_assert_eq!(check(&parts, &tampered, &keys), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn refuses_a_changed_header_path_or_secret() {
        let headers = [("host", "otpd.test"), ("content-type", "application/json")];
        let parts = signed_by_the_sdk("POST", "/v1/apps/abc/otp", &headers, b"{}");
        let keys = SigningKeys::default();
        assert_eq!(check(&parts, b"{}", &keys), Ok(()));

        let mut other_host = parts.clone();
        other_host
            .headers
            .insert("host", "evil.test".parse().expect("value"));
        assert_eq!(
            check(&other_host, b"{}", &keys),
            Err(SignatureError::Mismatch)
        );

        let mut other_path = parts.clone();
        other_path.uri = "/v1/apps/abd/otp".parse().expect("uri");
        assert_eq!(
            check(&other_path, b"{}", &keys),
            Err(SignatureError::Mismatch)
        );

        let mut signed_header_gone = parts.clone();
        signed_header_gone.headers.remove("content-type");
        assert_eq!(
            check(&signed_header_gone, b"{}", &keys),
            Err(SignatureError::Mismatch)
        );

        let header = parts.headers["authorization"].to_str().expect("ascii");
        let authorization = Authorization::parse(header).expect("parses");
        let stamp = parts.headers["x-amz-date"].to_str().expect("ascii");
        let wrong = SecretAccessKey::from_bytes(b"another-secret").expect("utf-8");
        assert_eq!(
            verify(&parts, b"{}", &authorization, stamp, [&wrong], &keys),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_the_accepted_secrets_verifies() {
        let parts = signed_by_the_sdk("POST", "/v1/apps/abc/otp", &[("host", "otpd.test")], b"{}");
        let header = parts.headers["authorization"].to_str().expect("ascii");
        let authorization = Authorization::parse(header).expect("parses");
        let stamp = parts.headers["x-amz-date"].to_str().expect("ascii");
        let keys = SigningKeys::default();
        let new = SecretAccessKey::from_bytes(b"the-new-secret").expect("utf-8");
        // Signed with the secret a rotation replaced, which is still accepted second.
        assert_eq!(
            verify(
                &parts,
                b"{}",
                &authorization,
                stamp,
                [&new, &secret()],
                &keys
            ),
            Ok(())
        );
        assert_eq!(
            verify(&parts, b"{}", &authorization, stamp, [&new], &keys),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&parts, b"{}", &authorization, stamp, [], &keys),
            Err(SignatureError::Mismatch)
        );
    }

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
    fn header_names_and_the_signature_are_read_in_lowercase() {
        let shouted = HEADER
            .replace(
                "content-type;host;x-amz-date",
                "Content-Type;HOST;x-amz-date",
            )
            .replace("0123456789abcdef0123", "0123456789ABCDEF0123");
        let parsed = Authorization::parse(&shouted).expect("parses");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
        assert_eq!(parsed, Authorization::parse(HEADER).expect("parses"));
    }

    #[test]
    fn a_signature_of_another_length_is_malformed() {
        for signature in [
            "0123456789abcdef".repeat(4)[1..].to_owned(),
            "0".repeat(65),
            String::new(),
        ] {
            let header = HEADER.replace(&"0123456789abcdef".repeat(4), &signature);
            assert_eq!(
                Authorization::parse(&header),
                Err(SignatureError::Malformed),
                "{signature}"
            );
        }
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
