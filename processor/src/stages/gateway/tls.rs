//! TLS for a gateway with no ingress in front (`gateway.tls_cert_file`, `tls_key_file`): the
//! certificate chain and key from PEM files, read again when either file changes, so that a
//! renewed certificate (cert-manager's, say) is served without a restart. A renewal that
//! cannot be read is logged and the certificate in use stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The files of the gateway's certificate.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the gateway's TLS certificate ({}, {}): {message}", files.cert.display(), files.key.display())]
pub struct TlsError {
    files: CertificateFiles,
    message: String,
}

/// The certificate in use, and when its files were last changed.
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

/// Hands every handshake the certificate last read.
pub struct ReloadingCertificate {
    files: CertificateFiles,
    loaded: RwLock<Loaded>,
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        Some(loaded.key.clone())
    }
}

impl ReloadingCertificate {
    /// Reads the files now; fails when they do not hold a certificate chain and its key.
    pub fn load(files: CertificateFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = read(&files)?;
        Ok(Arc::new(ReloadingCertificate {
            files,
            loaded: RwLock::new(loaded),
        }))
    }

    /// The acceptor of TLS connections with this certificate (HTTP/1.1 over ALPN).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| self.error(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again if either changed since they were read; whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let modified = modified(&self.files);
        if modified
            == self
                .loaded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .modified
        {
            return false;
        }
        match read(&self.files) {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
                tracing::info!(cert = %self.files.cert.display(), "gateway: TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!("{e}; the certificate in use stays");
                false
            }
        }
    }

    fn error(&self, message: String) -> TlsError {
        TlsError {
            files: self.files.clone(),
            message,
        }
    }
}

fn modified(files: &CertificateFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (at(&files.cert), at(&files.key))
}

fn read(files: &CertificateFiles) -> Result<Loaded, TlsError> {
    let error = |message: String| TlsError {
        files: files.clone(),
        message,
    };
    // Before reading: a change while reading is seen at the next check.
    let modified = modified(files);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| error(format!("reading the certificate chain: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(format!("reading the certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            "the certificate file holds no certificate".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| error(format!("reading the private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, &default_provider())
        .map_err(|e| error(format!("the key does not fit the certificate: {e}")))?;
    Ok(Loaded {
        key: Arc::new(key),
        modified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::self_signed as certificate;

    fn served(certificate: &ReloadingCertificate) -> Vec<u8> {
        let loaded = certificate.loaded.read().unwrap();
        loaded.key.cert[0].to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("txflow-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = CertificateFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        let write = |(cert, key): (Vec<u8>, Vec<u8>), at: SystemTime| {
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            for path in [&files.cert, &files.key] {
                std::fs::File::options()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_modified(at)
                    .unwrap();
            }
        };
        let start = SystemTime::now() - Duration::from_secs(60);
        write(certificate("first"), start);
        let reloading = ReloadingCertificate::load(files.clone()).unwrap();
        reloading.acceptor().unwrap();
        let first = served(&reloading);
        assert!(!reloading.reload_if_changed(), "nothing changed");

        write(certificate("renewed"), start + Duration::from_secs(10));
        assert!(reloading.reload_if_changed());
        let renewed = served(&reloading);
        assert_ne!(renewed, first);

        std::fs::write(&files.cert, b"not a certificate").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&files.cert)
            .unwrap()
            .set_modified(start + Duration::from_secs(20))
            .unwrap();
        assert!(!reloading.reload_if_changed());
        assert_eq!(served(&reloading), renewed, "the certificate in use stays");

        let broken = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(broken.to_string().contains("tls.crt"), "{broken}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
