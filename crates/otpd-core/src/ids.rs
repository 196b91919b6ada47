//! Identifiers. Each parses its wire form once; holding one means it is well-formed.

use std::fmt;

use zeroize::Zeroizing;

use crate::crypto::fill_random;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $bytes:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// A fresh random identifier from the OS CSPRNG.
            pub fn generate() -> Self {
                let mut bytes = [0u8; $bytes];
                fill_random(&mut bytes);
                Self(hex::encode(bytes))
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
    /// A verification's id: 160 random bits as 40 lowercase hex characters (the amm shape).
    VerifyId,
    20
);
hex_id!(
    /// A Pinpoint application id: 32 lowercase hex characters, like AWS's.
    ApplicationId,
    16
);
hex_id!(
    /// An account's internal id.
    AccountId,
    16
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
