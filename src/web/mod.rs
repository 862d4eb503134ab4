//! The chat page: a small browser client served by Courier itself.
//!
//! # What it owns
//! The page's files, embedded in the binary at build time (`assets/`): the
//! HTML, its stylesheet, its script (`chat.js`) and the TypeScript SDK's
//! browser bundle (`courier-client.js`, written by `npm run bundle` in
//! `sdk/typescript`). Nothing is read from disk or from another host at
//! run time, so the page works offline and is the one the binary was
//! built with.
//!
//! # What it serves
//! - `GET /` and `GET /chat`: the page (`text/html`).
//! - `GET /assets/{file}`: `chat.js`, `chat.css`, `courier-client.js`;
//!   any other name answers 404 `not_found` (JSON, like every unknown path).
//!
//! Every answer of this module carries [`CSP`], a Content-Security-Policy
//! that allows scripts, styles and connections from this origin only and no
//! inline script or style at all: a message that smuggles markup past the
//! page could not run it. The page renders every user value as text.
//! Every answer carries a strong `ETag` (a SHA-256 of the body) and
//! `Cache-Control: no-cache`: browsers keep the files and revalidate them,
//! and `If-None-Match` with the current tag answers 304 with no body, so a
//! new binary's page is picked up at the next load.
//!
//! # What it takes
//! [`routes`] takes the configuration once, when the router is built: the
//! page is told whether registration is open and the password policy's
//! minimum length (two `<meta>` elements), so that it offers only what the
//! server will accept. The REST and WebSocket calls the page makes are
//! the public API's, with the user's own token; this module holds no state.
//!
//! # What a failure does
//! Nothing here can fail at run time: the files are bytes in the binary and
//! the answers are built from them. A request for a file that is not there
//! is a 404.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use courier_protocol::ErrorCode;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// The Content-Security-Policy of every answer here: this origin's scripts,
/// styles and connections (`connect-src 'self'` covers `ws://` and `wss://`
/// to this host and port in CSP Level 3 browsers), images from this origin
/// or `data:` URLs, no plugins, no framing, no `<base>`, forms posting only
/// here. No `'unsafe-inline'`: an inline `<script>`, a `style=` or an
/// `onerror=` in the page would not run.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The page, with `{{registration}}` and `{{password_min}}` filled in by
/// [`routes`].
const INDEX_HTML: &str = include_str!("assets/index.html");

/// One embedded file.
struct Asset {
    /// Its name under `/assets/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The files under `/assets/`.
const ASSETS: [Asset; 3] = [
    Asset {
        name: "chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/chat.js"),
    },
    Asset {
        name: "chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/chat.css"),
    },
    Asset {
        name: "courier-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/courier-client.js"),
    },
];

/// The `ETag` of each of [`ASSETS`], in the same order, computed once.
static ASSET_TAGS: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body)).collect());

/// A body ready to serve: its bytes, type and tag.
#[derive(Clone)]
struct Page {
    body: axum::body::Bytes,
    etag: HeaderValue,
}

/// The page's routes: `/`, `/chat` and `/assets/{file}`. Merged into
/// [`crate::http::router`] before the API's.
pub fn routes<S: Clone + Send + Sync + 'static>(config: &Config) -> Router<S> {
    let html = render_index(config);
    let page = Arc::new(Page {
        etag: etag(html.as_bytes()),
        body: axum::body::Bytes::from(html),
    });
    let chat = page.clone();
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| serve_page(page, headers)),
        )
        .route(
            "/chat",
            get(move |headers: HeaderMap| serve_page(chat, headers)),
        )
        .route("/assets/{file}", get(serve_asset))
}

/// The page with the server's settings filled in.
fn render_index(config: &Config) -> String {
    let registration = if config.registration_open() {
        "open"
    } else {
        "closed"
    };
    INDEX_HTML
        .replace("{{registration}}", registration)
        .replace("{{password_min}}", &config.password_min_length.to_string())
}

async fn serve_page(page: Arc<Page>, headers: HeaderMap) -> Response<Body> {
    respond(
        &headers,
        "text/html; charset=utf-8",
        &page.etag,
        page.body.clone(),
    )
}

async fn serve_asset(Path(file): Path<String>, headers: HeaderMap) -> Response<Body> {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => {
            let asset = &ASSETS[i];
            respond(
                &headers,
                asset.content_type,
                &ASSET_TAGS[i],
                axum::body::Bytes::from_static(asset.body),
            )
        }
        None => {
            let mut response = crate::http::json_error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such asset",
            );
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            response
        }
    }
}

/// 200 with the body, or 304 when the client's `If-None-Match` names the
/// current tag; both with the CSP, the tag and the cache rule.
pub(crate) fn respond(
    request: &HeaderMap,
    content_type: &'static str,
    tag: &HeaderValue,
    body: axum::body::Bytes,
) -> Response<Body> {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/").as_bytes() == tag.as_bytes());
    let mut response = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, tag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A strong `ETag`: the first 16 bytes of the body's SHA-256, in hex.
pub(crate) fn etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_gets_the_settings() {
        let config = Config {
            allow_registration: Some(false),
            password_min_length: 14,
            ..Config::default()
        };
        let html = render_index(&config);
        assert!(html.contains(r#"content="closed""#), "{html}");
        assert!(html.contains(r#"content="14""#), "{html}");
        assert!(!html.contains("{{"), "a placeholder is left: {html}");
    }

    #[test]
    fn if_none_match_with_the_tag_is_not_modified() {
        let tag = etag(b"body");
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, tag.clone());
        let response = respond(&request, "text/css", &tag, axum::body::Bytes::new());
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = respond(
            &HeaderMap::new(),
            "text/css",
            &tag,
            axum::body::Bytes::new(),
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    }
}
