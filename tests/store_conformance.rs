//! The store conformance suite: every story is written once, as
//! `async fn story(store: DynStore)`, and run against both backends
//! (`sqlite::story`, `sqlite_memory::story` and `postgres::story`). PostgreSQL stories skip when no
//! server is reachable, except in CI (see `support`).
//!
//! `cargo test --test store_conformance -- --ignored --nocapture
//! postgres_insert_rate` measures batch inserts on PostgreSQL.

mod support;

use std::collections::BTreeMap;

use courier_actors::durable::store::sqlite::SqliteStore;
use courier_actors::durable::store::{
    AuditFilter, AuditRecord, Channel, ChannelKind, ChannelPatch, ChannelRole, Checkpoint,
    ClientMsgRef, DynStore, Flag, Member, NewUser, Reencrypted, RefreshOutcome, Role, Session,
    SessionKind, Setting, StoreError, StoredMessage, Turn, User, UserPatch, WriteOp, WriteOutcome,
};
use courier_protocol::{ChannelId, MessageId, SessionId, UserId};

macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $story() {
                    let (store, _dir) = support::fresh_sqlite().await;
                    assert_eq!(store.backend(), "sqlite");
                    super::$story(store).await;
                }
            )*
        }

        /// `sqlite::memory:`, where the one write connection also reads.
        mod sqlite_memory {
            $(
                #[tokio::test]
                async fn $story() {
                    let store = courier_actors::durable::store::connect("sqlite::memory:")
                        .await
                        .expect("open an in-memory SQLite store");
                    assert_eq!(store.backend(), "sqlite");
                    super::$story(store).await;
                }
            )*
        }

        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $story() {
                    let Some((store, url)) = support::fresh_postgres().await else {
                        return;
                    };
                    assert_eq!(store.backend(), "postgres");
                    super::$story(store).await;
                    support::release_postgres_db(&url).await;
                }
            )*
        }
    };
}

conformance!(
    basics,
    users,
    role_permissions_are_seeded,
    sessions,
    channels,
    members,
    batch_of_500_inserts,
    duplicate_client_ids,
    seq_is_unique_and_batches_are_atomic,
    a_batch_commits_only_in_its_turn,
    edits_deletes_and_reactions,
    paging,
    expiry_and_purges,
    key_versions,
    deleting_a_user_keeps_their_messages,
    audit_chain,
    audit_appends_beside_batches,
    accounts_console_sessions_and_settings,
    flags_archives_and_channel_pages,
);

/// A batch beside the one before it commits only once that one has: before
/// its turn none of its rows can be read, after it all of them; when the
/// batch before is abandoned, it commits nothing.
async fn a_batch_commits_only_in_its_turn(store: DynStore) {
    let u = user(&store, "turns").await;
    let ch = channel(&store, &u, "turns", ChannelKind::Public).await;
    let ops: Vec<WriteOp> = (1..=3)
        .map(|seq| WriteOp::InsertMessage(msg(&ch, &u, seq, None)))
        .collect();
    let (done, before) = tokio::sync::watch::channel(false);
    let applying = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .apply_batch_in_turn(&ops, &mut Turn::after(before))
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!applying.is_finished(), "waits for its turn");
    assert_eq!(store.last_seq(ch.id).await.expect("last seq"), 0);
    done.send(true).expect("turn");
    let outcomes = applying.await.expect("task").expect("applied");
    assert_eq!(outcomes, vec![WriteOutcome::Done; 3]);
    assert_eq!(store.last_seq(ch.id).await.expect("last seq"), 3);

    let (done, before) = tokio::sync::watch::channel(false);
    let ops = [WriteOp::InsertMessage(msg(&ch, &u, 4, None))];
    drop(done);
    let abandoned = store
        .apply_batch_in_turn(&ops, &mut Turn::after(before))
        .await;
    assert!(
        matches!(abandoned, Err(StoreError::Unavailable(_))),
        "{abandoned:?}"
    );
    assert_eq!(store.last_seq(ch.id).await.expect("last seq"), 3);
}

/// Audit appends made while message batches commit, one of the batches
/// failing and one of the appends not continuing the chain: every good
/// append and every good batch is stored, in order, and the failures touch
/// nothing else.
async fn audit_appends_beside_batches(store: DynStore) {
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let batches = tokio::spawn({
        let store = store.clone();
        let (ward, alice) = (ward.clone(), alice.clone());
        async move {
            for batch in 0..20u64 {
                let ops: Vec<WriteOp> = (1..=200)
                    .map(|i| WriteOp::InsertMessage(msg(&ward, &alice, batch * 200 + i, None)))
                    .collect();
                store.apply_batch(&ops).await.expect("a good batch");
                if batch == 10 {
                    // A clash with a stored seq fails this batch alone.
                    let clash = [WriteOp::InsertMessage(msg(&ward, &alice, 1, None))];
                    let refused = store.apply_batch(&clash).await;
                    assert!(
                        matches!(refused, Err(StoreError::Conflict(_))),
                        "{refused:?}"
                    );
                }
            }
        }
    });
    let hash = |seq: u64| format!("{seq:064x}");
    let entry = |seq: u64| AuditRecord {
        seq,
        timestamp: T0 + seq as i64,
        actor_id: Some(alice.id),
        ip: None,
        user_agent: None,
        action: "message.send".to_owned(),
        details: serde_json::json!({ "seq": seq }),
        prev_hash: hash(seq - 1),
        hash: hash(seq),
    };
    let mut appended = Vec::new();
    for append in 0..60u64 {
        let entries = [entry(append * 2 + 1), entry(append * 2 + 2)];
        store.append_audit(&entries).await.expect("a good append");
        appended.extend(entries);
        if append == 30 {
            let gap = [entry(append * 2 + 4)];
            let refused = store.append_audit(&gap).await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(_))),
                "{refused:?}"
            );
        }
        tokio::task::yield_now().await;
    }
    batches.await.expect("batches");

    assert_eq!(store.last_seq(ward.id).await.unwrap(), 4_000);
    let stored = store.messages_after(ward.id, 0, 5_000).await.unwrap();
    assert_eq!(seqs(&stored), (1..=4_000).collect::<Vec<_>>());
    assert_eq!(store.audit_range(0, 1_000).await.unwrap(), appended);
}

// ---- fixtures ---------------------------------------------------------------

/// A fixed "now", in milliseconds.
const T0: i64 = 1_700_000_000_000;

async fn user(store: &DynStore, username: &str) -> User {
    store
        .create_user(NewUser {
            id: UserId::new(),
            username: username.to_owned(),
            email: Some(format!("{}@clinic.example", username.to_lowercase())),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            role: Role::User,
            created_at: T0,
        })
        .await
        .expect("create user")
}

fn new_channel(owner: &User, name: &str, kind: ChannelKind) -> Channel {
    Channel {
        id: ChannelId::new(),
        name: name.to_owned(),
        description: None,
        kind,
        created_by: owner.id,
        created_at: T0,
        direct_key: None,
        archived_at: None,
        patient_ref: None,
        patient_tag: None,
    }
}

fn owner_of(channel: &Channel, user: &User) -> Member {
    Member {
        channel_id: channel.id,
        user_id: user.id,
        role: ChannelRole::Owner,
        joined_at: T0,
        last_read_seq: 0,
        last_delivered_seq: 0,
    }
}

async fn channel(store: &DynStore, owner: &User, name: &str, kind: ChannelKind) -> Channel {
    let channel = new_channel(owner, name, kind);
    store
        .create_channel(channel.clone(), owner_of(&channel, owner))
        .await
        .expect("create channel");
    channel
}

/// A message as the channel actor would hand it over (the ciphertext is just
/// distinct bytes: the store never looks inside).
fn msg(channel: &Channel, sender: &User, seq: u64, client: Option<&str>) -> StoredMessage {
    StoredMessage {
        search: Default::default(),
        id: MessageId::new(),
        channel_id: channel.id,
        seq,
        sender_id: sender.id,
        client_msg_id: client.map(str::to_owned),
        ciphertext: format!("ciphertext-{seq}").into_bytes(),
        nonce: vec![seq as u8; 12],
        key_version: 1,
        contains_phi: seq % 2 == 0,
        reply_to: None,
        created_at: T0 + seq as i64,
        edited_at: None,
        expires_at: None,
        deleted_at: None,
        kind: Default::default(),
        attachments: Vec::new(),
        patient_ref: None,
        patient_tag: None,
    }
}

/// Inserts messages in one batch and checks that each went in.
async fn insert(store: &DynStore, messages: impl IntoIterator<Item = StoredMessage>) {
    let ops: Vec<WriteOp> = messages.into_iter().map(WriteOp::InsertMessage).collect();
    let outcomes = store.apply_batch(&ops).await.expect("apply batch");
    assert_eq!(outcomes, vec![WriteOutcome::Done; ops.len()]);
}

fn seqs(rows: &[courier_actors::durable::store::MessageRow]) -> Vec<u64> {
    rows.iter().map(|r| r.message.seq).collect()
}

fn reactions(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

fn client_ref(m: &StoredMessage) -> ClientMsgRef {
    ClientMsgRef {
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id.clone().expect("a client id"),
        message_id: m.id,
        seq: m.seq,
        created_at: m.created_at,
    }
}

// ---- stories ----------------------------------------------------------------

/// The admin console's columns: an account's lock, disabled state,
/// temporary password and last login; console sessions (never rotated as
/// refresh tokens, touched for their idle timeout); runtime settings.
async fn accounts_console_sessions_and_settings(store: DynStore) {
    let carol = user(&store, "carol").await;
    assert_eq!(
        (
            carol.disabled_at,
            carol.must_change_password,
            carol.last_login_at
        ),
        (None, false, None)
    );
    let changed = store
        .update_user(
            carol.id,
            UserPatch {
                locked_until: Some(Some(i64::MAX)),
                disabled_at: Some(Some(T0 + 1)),
                must_change_password: Some(true),
                last_login_at: Some(T0 + 2),
                updated_at: T0 + 3,
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.locked_until, Some(i64::MAX));
    assert_eq!(changed.disabled_at, Some(T0 + 1));
    assert!(changed.must_change_password);
    assert_eq!(changed.last_login_at, Some(T0 + 2));
    assert_eq!(
        store.get_user(carol.id).await.unwrap(),
        Some(changed.clone())
    );
    // An empty patch leaves them; `Some(None)` clears.
    let cleared = store
        .update_user(
            carol.id,
            UserPatch {
                locked_until: Some(None),
                disabled_at: Some(None),
                must_change_password: Some(false),
                updated_at: T0 + 4,
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            cleared.locked_until,
            cleared.disabled_at,
            cleared.must_change_password
        ),
        (None, None, false)
    );
    assert_eq!(cleared.last_login_at, Some(T0 + 2), "untouched");

    let console = Session {
        id: SessionId::new(),
        user_id: carol.id,
        token_hash: "console-hash".into(),
        created_at: T0,
        expires_at: i64::MAX,
        ip: None,
        user_agent: None,
        valid: true,
        kind: SessionKind::Console,
        last_seen_at: Some(T0),
    };
    store.create_session(console.clone()).await.unwrap();
    let (session, owner) = store
        .get_session_user(console.id)
        .await
        .unwrap()
        .expect("session");
    assert_eq!(session, console);
    assert_eq!(owner.id, carol.id);
    assert_eq!(owner.last_login_at, Some(T0 + 2));
    // Its hash is never a refresh token.
    assert_eq!(
        store
            .rotate_refresh("console-hash", "new", T0 + 1, i64::MAX)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );
    store.touch_session(console.id, T0 + 9).await.unwrap();
    let touched = store.get_session(console.id).await.unwrap().expect("row");
    assert_eq!(touched.last_seen_at, Some(T0 + 9));
    assert_eq!(touched.token_hash, "console-hash");
    assert!(matches!(
        store.touch_session(SessionId::new(), T0).await,
        Err(StoreError::NotFound)
    ));

    assert!(store.list_settings().await.unwrap().is_empty());
    let setting = |value: &str, at: i64| Setting {
        key: "rate_limits.send_per_minute".into(),
        value: value.into(),
        updated_at: at,
        updated_by: Some(carol.id),
    };
    store.put_setting(setting("2", T0)).await.unwrap();
    store.put_setting(setting("5", T0 + 1)).await.unwrap();
    store
        .put_setting(Setting {
            key: "a.first".into(),
            updated_by: None,
            ..setting("1", T0)
        })
        .await
        .unwrap();
    let settings = store.list_settings().await.unwrap();
    assert_eq!(settings.len(), 2, "one row per key");
    assert_eq!(settings[0].key, "a.first");
    assert_eq!(settings[1], setting("5", T0 + 1));
}

/// Moderation flags and the queue, archived channels, channel pages.
async fn flags_archives_and_channel_pages(store: DynStore) {
    let dana = user(&store, "dana").await;
    let ward = channel(&store, &dana, "Ward 7", ChannelKind::Public).await;
    let other = channel(&store, &dana, "pharmacy", ChannelKind::Private).await;
    let (a, b, c) = (
        msg(&ward, &dana, 1, None),
        msg(&ward, &dana, 2, None),
        msg(&other, &dana, 1, None),
    );
    insert(&store, [a.clone(), b.clone(), c.clone()]).await;

    let flag = |at: i64, reason: &str| Flag {
        at,
        by: dana.id,
        reason: reason.into(),
    };
    let row = store
        .set_message_flag(a.id, Some(flag(T0 + 10, "rude")))
        .await
        .unwrap();
    assert_eq!(row.flag, Some(flag(T0 + 10, "rude")));
    assert_eq!(row.message, a);
    store
        .set_message_flag(c.id, Some(flag(T0 + 20, "phi")))
        .await
        .unwrap();
    let queue = store.list_flagged(10, 0).await.unwrap();
    assert_eq!(
        queue.iter().map(|r| r.message.id).collect::<Vec<_>>(),
        [c.id, a.id],
        "newest flag first"
    );
    assert_eq!(queue[0].sender_username, "dana");
    assert_eq!(store.list_flagged(1, 1).await.unwrap()[0].message.id, a.id);
    // History reads carry the flag too.
    let page = store.messages_after(ward.id, 0, 10).await.unwrap();
    assert_eq!(page[0].flag, Some(flag(T0 + 10, "rude")));
    assert_eq!(page[1].flag, None);
    // Unflagged, it leaves the queue; a deleted message leaves it as well.
    let row = store.set_message_flag(a.id, None).await.unwrap();
    assert_eq!(row.flag, None);
    store
        .apply_batch(&[WriteOp::DeleteMessage {
            id: c.id,
            deleted_at: T0 + 30,
        }])
        .await
        .unwrap();
    assert!(store.list_flagged(10, 0).await.unwrap().is_empty());
    assert!(matches!(
        store.set_message_flag(c.id, Some(flag(T0, "x"))).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_message_flag(MessageId::new(), None).await,
        Err(StoreError::NotFound)
    ));

    let archived = store
        .update_channel(
            ward.id,
            ChannelPatch {
                archived_at: Some(Some(T0 + 40)),
                ..ChannelPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(archived.archived_at, Some(T0 + 40));
    assert_eq!(archived.name, "Ward 7");
    assert_eq!(
        store
            .get_channel(ward.id)
            .await
            .unwrap()
            .expect("ward")
            .archived_at,
        Some(T0 + 40)
    );
    let back = store
        .update_channel(
            ward.id,
            ChannelPatch {
                archived_at: Some(None),
                ..ChannelPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(back.archived_at, None);

    let names = |channels: Vec<Channel>| channels.into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_channels_page(None, 10, 0).await.unwrap()),
        ["pharmacy", "Ward 7"]
    );
    assert_eq!(
        names(store.list_channels_page(Some("WARD"), 10, 0).await.unwrap()),
        ["Ward 7"]
    );
    assert_eq!(
        names(store.list_channels_page(None, 1, 1).await.unwrap()),
        ["Ward 7"]
    );
    assert!(
        store
            .list_channels_page(Some("%"), 10, 0)
            .await
            .unwrap()
            .is_empty(),
        "LIKE wildcards are literal"
    );
}

async fn basics(store: DynStore) {
    store.ping().await.expect("ping");
    // Migrations already ran in connect(); running them again is a no-op.
    store.migrate().await.expect("migrate twice");
    assert_eq!(store.count_users().await.unwrap(), 0);
    assert!(store.audit_head().await.unwrap().is_none());
}

async fn users(store: DynStore) {
    let alice = user(&store, "alice").await;
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.email.as_deref(), Some("alice@clinic.example"));
    assert_eq!((alice.created_at, alice.updated_at), (T0, T0));
    assert_eq!((alice.failed_logins, alice.locked_until), (0, None));
    assert_eq!(store.get_user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get_user(UserId::new()).await.unwrap(), None);

    // Usernames are unique and matched regardless of case.
    let taken = store
        .create_user(NewUser {
            id: UserId::new(),
            username: "ALICE".into(),
            email: None,
            password_hash: "x".into(),
            role: Role::User,
            created_at: T0,
        })
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    assert_eq!(
        store.get_user_by_username("aLiCe").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.get_user_by_username("alicia").await.unwrap(), None);

    let bob = user(&store, "bob").await;
    let carol = user(&store, "Carol").await;
    let dave = user(&store, "dave_99").await;
    assert_eq!(store.count_users().await.unwrap(), 4);

    // Listing: by username (case-insensitively), searched, paged.
    let names = |users: Vec<User>| users.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_users(None, 10, 0).await.unwrap()),
        ["alice", "bob", "Carol", "dave_99"]
    );
    assert_eq!(
        names(store.list_users(None, 2, 1).await.unwrap()),
        ["bob", "Carol"]
    );
    assert_eq!(
        names(store.list_users(None, 10, 4).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        names(store.list_users(Some("CAR"), 10, 0).await.unwrap()),
        ["Carol"]
    );
    assert_eq!(
        names(
            store
                .list_users(Some("@clinic.EXAMPLE"), 3, 0)
                .await
                .unwrap()
        ),
        ["alice", "bob", "Carol"]
    );
    // LIKE wildcards in a search are literal characters.
    assert_eq!(
        names(store.list_users(Some("_"), 10, 0).await.unwrap()),
        ["dave_99"]
    );
    assert_eq!(
        names(store.list_users(Some("%"), 10, 0).await.unwrap()),
        Vec::<String>::new()
    );

    // Updates touch only what the patch names (a new password hash also
    // moves password_changed_at to the update's time).
    let updated = store
        .update_user(
            bob.id,
            UserPatch {
                email: Some(None),
                role: Some(Role::Admin),
                password_hash: Some("new-hash".into()),
                updated_at: T0 + 5,
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        updated,
        User {
            email: None,
            role: Role::Admin,
            password_hash: "new-hash".into(),
            updated_at: T0 + 5,
            password_changed_at: T0 + 5,
            ..bob.clone()
        }
    );
    let touched = store
        .update_user(
            carol.id,
            UserPatch {
                updated_at: T0 + 6,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        touched,
        User {
            updated_at: T0 + 6,
            ..carol.clone()
        }
    );
    let missing = store.update_user(UserId::new(), UserPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    // Lockout: the third consecutive failure locks; a success clears.
    let lock = T0 + 900_000;
    let after1 = store.record_login_failure(carol.id, 3, lock).await.unwrap();
    assert_eq!((after1.failed_logins, after1.locked_until), (1, None));
    let after2 = store.record_login_failure(carol.id, 3, lock).await.unwrap();
    assert_eq!((after2.failed_logins, after2.locked_until), (2, None));
    let after3 = store.record_login_failure(carol.id, 3, lock).await.unwrap();
    assert_eq!((after3.failed_logins, after3.locked_until), (3, Some(lock)));
    store.record_login_success(carol.id).await.unwrap();
    let cleared = store.get_user(carol.id).await.unwrap().unwrap();
    assert_eq!((cleared.failed_logins, cleared.locked_until), (0, None));
    assert!(matches!(
        store.record_login_failure(UserId::new(), 3, lock).await,
        Err(StoreError::NotFound)
    ));

    // Deleting.
    store.delete_user(dave.id).await.unwrap();
    assert_eq!(store.get_user(dave.id).await.unwrap(), None);
    assert!(matches!(
        store.delete_user(dave.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_users().await.unwrap(), 3);
}

async fn role_permissions_are_seeded(store: DynStore) {
    let all = [
        "announcements.create",
        "audit.read",
        "break_glass.review",
        "channels.break_glass",
        "channels.create_private",
        "channels.create_public",
        "channels.manage",
        "holds.manage",
        "keys.manage",
        "messages.moderate",
        "patients.disclosures",
        "patients.read",
        "sessions.manage",
        "settings.manage",
        "users.manage",
        "users.read",
    ];
    assert_eq!(store.role_permissions(Role::SuperAdmin).await.unwrap(), all);
    let admin: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| *p != "keys.manage")
        .collect();
    assert_eq!(store.role_permissions(Role::Admin).await.unwrap(), admin);
    assert_eq!(
        store.role_permissions(Role::Moderator).await.unwrap(),
        [
            "audit.read",
            "channels.create_private",
            "channels.create_public",
            "messages.moderate",
            "users.read"
        ]
    );
    assert_eq!(
        store.role_permissions(Role::User).await.unwrap(),
        ["channels.create_private"]
    );
}

async fn sessions(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let session = |user: &User, hash: &str, expires_at: i64| Session {
        id: SessionId::new(),
        user_id: user.id,
        token_hash: hash.to_owned(),
        created_at: T0,
        expires_at,
        ip: Some("10.0.0.7".into()),
        user_agent: Some("courier-test/1".into()),
        valid: true,
        kind: courier_actors::durable::store::SessionKind::Api,
        last_seen_at: None,
    };

    let s1 = session(&alice, "h1", T0 + 1_000);
    store.create_session(s1.clone()).await.unwrap();
    assert_eq!(store.get_session(s1.id).await.unwrap(), Some(s1.clone()));
    // The joined read gives the same session and its whole user.
    assert_eq!(
        store.get_session_user(s1.id).await.unwrap(),
        Some((s1.clone(), alice.clone()))
    );
    assert_eq!(
        store.get_session_user(SessionId::new()).await.unwrap(),
        None
    );
    assert_eq!(
        store.list_sessions(alice.id).await.unwrap(),
        vec![s1.clone()]
    );

    // The current token rotates, along a chain h1 -> h2 -> h3.
    let rotated = store
        .rotate_refresh("h1", "h2", T0 + 10, T0 + 2_000)
        .await
        .unwrap();
    let s1_h2 = Session {
        token_hash: "h2".into(),
        expires_at: T0 + 2_000,
        ..s1.clone()
    };
    assert_eq!(rotated, RefreshOutcome::Rotated(s1_h2.clone()));
    let rotated = store
        .rotate_refresh("h2", "h3", T0 + 20, T0 + 3_000)
        .await
        .unwrap();
    assert_eq!(
        rotated,
        RefreshOutcome::Rotated(Session {
            token_hash: "h3".into(),
            expires_at: T0 + 3_000,
            ..s1.clone()
        })
    );

    // Presenting an old token of the live family revokes the session.
    let reused = store
        .rotate_refresh("h1", "h4", T0 + 30, T0 + 4_000)
        .await
        .unwrap();
    assert_eq!(
        reused,
        RefreshOutcome::Reused {
            session_id: s1.id,
            user_id: alice.id
        }
    );
    assert!(!store.get_session(s1.id).await.unwrap().unwrap().valid);
    // The family is dead: its current token and its old ones are unknown now.
    for hash in ["h3", "h2", "h1"] {
        let outcome = store
            .rotate_refresh(hash, "h5", T0 + 40, T0 + 5_000)
            .await
            .unwrap();
        assert_eq!(outcome, RefreshOutcome::Unknown, "{hash}");
    }
    assert_eq!(
        store
            .rotate_refresh("never-issued", "h6", T0, T0 + 1)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );

    // An expired session does not rotate.
    let s2 = session(&alice, "e1", T0 + 5);
    store.create_session(s2.clone()).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh("e1", "e2", T0 + 10, T0 + 100)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );
    assert_eq!(store.get_session(s2.id).await.unwrap(), Some(s2.clone()));

    // Revoking one, then all of a user's sessions.
    let s3 = session(&alice, "r1", T0 + 1_000);
    store.create_session(s3.clone()).await.unwrap();
    assert!(store.revoke_session(s3.id).await.unwrap());
    assert!(!store.revoke_session(s3.id).await.unwrap());
    assert!(!store.revoke_session(SessionId::new()).await.unwrap());
    assert_eq!(
        store
            .rotate_refresh("r1", "r2", T0 + 10, T0 + 100)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );

    let b1 = session(&bob, "b1", T0 + 1_000);
    let b2 = session(&bob, "b2", T0 + 1_000);
    store.create_session(b1.clone()).await.unwrap();
    store.create_session(b2.clone()).await.unwrap();
    let mut revoked = store.revoke_user_sessions(bob.id).await.unwrap();
    revoked.sort();
    let mut expected = vec![b1.id, b2.id];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(store.revoke_user_sessions(bob.id).await.unwrap().is_empty());
    assert!(store
        .list_sessions(bob.id)
        .await
        .unwrap()
        .iter()
        .all(|s| !s.valid));
    assert_eq!(store.list_sessions(alice.id).await.unwrap().len(), 3);

    // A session's token hash is unique.
    let clash = store.create_session(session(&bob, "b1", T0 + 1_000)).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
}

async fn channels(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let general = channel(&store, &alice, "general", ChannelKind::Public).await;
    let secret = channel(&store, &alice, "Secret", ChannelKind::Private).await;
    let news = channel(&store, &alice, "news", ChannelKind::Broadcast).await;
    let direct_key = {
        let mut ids = [alice.id.to_string(), bob.id.to_string()];
        ids.sort();
        ids.join(":")
    };
    let direct = Channel {
        direct_key: Some(direct_key.clone()),
        archived_at: None,
        ..new_channel(&alice, "alice-bob", ChannelKind::Direct)
    };
    store
        .create_channel(direct.clone(), owner_of(&direct, &alice))
        .await
        .unwrap();

    assert_eq!(
        store.get_channel(secret.id).await.unwrap(),
        Some(secret.clone())
    );
    assert_eq!(store.get_channel(ChannelId::new()).await.unwrap(), None);
    assert_eq!(
        store.get_member(general.id, alice.id).await.unwrap(),
        Some(owner_of(&general, &alice))
    );
    // The joined read: the channel with the caller's membership, or none.
    assert_eq!(
        store
            .get_channel_member(general.id, alice.id)
            .await
            .unwrap(),
        Some((general.clone(), Some(owner_of(&general, &alice))))
    );
    assert_eq!(
        store.get_channel_member(secret.id, bob.id).await.unwrap(),
        Some((secret.clone(), None))
    );
    assert_eq!(
        store
            .get_channel_member(ChannelId::new(), alice.id)
            .await
            .unwrap(),
        None
    );

    // One direct channel per pair; the failed attempt leaves nothing behind.
    let again = Channel {
        direct_key: Some(direct_key.clone()),
        archived_at: None,
        ..new_channel(&bob, "bob-alice", ChannelKind::Direct)
    };
    let clash = store
        .create_channel(again.clone(), owner_of(&again, &bob))
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(store.get_channel(again.id).await.unwrap(), None);
    assert_eq!(store.get_member(again.id, bob.id).await.unwrap(), None);
    assert_eq!(
        store.find_direct(&direct_key).await.unwrap(),
        Some(direct.clone())
    );
    assert_eq!(store.find_direct("nobody:nobody").await.unwrap(), None);

    // A channel whose owner does not exist is refused.
    let ghost = User {
        id: UserId::new(),
        ..bob.clone()
    };
    let orphan = new_channel(&ghost, "orphan", ChannelKind::Public);
    let refused = store
        .create_channel(orphan.clone(), owner_of(&orphan, &ghost))
        .await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    assert_eq!(store.get_channel(orphan.id).await.unwrap(), None);

    // Visibility: public and broadcast for everyone, the rest for members.
    let names = |channels: Vec<Channel>| channels.into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_channels_for(bob.id).await.unwrap()),
        ["general", "news"]
    );
    let outcome = store
        .apply_batch(&[WriteOp::UpsertMember(Member {
            role: ChannelRole::Member,
            ..owner_of(&direct, &bob)
        })])
        .await
        .unwrap();
    assert_eq!(outcome, [WriteOutcome::Done]);
    assert_eq!(
        names(store.list_channels_for(bob.id).await.unwrap()),
        ["alice-bob", "general", "news"]
    );
    assert_eq!(
        names(store.list_channels_for(alice.id).await.unwrap()),
        ["alice-bob", "general", "news", "Secret"]
    );
    assert_eq!(
        names(store.list_all_channels().await.unwrap()),
        ["alice-bob", "general", "news", "Secret"]
    );

    // Updates.
    let renamed = store
        .update_channel(
            general.id,
            ChannelPatch {
                name: Some("lobby".into()),
                description: Some(Some("hi".into())),
                ..ChannelPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        renamed,
        Channel {
            name: "lobby".into(),
            description: Some("hi".into()),
            ..general.clone()
        }
    );
    let cleared = store
        .update_channel(
            general.id,
            ChannelPatch {
                name: None,
                description: Some(None),
                ..ChannelPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        cleared,
        Channel {
            name: "lobby".into(),
            ..general.clone()
        }
    );
    assert!(matches!(
        store
            .update_channel(ChannelId::new(), ChannelPatch::default())
            .await,
        Err(StoreError::NotFound)
    ));

    // Deleting takes members, messages and reactions with it.
    let m = msg(&secret, &alice, 1, Some("c1"));
    insert(&store, [m.clone()]).await;
    let reacted = store
        .apply_batch(&[WriteOp::AddReaction {
            message_id: m.id,
            user_id: alice.id,
            reaction: "+1".into(),
            created_at: T0,
        }])
        .await
        .unwrap();
    assert_eq!(reacted, [WriteOutcome::Reactions(reactions(&[("+1", 1)]))]);
    store.delete_channel(secret.id).await.unwrap();
    assert_eq!(store.get_channel(secret.id).await.unwrap(), None);
    assert!(store.list_members(secret.id).await.unwrap().is_empty());
    assert_eq!(store.get_message(m.id).await.unwrap(), None);
    assert!(store.reaction_counts(m.id).await.unwrap().is_empty());
    assert_eq!(store.last_seq(secret.id).await.unwrap(), 0);
    assert!(matches!(
        store.delete_channel(secret.id).await,
        Err(StoreError::NotFound)
    ));
    // Messages to a deleted channel are refused one by one, not the batch.
    let late = msg(&secret, &alice, 2, Some("c2"));
    let other = msg(&news, &alice, 1, Some("c2"));
    let outcomes = store
        .apply_batch(&[
            WriteOp::InsertMessage(late),
            WriteOp::InsertMessage(other.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::NotFound, WriteOutcome::Done]);
    assert_eq!(store.last_seq(news.id).await.unwrap(), 1);
}

async fn members(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Private).await;
    let bob_member = Member {
        channel_id: ward.id,
        user_id: bob.id,
        role: ChannelRole::Member,
        joined_at: T0 + 1,
        last_read_seq: 0,
        last_delivered_seq: 0,
    };
    let read = |seq| WriteOp::MarkRead {
        channel_id: ward.id,
        user_id: bob.id,
        seq,
    };

    let outcomes = store
        .apply_batch(&[
            WriteOp::UpsertMember(bob_member.clone()),
            read(5),
            // Never backward.
            read(3),
            WriteOp::MarkRead {
                channel_id: ward.id,
                user_id: carol.id,
                seq: 1,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::NotFound
        ]
    );
    let at5 = Member {
        last_read_seq: 5,
        last_delivered_seq: 5,
        ..bob_member.clone()
    };
    assert_eq!(
        store.get_member(ward.id, bob.id).await.unwrap(),
        Some(at5.clone())
    );

    // A role change keeps the read position and the join time.
    let promoted = Member {
        role: ChannelRole::Moderator,
        joined_at: T0 + 99,
        last_read_seq: 0,
        last_delivered_seq: 0,
        ..bob_member.clone()
    };
    let outcomes = store
        .apply_batch(&[WriteOp::UpsertMember(promoted), read(7)])
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Done, WriteOutcome::Done]);
    assert_eq!(
        store.get_member(ward.id, bob.id).await.unwrap(),
        Some(Member {
            role: ChannelRole::Moderator,
            last_read_seq: 7,
            last_delivered_seq: 7,
            ..bob_member.clone()
        })
    );
    assert_eq!(
        store
            .list_members(ward.id)
            .await
            .unwrap()
            .iter()
            .map(|m| (m.user_id, m.role))
            .collect::<Vec<_>>(),
        [
            (alice.id, ChannelRole::Owner),
            (bob.id, ChannelRole::Moderator)
        ]
    );

    // Memberships of missing channels or users are refused op by op.
    let outcomes = store
        .apply_batch(&[
            WriteOp::UpsertMember(Member {
                channel_id: ChannelId::new(),
                ..bob_member.clone()
            }),
            WriteOp::UpsertMember(Member {
                user_id: UserId::new(),
                ..bob_member.clone()
            }),
            WriteOp::RemoveMember {
                channel_id: ward.id,
                user_id: bob.id,
            },
            WriteOp::RemoveMember {
                channel_id: ward.id,
                user_id: bob.id,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::NotFound,
            WriteOutcome::NotFound,
            WriteOutcome::Done,
            WriteOutcome::NotFound
        ]
    );
    assert_eq!(store.get_member(ward.id, bob.id).await.unwrap(), None);
    assert_eq!(store.list_members(ward.id).await.unwrap().len(), 1);
}

async fn batch_of_500_inserts(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let messages: Vec<StoredMessage> = (1..=500)
        .map(|seq| {
            let sender = if seq % 3 == 0 { &bob } else { &alice };
            let client = format!("c-{seq}");
            StoredMessage {
                reply_to: None,
                expires_at: (seq == 7).then_some(T0 + 60_000),
                ..msg(
                    &ward,
                    sender,
                    seq,
                    (seq % 10 != 0).then_some(client.as_str()),
                )
            }
        })
        .collect();
    insert(&store, messages.clone()).await;

    assert_eq!(store.last_seq(ward.id).await.unwrap(), 500);
    let stored = store.messages_after(ward.id, 0, 1_000).await.unwrap();
    assert_eq!(seqs(&stored), (1..=500).collect::<Vec<_>>());
    for (row, sent) in stored.iter().zip(&messages) {
        assert_eq!(&row.message, sent);
        let sender = if sent.sender_id == bob.id {
            "bob"
        } else {
            "alice"
        };
        assert_eq!(row.sender_username, sender);
    }
    let one = store.get_message(messages[6].id).await.unwrap().unwrap();
    assert_eq!(one.message, messages[6]);

    // The newest client ids, oldest first, skipping messages without one.
    let recent = store.recent_client_ids(ward.id, 3).await.unwrap();
    let expected: Vec<ClientMsgRef> = [497, 498, 499]
        .iter()
        .map(|&seq| client_ref(&messages[seq - 1]))
        .collect();
    assert_eq!(recent, expected);
}

async fn duplicate_client_ids(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let m1 = msg(&ward, &alice, 1, Some("c1"));
    insert(&store, [m1.clone()]).await;

    let resent = msg(&ward, &alice, 2, Some("c1"));
    let m3 = msg(&ward, &alice, 3, Some("c3"));
    let resent_in_batch = msg(&ward, &alice, 4, Some("c3"));
    // The same client id from another sender is a different message.
    let bobs = msg(&ward, &bob, 5, Some("c1"));
    let no_client_id = msg(&ward, &bob, 6, None);
    let outcomes = store
        .apply_batch(&[
            WriteOp::InsertMessage(resent.clone()),
            WriteOp::InsertMessage(m3.clone()),
            WriteOp::InsertMessage(resent_in_batch.clone()),
            WriteOp::InsertMessage(bobs.clone()),
            WriteOp::InsertMessage(no_client_id.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Duplicate(client_ref(&m1)),
            WriteOutcome::Done,
            WriteOutcome::Duplicate(client_ref(&m3)),
            WriteOutcome::Done,
            WriteOutcome::Done,
        ]
    );

    // Tombstones keep seq gap-free, but nothing new is visible.
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 6);
    assert_eq!(
        seqs(&store.messages_after(ward.id, 0, 100).await.unwrap()),
        [1, 3, 5, 6]
    );
    let tombstone = store.get_message(resent.id).await.unwrap().unwrap().message;
    assert_eq!(
        tombstone,
        StoredMessage {
            client_msg_id: None,
            ciphertext: vec![],
            nonce: vec![],
            key_version: 0,
            contains_phi: false,
            deleted_at: Some(resent.created_at),
            kind: Default::default(),
            attachments: Vec::new(),
            ..resent.clone()
        }
    );
    assert_eq!(
        store
            .get_message(resent_in_batch.id)
            .await
            .unwrap()
            .unwrap()
            .message
            .seq,
        4
    );
    assert_eq!(
        store.recent_client_ids(ward.id, 10).await.unwrap(),
        [client_ref(&m1), client_ref(&m3), client_ref(&bobs)]
    );

    // A resend of a deleted message is still a duplicate of it.
    let outcomes = store
        .apply_batch(&[
            WriteOp::DeleteMessage {
                id: m3.id,
                deleted_at: T0 + 50,
            },
            WriteOp::InsertMessage(msg(&ward, &alice, 7, Some("c3"))),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [WriteOutcome::Done, WriteOutcome::Duplicate(client_ref(&m3))]
    );
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 7);
}

async fn seq_is_unique_and_batches_are_atomic(store: DynStore) {
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let m1 = msg(&ward, &alice, 1, Some("c1"));
    insert(&store, [m1.clone()]).await;

    // A second message at seq 1 fails the whole batch: nothing is applied.
    let fresh = msg(&ward, &alice, 2, Some("c2"));
    let clash = msg(&ward, &alice, 1, Some("c-other"));
    let result = store
        .apply_batch(&[
            WriteOp::InsertMessage(fresh.clone()),
            WriteOp::DeleteMessage {
                id: m1.id,
                deleted_at: T0,
            },
            WriteOp::InsertMessage(clash),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 1);
    assert_eq!(store.get_message(fresh.id).await.unwrap(), None);
    assert_eq!(
        store
            .get_message(m1.id)
            .await
            .unwrap()
            .unwrap()
            .message
            .deleted_at,
        None
    );

    // Also when the clash is inside one run of inserts, and for a tombstone.
    let result = store
        .apply_batch(&[
            WriteOp::InsertMessage(fresh.clone()),
            WriteOp::InsertMessage(msg(&ward, &alice, 2, Some("c3"))),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    let result = store
        .apply_batch(&[WriteOp::InsertMessage(msg(&ward, &alice, 1, Some("c1")))])
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 1);

    // The store is fine afterwards.
    insert(&store, [fresh]).await;
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 2);
}

async fn edits_deletes_and_reactions(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let m1 = msg(&ward, &alice, 1, Some("c1"));
    let m2 = msg(&ward, &alice, 2, Some("c2"));
    insert(&store, [m1.clone(), m2.clone()]).await;

    let edit = |id, text: &str| WriteOp::EditMessage {
        search: Default::default(),
        id,
        ciphertext: text.as_bytes().to_vec(),
        nonce: vec![9; 12],
        key_version: 2,
        edited_at: T0 + 100,
    };
    let react = |user: &User, reaction: &str| WriteOp::AddReaction {
        message_id: m1.id,
        user_id: user.id,
        reaction: reaction.into(),
        created_at: T0 + 200,
    };
    let unreact = |user: &User, reaction: &str| WriteOp::RemoveReaction {
        message_id: m1.id,
        user_id: user.id,
        reaction: reaction.into(),
    };
    let outcomes = store
        .apply_batch(&[
            edit(m1.id, "edited"),
            edit(MessageId::new(), "nobody"),
            react(&bob, "+1"),
            react(&carol, "+1"),
            // idempotent
            react(&bob, "+1"),
            react(&bob, "heart"),
            unreact(&carol, "+1"),
            unreact(&carol, "+1"),
            WriteOp::AddReaction {
                message_id: MessageId::new(),
                user_id: bob.id,
                reaction: "+1".into(),
                created_at: T0,
            },
            WriteOp::AddReaction {
                message_id: m1.id,
                user_id: UserId::new(),
                reaction: "+1".into(),
                created_at: T0,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Done,
            WriteOutcome::NotFound,
            WriteOutcome::Reactions(reactions(&[("+1", 1)])),
            WriteOutcome::Reactions(reactions(&[("+1", 2)])),
            WriteOutcome::Reactions(reactions(&[("+1", 2)])),
            WriteOutcome::Reactions(reactions(&[("+1", 2), ("heart", 1)])),
            WriteOutcome::Reactions(reactions(&[("+1", 1), ("heart", 1)])),
            WriteOutcome::Reactions(reactions(&[("+1", 1), ("heart", 1)])),
            WriteOutcome::NotFound,
            WriteOutcome::NotFound,
        ]
    );
    assert_eq!(
        store.reaction_counts(m1.id).await.unwrap(),
        reactions(&[("+1", 1), ("heart", 1)])
    );
    let edited = store.get_message(m1.id).await.unwrap().unwrap().message;
    assert_eq!(
        edited,
        StoredMessage {
            ciphertext: b"edited".to_vec(),
            nonce: vec![9; 12],
            key_version: 2,
            edited_at: Some(T0 + 100),
            ..m1.clone()
        }
    );

    // A deleted message stays readable by id, but takes no edits or reactions.
    let outcomes = store
        .apply_batch(&[
            WriteOp::DeleteMessage {
                id: m2.id,
                deleted_at: T0 + 300,
            },
            WriteOp::DeleteMessage {
                id: m2.id,
                deleted_at: T0 + 301,
            },
            edit(m2.id, "too late"),
            WriteOp::AddReaction {
                message_id: m2.id,
                user_id: bob.id,
                reaction: "+1".into(),
                created_at: T0,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Done,
            WriteOutcome::NotFound,
            WriteOutcome::NotFound,
            WriteOutcome::NotFound
        ]
    );
    let deleted = store.get_message(m2.id).await.unwrap().unwrap();
    assert_eq!(
        deleted.message,
        StoredMessage {
            deleted_at: Some(T0 + 300),
            kind: Default::default(),
            attachments: Vec::new(),
            ..m2.clone()
        }
    );
    assert_eq!(deleted.sender_username, "alice");
    assert!(store.reaction_counts(m2.id).await.unwrap().is_empty());
}

async fn paging(store: DynStore) {
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let other = channel(&store, &alice, "other", ChannelKind::Public).await;
    let messages: Vec<StoredMessage> = (1..=10)
        .map(|seq| msg(&ward, &alice, seq, Some(&format!("c{seq}"))))
        .collect();
    insert(&store, messages.clone()).await;
    insert(&store, [msg(&other, &alice, 1, None)]).await;
    let outcomes = store
        .apply_batch(&[
            WriteOp::DeleteMessage {
                id: messages[4].id,
                deleted_at: T0,
            },
            WriteOp::DeleteMessage {
                id: messages[7].id,
                deleted_at: T0,
            },
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Done, WriteOutcome::Done]);

    // After: ascending, deleted rows skipped.
    assert_eq!(
        seqs(&store.messages_after(ward.id, 3, 3).await.unwrap()),
        [4, 6, 7]
    );
    assert_eq!(
        seqs(&store.messages_after(ward.id, 7, 10).await.unwrap()),
        [9, 10]
    );
    assert!(store
        .messages_after(ward.id, 10, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .messages_after(ward.id, u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());

    // Before: the newest page, ascending, and whether older ones exist.
    let page = |(rows, more): (Vec<_>, bool)| (seqs(&rows), more);
    assert_eq!(
        page(store.messages_before(ward.id, None, 3).await.unwrap()),
        (vec![7, 9, 10], true)
    );
    assert_eq!(
        page(store.messages_before(ward.id, Some(7), 3).await.unwrap()),
        (vec![3, 4, 6], true)
    );
    assert_eq!(
        page(store.messages_before(ward.id, Some(4), 3).await.unwrap()),
        (vec![1, 2, 3], false)
    );
    assert_eq!(
        page(store.messages_before(ward.id, Some(3), 5).await.unwrap()),
        (vec![1, 2], false)
    );
    assert_eq!(
        page(store.messages_before(ward.id, Some(1), 5).await.unwrap()),
        (vec![], false)
    );
    assert_eq!(
        page(
            store
                .messages_before(ward.id, Some(u64::MAX), 20)
                .await
                .unwrap()
        ),
        (vec![1, 2, 3, 4, 6, 7, 9, 10], false)
    );
}

async fn expiry_and_purges(store: DynStore) {
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let expiring = |seq, expires_at| StoredMessage {
        expires_at,
        ..msg(&ward, &alice, seq, None)
    };
    let m1 = expiring(1, Some(T0 + 100));
    let m2 = expiring(2, Some(T0 + 200));
    let m3 = expiring(3, None);
    let m4 = expiring(4, Some(T0 + 50));
    insert(&store, [m1.clone(), m2.clone(), m3.clone(), m4.clone()]).await;
    store
        .apply_batch(&[WriteOp::DeleteMessage {
            id: m4.id,
            deleted_at: T0 + 10,
        }])
        .await
        .unwrap();

    // Expired: due and not deleted yet, soonest first.
    let ids = |messages: Vec<StoredMessage>| messages.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert!(store
        .expired_messages(T0 + 99, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(store.expired_messages(T0 + 100, 10).await.unwrap()),
        [m1.id]
    );
    assert_eq!(
        ids(store.expired_messages(T0 + 1_000, 10).await.unwrap()),
        [m1.id, m2.id]
    );
    assert_eq!(
        ids(store.expired_messages(T0 + 1_000, 1).await.unwrap()),
        [m1.id]
    );

    // Purging soft-deleted rows: only those deleted before the cutoff.
    assert_eq!(store.purge_deleted(T0 + 10).await.unwrap(), 0);
    assert_eq!(store.purge_deleted(T0 + 11).await.unwrap(), 1);
    assert_eq!(store.get_message(m4.id).await.unwrap(), None);
    assert!(store.get_message(m1.id).await.unwrap().is_some());
    // The purged row was the newest: the channel's last seq does not go back.
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 4);

    // Purging by age: created_at is T0 + seq.
    store
        .apply_batch(&[WriteOp::AddReaction {
            message_id: m1.id,
            user_id: alice.id,
            reaction: "+1".into(),
            created_at: T0,
        }])
        .await
        .unwrap();
    assert_eq!(store.purge_older_than(T0 + 1).await.unwrap(), 0);
    assert_eq!(store.purge_older_than(T0 + 3).await.unwrap(), 2);
    assert_eq!(store.get_message(m1.id).await.unwrap(), None);
    assert!(store.reaction_counts(m1.id).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.messages_after(ward.id, 0, 10).await.unwrap()),
        [3]
    );
    assert_eq!(store.purge_older_than(T0 + 1_000).await.unwrap(), 1);
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 4);
    // And the next message continues from there.
    insert(&store, [msg(&ward, &alice, 5, None)]).await;
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 5);
}

async fn key_versions(store: DynStore) {
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let on = |seq, version| StoredMessage {
        key_version: version,
        ..msg(&ward, &alice, seq, Some(&format!("c{seq}")))
    };
    let old = [on(1, 1), on(2, 1), on(3, 1)];
    let new = [on(4, 2), on(5, 2)];
    insert(&store, old.clone()).await;
    insert(&store, new).await;
    // A duplicate leaves a tombstone, which has no ciphertext and uses no key.
    insert(&store, [on(6, 1)]).await;
    let dup = store
        .apply_batch(&[WriteOp::InsertMessage(StoredMessage {
            client_msg_id: Some("c1".into()),
            ..on(7, 1)
        })])
        .await
        .unwrap();
    assert!(matches!(dup[0], WriteOutcome::Duplicate(_)));
    // A deleted message keeps its ciphertext until purged: it still counts.
    store
        .apply_batch(&[WriteOp::DeleteMessage {
            id: old[2].id,
            deleted_at: T0,
        }])
        .await
        .unwrap();

    assert_eq!(store.count_key_version(1).await.unwrap(), 4);
    assert_eq!(store.count_key_version(2).await.unwrap(), 2);
    assert_eq!(store.count_key_version(0).await.unwrap(), 0);
    assert_eq!(store.count_key_version(3).await.unwrap(), 0);

    let mut todo: Vec<u64> = store
        .messages_not_on_key(2, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    todo.sort();
    assert_eq!(todo, [1, 2, 3, 6]);
    assert_eq!(store.messages_not_on_key(2, 2).await.unwrap().len(), 2);

    let work = store.messages_not_on_key(2, 10).await.unwrap();
    let rotated: Vec<Reencrypted> = work
        .iter()
        .map(|m| Reencrypted {
            id: m.id,
            ciphertext: format!("v2-{}", m.seq).into_bytes(),
            nonce: vec![2; 12],
            key_version: 2,
            search: Default::default(),
        })
        .collect();
    store.store_reencrypted(&rotated).await.unwrap();
    assert_eq!(store.count_key_version(1).await.unwrap(), 0);
    assert_eq!(store.count_key_version(2).await.unwrap(), 6);
    assert!(store.messages_not_on_key(2, 10).await.unwrap().is_empty());
    let first = store.get_message(old[0].id).await.unwrap().unwrap().message;
    assert_eq!(
        first,
        StoredMessage {
            ciphertext: b"v2-1".to_vec(),
            nonce: vec![2; 12],
            key_version: 2,
            ..old[0].clone()
        }
    );
    store.store_reencrypted(&[]).await.unwrap();
}

async fn deleting_a_user_keeps_their_messages(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    store
        .apply_batch(&[WriteOp::UpsertMember(Member {
            role: ChannelRole::Member,
            ..owner_of(&ward, &bob)
        })])
        .await
        .unwrap();
    store
        .create_session(Session {
            id: SessionId::new(),
            user_id: bob.id,
            token_hash: "bob-token".into(),
            created_at: T0,
            expires_at: T0 + 1_000,
            ip: None,
            user_agent: None,
            valid: true,
            kind: courier_actors::durable::store::SessionKind::Api,
            last_seen_at: None,
        })
        .await
        .unwrap();
    let m = msg(&ward, &bob, 1, Some("c1"));
    insert(&store, [m.clone()]).await;

    store.delete_user(bob.id).await.unwrap();
    assert!(store.list_sessions(bob.id).await.unwrap().is_empty());
    assert_eq!(store.get_member(ward.id, bob.id).await.unwrap(), None);
    let kept = store.get_message(m.id).await.unwrap().unwrap();
    assert_eq!(kept.message, m);
    assert_eq!(kept.sender_username, "");
    assert_eq!(
        store
            .rotate_refresh("bob-token", "x", T0, T0 + 1)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );
}

async fn audit_chain(store: DynStore) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let hash = |seq: u64| format!("{seq:064x}");
    let entry = |seq: u64, actor: Option<&User>, action: &str| AuditRecord {
        seq,
        timestamp: T0 + seq as i64,
        actor_id: actor.map(|u| u.id),
        ip: actor.map(|_| "10.0.0.7".to_owned()),
        user_agent: None,
        action: action.to_owned(),
        details: serde_json::json!({ "seq": seq, "nested": { "b": [1, 2], "a": null } }),
        prev_hash: hash(seq - 1),
        hash: hash(seq),
    };
    let first = [
        entry(1, None, "server.start"),
        entry(2, Some(&alice), "auth.login"),
        entry(3, Some(&bob), "auth.login"),
    ];
    store.append_audit(&first).await.unwrap();
    store.append_audit(&[]).await.unwrap();
    let audited_channel = ChannelId::new();
    let mut created = entry(4, Some(&alice), "channel.create");
    created.details["channelId"] = serde_json::json!(audited_channel);
    let second = [created, entry(5, Some(&alice), "auth.login")];
    store.append_audit(&second).await.unwrap();
    let all: Vec<AuditRecord> = first.iter().chain(&second).cloned().collect();

    assert_eq!(store.audit_head().await.unwrap(), Some(all[4].clone()));
    assert_eq!(store.audit_range(0, 2).await.unwrap(), all[..2]);
    assert_eq!(store.audit_range(2, 100).await.unwrap(), all[2..]);
    assert!(store.audit_range(5, 100).await.unwrap().is_empty());

    // Entries that do not continue the chain are refused, and nothing of
    // their batch is written.
    for bad in [
        vec![entry(6, None, "x"), entry(8, None, "x")],
        vec![entry(7, None, "x")],
        vec![AuditRecord {
            prev_hash: hash(99),
            ..entry(6, None, "x")
        }],
        vec![entry(5, None, "x")],
    ] {
        let refused = store.append_audit(&bad).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
    }
    assert_eq!(store.audit_head().await.unwrap(), Some(all[4].clone()));

    // Listing: newest first, filtered.
    let alice_id = Some(alice.id);
    let login = || Some("auth.login".to_owned());
    for (filter, expected) in [
        (
            AuditFilter {
                limit: 10,
                ..Default::default()
            },
            vec![5, 4, 3, 2, 1],
        ),
        (
            AuditFilter {
                limit: 2,
                ..Default::default()
            },
            vec![5, 4],
        ),
        (
            AuditFilter {
                actor_id: alice_id,
                limit: 10,
                ..Default::default()
            },
            vec![5, 4, 2],
        ),
        (
            AuditFilter {
                action: login(),
                limit: 10,
                ..Default::default()
            },
            vec![5, 3, 2],
        ),
        (
            AuditFilter {
                after_seq: Some(3),
                limit: 10,
                ..Default::default()
            },
            vec![5, 4],
        ),
        (
            AuditFilter {
                actor_id: alice_id,
                action: login(),
                after_seq: Some(2),
                limit: 10,
                ..Default::default()
            },
            vec![5],
        ),
        (
            AuditFilter {
                before_seq: Some(4),
                limit: 2,
                ..Default::default()
            },
            vec![3, 2],
        ),
        (
            AuditFilter {
                since: Some(T0 + 2),
                until: Some(T0 + 5),
                limit: 10,
                ..Default::default()
            },
            vec![4, 3, 2],
        ),
        (
            AuditFilter {
                channel_id: Some(audited_channel),
                limit: 10,
                ..Default::default()
            },
            vec![4],
        ),
        (
            AuditFilter {
                channel_id: Some(ChannelId::new()),
                limit: 10,
                ..Default::default()
            },
            vec![],
        ),
    ] {
        let listed = store.list_audit(filter.clone()).await.unwrap();
        let seqs: Vec<u64> = listed.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, expected, "{filter:?}");
        assert!(listed.iter().all(|r| *r == all[r.seq as usize - 1]));
    }

    // Checkpoints.
    let checkpoint = |seq: u64| Checkpoint {
        seq,
        head_hash: hash(seq),
        time: T0 + seq as i64,
        key_id: "k1".into(),
        signature: "ab".repeat(64),
    };
    store.insert_checkpoint(checkpoint(5)).await.unwrap();
    store.insert_checkpoint(checkpoint(2)).await.unwrap();
    assert_eq!(
        store.list_checkpoints().await.unwrap(),
        [checkpoint(2), checkpoint(5)]
    );
    let again = store.insert_checkpoint(checkpoint(5)).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
}

// ---- measurement -------------------------------------------------------------

/// Message rows per second through `apply_batch` in batches of 512, on
/// PostgreSQL. Prints the figure; run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn postgres_insert_rate() {
    let Some((store, url)) = support::fresh_postgres().await else {
        return;
    };
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    const BATCH: u64 = 512;
    const BATCHES: u64 = 40;
    let mut seq = 0;
    let mut elapsed = std::time::Duration::ZERO;
    for _ in 0..BATCHES {
        let ops: Vec<WriteOp> = (0..BATCH)
            .map(|_| {
                seq += 1;
                let mut m = msg(&ward, &alice, seq, Some(&format!("c{seq}")));
                m.ciphertext = vec![7; 200];
                WriteOp::InsertMessage(m)
            })
            .collect();
        let start = std::time::Instant::now();
        store.apply_batch(&ops).await.unwrap();
        elapsed += start.elapsed();
    }
    let rows = BATCH * BATCHES;
    println!(
        "postgres: {rows} rows in {BATCHES} batches of {BATCH}: {:.1} ms/batch, {:.0} rows/s",
        elapsed.as_secs_f64() * 1000.0 / BATCHES as f64,
        rows as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.last_seq(ward.id).await.unwrap(), rows);
    drop(store);
    support::release_postgres_db(&url).await;
}

/// One writer per PostgreSQL database: a second broker's lock waits and then
/// fails while the first holds it, and is granted once the holder's session
/// ends (as when a crashed broker's connection closes).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_writer_lock_admits_one_broker() {
    let Some((first, url)) = support::fresh_postgres().await else {
        return;
    };
    let second = courier_actors::durable::store::connect(&url)
        .await
        .expect("second store");
    let wait = std::time::Duration::from_millis(300);
    let held = first.lock_writer(wait).await.expect("first lock");
    let started = std::time::Instant::now();
    match second.lock_writer(wait).await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("writer lock"), "{why}"),
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("two writers held the lock at once"),
    }
    assert!(started.elapsed() >= wait, "refused before waiting");
    drop(held);
    let again = second
        .lock_writer(std::time::Duration::from_secs(10))
        .await
        .expect("the lock is free once its session ended");
    drop(again);
    drop(second);
    drop(first);
    support::release_postgres_db(&url).await;
}

/// A made-up first audit entry by `actor` (its hash is not checked here).
fn first_audit_entry(actor: &User) -> AuditRecord {
    AuditRecord {
        seq: 1,
        timestamp: T0,
        actor_id: Some(actor.id),
        ip: None,
        user_agent: None,
        action: "message.send".to_owned(),
        details: serde_json::json!({}),
        prev_hash: "0".repeat(64),
        hash: "1".repeat(64),
    }
}

/// A restart after a crash: the dead broker's last message batch and audit
/// append can still be committing, each on a session of its own, after its
/// writer lock's session has gone. The successor's writer lock is granted
/// only once they are done, so the heads it reads include them. (Deferred
/// triggers that sleep make both commits take a second.)
#[tokio::test(flavor = "multi_thread")]
async fn postgres_writer_lock_waits_for_a_predecessors_commits() {
    use sqlx::Connection;
    let Some((first, url)) = support::fresh_postgres().await else {
        return;
    };
    let alice = user(&first, "alice").await;
    let ward = channel(&first, &alice, "ward-7", ChannelKind::Public).await;
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    for statement in [
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON audit_logs
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON messages
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .expect("slow commits");
    }
    let held = first
        .lock_writer(std::time::Duration::from_secs(1))
        .await
        .expect("first lock");
    let entry = first_audit_entry(&alice);
    let append = tokio::spawn({
        let (store, entry) = (first.clone(), entry.clone());
        async move { store.append_audit(std::slice::from_ref(&entry)).await }
    });
    let batch = tokio::spawn({
        let (store, ops) = (
            first.clone(),
            vec![WriteOp::InsertMessage(msg(&ward, &alice, 1, None))],
        );
        async move { store.apply_batch(&ops).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !append.is_finished() && !batch.is_finished(),
        "both commits must still be under way when the successor starts"
    );
    // The predecessor "dies": its writer lock's session ends at once.
    drop(held);
    let second = courier_actors::durable::store::connect(&url)
        .await
        .expect("second store");
    let lock = second
        .lock_writer(std::time::Duration::from_secs(10))
        .await
        .expect("the successor's lock");
    assert_eq!(second.audit_head().await.unwrap(), Some(entry));
    assert_eq!(second.last_seq(ward.id).await.unwrap(), 1);
    append.await.expect("task").expect("append");
    batch.await.expect("task").expect("batch");
    drop(lock);
    drop((second, first, admin));
    support::release_postgres_db(&url).await;
}

/// A SQLite store with a batch of 20,000 messages committing.
struct BatchUnderWay {
    sqlite: SqliteStore,
    store: DynStore,
    alice: User,
    ward: Channel,
    batch: tokio::task::JoinHandle<Result<Vec<WriteOutcome>, StoreError>>,
    _dir: tempfile::TempDir,
}

async fn sqlite_batch_under_way() -> BatchUnderWay {
    let (url, _dir) = support::fresh_sqlite_url();
    let sqlite = SqliteStore::connect(&url)
        .await
        .expect("open a SQLite store");
    let store: DynStore = std::sync::Arc::new(sqlite.clone());
    let alice = user(&store, "alice").await;
    let ward = channel(&store, &alice, "ward-7", ChannelKind::Public).await;
    let ops: Vec<WriteOp> = (1..=20_000)
        .map(|seq| WriteOp::InsertMessage(msg(&ward, &alice, seq, None)))
        .collect();
    let batch = tokio::spawn({
        let store = store.clone();
        async move { store.apply_batch(&ops).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(
        !batch.is_finished(),
        "the batch must still be committing when the test's appends come"
    );
    BatchUnderWay {
        sqlite,
        store,
        alice,
        ward,
        batch,
        _dir,
    }
}

/// On SQLite an audit append made while a message batch is committing rides
/// in that batch's transaction (one commit, one WAL fsync) instead of
/// committing alone after it.
#[tokio::test]
async fn sqlite_audit_append_rides_a_running_batch() {
    let BatchUnderWay {
        sqlite,
        store,
        alice,
        batch,
        _dir,
        ..
    } = sqlite_batch_under_way().await;
    let entry = first_audit_entry(&alice);
    store
        .append_audit(std::slice::from_ref(&entry))
        .await
        .expect("append");
    assert_eq!(sqlite.audit_appends_carried(), 1);
    let outcomes = batch.await.expect("task").expect("batch");
    assert_eq!(outcomes.len(), 20_000);
    assert_eq!(store.audit_head().await.unwrap(), Some(entry));

    // With no batch under way, an append commits alone.
    let next = AuditRecord {
        seq: 2,
        prev_hash: "1".repeat(64),
        hash: "2".repeat(64),
        ..store.audit_head().await.unwrap().unwrap()
    };
    store
        .append_audit(std::slice::from_ref(&next))
        .await
        .expect("append");
    assert_eq!(sqlite.audit_appends_carried(), 1);
    assert_eq!(store.audit_head().await.unwrap(), Some(next));
}

/// On SQLite an append that rides a batch checks the chain's head in its
/// insert (no savepoint, no read first): one that does not continue the
/// chain is refused and writes nothing, while the batch and an append that
/// does continue it commit.
#[tokio::test]
async fn sqlite_a_riding_append_off_the_chain_fails_alone() {
    let BatchUnderWay {
        sqlite,
        store,
        alice,
        ward,
        batch,
        _dir,
    } = sqlite_batch_under_way().await;
    let good = first_audit_entry(&alice);
    let off_chain = AuditRecord {
        seq: 2,
        prev_hash: "f".repeat(64),
        hash: "2".repeat(64),
        ..good.clone()
    };
    let (first, second) = tokio::join!(store.append_audit(std::slice::from_ref(&good)), async {
        // Parked after the good one.
        tokio::task::yield_now().await;
        store.append_audit(std::slice::from_ref(&off_chain)).await
    },);
    first.expect("the good append");
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    assert_eq!(sqlite.audit_appends_carried(), 1);
    let outcomes = batch.await.expect("task").expect("batch");
    assert_eq!(outcomes.len(), 20_000);
    assert_eq!(store.last_seq(ward.id).await.unwrap(), 20_000);
    assert_eq!(store.audit_range(0, 10).await.unwrap(), vec![good]);
}
