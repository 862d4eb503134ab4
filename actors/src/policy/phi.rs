//! Detection of protected health information (PHI) in message text.
//!
//! [`PhiDetector`] flags the kinds of identifier a text contains (US social
//! security numbers, medical record numbers, dates of birth, phone numbers,
//! e-mail addresses) so that a message can be marked `contains_phi` and the
//! event audited. It reports kinds only, never the matched text.
//!
//! The patterns are compiled once into one ASCII-only [`RegexSet`], so a scan
//! is a single pass over the text; it runs on every message. They favour
//! precision for ordinary chat: an SSN must be `ddd-dd-dddd` (or follow
//! "SSN"), an MRN must follow "MRN" or "medical record number", a bare date
//! must be a full ISO (`1984-03-12`) or US (`03/12/1984`) date with a
//! plausible month and day, and phone numbers need ten digits in a
//! recognisable grouping.

use std::fmt;
use std::str::FromStr;

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// What can go wrong configuring PHI detection.
#[derive(Debug, thiserror::Error)]
pub enum PhiError {
    /// A configured kind name is not one of [`PhiKind::ALL`].
    #[error("unknown PHI kind {0:?} (expected ssn, mrn, date_of_birth, phone or email)")]
    UnknownKind(String),
}

/// A kind of identifier the detector looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhiKind {
    /// A US social security number.
    Ssn,
    /// A medical record number.
    Mrn,
    /// A date of birth (or a full calendar date).
    DateOfBirth,
    /// A telephone number.
    Phone,
    /// An e-mail address.
    Email,
}

impl PhiKind {
    /// Every kind, in report order.
    pub const ALL: [PhiKind; 5] = [
        PhiKind::Ssn,
        PhiKind::Mrn,
        PhiKind::DateOfBirth,
        PhiKind::Phone,
        PhiKind::Email,
    ];

    /// The configuration and wire name (`date_of_birth`).
    pub fn as_str(self) -> &'static str {
        match self {
            PhiKind::Ssn => "ssn",
            PhiKind::Mrn => "mrn",
            PhiKind::DateOfBirth => "date_of_birth",
            PhiKind::Phone => "phone",
            PhiKind::Email => "email",
        }
    }

    /// The patterns of this kind (ASCII, compiled case-insensitively).
    fn patterns(self) -> &'static [&'static str] {
        match self {
            PhiKind::Ssn => &[
                r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
                r"\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|num|#))?)\s*[:#]?\s*[0-9]{3}[\s.-]?[0-9]{2}[\s.-]?[0-9]{4}\b",
            ],
            PhiKind::Mrn => &[
                r"\bmrn[:#\s]*[0-9]{6,10}\b",
                r"\bmedical\s+record\s+(?:number|no\.?|num|#)?[:#\s]*[0-9]{6,10}\b",
            ],
            PhiKind::DateOfBirth => &[
                // A birth keyword followed by a date in any common form.
                concat!(
                    r"\b(?:dob|d\.o\.b\.?|born(?:\s+on)?|date\s+of\s+birth|birth\s*date|birthday)",
                    r"\s*[:,-]?\s*(?:",
                    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
                    r"|[0-9]{1,2}[/.-][0-9]{1,2}[/.-](?:[0-9]{4}|[0-9]{2})",
                    r"|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+[0-9]{1,2}(?:st|nd|rd|th)?,?\s+[0-9]{4}",
                    r"|[0-9]{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+[0-9]{4}",
                    r")\b"
                ),
                // A full ISO date: 1900-2099, month 01-12, day 01-31.
                r"\b(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\b",
                // A full US date with a four-digit year.
                r"\b(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12][0-9]|3[01])/(?:19|20)[0-9]{2}\b",
            ],
            PhiKind::Phone => &[
                // (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567
                r"(?:\+?\b1[\s.-]?)?(?:\([0-9]{3}\)\s?|\b[0-9]{3}[\s.-])[0-9]{3}[\s.-][0-9]{4}\b",
                // International: +44 20 7946 0958, +33 1 23 45 67 89
                r"\+[1-9][0-9]{0,2}(?:[\s.-]?[0-9]{1,4}){3,5}\b",
            ],
            PhiKind::Email => &[r"\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b"],
        }
    }
}

impl fmt::Display for PhiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PhiKind {
    type Err = PhiError;

    /// Parses a configuration name (`ssn`, `mrn`, `date_of_birth` or `dob`,
    /// `phone`, `email`), ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase().replace('-', "_");
        match name.as_str() {
            "dob" => Ok(PhiKind::DateOfBirth),
            name => PhiKind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| PhiError::UnknownKind(s.to_owned())),
        }
    }
}

/// Finds PHI kinds in text. Cheap to clone and share (`Send + Sync`).
#[derive(Clone, Debug)]
pub struct PhiDetector {
    set: RegexSet,
    /// The kind of each pattern of `set`, by index.
    kinds: Vec<PhiKind>,
}

impl PhiDetector {
    /// A detector for `kinds` (duplicates ignored; none detects nothing).
    pub fn new(kinds: impl IntoIterator<Item = PhiKind>) -> Self {
        let mut wanted: Vec<PhiKind> = kinds.into_iter().collect();
        wanted.sort();
        wanted.dedup();
        let (patterns, kinds): (Vec<&str>, Vec<PhiKind>) = wanted
            .iter()
            .flat_map(|kind| kind.patterns().iter().map(move |p| (*p, *kind)))
            .unzip();
        let set = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .unicode(false)
            .build()
            // The patterns are constants, covered by the tests.
            .expect("the built-in PHI patterns compile");
        PhiDetector { set, kinds }
    }

    /// A detector for every kind.
    pub fn all() -> Self {
        PhiDetector::new(PhiKind::ALL)
    }

    /// The kinds found in `text`, each once, in [`PhiKind::ALL`] order.
    pub fn detect(&self, text: &str) -> Vec<PhiKind> {
        let mut found: Vec<PhiKind> = self
            .set
            .matches(text)
            .into_iter()
            .map(|i| self.kinds[i])
            .collect();
        found.dedup();
        found
    }

    /// The names of the kinds found in `text` (`["ssn", "email"]`), for
    /// audit details.
    pub fn detect_names(&self, text: &str) -> Vec<String> {
        self.detect(text)
            .into_iter()
            .map(|kind| kind.as_str().to_owned())
            .collect()
    }

    /// Whether `text` contains any PHI (stops at the first match).
    pub fn contains_phi(&self, text: &str) -> bool {
        self.set.is_match(text)
    }
}

impl Default for PhiDetector {
    fn default() -> Self {
        PhiDetector::all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str) -> Vec<PhiKind> {
        PhiDetector::all().detect(text)
    }

    #[test]
    fn finds_each_kind() {
        use PhiKind::*;
        let cases: &[(&str, &[PhiKind])] = &[
            ("patient SSN is 123-45-6789", &[Ssn]),
            ("ssn: 123456789", &[Ssn]),
            ("Social Security Number 123 45 6789", &[Ssn]),
            ("MRN: 00123456 admitted", &[Mrn]),
            ("mrn#1234567", &[Mrn]),
            ("medical record number 987654321", &[Mrn]),
            ("DOB: 03/12/1984", &[DateOfBirth]),
            ("dob 3-12-84", &[DateOfBirth]),
            ("born on March 12th, 1984", &[DateOfBirth]),
            ("date of birth 12 Mar 1984", &[DateOfBirth]),
            ("birthdate: 1984-3-12", &[DateOfBirth]),
            ("seen on 2024-01-31 for follow-up", &[DateOfBirth]),
            ("admitted 1/31/2024", &[DateOfBirth]),
            ("call me at (555) 123-4567", &[Phone]),
            ("cell 555-123-4567", &[Phone]),
            ("cell 555.123.4567 or +1 555 123 4567", &[Phone]),
            ("UK office +44 20 7946 0958", &[Phone]),
            ("write to jane.doe+lab@example-hospital.org", &[Email]),
            ("JOHN_SMITH@MAIL.EXAMPLE.COM", &[Email]),
            (
                "Jane, DOB 04/05/1990, MRN 7654321, 555-867-5309, jane@x.io, 078-05-1120",
                &[Ssn, Mrn, DateOfBirth, Phone, Email],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&detect(text), expected, "{text}");
            assert!(PhiDetector::all().contains_phi(text), "{text}");
        }
    }

    #[test]
    fn ordinary_chat_stays_clean() {
        let detector = PhiDetector::all();
        for text in [
            "Let's meet at 3pm tomorrow in room 204",
            "I have 2 patients left and 10 tasks, back in 5 minutes",
            "Version 1.2.3 is deployed; ratio is 3/4, about 75%",
            "The ward has 12 beds and 120 visitors a day",
            "Ping @alice.smith about the rota",
            "Order #12345 shipped, invoice 2024-117",
            "Score was 21-14 at half time, 10:30 kickoff",
            "Q3 2024 numbers: 1,234,567 messages, up 12.5%",
            "Dose: 500 mg twice daily for 7 days",
            "See ticket ABC-1234 and PR 5678",
            "Born to run, as the song goes",
            "The meeting in 2024 went well",
            "",
        ] {
            assert!(
                detector.detect(text).is_empty(),
                "{text}: {:?}",
                detector.detect(text)
            );
            assert!(!detector.contains_phi(text), "{text}");
        }
    }

    #[test]
    fn only_the_configured_kinds_are_detected() {
        let text = "mail jane@example.com or call 555-123-4567";
        let email_only = PhiDetector::new([PhiKind::Email, PhiKind::Email]);
        assert_eq!(email_only.detect(text), vec![PhiKind::Email]);
        assert_eq!(
            PhiDetector::all().detect_names(text),
            vec!["phone".to_owned(), "email".to_owned()]
        );
        let none = PhiDetector::new([]);
        assert!(none.detect(text).is_empty());
        assert!(!none.contains_phi(text));
    }

    #[test]
    fn non_ascii_text_is_fine() {
        let detector = PhiDetector::all();
        assert_eq!(
            detector.detect("Patientin geb. — DOB: 01.02.1970 ✓ ünïcödé"),
            vec![PhiKind::DateOfBirth]
        );
        assert!(detector.detect("Grüße aus Köln 🎉 — bis später").is_empty());
    }

    #[test]
    fn kinds_parse_from_config_names_and_serialize_in_snake_case() {
        for kind in PhiKind::ALL {
            assert_eq!(kind.as_str().parse::<PhiKind>().expect("name"), kind);
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::json!(kind.as_str())
            );
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            " DOB ".parse::<PhiKind>().expect("alias"),
            PhiKind::DateOfBirth
        );
        assert_eq!(
            "Date-Of-Birth".parse::<PhiKind>().expect("dash"),
            PhiKind::DateOfBirth
        );
        let err = "passport".parse::<PhiKind>().expect_err("unknown");
        assert!(err.to_string().contains("passport"));
    }
}
