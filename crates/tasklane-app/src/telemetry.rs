//! Logging: one `tracing` subscriber set up at start (pretty or JSON), and a middleware that
//! gives every request an id, echoes it in `X-Request-Id`, and writes it on the line logged for
//! every 5xx (with the cause) and, at `debug`, on every line of the request.
//!
//! The per-request span is a `debug` span on purpose: the fmt layer renders a span's fields
//! into a string when the span is created, whether or not a line is ever printed inside it,
//! and at `info` that cost 12% of the instructions of a cached-list request. The lines that
//! matter at `info` and above (a failed request) carry the id themselves.

use crate::error::FailureCause;
use crate::settings::LogFormat;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::io::IsTerminal;
use std::time::Instant;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets up the global subscriber. `RUST_LOG` wins over `filter` when set.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second call (tests build several apps in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only for a person at a terminal, not in files or container logs.
        LogFormat::Pretty => builder
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
}

/// The id of the request being served, available to handlers as request extension data.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a caller's id if it is short and plain, so that ids can be followed across
/// services, and makes one otherwise.
fn request_id_from(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// The request-id and access-log middleware (for `actix_web::middleware::from_fn`).
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let id = request_id_from(&req);
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    async move {
        let mut res = next.call(req).await?;
        let status = res.status();
        let micros = started.elapsed().as_micros() as u64;
        if status.is_server_error() {
            let extensions = res.response().extensions();
            let cause = extensions.get::<FailureCause>();
            let (error, detail) = cause.map_or(("", ""), |c| (c.error.as_str(), c.detail.as_str()));
            let (method, path) = (res.request().method(), res.request().path());
            if status == actix_web::http::StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(request_id = %id, %method, path, status = status.as_u16(), micros, error = %error, cause = %detail, "request failed");
            } else {
                tracing::error!(request_id = %id, %method, path, status = status.as_u16(), micros, error = %error, cause = %detail, "request failed");
            }
        } else {
            tracing::debug!(status = status.as_u16(), micros, "request served");
        }
        if let Ok(value) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(REQUEST_ID, value);
        }
        Ok(res)
    }
    .instrument(span)
    .await
}
