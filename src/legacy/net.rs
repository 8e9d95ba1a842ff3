//! The legacy protocol's sockets: a sender that offers one drop the way the original does, a
//! receiver that takes every offer in its room, and fetch by token.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout};

use super::fernet::Key;
use super::wire::{self, Datagram, Kind, Reply, Request};
use crate::discovery::{Scope, udp_socket};
use crate::event::{DropId, Event, Events, Via};
use crate::protocol::id::Token;
use crate::protocol::message::{DropInfo, DropKind};
use crate::protocol::secret::Passphrase;
use crate::session::client::{Chunk, FetchError, Sink, connect_tcp};
use crate::session::holder::MAX_MESSAGE;
use crate::storage::sink::{Destination, FileSink};

const CONNECT: Duration = Duration::from_secs(3);
const LINE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(30);
/// How often a running node says HELLO (the original's period).
const HELLO_EVERY: Duration = Duration::from_secs(5);
/// Fetches running at once in `run --legacy`.
const PARALLEL_FETCHES: usize = 4;
/// Offers remembered, so one is fetched once however often it is repeated.
const MAX_SEEN: usize = 10_000;
/// The default cap on a legacy file's size (the original itself fails above 16 MiB).
pub const DEFAULT_MAX_FILE: u64 = 64 << 20;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    #[error("no such drop at that sender")]
    NotFound,
    #[error("the sender refused: {0}")]
    Refused(String),
    #[error("the drop is {len} bytes, over the cap of {cap} bytes")]
    TooLarge { len: u64, cap: u64 },
    #[error(transparent)]
    Decrypt(#[from] super::fernet::InvalidToken),
    #[error("timed out waiting for the sender")]
    Timeout,
    #[error("the sender broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("{0}")]
    Declined(String),
    #[error(transparent)]
    Save(#[from] FetchError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

async fn in_time<T>(
    limit: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, LegacyError> {
    match timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LegacyError::Timeout),
    }
}

/// Reads one line of at most [`wire::MAX_LINE`] bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, LegacyError> {
    let mut line = Vec::new();
    in_time(
        LINE,
        (&mut *r)
            .take(wire::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line),
    )
    .await?;
    if line.len() > wire::MAX_LINE || line.last() != Some(&b'\n') {
        return Err(LegacyError::Protocol("no complete line"));
    }
    line.pop();
    Ok(line)
}

/// What a legacy fetch brought.
#[derive(Debug)]
pub enum Got {
    /// A message's text.
    Message(Vec<u8>),
    /// A file, saved where the destination said (`path` is `None` on standard output).
    File {
        name: String,
        path: Option<PathBuf>,
        size: u64,
    },
}

/// A drop fetched from a legacy sender, decrypted and checked.
#[derive(Debug)]
pub struct Fetched {
    pub from: SocketAddr,
    pub got: Got,
}

/// Caps on what a legacy fetch reads, as plaintext sizes.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub message: u64,
    pub file: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            message: MAX_MESSAGE as u64,
            file: DEFAULT_MAX_FILE,
        }
    }
}

/// Asks the sender at `addr` for `token`, decrypts and checks it. The payload length is checked
/// against the cap for its kind before a byte of it is read. A message is read into memory (it
/// is at most 1 MiB); a file streams through the decryptor into `files` (a hidden partial file,
/// published only once the token's tag checks out, as native drops are), in constant memory
/// whatever its size. Without `files`, a file is declined unread.
pub async fn fetch_from(
    pass: &Passphrase,
    bind_ip: Ipv4Addr,
    addr: SocketAddr,
    token: &str,
    caps: Caps,
    files: Option<&Destination>,
) -> Result<Fetched, LegacyError> {
    let stream = connect_tcp(
        Some(bind_ip.into()).filter(|ip: &std::net::IpAddr| !ip.is_unspecified()),
        addr,
        CONNECT,
    )
    .await?;
    let mut stream = BufReader::new(stream);
    in_time(
        LINE,
        stream.get_mut().write_all(&wire::fetch_request(token)),
    )
    .await?;
    let line = read_line(&mut stream).await?;
    let (kind, name) = match Reply::parse(&line) {
        Some(Reply::Ok { kind, name, .. }) => (kind, name),
        Some(Reply::Err { err, .. }) if err == "notfound" => return Err(LegacyError::NotFound),
        Some(Reply::Err { err, .. }) => return Err(LegacyError::Refused(err)),
        None => return Err(LegacyError::Protocol("not a reply line")),
    };
    let len = in_time(LINE, stream.read_u64()).await?;
    let cap = wire::max_payload(match kind {
        Kind::Message => caps.message,
        Kind::File => caps.file,
    });
    if len > cap {
        return Err(LegacyError::TooLarge { len, cap });
    }
    if len <= wire::SALT_LEN as u64 {
        return Err(LegacyError::Protocol("the payload is too short"));
    }
    let dest = match (kind, files) {
        (Kind::File, None) => {
            return Err(LegacyError::Declined("files are not taken here".into()));
        }
        (_, dest) => dest,
    };
    let mut salt = [0u8; wire::SALT_LEN];
    in_time(IDLE, stream.read_exact(&mut salt)).await?;
    let key = {
        let pass = pass.clone();
        tokio::task::spawn_blocking(move || Key::derive(&pass, &salt))
            .await
            .map_err(io::Error::other)?
    };
    let rest = len - wire::SALT_LEN as u64;
    let got = match (kind, dest) {
        (Kind::File, Some(dest)) => {
            let (path, size) =
                save_stream(&mut stream, rest, &key, dest.clone(), token, &name).await?;
            Got::File { name, path, size }
        }
        _ => {
            // A message: capped above at about 1.4 MB of payload.
            let mut text = vec![0u8; rest as usize];
            in_time(IDLE, stream.read_exact(&mut text)).await?;
            let plain = tokio::task::spawn_blocking(move || key.decrypt(&text, 0, None))
                .await
                .map_err(io::Error::other)??;
            Got::Message(plain)
        }
    };
    Ok(Fetched { from: addr, got })
}

/// Partial files are named by a native token; one is derived from the legacy token.
fn partial_id(token: &str) -> Token {
    let hash = blake3::hash(token.as_bytes());
    Token(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Decrypts `len` bytes of token text from `stream` into `dest` with the same rules as a native
/// file: a hidden partial file, a sanitized name, never overwriting, and nothing published
/// unless the token's tag checks out. Returns where it landed and the plaintext's size.
async fn save_stream<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    len: u64,
    key: &Key,
    dest: Destination,
    token: &str,
    name: &str,
) -> Result<(Option<PathBuf>, u64), LegacyError> {
    let id = partial_id(token);
    let mut info = DropInfo {
        token: id,
        kind: DropKind::File,
        // No more plaintext than decoded bytes: what the free-space check needs.
        size: len / 4 * 3,
        name: name.to_owned(),
        created_unix: 0,
        ttl_left_ms: 60_000,
        fetches_left: 1,
        executable: false,
    };
    let mut sink = FileSink::new(dest, id, None)?;
    let result = async {
        sink.begin(&info, 0).await?;
        let mut decryptor = key.decryptor();
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let (mut left, mut size) = (len, 0u64);
        let mut last = false;
        while !last {
            let mut out = sink.spare();
            out.clear();
            if left > 0 {
                let want = (left as usize).min(buf.len());
                let n = in_time(IDLE, stream.read(&mut buf[..want])).await?;
                if n == 0 {
                    return Err(LegacyError::Protocol("the payload was cut short"));
                }
                left -= n as u64;
                decryptor.update(&buf[..n], &mut out)?;
            } else {
                last = true;
                std::mem::replace(&mut decryptor, key.decryptor()).finish(&mut out)?;
            }
            if !out.is_empty() {
                hasher.update(&out);
                size += out.len() as u64;
                let n = out.len();
                sink.write(Chunk::new(out, 0..n)).await?;
            }
        }
        info.size = size;
        sink.finish(&info, *hasher.finalize().as_bytes()).await?;
        Ok(size)
    }
    .await;
    match result {
        Ok(size) => Ok((sink.published().map(Path::to_path_buf), size)),
        Err(e) => {
            sink.abort(false).await;
            Err(e)
        }
    }
}

/// What a legacy sender offers.
#[derive(Debug, Clone)]
pub struct Offer {
    pub kind: Kind,
    pub name: String,
    pub plaintext: Arc<Vec<u8>>,
    pub ttl: Duration,
}

/// How a legacy drop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Fetched { by: SocketAddr },
    Expired,
}

fn local_ip(scope: &Scope) -> Ipv4Addr {
    if !scope.bind_v4().is_unspecified() {
        return scope.bind_v4();
    }
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter().find_map(|i| match i.addr {
                if_addrs::IfAddr::V4(v4) if !v4.ip.is_loopback() => Some(v4.ip),
                _ => None,
            })
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

async fn broadcast(sock: &UdpSocket, scope: &Scope, d: &Datagram) {
    let bytes = d.encode();
    for target in scope.targets().filter(SocketAddr::is_ipv4) {
        if let Err(e) = sock.send_to(&bytes, target).await {
            tracing::debug!("legacy send to {target} failed: {e}");
        }
    }
}

/// Offers one drop as the original does: one OFFER, a HELLO every 5 s, and the drop to the first
/// fetch that names its token (no authentication: that is the original's protocol). Returns when
/// it was fetched or expired.
pub async fn serve(
    pass: &Passphrase,
    offer: Offer,
    scope: &Scope,
    events: Events,
) -> io::Result<Outcome> {
    let token = Token::random().to_string();
    let payload = {
        let (pass, plain) = (pass.clone(), offer.plaintext.clone());
        tokio::task::spawn_blocking(move || wire::seal_payload(&pass, &plain))
            .await
            .map_err(io::Error::other)?
    };
    let listener = TcpListener::bind((scope.bind_v4(), 0)).await?;
    let address = listener.local_addr()?;
    let sock = udp_socket(SocketAddr::from((scope.bind_v4(), 0)), false)?;
    let room = wire::room_id(pass);
    let expires_at = unix_now() + offer.ttl.as_secs_f64();
    let deadline = Instant::now() + offer.ttl + Duration::from_secs_f64(wire::EXPIRY_GRACE_SECS);
    events(Event::Offered {
        token: DropId::Legacy(token.clone()),
        kind: match offer.kind {
            Kind::Message => DropKind::Message,
            Kind::File => DropKind::File,
        },
        name: offer.name.clone(),
        size: offer.plaintext.len() as u64,
        ttl_ms: offer.ttl.as_millis() as u64,
        max_fetches: Some(1),
        address: address.to_string(),
    });
    broadcast(
        &sock,
        scope,
        &Datagram::Offer {
            id: token.clone(),
            kind: offer.kind,
            name: offer.name.clone(),
            port: address.port(),
            expires_at,
            room: room.clone(),
        },
    )
    .await;
    let hello = Datagram::Hello {
        room,
        ip: local_ip(scope).to_string(),
        port: address.port(),
    };
    let drop_left = Arc::new(Mutex::new(Some((offer.kind, offer.name.clone(), payload))));
    let (fetched_tx, mut fetched_rx) = mpsc::unbounded_channel();
    let mut next_hello = Instant::now();
    let served = Arc::new(Semaphore::new(16));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, from)) = accepted else { continue };
                let Ok(permit) = served.clone().try_acquire_owned() else { continue };
                let (drop_left, token, tx) = (drop_left.clone(), token.clone(), fetched_tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(conn, &token, expires_at, &drop_left, from, &tx).await {
                        tracing::debug!("legacy fetch from {from}: {e}");
                    }
                    drop(permit);
                });
            }
            Some(by) = fetched_rx.recv() => {
                events(Event::Fetched {
                    token: DropId::Legacy(token.clone()),
                    by: by.ip().to_string(),
                    address: by.to_string(),
                    via: Via::Lan,
                    delivered: 1,
                });
                events(Event::UsedUp { token: DropId::Legacy(token.clone()), delivered: 1 });
                return Ok(Outcome::Fetched { by });
            }
            _ = sleep_until(next_hello) => {
                broadcast(&sock, scope, &hello).await;
                next_hello = Instant::now() + HELLO_EVERY;
            }
            _ = sleep_until(deadline) => {
                events(Event::Expired { token: DropId::Legacy(token.clone()), delivered: 0 });
                return Ok(Outcome::Expired);
            }
        }
    }
}

type LeftDrop = Mutex<Option<(Kind, String, Vec<u8>)>>;

/// One connection to a legacy sender: one request line, one reply.
async fn answer(
    conn: TcpStream,
    token: &str,
    expires_at: f64,
    drop_left: &LeftDrop,
    from: SocketAddr,
    fetched: &mpsc::UnboundedSender<SocketAddr>,
) -> Result<(), LegacyError> {
    let mut conn = BufReader::new(conn);
    let line = read_line(&mut conn).await;
    let reply = match line.map(|l| wire::parse_request(&l)) {
        Ok(Request::Fetch(t))
            if t == token && unix_now() <= expires_at + wire::EXPIRY_GRACE_SECS =>
        {
            // The original removes a drop on its first fetch, whatever happens next.
            let taken = drop_left.lock().expect("drop lock").take();
            match taken {
                Some((kind, name, payload)) => {
                    let _ = fetched.send(from);
                    let w = conn.get_mut();
                    in_time(LINE, w.write_all(&Reply::ok(kind, &name).line())).await?;
                    in_time(LINE, w.write_all(&(payload.len() as u64).to_be_bytes())).await?;
                    in_time(IDLE, w.write_all(&payload)).await?;
                    in_time(LINE, w.shutdown()).await?;
                    return Ok(());
                }
                None => Reply::err("notfound"),
            }
        }
        Ok(Request::Fetch(_)) => Reply::err("notfound"),
        Ok(Request::BadOp) => Reply::err("badop"),
        Ok(Request::BadJson) | Err(_) => Reply::err("badjson"),
    };
    in_time(LINE, conn.get_mut().write_all(&reply.line())).await?;
    Ok(())
}

/// What `run --legacy` does with offers.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Where files go; `None` takes messages only.
    pub files: Option<PathBuf>,
    pub caps: Caps,
}

/// Offers seen, bounded: the oldest are forgotten first.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= MAX_SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Receives every drop offered in the room by original senders until `shutdown`: prints
/// messages, saves files.
pub async fn receive(
    pass: Passphrase,
    scope: Scope,
    opts: ReceiveOptions,
    events: Events,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let sock = udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, scope.port)), true)?;
    let room = wire::room_id(&pass);
    events(Event::Listening {
        discovery_port: scope.port,
        targets: Vec::new(),
        folder: opts.files.as_ref().map(|d| d.display().to_string()),
    });
    let (pass, opts, scope) = (Arc::new(pass), Arc::new(opts), Arc::new(scope));
    let permits = Arc::new(Semaphore::new(PARALLEL_FETCHES));
    let mut seen = Seen::default();
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    tokio::pin!(shutdown);
    loop {
        let (n, src) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = sock.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
        };
        if !scope.admits(src) {
            continue;
        }
        let Some(Datagram::Offer {
            id,
            kind,
            name,
            port,
            expires_at,
            room: r,
        }) = Datagram::decode(&buf[..n])
        else {
            continue;
        };
        if r != room || expires_at + wire::EXPIRY_GRACE_SECS < unix_now() || !seen.insert(&id) {
            continue;
        }
        if kind == Kind::File && opts.files.is_none() {
            events(Event::Skipped {
                token: DropId::Legacy(id),
                kind: DropKind::File,
                name,
                size: 0,
                from: src.ip().to_string(),
                reason: "files are not taken (--no-files)".into(),
            });
            continue;
        }
        let holder = SocketAddr::new(src.ip(), port);
        let (pass, opts, scope, events) =
            (pass.clone(), opts.clone(), scope.clone(), events.clone());
        let kind = match kind {
            Kind::File => DropKind::File,
            _ => DropKind::Message,
        };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        tokio::spawn(async move {
            let result = take(&pass, &scope, &opts, holder, &id, &events).await;
            if let Err(e) = result {
                events(Event::FetchFailed {
                    token: DropId::Legacy(id),
                    kind,
                    name,
                    from: holder.ip().to_string(),
                    reason: e.to_string(),
                    retrying: false,
                });
            }
            drop(permit);
        });
    }
}

async fn take(
    pass: &Passphrase,
    scope: &Scope,
    opts: &ReceiveOptions,
    holder: SocketAddr,
    id: &str,
    events: &Events,
) -> Result<(), LegacyError> {
    let files = opts.files.clone().map(Destination::Folder);
    let fetched = fetch_from(pass, scope.bind_v4(), holder, id, opts.caps, files.as_ref()).await?;
    deliver(fetched, id, events);
    Ok(())
}

/// Says what a fetch brought: a message shown, a file saved.
pub fn deliver(fetched: Fetched, id: &str, events: &Events) {
    let token = DropId::Legacy(id.to_owned());
    let from = fetched.from.ip().to_string();
    let address = fetched.from.to_string();
    match fetched.got {
        Got::Message(plain) => events(Event::Message {
            token,
            from,
            address,
            via: Via::Lan,
            text: String::from_utf8_lossy(&plain).into_owned(),
            sent_unix: unix_now() as u64,
        }),
        Got::File {
            path: Some(path),
            size,
            ..
        } => events(Event::Received {
            token,
            kind: DropKind::File,
            path: path.display().to_string(),
            size,
            files: 1,
            from,
            address,
            via: Via::Lan,
        }),
        Got::File { path: None, .. } => {}
    }
}

/// Fetch by token: asks each `peer` (TCP addresses) directly, then every sender in the room
/// that announces itself (HELLO) or the drop (OFFER) within `wait`.
pub async fn find(
    pass: &Passphrase,
    scope: &Scope,
    token: &str,
    peers: &[SocketAddr],
    wait: Duration,
    caps: Caps,
    files: &Destination,
) -> Result<Fetched, LegacyError> {
    for peer in peers {
        match fetch_from(pass, scope.bind_v4(), *peer, token, caps, Some(files)).await {
            Err(LegacyError::NotFound) => continue,
            Err(e) if peers.len() == 1 => return Err(e),
            Err(e) => tracing::info!("legacy peer {peer}: {e}"),
            ok => return ok,
        }
    }
    let sock = udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, scope.port)), true)?;
    let room = wire::room_id(pass);
    let deadline = Instant::now() + wait;
    let mut tried = HashSet::new();
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    loop {
        let (n, src) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
            _ = sleep_until(deadline) => return Err(LegacyError::NotFound),
        };
        if !scope.admits(src) {
            continue;
        }
        let port = match Datagram::decode(&buf[..n]) {
            Some(Datagram::Offer {
                id, port, room: r, ..
            }) if r == room && id == token => port,
            Some(Datagram::Hello { port, room: r, .. }) if r == room => port,
            _ => continue,
        };
        let holder = SocketAddr::new(src.ip(), port);
        if !tried.insert(holder) {
            continue;
        }
        match fetch_from(pass, scope.bind_v4(), holder, token, caps, Some(files)).await {
            Err(LegacyError::NotFound) => continue,
            other => return other,
        }
    }
}
