//! Signed JWT assertions for OAuth2: Google's service-account flow (RS256) and
//! Microsoft's certificate credential (PS256 with the `x5t#S256` thumbprint).
//! Only signing lives here; the token endpoints verify.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
        }
    }
}

/// An RSA private key loaded from PEM.
pub struct SigningKey(RsaKeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Reads a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`)
    /// RSA key. `what` names the key in errors; the key itself never appears.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<SigningKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            format!("{what}: no PEM private key found (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)")
        })?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(format!("{what}: only RSA keys are supported")),
        };
        pair.map(SigningKey).map_err(|e| format!("{what}: not a usable RSA key (2048 bits or more): {e}"))
    }

    /// `header.claims.signature`, each part base64url without padding. `alg` and
    /// `typ` are added to `header`.
    pub fn sign(
        &self,
        alg: Alg,
        mut header: serde_json::Map<String, serde_json::Value>,
        claims: &serde_json::Value,
    ) -> Result<String, String> {
        header.insert("alg".into(), alg.name().into());
        header.insert("typ".into(), "JWT".into());
        let mut text = String::new();
        text.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|e| e.to_string())?));
        text.push('.');
        text.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?));
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        let padding: &'static dyn ring::signature::RsaEncoding = match alg {
            Alg::Rs256 => &RSA_PKCS1_SHA256,
            Alg::Ps256 => &RSA_PSS_SHA256,
        };
        self.0
            .sign(padding, &SystemRandom::new(), text.as_bytes(), &mut sig)
            .map_err(|_| "signing failed".to_string())?;
        text.push('.');
        text.push_str(&URL_SAFE_NO_PAD.encode(&sig));
        Ok(text)
    }
}

/// base64url SHA-256 thumbprint (`x5t#S256`) of the first certificate in `pem`.
pub fn cert_thumbprint_s256(pem: &[u8], what: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|_| format!("{what}: no PEM certificate found"))?;
    Ok(URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der)))
}

/// A random UUID (v4) for `jti`.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    // The system RNG failing is not recoverable; a constant jti still works
    // for the token endpoint, so fall back to the clock.
    if SystemRandom::new().fill(&mut b).is_err() {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = n.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pem");
        let p = dir.path().join("pub.der");
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {k} 2>/dev/null && \
                 openssl rsa -in {k} -RSAPublicKey_out -outform DER -out {p} 2>/dev/null",
                k = k.display(),
                p = p.display()
            ))
            .status()
            .unwrap();
        assert!(ok.success());
        (dir, std::fs::read(&k).unwrap(), std::fs::read(&p).unwrap())
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
        let (_d, pem, public) = key();
        let k = SigningKey::from_pem(&pem, "key").unwrap();
        for (alg, verify) in [
            (Alg::Rs256, &RSA_PKCS1_2048_8192_SHA256 as &dyn ring::signature::VerificationAlgorithm),
            (Alg::Ps256, &RSA_PSS_2048_8192_SHA256),
        ] {
            let jwt = k.sign(alg, Default::default(), &serde_json::json!({"iss": "me"})).unwrap();
            let (msg, sig) = jwt.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            UnparsedPublicKey::new(verify, &public).verify(msg.as_bytes(), &sig).unwrap();
            let header: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(msg.split('.').next().unwrap()).unwrap()).unwrap();
            assert_eq!(header["alg"], alg.name());
            // A changed message must not verify.
            assert!(UnparsedPublicKey::new(verify, &public).verify(b"other", &sig).is_err());
        }
    }

    #[test]
    fn bad_key_errors_name_the_key_not_its_content() {
        let e = SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n",
            "private_key_file x.pem",
        )
        .unwrap_err();
        assert!(e.starts_with("private_key_file x.pem: "), "{e}");
        assert!(!e.contains("QUJD"));
        let e = SigningKey::from_pem(b"hello", "k").unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn uuids_are_v4_shaped_and_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
