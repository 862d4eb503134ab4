//! The OpenAPI 3.1 description of the REST API, served at
//! `GET /api/openapi.json`. Written by hand next to the handlers; a test
//! (`tests/rest_api.rs`) checks that it names every route the server
//! answers and nothing it does not.

use serde_json::{json, Map, Value};

/// Every `(method, path)` the REST API serves, in the document's spelling.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/api/auth/register"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh-token"),
    ("post", "/api/auth/logout"),
    ("post", "/api/auth/change-password"),
    ("get", "/api/users"),
    ("post", "/api/users"),
    ("get", "/api/users/{id}"),
    ("put", "/api/users/{id}"),
    ("delete", "/api/users/{id}"),
    ("get", "/api/users/{id}/permissions"),
    ("get", "/api/users/{id}/sessions"),
    ("post", "/api/users/{id}/terminate-sessions"),
    ("get", "/api/channels"),
    ("post", "/api/channels"),
    ("get", "/api/channels/{id}"),
    ("put", "/api/channels/{id}"),
    ("delete", "/api/channels/{id}"),
    ("get", "/api/channels/{id}/members"),
    ("post", "/api/channels/{id}/members"),
    ("put", "/api/channels/{id}/members/{userId}"),
    ("delete", "/api/channels/{id}/members/{userId}"),
    ("get", "/api/channels/{id}/messages"),
    ("post", "/api/messages"),
    ("get", "/api/audit"),
    ("get", "/api/audit/verify"),
    ("get", "/api/openapi.json"),
];

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema("Error")}}})
}

fn json_response(description: &str, body: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": body}}})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn wrapped(key: &str, inner: &str) -> Value {
    object(&[key], json!({key: schema(inner)}))
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "format": "uuid"}})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// One operation. `errors` are the statuses it answers besides success; a
/// secured operation also answers 401 and 429.
struct Op {
    summary: &'static str,
    tag: &'static str,
    secured: bool,
    params: Vec<Value>,
    body: Option<Value>,
    success: (&'static str, Value),
    errors: &'static [(&'static str, &'static str)],
}

impl Op {
    fn build(self) -> Value {
        let mut responses = Map::new();
        responses.insert(self.success.0.into(), self.success.1);
        let common: &[(&str, &str)] = if self.secured {
            &[
                (
                    "401",
                    "Missing, invalid or expired token, or a revoked session",
                ),
                ("429", "Rate limited; see Retry-After"),
                ("503", "The store is unavailable; retry"),
            ]
        } else {
            &[
                ("429", "Rate limited; see Retry-After"),
                ("503", "The store is unavailable; retry"),
            ]
        };
        for (status, description) in self.errors.iter().chain(common) {
            responses.insert((*status).into(), error_response(description));
        }
        let mut op = json!({
            "summary": self.summary,
            "tags": [self.tag],
            "parameters": self.params,
            "responses": responses,
        });
        if self.secured {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        if let Some(body) = self.body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        op
    }
}

fn no_content(description: &str) -> (&'static str, Value) {
    ("204", json!({"description": description}))
}

/// The document.
pub fn document() -> Value {
    let id = || path_param("id", "The resource's id");
    let user_id = || path_param("userId", "The member's user id");
    let limit = |max: u64, default: u64| {
        query_param(
            "limit",
            "Page size",
            json!({"type": "integer", "minimum": 1, "maximum": max, "default": default}),
        )
    };
    let tokens = object(
        &["token", "refreshToken", "expiresIn"],
        json!({
            "token": {"type": "string", "description": "Access token (JWT); send as Authorization: Bearer"},
            "refreshToken": {"type": "string", "description": "Opaque; rotated on every use"},
            "expiresIn": {"type": "integer", "description": "Access token lifetime, seconds"},
        }),
    );
    let mut login_answer = tokens.clone();
    login_answer["required"] = json!(["token", "refreshToken", "expiresIn", "user"]);
    login_answer["properties"]["user"] = schema("User");

    let mut paths = Map::new();
    let mut add = |method: &str, path: &str, op: Op| {
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = op.build();
    };

    add(
        "post",
        "/api/auth/register",
        Op {
            summary: "Create an account (when registration is open)",
            tag: "auth",
            secured: false,
            params: vec![],
            body: Some(object(
                &["username", "password"],
                json!({
                    "username": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{2,31}$"},
                    "password": {"type": "string", "description": "At least password_min_length characters; not the username"},
                    "email": {"type": ["string", "null"], "format": "email"},
                }),
            )),
            success: ("201", json_response("Created", wrapped("user", "User"))),
            errors: &[
                ("400", "A field is missing or invalid (`field` names it)"),
                ("403", "Registration is closed"),
                ("409", "The username is taken"),
                ("413", "Body too large"),
            ],
        },
    );
    add("post", "/api/auth/login", Op {
        summary: "Log in: open a session",
        tag: "auth",
        secured: false,
        params: vec![],
        body: Some(object(&["username", "password"], json!({
            "username": {"type": "string"}, "password": {"type": "string"},
        }))),
        success: ("200", json_response("A new session's tokens", login_answer)),
        errors: &[("400", "A field is missing or invalid"), ("401", "Invalid username or password, or this address is temporarily locked out of the account (the same answer for each)")],
    });
    add("post", "/api/auth/refresh-token", Op {
        summary: "Rotate a refresh token; presenting a used one revokes the session",
        tag: "auth",
        secured: false,
        params: vec![],
        body: Some(object(&["refreshToken"], json!({"refreshToken": {"type": "string"}}))),
        success: ("200", json_response("New tokens", tokens)),
        errors: &[("400", "refreshToken missing"), ("401", "Unknown, expired or reused refresh token (reuse revokes the session and closes its sockets with 4003)")],
    });
    add(
        "post",
        "/api/auth/logout",
        Op {
            summary: "End this session; its sockets close with 4003",
            tag: "auth",
            secured: true,
            params: vec![],
            body: None,
            success: no_content("Logged out"),
            errors: &[],
        },
    );
    add(
        "post",
        "/api/auth/change-password",
        Op {
            summary: "Change the password; every session of the user ends",
            tag: "auth",
            secured: true,
            params: vec![],
            body: Some(object(
                &["currentPassword", "newPassword"],
                json!({
                    "currentPassword": {"type": "string"}, "newPassword": {"type": "string"},
                }),
            )),
            success: no_content("Changed; log in again"),
            errors: &[
                ("400", "newPassword breaks the policy"),
                (
                    "403",
                    "currentPassword is incorrect, or the account is locked",
                ),
            ],
        },
    );

    add(
        "get",
        "/api/users",
        Op {
            summary: "List users (users.read or users.manage)",
            tag: "users",
            secured: true,
            params: vec![
                query_param(
                    "search",
                    "Substring of the username or email",
                    json!({"type": "string", "maxLength": 64}),
                ),
                limit(100, 50),
                query_param(
                    "offset",
                    "Users to skip",
                    json!({"type": "integer", "minimum": 0, "default": 0}),
                ),
            ],
            body: None,
            success: (
                "200",
                json_response(
                    "A page of users",
                    object(
                        &["users", "limit", "offset", "hasMore"],
                        json!({
                            "users": {"type": "array", "items": schema("User")},
                            "limit": {"type": "integer"}, "offset": {"type": "integer"}, "hasMore": {"type": "boolean"},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "A query parameter is invalid"),
                ("403", "Not allowed"),
            ],
        },
    );
    add(
        "post",
        "/api/users",
        Op {
            summary: "Create a user (users.manage; granting a role needs the right to grant it)",
            tag: "users",
            secured: true,
            params: vec![],
            body: Some(object(
                &["username", "password"],
                json!({
                    "username": {"type": "string"}, "password": {"type": "string"},
                    "email": {"type": ["string", "null"]}, "role": schema("Role"),
                }),
            )),
            success: ("201", json_response("Created", wrapped("user", "User"))),
            errors: &[
                ("400", "A field is missing or invalid"),
                ("403", "Not allowed"),
                ("409", "The username is taken"),
            ],
        },
    );
    add(
        "get",
        "/api/users/{id}",
        Op {
            summary: "Read a user (yourself, or with users.read)",
            tag: "users",
            secured: true,
            params: vec![id()],
            body: None,
            success: ("200", json_response("The user", wrapped("user", "User"))),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not allowed"),
                ("404", "No such user"),
            ],
        },
    );
    add("put", "/api/users/{id}", Op {
        summary: "Change a user's email, role or password (users.manage); a role or password change ends their sessions",
        tag: "users",
        secured: true,
        params: vec![id()],
        body: Some(object(&[], json!({
            "email": {"type": ["string", "null"]}, "role": schema("Role"), "password": {"type": "string"},
        }))),
        success: ("200", json_response("The updated user", wrapped("user", "User"))),
        errors: &[("400", "A field is invalid"), ("403", "Not allowed"), ("404", "No such user")],
    });
    add(
        "delete",
        "/api/users/{id}",
        Op {
            summary: "Delete a user (users.manage); their sockets close with 4003",
            tag: "users",
            secured: true,
            params: vec![id()],
            body: None,
            success: no_content("Deleted"),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not allowed"),
                ("404", "No such user"),
                ("409", "Cannot delete yourself"),
            ],
        },
    );
    add(
        "get",
        "/api/users/{id}/permissions",
        Op {
            summary: "A user's role and its permissions",
            tag: "users",
            secured: true,
            params: vec![id()],
            body: None,
            success: (
                "200",
                json_response(
                    "Permissions",
                    object(
                        &["userId", "role", "permissions"],
                        json!({
                            "userId": {"type": "string", "format": "uuid"}, "role": schema("Role"),
                            "permissions": {"type": "array", "items": {"type": "string"}},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not allowed"),
                ("404", "No such user"),
            ],
        },
    );
    add(
        "get",
        "/api/users/{id}/sessions",
        Op {
            summary: "A user's sessions (yourself, or with sessions.manage)",
            tag: "users",
            secured: true,
            params: vec![
                id(),
                query_param(
                    "all",
                    "Include ended sessions",
                    json!({"type": "boolean", "default": false}),
                ),
            ],
            body: None,
            success: (
                "200",
                json_response(
                    "Sessions",
                    object(
                        &["sessions"],
                        json!({
                            "sessions": {"type": "array", "items": schema("Session")},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not allowed"),
                ("404", "No such user"),
            ],
        },
    );
    add(
        "post",
        "/api/users/{id}/terminate-sessions",
        Op {
            summary: "End every session of a user; their sockets close with 4003",
            tag: "users",
            secured: true,
            params: vec![id()],
            body: None,
            success: (
                "200",
                json_response(
                    "Sessions ended",
                    object(&["revoked"], json!({"revoked": {"type": "integer"}})),
                ),
            ),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not allowed"),
                ("404", "No such user"),
            ],
        },
    );

    add(
        "get",
        "/api/channels",
        Op {
            summary: "Channels you can see: public, broadcast, and those you are a member of",
            tag: "channels",
            secured: true,
            params: vec![],
            body: None,
            success: (
                "200",
                json_response(
                    "Channels",
                    object(
                        &["channels"],
                        json!({
                            "channels": {"type": "array", "items": schema("Channel")},
                        }),
                    ),
                ),
            ),
            errors: &[],
        },
    );
    add(
        "post",
        "/api/channels",
        Op {
            summary: "Create a channel; you become its owner",
            tag: "channels",
            secured: true,
            params: vec![],
            body: Some(object(
                &["name", "kind"],
                json!({
                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "description": {"type": ["string", "null"], "maxLength": 1000},
                    "kind": {"type": "string", "enum": ["public", "private", "broadcast"]},
                }),
            )),
            success: (
                "201",
                json_response("Created", wrapped("channel", "Channel")),
            ),
            errors: &[
                ("400", "A field is missing or invalid"),
                ("403", "Not allowed to create this kind"),
            ],
        },
    );
    add(
        "get",
        "/api/channels/{id}",
        Op {
            summary: "Read a channel (members only, unless public or broadcast)",
            tag: "channels",
            secured: true,
            params: vec![id()],
            body: None,
            success: (
                "200",
                json_response("The channel, with lastSeq", wrapped("channel", "Channel")),
            ),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not a member"),
                ("404", "No such channel"),
            ],
        },
    );
    add(
        "put",
        "/api/channels/{id}",
        Op {
            summary: "Rename or describe a channel (owner, or channels.manage)",
            tag: "channels",
            secured: true,
            params: vec![id()],
            body: Some(object(
                &[],
                json!({
                    "name": {"type": "string"}, "description": {"type": ["string", "null"]},
                }),
            )),
            success: (
                "200",
                json_response("The updated channel", wrapped("channel", "Channel")),
            ),
            errors: &[
                ("400", "A field is invalid, or kind changed"),
                ("403", "Not allowed"),
                ("404", "No such channel"),
            ],
        },
    );
    add("delete", "/api/channels/{id}", Op {
        summary: "Delete a channel with its messages; joined sockets get system_event channel_deleted",
        tag: "channels",
        secured: true,
        params: vec![id()],
        body: None,
        success: no_content("Deleted"),
        errors: &[("400", "Invalid id"), ("403", "Not allowed"), ("404", "No such channel")],
    });
    add(
        "get",
        "/api/channels/{id}/members",
        Op {
            summary: "A channel's members",
            tag: "channels",
            secured: true,
            params: vec![id()],
            body: None,
            success: (
                "200",
                json_response(
                    "Members",
                    object(
                        &["members"],
                        json!({
                            "members": {"type": "array", "items": schema("Member")},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "Invalid id"),
                ("403", "Not a member"),
                ("404", "No such channel"),
            ],
        },
    );
    add(
        "post",
        "/api/channels/{id}/members",
        Op {
            summary: "Add a member (owner, or channels.manage)",
            tag: "channels",
            secured: true,
            params: vec![id()],
            body: Some(object(
                &["userId"],
                json!({
                    "userId": {"type": "string", "format": "uuid"}, "role": schema("ChannelRole"),
                }),
            )),
            success: ("201", json_response("Added", wrapped("member", "Member"))),
            errors: &[
                ("400", "A field is missing or invalid"),
                ("403", "Not allowed"),
                ("404", "No such channel or user"),
                ("409", "Already a member, or a direct channel"),
            ],
        },
    );
    add(
        "put",
        "/api/channels/{id}/members/{userId}",
        Op {
            summary: "Change a member's role (owner, or channels.manage)",
            tag: "channels",
            secured: true,
            params: vec![id(), user_id()],
            body: Some(object(&["role"], json!({"role": schema("ChannelRole")}))),
            success: ("200", json_response("Changed", wrapped("member", "Member"))),
            errors: &[
                ("400", "A field is invalid"),
                ("403", "Not allowed"),
                ("404", "No such channel or member"),
                ("409", "The last owner, or a direct channel"),
            ],
        },
    );
    add("delete", "/api/channels/{id}/members/{userId}", Op {
        summary: "Remove a member; their joined sockets leave, the others get system_event member_removed",
        tag: "channels",
        secured: true,
        params: vec![id(), user_id()],
        body: None,
        success: no_content("Removed"),
        errors: &[("400", "Invalid id"), ("403", "Not allowed"), ("404", "No such channel or member"), ("409", "The last owner, or a direct channel")],
    });
    add(
        "get",
        "/api/channels/{id}/messages",
        Op {
            summary: "A page of history, ascending seq (as fetch_history)",
            tag: "channels",
            secured: true,
            params: vec![
                id(),
                query_param(
                    "beforeSeq",
                    "Only messages before this seq; newest page when absent",
                    json!({"type": "integer", "minimum": 1}),
                ),
                limit(100, 50),
            ],
            body: None,
            success: (
                "200",
                json_response(
                    "A page",
                    object(
                        &["messages", "hasMore"],
                        json!({
                            "messages": {"type": "array", "items": schema("Message")}, "hasMore": {"type": "boolean"},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "A query parameter is invalid"),
                ("403", "Not a member"),
                ("404", "No such channel"),
            ],
        },
    );
    add("post", "/api/messages", Op {
        summary: "Publish a message through the WebSocket send path; answered after the durable commit",
        tag: "messages",
        secured: true,
        params: vec![],
        body: Some(object(&["channelId", "text"], json!({
            "channelId": {"type": "string", "format": "uuid"},
            "text": {"type": "string", "description": "At most max_text_bytes bytes of UTF-8"},
            "clientMsgId": {"type": "string", "maxLength": 64, "description": "Makes the send idempotent"},
            "containsPHI": {"type": "boolean"},
            "replyTo": {"type": "string", "format": "uuid"},
            "ttlSeconds": {"type": "integer", "minimum": 1},
        }))),
        success: ("201", json_response("Sent (200 with the original for a repeated clientMsgId)", schema("Message"))),
        errors: &[("400", "A field is missing or invalid"), ("403", "Not allowed to post here"), ("404", "No such channel"), ("413", "text is over the size limit")],
    });
    add(
        "get",
        "/api/audit",
        Op {
            summary: "Audit entries, newest first (audit.read); reading is itself audited",
            tag: "audit",
            secured: true,
            params: vec![
                query_param(
                    "userId",
                    "Only this actor's entries",
                    json!({"type": "string", "format": "uuid"}),
                ),
                query_param(
                    "action",
                    "Only this action, e.g. auth.login_failed",
                    json!({"type": "string"}),
                ),
                query_param(
                    "after",
                    "Only entries with a greater seq",
                    json!({"type": "integer", "minimum": 0}),
                ),
                limit(1000, 100),
            ],
            body: None,
            success: (
                "200",
                json_response(
                    "Entries",
                    object(
                        &["entries"],
                        json!({
                            "entries": {"type": "array", "items": schema("AuditEntry")},
                        }),
                    ),
                ),
            ),
            errors: &[
                ("400", "A query parameter is invalid"),
                ("403", "Not allowed"),
            ],
        },
    );
    add(
        "get",
        "/api/audit/verify",
        Op {
            summary: "Verify the audit hash chain and its signed checkpoints (audit.read)",
            tag: "audit",
            secured: true,
            params: vec![],
            body: None,
            success: (
                "200",
                json_response("The verification report", schema("VerifyReport")),
            ),
            errors: &[("403", "Not allowed")],
        },
    );
    paths.insert(
        "/api/openapi.json".into(),
        json!({"get": {
            "summary": "This document",
            "tags": ["meta"],
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }}),
    );

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Courier REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "PROTOCOL.md section 6. Errors are {\"error\": {\"code\", \"message\"}}; \
                validation errors add `field`, rate-limit errors add `retryAfterMs` and a Retry-After header. \
                /api/auth/* is limited per client address (auth_per_15min), everything else per user (rest_per_15min).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let ms = json!({"type": "integer", "description": "ms since the Unix epoch"});
    let opt_ms = json!({"type": ["integer", "null"], "description": "ms since the Unix epoch"});
    json!({
        "Error": object(&["error"], json!({"error": object(&["code", "message"], json!({
            "code": {"type": "string", "enum": ["unauthenticated", "auth_failed", "forbidden", "not_found",
                "invalid_frame", "too_large", "rate_limited", "conflict", "unavailable", "internal"]},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "The request field at fault (validation errors)"},
            "retryAfterMs": {"type": "integer", "description": "With rate_limited"},
        }))})),
        "Role": {"type": "string", "enum": ["super_admin", "admin", "moderator", "user"]},
        "ChannelRole": {"type": "string", "enum": ["owner", "moderator", "member"]},
        "User": object(&["id", "username", "role", "createdAt", "updatedAt"], json!({
            "id": uuid, "username": {"type": "string"}, "email": {"type": ["string", "null"]},
            "role": schema("Role"), "createdAt": ms, "updatedAt": ms,
            "lockedUntil": opt_ms,
        })),
        "Session": object(&["id", "userId", "createdAt", "expiresAt", "valid", "current"], json!({
            "id": uuid, "userId": uuid, "createdAt": ms, "expiresAt": ms,
            "ip": {"type": ["string", "null"]}, "userAgent": {"type": ["string", "null"]},
            "valid": {"type": "boolean"}, "current": {"type": "boolean", "description": "The session of this request"},
        })),
        "Channel": object(&["id", "name", "kind", "createdBy", "createdAt"], json!({
            "id": uuid, "name": {"type": "string"}, "description": {"type": ["string", "null"]},
            "kind": {"type": "string", "enum": ["public", "private", "direct", "broadcast"]},
            "createdBy": uuid, "createdAt": ms,
            "role": {"description": "Your role in it, when a member", "oneOf": [schema("ChannelRole"), {"type": "null"}]},
            "lastSeq": {"type": "integer", "description": "GET /api/channels/{id} only"},
        })),
        "Member": object(&["channelId", "userId", "role", "joinedAt", "lastReadSeq"], json!({
            "channelId": uuid, "userId": uuid, "username": {"type": ["string", "null"]},
            "role": schema("ChannelRole"), "joinedAt": ms, "lastReadSeq": {"type": "integer"},
        })),
        "Message": object(&["id", "channelId", "seq", "senderId", "sender", "text", "timestamp", "containsPHI"], json!({
            "id": uuid, "channelId": uuid, "seq": {"type": "integer"}, "senderId": uuid,
            "sender": {"type": "string"}, "text": {"type": "string"}, "timestamp": ms,
            "containsPHI": {"type": "boolean"}, "replyTo": uuid, "editedAt": ms, "expiresAt": ms,
        })),
        "AuditEntry": object(&["seq", "timestamp", "action", "details", "prevHash", "hash"], json!({
            "seq": {"type": "integer"}, "timestamp": ms, "actorId": {"type": ["string", "null"]},
            "ip": {"type": ["string", "null"]}, "userAgent": {"type": ["string", "null"]},
            "action": {"type": "string"}, "details": {"type": "object"},
            "prevHash": {"type": "string"}, "hash": {"type": "string"},
        })),
        "VerifyReport": object(&["ok", "entries", "headHash"], json!({
            "ok": {"type": "boolean"}, "entries": {"type": "integer"}, "headHash": {"type": "string"},
            "firstBadSeq": {"type": ["integer", "null"]},
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_described_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        for (method, path) in ENDPOINTS {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path}"
            );
        }
        let described: usize = paths
            .values()
            .map(|p| p.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(described, ENDPOINTS.len());
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').expect("closing quote")];
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
