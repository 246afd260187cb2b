//! HTTPS for the registry: a certificate chain and its key from PEM files, served with rustls.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::RegistryError;

/// The TLS configuration of the listener.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<rustls::ServerConfig, RegistryError> {
    let unusable = |what: &Path, detail: String| {
        RegistryError::InvalidConfig(format!("TLS file {}: {detail}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| unusable(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(unusable(cert, "no certificate in it".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unusable(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::InvalidConfig(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| RegistryError::InvalidConfig(format!("TLS certificate and key: {e}")))
}
