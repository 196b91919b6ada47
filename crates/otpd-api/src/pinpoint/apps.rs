//! CreateApp, GetApp, GetApps and DeleteApp, so SDK users can manage applications themselves.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use http::StatusCode;
use http::request::Parts;
use otpd_core::account::{Application, Name};

use super::auth::Signed;
use super::error::PinpointError;
use super::wire::{self, ApplicationResponse, ApplicationsResponse, CreateApplicationRequest};
use super::{internal, owned_application};
use crate::AppState;

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1_000;

pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<impl IntoResponse, PinpointError> {
    let request: CreateApplicationRequest = wire::parse_json(&signed.body)?;
    let name = request
        .name
        .ok_or_else(|| PinpointError::BadRequest("Name is required".into()))?;
    let name = Name::parse(&name)
        .ok_or_else(|| PinpointError::BadRequest("Name must be 1 to 64 characters".into()))?;
    if request.tags.len() > 50 {
        return Err(PinpointError::BadRequest(
            "An application has at most 50 tags".into(),
        ));
    }
    let application = state
        .store()
        .create_application(Application::new(
            signed.account.id.clone(),
            name,
            request.tags,
        ))
        .await
        .map_err(internal)?;
    tracing::info!(application_id = %application.id, "application created");
    Ok((
        StatusCode::CREATED,
        Json(ApplicationResponse::new(&application, &signed.region)),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    signed: Signed,
) -> Result<Json<ApplicationResponse>, PinpointError> {
    let application = owned_application(&state, &signed.account, path).await?;
    Ok(Json(ApplicationResponse::new(&application, &signed.region)))
}

pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    signed: Signed,
) -> Result<Json<ApplicationResponse>, PinpointError> {
    let application = owned_application(&state, &signed.account, path).await?;
    state
        .accounts
        .delete_application(&application.id)
        .await
        .map_err(internal)?;
    tracing::info!(application_id = %application.id, "application deleted");
    Ok(Json(ApplicationResponse::new(&application, &signed.region)))
}

/// GetApps with `page-size` and `token` (the offset of the next page).
pub async fn list(
    State(state): State<AppState>,
    parts: Parts,
    signed: Signed,
) -> Result<Json<ApplicationsResponse>, PinpointError> {
    let query = parts.uri.query().unwrap_or_default();
    let (mut page_size, mut offset) = (DEFAULT_PAGE_SIZE, 0usize);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "page-size" => {
                page_size = value
                    .parse()
                    .ok()
                    .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                    .ok_or_else(|| {
                        PinpointError::BadRequest(format!(
                            "page-size must be between 1 and {MAX_PAGE_SIZE}"
                        ))
                    })?;
            }
            "token" => {
                offset = value
                    .parse()
                    .map_err(|_| PinpointError::BadRequest("token is not valid".into()))?;
            }
            _ => {}
        }
    }
    let applications = state
        .store()
        .list_applications(Some(&signed.account.id))
        .await
        .map_err(internal)?;
    let total = applications.len();
    let item = applications
        .into_iter()
        .skip(offset)
        .take(page_size)
        .map(|application| ApplicationResponse::new(&application, &signed.region))
        .collect();
    let next = offset.saturating_add(page_size);
    Ok(Json(ApplicationsResponse {
        item,
        next_token: (next < total).then(|| next.to_string()),
    }))
}
