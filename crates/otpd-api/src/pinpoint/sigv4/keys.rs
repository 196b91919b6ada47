//! SigV4 signing keys, derived once per access key, day and region rather than on every
//! request: the derivation is four HMACs, and a client signs with the same scope all day.

use std::collections::HashMap;
use std::sync::Mutex;

use otpd_core::AccessKeyId;
use otpd_core::crypto::hmac_sha256;
use otpd_core::ids::SecretAccessKey;
use zeroize::Zeroizing;

use super::SERVICE;

/// Above this many cached keys the cache starts over (a key is cheap to derive again).
const MAX_KEYS: usize = 4096;

pub type SigningKey = Zeroizing<[u8; 32]>;

/// The keys derived lately. A key is found again only for the same secret, date and region, so
/// an account whose secret changed never signs with a stale key.
#[derive(Default)]
pub struct SigningKeys {
    keys: Mutex<HashMap<AccessKeyId, Derived>>,
}

struct Derived {
    secret: SecretAccessKey,
    date: String,
    region: String,
    key: SigningKey,
}

impl SigningKeys {
    pub fn key_for(
        &self,
        access_key_id: &AccessKeyId,
        secret: &SecretAccessKey,
        date: &str,
        region: &str,
    ) -> SigningKey {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(derived) = keys.get(access_key_id)
            && derived.secret == *secret
            && derived.date == date
            && derived.region == region
        {
            return derived.key.clone();
        }
        let key = derive(secret, date, region, SERVICE);
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(
            access_key_id.clone(),
            Derived {
                secret: secret.clone(),
                date: date.to_owned(),
                region: region.to_owned(),
                key: key.clone(),
            },
        );
        key
    }
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn derive(secret: &SecretAccessKey, date: &str, region: &str, service: &str) -> SigningKey {
    let seed = Zeroizing::new(format!("AWS4{}", secret.expose()));
    let mut key = hmac_sha256(seed.as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(key.as_slice(), part.as_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's SigV4 documentation ("Examples of how to derive a signing key").
    #[test]
    fn derives_the_documented_key() {
        let secret = SecretAccessKey::from_bytes(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
            .expect("utf-8");
        let key = derive(&secret, "20120215", "us-east-1", "iam");
        assert_eq!(
            hex::encode(key.as_slice()),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn a_new_secret_or_scope_gets_a_new_key() {
        let keys = SigningKeys::default();
        let id = AccessKeyId::parse("OTPDABCDEFGHIJKLMNOP").expect("key id");
        let first = SecretAccessKey::from_bytes(b"first-secret").expect("utf-8");
        let second = SecretAccessKey::from_bytes(b"second-secret").expect("utf-8");
        let key = keys.key_for(&id, &first, "20261122", "eu-west-1");
        assert_eq!(key, derive(&first, "20261122", "eu-west-1", SERVICE));
        assert_eq!(keys.key_for(&id, &first, "20261122", "eu-west-1"), key);
        assert_ne!(keys.key_for(&id, &second, "20261122", "eu-west-1"), key);
        assert_ne!(keys.key_for(&id, &first, "20261123", "eu-west-1"), key);
        assert_ne!(keys.key_for(&id, &first, "20261122", "us-east-1"), key);
    }
}
