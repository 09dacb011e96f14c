//! The process's TLS provider. rustls is built with ring only (aws-lc would add a C build of
//! minutes), and the HTTP clients that take the process's default provider (the S3 client's,
//! the OTLP exporter's) refuse to start without one installed.

/// Installs ring as the process's TLS provider; one installed already is as good.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
