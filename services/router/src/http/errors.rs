//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, and the one mapping from the router's
//! error categories (gRPC codes) to HTTP statuses.
//!
//! Invariant: every non-2xx answer of the HTTP API is an [`ApiError`]; a 429 carries `Retry-After`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

use crate::error::RouterError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// HTTP status, OpenAI error `type` and `code` for a gRPC code: the one place the categories meet HTTP.
pub fn classify(code: Code) -> (StatusCode, &'static str, &'static str) {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_argument")
        }
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "invalid_request_error", "permission_denied"),
        Code::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
        Code::AlreadyExists | Code::Aborted => (StatusCode::CONFLICT, "invalid_request_error", "conflict"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "service_unavailable"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error", "deadline_exceeded"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "invalid_request_error", "unimplemented"),
        Code::Cancelled => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cancelled"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let (status, kind, code) = classify(code);
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    /// 400 naming the request field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(Code::InvalidArgument, message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(Code::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthenticated, message)
    }

    /// From a worker's (or the stream supervisor's) status, mid-request.
    pub fn from_status(status: &tonic::Status) -> Self {
        ApiError::new(status.code(), status.message())
    }

    /// From a refusal of the shared request path; `rename` maps gRPC field names to this endpoint's names.
    pub fn from_router(error: RouterError, rename: impl Fn(&str) -> String) -> Self {
        let param = error.field().map(rename);
        let retry_after = error.retry_after();
        let mut api = match &error {
            RouterError::UnknownModel { requested, served } => {
                let mut e = ApiError::not_found(format!(
                    "The model '{requested}' does not exist; this router serves '{served}'"
                ));
                e.code = Some("model_not_found");
                e
            }
            RouterError::Worker(status) => ApiError::from_status(status),
            other => ApiError::new(other.code(), other.to_string()),
        };
        if let (RouterError::InvalidArgument { message, .. }, Some(param)) = (&error, &param) {
            api.message = format!("invalid argument '{param}': {message}");
        }
        api.param = param;
        api.retry_after = retry_after;
        api
    }

    /// The JSON body alone (also sent as an SSE event when a stream fails after its headers went out).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from(r#"{"error":{"message":"internal error"}}"#))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            self.body_json(),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
