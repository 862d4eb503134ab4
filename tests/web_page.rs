//! The chat page as HTTP, without a browser (the browser test is
//! `tests/chat_browser.rs`).
//!
//! | test | backend | what it checks |
//! |---|---|---|
//! | `page_and_assets` | SQLite | `GET /` and `/chat` answer the page with the strict CSP, an ETag and `no-cache`; the HTML has no inline `<script>` body and no `style=` or `on*=` attribute, and loads only `/assets/` files; each asset answers its Content-Type and the CSP; `If-None-Match` answers 304; an unknown asset, `/api/*` and other unknown paths keep their JSON 404 |
//! | `registration_closed_is_told` | SQLite | with registration off the page says so (`courier-registration` is `closed`) |

mod support;

use reqwest::header;
use support::server::{Backend, TestServer};

/// The policy every answer of the page must carry.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

fn header_of(response: &reqwest::Response, name: header::HeaderName) -> String {
    response
        .headers()
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Every `<tag ...>` of the HTML, lower-cased, without the brackets.
fn tags(html: &str) -> Vec<String> {
    html.split('<')
        .skip(1)
        .filter_map(|chunk| chunk.split_once('>').map(|(tag, _)| tag.to_lowercase()))
        .collect()
}

/// The HTML has no inline script, no inline style and no event handler
/// attribute, and every script it loads comes from `/assets/`.
fn assert_no_inline(html: &str) {
    let lower = html.to_lowercase();
    for (i, _) in lower.match_indices("<script") {
        let rest = &lower[i..];
        let open_end = rest.find('>').expect("a <script> tag ends");
        let open = &rest[..open_end];
        assert!(
            open.contains("src=\"/assets/"),
            "a <script> without a src under /assets/: {open}"
        );
        assert!(
            rest[open_end + 1..].starts_with("</script>"),
            "a <script> with a body: {}",
            &rest[..rest.len().min(80)]
        );
    }
    for tag in tags(html) {
        let attrs: Vec<&str> = tag.split_whitespace().skip(1).collect();
        for attr in attrs {
            let name = attr.split('=').next().unwrap_or_default();
            assert_ne!(name, "style", "a style attribute: <{tag}>");
            assert!(
                !(name.starts_with("on") && attr.contains('=')),
                "an event handler attribute: <{tag}>"
            );
        }
        assert!(!tag.starts_with("style"), "an inline <style> element");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets() {
    let Some(server) = TestServer::start(Backend::Sqlite).await else {
        return;
    };
    let http = reqwest::Client::new();
    let base = server.http_url();

    let mut html = String::new();
    for path in ["/", "/chat"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&response, header::CONTENT_SECURITY_POLICY), CSP);
        assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        let etag = header_of(&response, header::ETAG);
        assert!(etag.starts_with('"') && etag.len() > 10, "ETag {etag:?}");
        html = response.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{path}: {html}");
        assert!(
            html.contains(r#"content="open""#),
            "registration is open in development"
        );

        let again = http
            .get(format!("{base}{path}"))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "If-None-Match {etag} on {path}");
        assert_eq!(header_of(&again, header::ETAG), etag);
        assert!(again.bytes().await.unwrap().is_empty());
    }
    assert_no_inline(&html);
    for asset in ["/assets/chat.js", "/assets/chat.css"] {
        assert!(html.contains(asset), "the page loads {asset}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from another host"
    );

    for (asset, content_type) in [
        ("chat.js", "text/javascript; charset=utf-8"),
        ("chat.css", "text/css; charset=utf-8"),
        ("courier-client.js", "text/javascript; charset=utf-8"),
    ] {
        let response = http
            .get(format!("{base}/assets/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            content_type,
            "{asset}"
        );
        assert_eq!(
            header_of(&response, header::CONTENT_SECURITY_POLICY),
            CSP,
            "{asset}"
        );
        assert_eq!(
            header_of(&response, header::CACHE_CONTROL),
            "no-cache",
            "{asset}"
        );
        assert!(!header_of(&response, header::ETAG).is_empty(), "{asset}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
    let chat_js = http
        .get(format!("{base}/assets/chat.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        chat_js.contains("from './courier-client.js'"),
        "chat.js imports the SDK bundle served beside it"
    );
    assert!(
        !chat_js.contains("innerHTML"),
        "chat.js never writes markup"
    );
    assert!(
        !chat_js.contains("localStorage.setItem"),
        "tokens stay in sessionStorage"
    );

    for (path, status) in [
        ("/assets/nope.js", 404),
        ("/assets/../Cargo.toml", 404),
        ("/api/nope", 404),
        ("/nope", 404),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "application/json",
            "{path}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    let post = http.post(format!("{base}/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_closed_is_told() {
    let Some(server) = TestServer::start_with(Backend::Sqlite, |config| {
        config.allow_registration = Some(false);
    })
    .await
    else {
        return;
    };
    let html = reqwest::get(format!("{}/", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(r#"<meta name="courier-registration" content="closed">"#),
        "{html}"
    );
    server.stop().await;
}
