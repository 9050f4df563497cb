//! Validated values: a value of these types has passed its rules, so the store never sees an
//! invalid one (STYLE habit 4).

use super::DomainError;
use serde::{Deserialize, Serialize};

/// Longest application or user name, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Largest message body, in bytes (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted, in bytes: argon2 cost grows with it.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn required_text(field: &str, raw: &str, max_chars: usize) -> Result<String, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid(format!("{field} must not be empty")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(DomainError::invalid(format!(
            "{field} must not contain control characters (such as line breaks)"
        )));
    }
    if trimmed.chars().count() > max_chars {
        return Err(DomainError::invalid(format!(
            "{field} must be at most {max_chars} characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A user's or an application's display name: 1..=255 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(field: &str, raw: &str) -> Result<Self, DomainError> {
        required_text(field, raw, MAX_NAME_CHARS).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: not blank, at most 64 KiB. Kept as sent (no trimming): it is content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(String);

impl Body {
    pub fn parse(raw: String) -> Result<Self, DomainError> {
        if raw.trim().is_empty() {
            return Err(DomainError::invalid("body must not be empty"));
        }
        if raw.len() > MAX_BODY_BYTES {
            return Err(DomainError::invalid(format!(
                "body must be at most {MAX_BODY_BYTES} bytes"
            )));
        }
        // PostgreSQL's text cannot hold U+0000: refused here for every store alike, so a 201
        // never promises a body some store cannot keep.
        if raw.contains('\0') {
            return Err(DomainError::invalid("body must not contain NUL characters"));
        }
        Ok(Self(raw))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

/// An e-mail address, lower-cased. Deliberately loose (one `@`, a dot in the domain): the
/// welcome mail is the real check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= MAX_NAME_CHARS
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.contains('@')
                    && !domain.starts_with('.') && !domain.ends_with('.'));
        if valid {
            Ok(Self(email))
        } else {
            Err(DomainError::invalid("email must be a valid e-mail address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed: at least 10 characters, at most 1 KiB.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, DomainError> {
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(DomainError::invalid(format!(
                "password must be at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(DomainError::invalid(format!(
                "password must be at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(Self(raw))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// An application token: what clients use instead of an id. Generated as 24 alphanumeric
/// characters; anything else in a path cannot name an application.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppToken(String);

impl AppToken {
    pub const LEN: usize = 24;

    pub fn generate() -> Self {
        use rand::distributions::{Alphanumeric, DistString};
        Self(Alphanumeric.sample_string(&mut rand::thread_rng(), Self::LEN))
    }
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::not_found(format!(
                "application {raw:?} not found"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chat or message number: 1-based, per scope. Parsed from paths, where anything that is
/// not a positive integer in range names nothing (404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Number(i64);

impl Number {
    pub fn new(n: i64) -> Option<Self> {
        (n >= 1).then_some(Self(n))
    }
    pub fn parse(what: &str, raw: &str) -> Result<Self, DomainError> {
        raw.parse::<i64>()
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| DomainError::not_found(format!("{what} {raw:?} not found")))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Which slice of a list to read. `page`/`limit` are validated here; `before` is the keyset
/// form for deep history (cost independent of depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub offset: u64,
    pub before: Option<i64>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 10;
    pub const MAX_LIMIT: u32 = 100;
    /// Deeper than this, `page` would be a table scan; `before` serves deep history.
    pub const MAX_PAGE: u64 = 1_000_000;

    pub fn parse(
        page: Option<i64>,
        limit: Option<i64>,
        before: Option<i64>,
    ) -> Result<Self, DomainError> {
        let page = page.unwrap_or(1);
        if !(1..=Self::MAX_PAGE as i64).contains(&page) {
            return Err(DomainError::invalid(format!(
                "page must be between 1 and {}",
                Self::MAX_PAGE
            )));
        }
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT as i64);
        if !(1..=Self::MAX_LIMIT as i64).contains(&limit) {
            return Err(DomainError::invalid(format!(
                "limit must be between 1 and {}",
                Self::MAX_LIMIT
            )));
        }
        if let Some(b) = before {
            if b < 1 {
                return Err(DomainError::invalid(
                    "before must be a message number (>= 1)",
                ));
            }
        }
        Ok(Self {
            limit: limit as u32,
            offset: (page as u64 - 1) * limit as u64,
            before,
        })
    }

    pub fn first(limit: u32) -> Self {
        Self {
            limit,
            offset: 0,
            before: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::parse("name", "  hi ").unwrap().as_str(), "hi");
        assert!(Name::parse("name", "   ").is_err());
        assert!(Name::parse("name", &"é".repeat(255)).is_ok());
        assert!(Name::parse("name", &"é".repeat(256)).is_err());
        assert!(Name::parse("name", "a\r\nBcc: x@y.z").is_err());
    }

    #[test]
    fn bodies_are_bounded_in_bytes() {
        assert!(Body::parse("x".repeat(MAX_BODY_BYTES)).is_ok());
        assert!(Body::parse("x".repeat(MAX_BODY_BYTES + 1)).is_err());
        assert!(Body::parse("a\0b".into()).is_err());
        assert!(Email::parse("a\0b@example.com").is_err());
        assert!(Body::parse(" \n".into()).is_err());
    }

    #[test]
    fn emails_are_loosely_checked() {
        assert_eq!(Email::parse(" A@B.io ").unwrap().as_str(), "a@b.io");
        for bad in ["", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_and_tokens_from_paths() {
        assert_eq!(Number::parse("chat", "3").unwrap().get(), 3);
        for bad in ["0", "-1", "x", "99999999999999999999", ""] {
            assert!(Number::parse("chat", bad).is_err(), "{bad}");
        }
        assert!(AppToken::parse("abc123").is_ok());
        assert!(AppToken::parse("abc-123").is_err());
        assert_eq!(AppToken::generate().as_str().len(), AppToken::LEN);
    }

    #[test]
    fn pages_are_validated() {
        assert_eq!(
            PageRequest::parse(Some(3), Some(10), None).unwrap().offset,
            20
        );
        assert!(PageRequest::parse(Some(0), None, None).is_err());
        assert!(PageRequest::parse(None, Some(101), None).is_err());
        assert!(PageRequest::parse(None, Some(0), None).is_err());
        assert!(PageRequest::parse(None, None, Some(0)).is_err());
    }
}
