//! Accounts (who may call otpd) and Pinpoint applications (what they send for).

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::ids::{AccessKeyId, AccountId, ApplicationId};

/// A display name for an account or application: 1 to 64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(input: &str) -> Option<Self> {
        let trimmed = input.trim();
        let well_formed =
            (1..=64).contains(&trimmed.chars().count()) && !trimmed.chars().any(char::is_control);
        well_formed.then(|| Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An account as stored. The secret is sealed with the server key (SigV4 needs the secret
/// itself, so it cannot be a one-way hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub access_key_id: AccessKeyId,
    pub sealed_secret: Vec<u8>,
    /// SMS parts this account may still send; `None` means no limit.
    pub credits: Option<i64>,
    pub default_sender: Option<String>,
    pub created_at: Timestamp,
    /// The secret a rotation replaced, while it is still accepted beside the new one.
    pub previous_secret: Option<PreviousSecret>,
}

/// A replaced secret, sealed like the current one, and until when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub sealed: Vec<u8>,
    pub until: Timestamp,
}

impl PreviousSecret {
    /// Whether requests made with it are still accepted at `now`.
    pub fn accepted_at(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: AccountId,
    pub name: Name,
    pub access_key_id: AccessKeyId,
    pub sealed_secret: Vec<u8>,
    pub credits: Option<i64>,
    pub default_sender: Option<String>,
}

/// A Pinpoint application ("project"), owned by one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: ApplicationId,
    pub account_id: AccountId,
    pub name: String,
    /// Pinpoint resource tags, kept as given.
    pub tags: BTreeMap<String, String>,
    pub created_at: Timestamp,
}

impl Application {
    /// A new application with a fresh id; the store sets `created_at` when it inserts it.
    pub fn new(account_id: AccountId, name: Name, tags: BTreeMap<String, String>) -> Self {
        Self {
            id: ApplicationId::generate(),
            account_id,
            name: name.as_str().to_owned(),
            tags,
            created_at: Timestamp(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            Name::parse("  acme ").map(|n| n.as_str().to_owned()),
            Some("acme".into())
        );
        assert!(Name::parse("").is_none());
        assert!(Name::parse("   ").is_none());
        assert!(Name::parse(&"x".repeat(65)).is_none());
        assert!(Name::parse("a\nb").is_none());
    }
}
