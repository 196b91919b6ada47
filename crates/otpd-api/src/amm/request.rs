//! The amm request: HTTP basic credentials and parameters from the form body and the query
//! string. Parameters are kept as strings so each can be answered with the provider's own code
//! (axum's `Form` would reject `sandbox=True` or an empty `code_len=` with a plain-text 422).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use http::header::AUTHORIZATION;
use otpd_core::account::Account;
use otpd_core::ids::SecretAccessKey;
use otpd_core::{AccessKeyId, Clock, SystemClock};
use subtle::ConstantTimeEq;

use super::error::AmmError;
use crate::AppState;
use crate::body::{self, BodyError};

/// An authenticated amm request with its parameters.
pub struct AmmRequest {
    pub account: Arc<Account>,
    pub params: Params,
}

/// Parameters by name. A name given in the body wins over the same name in the query string;
/// within one source the first occurrence wins.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(body: &[u8], query: Option<&str>) -> Self {
        let mut params = HashMap::new();
        let sources = [body, query.unwrap_or_default().as_bytes()];
        for source in sources {
            for (name, value) in form_urlencoded::parse(source) {
                params
                    .entry(name.into_owned())
                    .or_insert_with(|| value.into_owned());
            }
        }
        Self(params)
    }

    /// The value of `name`, with an empty value treated as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(String::is_empty)
    }
}

impl FromRequest<AppState> for AmmRequest {
    type Rejection = AmmError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        // The body is read before anything can fail: a response sent with the body unread
        // makes the server close the keep-alive connection, and clients racing to reuse it
        // see a dropped connection instead of the answer (seen while the database was down).
        let body = body::read(&parts, body, state.settings.max_body_bytes)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => AmmError::PayloadTooLarge,
                BodyError::TimedOut => AmmError::RequestTimeout,
                BodyError::Unreadable => AmmError::Generic,
            })?;
        let account = authenticate(state, parts.headers.get(AUTHORIZATION)).await?;
        Ok(Self {
            account,
            params: Params::parse(&body, parts.uri.query()),
        })
    }
}

/// HTTP basic auth with the account's access key id and secret, compared in constant time.
async fn authenticate(
    state: &AppState,
    header: Option<&http::HeaderValue>,
) -> Result<Arc<Account>, AmmError> {
    let (key, secret) = crate::basic_auth::credentials(header).ok_or(AmmError::Unauthorized)?;
    let key = AccessKeyId::parse(&key).ok_or(AmmError::Unauthorized)?;
    let found = state
        .accounts
        .credentials(&key)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot look up credentials");
            AmmError::Generic
        })?
        .ok_or(AmmError::Unauthorized)?;
    let matches =
        |known: &SecretAccessKey| bool::from(known.expose().as_bytes().ct_eq(secret.as_bytes()));
    if found.secrets_at(SystemClock.now()).any(matches) {
        Ok(Arc::clone(&found.account))
    } else {
        Err(AmmError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_wins_over_query_and_empty_is_absent() {
        let params = Params::parse(b"to=391&text=a%20b&code_len=", Some("to=392&sandbox=true"));
        assert_eq!(params.get("to"), Some("391"));
        assert_eq!(params.get("text"), Some("a b"));
        assert_eq!(params.get("sandbox"), Some("true"));
        assert_eq!(params.get("code_len"), None);
        assert!(!params.is_empty());
        assert!(Params::parse(b"", None).is_empty());
        assert!(Params::parse(b"verify_id=", None).is_empty());
    }

    #[test]
    fn the_dotnet_sample_body_parses() {
        // The provider's .NET sample starts the body with '&' and sends `sandbox=True`.
        let params = Params::parse(
            b"&text=Codice+%24%7Bverify_code%7D&to=393470000000&sandbox=True",
            None,
        );
        assert_eq!(params.get("text"), Some("Codice ${verify_code}"));
        assert_eq!(params.get("sandbox"), Some("True"));
    }
}
