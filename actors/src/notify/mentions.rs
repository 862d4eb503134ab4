//! `@username` in a message's text: the names a send or an edit mentions.
//!
//! Pure. A name follows the username rule of `src/auth/policy.rs` (3 to 32
//! ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit)
//! and an `@` that starts the text or follows a character that cannot be
//! part of a name (so `a@b.org` names nobody). A sentence's final `.` or
//! `-` may follow a name: both the run and the run without them are
//! candidates, and the store resolves whichever is a member.
//! [`Realtime::publish`](crate::realtime::Realtime::publish) resolves the
//! candidates to the channel's members; names of non-members are ignored.

/// At most this many distinct names are looked up per message; the rest
/// are not mentions.
pub const MAX_MENTIONS: usize = 20;

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The candidate usernames `text` mentions, distinct, in order of first
/// appearance, at most [`MAX_MENTIONS`]. No `@`, no allocation.
pub fn candidates(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if !text.contains('@') {
        return out;
    }
    let mut push = |name: &str| {
        let len = name.len();
        if (3..=32).contains(&len)
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !out.iter().any(|n| n == name)
            && out.len() < MAX_MENTIONS
        {
            out.push(name.to_owned());
        }
    };
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if c == '@' && !prev.is_some_and(name_char) {
            let rest = &text[i + 1..];
            let end = rest.find(|c: char| !name_char(c)).unwrap_or(rest.len());
            let run = &rest[..end];
            push(run);
            let trimmed = run.trim_end_matches(['.', '-']);
            if trimmed.len() != run.len() {
                push(trimmed);
            }
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn finds_names_in_order_once() {
        assert_eq!(
            candidates("@alice and @bob.smith, then @alice again"),
            ["alice", "bob.smith"]
        );
        assert_eq!(candidates("hi @carol."), ["carol.", "carol"]);
        assert_eq!(candidates("(@dave_1)"), ["dave_1"]);
    }

    #[test]
    fn ignores_addresses_and_bad_names() {
        assert!(candidates("mail a@b.org or x@yz").is_empty());
        assert!(candidates("@ab @_underscore @").is_empty());
        assert!(candidates(&format!("@{}", "a".repeat(33))).is_empty());
        assert!(candidates("no mentions").is_empty());
    }

    #[test]
    fn caps_the_count() {
        let text: String = (0..30).map(|i| format!("@user{i:02} ")).collect();
        assert_eq!(candidates(&text).len(), super::MAX_MENTIONS);
    }
}
