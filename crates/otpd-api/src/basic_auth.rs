//! HTTP basic credentials (RFC 7617), as the amm dialect and the web console take them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;

/// The user and password of an `Authorization: Basic ...` header; `None` for anything else.
pub fn credentials(header: Option<&HeaderValue>) -> Option<(String, String)> {
    let encoded = header
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Basic ")
                .or_else(|| value.strip_prefix("basic "))
        })?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("header")
    }

    #[test]
    fn basic_credentials_and_everything_else() {
        // "operator:se:cret" (a password may hold colons; a user may not).
        let found = credentials(Some(&header("Basic b3BlcmF0b3I6c2U6Y3JldA==")));
        assert_eq!(found, Some(("operator".into(), "se:cret".into())));
        assert_eq!(credentials(None), None);
        assert_eq!(credentials(Some(&header("Bearer abc"))), None);
        assert_eq!(credentials(Some(&header("Basic !!!"))), None);
        // "nocolon"
        assert_eq!(credentials(Some(&header("Basic bm9jb2xvbg=="))), None);
    }
}
