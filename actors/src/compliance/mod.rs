//! # Compliance: what HIPAA asks of the broker beyond messaging
//!
//! One room for the clinical and compliance workflows (issue 36), each in a
//! module of its own with its own doc (what it owns, what it takes, what a
//! crash does):
//!
//! - `holds`: legal holds on a channel, a user or a patient reference, which
//!   keep messages and their files past TTL, retention and purge.
//! - `break_glass`: emergency access to a channel by a clinician who is not
//!   a member: time-limited, announced, audited, reviewed.
//! - `disclosures`: the accounting of disclosures per patient, built from
//!   the audit chain's read entries.
//!
//! The patient link itself (sealed `patientRef`s and their tags) is in
//! [`crate::crypto::patient`] and the store; retention by kind is in
//! [`crate::durable::retention`]; the signed export is the CLI's
//! (`src/export/`).

pub mod break_glass;
pub mod disclosures;
pub mod holds;
