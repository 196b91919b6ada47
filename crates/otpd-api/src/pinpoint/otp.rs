//! SendOTPMessage and VerifyOTPMessage.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use otpd_core::service::SendError;
use otpd_core::verification::{CheckHistory, CheckLookup, CheckOutcome, SendRejected};

use super::auth::Signed;
use super::error::PinpointError;
use super::wire::{
    self, MessageResponse, MessageResult, SendOtpParameters, VerificationResponse,
    VerifyOtpParameters,
};
use super::{internal, owned_application};
use crate::AppState;
use crate::observe::{current_request_id, record_destination, record_outcome, record_send};

pub async fn send(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    signed: Signed,
) -> Result<Json<MessageResponse>, PinpointError> {
    let application = owned_application(&state, &signed.account, path).await?;
    let parameters: SendOtpParameters = wire::parse_json(&signed.body)?;
    let destination_key = parameters.destination_identity.clone().unwrap_or_default();
    let request = wire::send_request(parameters, &signed.account, &application.id)?;
    let destination = request.key.destination.clone();
    let receipt = state
        .service
        .send(request)
        .await
        .map_err(|error| match error {
            SendError::Rejected(SendRejected::TooManySends { retry_after }) => {
                PinpointError::too_many_requests(
                    "Too many messages were sent to this destination recently",
                    retry_after,
                )
            }
            SendError::Rejected(SendRejected::NoCredit) => {
                PinpointError::Forbidden("The account's credit does not cover this message".into())
            }
            SendError::Rejected(SendRejected::HourlyLimit { retry_after }) => {
                PinpointError::too_many_requests(
                    "The account has sent its SMS limit for the last hour",
                    retry_after,
                )
            }
            SendError::CountryNotAllowed(country) => PinpointError::BadRequest(format!(
                "DestinationIdentity is in a country this server sends no SMS to ({})",
                country.unwrap_or("unknown")
            )),
            SendError::CountryNotAllowedForAccount(country) => PinpointError::BadRequest(format!(
                "DestinationIdentity is in a country this account may not send SMS to ({})",
                country.unwrap_or("unknown")
            )),
            SendError::Compose(error) => PinpointError::BadRequest(error.to_string()),
            other => internal(other),
        })?;
    record_send(&receipt);
    record_destination(&destination.redacted());
    let result = receipt
        .delivery
        .map(|report| MessageResult::new(report, receipt.message_id.as_ref()))
        .map(|result| HashMap::from([(destination_key, result)]))
        .unwrap_or_default();
    Ok(Json(MessageResponse {
        application_id: application.id.to_string(),
        request_id: current_request_id(),
        endpoint_result: HashMap::new(),
        result,
    }))
}

pub async fn verify(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    signed: Signed,
) -> Result<Json<VerificationResponse>, PinpointError> {
    let application = owned_application(&state, &signed.account, path).await?;
    let parameters: VerifyOtpParameters = wire::parse_json(&signed.body)?;
    let destination = wire::lookup_destination(parameters.destination_identity)?;
    let reference = wire::reference_id(parameters.reference_id)?;
    let otp = parameters
        .otp
        .filter(|otp| !otp.is_empty())
        .ok_or_else(|| PinpointError::BadRequest("Otp is required".into()))?;
    let key = wire::verification_key(&signed.account.id, &application.id, &reference, destination);
    let outcome = state
        .service
        .check(CheckLookup::ByKey(key), &otp, None, CheckHistory::Skip)
        .await
        .map_err(internal)?
        .outcome;
    record_outcome(outcome.as_str());
    Ok(Json(VerificationResponse {
        valid: outcome == CheckOutcome::Verified,
    }))
}
