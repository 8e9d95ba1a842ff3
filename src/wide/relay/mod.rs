//! `deaddrop relay`: iroh's relay server, embedded, with a self-signed certificate that clients
//! pin by its SHA-256 (carried in the invite), so a relay needs no domain name and no CA.
//!
//! A relay forwards QUIC packets between endpoints that cannot reach each other directly, and
//! tells endpoints their public address (QUIC address discovery). It sees endpoint ids, IP
//! addresses, timing and sizes; never content: the packets are QUIC, encrypted end to end
//! between the two endpoints, and deaddrop's own records are inside.
//!
//! What a client needs of a relay is here: the pin of its certificate ([`PinnedCert`]) and its
//! defaults. The server is in [`server`], behind the cargo feature `relay-server` (on by
//! default): a build without it is smaller and answers `deaddrop relay` with an error.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

#[cfg(feature = "relay-server")]
pub mod server;

/// The default port: HTTPS on TCP, QUIC address discovery on UDP.
pub const DEFAULT_PORT: u16 = 3340;
/// Clients relayed at once by default. A room's members are a handful, each process with two or
/// three endpoints (the device's, the one it dials meeting points from, and the meeting key's
/// while it holds it); a stranger who connects
/// more is refused, which bounds what the relay keeps per client (queues, TLS state).
pub const DEFAULT_MAX_CLIENTS: usize = 256;
/// Connections from one source (an IPv4 address, an IPv6 /64) that may be in their handshake at
/// once: TLS, the HTTP upgrade and iroh's relay handshake, before the client is admitted.
pub const UNFINISHED_PER_SOURCE: usize = 16;
/// Connections in their handshake at once, from all sources together. With the client cap this
/// keeps the relay's descriptors under a service's usual limit of 1,024.
pub const UNFINISHED_TOTAL: usize = 256;
/// Time a connection has to finish its handshake (iroh-relay's own is 30 s). A client on any
/// real link needs a few round trips.
pub const ESTABLISH_TIME: Duration = Duration::from_secs(10);

/// The SHA-256 of a relay's certificate: what an invite carries and a client accepts.
pub fn pin_of(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
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
