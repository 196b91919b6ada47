//! The amm parameters and answers, and their translation to and from the core's types. Every
//! rule of RULES.md B lives here.

use std::time::Duration;

use otpd_core::account::Account;
use otpd_core::service::SendRequest;
use otpd_core::sms::{EncodingChoice, MessageBody, Sender};
use otpd_core::text::is_short_printable;
use otpd_core::verification::{
    CheckOutcome, CheckRecord, Dialect, Verification, VerificationKey, VerificationStatus,
};
use otpd_core::{CodeLength, E164, MaxAttempts, Ttl, VerifyId};
use serde::Serialize;

use super::error::AmmError;
use super::request::Params;

/// The sender used when neither the request nor the account names one.
pub const FALLBACK_SENDER: &str = "OTP";

/// Parses a send, checking the parameters in the order the provider documents them.
pub fn send_request(params: &Params, account: &Account) -> Result<SendRequest, AmmError> {
    let to = params.get("to").ok_or(AmmError::BadTo)?;
    let destination = E164::parse_international_digits(to).map_err(|_| AmmError::BadTo)?;
    let text = params.get("text").ok_or(AmmError::BadText)?;
    if !text.contains("${verify_code}") {
        return Err(AmmError::BadTextPlaceholder);
    }
    let sender = match params.get("from") {
        Some(from) => Sender::parse(from).ok_or(AmmError::BadFrom)?,
        None => account
            .default_sender
            .as_deref()
            .and_then(Sender::parse)
            .unwrap_or_else(|| Sender::Alphanumeric(FALLBACK_SENDER.into())),
    };
    let sandbox = match params
        .get("sandbox")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(AmmError::BadSandbox),
    };
    let app_id = params.get("app_id").unwrap_or_default();
    // The provider's app_id may be left empty.
    if !app_id.is_empty() && !is_short_printable(app_id, 64) {
        return Err(AmmError::BadAppId);
    }
    let encoding = match params
        .get("encoding")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("7BIT") => EncodingChoice::Gsm7,
        Some("UCS2") => EncodingChoice::Ucs2,
        Some("AUTO") => EncodingChoice::Auto,
        Some(_) => return Err(AmmError::BadEncoding),
    };
    let code_length = integer(params, "code_len", 4)
        .filter(|digits| (4..=6).contains(digits))
        .and_then(|digits| CodeLength::new(u8::try_from(digits).ok()?))
        .ok_or(AmmError::BadCodeLength)?;
    let max_attempts = integer(params, "max_retry", 3)
        .filter(|retries| (1..=20).contains(retries))
        .and_then(|retries| MaxAttempts::new(u8::try_from(retries).ok()?))
        .ok_or(AmmError::BadRetry)?;
    let ttl = integer(params, "ttl", 300)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .and_then(|seconds| Ttl::new(Duration::from_secs(seconds)))
        .ok_or(AmmError::BadTtl)?;
    Ok(SendRequest {
        key: VerificationKey {
            account_id: account.id.clone(),
            dialect: Dialect::Amm,
            app: app_id.to_owned(),
            reference: String::new(),
            destination,
        },
        sender,
        body: MessageBody::Custom {
            text: text.to_owned(),
            encoding,
        },
        code_length,
        ttl,
        max_attempts,
        sandbox,
        entity_id: None,
        template_id: None,
        account_countries: account.limits.countries.clone(),
    })
}

/// An integer parameter, `default` when absent; `None` when not an integer.
fn integer(params: &Params, name: &str, default: i64) -> Option<i64> {
    match params.get(name) {
        None => Some(default),
        Some(text) => text.trim().parse().ok(),
    }
}

/// A `verify_id` parameter; missing or malformed is `VERIFY ID ERROR`.
pub fn verify_id(params: &Params) -> Result<VerifyId, AmmError> {
    params
        .get("verify_id")
        .and_then(|id| VerifyId::parse(id.trim()))
        .ok_or(AmmError::VerifyIdError)
}

/// The end user's address from `ip_address`, kept only if it is one.
pub fn ip_address(params: &Params) -> Option<String> {
    params
        .get("ip_address")
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
}

/// The `verify_status` of one check.
pub fn check_status(outcome: CheckOutcome) -> &'static str {
    match outcome {
        CheckOutcome::Verified => "VERIFIED",
        CheckOutcome::Mismatch { .. }
        | CheckOutcome::AttemptsExhausted
        | CheckOutcome::RateLimited => "FAILED",
        CheckOutcome::Expired => "EXPIRED",
        CheckOutcome::AlreadyVerified => "REUSED",
        CheckOutcome::Cancelled => "CANCELLED",
        CheckOutcome::NotFound => "VERIFY ID ERROR",
    }
}

/// The `verify_status` of a verification as `search` shows it.
pub fn verification_status(status: VerificationStatus) -> &'static str {
    match status {
        VerificationStatus::Pending => "PENDING",
        VerificationStatus::Verified => "VERIFIED",
        VerificationStatus::Failed => "FAILED",
        VerificationStatus::Expired => "EXPIRED",
        VerificationStatus::Cancelled => "CANCELLED",
    }
}

#[derive(Debug, Serialize)]
pub struct SendResponse {
    pub verify_id: String,
}

#[derive(Debug, Serialize)]
pub struct CheckResponse {
    pub id_sms: String,
    pub verify_status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CommandResponse {
    pub command: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SearchCheck {
    pub date: i64,
    pub verify_code: String,
    pub verify_status: &'static str,
    pub ip_address: String,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    pub verify_id: String,
    pub verify_status: &'static str,
    pub to: String,
    pub from: String,
    pub id_sms: String,
    /// The code, only for sandbox sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codice: Option<String>,
    pub date_submit: i64,
    pub valid_until: i64,
    pub checks: Vec<SearchCheck>,
    /// otpd's addition: the newest word on delivery (the carrier's receipt state such as
    /// `DELIVRD`, else the hand-over status such as `SUCCESSFUL`) and when it came (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_date: Option<i64>,
}

impl From<Verification> for SearchResponse {
    fn from(verification: Verification) -> Self {
        let from = verification
            .sender
            .strip_prefix('+')
            .unwrap_or(&verification.sender)
            .to_owned();
        Self {
            verify_id: verification.id.to_string(),
            verify_status: verification_status(verification.status),
            to: verification.key.destination.digits().to_owned(),
            from,
            id_sms: verification.message_id.unwrap_or_default(),
            codice: verification
                .sandbox
                .then_some(verification.sandbox_code)
                .flatten(),
            date_submit: verification.created_at.millis(),
            valid_until: verification.expires_at.millis(),
            checks: verification
                .checks
                .into_iter()
                .map(SearchCheck::from)
                .collect(),
            delivery_status: verification.delivery_status,
            delivery_date: verification.delivery_updated_at.map(|at| at.millis()),
        }
    }
}

impl From<CheckRecord> for SearchCheck {
    fn from(record: CheckRecord) -> Self {
        Self {
            date: record.at.millis(),
            verify_code: record.submitted_code.unwrap_or_default(),
            verify_status: check_status(record.outcome),
            ip_address: record.client_ip.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::account;

    fn send(query: &str) -> Result<SendRequest, AmmError> {
        send_request(&Params::parse(query.as_bytes(), None), &account(None))
    }

    const BASE: &str = "to=393481234567&text=Codice+%24%7Bverify_code%7D";

    #[test]
    fn defaults() {
        let request = send(BASE).expect("valid");
        assert_eq!(request.code_length.digits(), 4);
        assert_eq!(request.max_attempts.get(), 3);
        assert_eq!(request.ttl.duration(), Duration::from_secs(300));
        assert!(!request.sandbox);
        assert_eq!(request.key.app, "");
        assert_eq!(request.sender, Sender::Alphanumeric("OTP".into()));
        assert_eq!(
            request.body,
            MessageBody::Custom {
                text: "Codice ${verify_code}".into(),
                encoding: EncodingChoice::Gsm7
            }
        );
        let with_default = send_request(
            &Params::parse(BASE.as_bytes(), None),
            &account(Some("Shop")),
        )
        .expect("valid");
        assert_eq!(with_default.sender, Sender::Alphanumeric("Shop".into()));
    }

    #[test]
    fn each_parameter_has_its_error() {
        let cases = [
            ("text=x%24%7Bverify_code%7D", AmmError::BadTo),
            ("to=12&text=%24%7Bverify_code%7D", AmmError::BadTo),
            ("to=393481234567", AmmError::BadText),
            (
                "to=393481234567&text=no+placeholder",
                AmmError::BadTextPlaceholder,
            ),
        ];
        for (query, error) in cases {
            assert_eq!(send(query).err(), Some(error), "{query}");
        }
        let with = |extra: &str| send(&format!("{BASE}&{extra}")).err();
        assert_eq!(with("from=TwelveChars1"), Some(AmmError::BadFrom));
        assert_eq!(with("sandbox=maybe"), Some(AmmError::BadSandbox));
        assert_eq!(
            with(&format!("app_id={}", "a".repeat(65))),
            Some(AmmError::BadAppId)
        );
        assert_eq!(with("encoding=UTF8"), Some(AmmError::BadEncoding));
        for bad in ["3", "7", "x", "4.5"] {
            assert_eq!(
                with(&format!("code_len={bad}")),
                Some(AmmError::BadCodeLength),
                "{bad}"
            );
        }
        for bad in ["0", "21", "three"] {
            assert_eq!(
                with(&format!("max_retry={bad}")),
                Some(AmmError::BadRetry),
                "{bad}"
            );
        }
        for bad in ["9", "-1", "ten", "604801"] {
            assert_eq!(with(&format!("ttl={bad}")), Some(AmmError::BadTtl), "{bad}");
        }
    }

    #[test]
    fn range_edges_are_accepted() {
        for ok in [
            "code_len=4",
            "code_len=6",
            "max_retry=1",
            "max_retry=20",
            "ttl=10",
            "sandbox=True",
            "sandbox=false",
            "encoding=AUTO",
            "encoding=ucs2",
            "from=393480000000",
            "from=MyShop",
            "to=%2B393481234567",
            "app_id=my-app",
        ] {
            assert!(send(&format!("{BASE}&{ok}")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn verify_ids_and_addresses() {
        let params = Params::parse(
            b"verify_id=c6cf59524c65d9c65d134d1137a86336558d19ba&ip_address=192.168.1.1",
            None,
        );
        assert!(verify_id(&params).is_ok());
        assert_eq!(ip_address(&params).as_deref(), Some("192.168.1.1"));
        assert_eq!(
            verify_id(&Params::parse(b"verify_id=xyz", None)).err(),
            Some(AmmError::VerifyIdError)
        );
        assert_eq!(
            ip_address(&Params::parse(b"ip_address=not-an-ip", None)),
            None
        );
    }

    mod any_form {
        use proptest::prelude::*;

        use super::*;

        const NAMES: [&str; 12] = [
            "to",
            "text",
            "from",
            "sandbox",
            "app_id",
            "encoding",
            "code_len",
            "ttl",
            "max_retry",
            "verify_id",
            "verify_code",
            "ip_address",
        ];

        /// A form of known and unknown names with any values, percent-encoded or raw.
        fn any_form() -> impl Strategy<Value = Vec<u8>> {
            let value = prop_oneof![
                ".{0,40}",
                "[0-9]{0,16}",
                Just("393481234567".to_owned()),
                Just("Code ${verify_code}".to_owned()),
            ];
            let name = prop_oneof![
                prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
                "[a-z_]{0,8}"
            ];
            let pairs = prop::collection::vec((name, value), 0..10).prop_map(|pairs| {
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish()
            });
            prop_oneof![
                // A valid send with changes after it, so that accepted sends are common too.
                pairs
                    .clone()
                    .prop_map(|changes| format!("{BASE}&{changes}").into_bytes()),
                pairs.prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..80),
            ]
        }

        proptest! {
            /// Whatever the form, a send is refused with one of the provider's codes or is a
            /// request that keeps every rule; the other parameters parse or are refused; nothing
            /// panics.
            #[test]
            fn any_form_is_refused_or_valid(body in any_form(), query in proptest::option::of(".{0,40}")) {
                let params = Params::parse(&body, query.as_deref());
                if let Ok(request) = send_request(&params, &account(None)) {
                    prop_assert!((4..=8).contains(&request.code_length.digits()));
                    prop_assert!(request.key.destination.as_str().starts_with('+'));
                    let MessageBody::Custom { text, .. } = &request.body else {
                        return Err(TestCaseError::fail("amm sends carry their own text"));
                    };
                    let placeholder = "${verify_code}";
                    prop_assert!(text.contains(placeholder), "{} lacks the placeholder", text);
                }
                let _ = verify_id(&params);
                let _ = ip_address(&params);
            }
        }
    }
}
