//! `/api/files` and `/api/channels/{id}/attachments`: uploads, downloads,
//! signed links and the vault's shares (docs/files.md).
//!
//! Who may do what is decided here, once, in [`access`]:
//! - an **attachment** (uploaded to a channel) is read by whoever may read
//!   its channel, while a message that is not deleted carries it; before
//!   it is sent, only its uploader sees it. Uploading needs the right to
//!   post in the channel.
//! - a **vault file** is its owner's; a share gives a user, or the members
//!   of a channel, `view` (see it and its metadata) or `download`.
//!
//! Everything else answers 404, as a file that does not exist would (and
//! is audited as `access.denied`). A file queued for its virus scan is
//! listed but not served (409). Every upload, refusal, download, link,
//! share and revocation is audited; a download's entry is committed before
//! its first byte goes out.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use courier_actors::durable::store::{FileRecord, FileShare, FileState, Grantee, ShareRights};
use courier_actors::files::upload::{ScanOutcome, UploadRequest, Uploaded};
use courier_actors::files::{sniff::SniffError, FileError};
use courier_actors::policy::authz::Action;
use courier_protocol::{ChannelId, ErrorCode, FileId, ShareId, UserId};
use futures_util::{Stream, TryStreamExt};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, Client, JsonBody, QueryParams};
use super::openapi::ErrorBody;
use crate::http::App;

/// A file as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileView {
    id: FileId,
    /// The uploader's file name, sanitized.
    name: String,
    /// The MIME type sniffed from the content.
    #[serde(rename = "type")]
    mime: String,
    size: u64,
    /// `ready`, or `pending_scan` while queued for its virus scan.
    state: &'static str,
    owner_id: UserId,
    /// The channel of an attachment; absent for a vault file.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<ChannelId>,
    created_at: i64,
    /// What the caller may do: `download` or `view`.
    rights: &'static str,
}

/// A share as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ShareView {
    id: ShareId,
    file_id: FileId,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<ChannelId>,
    /// `view` or `download`.
    rights: &'static str,
    granted_by: UserId,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<i64>,
}

/// `POST /api/files/{id}/shares`: exactly one of `userId` and `channelId`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ShareBody {
    #[serde(default)]
    user_id: Option<UserId>,
    #[serde(default)]
    channel_id: Option<ChannelId>,
    /// `view` or `download`.
    rights: String,
}

/// A signed download link.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LinkView {
    /// A path on this server, to be fetched without credentials until
    /// `expiresAt`.
    url: String,
    expires_at: i64,
}

fn file_view(app: &App, f: &FileRecord, rights: ShareRights) -> ApiResult<FileView> {
    let name = app.files.name(f).map_err(ApiError::internal)?;
    Ok(FileView {
        id: f.id,
        name,
        mime: f.mime.clone(),
        size: f.size,
        state: f.state.as_str(),
        owner_id: f.owner_id,
        channel_id: f.channel_id,
        created_at: f.created_at,
        rights: rights.as_str(),
    })
}

fn share_view(s: &FileShare) -> ShareView {
    let (user_id, channel_id) = match s.grantee {
        Grantee::User(u) => (Some(u), None),
        Grantee::Channel(c) => (None, Some(c)),
    };
    ShareView {
        id: s.id,
        file_id: s.file_id,
        user_id,
        channel_id,
        rights: s.rights.as_str(),
        granted_by: s.granted_by,
        created_at: s.created_at,
        revoked_at: s.revoked_at,
    }
}

/// The one mapping of file errors to answers.
fn file_error(e: FileError) -> ApiError {
    match e {
        FileError::TooLarge { limit } => {
            ApiError::too_large(format!("the file is larger than {limit} bytes"))
        }
        FileError::Type(SniffError::Empty) => ApiError::invalid("file", "is empty"),
        FileError::Type(e) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedType,
            e.to_string(),
        ),
        FileError::Infected { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Infected,
            "the virus scanner found malware in the file; it was not kept",
        ),
        FileError::ScannerDown(why) => {
            let mut e = ApiError::unavailable();
            e.message = format!("the file cannot be scanned now: {why}").into();
            e
        }
        FileError::Incomplete => {
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Incomplete,
                "the upload ended before its end; nothing was kept",
            );
            e.close_connection = true;
            e
        }
        FileError::Storage(why) => {
            tracing::warn!(error = %why, "object store failed");
            let mut e = ApiError::unavailable();
            e.message = "the file store is unavailable; nothing was kept".into();
            e
        }
        FileError::Store(e) => e.into(),
        FileError::Corrupt(_) | FileError::Crypto(_) => ApiError::internal(e),
    }
}

/// What a refused upload is audited as.
fn refusal(e: &FileError) -> Option<(&'static str, Value)> {
    Some(match e {
        FileError::TooLarge { limit } => ("too_large", json!({"limit": limit})),
        FileError::Type(SniffError::NotAllowed { mime }) => ("type", json!({"type": mime})),
        FileError::Type(SniffError::Unknown) => ("type", json!({"type": null})),
        FileError::Type(SniffError::Empty) => ("empty", json!({})),
        FileError::Infected { signature } => ("infected", json!({"signature": signature})),
        FileError::ScannerDown(_) => ("scanner_down", json!({})),
        FileError::Incomplete => ("incomplete", json!({})),
        FileError::Storage(_) => ("storage", json!({})),
        _ => return None,
    })
}

// ---- uploads ------------------------------------------------------------------

/// `POST /api/channels/{id}/attachments`: a file for a message of this
/// channel (then `send_message` with `attachments: [id]`).
#[utoipa::path(
    post,
    path = "/api/channels/{id}/attachments",
    operation_id = "files.attach",
    tag = "files",
    summary = "Upload a file to a channel (raw body or multipart/form-data); sniffed, scanned, sealed",
    params(("id" = String, Path, description = "The channel's id"), ("name" = Option<String>, Query, description = "The file name (else Content-Disposition's or the form part's)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file, streamed; or multipart/form-data with one file part"),
    responses((status = 201, description = "Stored", body = FileView), (status = 400, description = "Empty file, or an upload cut short (`incomplete`)", body = ErrorBody), (status = 403, description = "May not post in this channel (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such channel", body = ErrorBody), (status = 413, description = "Over files_max_bytes (`too_large`)", body = ErrorBody), (status = 415, description = "A type not accepted (`unsupported_type`)", body = ErrorBody), (status = 422, description = "Malware found (`infected`)", body = ErrorBody), (status = 503, description = "Scanner or file store unavailable", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn attach(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    query: QueryParams,
    request: Request,
) -> ApiResult<(StatusCode, Json<FileView>)> {
    let channel: ChannelId = path_id("id", &id)?;
    let details = json!({"channelId": channel});
    app.realtime
        .channel_access(caller.principal(&app), channel, |c, m| Action::Post {
            channel: c,
            member: m,
        })
        .await
        .map_err(|e| caller.access_error(&app, "files.attach", details.clone(), e))?;
    upload(&app, &caller, Some(channel), query, request).await
}

/// `POST /api/files`: a file for the caller's vault.
#[utoipa::path(
    post,
    path = "/api/files",
    operation_id = "files.upload",
    tag = "files",
    summary = "Upload a file to your vault (raw body or multipart/form-data)",
    params(("name" = Option<String>, Query, description = "The file name (else Content-Disposition's or the form part's)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file, streamed; or multipart/form-data with one file part"),
    responses((status = 201, description = "Stored", body = FileView), (status = 400, description = "Empty file, or an upload cut short (`incomplete`)", body = ErrorBody), (status = 413, description = "Over files_max_bytes (`too_large`)", body = ErrorBody), (status = 415, description = "A type not accepted (`unsupported_type`)", body = ErrorBody), (status = 422, description = "Malware found (`infected`)", body = ErrorBody), (status = 503, description = "Scanner or file store unavailable", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn upload_to_vault(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
    request: Request,
) -> ApiResult<(StatusCode, Json<FileView>)> {
    upload(&app, &caller, None, query, request).await
}

async fn upload(
    app: &App,
    caller: &Caller,
    channel: Option<ChannelId>,
    query: QueryParams,
    request: Request,
) -> ApiResult<(StatusCode, Json<FileView>)> {
    let limit = app.files.config.max_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let timed_out = Arc::new(AtomicBool::new(false));
    let result = if declared.is_some_and(|n| n > limit) {
        // Refused before a byte is read; the unread body closes the connection.
        Err(FileError::TooLarge { limit })
    } else {
        let named = query.text("name", 1024)?;
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        let req = |claimed_name: String| UploadRequest {
            owner: caller.identity.user_id,
            channel,
            claimed_name,
        };
        if is_form {
            let mut form = Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
            let field = loop {
                match form.next_field().await {
                    Ok(Some(field))
                        if field.file_name().is_some() || field.name() == Some("file") =>
                    {
                        break field
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(ApiError::invalid("file", "no file part in the form")),
                    Err(_) => return Err(file_error(FileError::Incomplete)),
                }
            };
            let name = named.or_else(|| field.file_name().map(str::to_owned));
            let body = watch_timeout(field, timed_out.clone());
            app.files.upload(req(name.unwrap_or_default()), body).await
        } else {
            let name = named.or_else(|| disposition_name(request.headers()));
            let body = watch_timeout(request.into_body().into_data_stream(), timed_out.clone());
            app.files.upload(req(name.unwrap_or_default()), body).await
        }
    };
    match result {
        Ok(uploaded) => {
            let Uploaded { record, scan, .. } = &uploaded;
            metrics::counter!(courier_actors::telemetry::names::FILE_UPLOADS, "result" => match scan {
                ScanOutcome::Queued(_) => "queued",
                _ => "stored",
            })
            .increment(1);
            metrics::counter!(courier_actors::telemetry::names::FILE_BYTES_IN)
                .increment(record.size);
            let scan = match scan {
                ScanOutcome::Clean => "clean",
                ScanOutcome::Queued(_) => "queued",
                ScanOutcome::NotScanned => "not_scanned",
            };
            caller
                .audit(
                    app,
                    "file.uploaded",
                    json!({"fileId": record.id, "channelId": channel, "type": record.mime,
                           "size": record.size, "scan": scan}),
                )
                .await?;
            Ok((
                StatusCode::CREATED,
                Json(file_view(app, record, ShareRights::Download)?),
            ))
        }
        Err(e) => {
            if timed_out.load(Ordering::Relaxed) {
                return Err(ApiError::request_timeout());
            }
            if let Some((reason, mut details)) = refusal(&e) {
                metrics::counter!(courier_actors::telemetry::names::FILE_UPLOADS, "result" => reason)
                    .increment(1);
                details["reason"] = json!(reason);
                details["channelId"] = json!(channel);
                let action = if reason == "infected" {
                    "file.infected"
                } else {
                    "file.rejected"
                };
                caller.audit(app, action, details).await?;
            }
            let mut answer = file_error(e);
            if declared.is_some() {
                // The body may be partly unread: do not reuse the connection.
                answer.close_connection = true;
            }
            Err(answer)
        }
    }
}

/// The body's pieces, noting when its deadline passed (then the answer is
/// 408, not `incomplete`).
fn watch_timeout<S, E>(
    body: S,
    timed_out: Arc<AtomicBool>,
) -> impl Stream<Item = Result<Bytes, E>> + Unpin
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    body.inspect_err(move |e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if crate::accept::is_body_timeout(err) {
                timed_out.store(true, Ordering::Relaxed);
            }
            source = err.source();
        }
    })
}

/// `Content-Disposition: attachment; filename="x.pdf"` (or `filename*=UTF-8''...`).
fn disposition_name(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    for part in value.split(';').map(str::trim) {
        if let Some(encoded) = part.strip_prefix("filename*=UTF-8''") {
            return percent_decode(encoded);
        }
    }
    value
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("filename="))
        .map(|n| n.trim_matches('"').to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---- reading --------------------------------------------------------------------

/// What the caller may do with a file, or 404 (audited) when nothing.
async fn access(app: &App, caller: &Caller, f: &FileRecord) -> ApiResult<ShareRights> {
    let denied = |why: &'static str| {
        let details = json!({"fileId": f.id});
        caller.access_error(
            app,
            "files.read",
            details,
            courier_actors::realtime::AccessError::Denied(courier_actors::policy::authz::Denied(
                why,
            )),
        );
        ApiError::not_found("no such file")
    };
    if f.deleted_at.is_some() {
        return Err(ApiError::not_found("no such file"));
    }
    let me = caller.identity.user_id;
    match f.channel_id {
        Some(channel) => {
            if f.attached_at.is_none() {
                return if f.owner_id == me {
                    Ok(ShareRights::Download)
                } else {
                    Err(denied("an unsent upload is its uploader's"))
                };
            }
            if !app
                .store
                .file_in_live_message(f.id, courier_actors::now_ms())
                .await?
            {
                return Err(ApiError::not_found("no such file"));
            }
            app.realtime
                .channel_access(caller.principal(app), channel, |c, m| Action::ReadChannel {
                    channel: c,
                    member: m,
                })
                .await
                .map_err(|_| denied("not a reader of the file's channel"))?;
            Ok(ShareRights::Download)
        }
        None if f.owner_id == me => Ok(ShareRights::Download),
        None => {
            let mut best: Option<ShareRights> = None;
            for share in app.store.list_shares(f.id).await? {
                if share.revoked_at.is_some() {
                    continue;
                }
                let applies = match share.grantee {
                    Grantee::User(u) => u == me,
                    Grantee::Channel(c) => app.store.get_member(c, me).await?.is_some(),
                };
                if applies {
                    best = best.max(Some(share.rights));
                }
            }
            best.ok_or_else(|| denied("not shared with you"))
        }
    }
}

async fn load(app: &App, id: &str) -> ApiResult<FileRecord> {
    let id: FileId = path_id("id", id)?;
    app.store
        .get_file(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such file"))
}

/// `GET /api/files`: the caller's vault and the files shared with them.
#[utoipa::path(
    get,
    path = "/api/files",
    operation_id = "files.list",
    tag = "files",
    summary = "Your vault: your files and those shared with you (or your channels)",
    responses((status = 200, description = "`{files: [...]}`, newest first", body = Value)),
    security(("bearer" = []))
)]
pub(super) async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    let me = caller.identity.user_id;
    let mut files = Vec::new();
    for f in app.store.list_vault(me).await? {
        files.push(file_view(&app, &f, ShareRights::Download)?);
    }
    let channels: Vec<ChannelId> = app
        .store
        .list_channels_for(me)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut shared: Vec<(FileRecord, ShareRights)> = Vec::new();
    for (f, share) in app.store.list_shared_with(me, &channels).await? {
        match shared.iter_mut().find(|(g, _)| g.id == f.id) {
            Some((_, rights)) => *rights = (*rights).max(share.rights),
            None => shared.push((f, share.rights)),
        }
    }
    for (f, rights) in &shared {
        files.push(file_view(&app, f, *rights)?);
    }
    Ok(Json(json!({ "files": files })))
}

/// `GET /api/files/{id}`: a file's metadata.
#[utoipa::path(
    get,
    path = "/api/files/{id}",
    operation_id = "files.get",
    tag = "files",
    summary = "A file's metadata (to whoever may see it)",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file", body = FileView), (status = 404, description = "No such file, or not yours to see", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FileView>> {
    let f = load(&app, &id).await?;
    let rights = access(&app, &caller, &f).await?;
    Ok(Json(file_view(&app, &f, rights)?))
}

/// `GET /api/files/{id}/content`: the file (`Range: bytes=...` supported).
#[utoipa::path(
    get,
    path = "/api/files/{id}/content",
    operation_id = "files.content",
    tag = "files",
    summary = "Download a file, decrypted as it streams; one byte range supported",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"), (status = 206, description = "The range asked for"), (status = 403, description = "A share that gives `view` only", body = ErrorBody), (status = 404, description = "No such file, or not yours to read", body = ErrorBody), (status = 409, description = "Waiting for its virus scan", body = ErrorBody), (status = 416, description = "The range is outside the file", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn content(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let f = load(&app, &id).await?;
    if access(&app, &caller, &f).await? < ShareRights::Download {
        return Err(ApiError::forbidden(
            "this file is shared with you to view, not to download",
        ));
    }
    let event = |details| {
        caller
            .client
            .event(Some(caller.identity.user_id), "file.downloaded", details)
    };
    serve(&app, &f, &headers, "api", event).await
}

/// Streams `f` (or the range `headers` ask for), after its audit entry.
async fn serve(
    app: &App,
    f: &FileRecord,
    headers: &HeaderMap,
    via: &str,
    event: impl FnOnce(Value) -> courier_actors::audit::chain::PendingAudit,
) -> ApiResult<Response> {
    if f.state == FileState::PendingScan {
        return Err(ApiError::conflict("the file is waiting for its virus scan"));
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, f.size) {
            Ok(range) => range,
            Err(()) => {
                let mut e = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::InvalidFrame,
                    "the range is outside the file",
                );
                e.field = Some("Range".into());
                let mut response = e.into_response();
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", f.size))
                        .map_err(ApiError::internal)?,
                );
                return Ok(response);
            }
        },
    };
    let details = json!({
        "fileId": f.id, "channelId": f.channel_id, "via": via,
        "range": range.as_ref().map(|r| format!("{}-{}", r.start, r.end.saturating_sub(1))),
    });
    // The object opens (its header, the read started) before the entry is
    // committed, so a download that cannot start is not recorded as made.
    let stream = app
        .files
        .content(f, range.clone())
        .await
        .map_err(file_error)?;
    app.realtime.audit.append(event(details)).await?;
    let stream = stream.map_err(|e| {
        tracing::error!(error = %e, "a file stopped mid-download");
        std::io::Error::other(e)
    });
    let name = app.files.name(f).map_err(ApiError::internal)?;
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    let length = range.as_ref().map_or(f.size, |r| r.end - r.start);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&f.mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!(
            "attachment; filename*=UTF-8''{}",
            percent_encode(&name)
        ))
        .map_err(ApiError::internal)?,
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if let Some(r) = &range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, f.size))
                .map_err(ApiError::internal)?,
        );
    }
    Ok(response)
}

/// One `bytes=` range: `Ok(None)` serves the whole file (no range, several
/// ranges, another unit); `Err` is unsatisfiable (416).
fn parse_range(spec: &str, size: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let (first, last) = set.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => a..b.saturating_add(1).min(size),
        (Ok(a), Err(_)) if last.is_empty() => a..size,
        (Err(_), Ok(n)) if first.is_empty() && n > 0 => size.saturating_sub(n)..size,
        _ => return Err(()),
    };
    if range.start >= size || range.start >= range.end {
        return Err(());
    }
    Ok(Some(range))
}

fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- signed links -------------------------------------------------------------------

/// A link's token, before its HMAC-SHA256 tag: file id, user id, session
/// id (16 bytes each), expiry (ms, 8), master key version (4).
const LINK_LEN: usize = 16 + 16 + 16 + 8 + 4;

fn link_mac(app: &App, version: u32, body: &[u8]) -> ApiResult<hmac::Hmac<sha2::Sha256>> {
    let key = app
        .realtime
        .cipher
        .link_key_of(version)
        .map_err(|_| ApiError::not_found("no such link"))?;
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key[..])
        .map_err(ApiError::internal)?;
    mac.update(body);
    Ok(mac)
}

/// `POST /api/files/{id}/link`: a URL that downloads the file without
/// credentials for `files_link_ttl_secs` (5 minutes), as the caller: access
/// is checked again when it is used, and the link ends with the caller's
/// session (logout, revocation).
#[utoipa::path(
    post,
    path = "/api/files/{id}/link",
    operation_id = "files.link",
    tag = "files",
    summary = "A short-lived signed download URL (access checked again on use)",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 201, description = "The link", body = LinkView), (status = 403, description = "A share that gives `view` only", body = ErrorBody), (status = 404, description = "No such file, or not yours to read", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn link(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<LinkView>)> {
    let f = load(&app, &id).await?;
    if access(&app, &caller, &f).await? < ShareRights::Download {
        return Err(ApiError::forbidden(
            "this file is shared with you to view, not to download",
        ));
    }
    let expires_at = courier_actors::now_ms()
        .saturating_add(app.files.config.link_ttl.as_millis().min(i64::MAX as u128) as i64);
    let version = app.realtime.cipher.active_version();
    let mut token = Vec::with_capacity(LINK_LEN + 32);
    token.extend_from_slice(f.id.0.as_bytes());
    token.extend_from_slice(caller.identity.user_id.0.as_bytes());
    token.extend_from_slice(caller.identity.session_id.0.as_bytes());
    token.extend_from_slice(&expires_at.to_be_bytes());
    token.extend_from_slice(&version.to_be_bytes());
    let tag = link_mac(&app, version, &token)?.finalize().into_bytes();
    token.extend_from_slice(&tag);
    let url = format!(
        "/api/file-links/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&token)
    );
    caller
        .audit(
            &app,
            "file.link_created",
            json!({"fileId": f.id, "expiresAt": expires_at}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(LinkView { url, expires_at })))
}

/// `GET /api/file-links/{token}`: a signed link's download, as the user it
/// was made for, whose access is checked again now.
#[utoipa::path(
    get,
    path = "/api/file-links/{token}",
    operation_id = "files.link_content",
    tag = "files",
    summary = "Download through a signed link (no credentials; expires)",
    params(("token" = String, Path, description = "The link's token")),
    responses((status = 200, description = "The file"), (status = 206, description = "The range asked for"), (status = 404, description = "Unknown, forged or expired link, or access since lost", body = ErrorBody)),
    security(())
)]
pub(super) async fn link_content(
    State(app): State<Arc<App>>,
    client: Client,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let gone = || ApiError::not_found("no such link, or it expired");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| gone())?;
    if raw.len() != LINK_LEN + 32 {
        return Err(gone());
    }
    let (body, tag) = raw.split_at(LINK_LEN);
    let version = u32::from_be_bytes(body[56..60].try_into().map_err(|_| gone())?);
    link_mac(&app, version, body)?
        .verify_slice(tag)
        .map_err(|_| gone())?;
    let file = FileId(uuid::Uuid::from_slice(&body[..16]).map_err(|_| gone())?);
    let user = UserId(uuid::Uuid::from_slice(&body[16..32]).map_err(|_| gone())?);
    let session =
        courier_protocol::SessionId(uuid::Uuid::from_slice(&body[32..48]).map_err(|_| gone())?);
    let expires_at = i64::from_be_bytes(body[48..56].try_into().map_err(|_| gone())?);
    if courier_actors::now_ms() >= expires_at {
        return Err(gone());
    }
    // The link lives no longer than the session that made it (logout,
    // revocation, a disabled account end it).
    let live =
        app.store.get_session(session).await?.is_some_and(|s| {
            s.valid && s.user_id == user && s.expires_at > courier_actors::now_ms()
        });
    if !live {
        return Err(gone());
    }
    let account = app.store.get_user(user).await?.ok_or_else(gone)?;
    if account.disabled_at.is_some() {
        return Err(gone());
    }
    // The link stands for its user as they are now (role, account state).
    let caller = Caller {
        identity: courier_actors::policy::identity::Identity {
            user_id: account.id,
            username: account.username.clone(),
            role: account.role,
            session_id: session,
            expires_at,
            must_change_password: false,
            must_enrol_second_factor: false,
        },
        client,
    };
    let f = app.store.get_file(file).await?.ok_or_else(gone)?;
    if access(&app, &caller, &f).await.map_err(|_| gone())? < ShareRights::Download {
        return Err(gone());
    }
    let event = |details| caller.client.event(Some(user), "file.downloaded", details);
    serve(&app, &f, &headers, "link", event).await
}

// ---- the vault: delete and share ----------------------------------------------------

/// `DELETE /api/files/{id}`: the owner deletes a vault file or an unsent
/// upload; its object is purged by the sweeper. A sent attachment goes
/// with its message (delete the message).
#[utoipa::path(
    delete,
    path = "/api/files/{id}",
    operation_id = "files.delete",
    tag = "files",
    summary = "Delete your vault file or unsent upload",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such file of yours", body = ErrorBody), (status = 409, description = "A sent attachment: delete its message", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let f = load(&app, &id).await?;
    if f.owner_id != caller.identity.user_id || f.deleted_at.is_some() {
        return Err(ApiError::not_found("no such file"));
    }
    if f.attached_at.is_some() {
        return Err(ApiError::conflict(
            "the file belongs to a message: delete the message",
        ));
    }
    app.store
        .delete_file(f.id, courier_actors::now_ms())
        .await?;
    caller
        .audit(
            &app,
            "file.deleted",
            json!({"fileId": f.id, "channelId": f.channel_id}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The owner of a vault file, or 404.
async fn own_vault_file(app: &App, caller: &Caller, id: &str) -> ApiResult<FileRecord> {
    let f = load(app, id).await?;
    if f.owner_id != caller.identity.user_id || f.deleted_at.is_some() {
        return Err(ApiError::not_found("no such file"));
    }
    if f.channel_id.is_some() {
        return Err(ApiError::conflict(
            "an attachment is shared by its channel; share a vault file",
        ));
    }
    Ok(f)
}

/// `GET /api/files/{id}/shares`: the owner's list, revoked ones too.
#[utoipa::path(
    get,
    path = "/api/files/{id}/shares",
    operation_id = "files.shares",
    tag = "files",
    summary = "A vault file's shares (its owner)",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "`{shares: [...]}`", body = Value), (status = 404, description = "No such file of yours", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn shares(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let f = own_vault_file(&app, &caller, &id).await?;
    let shares: Vec<ShareView> = app
        .store
        .list_shares(f.id)
        .await?
        .iter()
        .map(share_view)
        .collect();
    Ok(Json(json!({ "shares": shares })))
}

/// `POST /api/files/{id}/shares`: shares a vault file with a user or a
/// channel's members.
#[utoipa::path(
    post,
    path = "/api/files/{id}/shares",
    operation_id = "files.share",
    tag = "files",
    summary = "Share your vault file with a user or a channel (`view` or `download`)",
    params(("id" = String, Path, description = "The file's id")),
    request_body = ShareBody,
    responses((status = 201, description = "The share", body = ShareView), (status = 400, description = "Not exactly one grantee, or unknown rights", body = ErrorBody), (status = 404, description = "No such file of yours, or no such grantee", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn share(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ShareBody>,
) -> ApiResult<(StatusCode, Json<ShareView>)> {
    let f = own_vault_file(&app, &caller, &id).await?;
    let rights = ShareRights::parse(&body.rights)
        .ok_or_else(|| ApiError::invalid("rights", "must be \"view\" or \"download\""))?;
    let grantee = match (body.user_id, body.channel_id) {
        (Some(user), None) => {
            app.store
                .get_user(user)
                .await?
                .ok_or_else(|| ApiError::not_found("no such user"))?;
            Grantee::User(user)
        }
        (None, Some(channel)) => {
            // Only into a channel the owner may post in.
            app.realtime
                .channel_access(caller.principal(&app), channel, |c, m| Action::Post {
                    channel: c,
                    member: m,
                })
                .await
                .map_err(|e| {
                    caller.access_error(&app, "files.share", json!({"channelId": channel}), e)
                })?;
            Grantee::Channel(channel)
        }
        _ => {
            return Err(ApiError::invalid(
                "userId",
                "give exactly one of userId and channelId",
            ))
        }
    };
    let share = FileShare {
        id: ShareId::new(),
        file_id: f.id,
        grantee,
        rights,
        granted_by: caller.identity.user_id,
        created_at: courier_actors::now_ms(),
        revoked_at: None,
        revoked_by: None,
    };
    app.store.insert_share(share.clone()).await?;
    let view = share_view(&share);
    caller
        .audit(
            &app,
            "file.shared",
            json!({"fileId": f.id, "shareId": share.id, "userId": view.user_id,
                   "channelId": view.channel_id, "rights": rights.as_str()}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /api/files/{id}/shares/{share}`: revokes a share at once.
#[utoipa::path(
    delete,
    path = "/api/files/{id}/shares/{share}",
    operation_id = "files.unshare",
    tag = "files",
    summary = "Revoke a share of your vault file",
    params(("id" = String, Path, description = "The file's id"), ("share" = String, Path, description = "The share's id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such live share of your file", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn unshare(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, share)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let f = own_vault_file(&app, &caller, &id).await?;
    let share: ShareId = path_id("share", &share)?;
    if !app
        .store
        .list_shares(f.id)
        .await?
        .iter()
        .any(|s| s.id == share)
    {
        return Err(ApiError::not_found("no such share"));
    }
    app.store
        .revoke_share(share, caller.identity.user_id, courier_actors::now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("no such share, or revoked already"))?;
    caller
        .audit(
            &app,
            "file.unshared",
            json!({"fileId": f.id, "shareId": share}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
