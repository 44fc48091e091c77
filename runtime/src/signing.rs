//! [`SigningKey`]: the secret that makes stored artifacts authentic.
//!
//! A precompiled `.cwasm` is native code that wasmtime maps executable, so
//! whoever can choose its bytes runs code on every host that loads it. A
//! content hash read from the same store proves nothing against someone who
//! can write the store; an HMAC under a key the store never holds does.
//! Manifests, function records and compile-cache entries carry one
//! (HMAC-SHA256, RFC 2104, from the RustCrypto `hmac` crate).

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

/// Shortest key accepted, in bytes (128 bits).
const MIN_KEY_BYTES: usize = 16;

/// Length of a generated key, in bytes (256 bits).
const GENERATED_KEY_BYTES: usize = 32;

/// An HMAC-SHA256 key shared by the hosts that trust one store (every
/// gateway replica), and by no one who can only write the store.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A key from raw bytes.
    ///
    /// # Errors
    /// [`Error::Config`] when shorter than 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(Error::Config(format!(
                "a signing key needs at least {MIN_KEY_BYTES} bytes, this one has {}",
                bytes.len()
            )));
        }
        Ok(SigningKey {
            key: bytes.to_vec(),
        })
    }

    /// A key from hex text (surrounding whitespace ignored), as
    /// `ERYX_SIGNING_KEY` or a key file holds it.
    ///
    /// # Errors
    /// [`Error::Config`] when the text is not hex or too short.
    pub fn from_hex(text: &str) -> Result<SigningKey> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| Error::Config(format!("the signing key is not hex: {e}")))?;
        SigningKey::from_bytes(&bytes)
    }

    /// Reads a key file (hex text), creating one with a fresh random
    /// 256-bit key (readable by its owner only) when it does not exist.
    ///
    /// # Errors
    /// [`Error::Config`] when the file is malformed; [`Error::Io`] when it
    /// cannot be read or created.
    pub fn load_or_create(path: &Path) -> Result<SigningKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => return SigningKey::from_hex(&text),
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error.into());
            }
            Err(_) => {}
        }
        let mut key = [0u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut key)
            .map_err(|e| Error::Config(format!("no randomness for a signing key: {e}")))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Written whole to a private temporary file, then published with a
        // hard link, which fails if the name exists: a process that loses the
        // race reads the winner's complete key, never a partial one.
        // (`NamedTempFile` makes a unique file, mode 0600, removed on drop.)
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut temporary, hex::encode(key).as_bytes())?;
        temporary.as_file().sync_all()?;
        let published = std::fs::hard_link(temporary.path(), path);
        drop(temporary);
        match published {
            // Read back: what is on disk is the key every process will use.
            Ok(()) => SigningKey::from_hex(&std::fs::read_to_string(path)?),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                SigningKey::from_hex(&std::fs::read_to_string(path)?)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }

    /// A MAC over `domain` (NUL-terminated) and then `bytes`: each use of the
    /// key names its own domain, so a tag made for one kind of data (a JSON
    /// document) never verifies as another (compiled code).
    fn mac_in(&self, domain: &str, bytes: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(bytes);
        mac
    }

    /// The HMAC-SHA256 (32 bytes) of `bytes` in `domain` (e.g.
    /// `"eryx-document"`).
    pub fn sign(&self, domain: &str, bytes: &[u8]) -> [u8; 32] {
        self.mac_in(domain, bytes).finalize().into_bytes().into()
    }

    /// [`sign`](Self::sign), as lowercase hex.
    pub fn sign_hex(&self, domain: &str, bytes: &[u8]) -> String {
        hex::encode(self.sign(domain, bytes))
    }

    /// Whether `tag` is the HMAC of `bytes` in `domain` (compared in
    /// constant time).
    pub fn verify(&self, domain: &str, bytes: &[u8], tag: &[u8]) -> bool {
        self.mac_in(domain, bytes).verify_slice(tag).is_ok()
    }

    /// Whether `tag_hex` (hex) is the HMAC of `bytes` in `domain`.
    pub fn verify_hex(&self, domain: &str, bytes: &[u8], tag_hex: &str) -> bool {
        hex::decode(tag_hex).is_ok_and(|tag| self.verify(domain, bytes, &tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_verifies_only_its_bytes_under_its_key() {
        let key = SigningKey::from_bytes(&[7; 32]).unwrap();
        let other = SigningKey::from_bytes(&[8; 32]).unwrap();
        let tag = key.sign_hex("doc", b"manifest");
        assert!(key.verify_hex("doc", b"manifest", &tag));
        assert!(!key.verify_hex("doc", b"manifest!", &tag));
        assert!(!key.verify_hex("code", b"manifest", &tag));
        assert!(!other.verify_hex("doc", b"manifest", &tag));
        assert!(!key.verify_hex("doc", b"manifest", "not hex"));
        assert!(SigningKey::from_bytes(&[1; 8]).is_err());
    }
}
