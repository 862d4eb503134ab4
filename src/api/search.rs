//! `GET /api/messages/search`: search over encrypted messages (issue 38,
//! docs/search.md). The query is matched against the blind index by
//! `Realtime::search` (`courier_actors::search`), in the named channel
//! (refused unless the caller may read it) or in every channel the caller
//! may read; the page is decrypted for the caller. Every search is audited
//! as `message.search`, the query only as its tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use courier_actors::search::{SearchError, SearchRequest};
use courier_protocol::frames::MessageView;
use courier_protocol::{ChannelId, MessageId};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use super::openapi::ErrorBody;
use crate::http::App;

/// A page of search results, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SearchResults {
    messages: Vec<MessageView>,
    has_more: bool,
    /// Pass as `before` for the next page (absent on the last).
    #[schema(value_type = Option<String>)]
    next_before: Option<MessageId>,
}

/// `GET /api/messages/search?q=&channel=&limit=&before=`: `{messages,
/// hasMore, nextBefore}`, the live messages holding every word of `q`.
#[utoipa::path(
    get,
    path = "/api/messages/search",
    operation_id = "messages.search",
    tag = "messages",
    summary = "Messages holding every word of q, in one channel or every readable one, newest first",
    params(("q" = String, Query, description = "Words, 1 to 256 bytes, at most 16 distinct; all must match (case and accents fold)"), ("channel" = Option<String>, Query, description = "One channel (forbidden unless the caller may read it); absent: every readable channel"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (20)"), ("before" = Option<String>, Query, description = "The nextBefore of the previous page")),
    responses((status = 200, description = "A page of results", body = SearchResults), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn search(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    let request = SearchRequest {
        q: query.text("q", 1024)?.unwrap_or_default(),
        channel: query.parse::<ChannelId>("channel", "a channel id (UUID)")?,
        limit: query.parse::<u32>("limit", "an integer from 1 to 100")?,
        before: query.parse::<MessageId>("before", "a message id (UUID)")?,
    };
    let page = app
        .realtime
        .search(caller.principal(&app), &request, "rest")
        .await
        .map_err(|e| match e {
            SearchError::Invalid { field, reason } => ApiError::invalid(field, reason),
            SearchError::Access(e) => caller.access_error(
                &app,
                "messages.search",
                json!({"channelId": request.channel}),
                e,
            ),
        })?;
    caller.audit(&app, "message.search", page.audit).await?;
    Ok(Json(json!(SearchResults {
        messages: page.messages,
        has_more: page.has_more,
        next_before: page.next_before,
    })))
}
