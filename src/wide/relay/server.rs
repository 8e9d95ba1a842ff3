//! The relay server itself (cargo feature `relay-server`, on by default): iroh-relay's server
//! embedded, with its own accept loop.
//!
//! The relay accepts its own TCP connections ([`accept_loop`]) rather than leaving that to
//! iroh-relay's server: a connection is in its *handshake* (TLS, the HTTP upgrade, iroh's relay
//! handshake) until iroh's service says it is established, and until then it counts against a
//! per-source cap ([`UNFINISHED_PER_SOURCE`]) and an overall one ([`UNFINISHED_TOTAL`]), and it
//! has [`ESTABLISH_TIME`] to finish. iroh-relay itself gives such a connection 30 s and keeps
//! no count (its `accept_conn_*` limits are unimplemented), and after the upgrade none at all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use iroh::EndpointId;
use iroh_relay::server::http_server::{
    BytesBody, Handlers, HyperError, HyperResult, RelayService, RelayServiceWithNotify,
};
use iroh_relay::server::streams::MaybeTlsStream;
use iroh_relay::server::{
    Access, AccessControl, ClientRequest, ConnectionId, Metrics, QuicConfig, Server, ServerConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{ESTABLISH_TIME, UNFINISHED_PER_SOURCE, UNFINISHED_TOTAL, pin_of};
use crate::session::limit::SourceKey;
use crate::wide::config::write_private;

/// A warning for the operator, given at most once a minute however often it happens.
#[derive(Debug, Default)]
struct Sparse(Mutex<Option<Instant>>);

impl Sparse {
    fn warn(&self, what: impl std::fmt::Display) {
        let mut last = self.0.lock().expect("warning lock");
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("{what}");
        }
    }
}

/// Admits at most `max` clients at once (counted after iroh's relay handshake, which proves
/// each client's endpoint key).
#[derive(Debug)]
struct ClientCap {
    open: AtomicUsize,
    max: usize,
    full: Sparse,
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
            self.full.warn(format_args!(
                "the relay is full ({} clients at once, --max-clients): refusing new ones",
                self.max
            ));
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
    /// iroh-relay's server, for QUIC address discovery only.
    server: Server,
    /// [`accept_loop`]: relaying, over HTTPS.
    https: tokio::task::JoinHandle<()>,
    https_addr: SocketAddr,
    service: RelayService,
    /// SHA-256 of the certificate, for `#sha256=` in relay URLs.
    pub pin: [u8; 32],
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.https.abort();
        let service = self.service.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { service.shutdown().await });
        }
    }
}

impl RunningRelay {
    /// Where it serves HTTPS (relaying).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        Some(self.https_addr)
    }

    /// Where it serves QUIC address discovery.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.server.quic_addr()
    }

    /// Runs until the server stops on its own (an error).
    pub async fn stopped(mut self) -> std::io::Result<()> {
        tokio::select! {
            r = self.server.join() => r
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other),
            r = &mut self.https => {
                r.map_err(std::io::Error::other)?;
                Err(std::io::Error::other("the relay stopped accepting connections"))
            }
        }
    }
}

/// Handshakes under way, per source and in all.
#[derive(Debug, Default)]
struct Unfinished {
    per_source: HashMap<SourceKey, usize>,
    total: usize,
}

#[derive(Debug, Default)]
struct Front {
    unfinished: Mutex<Unfinished>,
    /// Connections closed on arrival, over the caps.
    refused: Sparse,
    /// `accept` failing (out of descriptors, typically).
    failing: Sparse,
}

impl Front {
    /// A handshake slot for a connection from `ip`, if its source and the relay have one free.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = SourceKey::from(ip);
        let mut u = self.unfinished.lock().expect("unfinished lock");
        let n = u.per_source.get(&key).copied().unwrap_or(0);
        if n >= UNFINISHED_PER_SOURCE || u.total >= UNFINISHED_TOTAL {
            return None;
        }
        *u.per_source.entry(key).or_default() += 1;
        u.total += 1;
        Some(Slot {
            front: self.clone(),
            key,
        })
    }
}

/// One connection's handshake slot, given back when dropped.
struct Slot {
    front: Arc<Front>,
    key: SourceKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut u = self.front.unfinished.lock().expect("unfinished lock");
        u.total -= 1;
        if let Some(n) = u.per_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                u.per_source.remove(&self.key);
            }
        }
    }
}

/// Accepts relay connections on `listener`: each gets a handshake slot or is closed at once.
async fn accept_loop(
    listener: TcpListener,
    service: RelayService,
    tls: tokio_rustls::TlsAcceptor,
    front: Arc<Front>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, typically: do not spin on it.
                front
                    .failing
                    .warn(format_args!("the relay cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = front.admit(peer.ip()) else {
            front.refused.warn(format_args!(
                "too many connections in their handshake (at most {UNFINISHED_PER_SOURCE} per \
                 address, {UNFINISHED_TOTAL} in all): closing new ones"
            ));
            continue;
        };
        tokio::spawn(connection(stream, slot, service.clone(), tls.clone()));
    }
}

/// Serves one connection: TLS, then iroh's relay service; the slot is given back when iroh says
/// the client is established (or the connection ends), and a connection that has not got that
/// far within [`ESTABLISH_TIME`] is shut.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    service: RelayService,
    tls: tokio_rustls::TlsAcceptor,
) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket: after the upgrade, hyper hands the stream to a task of
    // iroh's own, which nothing here can cancel; shutting the socket ends it. Without one (out
    // of descriptors) the connection could outlive its deadline: close it now.
    let Ok(socket) = socket2::SockRef::from(&stream).try_clone() else {
        return;
    };
    let established = Arc::new(Notify::new());
    let notified = established.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let upgraded = Arc::new(AtomicBool::new(false));
    let svc = Watched {
        inner: RelayServiceWithNotify::new(service, established.clone()),
        upgraded: upgraded.clone(),
    };
    let serve = async move {
        let Ok(stream) = tls.accept(stream).await else {
            return;
        };
        // A relay upgrade request is a few hundred bytes: 16 KiB of buffer, not hyper's 400.
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(16 * 1024)
            .serve_connection(
                hyper_util::rt::TokioIo::new(MaybeTlsStream::Tls(stream)),
                svc,
            )
            .with_upgrades()
            .await;
    };
    tokio::pin!(serve);
    let deadline = tokio::time::sleep(ESTABLISH_TIME);
    tokio::pin!(deadline);
    let mut serving = true;
    loop {
        tokio::select! {
            _ = &mut notified => {
                drop(slot);
                if serving {
                    serve.await;
                }
                return;
            }
            _ = &mut serve, if serving => {
                serving = false;
                if !upgraded.load(Ordering::SeqCst) {
                    return;
                }
                // Upgraded: iroh's relay handshake goes on in its task; wait for it here.
            }
            _ = &mut deadline => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

/// iroh's per-connection service, noting whether it agreed to upgrade to the relay protocol.
#[derive(Clone)]
struct Watched {
    inner: RelayServiceWithNotify,
    upgraded: Arc<AtomicBool>,
}

impl Service<Request<Incoming>> for Watched {
    type Response = Response<BytesBody>;
    type Error = HyperError;
    type Future = std::future::Ready<HyperResult<Response<BytesBody>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let response = self.inner.call(req).into_inner();
        if matches!(&response, Ok(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS) {
            self.upgraded.store(true, Ordering::SeqCst);
        }
        std::future::ready(response)
    }
}

fn empty() -> BytesBody {
    Box::new(http_body_util::Empty::new())
}

/// `GET /ping`: iroh's HTTPS latency probe.
fn probe(
    _: Request<Incoming>,
    r: hyper::http::response::Builder,
) -> HyperResult<Response<BytesBody>> {
    r.status(StatusCode::OK)
        .header("Access-Control-Allow-Origin", "*")
        .body(empty())
        .map_err(|e| Box::new(e) as HyperError)
}

/// `GET /healthz`, for an operator's monitoring.
fn healthz(
    _: Request<Incoming>,
    r: hyper::http::response::Builder,
) -> HyperResult<Response<BytesBody>> {
    r.status(StatusCode::OK)
        .body(Box::new(http_body_util::Full::from("ok\n")) as BytesBody)
        .map_err(|e| Box::new(e) as HyperError)
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
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'; form-action 'none'; base-uri 'self'; \
             block-all-mixed-content; plugin-types 'none'",
        ),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    let mut handlers = Handlers::default();
    handlers.insert(
        (Method::GET, iroh_relay::http::RELAY_PROBE_PATH),
        Box::new(probe),
    );
    handlers.insert((Method::GET, "/healthz"), Box::new(healthz));
    let service = RelayService::new(
        handlers,
        headers,
        None,
        iroh_relay::KeyCache::new(1024),
        Arc::new(ClientCap {
            open: AtomicUsize::new(0),
            max: max_clients,
            full: Sparse::default(),
        }),
        Arc::new(Metrics::default()),
    );
    let cannot = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("cannot start the relay on {bind}: {e}"))
    };
    let listener = TcpListener::bind(bind).await.map_err(|e| cannot(&e))?;
    let https_addr = listener.local_addr()?;
    let tls = Arc::new(tls);
    let https = tokio::spawn(accept_loop(
        listener,
        service.clone(),
        tokio_rustls::TlsAcceptor::from(tls.clone()),
        Arc::default(),
    ));
    // iroh-relay's server only for QUIC address discovery, on the same port over UDP.
    let mut quic = QuicConfig::new(SocketAddr::new(bind.ip(), https_addr.port()));
    quic.server_config = Some((*tls).clone());
    let mut config = ServerConfig::default();
    config.quic = Some(quic);
    let server = match Server::spawn(config).await {
        Ok(s) => s,
        Err(e) => {
            https.abort();
            return Err(cannot(&e));
        }
    };
    Ok(RunningRelay {
        server,
        https,
        https_addr,
        service,
        pin,
    })
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
        use crate::wide::relay::PinnedCert;
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};

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
