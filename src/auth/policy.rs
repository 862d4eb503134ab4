//! The rules every account is held to, wherever it is made: REST
//! (`/api/auth/register`, `POST /api/users`, a password change or reset),
//! the initial administrator from configuration, and `courier user create`.
//! Each edge maps a [`PolicyError`] to its own answer once (a 400 naming the
//! field, a refusal to start naming the setting, a CLI error).

/// Passwords longer than this (bytes) are refused: argon2 would take them,
/// but nobody types them and they only cost hashing time.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The rule a username or password breaks; its message is the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("must be 3 to 32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")]
    Username,
    #[error("must be at least {0} characters")]
    TooShort(usize),
    #[error("must be at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("must not be the username")]
    SameAsUsername,
}

/// A username: 3 to 32 characters of letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit.
pub fn username(value: &str) -> Result<(), PolicyError> {
    let len = value.chars().count();
    let well_formed = (3..=32).contains(&len)
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if well_formed {
        Ok(())
    } else {
        Err(PolicyError::Username)
    }
}

/// A new password: at least `min_length` characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes, and not the username (ignoring case).
pub fn password(min_length: usize, value: &str, username: &str) -> Result<(), PolicyError> {
    if value.chars().count() < min_length {
        return Err(PolicyError::TooShort(min_length));
    }
    if value.len() > MAX_PASSWORD_BYTES {
        return Err(PolicyError::TooLong);
    }
    if value.to_lowercase() == username.to_lowercase() {
        return Err(PolicyError::SameAsUsername);
    }
    Ok(())
}
