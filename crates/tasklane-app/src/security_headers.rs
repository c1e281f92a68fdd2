//! The headers every answer carries: `Cache-Control: no-cache` and the security headers
//! (`X-Content-Type-Options`, `Referrer-Policy`, `X-Frame-Options`, the Content-Security-Policy).
//!
//! A 304 carries `Cache-Control` but none of the security headers. It has no body for them to
//! apply to, and its receiver keeps the headers of the response it already holds, which had
//! them (RFC 9111 section 4.3.4: a 304 updates the stored headers it names, and leaves the
//! rest). RFC 9110 section 15.4.5 lists what a 304 must repeat (`Cache-Control`, `Date`, `ETag`,
//! `Vary`, ...) and asks for nothing more: a revalidation is there to send less. The four are
//! 290 of the 441 bytes a task's 304 was; a client parses them on every revalidation.
//!
//! Like actix-web's `DefaultHeaders`, a header the handler set itself is left as it is.

use crate::ui::CONTENT_SECURITY_POLICY;
use actix_web::body::MessageBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::Error;
use futures_util::future::{FutureExt, Map};
use std::future::{ready, Ready};

/// On every answer but a 304 (`Cache-Control: no-cache` goes on every answer).
const WITH_CONTENT: [(HeaderName, HeaderValue); 4] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    ),
];

/// The middleware: `App::wrap(SecurityHeaders)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecurityHeaders;

impl<S, B> Transform<S, ServiceRequest> for SecurityHeaders
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = SecurityHeadersMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SecurityHeadersMiddleware { service }))
    }
}

/// [`SecurityHeaders`] around one service.
#[derive(Debug)]
pub struct SecurityHeadersMiddleware<S> {
    service: S,
}

type Answer<B> = Result<ServiceResponse<B>, Error>;

impl<S, B> Service<ServiceRequest> for SecurityHeadersMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    // A plain function, not a closure, so that the future's type can be named (no box).
    type Future = Map<S::Future, fn(Answer<B>) -> Answer<B>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        self.service.call(req).map(add_headers::<B>)
    }
}

fn add_headers<B>(answer: Answer<B>) -> Answer<B> {
    let mut res = answer?;
    let not_modified = res.status() == StatusCode::NOT_MODIFIED;
    let headers = res.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if !not_modified {
        for (name, value) in &WITH_CONTENT {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, web, App, HttpResponse};

    /// The answer with `status` through the middleware; the handler sets `Cache-Control` to
    /// `cache_control` if given.
    async fn answer(status: StatusCode, cache_control: Option<&'static str>) -> ServiceResponse {
        let handler = move || async move {
            let mut res = HttpResponse::build(status);
            if let Some(value) = cache_control {
                res.insert_header((header::CACHE_CONTROL, value));
            }
            res.finish()
        };
        let app = test::init_service(
            App::new()
                .wrap(SecurityHeaders)
                .route("/", web::get().to(handler)),
        )
        .await;
        test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await
    }

    fn value(res: &ServiceResponse, name: HeaderName) -> &str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn names(res: &ServiceResponse) -> Vec<&str> {
        let mut names: Vec<&str> = res.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[actix_web::test]
    async fn every_answer_but_a_304_gets_the_security_headers() {
        for status in [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let res = answer(status, None).await;
            assert_eq!(
                names(&res),
                [
                    "cache-control",
                    "content-security-policy",
                    "referrer-policy",
                    "x-content-type-options",
                    "x-frame-options"
                ],
                "{status}"
            );
            assert_eq!(value(&res, header::CACHE_CONTROL), "no-cache");
            assert_eq!(value(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(value(&res, header::REFERRER_POLICY), "no-referrer");
            assert_eq!(value(&res, header::X_FRAME_OPTIONS), "DENY");
            assert_eq!(
                value(&res, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
        }
        let res = answer(StatusCode::NOT_MODIFIED, None).await;
        assert_eq!(names(&res), ["cache-control"]);
        assert_eq!(value(&res, header::CACHE_CONTROL), "no-cache");
    }

    #[actix_web::test]
    async fn a_header_the_handler_set_is_kept() {
        for status in [StatusCode::OK, StatusCode::NOT_MODIFIED] {
            let res = answer(status, Some("private")).await;
            assert_eq!(value(&res, header::CACHE_CONTROL), "private", "{status}");
            assert_eq!(res.headers().get_all(header::CACHE_CONTROL).count(), 1);
        }
    }
}
