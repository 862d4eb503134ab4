//! Field rules of REST bodies. Each check names the field it refuses.

use super::error::ApiError;
use crate::config::Config;

use crate::auth::policy;
pub use crate::auth::policy::MAX_PASSWORD_BYTES;

/// `username`: see [`policy::username`].
pub fn username(field: &'static str, value: &str) -> Result<(), ApiError> {
    policy::username(value).map_err(|rule| ApiError::invalid(field, rule))
}

/// The password policy ([`policy::password`]) with `password_min_length`.
pub fn password(
    config: &Config,
    field: &'static str,
    value: &str,
    username: &str,
) -> Result<(), ApiError> {
    policy::password(config.password_min_length, value, username)
        .map_err(|rule| ApiError::invalid(field, rule))
}

/// A credential presented at login (not checked against the policy, which
/// may have changed since it was set): bounded only.
pub fn presented(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if value.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `email`: absent, or `local@domain` of at most 254 characters. Returns
/// the trimmed value (empty means none).
pub fn email(field: &'static str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let well_formed = value.chars().count() <= 254
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if well_formed {
        Ok(Some(value.to_owned()))
    } else {
        Err(ApiError::invalid(field, "must be an email address"))
    }
}

/// A channel `name`: 1 to 100 characters after trimming, no control
/// characters. Returns the trimmed value.
pub fn channel_name(field: &'static str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(value.to_owned())
}

/// A channel `description`: at most 1,000 characters, no control
/// characters but line breaks and tabs; empty means none. (A NUL reached
/// PostgreSQL, which refused it: a 500 where SQLite answered 201.)
pub fn description(field: &'static str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.chars().count() > 1000 {
        return Err(ApiError::invalid(field, "must be at most 1000 characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters other than line breaks and tabs",
        ));
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "dr.bob_2", "a-1", "x".repeat(32).as_str()] {
            assert!(username("username", ok).is_ok(), "{ok}");
        }
        for bad in [
            "al",
            "_alice",
            "alice smith",
            "élise",
            "x".repeat(33).as_str(),
            "",
        ] {
            assert!(username("username", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_policy() {
        let config = Config::default();
        assert!(password(&config, "password", "correct horse battery", "alice").is_ok());
        let short = password(&config, "password", "short", "alice").expect_err("short");
        assert_eq!(short.field.as_deref(), Some("password"));
        assert!(password(&config, "password", "AliceAliceAlice", "alicealicealice").is_err());
        assert!(password(&config, "password", &"x".repeat(2000), "alice").is_err());
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            description("d", Some("two\nlines\tok"))
                .expect("ok")
                .as_deref(),
            Some("two\nlines\tok")
        );
        for bad in ["nul\0byte", "bell\u{7}", "esc\u{1b}[31m"] {
            assert!(description("d", Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            email("email", Some(" a@b.org ")).expect("ok").as_deref(),
            Some("a@b.org")
        );
        assert_eq!(email("email", Some("")).expect("ok"), None);
        for bad in ["a", "a@b", "@b.org", "a b@c.org", "a@b@c.org"] {
            assert!(email("email", Some(bad)).is_err(), "{bad}");
        }
    }
}
