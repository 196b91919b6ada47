//! `pinpoint-rust-sdk`: AWS's Rust SDK for Pinpoint (`aws-sdk-pinpoint`) as a command, so that
//! the end-to-end tests drive otpd with it as they drive it with boto3 and the AWS CLI.
//!
//! Each command makes one SDK call and prints, as one JSON object on standard output, what the
//! SDK parsed out of otpd's answer: the output's fields under their Pinpoint names, or, for an
//! error the SDK raised as one of the operation's own error variants, that variant's name, the
//! message and the HTTP status (exit code 1). Anything else (otpd unreachable, an answer the SDK
//! could not parse) is an error on standard error and exit code 2.

use std::process::ExitCode;

use anyhow::Context;
use aws_sdk_pinpoint::Client;
use aws_sdk_pinpoint::config::http::HttpResponse;
use aws_sdk_pinpoint::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use aws_sdk_pinpoint::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_pinpoint::operation::{
    create_app::CreateAppError, delete_app::DeleteAppError, get_app::GetAppError,
    get_apps::GetAppsError, send_otp_message::SendOTPMessageError,
    verify_otp_message::VerifyOTPMessageError,
};
use aws_sdk_pinpoint::types::{
    ApplicationResponse, CreateApplicationRequest, SendOtpMessageRequestParameters,
    VerifyOtpMessageRequestParameters,
};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Parser)]
#[command(about = "AWS's Rust SDK for Pinpoint, one call a run")]
struct Cli {
    /// otpd's address, as the SDK's `endpoint_url`.
    #[arg(long)]
    endpoint_url: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key_id: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: String,
    /// Any region: it is only part of the signature.
    #[arg(long, env = "AWS_REGION", default_value = "eu-west-1")]
    region: String,
    #[command(subcommand)]
    call: Call,
}

#[derive(Debug, Subcommand)]
enum Call {
    CreateApp {
        #[arg(long)]
        name: String,
    },
    GetApp {
        #[arg(long)]
        application_id: String,
    },
    GetApps,
    DeleteApp {
        #[arg(long)]
        application_id: String,
    },
    /// `--parameters` is `SendOTPMessageRequestParameters` as JSON, as the AWS CLI takes it.
    SendOtpMessage {
        #[arg(long)]
        application_id: String,
        #[arg(long)]
        parameters: String,
    },
    /// `--parameters` is `VerifyOTPMessageRequestParameters` as JSON.
    VerifyOtpMessage {
        #[arg(long)]
        application_id: String,
        #[arg(long)]
        parameters: String,
    },
}

/// SendOTPMessageRequestParameters under Pinpoint's own field names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct SendParameters {
    allowed_attempts: Option<i32>,
    brand_name: Option<String>,
    channel: Option<String>,
    code_length: Option<i32>,
    destination_identity: Option<String>,
    entity_id: Option<String>,
    language: Option<String>,
    origination_identity: Option<String>,
    reference_id: Option<String>,
    template_id: Option<String>,
    validity_period: Option<i32>,
}

/// VerifyOTPMessageRequestParameters under Pinpoint's own field names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct VerifyParameters {
    destination_identity: Option<String>,
    otp: Option<String>,
    reference_id: Option<String>,
}

/// What a call ended with, once the SDK had otpd's answer.
enum Outcome {
    Output(Value),
    ServiceError(Value),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Outcome::Output(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::ServiceError(error)) => {
            println!("{error}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("pinpoint-rust-sdk: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let config = aws_sdk_pinpoint::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&cli.endpoint_url)
        .region(Region::new(cli.region))
        .credentials_provider(Credentials::new(
            cli.access_key_id,
            cli.secret_access_key,
            None,
            None,
            "command line",
        ))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        // The SDK retries throttling and server errors by itself; the tests want to see each
        // answer, as boto3's do with max_attempts 1.
        .retry_config(RetryConfig::disabled())
        .build();
    let client = Client::from_conf(config);
    match cli.call {
        Call::CreateApp { name } => {
            let request = CreateApplicationRequest::builder().name(name).build();
            let result = client
                .create_app()
                .create_application_request(request)
                .send()
                .await;
            outcome(
                result,
                |output| json!({"ApplicationResponse": application(output.application_response())}),
            )
        }
        Call::GetApp { application_id } => {
            let result = client.get_app().application_id(application_id).send().await;
            outcome(
                result,
                |output| json!({"ApplicationResponse": application(output.application_response())}),
            )
        }
        Call::GetApps => {
            let result = client.get_apps().send().await;
            outcome(result, |output| {
                let page = output.applications_response();
                let items: Vec<Value> = page
                    .map(|page| {
                        page.item()
                            .iter()
                            .map(|app| application(Some(app)))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"ApplicationsResponse": {
                    "Item": items,
                    "NextToken": page.and_then(|page| page.next_token()),
                }})
            })
        }
        Call::DeleteApp { application_id } => {
            let result = client
                .delete_app()
                .application_id(application_id)
                .send()
                .await;
            outcome(
                result,
                |output| json!({"ApplicationResponse": application(output.application_response())}),
            )
        }
        Call::SendOtpMessage {
            application_id,
            parameters,
        } => {
            let parameters: SendParameters = serde_json::from_str(&parameters)
                .context("--parameters is not SendOTPMessageRequestParameters")?;
            let result = client
                .send_otp_message()
                .application_id(application_id)
                .send_otp_message_request_parameters(send_parameters(parameters))
                .send()
                .await;
            outcome(result, |output| {
                let Some(response) = output.message_response() else {
                    return json!({});
                };
                let results: Map<String, Value> = response
                    .result()
                    .into_iter()
                    .flatten()
                    .map(|(address, result)| {
                        let answer = json!({
                            "DeliveryStatus": result.delivery_status().map(|status| status.as_str()),
                            "MessageId": result.message_id(),
                            "StatusCode": result.status_code(),
                            "StatusMessage": result.status_message(),
                        });
                        (address.clone(), answer)
                    })
                    .collect();
                json!({"MessageResponse": {
                    "ApplicationId": response.application_id(),
                    "RequestId": response.request_id(),
                    "Result": results,
                }})
            })
        }
        Call::VerifyOtpMessage {
            application_id,
            parameters,
        } => {
            let parameters: VerifyParameters = serde_json::from_str(&parameters)
                .context("--parameters is not VerifyOTPMessageRequestParameters")?;
            let request = VerifyOtpMessageRequestParameters::builder()
                .set_destination_identity(parameters.destination_identity)
                .set_otp(parameters.otp)
                .set_reference_id(parameters.reference_id)
                .build();
            let result = client
                .verify_otp_message()
                .application_id(application_id)
                .verify_otp_message_request_parameters(request)
                .send()
                .await;
            outcome(result, |output| {
                json!({"VerificationResponse": {
                    "Valid": output.verification_response().and_then(|response| response.valid()),
                }})
            })
        }
    }
}

fn send_parameters(parameters: SendParameters) -> SendOtpMessageRequestParameters {
    SendOtpMessageRequestParameters::builder()
        .set_allowed_attempts(parameters.allowed_attempts)
        .set_brand_name(parameters.brand_name)
        .set_channel(parameters.channel)
        .set_code_length(parameters.code_length)
        .set_destination_identity(parameters.destination_identity)
        .set_entity_id(parameters.entity_id)
        .set_language(parameters.language)
        .set_origination_identity(parameters.origination_identity)
        .set_reference_id(parameters.reference_id)
        .set_template_id(parameters.template_id)
        .set_validity_period(parameters.validity_period)
        .build()
}

fn application(response: Option<&ApplicationResponse>) -> Value {
    match response {
        Some(app) => json!({
            "Arn": app.arn(),
            "Id": app.id(),
            "Name": app.name(),
            "CreationDate": app.creation_date(),
        }),
        None => Value::Null,
    }
}

/// The variant of an operation's error enum the SDK parsed otpd's error into. Every Pinpoint
/// operation has the same seven; anything else is `Unhandled`.
trait Variant {
    fn variant(&self) -> &'static str;
}

macro_rules! variants {
    ($($error:ty),+) => {$(
        impl Variant for $error {
            fn variant(&self) -> &'static str {
                if self.is_bad_request_exception() {
                    "BadRequestException"
                } else if self.is_forbidden_exception() {
                    "ForbiddenException"
                } else if self.is_internal_server_error_exception() {
                    "InternalServerErrorException"
                } else if self.is_method_not_allowed_exception() {
                    "MethodNotAllowedException"
                } else if self.is_not_found_exception() {
                    "NotFoundException"
                } else if self.is_payload_too_large_exception() {
                    "PayloadTooLargeException"
                } else if self.is_too_many_requests_exception() {
                    "TooManyRequestsException"
                } else {
                    "Unhandled"
                }
            }
        }
    )+};
}

variants!(
    CreateAppError,
    GetAppError,
    GetAppsError,
    DeleteAppError,
    SendOTPMessageError,
    VerifyOTPMessageError
);

fn outcome<O, E>(
    result: Result<O, SdkError<E, HttpResponse>>,
    render: impl FnOnce(O) -> Value,
) -> anyhow::Result<Outcome>
where
    E: Variant + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(output) => Ok(Outcome::Output(render(output))),
        Err(SdkError::ServiceError(failure)) => {
            let status = failure.raw().status().as_u16();
            let error = failure.into_err();
            Ok(Outcome::ServiceError(json!({
                "Error": error.variant(),
                "Code": error.code(),
                "Message": error.message(),
                "Status": status,
            })))
        }
        Err(other) => Err(other).context("the call did not reach a parsed answer"),
    }
}
