//! The OpenAI-compatible HTTP API, on the same request path as the gRPC API ([`Frontend`]).
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent events with `"stream": true`),
//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (the process answers), `GET /ready` (a decode-capable
//! worker is reachable; 503 otherwise). Errors use OpenAI's JSON shape ([`errors`]). With an API key configured,
//! `/v1/*` requires `Authorization: Bearer <key>` (compared in constant time); `/health` and `/ready` stay open for
//! probes. A request's deadline is the `X-Request-Timeout` header, in seconds ([`request::TIMEOUT_HEADER`]).
//!
//! Invariant: validation, admission and routing happen only in the frontend, so HTTP and gRPC accept, refuse and
//! route the same requests the same way. Cost: JSON (de)serialization per request and per streamed chunk.

mod chat;
mod completions;
pub mod errors;
pub mod request;
mod sse;
mod tls;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tonic::Code;

use crate::auth::{ApiKeys, AuthError};
use crate::frontend::Frontend;
use cleave_cluster::tls::PublicTls;
use errors::ApiError;

#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Unless open, `/v1/*` requires `Authorization: Bearer <key>` with one of these keys.
    pub api_keys: ApiKeys,
    /// Serve HTTPS with this TLS (`--tls-cert`, `--tls-key`); plain HTTP when `None`.
    pub tls: Option<PublicTls>,
}

#[derive(Debug)]
pub(crate) struct HttpState {
    pub frontend: Arc<Frontend>,
    pub config: HttpConfig,
}

/// The HTTP API's routes over `frontend`.
pub fn app(frontend: Arc<Frontend>, config: HttpConfig) -> Router {
    let state = Arc::new(HttpState { frontend, config });
    let v1 = Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the HTTP API on `listener` until `shutdown`.
pub async fn serve_http(
    frontend: Arc<Frontend>,
    config: HttpConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    if let Some(tls) = &config.tls {
        let listener = tls::TlsListener::new(listener, tls.http_acceptor())?;
        return axum::serve(listener, app(frontend, config))
            .with_graceful_shutdown(shutdown)
            .await;
    }
    // Without TCP_NODELAY each server-sent event can wait ~40 ms for the client's delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(frontend, config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How the HTTP API is reached, for logs.
pub fn http_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}/v1")
}

async fn authorize(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.config.api_keys.check(header) {
        Ok(()) => next.run(request).await,
        Err(AuthError::Missing) => {
            ApiError::unauthorized("missing API key: send 'Authorization: Bearer <key>'").into_response()
        }
        Err(AuthError::Wrong) => ApiError::unauthorized("incorrect API key provided").into_response(),
    }
}

fn model_json(info: &cleave_proto::v1::ModelInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "object": "model",
        "created": 0,
        "owned_by": "cleave",
        "max_model_len": info.max_context,
    })
}

async fn list_models(State(state): State<Arc<HttpState>>) -> Response {
    let data: Vec<_> = state.frontend.models().iter().map(model_json).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(state): State<Arc<HttpState>>, Path(id): Path<String>) -> Response {
    match state.frontend.models().iter().find(|m| m.id == id) {
        Some(info) => axum::Json(model_json(info)).into_response(),
        None => {
            let mut e = ApiError::not_found(format!("The model '{id}' does not exist"));
            e.code = Some("model_not_found");
            e.param = Some("model".into());
            e.into_response()
        }
    }
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    if state.frontend.ready() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(Code::Unavailable, "no decode worker is reachable").into_response()
    }
}

async fn not_found(request: Request) -> Response {
    ApiError::not_found(format!("unknown route: {} {}", request.method(), request.uri().path())).into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    let mut e = ApiError::new(
        Code::InvalidArgument,
        format!("method {} is not allowed on {}", request.method(), request.uri().path()),
    );
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.code = Some("method_not_allowed");
    e.into_response()
}

/// Seconds since the Unix epoch, for `created`.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token's text for log-probability listings (a byte-level token that splits a character decodes lossily).
fn token_text(frontend: &Frontend, id: u32) -> String {
    frontend.model().tokenizer.decode(&[id], false).unwrap_or_default()
}

#[cfg(test)]
mod tests;
