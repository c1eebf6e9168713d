//! Distribution and scale-out: the TLS stack (rustls with the platform's root certificates),
//! moving an account between databases (`export-account` / `import-account`), and the fleet
//! analytics over shard databases (DuckDB).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

/// An HTTPS server on 127.0.0.1:0 with a leaf certificate for `localhost` signed by the test CA
/// in `tests/data/tls/ca.pem` (a CA no system trusts). Answers every request with `200 ok`.
async fn tls_server() -> u16 {
    let certs = vec![CertificateDer::from_pem_file(format!("{TLS}/leaf.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(format!("{TLS}/leaf.key")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// The client the daemon uses for HTTPS (`auth::http_client`) builds with the rustls backend and
/// verifies certificates against the platform's roots: with the system store, the test CA is
/// unknown and the request fails on the certificate; when the system store is pointed at the
/// test CA (`SSL_CERT_FILE`, which the platform verifier reads on Linux), the same request
/// succeeds. The second half runs in a child process (this test binary again) so the variable
/// never changes inside this process; `https_trusts_exactly_the_platform_roots` starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_against_a_private_ca() {
    let port = tls_server().await;
    let client = stellantis_sync::auth::http_client(Duration::from_secs(10));
    let result = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await;
    let trusts_test_ca = std::env::var("SSL_CERT_FILE").ok().as_deref()
        == Some(format!("{TLS}/ca.pem").as_str());
    if trusts_test_ca {
        let resp = result.expect("the system roots (SSL_CERT_FILE) include the test CA");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        println!("PROBE: trusted through the platform roots");
    } else {
        let err = result.expect_err("a certificate from an unknown CA must be refused");
        let chain = error_chain(&err);
        assert!(
            chain.contains("UnknownIssuer") || chain.contains("certificate"),
            "expected a certificate error, got: {chain}"
        );
    }
}

#[test]
fn https_trusts_exactly_the_platform_roots() {
    let empty = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "https_probe_against_a_private_ca", "--nocapture"])
        .env("SSL_CERT_FILE", format!("{TLS}/ca.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("PROBE: trusted through the platform roots"),
        "{out}"
    );
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

