//! TLS client configuration shared by the network connectors (rustls with the
//! ring provider): certificate verification is always on; `ca_file` replaces the
//! system trust store with the given CA certificates.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A client config trusting the certificates in `ca_file`, or the system's
/// trust store when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca_file) => {
            let certs =
                CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
                roots.add(c).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} contains no certificate", ca_file.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system store may hold certificates rustls cannot use; skip them.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "the system has no trusted CA certificates (install ca-certificates, or set ca_file)".into()
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
