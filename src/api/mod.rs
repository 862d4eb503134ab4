//! The REST API (PROTOCOL.md section 6).

use std::sync::Arc;

use axum::Router;

use crate::http::App;

/// Every REST route.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
