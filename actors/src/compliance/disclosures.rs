//! # Disclosures: the accounting of disclosures per patient
//!
//! HIPAA (45 CFR 164.528) gives a patient the right to an accounting of
//! who was shown their records. [`report`] builds it from the audit chain,
//! so it is as tamper-evident as the chain:
//!
//! 1. the patient's messages: every message that concerns them (its tags
//!    under every keyring version, [`MessageCipher::patient_tags`]; the
//!    store's [`patient_message_refs`](crate::durable::store::PatientStore::patient_message_refs),
//!    deleted ones too, since they were readable once);
//! 2. the audit entries of the window `[from, to)` that disclose messages
//!    ([`crate::audit::reads`]: `channelId` + `seqRanges`, or `disclosed`),
//!    whatever their action (`history.read`, `message.delivered`, an
//!    export's, ...);
//! 3. each entry's ranges intersected with the patient's messages of that
//!    channel, less the messages the reader sent themselves (a user who
//!    only wrote disclosed nothing to themselves).
//!
//! Tamper evidence: every entry scanned (the window's, with the one before
//! and the one after it) has its hash recomputed ([`chain::record_hash`])
//! and its link to the one before checked, with no seq missing; any
//! mismatch fails the report ([`DisclosureError::Tampered`]) rather than
//! leaving a row out. The report names the chain head it was built at,
//! which an auditor compares with a signed checkpoint (`courier audit
//! verify` checks the whole chain against them).
//!
//! **Owns** nothing: a pure read of the store. **Takes** a patient and a
//! window, from `GET /api/patients/{ref}/disclosures` and `courier report
//! disclosures`. **A failure** (store down, tampering) fails the report;
//! nothing is written (the callers audit the request).

use std::collections::HashMap;

use courier_protocol::{ChannelId, MessageId, PatientRef, UserId};
use serde::Serialize;

use crate::audit::chain::{self, ChainHead, GENESIS_HASH};
use crate::audit::reads::{self, contains};
use crate::crypto::{CryptoError, MessageCipher};
use crate::durable::store::{AuditRecord, PatientMessageRef, Store, StoreError};

/// How many audit entries one store read takes.
const PAGE: u32 = 5_000;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DisclosureError {
    /// The window is empty or reversed.
    #[error("the window must end after it starts")]
    Window,
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The patient's tags could not be made (no key).
    #[error("the patient's tags cannot be computed: {0}")]
    Crypto(#[from] CryptoError),
    /// The audit chain does not hold together over the entries read: an
    /// entry was edited, removed or inserted. `seq` is the first entry that
    /// cannot be trusted.
    #[error("the audit chain is broken at seq {seq} ({problem}); no report")]
    Tampered { seq: u64, problem: &'static str },
}

/// One disclosure: one audit entry's messages of the patient in one
/// channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DisclosureRow {
    /// The audit entry that records the read.
    pub entry_seq: u64,
    /// Its hash (recomputed and checked).
    pub entry_hash: String,
    /// When (ms since the epoch).
    pub timestamp: i64,
    /// Who read: the entry's actor (`None`: the system).
    pub reader_id: Option<UserId>,
    /// Their username, while the account exists.
    pub reader_username: Option<String>,
    /// From which address.
    pub ip: Option<String>,
    /// With which client.
    pub user_agent: Option<String>,
    /// The entry's action (`history.read`, `message.delivered`, ...).
    pub action: String,
    /// The path (`history`, `message`, `recovery`, `push`, `console`, ...).
    pub via: Option<String>,
    /// The channel.
    pub channel_id: ChannelId,
    /// The patient's messages disclosed, in seq order.
    pub message_ids: Vec<MessageId>,
    /// The break-glass grant the read was made under, if any.
    pub break_glass: Option<String>,
}

/// The accounting of one patient's disclosures over a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DisclosureReport {
    /// The window's start (ms, included).
    pub from: i64,
    /// The window's end (ms, not included).
    pub to: i64,
    /// The chain head when the report was built: no entry after it is used.
    pub chain_head: ChainAt,
    /// The seqs of the entries checked (the window's, and the one before
    /// and after it), `None` when the window has no entry.
    pub scanned: Option<[u64; 2]>,
    /// How many of the patient's messages there are (any reader's).
    pub patient_messages: u64,
    /// The disclosures, by entry seq.
    pub rows: Vec<DisclosureRow>,
}

/// A point of the audit chain: an entry's seq and hash (seq 0 and the
/// genesis hash for an empty chain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainAt {
    pub seq: u64,
    pub hash: String,
}

/// The accounting of disclosures of `patient` over `[from, to)` (see the
/// module doc).
pub async fn report(
    store: &dyn Store,
    cipher: &MessageCipher,
    patient: &PatientRef,
    from: i64,
    to: i64,
) -> Result<DisclosureReport, DisclosureError> {
    if from >= to {
        return Err(DisclosureError::Window);
    }
    let tags = cipher.patient_tags(patient)?;
    let refs = store.patient_message_refs(&tags).await?;
    let patient_messages = refs.len() as u64;
    let by_channel = group(refs);
    let head = ChainHead::after(store.audit_head().await?.as_ref());
    let mut report = DisclosureReport {
        from,
        to,
        chain_head: ChainAt {
            seq: head.seq,
            hash: head.hash.clone(),
        },
        scanned: None,
        patient_messages,
        rows: Vec::new(),
    };
    let Some((lo, hi)) = store.audit_seq_window(from, to).await? else {
        return Ok(report);
    };
    let hi = hi.min(head.seq);
    if lo > hi {
        return Ok(report);
    }
    // The entry before the window links into it; the one after, out of it.
    let first = lo.saturating_sub(1).max(1);
    let last = (hi + 1).min(head.seq);
    report.scanned = Some([first, last]);
    let mut link = Link::new(first);
    let mut names = Names::default();
    let mut after = first - 1;
    while after < last {
        let page = store.audit_range(after, PAGE).await?;
        if page.is_empty() {
            return Err(DisclosureError::Tampered {
                seq: after + 1,
                problem: "entries are missing",
            });
        }
        for record in &page {
            if record.seq > last {
                break;
            }
            link.check(record)?;
            if (from..to).contains(&record.timestamp) {
                disclosures_of(store, record, &by_channel, &mut names, &mut report.rows).await?;
            }
        }
        after = page.last().map_or(last, |r| r.seq);
    }
    if link.next != last + 1 {
        return Err(DisclosureError::Tampered {
            seq: link.next,
            problem: "entries are missing",
        });
    }
    Ok(report)
}

/// The patient's messages by channel, in seq order.
fn group(refs: Vec<PatientMessageRef>) -> HashMap<ChannelId, Vec<PatientMessageRef>> {
    let mut by_channel: HashMap<ChannelId, Vec<PatientMessageRef>> = HashMap::new();
    for r in refs {
        by_channel.entry(r.channel_id).or_default().push(r);
    }
    for refs in by_channel.values_mut() {
        refs.sort_by_key(|r| r.seq);
    }
    by_channel
}

/// The rows one entry contributes: one per channel it disclosed patient
/// messages of (not the reader's own).
async fn disclosures_of(
    store: &dyn Store,
    record: &AuditRecord,
    by_channel: &HashMap<ChannelId, Vec<PatientMessageRef>>,
    names: &mut Names,
    rows: &mut Vec<DisclosureRow>,
) -> Result<(), StoreError> {
    for item in reads::disclosed(&record.details) {
        let Some(messages) = by_channel.get(&item.channel_id) else {
            continue;
        };
        let message_ids: Vec<MessageId> = messages
            .iter()
            .filter(|m| contains(&item.seq_ranges, m.seq) && Some(m.sender_id) != record.actor_id)
            .map(|m| m.message_id)
            .collect();
        if message_ids.is_empty() {
            continue;
        }
        let reader_username = match record.actor_id {
            Some(id) => names.of(store, id).await?,
            None => None,
        };
        rows.push(DisclosureRow {
            entry_seq: record.seq,
            entry_hash: record.hash.clone(),
            timestamp: record.timestamp,
            reader_id: record.actor_id,
            reader_username,
            ip: record.ip.clone(),
            user_agent: record.user_agent.clone(),
            action: record.action.clone(),
            via: reads::via(&record.details).map(str::to_owned),
            channel_id: item.channel_id,
            message_ids,
            break_glass: item.break_glass,
        });
    }
    Ok(())
}

/// The chain check over consecutive entries.
struct Link {
    /// The seq the next entry must have.
    next: u64,
    /// The hash the next entry must link to (unknown for the first entry
    /// read, unless it is the chain's first).
    prev: Option<String>,
}

impl Link {
    fn new(first: u64) -> Self {
        Link {
            next: first,
            prev: (first == 1).then(|| GENESIS_HASH.to_owned()),
        }
    }

    fn check(&mut self, record: &AuditRecord) -> Result<(), DisclosureError> {
        let tampered = |seq, problem| Err(DisclosureError::Tampered { seq, problem });
        if record.seq != self.next {
            return tampered(self.next, "an entry is missing or out of place");
        }
        if chain::record_hash(record) != record.hash {
            return tampered(record.seq, "the entry does not match its hash");
        }
        if self.prev.as_ref().is_some_and(|p| *p != record.prev_hash) {
            return tampered(
                record.seq.saturating_sub(1).max(1),
                "the entry before was rewritten",
            );
        }
        self.next = record.seq + 1;
        self.prev = Some(record.hash.clone());
        Ok(())
    }
}

/// Usernames of readers, read once each.
#[derive(Default)]
struct Names(HashMap<UserId, Option<String>>);

impl Names {
    async fn of(&mut self, store: &dyn Store, id: UserId) -> Result<Option<String>, StoreError> {
        if let Some(name) = self.0.get(&id) {
            return Ok(name.clone());
        }
        let name = store.get_user(id).await?.map(|u| u.username);
        self.0.insert(id, name.clone());
        Ok(name)
    }
}

/// An instant as the report's `from` and `to` take it: milliseconds since
/// the Unix epoch (`1765049000000`), or RFC 3339 (`2026-12-07T16:49:00Z`,
/// `2026-12-07T17:49:00.250+01:00`; a date alone, `2026-12-07`, is its
/// midnight UTC).
pub fn parse_instant(text: &str) -> Result<i64, &'static str> {
    const WHAT: &str = "an instant: ms since the Unix epoch, or RFC 3339";
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Result<i64, &'static str> {
        let part = b.get(from..from + len).ok_or(WHAT)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(WHAT);
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| match b.get(at) {
        Some(c) if allowed.contains(&c.to_ascii_uppercase()) => Ok(()),
        _ => Err(WHAT),
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(WHAT);
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Ok(days * 86_400_000);
    }
    sep(10, b"T ")?;
    sep(13, b":")?;
    sep(16, b":")?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if hour > 23 || minute > 59 || second > 60 {
        return Err(WHAT);
    }
    let mut at = 19;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(WHAT);
        }
        // Milliseconds: the first three digits (padded), the rest dropped.
        let frac = &text[start..at];
        let padded = format!("{:0<3}", &frac[..frac.len().min(3)]);
        ms = padded.parse::<i64>().map_err(|_| WHAT)?;
    }
    let offset_minutes = match b.get(at).map(u8::to_ascii_uppercase) {
        Some(b'Z') if b.len() == at + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == at + 6 => {
            sep(at + 3, b":")?;
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return Err(WHAT);
            }
            let minutes = h * 60 + m;
            if sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return Err(WHAT),
    };
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + ms)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_as_ms_or_rfc3339() {
        assert_eq!(parse_instant("1765049000000"), Ok(1_765_049_000_000));
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_instant("1970-01-01"), Ok(0));
        assert_eq!(parse_instant("2000-03-01T00:00:00Z"), Ok(951_868_800_000));
        assert_eq!(
            parse_instant("2026-12-07T17:49:00.25+01:00"),
            parse_instant("2026-12-07T16:49:00.250Z")
        );
        assert_eq!(
            parse_instant("2026-12-07t16:49:00.999999z"),
            Ok(parse_instant("2026-12-07T16:49:00Z").unwrap() + 999)
        );
        assert_eq!(parse_instant("1969-12-31T23:59:59Z"), Ok(-1_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-29",
            "2026-12-07T25:00:00Z",
            "2026-12-07T16:49:00",
            "2026-12-07T16:49:00+0100",
            "2026-12-07T16:49:00.Z",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad:?}");
        }
        assert!(parse_instant("2024-02-29").is_ok());
    }

    fn record(seq: u64, prev: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            timestamp: 1_000 + seq as i64,
            actor_id: None,
            ip: None,
            user_agent: None,
            action: "test".into(),
            details: serde_json::json!({}),
            prev_hash: prev.to_owned(),
            hash: String::new(),
        };
        r.hash = chain::record_hash(&r);
        r
    }

    #[test]
    fn the_link_check_finds_edits_gaps_and_rewrites() {
        let a = record(1, GENESIS_HASH);
        let b = record(2, &a.hash);
        let c = record(3, &b.hash);
        let mut link = Link::new(1);
        for r in [&a, &b, &c] {
            link.check(r).expect("intact");
        }
        // Started mid-chain, the first entry's link is not known.
        let mut link = Link::new(2);
        link.check(&b).expect("b");
        link.check(&c).expect("c");

        let mut edited = b.clone();
        edited.ip = Some("6.6.6.6".into());
        let mut link = Link::new(1);
        link.check(&a).unwrap();
        assert!(matches!(
            link.check(&edited),
            Err(DisclosureError::Tampered { seq: 2, .. })
        ));

        let mut link = Link::new(1);
        link.check(&a).unwrap();
        assert!(matches!(
            link.check(&c),
            Err(DisclosureError::Tampered { seq: 2, .. })
        ));

        // b rewritten with a fresh hash: c no longer links to it.
        let mut rewritten = b.clone();
        rewritten.ip = Some("6.6.6.6".into());
        rewritten.hash = chain::record_hash(&rewritten);
        let mut link = Link::new(1);
        link.check(&a).unwrap();
        link.check(&rewritten).unwrap();
        assert!(matches!(
            link.check(&c),
            Err(DisclosureError::Tampered { seq: 2, .. })
        ));
    }
}
