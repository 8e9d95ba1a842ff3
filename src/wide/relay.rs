//! `deaddrop relay`: iroh's relay server, embedded, with a self-signed certificate that clients
//! pin by its SHA-256 (carried in the invite), so a relay needs no domain name and no CA.
//!
//! A relay forwards QUIC packets between endpoints that cannot reach each other directly, and
//! tells endpoints their public address (QUIC address discovery). It sees endpoint ids, IP
//! addresses, timing and sizes; never content: the packets are QUIC, encrypted end to end
//! between the two endpoints, and deaddrop's own records are inside.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use iroh::EndpointId;
use iroh_relay::server::{
    Access, AccessControl, CertConfig, ClientRequest, ConnectionId, QuicConfig, RelayConfig,
    Server, ServerConfig, TlsConfig,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use crate::wide::config::write_private;

/// The default port: HTTPS on TCP, QUIC address discovery on UDP.
pub const DEFAULT_PORT: u16 = 3340;
/// Clients relayed at once by default. A room's members are a handful, each with one or two
/// endpoints (the device's, and the meeting key's while it holds it); a stranger who connects
/// more is refused, which bounds what the relay keeps per client (queues, TLS state).
pub const DEFAULT_MAX_CLIENTS: usize = 256;

/// Admits at most `max` clients at once (counted after iroh's relay handshake, which proves
/// each client's endpoint key).
#[derive(Debug)]
struct ClientCap {
    open: AtomicUsize,
    max: usize,
    /// When the operator was last told that clients are refused (at most once a minute).
    warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl AccessControl for ClientCap {
    async fn on_connect(&self, _request: &ClientRequest) -> Access {
        let admitted = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Access::Allow
        } else {
            let mut warned = self.warned.lock().expect("warned lock");
            if warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                *warned = Some(std::time::Instant::now());
                tracing::warn!(
                    "the relay is full ({} clients at once, --max-clients): refusing new ones",
                    self.max
                );
            }
            Access::Deny {
                reason: Some("the relay is full".into()),
            }
        }
    }

    fn on_disconnect(&self, _endpoint_id: EndpointId, _connection_id: ConnectionId) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running relay. Dropping it stops it.
pub struct RunningRelay {
    server: Server,
    /// SHA-256 of the certificate, for `#sha256=` in relay URLs.
    pub pin: [u8; 32],
}

impl RunningRelay {
    /// Where it serves HTTPS (relaying).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.server.https_addr()
    }

    /// Where it serves QUIC address discovery.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.server.quic_addr()
    }

    /// Runs until the server stops on its own (an error).
    pub async fn stopped(self) -> std::io::Result<()> {
        let mut server = self.server;
        server
            .join()
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }
}

/// The relay's certificate and key: made on first start (self-signed, for `names`) and kept in
/// `dir` (`relay-cert.der`, `relay-key.der`), so its pin stays the same across restarts.
pub fn certificate(
    dir: &Path,
    names: &[String],
) -> std::io::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let (cert_path, key_path) = (dir.join("relay-cert.der"), dir.join("relay-key.der"));
    if let (Ok(cert), Ok(key)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        return Ok((
            CertificateDer::from(cert),
            PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key)),
        ));
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(std::io::Error::other)?;
    let key = made.signing_key.serialize_der();
    write_private(&key_path, &key)?;
    write_private(&cert_path, made.cert.der())?;
    Ok((
        made.cert.der().clone(),
        PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key)),
    ))
}

pub fn pin_of(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// Starts a relay on `bind` (HTTPS on TCP and QUIC address discovery on UDP, both on that
/// port), with the certificate kept in `dir`, relaying for at most `max_clients` clients at
/// once.
pub async fn start(
    bind: SocketAddr,
    dir: &Path,
    names: &[String],
    max_clients: usize,
) -> std::io::Result<RunningRelay> {
    let (cert, key) = certificate(dir, names)?;
    let pin = pin_of(&cert);
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .map_err(std::io::Error::other)?;
    // Plain HTTP only serves iroh's captive-portal probe; an ephemeral port is enough.
    let mut relay = RelayConfig::new(SocketAddr::new(bind.ip(), 0));
    relay.tls = Some(TlsConfig::new(
        bind,
        CertConfig::Manual {
            server_config: tls.clone(),
        },
    ));
    relay.key_cache_capacity = Some(1024);
    relay.access = Arc::new(ClientCap {
        open: AtomicUsize::new(0),
        max: max_clients,
        warned: std::sync::Mutex::new(None),
    });
    let mut quic = QuicConfig::new(bind);
    quic.server_config = Some(tls);
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    config.quic = Some(quic);
    let server = Server::spawn(config)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot start the relay on {bind}: {e}")))?;
    Ok(RunningRelay { server, pin })
}

/// Accepts exactly the certificate whose SHA-256 is `pin` (whatever names it carries), and
/// checks the handshake's signatures with it as usual.
#[derive(Debug)]
pub struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCert {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinnedCert { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if pin_of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_kept_so_the_pin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["relay.test".to_owned()];
        let (a, _) = certificate(dir.path(), &names).unwrap();
        let (b, _) = certificate(dir.path(), &names).unwrap();
        assert_eq!(pin_of(&a), pin_of(&b));
        let other = tempfile::tempdir().unwrap();
        let (c, _) = certificate(other.path(), &names).unwrap();
        assert_ne!(pin_of(&a), pin_of(&c));
    }

    /// A port free for both TCP and UDP on loopback (the relay serves both on one port).
    fn free_port() -> u16 {
        loop {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    #[tokio::test]
    async fn a_relay_serves_at_most_its_client_cap_at_once() {
        use crate::wide::invite::{Invite, Relay};
        use crate::wide::room::endpoint;
        use iroh::{SecretKey, Watcher};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let bind: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let relay = start(bind, dir.path(), &["127.0.0.1".to_owned()], 2)
            .await
            .unwrap();
        let invite = Invite::new(
            Relay::Url {
                url: format!("https://{bind}"),
                pin: Some(relay.pin),
            },
            vec![],
        );
        let loopback = [bind.ip()];
        let connected = |e: &iroh::Endpoint| {
            e.home_relay_status()
                .get()
                .iter()
                .any(iroh::endpoint::RelayStatus::is_connected)
        };
        let mut admitted = Vec::new();
        for _ in 0..2 {
            let e = endpoint(&invite, &loopback, SecretKey::generate(), vec![])
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), e.online())
                .await
                .expect("a client under the cap is relayed");
            admitted.push(e);
        }
        let third = endpoint(&invite, &loopback, SecretKey::generate(), vec![])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!connected(&third), "a client over the cap is refused");
        // A place frees up when a client leaves: the next try of the refused one gets it.
        admitted.pop().unwrap().close().await;
        tokio::time::timeout(Duration::from_secs(30), third.online())
            .await
            .expect("a client is relayed once a place is free");
        assert!(admitted.iter().all(connected));
        third.close().await;
        for e in admitted {
            e.close().await;
        }
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = certificate(dir.path(), &["a".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = ServerName::try_from("anything").unwrap();
        let ok = PinnedCert::new(pin_of(&cert), provider.clone());
        assert!(
            ok.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let mut wrong = pin_of(&cert);
        wrong[0] ^= 1;
        let bad = PinnedCert::new(wrong, provider);
        assert!(
            bad.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }
}
