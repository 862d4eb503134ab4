//! Patient references: the link from a channel or a message to the
//! patient's record in the EMR.
//!
//! A [`PatientRef`] is opaque to Courier: it is checked for shape, never
//! interpreted. Two shapes are accepted (docs/protocol.md, "Patient link"):
//!
//! - a FHIR Patient reference, relative or absolute:
//!   `Patient/123`, `https://fhir.example.org/r4/Patient/a-1.b`; the id is a
//!   FHIR id (`[A-Za-z0-9.-]{1,64}`);
//! - a FHIR identifier token, `system|value`, as an EMR's medical record
//!   number is written: `urn:oid:1.2.36.146.595.217.0.1|12345`.
//!
//! Either is at most [`PatientRef::MAX_LEN`] bytes of printable ASCII with
//! no space. Decoding refuses anything else (without echoing the input: it
//! may be PHI), and `Debug` never prints the value, so a reference cannot
//! reach a log by accident.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A validated patient reference (see the module doc).
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "Patient/123")
)]
pub struct PatientRef(String);

/// Why a patient reference was refused. Never carries the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidPatientRef(&'static str);

impl fmt::Display for InvalidPatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid patientRef: {}", self.0)
    }
}

impl std::error::Error for InvalidPatientRef {}

/// The longest FHIR id.
const MAX_FHIR_ID: usize = 64;

fn is_fhir_id(s: &str) -> bool {
    (1..=MAX_FHIR_ID).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl PatientRef {
    /// The longest reference accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Checks the shape of `s`.
    pub fn parse(s: &str) -> Result<PatientRef, InvalidPatientRef> {
        if s.is_empty() {
            return Err(InvalidPatientRef("empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidPatientRef("longer than 256 bytes"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidPatientRef(
                "only printable ASCII without spaces is allowed",
            ));
        }
        if let Some((system, value)) = s.split_once('|') {
            let system_ok = !system.is_empty() && !system.contains('|');
            let value_ok = !value.is_empty() && !value.contains('|');
            return if system_ok && value_ok {
                Ok(PatientRef(s.to_owned()))
            } else {
                Err(InvalidPatientRef(
                    "an identifier must be `system|value`, both non-empty",
                ))
            };
        }
        let mut parts = s.rsplit('/');
        let id = parts.next().unwrap_or_default();
        let kind = parts.next();
        match kind {
            Some("Patient") if is_fhir_id(id) => Ok(PatientRef(s.to_owned())),
            _ => Err(InvalidPatientRef(
                "expected `Patient/<id>` (a FHIR reference) or `system|value` (an identifier)",
            )),
        }
    }

    /// The reference as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reference's bytes (what is sealed and tagged).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientRef(<redacted>)")
    }
}

impl std::str::FromStr for PatientRef {
    type Err = InvalidPatientRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PatientRef::parse(s)
    }
}

impl Serialize for PatientRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PatientRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PatientRef::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_references_and_identifiers_are_accepted() {
        for ok in [
            "Patient/123",
            "Patient/a-1.b",
            "https://fhir.example.org/r4/Patient/123",
            "urn:oid:1.2.36.146.595.217.0.1|12345",
            "http://hospital.example.org/mrn|MRN-0042",
        ] {
            assert_eq!(PatientRef::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn other_shapes_are_refused_without_echoing_them() {
        for bad in [
            "",
            "123",
            "Patient/",
            "Practitioner/123",
            "Patient/12 3",
            "Patient/a_b",
            "Patient/Ω",
            "|value",
            "system|",
            "a|b|c",
            "John Smith",
        ] {
            assert!(PatientRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        // The message depends on the rule broken, never on the input.
        let a = PatientRef::parse("Practitioner/123")
            .unwrap_err()
            .to_string();
        let b = PatientRef::parse("Device/secret-name")
            .unwrap_err()
            .to_string();
        assert_eq!(a, b);
        assert!(!a.contains("123"));
        let long = format!("Patient/{}", "1".repeat(65));
        assert!(PatientRef::parse(&long).is_err());
        let longer = format!("s|{}", "v".repeat(300));
        assert!(PatientRef::parse(&longer).is_err());
    }

    #[test]
    fn debug_does_not_print_the_reference() {
        let r = PatientRef::parse("Patient/123").unwrap();
        assert!(!format!("{r:?}").contains("123"));
    }

    #[test]
    fn deserializing_validates() {
        let ok: PatientRef = serde_json::from_str("\"Patient/7\"").unwrap();
        assert_eq!(ok.as_str(), "Patient/7");
        assert!(serde_json::from_str::<PatientRef>("\"nope\"").is_err());
    }
}
