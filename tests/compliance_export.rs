//! The signed compliance export (`courier export`, docs/export.md) on both
//! stores, against a server booted in-process: messages sent, edited and
//! deleted over WebSocket; the export holds them decrypted with their
//! edits, deletions, members and the channel's audit entries; it verifies
//! (keyring, public key alone, the real binary's exit 0); one byte changed
//! anywhere, a forged signature or a stored audit row changed after the
//! export fails verification (exit 2); a patient's export holds only the
//! channels and messages concerning that patient; the export is in the
//! chain as `compliance.export` with the disclosure of what it decrypted.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use courier::config::Config;
use courier::export::{self, ExportOptions, ExportScope, Verdict, VerifyOptions};
use courier_actors::crypto::RefOwner;
use courier_actors::durable::store::{
    AuditFilter, AuditRecord, ChannelKind, ChannelPatch, PatientSeal, Role,
};
use courier_protocol::client::Client;
use courier_protocol::codec::Encoding;
use courier_protocol::frames::{ClientRequest, DeleteMessage, EditMessage, SendMessage};
use courier_protocol::{ChannelId, MessageId, PatientRef};
use serde_json::Value;
use sqlx::Connection;
use support::server::{eventually, Backend, TestServer};

both_backends!(
    an_export_verifies_and_any_change_fails_it,
    a_patient_export_holds_only_that_patients_channels
);

const T: Duration = Duration::from_secs(10);

/// The server's configuration, for the commands run in-process.
fn config_of(server: &TestServer) -> Config {
    (*server.app.config).clone()
}

/// The real binary on the server's data directory and database, with no
/// `COURIER_*` variable from the test's environment.
fn courier(server: &TestServer, args: &[&str]) -> Output {
    let config = config_of(server);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
    for (name, _) in std::env::vars() {
        if name.starts_with("COURIER_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(server.dir.path())
        .arg("--data-dir")
        .arg(server.dir.path())
        .arg("--database-url")
        .arg(config.database_url())
        .args(args)
        .output()
        .expect("run courier")
}

/// The last JSON object a command printed on stdout.
fn printed_json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON on stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    serde_json::from_str(line).expect("JSON")
}

async fn send(client: &mut Client, channel: ChannelId, text: &str) -> (MessageId, u64) {
    let sent = client.send_text(channel, text).await.expect("send");
    (sent.message_id, sent.seq)
}

async fn send_for_patient(
    client: &mut Client,
    channel: ChannelId,
    text: &str,
    patient: &PatientRef,
) -> u64 {
    let mut message = SendMessage::text(channel, text);
    message.patient_ref = Some(patient.clone());
    let ack = client
        .ack(ClientRequest::SendMessage(message))
        .await
        .expect("send with a patientRef");
    match ack.result {
        courier_protocol::frames::AckResult::Sent(sent) => sent.seq,
        other => panic!("not sent: {other:?}"),
    }
}

/// The channel's entries of `action`, once the audit actor has stored them.
async fn stored_entries(server: &TestServer, channel: ChannelId, action: &str) -> Vec<AuditRecord> {
    let store = server.app.store.clone();
    let mut found = Vec::new();
    let ok = eventually(T, async || {
        found = store
            .list_audit(AuditFilter {
                action: Some(action.into()),
                channel_id: Some(channel),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .expect("list audit");
        !found.is_empty()
    })
    .await;
    assert!(ok, "no {action} entry for channel {channel}");
    found
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read the export")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

async fn verify(config: &Config, file: &Path, public_keys: Option<String>) -> Verdict {
    export::verify(
        config,
        &VerifyOptions {
            file: file.to_owned(),
            public_keys,
        },
    )
    .await
    .expect("verification runs")
}

/// A copy of the export and its signature, for tampering with.
fn copy_export(file: &Path, name: &str) -> PathBuf {
    let copy = file.with_file_name(name);
    std::fs::copy(file, &copy).expect("copy the export");
    std::fs::copy(
        export::format::signature_path(file),
        export::format::signature_path(&copy),
    )
    .expect("copy the signature");
    copy
}

async fn tamper_sql(config: &Config, statement: &str) {
    let url = config.database_url();
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect("tamper");
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("postgres");
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect("tamper");
    }
}

async fn an_export_verifies_and_any_change_fails_it(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let config = config_of(&server);
    let auditor = server.user("auditor", Role::Admin).await;
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("ward-7", ChannelKind::Private, &alice, &[&bob])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::Json).await;
    a.join(ch, None).await.expect("join");
    b.join(ch, None).await.expect("join");
    let (_, first) = send(&mut a, ch, "BP 120/80 at 09:00").await;
    let (second_id, second) = send(&mut a, ch, "start metformin").await;
    let (third_id, third) = send(&mut a, ch, "wrong chart, ignore").await;
    let (_, fourth) = send(&mut b, ch, "ack from bob").await;
    a.ack(ClientRequest::EditMessage(EditMessage {
        message_id: second_id,
        text: "start metformin 500 mg".into(),
    }))
    .await
    .expect("edit");
    a.ack(ClientRequest::DeleteMessage(DeleteMessage {
        message_id: third_id,
    }))
    .await
    .expect("delete");
    let edit_entry = stored_entries(&server, ch, "message.edit").await.remove(0);
    let delete_entry = stored_entries(&server, ch, "message.delete")
        .await
        .remove(0);

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ward-7.jsonl");
    let scope = ExportScope::Channel(ch);

    // Only someone who may read the audit trail takes an export.
    let refused = export::export(
        &config,
        &ExportOptions {
            scope: scope.clone(),
            out: file.clone(),
            actor: "alice".into(),
        },
    )
    .await;
    assert!(
        matches!(refused, Err(export::ExportError::Refused(_))),
        "a plain user is refused: {refused:?}"
    );
    assert!(!file.exists(), "a refused export writes nothing");

    let summary = export::export(
        &config,
        &ExportOptions {
            scope: scope.clone(),
            out: file.clone(),
            actor: "auditor".into(),
        },
    )
    .await
    .expect("export");
    assert!(summary.chain_head.seq >= delete_entry.seq);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the export holds decrypted messages");
    }
    assert!(
        !file.with_file_name("ward-7.jsonl.partial").exists(),
        "no partial file is left"
    );

    // What the file holds.
    let all = lines(&file);
    assert_eq!(all[0]["type"], "header");
    assert_eq!(all[0]["format"], "courier-export/1");
    assert_eq!(all[0]["scope"]["channelId"], ch.to_string());
    assert_eq!(all[0]["chainHead"]["seq"], summary.chain_head.seq);
    assert_eq!(all[0]["actor"], "auditor");
    assert_eq!(all.last().expect("lines")["type"], "footer");
    let channels = of_type(&all, "channel");
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0]["name"], "ward-7");
    let members = of_type(&all, "member");
    let mut names: Vec<&str> = members
        .iter()
        .map(|m| m["username"].as_str().expect("username"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "bob"]);
    let messages = of_type(&all, "message");
    let by_seq = |seq: u64| {
        messages
            .iter()
            .find(|m| m["seq"] == seq)
            .unwrap_or_else(|| panic!("message {seq} is exported"))
    };
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(by_seq(first)["text"], "BP 120/80 at 09:00");
    assert_eq!(by_seq(second)["text"], "start metformin 500 mg");
    assert!(by_seq(second)["editedAt"].is_i64());
    assert_eq!(
        by_seq(third)["text"],
        "wrong chart, ignore",
        "deleted, still stored"
    );
    assert!(by_seq(third)["deletedAt"].is_i64());
    assert!(by_seq(first)["deletedAt"].is_null());
    assert_eq!(by_seq(fourth)["sender"], "bob");
    assert_eq!(by_seq(fourth)["kind"], "text");
    let edits = of_type(&all, "edit");
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0]["messageId"], second_id.to_string());
    assert_eq!(edits[0]["auditSeq"], edit_entry.seq);
    assert_eq!(edits[0]["by"], alice.id.to_string());
    let deletions = of_type(&all, "deletion");
    assert_eq!(deletions.len(), 1);
    assert_eq!(deletions[0]["messageId"], third_id.to_string());
    assert_eq!(deletions[0]["auditSeq"], delete_entry.seq);
    let audit = of_type(&all, "audit");
    assert!(audit
        .iter()
        .all(|a| a["entry"]["details"]["channelId"] == ch.to_string()));
    for entry in [&edit_entry, &delete_entry] {
        let exported = audit
            .iter()
            .find(|a| a["entry"]["seq"] == entry.seq)
            .expect("the entry is exported");
        let exported: AuditRecord =
            serde_json::from_value(exported["entry"].clone()).expect("an audit entry");
        assert_eq!(&exported, entry, "exported in full");
    }
    let footer = &all.last().expect("footer")["counts"];
    assert_eq!(footer["messages"], 4);
    assert_eq!(footer["members"], 2);
    assert_eq!(footer["edits"], 1);
    assert_eq!(footer["deletions"], 1);
    assert_eq!(footer["auditEntries"], audit.len());

    // It verifies: with the keyring, and with the public key alone.
    let verdict = verify(&config, &file, None).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.audit_entries, audit.len() as u64);
    let keys = courier(&server, &["audit", "public-key"]);
    assert!(keys.status.success());
    let keys = String::from_utf8(keys.stdout).expect("utf-8");
    assert!(keys.contains(&format!("{}:", summary.key_id)), "{keys}");
    let verdict = verify(&config, &file, Some(keys.trim().replace('\n', ","))).await;
    assert!(verdict.ok, "with the public key alone: {verdict:?}");
    let wrong_key = format!("{}:{}", summary.key_id, "11".repeat(32));
    assert!(!verify(&config, &file, Some(wrong_key)).await.ok);

    // The real binary: exit 0 and a JSON verdict.
    let file_arg = file.to_str().expect("path");
    let out = courier(&server, &["export", "verify", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(printed_json(&out)["ok"], true);

    // The real binary takes an export too; without a scope it is a usage
    // error, and it never overwrites a file.
    let by_cli = dir.path().join("by-cli.jsonl");
    let ch_arg = ch.to_string();
    let cli_args = [
        "export",
        "--channel",
        ch_arg.as_str(),
        "--out",
        by_cli.to_str().expect("path"),
        "--actor",
        "auditor",
    ];
    let out = courier(&server, &cli_args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(printed_json(&out)["counts"]["messages"], 4);
    assert!(export::format::signature_path(&by_cli).exists());
    let out = courier(
        &server,
        &["export", "verify", by_cli.to_str().expect("path")],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let again = courier(&server, &cli_args);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let usage = courier(
        &server,
        &["export", "--out", "x.jsonl", "--actor", "auditor"],
    );
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");

    // The export is in the chain, with what it disclosed and no text.
    let entry = {
        let store = server.app.store.clone();
        let mut found = Vec::new();
        assert!(
            eventually(T, async || {
                found = store
                    .list_audit(AuditFilter {
                        action: Some("compliance.export".into()),
                        limit: 10,
                        ..AuditFilter::default()
                    })
                    .await
                    .expect("list");
                found.len() >= 2
            })
            .await,
            "compliance.export entries: {:?}",
            found
                .iter()
                .map(|e| (e.seq, &e.details["sha256"]))
                .collect::<Vec<_>>()
        );
        found
            .into_iter()
            .find(|e| e.details["sha256"] == summary.sha256.as_str())
            .expect("the in-process export's entry")
    };
    assert_eq!(entry.actor_id, Some(auditor.id));
    assert!(entry.seq > summary.chain_head.seq);
    assert_eq!(entry.details["via"], "export");
    assert_eq!(entry.details["sha256"], summary.sha256.as_str());
    assert_eq!(entry.details["scope"]["channelId"], ch.to_string());
    assert_eq!(entry.details["counts"]["messages"], 4);
    assert_eq!(
        entry.details["disclosed"],
        serde_json::json!([{"channelId": ch, "seqRanges": [[first, fourth]]}])
    );
    assert!(!entry.details.to_string().contains("metformin"));

    // One byte changed anywhere fails it: first, middle, inside a
    // message's text, inside an audit entry, the last.
    let bytes = std::fs::read(&file).expect("read");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let at = |needle: &str| text.find(needle).expect("needle in the file");
    let positions = [
        0,
        bytes.len() / 2,
        at("metformin 500"),
        at("\"prevHash\"") + 13,
        bytes.len() - 2,
    ];
    for (i, position) in positions.into_iter().enumerate() {
        let copy = copy_export(&file, &format!("tampered-{i}.jsonl"));
        let mut changed = bytes.clone();
        changed[position] ^= 0x01;
        std::fs::write(&copy, &changed).expect("write");
        let verdict = verify(&config, &copy, None).await;
        assert!(!verdict.ok, "byte {position} changed: {verdict:?}");
        assert!(!verdict.sha256_matches && !verdict.signature_valid);
    }
    let copy = copy_export(&file, "tampered-cli.jsonl");
    let mut changed = bytes.clone();
    changed[at("metformin 500")] = b'M';
    std::fs::write(&copy, &changed).expect("write");
    let out = courier(&server, &["export", "verify", copy.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(printed_json(&out)["sha256Matches"], false);

    // A signature re-pointed at another head (or hash) does not verify.
    let copy = copy_export(&file, "forged.jsonl");
    let sig_path = export::format::signature_path(&copy);
    let mut sig: Value =
        serde_json::from_slice(&std::fs::read(&sig_path).expect("sig")).expect("JSON");
    sig["chainHead"]["seq"] = Value::from(summary.chain_head.seq - 1);
    std::fs::write(&sig_path, serde_json::to_vec(&sig).expect("JSON")).expect("write");
    let verdict = verify(&config, &copy, None).await;
    assert!(!verdict.ok && !verdict.signature_valid, "{verdict:?}");

    // A stored audit row changed after the export fails it.
    tamper_sql(
        &config,
        &format!(
            "UPDATE audit_logs SET action = 'message.nothing' WHERE seq = {}",
            edit_entry.seq
        ),
    )
    .await;
    let verdict = verify(&config, &file, None).await;
    assert!(!verdict.ok, "{verdict:?}");
    assert!(!verdict.head_held, "the chain under the head is broken");
    let out = courier(&server, &["export", "verify", file_arg]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    server.stop().await;
}

async fn a_patient_export_holds_only_that_patients_channels(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let config = config_of(&server);
    let _auditor = server.user("auditor", Role::Admin).await;
    let doc = server.user("doc", Role::User).await;
    let p = PatientRef::parse("Patient/123").expect("ref");
    let q = PatientRef::parse("Patient/456").expect("ref");
    let cipher = server.app.realtime.cipher.clone();
    let link = |channel: ChannelId, patient: &PatientRef| ChannelPatch {
        patient: Some(Some(
            PatientSeal::new(&cipher, RefOwner::Channel(channel), patient).expect("seal"),
        )),
        ..ChannelPatch::default()
    };
    // P's own channel; Q's channel; a general channel with one message
    // about P, one about Q and one about no one.
    let p_channel = server
        .channel("p-care", ChannelKind::Private, &doc, &[])
        .await;
    let q_channel = server
        .channel("q-care", ChannelKind::Private, &doc, &[])
        .await;
    let general = server
        .channel("rounds", ChannelKind::Private, &doc, &[])
        .await;
    let store = server.app.store.clone();
    store
        .update_channel(p_channel, link(p_channel, &p))
        .await
        .expect("link P");
    store
        .update_channel(q_channel, link(q_channel, &q))
        .await
        .expect("link Q");

    let mut c = server.client(&doc, Encoding::MessagePack).await;
    for ch in [p_channel, q_channel, general] {
        c.join(ch, None).await.expect("join");
    }
    send(&mut c, p_channel, "P: stable overnight").await;
    send(&mut c, p_channel, "P: discharge tomorrow").await;
    // In P's channel, a message about Q is Q's, not P's.
    let q_in_p = send_for_patient(&mut c, p_channel, "Q: consult requested", &q).await;
    send(&mut c, q_channel, "Q: labs pending").await;
    send(&mut c, general, "rounds at 8").await;
    let p_in_general = send_for_patient(&mut c, general, "P: needs a bed", &p).await;
    send_for_patient(&mut c, general, "Q: allergy noted", &q).await;

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("patient.jsonl");
    let summary = export::export(
        &config,
        &ExportOptions {
            scope: ExportScope::Patient(p.clone()),
            out: file.clone(),
            actor: "auditor".into(),
        },
    )
    .await
    .expect("export");
    let all = lines(&file);
    let tag = cipher.active_patient_tag(&p).expect("tag");
    assert_eq!(all[0]["scope"]["patientTag"], tag.as_str());
    assert!(
        !std::fs::read_to_string(&file)
            .expect("read")
            .contains("\"scope\":{\"patientRef\""),
        "the header names the patient by tag"
    );
    let mut exported: Vec<String> = of_type(&all, "channel")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    exported.sort();
    let mut expected = vec![p_channel.to_string(), general.to_string()];
    expected.sort();
    assert_eq!(
        exported, expected,
        "P's channel and the one with a message about P"
    );
    let texts: Vec<&str> = of_type(&all, "message")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(
        texts,
        if exported[0] == p_channel.to_string() {
            [
                "P: stable overnight",
                "P: discharge tomorrow",
                "P: needs a bed",
            ]
        } else {
            [
                "P: needs a bed",
                "P: stable overnight",
                "P: discharge tomorrow",
            ]
        },
        "only the messages concerning P"
    );
    let p_channel_line = of_type(&all, "channel")
        .into_iter()
        .find(|c| c["id"] == p_channel.to_string())
        .expect("P's channel");
    assert_eq!(p_channel_line["patientRef"], "Patient/123");
    let own = of_type(&all, "message")
        .into_iter()
        .find(|m| m["seq"] == p_in_general && m["channelId"] == general.to_string())
        .expect("the general channel's message about P");
    assert_eq!(own["patientRef"], "Patient/123");
    assert_eq!(summary.counts.messages, 3);

    let verdict = verify(&config, &file, None).await;
    assert!(verdict.ok, "{verdict:?}");

    // The disclosure names exactly the seqs decrypted.
    let store = server.app.store.clone();
    let mut entries = Vec::new();
    assert!(
        eventually(T, async || {
            entries = store
                .list_audit(AuditFilter {
                    action: Some("compliance.export".into()),
                    limit: 10,
                    ..AuditFilter::default()
                })
                .await
                .expect("list");
            !entries.is_empty()
        })
        .await
    );
    let details = &entries[0].details;
    assert_eq!(details["scope"]["patientTag"], tag.as_str());
    assert!(!details.to_string().contains("Patient/123"));
    let disclosed = details["disclosed"].as_array().expect("disclosed");
    let ranges_of = |ch: ChannelId| {
        disclosed
            .iter()
            .find(|d| d["channelId"] == ch.to_string())
            .map(|d| d["seqRanges"].clone())
    };
    assert_eq!(ranges_of(p_channel), Some(serde_json::json!([[1, 2]])));
    assert!(q_in_p == 3);
    assert_eq!(
        ranges_of(general),
        Some(serde_json::json!([[p_in_general, p_in_general]]))
    );
    assert_eq!(ranges_of(q_channel), None);

    // Someone without patients.read may not take a patient's export.
    let _ = server.user("plain-admin-less", Role::Moderator).await;
    let refused = export::export(
        &config,
        &ExportOptions {
            scope: ExportScope::Patient(p),
            out: dir.path().join("refused.jsonl"),
            actor: "plain-admin-less".into(),
        },
    )
    .await;
    assert!(
        matches!(refused, Err(export::ExportError::Refused(_))),
        "{refused:?}"
    );
    server.stop().await;
}
