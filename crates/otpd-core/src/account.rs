//! Accounts (who may call otpd) and Pinpoint applications (what they send for).

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::countries::DestinationCountries;
use crate::ids::{AccessKeyId, AccountId, ApplicationId};
use crate::text::is_short_printable;

/// A display name for an account or application: 1 to 64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(input: &str) -> Option<Self> {
        let trimmed = input.trim();
        is_short_printable(trimmed, 64).then(|| Self(trimmed.to_owned()))
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
    pub limits: AccountLimits,
}

/// What one account may send, within what the server allows every account. Credit caps what an
/// account may spend in all; these cap how fast and where, so that a leaked key or an abused
/// sign-up form (SMS pumping) costs at most an hour's limit in the account's own countries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountLimits {
    /// SMS parts the account may send in any 60 minutes, counted by the store as it debits
    /// credit (`sms_window::SmsWindow`); `None` for no limit.
    pub sms_per_hour: Option<SmsPerHour>,
    /// The countries its codes may be texted to, within the server's `--sms-countries`.
    pub countries: DestinationCountries,
}

impl AccountLimits {
    /// The limits as a store keeps them: the hourly limit as a number, the countries as
    /// `DestinationCountries::as_list` wrote them (`None` for either: no limit). `None` if a
    /// value is not one these could have written.
    pub fn from_stored(sms_per_hour: Option<i64>, countries: Option<&str>) -> Option<Self> {
        let sms_per_hour = match sms_per_hour {
            Some(parts) => Some(SmsPerHour::new(u32::try_from(parts).ok()?)?),
            None => None,
        };
        let countries = match countries {
            Some(list) => DestinationCountries::parse_list(list).ok()?,
            None => DestinationCountries::Any,
        };
        Some(Self {
            sms_per_hour,
            countries,
        })
    }
}

/// A positive number of SMS parts an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SmsPerHour(u32);

impl SmsPerHour {
    /// More than any one SMSC link carries in an hour; a larger figure is a typo.
    pub const MAX: u32 = 10_000_000;

    pub fn new(parts: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&parts).then_some(Self(parts))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A change to an account's limits: each field left `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsChange {
    /// `Some(None)` lifts the hourly limit.
    pub sms_per_hour: Option<Option<SmsPerHour>>,
    pub countries: Option<DestinationCountries>,
}

impl LimitsChange {
    pub fn is_empty(&self) -> bool {
        self.sms_per_hour.is_none() && self.countries.is_none()
    }

    pub fn applied_to(self, limits: &AccountLimits) -> AccountLimits {
        AccountLimits {
            sms_per_hour: self.sms_per_hour.unwrap_or(limits.sms_per_hour),
            countries: self.countries.unwrap_or_else(|| limits.countries.clone()),
        }
    }
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
    pub limits: AccountLimits,
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
    fn stored_limits_read_back() {
        assert_eq!(
            AccountLimits::from_stored(None, None),
            Some(AccountLimits::default())
        );
        let limits = AccountLimits::from_stored(Some(30), Some("DE,IT")).expect("valid");
        assert_eq!(limits.sms_per_hour, SmsPerHour::new(30));
        assert_eq!(limits.countries.as_list().as_deref(), Some("DE,IT"));
        assert_eq!(AccountLimits::from_stored(Some(0), None), None);
        assert_eq!(AccountLimits::from_stored(Some(-1), None), None);
        assert_eq!(AccountLimits::from_stored(None, Some("XX")), None);
    }

    #[test]
    fn an_hourly_limit_is_positive_and_bounded() {
        assert_eq!(SmsPerHour::new(0), None);
        assert_eq!(SmsPerHour::new(1).map(SmsPerHour::get), Some(1));
        assert!(SmsPerHour::new(SmsPerHour::MAX).is_some());
        assert_eq!(SmsPerHour::new(SmsPerHour::MAX + 1), None);
    }

    #[test]
    fn a_change_keeps_the_limits_it_does_not_name() {
        let italy = DestinationCountries::parse_list("IT").expect("list");
        let limits = AccountLimits {
            sms_per_hour: SmsPerHour::new(50),
            countries: italy.clone(),
        };
        let lift_hourly = LimitsChange {
            sms_per_hour: Some(None),
            countries: None,
        };
        assert!(!lift_hourly.is_empty());
        assert_eq!(
            lift_hourly.applied_to(&limits),
            AccountLimits {
                sms_per_hour: None,
                countries: italy,
            }
        );
        let any_country = LimitsChange {
            sms_per_hour: None,
            countries: Some(DestinationCountries::Any),
        };
        assert_eq!(
            any_country.applied_to(&limits).sms_per_hour,
            SmsPerHour::new(50)
        );
        assert!(LimitsChange::default().is_empty());
        assert_eq!(LimitsChange::default().applied_to(&limits), limits);
    }

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
