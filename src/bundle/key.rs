//! minisign keys and signatures (through the `minisign` crate): `rcptsync
//! keygen` writes keys in minisign's own formats, and what rcptsync signs
//! `minisign -V` verifies. The hub's secret key is unencrypted (it signs
//! unattended); it lives in a file only its owner may read.

use std::io::Cursor;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::BundleError;

/// A key that cannot be read or used. Names the file; never shows key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// minisign prints a key id as the little-endian u64 of its 8 bytes, in hex.
fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    let n = keynum.len().min(8);
    b[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// The hub's secret key.
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.id())
    }
}

impl SigningKey {
    /// A new random key pair.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let kp = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| KeyError::Invalid(format!("cannot generate a key: {e}")))?;
        Ok(SigningKey { sk: kp.sk, pk: kp.pk })
    }

    /// Reads a secret key file (minisign's format, unencrypted), refusing one
    /// that others may read or write.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let file_err = |msg: String| KeyError::File { path: path.display().to_string(), msg };
        let meta = std::fs::metadata(path).map_err(|e| file_err(format!("cannot read the signing key: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_err(format!(
                "the signing key is readable or writable by others (mode {mode:04o}); chmod 600 it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot read the signing key: {e}")))?;
        let sk =
            minisign::SecretKeyBox::from_string(&text).and_then(|b| b.into_unencrypted_secret_key()).map_err(|e| {
                file_err(format!(
                    "not an unencrypted minisign secret key ({e}); make one with rcptsync keygen, or minisign -G -W"
                ))
            })?;
        let pk = minisign::PublicKey::from_secret_key(&sk)
            .map_err(|e| file_err(format!("cannot derive the public key: {e}")))?;
        Ok(SigningKey { sk, pk })
    }

    pub fn id(&self) -> String {
        key_id(self.pk.keynum())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { pk: self.pk.clone() }
    }

    /// The `.minisig` text for `data`, with `trusted_comment` signed into it.
    pub fn sign(&self, data: impl std::io::Read, trusted_comment: &str) -> Result<String, KeyError> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            data,
            Some(trusted_comment),
            Some(&format!("signature from rcptsync key {}", self.id())),
        )
        .map_err(|e| KeyError::Invalid(format!("cannot sign: {e}")))?;
        Ok(sig.into_string())
    }

    /// Writes `PREFIX.key` (new, mode 0600) and `PREFIX.pub` (new, 0644):
    /// neither may exist, so a key is never overwritten by mistake.
    pub fn write_new(&self, prefix: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), KeyError> {
        let with = |ext: &str| {
            let mut s = prefix.as_os_str().to_owned();
            s.push(ext);
            std::path::PathBuf::from(s)
        };
        let (key_path, pub_path) = (with(".key"), with(".pub"));
        let secret = self
            .sk
            .to_box(Some(&format!("rcptsync bundle signing key {} (minisign, unencrypted)", self.id())))
            .map_err(|e| KeyError::Invalid(format!("cannot encode the key: {e}")))?
            .into_string();
        let public = self
            .pk
            .to_box()
            .map_err(|e| KeyError::Invalid(format!("cannot encode the public key: {e}")))?
            .into_string();
        for (path, text, mode) in [(&key_path, &secret, 0o600), (&pub_path, &public, 0o644)] {
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(path)?;
                std::io::Write::write_all(&mut f, text.as_bytes())?;
                f.sync_all()
            };
            if let Err(e) = write() {
                if path == &pub_path {
                    let _ = std::fs::remove_file(&key_path);
                }
                let msg = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "already exists; rcptsync keygen never overwrites a key (move it away first)".to_string()
                } else {
                    format!("cannot write: {e}")
                };
                return Err(KeyError::File { path: path.display().to_string(), msg });
            }
        }
        Ok((key_path, pub_path))
    }
}

/// An edge's (or `bundle verify`'s) public key.
#[derive(Clone)]
pub struct PublicKey {
    pk: minisign::PublicKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// The key itself (`RW…`, as in a `.pub` file's second line or minisign's
    /// `-P`), or the whole text of a `.pub` file.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        let pk = if text.starts_with("untrusted comment:") {
            minisign::PublicKeyBox::from_string(text).and_then(|b| b.into_public_key())
        } else {
            minisign::PublicKey::from_base64(text)
        };
        pk.map(|pk| PublicKey { pk }).map_err(|e| KeyError::Invalid(format!("not a minisign public key: {e}")))
    }

    /// A `.pub` file, or (when `arg` is not a file) the key itself.
    pub fn from_arg(arg: &str) -> Result<PublicKey, KeyError> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| KeyError::File { path: arg.into(), msg: format!("cannot read: {e}") })?;
            PublicKey::parse(&text).map_err(|e| KeyError::File { path: arg.into(), msg: e.to_string() })
        } else {
            PublicKey::parse(arg)
        }
    }

    pub fn id(&self) -> String {
        key_id(self.pk.keynum())
    }

    /// Checks a `.minisig` for `data` and returns its trusted comment.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<String, BundleError> {
        let sig = minisign::SignatureBox::from_string(signature)
            .map_err(|e| BundleError::Signature(format!("not a minisign signature: {e}")))?;
        let found = key_id(sig.keynum());
        if found != self.id() {
            return Err(BundleError::WrongKey { found, want: self.id() });
        }
        minisign::verify(&self.pk, &sig, Cursor::new(data), true, false, false)
            .map_err(|e| BundleError::Signature(e.to_string()))?;
        sig.trusted_comment().map_err(|e| BundleError::Signature(format!("no trusted comment: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files_with_safe_modes() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (k, p) = key.write_new(&dir.path().join("hub")).unwrap();
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = SigningKey::load(&k).unwrap();
        assert_eq!(loaded.id(), key.id());
        let public = PublicKey::from_arg(p.to_str().unwrap()).unwrap();
        assert_eq!(public.id(), key.id());
        let line = std::fs::read_to_string(&p).unwrap().lines().nth(1).unwrap().to_string();
        assert_eq!(PublicKey::from_arg(&line).unwrap().id(), key.id());
        // Never overwritten.
        let e = key.write_new(&dir.path().join("hub")).unwrap_err().to_string();
        assert!(e.contains("hub.key") && e.contains("never overwrites"), "{e}");
        // A key others can read is refused.
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = SigningKey::load(&k).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!format!("{key:?}").contains(&line));
    }
}
