//! The server key and what is derived from it: keyed code digests and sealed account secrets.

use std::cell::RefCell;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use rand::rngs::SysRng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::code::OtpCode;
use crate::ids::VerifyId;
use crate::verification::VerificationKey;

type HmacSha256 = Hmac<Sha256>;

/// 32 secret bytes from which every other key is derived. Never printed.
#[derive(Clone)]
pub struct ServerKey {
    code_digest_key: Zeroizing<[u8; 32]>,
    key_bound_digest_key: Zeroizing<[u8; 32]>,
    secret_sealing_key: Zeroizing<[u8; 32]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerKeyError {
    #[error("a server key is 64 hexadecimal characters (32 bytes)")]
    Malformed,
}

impl ServerKey {
    /// Draws a fresh key from the operating system's CSPRNG, returned as the 64 hex characters
    /// that go into the key file.
    pub fn generate_hex() -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut());
        Zeroizing::new(hex::encode(bytes.as_ref()))
    }

    pub fn from_hex(text: &str) -> Result<Self, ServerKeyError> {
        let mut master = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), master.as_mut())
            .map_err(|_| ServerKeyError::Malformed)?;
        Ok(Self {
            code_digest_key: derive(&master, b"otpd code digest v1"),
            key_bound_digest_key: derive(&master, b"otpd code digest bound to a key v1"),
            secret_sealing_key: derive(&master, b"otpd secret sealing v1"),
        })
    }

    /// The digest stored in place of a code. What it is bound to is mixed in, so equal codes of
    /// different verifications have different digests; only two sends to one Pinpoint key that
    /// drew the same code share one, which tells a reader of the database no more than that.
    pub fn digest_code(&self, subject: DigestSubject<'_>, code: &OtpCode) -> CodeDigest {
        let bytes = match subject {
            DigestSubject::Verification(verify_id) => {
                let mut mac = code_mac(&self.code_digest_key);
                mac.update(verify_id.as_str().as_bytes());
                mac.update(&[0]);
                mac.update(code.expose().as_bytes());
                mac.finalize()
            }
            DigestSubject::Key(key) => {
                // Each field with its length in front: a reference may hold any character, a NUL
                // too, so no separator could keep two keys apart.
                let mut mac = code_mac(&self.key_bound_digest_key);
                for field in [
                    key.account_id.as_str(),
                    key.dialect.as_str(),
                    &key.app,
                    &key.reference,
                    key.destination.as_str(),
                    code.expose(),
                ] {
                    mac.update(&(field.len() as u64).to_be_bytes());
                    mac.update(field.as_bytes());
                }
                mac.finalize()
            }
        };
        CodeDigest {
            bytes: bytes.into_bytes().into(),
            binding: subject.binding(),
        }
    }

    /// Whether `submitted` is the code whose digest, bound to `subject`, is `stored`, compared
    /// in constant time.
    pub fn code_matches(
        &self,
        subject: DigestSubject<'_>,
        submitted: &OtpCode,
        stored: &[u8],
    ) -> bool {
        let candidate = self.digest_code(subject, submitted);
        bool::from(candidate.bytes.as_slice().ct_eq(stored))
    }

    /// Encrypts what is stored and must be read back: an account's secret (SigV4 needs the
    /// secret itself, so it cannot be hashed) and a message's text until it is delivered. The
    /// output is nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let tag_len = CHACHA20_POLY1305.tag_len();
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + tag_len);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let nonce = Nonce::assume_unique_for_key(nonce);
        match self.sealing_key().seal_in_place_separate_tag(
            nonce,
            Aad::empty(),
            &mut sealed[NONCE_LEN..],
        ) {
            Ok(tag) => {
                sealed.extend_from_slice(tag.as_ref());
                sealed
            }
            // Only an input of hundreds of gigabytes is refused. Nothing is sealed then, and
            // the plaintext copied in is wiped; opening the empty result fails.
            Err(_) => {
                sealed.zeroize();
                Vec::new()
            }
        }
    }

    /// Decrypts what `seal` produced; `None` if it was sealed under another key or altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .sealing_key()
            .open_in_place(nonce, Aad::empty(), &mut opened)
            .ok()?
            .len();
        opened.truncate(plaintext_len);
        Some(opened)
    }

    /// ChaCha20-Poly1305 (RFC 8439) under the sealing key, from ring rather than the
    /// chacha20poly1305 crate: ring's assembly seals a send's 60-byte message in 0.26 µs, the
    /// crate took 2.1 (its AVX2 Poly1305 is built for long inputs), 3% of a send's CPU. Both
    /// write the same format, so what either sealed the other opens.
    fn sealing_key(&self) -> LessSafeKey {
        match UnboundKey::new(&CHACHA20_POLY1305, self.secret_sealing_key.as_ref()) {
            Ok(key) => LessSafeKey::new(key),
            Err(_) => unreachable!("a ChaCha20-Poly1305 key is 32 bytes"),
        }
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey([REDACTED])")
    }
}

fn code_mac(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// What a code's digest is bound to besides the code. A verification is bound to what its API's
/// check finds it by (a Pinpoint verify knows the key, an amm check the id), so the digest of a
/// submitted code can be computed before the store finds the row, and compared in the same
/// statement that finds it.
#[derive(Debug, Clone, Copy)]
pub enum DigestSubject<'a> {
    Verification(&'a VerifyId),
    Key(&'a VerificationKey),
}

impl DigestSubject<'_> {
    pub fn binding(&self) -> DigestBinding {
        match self {
            Self::Verification(_) => DigestBinding::VerifyId,
            Self::Key(_) => DigestBinding::Key,
        }
    }
}

/// The kind of `DigestSubject` a stored digest was made with; stored beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestBinding {
    VerifyId,
    Key,
}

impl DigestBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyId => "id",
            Self::Key => "key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "id" => Some(Self::VerifyId),
            "key" => Some(Self::Key),
            _ => None,
        }
    }
}

/// HMAC-SHA-256 of a code under the server key, and what it is bound to. This is all the store
/// ever sees of a code.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeDigest {
    pub bytes: [u8; 32],
    pub binding: DigestBinding,
}

impl fmt::Debug for CodeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeDigest(..)")
    }
}

/// How much OS CSPRNG output each thread fetches at once for `fill_random`.
const POOL_BYTES: usize = 256;

/// OS CSPRNG output waiting to be handed out; every byte is handed out once and wiped.
struct RandomPool {
    bytes: Zeroizing<[u8; POOL_BYTES]>,
    next: usize,
}

thread_local! {
    static POOL: RefCell<RandomPool> = RefCell::new(RandomPool {
        bytes: Zeroizing::new([0; POOL_BYTES]),
        next: POOL_BYTES,
    });
}

/// Fills `buffer` with bytes of the operating system's CSPRNG, for ids, nonces and keys. Small
/// requests are served from a per-thread pool fetched `POOL_BYTES` at a time: a send needs
/// three of them (two ids and a nonce), and a `getrandom` call each was a visible part of its
/// cost. The bytes are the OS generator's own, each used once and wiped from the pool as it is
/// handed out. (Codes are drawn straight from the OS generator, see `OtpCode::generate`.)
pub fn fill_random(buffer: &mut [u8]) {
    if buffer.len() > POOL_BYTES / 4 {
        return fill_from_os(buffer);
    }
    POOL.with_borrow_mut(|pool| {
        if POOL_BYTES - pool.next < buffer.len() {
            fill_from_os(pool.bytes.as_mut());
            pool.next = 0;
        }
        let taken = &mut pool.bytes[pool.next..pool.next + buffer.len()];
        buffer.copy_from_slice(taken);
        taken.zeroize();
        pool.next += buffer.len();
    });
}

/// The OS generator failing is not something a server can carry on from.
fn fill_from_os(buffer: &mut [u8]) {
    if let Err(error) = SysRng.try_fill_bytes(buffer) {
        panic!("the operating system's random generator failed: {error}");
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    hmac_sha256(master, label)
}

/// HMAC-SHA-256 of `message` under `key`, wiped from memory when dropped (it is usually a key).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(message);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_random_bytes_are_never_handed_out_twice() {
        // Many small draws cross several refills of the pool; 16 random bytes never repeat.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1_000 {
            let mut id = [0u8; 16];
            fill_random(&mut id);
            assert!(seen.insert(id), "a 16-byte draw repeated");
        }
        // Odd sizes that do not divide the pool, and one too large for it.
        let mut odd = [0u8; 60];
        for _ in 0..10 {
            fill_random(&mut odd);
        }
        let mut large = [0u8; 1024];
        fill_random(&mut large);
        assert!(large.iter().any(|&byte| byte != 0));
        assert!(POOL.with_borrow(|pool| pool.bytes[..pool.next].iter().all(|&byte| byte == 0)));
    }

    fn key() -> ServerKey {
        ServerKey::from_hex(&"ab".repeat(32)).expect("valid key")
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert_eq!(
            ServerKey::from_hex("abc").err(),
            Some(ServerKeyError::Malformed)
        );
        assert!(ServerKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(ServerKey::from_hex(&ServerKey::generate_hex()).is_ok());
    }

    fn pinpoint_key(app: &str, reference: &str) -> VerificationKey {
        VerificationKey {
            account_id: crate::ids::AccountId::generate(),
            dialect: crate::verification::Dialect::Pinpoint,
            app: app.into(),
            reference: reference.into(),
            destination: crate::phone::E164::parse("+393331234567").expect("number"),
        }
    }

    #[test]
    fn digests_depend_on_code_and_verification() {
        let key = key();
        let first = VerifyId::generate();
        let second = VerifyId::generate();
        let code = OtpCode::submitted("123456").expect("valid");
        let digest = key.digest_code(DigestSubject::Verification(&first), &code);
        assert_eq!(digest.binding, DigestBinding::VerifyId);
        let matches = |id, code, stored: &[u8]| {
            key.code_matches(DigestSubject::Verification(id), code, stored)
        };
        assert!(matches(&first, &code, &digest.bytes));
        assert!(!matches(&second, &code, &digest.bytes));
        let other = OtpCode::submitted("123457").expect("valid");
        assert!(!matches(&first, &other, &digest.bytes));
        assert!(!matches(&first, &code, &digest.bytes[..31]));
    }

    /// Codes stored before digests could be bound to a key are bound to their id, and must
    /// still match after the upgrade: the id-bound digest is the one otpd always made.
    #[test]
    fn id_bound_digests_are_those_of_earlier_versions() {
        let master = [0xab; 32];
        let id = VerifyId::generate();
        let code = OtpCode::submitted("123456").expect("valid");
        let message = [id.as_str().as_bytes(), &[0], b"123456"].concat();
        let earlier = hmac_sha256(&derive(&master, b"otpd code digest v1")[..], &message);
        let digest = key().digest_code(DigestSubject::Verification(&id), &code);
        assert_eq!(&digest.bytes, earlier.as_ref());
    }

    #[test]
    fn key_bound_digests_depend_on_every_field_of_the_key() {
        let key = key();
        let code = OtpCode::submitted("123456").expect("valid");
        let bound = pinpoint_key("ab", "c");
        let digest = key.digest_code(DigestSubject::Key(&bound), &code);
        assert_eq!(digest.binding, DigestBinding::Key);
        assert!(key.code_matches(DigestSubject::Key(&bound), &code, &digest.bytes));
        // The same characters split differently between the fields.
        let shifted = VerificationKey {
            app: "a".into(),
            reference: "bc".into(),
            ..bound.clone()
        };
        let other_number = VerificationKey {
            destination: crate::phone::E164::parse("+393331234568").expect("number"),
            ..bound.clone()
        };
        let other_account = VerificationKey {
            account_id: crate::ids::AccountId::generate(),
            ..bound.clone()
        };
        let amm = VerificationKey {
            dialect: crate::verification::Dialect::Amm,
            ..bound.clone()
        };
        for other in [&shifted, &other_number, &other_account, &amm] {
            assert!(!key.code_matches(DigestSubject::Key(other), &code, &digest.bytes));
        }
        let other_code = OtpCode::submitted("123457").expect("valid");
        assert!(!key.code_matches(DigestSubject::Key(&bound), &other_code, &digest.bytes));
        // A key-bound and an id-bound digest use different keys, so neither stands for the other.
        let id = VerifyId::generate();
        assert_ne!(
            key.digest_code(DigestSubject::Verification(&id), &code)
                .bytes,
            digest.bytes
        );
    }

    #[test]
    fn sealed_secrets_open_only_under_the_same_key() {
        let sealed = key().seal(b"secret");
        assert_eq!(
            key().open(&sealed).as_deref().map(Vec::as_slice),
            Some(&b"secret"[..])
        );
        let other = ServerKey::from_hex(&"cd".repeat(32)).expect("valid key");
        assert!(other.open(&sealed).is_none());
        assert!(key().open(&sealed[..5]).is_none());
    }

    /// Sealed before `ring` replaced the `chacha20poly1305` crate: what databases already hold
    /// (account secrets, messages not yet delivered) still opens.
    #[test]
    fn what_the_earlier_implementation_sealed_still_opens() {
        let sealed = hex::decode(
            "5a5a5a5a5a5a5a5a5a5a5a5a96a1f9f0bc364b2699b47aed8abe2921fa755e3e74657c87fe6956d53138d068a482a3",
        )
        .expect("hex");
        assert_eq!(
            key().open(&sealed).as_deref().map(Vec::as_slice),
            Some(&b"Your code is 123456"[..])
        );
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert!(key().open(&altered).is_none());
    }

    #[test]
    fn each_seal_draws_its_own_nonce() {
        let (first, second) = (key().seal(b"secret"), key().seal(b"secret"));
        assert_eq!(first.len(), 12 + b"secret".len() + 16);
        assert_ne!(first, second);
        assert!(key().open(&[]).is_none());
    }

    #[test]
    fn debug_never_shows_key_material() {
        assert_eq!(format!("{:?}", key()), "ServerKey([REDACTED])");
    }
}
