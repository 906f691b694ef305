use super::errors::{ApiError, classify};
use super::request::{CommonFields, TIMEOUT_HEADER, deadline, parse_body};
use super::*;

#[test]
fn categories_map_to_openai_statuses() {
    assert_eq!(classify(Code::InvalidArgument).0, StatusCode::BAD_REQUEST);
    assert_eq!(classify(Code::Unauthenticated).0, StatusCode::UNAUTHORIZED);
    assert_eq!(classify(Code::NotFound).0, StatusCode::NOT_FOUND);
    assert_eq!(classify(Code::ResourceExhausted).0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(classify(Code::Unavailable).0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(classify(Code::DeadlineExceeded).0, StatusCode::GATEWAY_TIMEOUT);
}

#[test]
fn a_mistyped_or_missing_field_is_named() {
    let e = parse_body::<CommonFields>(br#"{"temperature": "hot"}"#).unwrap_err();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (StatusCode::BAD_REQUEST, Some("temperature"))
    );
    let e = parse_body::<CommonFields>(b"{not json").unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    #[derive(Debug, serde::Deserialize)]
    struct Needs {
        messages: Vec<String>,
    }
    let e = parse_body::<Needs>(b"{}").unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
    let ok = parse_body::<Needs>(br#"{"messages": ["hi"]}"#).unwrap();
    assert_eq!(ok.messages, ["hi"]);
}

#[test]
fn the_timeout_header_is_seconds() {
    let mut headers = axum::http::HeaderMap::new();
    assert!(deadline(&headers).unwrap().is_none());
    headers.insert(TIMEOUT_HEADER, "1.5".parse().unwrap());
    let d = deadline(&headers).unwrap().unwrap();
    let left = d - tokio::time::Instant::now();
    assert!(left > std::time::Duration::from_millis(1400) && left <= std::time::Duration::from_millis(1500));
    headers.insert(TIMEOUT_HEADER, "-1".parse().unwrap());
    assert_eq!(deadline(&headers).unwrap_err().param.as_deref(), Some(TIMEOUT_HEADER));
}

#[test]
fn error_bodies_have_openais_shape() {
    let e = ApiError::invalid("max_tokens", "too many");
    let body: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
    assert_eq!(body["error"]["param"], "max_tokens");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["message"], "too many");
}
