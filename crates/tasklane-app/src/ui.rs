//! The web page, embedded in the binary at build time (see `build.rs`) and served at `/`, with
//! a strict Content-Security-Policy (added by `security_headers`, like the API's other headers)
//! and ETags for revalidation.

use crate::http::{bytes_etag, if_none_match};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/frontend.rs"));

/// The page's policy: nothing inline, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: String,
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "webmanifest" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn assets() -> &'static HashMap<&'static str, Asset> {
    static ASSETS: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FRONTEND_FILES
            .iter()
            .map(|(path, body)| {
                (
                    *path,
                    Asset {
                        body,
                        content_type: content_type(path),
                        etag: bytes_etag(body),
                    },
                )
            })
            .collect()
    })
}

/// Does the UI have a file at this path (`/` meaning `/index.html`)?
pub fn has(path: &str) -> bool {
    let path = if path == "/" { "/index.html" } else { path };
    assets().contains_key(path)
}

/// Serves one embedded file, or `None` when there is no such file.
pub fn serve(req: &HttpRequest) -> Option<HttpResponse> {
    let path = match req.path() {
        "/" => "/index.html",
        p => p,
    };
    let asset = assets().get(path)?;
    if if_none_match(req.headers(), &asset.etag) {
        // The policy is the middleware's (`security_headers`): on the 200, not on a 304, whose
        // page the browser already holds with it.
        return Some(
            HttpResponse::NotModified()
                .insert_header((header::ETAG, asset.etag.as_str()))
                .finish(),
        );
    }
    Some(
        HttpResponse::Ok()
            .insert_header((header::ETAG, asset.etag.as_str()))
            .content_type(asset.content_type)
            .body(asset.body),
    )
}

/// The handler for `GET /` and `GET /{file}`.
pub async fn page(req: HttpRequest) -> HttpResponse {
    serve(&req).unwrap_or_else(|| {
        HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("Not found")
    })
}

/// Registers the UI routes (outside `/api`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/", web::head().to(page))
        .route("/{file:[^/]+}", web::get().to(page))
        .route("/{file:[^/]+}", web::head().to(page));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_embedded_with_its_assets() {
        assert!(has("/"));
        assert!(has("/app.js"));
        assert!(has("/style.css"));
        assert!(!has("/nope.js"));
        assert_eq!(content_type("/app.js"), "text/javascript; charset=utf-8");
    }
}
