//! The upstream's TLS mode (`--tls-cert FILE --tls-key FILE`): rustls with ring, ALPN `h2` and
//! `http/1.1` (only `http/1.1` with `--no-h2`), so that a client that offers h2 (tokenrelay)
//! multiplexes its requests on HTTP/2 and one that does not (wrk, nginx) speaks HTTP/1.1, as
//! against a real provider's endpoint.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A handshake that takes longer than this is dropped (the client is stuck or hostile).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for the certificate chain in `cert` and the private key in `key` (PEM files),
/// offering h2 unless `h2` is false.
pub fn acceptor(cert: &str, key: &str, h2: bool) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {cert}: no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS handshake on `stream`, bounded by [`HANDSHAKE_TIMEOUT`]; with whether the client
/// and the server agreed on h2 by ALPN.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Result<(TlsStream<TcpStream>, bool), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| format!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((tls, h2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use tokio::net::TcpListener;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tokio_rustls::TlsConnector;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/tokenrelay/tests/fixtures/tls"
    );

    /// The protocol a client offering h2 and http/1.1 gets from an upstream built with `h2`.
    async fn negotiated(h2: bool) -> Option<Vec<u8>> {
        let acceptor = acceptor(
            &format!("{FIXTURES}/server.pem"),
            &format!("{FIXTURES}/server-key.pem"),
            h2,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(&acceptor, stream).await.map(|(_, h2)| h2)
        });
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(format!("{FIXTURES}/ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(server.await.unwrap(), Ok(alpn.as_deref() == Some(b"h2")));
        alpn
    }

    #[tokio::test]
    async fn alpn_offers_h2_unless_told_not_to() {
        assert_eq!(negotiated(true).await.as_deref(), Some(&b"h2"[..]));
        assert_eq!(negotiated(false).await.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[test]
    fn bad_files_are_named() {
        let err = acceptor("/nonexistent/cert.pem", "/nonexistent/key.pem", true)
            .err()
            .unwrap();
        assert!(
            err.starts_with("--tls-cert /nonexistent/cert.pem:"),
            "{err}"
        );
        let err = acceptor(
            &format!("{FIXTURES}/server.pem"),
            "/nonexistent/key.pem",
            true,
        )
        .err()
        .unwrap();
        assert!(err.starts_with("--tls-key /nonexistent/key.pem:"), "{err}");
    }
}
