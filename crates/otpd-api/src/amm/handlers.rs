//! send, check, command and search.

use axum::Json;
use axum::extract::State;
use otpd_core::service::SendError;
use otpd_core::sms::ComposeError;
use otpd_core::verification::{
    CancelOutcome, CheckHistory, CheckLookup, CheckOutcome, SendRejected,
};

use super::error::AmmError;
use super::request::AmmRequest;
use super::wire::{self, CheckResponse, CommandResponse, SearchResponse, SendResponse};
use crate::AppState;
use crate::observe::{record_destination, record_outcome, record_send};

fn internal(error: impl std::fmt::Display) -> AmmError {
    tracing::error!(%error, "request failed");
    AmmError::Generic
}

pub async fn send(
    State(state): State<AppState>,
    request: AmmRequest,
) -> Result<Json<SendResponse>, AmmError> {
    let send = wire::send_request(&request.params, &request.account)?;
    let destination = send.key.destination.redacted();
    let receipt = state
        .service
        .send(send)
        .await
        .map_err(|error| match error {
            SendError::Rejected(SendRejected::TooManySends { retry_after }) => {
                AmmError::Antispam { retry_after }
            }
            SendError::Rejected(SendRejected::NoCredit) => AmmError::NoCredit,
            // The provider's code for sending too much; its API has no account-wide one.
            SendError::Rejected(SendRejected::HourlyLimit { retry_after }) => {
                AmmError::Antispam { retry_after }
            }
            // The provider's code for a recipient that cannot be texted.
            SendError::CountryNotAllowed(_) | SendError::CountryNotAllowedForAccount(_) => {
                AmmError::BadTo
            }
            SendError::Compose(ComposeError::BadPlaceholder) => AmmError::BadTextPlaceholder,
            SendError::Compose(_) => AmmError::BadText,
            other => internal(other),
        })?;
    record_send(&receipt);
    record_destination(&destination);
    Ok(Json(SendResponse {
        verify_id: receipt.verify_id.to_string(),
    }))
}

pub async fn check(
    State(state): State<AppState>,
    request: AmmRequest,
) -> Result<Json<CheckResponse>, AmmError> {
    let id = wire::verify_id(&request.params)?;
    let code = request.params.get("verify_code").unwrap_or_default();
    let lookup = CheckLookup::ById {
        account_id: request.account.id.clone(),
        id,
    };
    let report = state
        .service
        .check(
            lookup,
            code,
            wire::ip_address(&request.params),
            CheckHistory::WithCode,
        )
        .await
        .map_err(internal)?;
    if report.outcome == CheckOutcome::RateLimited {
        return Err(AmmError::Antispam {
            retry_after: report.retry_after,
        });
    }
    record_outcome(report.outcome.as_str());
    Ok(Json(CheckResponse {
        id_sms: report.message_id.unwrap_or_default(),
        verify_status: wire::check_status(report.outcome),
    }))
}

pub async fn command(
    State(state): State<AppState>,
    request: AmmRequest,
) -> Result<Json<CommandResponse>, AmmError> {
    let id = wire::verify_id(&request.params)?;
    if request.params.get("command") != Some("DELETE") {
        return Err(AmmError::BadCommand);
    }
    match state
        .service
        .cancel(&request.account.id, &id)
        .await
        .map_err(internal)?
    {
        CancelOutcome::Cancelled => Ok(Json(CommandResponse { command: "DELETE" })),
        CancelOutcome::NotCancellable => Err(AmmError::BadStatus),
        CancelOutcome::NotFound => Err(AmmError::VerifyIdError),
    }
}

pub async fn search(
    State(state): State<AppState>,
    request: AmmRequest,
) -> Result<Json<SearchResponse>, AmmError> {
    if request.params.is_empty() {
        return Err(AmmError::NoParams);
    }
    let id = wire::verify_id(&request.params)?;
    let verification = state
        .service
        .find(&request.account.id, &id)
        .await
        .map_err(internal)?
        .ok_or(AmmError::VerifyIdError)?;
    Ok(Json(SearchResponse::from(verification)))
}
