//! The canonical request of SigV4, built the way the AWS SDKs build it (the rules of aws-sigv4,
//! which the tests below hold this module to): the path with dot segments removed and encoded
//! again, the query decoded, re-encoded and sorted, the signed headers in order with their values
//! trimmed, and the hash of the body.

use std::borrow::Cow;
use std::fmt::Write;

use http::request::Parts;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// What AWS percent-encodes in a query name or value: everything but letters, digits and
/// `-._~` (RFC 3986's unreserved characters).
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path keeps its slashes; everything else, `%` included, is encoded (again).
const PATH_SET: &AsciiSet = &QUERY_SET.remove(b'/');

/// A signed header the request does not carry, or whose value is not visible ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsignableHeader;

/// The canonical request for `parts` and `body`, covering `signed_headers` (lowercase names,
/// in any order, duplicates allowed).
pub fn canonical_request(
    parts: &Parts,
    body: &[u8],
    signed_headers: &[Cow<'_, str>],
) -> Result<String, UnsignableHeader> {
    let mut names: Vec<&str> = signed_headers.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();

    let mut out = String::with_capacity(512);
    out.push_str(parts.method.as_str());
    out.push('\n');
    push_path(&mut out, parts.uri.path());
    out.push('\n');
    push_query(&mut out, parts.uri.query().unwrap_or_default());
    out.push('\n');
    for name in &names {
        out.push_str(name);
        out.push(':');
        let mut values = parts.headers.get_all(*name).iter().peekable();
        if values.peek().is_none() {
            return Err(UnsignableHeader);
        }
        for (index, value) in values.enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_trimmed(&mut out, value.to_str().map_err(|_| UnsignableHeader)?);
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&names.join(";"));
    out.push('\n');
    super::push_hex(&mut out, &Sha256::digest(body).into());
    Ok(out)
}

/// The absolute path with `.`, `..` and empty segments resolved, then percent-encoded.
fn push_path(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    if !(path.contains('.') || path.contains("//")) {
        if !path.starts_with('/') {
            out.push('/');
        }
        out.extend(utf8_percent_encode(path, PATH_SET));
        return;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut normalized = String::with_capacity(path.len() + 1);
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    let ends_in_directory = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if normalized.is_empty() || (ends_in_directory && !normalized.ends_with('/')) {
        normalized.push('/');
    }
    out.extend(utf8_percent_encode(&normalized, PATH_SET));
}

/// The query's pairs decoded (`+` is a space), re-encoded and sorted, as `name=value&...`.
fn push_query(out: &mut String, query: &str) {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| {
            (
                utf8_percent_encode(&name, QUERY_SET).to_string(),
                utf8_percent_encode(&value, QUERY_SET).to_string(),
            )
        })
        .collect();
    pairs.sort_unstable();
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        let _ = write!(out, "{name}={value}");
    }
}

/// The value without leading or trailing spaces, runs of spaces made one (tabs and other
/// whitespace are kept, as AWS does).
fn push_trimmed(out: &mut String, value: &str) {
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        out.push_str(value);
        return;
    }
    let mut previous_space = false;
    for c in value.chars() {
        if c == ' ' && previous_space {
            continue;
        }
        previous_space = c == ' ';
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> String {
        let mut out = String::new();
        push_path(&mut out, raw);
        out
    }

    #[test]
    fn paths_are_normalized_then_encoded_again() {
        assert_eq!(path(""), "/");
        assert_eq!(path("/v1/apps/abc/otp"), "/v1/apps/abc/otp");
        assert_eq!(path("/a/./b/../c"), "/a/c");
        assert_eq!(path("/a//b/"), "/a/b/");
        assert_eq!(path("/a/b/.."), "/a/");
        assert_eq!(path("/.."), "/");
        assert_eq!(path("/a%20b"), "/a%2520b");
    }

    #[test]
    fn headers_lose_outer_spaces_and_runs_of_spaces() {
        let mut out = String::new();
        push_trimmed(&mut out, "  a   b\tc  ");
        out.push('|');
        push_trimmed(&mut out, " a b\tc ");
        out.push('|');
        push_trimmed(&mut out, "   ");
        assert_eq!(out, "a b\tc|a b\tc|");
    }
}
