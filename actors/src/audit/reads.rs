//! Reads of messages, as the audit chain records them: which messages of
//! which channel someone was shown, by what path.
//!
//! Every entry that discloses messages (a history page, one message, a
//! join's recovery replay, live pushes delivered, the flag queue, an
//! export, ...) carries, in its `details`:
//!
//! - `channelId` and `seqRanges`: `[[first, last], ...]`, the inclusive
//!   ranges of the seqs disclosed, ascending and merged;
//! - or, for an entry that discloses several channels at once,
//!   `disclosed: [{"channelId": ..., "seqRanges": [[..]]}, ...]`;
//! - `via`: the path (`history`, `message`, `recovery`, `push`, `console`,
//!   `moderation`, `export`, ...);
//! - `breakGlass`: the grant id, when the read was made under break-glass
//!   access.
//!
//! The entry's `actorId` is the reader, `ip` and `userAgent` where they
//! read from. [`crate::compliance::disclosures`] builds the accounting of
//! disclosures per patient from these entries. Pure: no I/O.

use std::collections::BTreeMap;

use courier_protocol::ChannelId;
use serde_json::{json, Map, Value};

/// An inclusive range of seqs, `[first, last]`.
pub type SeqRange = [u64; 2];

/// Sorts and merges `seqs` into inclusive ranges: `[3, 1, 2, 7, 5, 6]`
/// gives `[[1, 3], [5, 7]]`. Duplicates count once; no seq gives none.
pub fn seq_ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<SeqRange> {
    let mut seqs: Vec<u64> = seqs.into_iter().collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut ranges: Vec<SeqRange> = Vec::new();
    for seq in seqs {
        match ranges.last_mut() {
            Some(last) if last[1].checked_add(1) == Some(seq) => last[1] = seq,
            _ => ranges.push([seq, seq]),
        }
    }
    ranges
}

/// The details of an entry that discloses the messages `seqs` of
/// `channel` by `via`: `{"channelId", "seqRanges", "via"}`. Add the
/// path's own fields (`count`, `messageId`, `connId`, ...) to the object.
pub fn details(channel: ChannelId, seqs: impl IntoIterator<Item = u64>, via: &str) -> Value {
    details_of_ranges(channel, &seq_ranges(seqs), via)
}

/// As [`details`], from ranges already merged (ascending, disjoint).
pub fn details_of_ranges(channel: ChannelId, ranges: &[SeqRange], via: &str) -> Value {
    json!({"channelId": channel, "seqRanges": ranges, "via": via})
}

/// The details of an entry that discloses messages of several channels at
/// once: `{"disclosed": [{"channelId", "seqRanges"}, ...], "via"}`, the
/// channels in id order, each with its seqs merged. Channels without a
/// seq are left out.
pub fn details_multi(reads: impl IntoIterator<Item = (ChannelId, u64)>, via: &str) -> Value {
    let mut by_channel: BTreeMap<ChannelId, Vec<u64>> = BTreeMap::new();
    for (channel, seq) in reads {
        by_channel.entry(channel).or_default().push(seq);
    }
    let disclosed: Vec<Value> = by_channel
        .into_iter()
        .map(|(channel, seqs)| json!({"channelId": channel, "seqRanges": seq_ranges(seqs)}))
        .collect();
    json!({"disclosed": disclosed, "via": via})
}

/// Marks `details` (an object) as a read made under the break-glass grant
/// `grant`, when there is one: `breakGlass: "<grant id>"`.
pub fn mark_break_glass(details: &mut Value, grant: Option<impl std::fmt::Display>) {
    if let (Some(grant), Some(map)) = (grant, details.as_object_mut()) {
        map.insert("breakGlass".into(), Value::String(grant.to_string()));
    }
}

/// One channel's messages disclosed by an entry, as read back from its
/// details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disclosed {
    /// The channel.
    pub channel_id: ChannelId,
    /// Its seqs disclosed, ascending and merged (as stored; see
    /// [`normalize`]).
    pub seq_ranges: Vec<SeqRange>,
    /// The grant the read was made under, if any (the entry's, or the
    /// channel item's own for a multi-channel entry).
    pub break_glass: Option<String>,
}

/// What an entry's `details` say it disclosed: one item for the
/// `channelId`/`seqRanges` shape, one per channel for `disclosed`, none for
/// an entry of another kind (or details that do not parse: such an entry
/// is no disclosure entry written by Courier).
pub fn disclosed(details: &Value) -> Vec<Disclosed> {
    let Some(map) = details.as_object() else {
        return Vec::new();
    };
    let entry_grant = grant_of(map);
    let mut found = Vec::new();
    if let Some(item) = item_of(map, entry_grant.clone()) {
        found.push(item);
    }
    if let Some(items) = map.get("disclosed").and_then(Value::as_array) {
        found.extend(
            items
                .iter()
                .filter_map(Value::as_object)
                .filter_map(|m| item_of(m, grant_of(m).or_else(|| entry_grant.clone()))),
        );
    }
    found
}

/// The `via` of an entry's details, when it has one.
pub fn via(details: &Value) -> Option<&str> {
    details.get("via").and_then(Value::as_str)
}

fn grant_of(map: &Map<String, Value>) -> Option<String> {
    map.get("breakGlass")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn item_of(map: &Map<String, Value>, break_glass: Option<String>) -> Option<Disclosed> {
    let channel_id = map
        .get("channelId")
        .and_then(Value::as_str)?
        .parse::<ChannelId>()
        .ok()?;
    let ranges = map.get("seqRanges")?.as_array()?;
    let mut seq_ranges = Vec::with_capacity(ranges.len());
    for range in ranges {
        let pair = range.as_array()?;
        let (first, last) = match pair.as_slice() {
            [first, last] => (first.as_u64()?, last.as_u64()?),
            _ => return None,
        };
        if first > last {
            return None;
        }
        seq_ranges.push([first, last]);
    }
    Some(Disclosed {
        channel_id,
        seq_ranges: normalize(seq_ranges),
        break_glass,
    })
}

/// Ranges sorted and merged (overlapping or adjacent ones joined), as
/// [`seq_ranges`] makes them; what [`contains`] expects.
pub fn normalize(mut ranges: Vec<SeqRange>) -> Vec<SeqRange> {
    ranges.sort_unstable();
    let mut merged: Vec<SeqRange> = Vec::with_capacity(ranges.len());
    for [first, last] in ranges {
        match merged.last_mut() {
            Some(prev) if first <= prev[1].saturating_add(1) => prev[1] = prev[1].max(last),
            _ => merged.push([first, last]),
        }
    }
    merged
}

/// Whether `seq` is in one of `ranges` (normalized: ascending, disjoint).
pub fn contains(ranges: &[SeqRange], seq: u64) -> bool {
    let i = ranges.partition_point(|r| r[1] < seq);
    ranges.get(i).is_some_and(|r| r[0] <= seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seqs_merge_into_inclusive_ranges() {
        assert_eq!(
            seq_ranges([3, 1, 2, 7, 5, 6, 9]),
            vec![[1, 3], [5, 7], [9, 9]]
        );
        assert_eq!(seq_ranges([4, 4, 4]), vec![[4, 4]]);
        assert!(seq_ranges(std::iter::empty()).is_empty());
        assert_eq!(
            seq_ranges([u64::MAX, u64::MAX - 1]),
            vec![[u64::MAX - 1, u64::MAX]]
        );
    }

    #[test]
    fn details_read_back_as_written() {
        let channel = ChannelId::new();
        let mut d = details(channel, [10, 11, 12, 20], "history");
        d["count"] = 4.into();
        assert_eq!(d["seqRanges"], json!([[10, 12], [20, 20]]));
        assert_eq!(via(&d), Some("history"));
        assert_eq!(
            disclosed(&d),
            vec![Disclosed {
                channel_id: channel,
                seq_ranges: vec![[10, 12], [20, 20]],
                break_glass: None
            }]
        );
        mark_break_glass(&mut d, Some("g-1"));
        assert_eq!(disclosed(&d)[0].break_glass.as_deref(), Some("g-1"));
        mark_break_glass(&mut d, None::<String>);
        assert_eq!(d["breakGlass"], "g-1");
    }

    #[test]
    fn several_channels_read_back_each_with_its_ranges() {
        let (a, b) = (ChannelId::new(), ChannelId::new());
        let d = details_multi([(a, 2), (b, 9), (a, 1), (a, 5)], "moderation");
        let mut found = disclosed(&d);
        found.sort_by_key(|x| x.channel_id);
        let mut want = vec![
            Disclosed {
                channel_id: a,
                seq_ranges: vec![[1, 2], [5, 5]],
                break_glass: None,
            },
            Disclosed {
                channel_id: b,
                seq_ranges: vec![[9, 9]],
                break_glass: None,
            },
        ];
        want.sort_by_key(|x| x.channel_id);
        assert_eq!(found, want);
    }

    #[test]
    fn entries_of_other_kinds_disclose_nothing() {
        let channel = ChannelId::new();
        assert!(disclosed(&json!({"channelId": channel, "count": 3})).is_empty());
        assert!(disclosed(&json!({"channelId": "nope", "seqRanges": [[1, 2]]})).is_empty());
        assert!(disclosed(&json!({"channelId": channel, "seqRanges": [[3, 2]]})).is_empty());
        assert!(disclosed(&json!({"channelId": channel, "seqRanges": [[1]]})).is_empty());
        assert!(disclosed(&json!([1, 2])).is_empty());
    }

    proptest! {
        #[test]
        fn ranges_hold_exactly_the_seqs(seqs in proptest::collection::vec(0u64..200, 0..80)) {
            let ranges = seq_ranges(seqs.iter().copied());
            for w in ranges.windows(2) {
                prop_assert!(w[0][1] + 1 < w[1][0], "merged and ascending");
            }
            for seq in 0..200u64 {
                prop_assert_eq!(contains(&ranges, seq), seqs.contains(&seq));
            }
            let mut shuffled = ranges.clone();
            shuffled.reverse();
            prop_assert_eq!(normalize(shuffled), ranges);
        }
    }
}
