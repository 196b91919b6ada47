//! Pinpoint's JSON shapes, and their translation to and from the core's types. Every field rule
//! of the SendOTPMessage and VerifyOTPMessage references lives here.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use otpd_core::account::{Account, Application};
use otpd_core::iso8601::iso8601;
use otpd_core::outbox::MessageId;
use otpd_core::ports::DeliveryReport;
use otpd_core::service::SendRequest;
use otpd_core::sms::{Language, MessageBody, Sender};
use otpd_core::verification::{Dialect, ReferenceId, VerificationKey};
use otpd_core::{AccountId, ApplicationId, CodeLength, E164, MaxAttempts, Ttl};
use serde::{Deserialize, Serialize};

use super::error::PinpointError;

/// `SendOTPMessageRequestParameters`, every field optional so that a missing one is reported
/// by name rather than as a generic parse failure.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendOtpParameters {
    pub channel: Option<String>,
    pub origination_identity: Option<String>,
    pub destination_identity: Option<String>,
    pub brand_name: Option<String>,
    pub reference_id: Option<String>,
    pub code_length: Option<i64>,
    pub validity_period: Option<i64>,
    pub allowed_attempts: Option<i64>,
    pub language: Option<String>,
    pub entity_id: Option<String>,
    pub template_id: Option<String>,
}

/// `VerifyOTPMessageRequestParameters`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyOtpParameters {
    pub destination_identity: Option<String>,
    pub otp: Option<String>,
    pub reference_id: Option<String>,
}

fn bad(message: impl Into<String>) -> PinpointError {
    PinpointError::BadRequest(message.into())
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, PinpointError> {
    value.ok_or_else(|| bad(format!("{field} is required")))
}

/// Parses a JSON body, naming the problem in Pinpoint's format.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, PinpointError> {
    serde_json::from_slice(body)
        .map_err(|error| bad(format!("The request body is not valid: {error}")))
}

fn in_range(
    value: Option<i64>,
    field: &str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<u8, PinpointError> {
    let value = value.unwrap_or(default);
    if !(min..=max).contains(&value) {
        return Err(bad(format!("{field} must be between {min} and {max}")));
    }
    u8::try_from(value).map_err(|_| bad(format!("{field} must be between {min} and {max}")))
}

pub fn destination(value: Option<String>) -> Result<E164, PinpointError> {
    let value = required(value, "DestinationIdentity")?;
    E164::parse(&value).map_err(|error| bad(format!("DestinationIdentity is not valid: {error}")))
}

/// The destination of a verify: E.164 by shape (it was fully checked when the code was sent).
pub fn lookup_destination(value: Option<String>) -> Result<E164, PinpointError> {
    let value = required(value, "DestinationIdentity")?;
    E164::parse_for_lookup(&value)
        .map_err(|error| bad(format!("DestinationIdentity is not valid: {error}")))
}

pub fn reference_id(value: Option<String>) -> Result<ReferenceId, PinpointError> {
    let value = required(value, "ReferenceId")?;
    ReferenceId::parse(&value).ok_or_else(|| {
        bad("ReferenceId must be between 1 and 48 characters, none of them a control character")
    })
}

pub fn verification_key(
    account_id: &AccountId,
    application: &ApplicationId,
    reference: &ReferenceId,
    destination: E164,
) -> VerificationKey {
    VerificationKey {
        account_id: account_id.clone(),
        dialect: Dialect::Pinpoint,
        app: application.as_str().to_owned(),
        reference: reference.as_str().to_owned(),
        destination,
    }
}

/// Applies every rule of RULES.md A to a send.
pub fn send_request(
    parameters: SendOtpParameters,
    account: &Account,
    application: &ApplicationId,
) -> Result<SendRequest, PinpointError> {
    let channel = required(parameters.channel, "Channel")?;
    if channel != "SMS" && channel != "sms" {
        return Err(bad("Channel must be SMS"));
    }
    let origination = required(parameters.origination_identity, "OriginationIdentity")?;
    let sender = Sender::parse(&origination).ok_or_else(|| {
        bad("OriginationIdentity must be a phone number in E.164 format, a short code or an alphanumeric sender ID of up to 11 characters")
    })?;
    let destination = destination(parameters.destination_identity)?;
    let reference = reference_id(parameters.reference_id)?;
    let brand = match parameters.brand_name {
        Some(brand) if brand.chars().count() > 20 => {
            return Err(bad("BrandName must be at most 20 characters"));
        }
        Some(brand) if brand.chars().any(char::is_control) => {
            return Err(bad("BrandName must not contain control characters"));
        }
        Some(brand) if brand.trim().is_empty() => None,
        brand => brand,
    };
    let code_length = in_range(parameters.code_length, "CodeLength", 5, 8, 6)?;
    let validity_minutes = in_range(parameters.validity_period, "ValidityPeriod", 5, 60, 15)?;
    let allowed_attempts = in_range(parameters.allowed_attempts, "AllowedAttempts", 1, 5, 3)?;
    let language = match parameters.language {
        None => Language::EnUs,
        Some(tag) => Language::parse(&tag).ok_or_else(|| {
            bad("Language must be one of de-DE, en-GB, en-US, es-419, es-ES, fr-CA, fr-FR, ja-JP, ko-KR, pt-BR, zh-CN, zh-TW")
        })?,
    };
    let registration_id = |value: Option<String>,
                           field: &str|
     -> Result<Option<String>, PinpointError> {
        match value {
            Some(id)
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Err(bad(format!("{field} must be 1 to 64 printable characters")))
            }
            other => Ok(other),
        }
    };
    Ok(SendRequest {
        key: verification_key(&account.id, application, &reference, destination),
        sender,
        body: MessageBody::Template { language, brand },
        code_length: CodeLength::new(code_length)
            .ok_or_else(|| bad("CodeLength must be between 5 and 8"))?,
        ttl: Ttl::new(Duration::from_secs(u64::from(validity_minutes) * 60))
            .ok_or_else(|| bad("ValidityPeriod must be between 5 and 60"))?,
        max_attempts: MaxAttempts::new(allowed_attempts)
            .ok_or_else(|| bad("AllowedAttempts must be between 1 and 5"))?,
        sandbox: false,
        entity_id: registration_id(parameters.entity_id, "EntityId")?,
        template_id: registration_id(parameters.template_id, "TemplateId")?,
        account_countries: account.limits.countries.clone(),
    })
}

/// `MessageResult`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageResult {
    pub delivery_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub status_code: u16,
    pub status_message: String,
}

impl MessageResult {
    /// The result of the first delivery attempt; `MessageId` is otpd's own id for the message.
    pub fn new(report: DeliveryReport, message_id: Option<&MessageId>) -> Self {
        Self {
            delivery_status: report.status.as_str(),
            message_id: message_id.map(ToString::to_string),
            status_code: report.status_code,
            status_message: report.status_message.into_string(),
        }
    }
}

/// `MessageResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageResponse {
    pub application_id: String,
    pub request_id: String,
    pub endpoint_result: HashMap<String, MessageResult>,
    pub result: HashMap<String, MessageResult>,
}

/// `VerificationResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerificationResponse {
    pub valid: bool,
}

/// `CreateApplicationRequest`.
#[derive(Debug, Default, Deserialize)]
pub struct CreateApplicationRequest {
    #[serde(rename = "Name")]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `ApplicationResponse`.
#[derive(Debug, Serialize)]
pub struct ApplicationResponse {
    #[serde(rename = "Arn")]
    pub arn: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "CreationDate")]
    pub creation_date: String,
}

impl ApplicationResponse {
    pub fn new(application: &Application, region: &str) -> Self {
        Self {
            arn: format!(
                "arn:aws:mobiletargeting:{region}:{}:apps/{}",
                application.account_id, application.id
            ),
            id: application.id.to_string(),
            name: application.name.clone(),
            tags: application.tags.clone(),
            creation_date: iso8601(application.created_at.millis()),
        }
    }
}

/// `ApplicationsResponse`.
#[derive(Debug, Serialize)]
pub struct ApplicationsResponse {
    #[serde(rename = "Item")]
    pub item: Vec<ApplicationResponse>,
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::account;

    fn valid() -> SendOtpParameters {
        SendOtpParameters {
            channel: Some("SMS".into()),
            origination_identity: Some("+12065550100".into()),
            destination_identity: Some("+393481234567".into()),
            reference_id: Some("login-1".into()),
            ..Default::default()
        }
    }

    fn send(parameters: SendOtpParameters) -> Result<SendRequest, PinpointError> {
        send_request(parameters, &account(None), &ApplicationId::generate())
    }

    fn message(result: Result<SendRequest, PinpointError>) -> String {
        match result {
            Err(PinpointError::BadRequest(message)) => message,
            other => panic!("expected a BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let request = send(valid()).expect("valid");
        assert_eq!(request.code_length.digits(), 6);
        assert_eq!(request.ttl.duration(), Duration::from_secs(15 * 60));
        assert_eq!(request.max_attempts.get(), 3);
        assert_eq!(
            request.body,
            MessageBody::Template {
                language: Language::EnUs,
                brand: None
            }
        );
        assert_eq!(request.key.reference, "login-1");
    }

    #[test]
    fn required_fields() {
        for (field, parameters) in [
            (
                "Channel",
                SendOtpParameters {
                    channel: None,
                    ..valid()
                },
            ),
            (
                "OriginationIdentity",
                SendOtpParameters {
                    origination_identity: None,
                    ..valid()
                },
            ),
            (
                "DestinationIdentity",
                SendOtpParameters {
                    destination_identity: None,
                    ..valid()
                },
            ),
            (
                "ReferenceId",
                SendOtpParameters {
                    reference_id: None,
                    ..valid()
                },
            ),
        ] {
            assert_eq!(message(send(parameters)), format!("{field} is required"));
        }
    }

    #[test]
    fn channel_is_sms_in_either_case() {
        assert!(
            send(SendOtpParameters {
                channel: Some("sms".into()),
                ..valid()
            })
            .is_ok()
        );
        assert_eq!(
            message(send(SendOtpParameters {
                channel: Some("EMAIL".into()),
                ..valid()
            })),
            "Channel must be SMS"
        );
    }

    #[test]
    fn code_length_edges() {
        for (value, ok) in [(4, false), (5, true), (8, true), (9, false), (-1, false)] {
            let result = send(SendOtpParameters {
                code_length: Some(value),
                ..valid()
            });
            assert_eq!(result.is_ok(), ok, "CodeLength {value}");
        }
    }

    #[test]
    fn validity_period_edges() {
        for (value, ok) in [(4, false), (5, true), (60, true), (61, false)] {
            let result = send(SendOtpParameters {
                validity_period: Some(value),
                ..valid()
            });
            assert_eq!(result.is_ok(), ok, "ValidityPeriod {value}");
        }
    }

    #[test]
    fn allowed_attempts_edges() {
        for (value, ok) in [(0, false), (1, true), (5, true), (6, false)] {
            let result = send(SendOtpParameters {
                allowed_attempts: Some(value),
                ..valid()
            });
            assert_eq!(result.is_ok(), ok, "AllowedAttempts {value}");
        }
    }

    #[test]
    fn reference_id_edges() {
        for (value, ok) in [(0, false), (1, true), (48, true), (49, false)] {
            let result = send(SendOtpParameters {
                reference_id: Some("r".repeat(value)),
                ..valid()
            });
            assert_eq!(result.is_ok(), ok, "ReferenceId of {value}");
        }
    }

    #[test]
    fn brand_name_edges() {
        let brand = |b: &str| {
            send(SendOtpParameters {
                brand_name: Some(b.into()),
                ..valid()
            })
        };
        assert!(brand(&"b".repeat(20)).is_ok());
        assert_eq!(
            message(brand(&"b".repeat(21))),
            "BrandName must be at most 20 characters"
        );
        assert!(matches!(
            brand("").map(|r| r.body),
            Ok(MessageBody::Template { brand: None, .. })
        ));
        assert!(brand("a\nb").is_err());
    }

    #[test]
    fn languages() {
        let language = |l: &str| {
            send(SendOtpParameters {
                language: Some(l.into()),
                ..valid()
            })
        };
        for tag in [
            "de-DE", "en-GB", "en-US", "es-419", "es-ES", "fr-CA", "fr-FR", "ja-JP", "ko-KR",
            "pt-BR", "zh-CN", "zh-TW",
        ] {
            assert!(language(tag).is_ok(), "{tag}");
        }
        assert!(language("it-IT").is_err());
    }

    #[test]
    fn origination_identities() {
        let origin = |o: &str| {
            send(SendOtpParameters {
                origination_identity: Some(o.into()),
                ..valid()
            })
        };
        assert!(origin("+18005550100").is_ok());
        assert!(origin("12345").is_ok());
        assert!(origin("MyBrand").is_ok());
        assert!(origin("TooLongSender").is_err());
        assert!(origin("").is_err());
    }

    #[test]
    fn destinations() {
        let to = |d: &str| {
            send(SendOtpParameters {
                destination_identity: Some(d.into()),
                ..valid()
            })
        };
        assert!(to("393481234567").is_err());
        assert!(to("+390612345678").is_err());
        assert!(to("+1").is_err());
    }

    #[test]
    fn registration_ids() {
        assert!(
            send(SendOtpParameters {
                entity_id: Some("1101".into()),
                template_id: Some("1107".into()),
                ..valid()
            })
            .is_ok()
        );
        assert!(
            send(SendOtpParameters {
                entity_id: Some(String::new()),
                ..valid()
            })
            .is_err()
        );
        assert!(
            send(SendOtpParameters {
                template_id: Some("x".repeat(65)),
                ..valid()
            })
            .is_err()
        );
    }

    #[test]
    fn json_errors_are_bad_requests() {
        assert!(matches!(
            parse_json::<SendOtpParameters>(b"{"),
            Err(PinpointError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<SendOtpParameters>(br#"{"CodeLength": "6"}"#),
            Err(PinpointError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<SendOtpParameters>(b"[]"),
            Err(PinpointError::BadRequest(_))
        ));
        assert!(parse_json::<SendOtpParameters>(br#"{"CodeLength": null, "Unknown": 1}"#).is_ok());
    }

    #[test]
    fn creation_dates_are_iso8601() {
        assert_eq!(iso8601(1_795_300_336_123), "2026-11-21T22:32:16.123Z");
    }

    mod any_body {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::*;

        const FIELDS: [&str; 12] = [
            "Channel",
            "OriginationIdentity",
            "DestinationIdentity",
            "BrandName",
            "ReferenceId",
            "CodeLength",
            "ValidityPeriod",
            "AllowedAttempts",
            "Language",
            "EntityId",
            "TemplateId",
            "Otp",
        ];

        /// Any JSON value a client might put in a field, the plausible ones often.
        fn any_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-10i64..100).prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,70}".prop_map(Value::from),
                prop::sample::select(vec![
                    "SMS",
                    "+393481234567",
                    "+12065550100",
                    "en-US",
                    "Shop"
                ])
                .prop_map(Value::from),
                prop::collection::vec(any::<u8>().prop_map(Value::from), 0..3)
                    .prop_map(Value::Array),
            ]
        }

        fn any_body() -> impl Strategy<Value = Vec<u8>> {
            let valid = [
                ("Channel", "SMS"),
                ("OriginationIdentity", "+12065550100"),
                ("DestinationIdentity", "+393481234567"),
                ("ReferenceId", "login"),
                ("Otp", "123456"),
            ];
            // From nothing, or from a valid send, so that accepted sends are common too.
            let fields = (
                any::<bool>(),
                prop::collection::btree_map(
                    prop::sample::select(FIELDS.to_vec()),
                    any_value(),
                    0..6,
                ),
            );
            prop_oneof![
                fields.prop_map(move |(from_valid, changes)| {
                    let mut object = Map::new();
                    if from_valid {
                        for (name, value) in valid {
                            object.insert(name.to_owned(), Value::from(value));
                        }
                    }
                    for (name, value) in changes {
                        object.insert(name.to_owned(), value);
                    }
                    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
                }),
                prop::collection::vec(any::<u8>(), 0..64),
            ]
        }

        proptest! {
            /// Whatever the body, a send is either refused with a message or a request that keeps
            /// every rule; nothing panics.
            #[test]
            fn any_send_body_is_refused_or_valid(body in any_body()) {
                let parsed = parse_json::<SendOtpParameters>(&body)
                    .and_then(|parameters| send_request(parameters, &account(None), &ApplicationId::generate()));
                match parsed {
                    Ok(request) => {
                        prop_assert!((5..=8).contains(&request.code_length.digits()));
                        prop_assert!((1..=5).contains(&request.max_attempts.get()));
                        prop_assert!(request.key.destination.as_str().starts_with('+'));
                        prop_assert!((1..=48).contains(&request.key.reference.chars().count()));
                    }
                    Err(error) => prop_assert!(matches!(error, PinpointError::BadRequest(_))),
                }
            }

            #[test]
            fn any_verify_body_is_refused_or_parsed(body in any_body()) {
                if let Ok(parameters) = parse_json::<VerifyOtpParameters>(&body) {
                    let _ = lookup_destination(parameters.destination_identity);
                    let _ = reference_id(parameters.reference_id);
                }
            }
        }
    }
}
