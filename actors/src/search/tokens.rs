//! Words of a text, normalized: what the blind index keys.
//!
//! A text is split into words at every character that is not alphanumeric
//! (Unicode `char::is_alphanumeric`, after normalization). Each word is
//! 1. decomposed (Unicode NFKD) with its combining marks dropped, so accents
//!    are stripped and compatibility forms fold (`Café` → `Cafe`, `ﬁ` → `fi`);
//! 2. lowercased with Unicode's full lowercase mapping (`char::to_lowercase`;
//!    close to simple case folding: `CAFÉ`, `Café` and `cafe` agree);
//! 3. stemmed by one light suffix rule for plurals: a word of more than three
//!    characters ending in `ies` loses it for `y`, one ending in `s` (not
//!    `ss`, `us` or `is`) loses the `s` (`notes` → `note`, `allergies` →
//!    `allergy`). No other stemming and no prefix grams: a query finds whole
//!    words only.
//!
//! Words longer than [`MAX_WORD_CHARS`] characters are cut there; a text
//! yields each distinct word once. Pure: no keys, no I/O.

use std::collections::BTreeSet;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// A word longer than this (in characters, after normalization) is indexed by
/// its first this many characters.
pub const MAX_WORD_CHARS: usize = 64;

/// The distinct normalized words of `text`, in sorted order.
pub fn words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    // Characters in `word` (kept beside it: counting them each time made a
    // long word quadratic).
    let mut chars = 0;
    let mut push = |c: char, word: &mut String, chars: &mut usize| {
        if is_combining_mark(c) {
            return;
        }
        if c.is_alphanumeric() {
            if *chars < MAX_WORD_CHARS {
                word.extend(c.to_lowercase());
                *chars += 1;
            }
        } else if !word.is_empty() {
            out.insert(stem(std::mem::take(word)));
            *chars = 0;
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            // ASCII is its own compatibility decomposition.
            push(c, &mut word, &mut chars);
        } else {
            // Per character: the canonical reordering a string's NFKD adds
            // moves only combining marks, which are dropped anyway.
            decompose_compatible(c, |d| push(d, &mut word, &mut chars));
        }
    }
    if !word.is_empty() {
        out.insert(stem(word));
    }
    out
}

/// The plural rule of the module doc.
fn stem(mut word: String) -> String {
    if word.chars().count() <= 3 {
        return word;
    }
    if let Some(base) = word.strip_suffix("ies") {
        let mut base = base.to_owned();
        base.push('y');
        return base;
    }
    if word.ends_with('s')
        && !(word.ends_with("ss") || word.ends_with("us") || word.ends_with("is"))
    {
        word.pop();
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str) -> Vec<String> {
        words(text).into_iter().collect()
    }

    #[test]
    fn case_and_accents_fold() {
        assert_eq!(w("Café"), w("cafe"));
        assert_eq!(w("CAFÉ"), w("café"));
        assert_eq!(w("Crème brûlée"), vec!["brulee", "creme"]);
        assert_eq!(w("ﬁne"), vec!["fine"]);
    }

    #[test]
    fn splits_on_anything_not_alphanumeric_and_dedups() {
        assert_eq!(
            w("blood-pressure: 120/80, blood!"),
            vec!["120", "80", "blood", "pressure"]
        );
        assert!(w("  ,;!  ").is_empty());
        assert!(w("").is_empty());
    }

    #[test]
    fn plurals_stem() {
        assert_eq!(w("notes"), vec!["note"]);
        assert_eq!(w("allergies"), vec!["allergy"]);
        assert_eq!(w("glass"), vec!["glass"]);
        assert_eq!(w("virus"), vec!["virus"]);
        assert_eq!(w("bus"), vec!["bus"]);
    }

    #[test]
    fn long_words_are_cut() {
        let long = "a".repeat(200);
        let got = w(&long);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].chars().count(), MAX_WORD_CHARS);
    }
}
