//! Typed identifiers. Every id on the wire is a UUID string; each kind of id is
//! its own type so that a `UserId` can never be passed where a `ChannelId` is
//! meant.
//!
//! Ids serialize as lowercase hyphenated strings in every format. (`Uuid`'s
//! own impl writes 16 raw bytes when the format is not human-readable, which
//! is rmp-serde's default; PROTOCOL.md wants strings.) Decoding accepts the
//! forms `Uuid::try_parse` does and never echoes the rejected input.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Parses a UUID string for any id type.
struct UuidVisitor;

impl Visitor<'_> for UuidVisitor {
    type Value = Uuid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a UUID string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Uuid, E> {
        Uuid::try_parse(s).map_err(|_| E::custom("invalid UUID string"))
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $ctor:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, format = Uuid)
        )]
        pub struct $name(pub Uuid);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(UuidVisitor).map(Self)
            }
        }

        impl $name {
            /// A fresh, random id.
            pub fn new() -> Self {
                Self(Uuid::$ctor())
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId, new_v4
);
uuid_id!(
    /// A channel (public, private, direct or broadcast).
    ChannelId, new_v4
);
uuid_id!(
    /// A message. Version 7 UUIDs, so ids sort roughly by creation time.
    MessageId, now_v7
);
uuid_id!(
    /// A login session (one refresh-token family).
    SessionId, new_v4
);
uuid_id!(
    /// A stored file: a message's attachment or a vault file.
    FileId, new_v4
);
uuid_id!(
    /// One grant of a vault file to a user or a channel.
    ShareId, new_v4
);
