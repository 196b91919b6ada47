//! What the unit tests of both dialects build requests for.

use otpd_core::account::{Account, AccountLimits};
use otpd_core::clock::Timestamp;
use otpd_core::{AccessKeyId, AccountId};

/// An account with no limits, and `default_sender` as its sender.
pub(crate) fn account(default_sender: Option<&str>) -> Account {
    Account {
        id: AccountId::generate(),
        name: "a".into(),
        access_key_id: AccessKeyId::generate(),
        sealed_secret: vec![],
        credits: None,
        default_sender: default_sender.map(str::to_owned),
        created_at: Timestamp(0),
        previous_secret: None,
        limits: AccountLimits::default(),
    }
}
