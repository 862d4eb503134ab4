//! Search over encrypted messages (issue 38), on SQLite and PostgreSQL,
//! through `GET /api/messages/search`: exact and multi-word (AND) queries,
//! case and accent folding, newest first and paged; a non-member is refused
//! for a named channel and finds nothing across channels; deleted,
//! TTL-expired and edited-away words are not found; the database holds no
//! plaintext word of a unique marker and tokens of one word differ across
//! channels; key rotation re-indexes under the new version and search still
//! works; every search is audited with tokens only.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier_actors::durable::store::Store;
use rest::{Backend, Rest, Session};
use serde_json::{json, Value};

both_backends!(
    search_finds_what_it_should,
    search_leaks_nothing_and_survives_rotation,
);

async fn search(api: &Rest, who: &Session, query: &str) -> Value {
    api.get(&format!("/api/messages/search?{query}"), &who.token)
        .await
        .expect(200)
        .body
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

fn texts(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect()
}

async fn search_finds_what_it_should(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let alice = api.user(&root, "alice", "user").await;
    let bob = api.user(&root, "bob", "user").await;
    let eve = api.user(&root, "eve", "user").await;
    let ward = api.channel(&alice, "ward", "private").await;
    api.add_member(&alice, &ward, &bob).await;

    let cafe = api.send(&alice, &ward, "Meet at the Café at noon").await;
    let both = api.send(&bob, &ward, "the cafe has fresh bread").await;
    let other = api.send(&alice, &ward, "bread only").await;

    // Exact word; case and accents fold both ways; newest first.
    for q in ["q=cafe", "q=CAFE", "q=caf%C3%A9", "q=Caf%C3%89"] {
        let page = search(&api, &bob, &format!("{q}&channel={ward}")).await;
        assert_eq!(ids(&page), vec![both.clone(), cafe.clone()], "{q}");
        assert_eq!(page["hasMore"], false);
    }
    // Every word must match (AND); the text comes back decrypted.
    let page = search(&api, &alice, "q=cafe%20bread").await;
    assert_eq!(ids(&page), vec![both.clone()]);
    assert_eq!(texts(&page), vec!["the cafe has fresh bread"]);
    let page = search(&api, &alice, "q=bread").await;
    assert_eq!(ids(&page), vec![other.clone(), both.clone()]);
    assert!(ids(&search(&api, &alice, "q=absent").await).is_empty());

    // Paging: one at a time, nextBefore carries on.
    let first = search(&api, &alice, "q=bread&limit=1").await;
    assert_eq!(ids(&first), vec![other.clone()]);
    assert_eq!(first["hasMore"], true);
    let next = first["nextBefore"].as_str().expect("nextBefore").to_owned();
    let second = search(&api, &alice, &format!("q=bread&limit=1&before={next}")).await;
    assert_eq!(ids(&second), vec![both.clone()]);
    assert_eq!(second["hasMore"], false);

    // A non-member: refused for the named channel, nothing across channels.
    api.get(
        &format!("/api/messages/search?q=cafe&channel={ward}"),
        &eve.token,
    )
    .await
    .expect_error(403, "forbidden");
    assert!(ids(&search(&api, &eve, "q=cafe").await).is_empty());

    // Bad queries name the field.
    for (q, field) in [
        ("q=", "q"),
        ("q=%20!!%20", "q"),
        (&*format!("q={}", "a".repeat(300)), "q"),
        ("q=cafe&limit=0", "limit"),
        ("q=cafe&channel=nope", "channel"),
    ] {
        let reply = api
            .get(&format!("/api/messages/search?{q}"), &alice.token)
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(reply.field(), field, "{q}");
    }

    // An edit: found by its new words only.
    api.put(
        &format!("/api/messages/{cafe}"),
        &alice.token,
        json!({"text": "moved to the library"}),
    )
    .await
    .expect(200);
    assert_eq!(
        ids(&search(&api, &alice, "q=cafe").await),
        vec![both.clone()]
    );
    assert_eq!(
        ids(&search(&api, &alice, "q=library").await),
        vec![cafe.clone()]
    );

    // A delete: gone from search, and its tokens from the table.
    api.delete(&format!("/api/messages/{both}"), &bob.token)
        .await
        .expect(204);
    assert!(ids(&search(&api, &alice, "q=cafe").await).is_empty());
    assert_eq!(token_rows(&api, &both).await, 0);

    // A message past its TTL is not found, and the retention sweep drops
    // its tokens.
    let ttl = api
        .post(
            "/api/messages",
            &alice.token,
            json!({"channelId": ward, "text": "ephemeral zeppelin", "ttlSeconds": 1}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        ids(&search(&api, &alice, "q=zeppelin").await),
        vec![ttl.clone()]
    );
    assert!(token_rows(&api, &ttl).await > 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ids(&search(&api, &alice, "q=zeppelin").await).is_empty());
    let _ = ractor::call!(api.server.app.realtime.retention, |port| {
        courier_actors::durable::retention::RetentionMsg::Run(Some(port))
    })
    .expect("retention run");
    assert_eq!(token_rows(&api, &ttl).await, 0);

    // Every search is audited, the query as tokens only.
    let entries = api.audit_entries("message.search", 10).await;
    for e in &entries {
        let details = e.details.to_string();
        for word in ["cafe", "bread", "zeppelin", "library"] {
            assert!(!details.contains(word), "{details}");
        }
        let searched = e.details["searched"].as_array().expect("searched");
        for s in searched {
            assert!(s["channelId"].is_string());
            for t in s["tokens"].as_array().expect("tokens") {
                assert_eq!(t.as_str().expect("hex").len(), 32);
            }
        }
    }
    api.stop().await;
}

/// Index rows of one message.
async fn token_rows(api: &Rest, message: &str) -> i64 {
    match raw(api).await {
        Raw::Sqlite(mut c) => {
            sqlx::query_scalar("SELECT count(*) FROM message_search_tokens WHERE message_id = $1")
                .bind(message)
                .fetch_one(&mut c)
                .await
                .expect("count")
        }
        Raw::Pg(mut c) => sqlx::query_scalar(
            "SELECT count(*) FROM message_search_tokens WHERE message_id = $1::uuid",
        )
        .bind(message)
        .fetch_one(&mut c)
        .await
        .expect("count"),
    }
}

enum Raw {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

/// A connection of our own to the server's database.
async fn raw(api: &Rest) -> Raw {
    use sqlx::Connection;
    match api.server.pg_url() {
        Some(url) => Raw::Pg(sqlx::PgConnection::connect(url).await.expect("pg")),
        None => {
            let path = api.server.dir.path().join("courier.db");
            Raw::Sqlite(
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("sqlite"),
            )
        }
    }
}

async fn search_leaks_nothing_and_survives_rotation(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let alice = api.user(&root, "alice", "user").await;
    let one = api.channel(&alice, "one", "private").await;
    let two = api.channel(&alice, "two", "private").await;
    let marker = "xylophonequartz";
    let a = api
        .send(&alice, &one, &format!("the {marker} result"))
        .await;
    let b = api.send(&alice, &two, &format!("{marker} again")).await;

    // The same word's tokens differ across channels.
    let tokens_of = async |message: &str| -> Vec<Vec<u8>> {
        match raw(&api).await {
            Raw::Sqlite(mut c) => {
                sqlx::query_scalar("SELECT token FROM message_search_tokens WHERE message_id = $1")
                    .bind(message)
                    .fetch_all(&mut c)
                    .await
                    .expect("tokens")
            }
            Raw::Pg(mut c) => sqlx::query_scalar(
                "SELECT token FROM message_search_tokens WHERE message_id = $1::uuid",
            )
            .bind(message)
            .fetch_all(&mut c)
            .await
            .expect("tokens"),
        }
    };
    let (ta, tb) = (tokens_of(&a).await, tokens_of(&b).await);
    assert_eq!(ta.len(), 3);
    assert_eq!(tb.len(), 2);
    assert!(ta.iter().all(|t| t.len() == 16));
    assert!(
        ta.iter().all(|t| !tb.contains(t)),
        "tokens compare across channels"
    );

    // No plaintext word on disk.
    match raw(&api).await {
        Raw::Sqlite(mut c) => {
            use sqlx::Executor;
            c.execute("PRAGMA wal_checkpoint(FULL)").await.ok();
            for suffix in ["", "-wal"] {
                let path = api.server.dir.path().join(format!("courier.db{suffix}"));
                if let Ok(bytes) = std::fs::read(&path) {
                    assert!(
                        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                        "{} holds the marker",
                        path.display()
                    );
                }
            }
        }
        Raw::Pg(mut c) => {
            for table in ["message_search_tokens", "messages", "audit_logs"] {
                let hits: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {table} t WHERE t::text ILIKE $1"
                ))
                .bind(format!("%{marker}%"))
                .fetch_one(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
                assert_eq!(hits, 0, "{table} holds the marker");
            }
            let hex: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM message_search_tokens WHERE position($1::bytea in token) > 0",
            )
            .bind(marker.as_bytes())
            .fetch_one(&mut c)
            .await
            .expect("bytes");
            assert_eq!(hex, 0);
        }
    }
    let found = search(&api, &alice, &format!("q={marker}")).await;
    assert_eq!(ids(&found), vec![b.clone(), a.clone()]);

    // Rotation: the re-encryption job (what `courier keys rotate` runs)
    // re-indexes under the new version; search still works, and nothing is
    // left under the old one, so `keys retire` may go ahead.
    let app = &api.server.app;
    let cipher = &app.realtime.cipher;
    let ring = cipher.keyring().with_new_version().expect("new version");
    cipher.install(ring);
    let active = cipher.active_version();
    let store: &dyn Store = &*app.store;
    loop {
        let batch = store.messages_not_on_key(active, 100).await.expect("work");
        if batch.is_empty() {
            break;
        }
        let rows: Vec<_> = batch
            .iter()
            .map(|m| cipher.reencrypt(m).expect("reencrypt"))
            .collect();
        store.store_reencrypted(&rows).await.expect("store");
    }
    assert_eq!(
        store
            .count_search_tokens_on_key(active - 1)
            .await
            .expect("old"),
        0
    );
    assert_eq!(
        store.count_search_tokens_on_key(active).await.expect("new"),
        5
    );
    assert_ne!(tokens_of(&a).await, ta, "tokens changed with the key");
    let found = search(&api, &alice, &format!("q={marker}&channel={one}")).await;
    assert_eq!(texts(&found), vec![format!("the {marker} result")]);
    api.stop().await;
}
