use std::time::{Duration, SystemTime};

use axum::body::Body;
use http::{Request, StatusCode};

use crate::helpers::{FIFTEEN_MINUTES, spawn_app};

fn error_type(response: &http::Response<()>) -> &str {
    response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_signed_send_succeeds() {
    let app = spawn_app().await;
    let path = format!("/v1/apps/{}/otp", app.app_id);
    let (response, body) = app
        .call(app.signed_now("POST", &path, &app.send_body("+393481234567")))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body["Result"]["+393481234567"]["DeliveryStatus"],
        "SUCCESSFUL"
    );
    assert_eq!(body["ApplicationId"], app.app_id.as_str());
    let sms = std::fs::read_to_string(&app.sms_file).expect("sms written");
    assert!(sms.contains("This is your One Time Password: "));
}

#[tokio::test]
async fn clock_skew_beyond_fifteen_minutes_is_forbidden() {
    let app = spawn_app().await;
    let path = format!("/v1/apps/{}/otp", app.app_id);
    let body = app.send_body("+393481234567");
    for time in [
        SystemTime::now() - FIFTEEN_MINUTES - Duration::from_secs(30),
        SystemTime::now() + FIFTEEN_MINUTES + Duration::from_secs(30),
    ] {
        let (response, json) = app.call(app.signed("POST", &path, &body, time)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_type(&response), "ForbiddenException");
        assert!(
            json["Message"]
                .as_str()
                .unwrap_or_default()
                .contains("expired")
        );
    }
    let near = SystemTime::now() - FIFTEEN_MINUTES + Duration::from_secs(30);
    let (response, _) = app.call(app.signed("POST", &path, &body, near)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tampered_body_is_forbidden() {
    let app = spawn_app().await;
    let path = format!("/v1/apps/{}/otp", app.app_id);
    let signed = app.signed_now("POST", &path, &app.send_body("+393481234567"));
    let (parts, _) = signed.into_parts();
    let tampered = Request::from_parts(parts, Body::from(app.send_body("+393481234568")));
    let (response, json) = app.call(tampered).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        json["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match")
    );
}

#[tokio::test]
async fn a_tampered_path_is_forbidden() {
    let app = spawn_app().await;
    let signed = app.signed_now(
        "POST",
        &format!("/v1/apps/{}/otp", app.app_id),
        &app.send_body("+393481234567"),
    );
    let (mut parts, body) = signed.into_parts();
    parts.uri = format!("/v1/apps/{}/verify-otp", app.app_id)
        .parse()
        .expect("uri");
    let (response, _) = app.call(Request::from_parts(parts, body)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn malformed_authorization_headers_are_forbidden() {
    let app = spawn_app().await;
    for header in [
        "Basic Zm9vOmJhcg==",
        "AWS4-HMAC-SHA256 Credential=x",
        "AWS4-HMAC-SHA256",
    ] {
        let request = Request::post(format!("/v1/apps/{}/otp", app.app_id))
            .header("authorization", header)
            .header("x-amz-date", "20261121T000000Z")
            .body(Body::from("{}"))
            .expect("request");
        let (response, json) = app.call(request).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{header}");
        assert!(json["RequestID"].is_string());
    }
}

#[tokio::test]
async fn bodies_over_64_kib_are_too_large() {
    let app = spawn_app().await;
    let path = format!("/v1/apps/{}/otp", app.app_id);
    let big = format!("{{\"EntityId\": \"{}\"}}", "x".repeat(64 * 1024));
    let (response, _) = app.call(app.signed_now("POST", &path, &big)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_type(&response), "PayloadTooLargeException");
    // A streamed body without a length is cut off at the limit too.
    let stream = futures_stream(big);
    let request = Request::post(&path).body(stream).expect("request");
    let (response, _) = app.call(request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn futures_stream(text: String) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text
        .into_bytes()
        .chunks(4096)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn wrong_methods_and_options() {
    let app = spawn_app().await;
    let path = format!("/v1/apps/{}/verify-otp", app.app_id);
    let (response, json) = app
        .call(Request::get(&path).body(Body::empty()).expect("request"))
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_type(&response), "MethodNotAllowedException");
    assert!(json["Message"].is_string());
    let (response, _) = app
        .call(
            Request::options(&path)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let (response, _) = app
        .call(
            Request::get("/healthz")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (response, _) = app
        .call(
            Request::get("/readyz")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
}
