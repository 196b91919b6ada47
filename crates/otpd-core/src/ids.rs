//! Identifiers. Each parses its wire form once; holding one means it is well-formed.

use std::fmt;

use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::crypto::fill_random;

/// `N` random bytes from the OS CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    bytes
}

/// `N` bytes whose first six are the current time in milliseconds (big-endian) and the rest
/// random. Ids made this way sort by creation time, so new rows go to the same end of a
/// database index instead of scattering over it: a commit writes a few pages, not one per row.
pub(crate) fn time_ordered_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = random_bytes::<N>();
    let millis = SystemClock.now().millis().to_be_bytes();
    bytes[..6].copy_from_slice(&millis[2..]);
    bytes
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $bytes:literal, $generator:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// A fresh identifier with the OS CSPRNG's bits (see the type's documentation).
            pub fn generate() -> Self {
                Self(hex::encode($generator::<$bytes>()))
            }

            /// Accepts exactly the lowercase hexadecimal form `generate` produces.
            pub fn parse(input: &str) -> Option<Self> {
                let well_formed = input.len() == $bytes * 2
                    && input.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                well_formed.then(|| Self(input.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

hex_id!(
    /// A verification's id: 40 lowercase hex characters (the amm shape), the creation time in
    /// milliseconds then 112 random bits, so ids are unguessable and sort by age.
    VerifyId,
    20,
    time_ordered_bytes
);
hex_id!(
    /// A Pinpoint application id: 32 random lowercase hex characters, like AWS's.
    ApplicationId,
    16,
    random_bytes
);
hex_id!(
    /// An account's internal id: 128 random bits.
    AccountId,
    16,
    random_bytes
);

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The public half of an account's credentials: `OTPD` and 16 characters of A-Z and 2-7, the
/// shape of an AWS access key id, so that SDKs and tools that check it accept it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKeyId(String);

impl AccessKeyId {
    pub fn generate() -> Self {
        Self(format!("OTPD{}", random_string(KEY_ALPHABET, 16).as_str()))
    }

    /// Any 16 to 128 characters of A-Z, a-z and 0-9 (AWS's own rule), so keys imported from
    /// elsewhere work too.
    pub fn parse(input: &str) -> Option<Self> {
        let well_formed =
            (16..=128).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then(|| Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret half of an account's credentials. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretAccessKey(Zeroizing<String>);

impl SecretAccessKey {
    /// 40 characters from a 62-letter alphabet: about 238 bits.
    pub fn generate() -> Self {
        Self(random_string(SECRET_ALPHABET, 40))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes)
            .ok()
            .map(|text| Self(Zeroizing::new(text.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretAccessKey([REDACTED])")
    }
}

/// Uniform characters from `alphabet` (whose length divides 256 or is rejected-sampled).
fn random_string(alphabet: &[u8], length: usize) -> Zeroizing<String> {
    let limit = 256 - 256 % alphabet.len();
    let mut out = Zeroizing::new(String::with_capacity(length));
    let mut byte = [0u8; 1];
    while out.len() < length {
        fill_random(&mut byte);
        let value = usize::from(byte[0]);
        if value < limit {
            out.push(char::from(alphabet[value % alphabet.len()]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_ids_sort_by_age_and_stay_unguessable() {
        let first = VerifyId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = VerifyId::generate();
        assert!(first.as_str() < second.as_str());
        let millis = SystemClock.now().millis();
        let stamped = i64::from_str_radix(&second.as_str()[..12], 16).expect("hex time");
        assert!((millis - 1000..=millis).contains(&stamped));
        // Two ids of the same millisecond still differ in their 112 random bits.
        let (a, b) = (VerifyId::generate(), VerifyId::generate());
        assert_ne!(a.as_str()[12..], b.as_str()[12..]);
    }

    #[test]
    fn verify_ids_are_40_lowercase_hex() {
        let id = VerifyId::generate();
        assert_eq!(id.as_str().len(), 40);
        assert_eq!(VerifyId::parse(id.as_str()), Some(id.clone()));
        assert!(VerifyId::parse(&id.as_str().to_uppercase()).is_none());
        assert!(VerifyId::parse(&id.as_str()[..39]).is_none());
        assert!(VerifyId::parse("").is_none());
        assert!(VerifyId::parse("c6cf59524c65d9c65d134d1137a86336558d19ba").is_some());
    }

    #[test]
    fn application_ids_are_32_hex() {
        let id = ApplicationId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(ApplicationId::parse(id.as_str()).is_some());
        assert!(ApplicationId::parse("not-an-app").is_none());
    }

    #[test]
    fn access_keys_look_like_aws_ones() {
        let key = AccessKeyId::generate();
        assert_eq!(key.as_str().len(), 20);
        assert!(key.as_str().starts_with("OTPD"));
        assert!(AccessKeyId::parse(key.as_str()).is_some());
        assert!(AccessKeyId::parse("AKIA/EXAMPLE12345678").is_none());
        assert!(AccessKeyId::parse("SHORT").is_none());
    }

    #[test]
    fn secrets_are_long_and_redacted() {
        let secret = SecretAccessKey::generate();
        assert_eq!(secret.expose().len(), 40);
        assert_eq!(format!("{secret:?}"), "SecretAccessKey([REDACTED])");
    }
}
