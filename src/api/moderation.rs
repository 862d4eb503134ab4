//! `/api/moderation/*`: the queue of flagged messages.
//!
//! Flags themselves are set and cleared through `/api/messages/{id}/flag`
//! ([`super::messages`]), the path of `flag_message`. The queue needs
//! `messages.moderate` (`authz`'s `ReadFlagQueue`), and each entry the rule
//! of flags on its own channel (`SeeFlags`): a moderator never reads a
//! private conversation they are not in, nor a direct one, through it.
//! Reading it decrypts messages, so it is audited as a history read.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use courier_actors::audit::reads;
use courier_actors::durable::history::{self, Flags};
use courier_actors::durable::store::{Channel, Member};
use courier_actors::policy::authz::{self, Action};
use courier_protocol::ChannelId;
use serde_json::{json, Value};

use super::disclosures;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use super::openapi::{ErrorBody, FlaggedPage};
use crate::http::App;

/// `GET /api/moderation/flags?limit=&offset=`: `{messages, limit, offset,
/// hasMore}`, flagged messages newest flag first, each with its flag and
/// `channelName`. `offset` counts every flagged message; those of channels
/// the caller may not see flags in are left out of the page.
#[utoipa::path(
    get,
    path = "/api/moderation/flags",
    operation_id = "moderation.flags",
    tag = "moderation",
    summary = "The queue of flagged messages, newest flag first (messages.moderate; audited as a history read)",
    params(("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (50)"), ("offset" = Option<u32>, Query, description = "Flagged messages to skip (0)")),
    responses((status = 200, description = "A page of the queue", body = FlaggedPage), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn flags(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    let limit = query.int_in("limit", 1, 100, 50)? as u32;
    let offset = query.int_in("offset", 0, 1_000_000, 0)? as u32;
    caller.authorize(&app, Action::ReadFlagQueue, "moderation.flags", json!({}))?;
    let mut rows = app.store.list_flagged(limit + 1, offset).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let principal = caller.principal(&app);
    let now = courier_actors::now_ms();
    // Each channel is read, and decided, once per page.
    let mut channels: HashMap<ChannelId, Option<(Channel, Option<Member>)>> = HashMap::new();
    let mut messages = Vec::new();
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    for row in rows {
        if row.message.expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        let channel_id = row.message.channel_id;
        if let Entry::Vacant(slot) = channels.entry(channel_id) {
            let found = app
                .store
                .get_channel_member(channel_id, caller.identity.user_id)
                .await?
                .filter(|(channel, member)| {
                    let action = Action::SeeFlags {
                        channel,
                        member: member.as_ref(),
                    };
                    authz::decide(principal, action).is_ok()
                });
            slot.insert(found);
        }
        let Some(Some((channel, _))) = channels.get(&channel_id) else {
            continue;
        };
        let message = history::open_row_with(&app.realtime.cipher, row, Flags::Shown)
            .map_err(|_| ApiError::internal("a flagged message cannot be read"))?;
        ids.push(message.id);
        seqs.push((channel_id, message.seq));
        let mut entry = json!(message);
        entry["channelName"] = json!(channel.name);
        messages.push(entry);
    }
    // Several channels at once: `disclosed`, one item per channel
    // (docs/audit.md, "Disclosures"); `via` says the console read it.
    let via = disclosures::via(&headers, "moderation.flags");
    let mut details = reads::details_multi(seqs.iter().copied(), via);
    if let Some(items) = details["disclosed"].as_array_mut() {
        for item in items {
            let grant = item["channelId"]
                .as_str()
                .and_then(|c| c.parse::<ChannelId>().ok())
                .and_then(|c| {
                    app.realtime
                        .break_glass
                        .active(c, caller.identity.user_id, now)
                });
            reads::mark_break_glass(item, grant);
        }
    }
    details["count"] = ids.len().into();
    details["messageIds"] = json!(ids);
    caller.audit(&app, "history.read", details).await?;
    Ok(Json(json!({
        "messages": messages,
        "limit": limit,
        "offset": offset,
        "hasMore": has_more,
    })))
}
