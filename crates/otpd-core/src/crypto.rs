//! The server key and what is derived from it: keyed code digests and sealed account secrets.

use std::cell::RefCell;
use std::fmt;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::code::OtpCode;
use crate::ids::VerifyId;

type HmacSha256 = Hmac<Sha256>;

/// 32 secret bytes from which every other key is derived. Never printed.
#[derive(Clone)]
pub struct ServerKey {
    code_digest_key: Zeroizing<[u8; 32]>,
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
            secret_sealing_key: derive(&master, b"otpd secret sealing v1"),
        })
    }

    /// The digest stored in place of a code. The verification id is mixed in so that equal codes
    /// of different verifications never have equal digests.
    pub fn digest_code(&self, verify_id: &VerifyId, code: &OtpCode) -> CodeDigest {
        let mut mac = self.code_mac();
        mac.update(verify_id.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(code.expose().as_bytes());
        CodeDigest(mac.finalize().into_bytes().into())
    }

    /// Whether `submitted` is the code whose digest is `stored`, compared in constant time.
    pub fn code_matches(&self, verify_id: &VerifyId, submitted: &OtpCode, stored: &[u8]) -> bool {
        let candidate = self.digest_code(verify_id, submitted);
        bool::from(candidate.0.as_slice().ct_eq(stored))
    }

    /// Encrypts an account secret for storage (SigV4 needs the secret itself, so it cannot be
    /// hashed). The output is nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(&Nonce::from(nonce), plaintext)
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// Decrypts what `seal` produced; `None` if it was sealed under another key or altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, ciphertext) = sealed.split_at_checked(12)?;
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        self.cipher()
            .decrypt(&Nonce::from(nonce), ciphertext)
            .ok()
            .map(Zeroizing::new)
    }

    fn code_mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(self.code_digest_key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.secret_sealing_key))
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey([REDACTED])")
    }
}

/// HMAC-SHA-256 of a code under the server key. This is all the store ever sees of a code.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeDigest(pub [u8; 32]);

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

    #[test]
    fn digests_depend_on_code_and_verification() {
        let key = key();
        let first = VerifyId::generate();
        let second = VerifyId::generate();
        let code = OtpCode::submitted("123456").expect("valid");
        let digest = key.digest_code(&first, &code);
        assert!(key.code_matches(&first, &code, &digest.0));
        assert!(!key.code_matches(&second, &code, &digest.0));
        let other = OtpCode::submitted("123457").expect("valid");
        assert!(!key.code_matches(&first, &other, &digest.0));
        assert!(!key.code_matches(&first, &code, &digest.0[..31]));
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

    #[test]
    fn debug_never_shows_key_material() {
        assert_eq!(format!("{:?}", key()), "ServerKey([REDACTED])");
    }
}
