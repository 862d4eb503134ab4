//! The admin console: `/admin`, served by the broker itself.
//!
//! # What it is
//! One page (`assets/index.html`, `admin.js`, `admin.css`, embedded in the
//! binary: no CDN, works offline) that does all of its work through the
//! REST API (`/api/*`), signed in with a console session held in a cookie
//! instead of a bearer token. Every console action therefore passes the
//! same handler as the same REST call: the same decision of
//! `courier_actors::policy::authz`, the same validation, rate limits and
//! audit entries (attributed to the admin). The console cannot do anything
//! the API would refuse. Why this stack, and what was weighed against it:
//! `docs/admin.md`.
//!
//! # What it owns
//! - [`session`]: console sessions (sign-in, sign-out, the cookie, the
//!   CSRF token, idle and absolute expiry) and the cookie check the REST
//!   middleware calls.
//! - [`overview`]: the live figures of the overview page, read from the
//!   server's own Prometheus registry.
//!
//! # What it serves
//! - `GET /admin`, `GET /admin/`: the page. Sections are hash routes
//!   (`/admin#/users`), so there is one document to protect.
//! - `GET /admin/assets/{admin.js,admin.css}`.
//! - `POST /admin/session` (sign in), `GET /admin/session` (who is signed
//!   in, with the CSRF token), `DELETE /admin/session` (sign out).
//! - `GET /admin/overview`: the figures, as JSON.
//!
//! Every answer carries the chat page's Content-Security-Policy (no inline
//! script or style, `frame-ancestors 'none'`), `Cache-Control: no-store`
//! for the JSON ones, and the ETag rules of [`crate::web`] for the files.
//!
//! # What a failure does
//! The files are bytes in the binary. A sign-in whose audit entry cannot be
//! committed answers 503 and opens no session; a store that cannot be
//! reached answers 503 to every cookie check (nobody is let in unchecked).

pub mod overview;
pub mod session;

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use courier_protocol::ErrorCode;

use crate::http::App;
use crate::web::{etag, respond, CSP};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The page itself.
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("assets/index.html"),
};

/// The files under `/admin/assets/`.
const ASSETS: [Asset; 2] = [
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/admin.js"),
    },
    Asset {
        name: "admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/admin.css"),
    },
];

/// The tags of [`INDEX`] and then of each of [`ASSETS`], computed once.
static TAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS.iter())
        .map(|a| etag(a.body))
        .collect()
});

/// The console's routes, merged into [`crate::http::router`].
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/assets/{file}", get(asset))
        .route(
            "/admin/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/admin/overview", get(overview::figures))
}

async fn page(headers: HeaderMap) -> Response<Body> {
    let mut response = respond(
        &headers,
        INDEX.content_type,
        &TAGS[0],
        axum::body::Bytes::from_static(INDEX.body),
    );
    // The page shows what the session may see: never from a shared cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response<Body> {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => respond(
            &headers,
            ASSETS[i].content_type,
            &TAGS[i + 1],
            axum::body::Bytes::from_static(ASSETS[i].body),
        ),
        None => with_csp(crate::http::json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such asset",
        )),
    }
}

/// `response` with the console's CSP and `Cache-Control: no-store`.
fn with_csp(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
