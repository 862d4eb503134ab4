//! Properties of the audit hash chain over its public API: whatever set of
//! edits is made to a stored chain (a field changed, with or without its
//! hash recomputed; a row deleted; two rows' contents swapped; a row moved
//! to another seq; the tail truncated), verification reports it, and names
//! the first edited seq as `first_bad_seq`.
//!
//! The chain is fed to the verifier in seq order, as `courier audit verify`
//! reads it from the store, with signed checkpoints either at the head only
//! or at every seq.

use std::collections::BTreeSet;

use courier_actors::audit::chain::{
    chain, record_hash, sign_checkpoint, ChainHead, ChainVerifier, PendingAudit, VerifyReport,
    GENESIS_HASH,
};
use courier_actors::durable::store::{AuditRecord, Checkpoint};
use courier_protocol::UserId;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn pending() -> impl Strategy<Value = PendingAudit> {
    (
        any::<i64>(),
        proptest::option::of(any::<u128>()),
        proptest::option::of("[0-9a-f.:]{0,39}"),
        proptest::option::of(".{0,20}"),
        "[a-z_.]{1,24}",
        proptest::collection::btree_map("[a-zA-Z]{1,8}", json_value(), 0..4),
    )
        .prop_map(
            |(timestamp, actor, ip, user_agent, action, details)| PendingAudit {
                timestamp,
                actor_id: actor.map(|a| UserId(Uuid::from_u128(a))),
                ip,
                user_agent,
                action,
                details: Value::Object(details.into_iter().collect()),
            },
        )
}

/// An edit of one field of one row.
#[derive(Clone, Copy, Debug)]
enum Field {
    Timestamp,
    Actor,
    Ip,
    UserAgent,
    Action,
    Details,
    PrevHash,
    Hash,
    /// The row is moved past the end of the chain (its seq changed).
    SeqAway,
    /// The action changed and the row's hash recomputed, so the row is
    /// consistent in itself; only the link from the next row (or a
    /// checkpoint at its seq) gives it away.
    Rewrite,
}

#[derive(Clone, Debug)]
enum Tamper {
    Field(prop::sample::Index, Field),
    Delete(prop::sample::Index),
    /// Two rows exchanged whole and read back in seq order: their contents
    /// swap under the seqs.
    Swap(prop::sample::Index, prop::sample::Index),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checkpoints {
    Head,
    Every,
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Timestamp),
        Just(Field::Actor),
        Just(Field::Ip),
        Just(Field::UserAgent),
        Just(Field::Action),
        Just(Field::Details),
        Just(Field::PrevHash),
        Just(Field::Hash),
        Just(Field::SeqAway),
        Just(Field::Rewrite),
    ]
}

fn tamper() -> impl Strategy<Value = Tamper> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        3 => (at(), field()).prop_map(|(i, f)| Tamper::Field(i, f)),
        1 => at().prop_map(Tamper::Delete),
        1 => (at(), at()).prop_map(|(i, j)| Tamper::Swap(i, j)),
    ]
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn verify(records: &[AuditRecord], checkpoints: &[Checkpoint]) -> VerifyReport {
    let key = signing_key().verifying_key();
    let mut v = ChainVerifier::with_checkpoints(checkpoints, |id| (id == "k").then_some(key));
    records.iter().for_each(|r| v.feed(r));
    v.finish()
}

fn edit_field(r: &mut AuditRecord, field: Field, n: u64) {
    match field {
        Field::Timestamp => r.timestamp = r.timestamp.wrapping_add(1),
        Field::Actor => {
            r.actor_id = match r.actor_id {
                Some(_) => None,
                None => Some(UserId(Uuid::from_u128(7))),
            }
        }
        Field::Ip => r.ip = Some(format!("{}'", r.ip.clone().unwrap_or_default())),
        Field::UserAgent => {
            r.user_agent = match &r.user_agent {
                Some(_) => None,
                None => Some(String::new()),
            }
        }
        Field::Action => r.action.push('!'),
        Field::Details => r.details["\u{1}edited"] = json!(true),
        Field::PrevHash => r.prev_hash = GENESIS_HASH.replace('0', "f"),
        Field::Hash => {
            r.hash = record_hash(&AuditRecord {
                seq: r.seq + 1,
                ..r.clone()
            })
        }
        Field::SeqAway => r.seq += n + 1,
        Field::Rewrite => {
            r.action.push('!');
            r.hash = record_hash(r);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_edits_are_detected_at_the_first_edited_seq(
        entries in proptest::collection::vec(pending(), 1..14),
        tampers in proptest::collection::vec(tamper(), 0..4),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
        checkpoints in prop_oneof![Just(Checkpoints::Head), Just(Checkpoints::Every)],
    ) {
        let (records, head) = chain(&ChainHead::genesis(), entries);
        let n = head.seq;
        prop_assert_eq!(n, records.len() as u64);
        let signed: Vec<Checkpoint> = match checkpoints {
            Checkpoints::Head => vec![sign_checkpoint(&signing_key(), "k", n, &head.hash, 1)],
            Checkpoints::Every => records
                .iter()
                .map(|r| sign_checkpoint(&signing_key(), "k", r.seq, &r.hash, 1))
                .collect(),
        };
        prop_assert!(verify(&records, &signed).ok);

        // Rows keep their original seq beside them while being edited.
        let mut rows: Vec<(u64, AuditRecord)> = records.iter().map(|r| (r.seq, r.clone())).collect();
        let mut touched = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        let mut fields = Vec::new();
        // Each row is edited at most once, so that no two edits cancel out.
        for t in &tampers {
            match t {
                Tamper::Field(i, f) => {
                    let i = i.index(n as usize);
                    if touched.insert(i as u64 + 1) {
                        fields.push((i, *f));
                    }
                }
                Tamper::Delete(i) => {
                    let i = i.index(n as usize);
                    if touched.insert(i as u64 + 1) {
                        deleted.insert(i as u64 + 1);
                    }
                }
                Tamper::Swap(i, j) => {
                    let (i, j) = (i.index(n as usize), j.index(n as usize));
                    let (si, sj) = (i as u64 + 1, j as u64 + 1);
                    if i != j && !touched.contains(&si) && !touched.contains(&sj) {
                        let (a, b) = (rows[i].1.clone(), rows[j].1.clone());
                        rows[i].1 = AuditRecord { seq: a.seq, ..b };
                        rows[j].1 = AuditRecord { seq: b.seq, ..a };
                        touched.extend([si, sj]);
                    }
                }
            }
        }
        let keep = truncate.map_or(n, |k| k.index(n as usize + 1) as u64);
        let survives = |seq: u64| seq <= keep && !deleted.contains(&seq);
        for (i, f) in fields {
            let seq = i as u64 + 1;
            let mut f = f;
            if let Field::Rewrite = f {
                // A consistent rewrite shows only in the link from the next
                // row, when that row is intact and read, or in a checkpoint
                // at its own seq. Otherwise the first inconsistency the
                // verifier can see is later, so make it an ordinary edit.
                let next_intact = survives(seq + 1) && !touched.contains(&(seq + 1));
                if checkpoints == Checkpoints::Head && !next_intact {
                    f = Field::Action;
                }
            }
            edit_field(&mut rows[i].1, f, n);
        }
        rows.retain(|(seq, _)| survives(*seq));
        let mut tampered: Vec<AuditRecord> = rows.into_iter().map(|(_, r)| r).collect();
        // The store reads in seq order.
        tampered.sort_by_key(|r| r.seq);

        let expected = touched
            .iter()
            .copied()
            .filter(|s| *s <= keep)
            .chain((keep < n).then_some(keep + 1))
            .min();
        let report = verify(&tampered, &signed);
        prop_assert_eq!(report.first_bad_seq, expected, "{:?}, kept {} of {}", tampers, keep, n);
        prop_assert_eq!(report.ok, expected.is_none());
        prop_assert_eq!(report.entries, tampered.len() as u64);
    }
}
