//! The fetching side of a session: connect to one holder, authenticate, list its drops, fetch one
//! and acknowledge it. Also finding holders on the LAN for `fetch` and `list`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::discovery::{Discovery, Heard, Scope};
use crate::event::Via;
use crate::protocol::id::{PeerId, Token};
use crate::protocol::message::{DropInfo, Member, Refusal, Reply, Request};
use crate::protocol::secret::Passphrase;
use crate::session::contacts::{Attempt, Book, Contact, Mode, Outcome};
use crate::session::transport::{self, Session, SessionError, Timeouts};
use crate::wide::room::{WideLink, WideRoom};

/// Who this process is when it talks to holders.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub pass: Passphrase,
    pub id: PeerId,
    /// How this process is shown to holders.
    pub name: String,
    /// Where this process may go: outgoing connections leave from a chosen address when
    /// confined.
    pub scope: Arc<Scope>,
    pub timeouts: Timeouts,
    /// The wide-area side of the room, if it has one (an invite).
    pub wide: Option<Arc<WideRoom>>,
    /// This device, as holders count fetches ([`Request::Device`]): the same on every process
    /// of the device, so `--max-fetches N` means N devices. `None`: counted by `id`.
    pub device: Option<PeerId>,
}

/// The id a device's receivers give holders, from its device key: a labelled hash, so it
/// names the device without being its endpoint id.
pub fn device_id(device_key: &[u8; 32]) -> PeerId {
    let hash = blake3::derive_key("deaddrop/v1/device", device_key);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    PeerId(id)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the received content does not match the holder's hash; nothing was kept")]
    Corrupt,
    #[error("the holder stopped the transfer: {0}")]
    Aborted(Refusal),
    /// This side declined the drop (too large, wrong kind for the destination...).
    #[error("{0}")]
    Declined(String),
    #[error("not enough disk space: {needed} bytes needed, {available} available")]
    NoSpace { needed: u64, available: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Saving failed on this side (permissions, a full disk, a folder removed meanwhile).
    #[error("cannot save in {}: {error}", folder.display())]
    Save { folder: PathBuf, error: io::Error },
    #[error("the holder broke the protocol: {0}")]
    Protocol(&'static str),
}

impl FetchError {
    /// Whether the bytes received so far are authentic and worth keeping for a later resume:
    /// the connection broke, or a record failed to open (everything before it opened fine).
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            FetchError::Session(
                SessionError::Truncated
                    | SessionError::Io(_)
                    | SessionError::Timeout(_)
                    | SessionError::Record(_)
                    | SessionError::Closed
            )
        )
    }

    /// Whether this side failed to save the drop (no space, no permission...): a cause that
    /// may pass, worth trying again later.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            FetchError::Save { .. } | FetchError::NoSpace { .. } | FetchError::Io(_)
        )
    }
}

/// Where a fetch stands, for progress reports.
#[derive(Debug)]
pub struct Transfer<'a> {
    pub info: &'a DropInfo,
    /// The other end's name.
    pub peer: &'a str,
    /// Content bytes that were already here when this fetch began (a resumed copy).
    pub resumed: u64,
    /// Content bytes here now, counting the resumed ones.
    pub done: u64,
    /// Which way the bytes go now.
    pub via: Via,
}

impl Transfer<'_> {
    /// The progress event for this transfer (on the holder's side if `sending`).
    pub fn event(&self, sending: bool) -> crate::event::Event {
        crate::event::Event::Progress {
            token: self.info.token.into(),
            name: self.info.name.clone(),
            peer: self.peer.to_owned(),
            sending,
            resumed: self.resumed,
            done: self.done,
            total: self.info.size,
            via: self.via,
        }
    }
}

/// Content bytes that arrived in one record, in a buffer the sink may keep (no copy).
#[derive(Debug)]
pub struct Chunk {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Chunk {
    pub fn new(buf: Vec<u8>, range: std::ops::Range<usize>) -> Self {
        assert!(range.end <= buf.len());
        Chunk { buf, range }
    }

    /// The buffer and where the content is in it.
    pub fn into_parts(self) -> (Vec<u8>, std::ops::Range<usize>) {
        (self.buf, self.range)
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// Where fetched content goes. The sink checks the content against the holder's hash and
/// publishes it in [`Sink::finish`]; the client checks lengths and drives the protocol.
pub trait Sink: Send {
    /// Content bytes already held from an interrupted fetch of this drop, to resume after.
    fn offset(&self) -> u64 {
        0
    }
    /// The holder granted the fetch from `offset` (0 when it starts over). An error declines.
    fn begin(
        &mut self,
        info: &DropInfo,
        offset: u64,
    ) -> impl Future<Output = Result<(), FetchError>> + Send;
    fn write(&mut self, chunk: Chunk) -> impl Future<Output = Result<(), FetchError>> + Send;
    /// A buffer to receive the next record into (one given back by an earlier write), so
    /// buffers circulate instead of being allocated per record.
    fn spare(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// Everything arrived: check it against `hash` (BLAKE3 of the whole content), then make it
    /// visible. Only a verified copy may be published.
    fn finish(
        &mut self,
        info: &DropInfo,
        hash: [u8; 32],
    ) -> impl Future<Output = Result<(), FetchError>> + Send;
    /// The fetch failed; keep what arrived (out of sight) only if `resumable`.
    fn abort(&mut self, resumable: bool) -> impl Future<Output = ()> + Send;
}

/// Collects content in memory, up to a cap (for messages).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub max: usize,
    pub data: Vec<u8>,
}

impl MemorySink {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            data: Vec::new(),
        }
    }
}

impl Sink for MemorySink {
    async fn begin(&mut self, info: &DropInfo, _offset: u64) -> Result<(), FetchError> {
        if info.size > self.max as u64 {
            return Err(FetchError::Declined(format!(
                "the drop is {} bytes, more than the {} bytes allowed here",
                info.size, self.max
            )));
        }
        self.data = Vec::with_capacity(info.size as usize);
        Ok(())
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), FetchError> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    fn spare(&mut self) -> Vec<u8> {
        Vec::new()
    }

    async fn finish(&mut self, _: &DropInfo, hash: [u8; 32]) -> Result<(), FetchError> {
        if *blake3::hash(&self.data).as_bytes() != hash {
            self.data.clear();
            return Err(FetchError::Corrupt);
        }
        Ok(())
    }

    async fn abort(&mut self, _resumable: bool) {
        self.data.clear();
    }
}

/// How a fetch ended when no error occurred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The content is in the sink and the holder counted the fetch.
    Done(DropInfo),
    Refused(Refusal),
}

/// Opens a TCP connection (from `local`, if given), with a timeout.
pub async fn connect_tcp(
    local: Option<IpAddr>,
    to: SocketAddr,
    limit: Duration,
) -> io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = local.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = timeout(limit, socket.connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A stream to a holder: TCP on the LAN, a QUIC stream beyond it. An enum rather than a boxed
/// trait object, so the LAN path keeps its direct calls.
pub enum Link {
    Tcp(TcpStream),
    Wide(Box<WideLink>),
}

impl tokio::io::AsyncRead for Link {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Link::Wide(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Link {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Link::Wide(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Link::Wide(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Link::Wide(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated session with one holder.
pub struct HolderSession {
    session: Session<Link>,
    /// The holder's display name (as it chose it; untrusted text).
    pub name: String,
    pub addr: Contact,
    via: Box<dyn Fn() -> Via + Send + Sync>,
}

/// Why a session with a holder could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct OpenError {
    pub error: SessionError,
    /// The holder had proven it is in the room before it failed.
    pub authenticated: bool,
}

impl OpenError {
    /// What the failure means for contacting this holder again.
    pub fn outcome(&self) -> Outcome {
        if self.authenticated {
            Outcome::Incomplete
        } else if self.error.is_rejection() {
            Outcome::Rejected
        } else if self.error.is_unreachable() {
            Outcome::Unreachable
        } else {
            Outcome::Cut
        }
    }
}

impl HolderSession {
    /// Connects, runs the room handshake and exchanges names.
    pub async fn open(
        ctx: &ClientContext,
        addr: Contact,
        timeouts: Timeouts,
    ) -> Result<HolderSession, OpenError> {
        let before = |error: SessionError| OpenError {
            error,
            authenticated: false,
        };
        let (stream, via): (Link, Box<dyn Fn() -> Via + Send + Sync>) = match addr {
            Contact::Lan(to) => {
                let tcp = connect_tcp(ctx.scope.local_for(to), to, timeouts.connect)
                    .await
                    .map_err(|e| before(e.into()))?;
                (Link::Tcp(tcp), Box::new(|| Via::Lan))
            }
            Contact::Wide(id, process) => {
                let room = ctx.wide.as_ref().ok_or_else(|| {
                    before(SessionError::Protocol(
                        "no wide-area room to reach it through",
                    ))
                })?;
                let link = room
                    .dial(id, process, timeouts.connect)
                    .await
                    .map_err(|e| before(e.into()))?;
                let via = link.via_now();
                (Link::Wide(Box::new(link)), Box::new(via))
            }
        };
        let mut session = transport::connect(stream, &ctx.pass, ctx.id, timeouts)
            .await
            .map_err(before)?;
        let after = |error: SessionError| OpenError {
            error,
            authenticated: true,
        };
        session
            .send_request(&Request::Hello {
                name: ctx.name.clone(),
            })
            .await
            .map_err(after)?;
        // Sent at once, not after the holder's hello: no round trip of its own.
        if let Some(id) = ctx.device {
            session
                .send_request(&Request::Device { id })
                .await
                .map_err(after)?;
        }
        let name = match session.recv_reply().await.map_err(after)? {
            Reply::Hello { name } => name,
            _ => return Err(after(SessionError::Protocol("expected a hello"))),
        };
        Ok(HolderSession {
            session,
            name,
            addr,
            via,
        })
    }

    /// Which way this session's packets go now.
    pub fn via(&self) -> Via {
        (self.via)()
    }

    pub fn holder_id(&self) -> PeerId {
        self.session.peer()
    }

    /// The drops this holder would give us now.
    pub async fn list(&mut self) -> Result<Vec<DropInfo>, SessionError> {
        self.session.send_request(&Request::List).await?;
        loop {
            match self.session.recv_reply().await? {
                Reply::Listing(drops) => return Ok(drops),
                r if is_device_unknown(&r) => continue,
                _ => return Err(SessionError::Protocol("expected a listing")),
            }
        }
    }

    /// Fetches `token` into `sink` (resuming after what the sink already holds), lets the sink
    /// verify and publish it, then acknowledges. `progress` follows the content.
    /// On failure the sink is told whether what arrived is worth keeping for a resume.
    pub async fn fetch<S: Sink>(
        &mut self,
        token: Token,
        sink: &mut S,
        mut progress: impl FnMut(&Transfer<'_>) + Send,
    ) -> Result<FetchOutcome, FetchError> {
        let result = self.fetch_inner(token, sink, &mut progress).await;
        if let Err(e) = &result {
            sink.abort(e.is_resumable()).await;
        }
        result
    }

    async fn fetch_inner<S: Sink>(
        &mut self,
        token: Token,
        sink: &mut S,
        progress: &mut (impl FnMut(&Transfer<'_>) + Send),
    ) -> Result<FetchOutcome, FetchError> {
        let want = sink.offset();
        self.session
            .send_request(&Request::Fetch {
                token,
                offset: want,
            })
            .await?;
        let (info, offset) = loop {
            match self.session.recv_reply().await? {
                Reply::Refused { token: t, reason } if t == token => {
                    return Ok(FetchOutcome::Refused(reason));
                }
                Reply::Start { info, offset }
                    if info.token == token && (offset == want || offset == 0) =>
                {
                    break (info, offset);
                }
                r if is_device_unknown(&r) => continue,
                _ => return Err(FetchError::Protocol("expected the start of the drop")),
            }
        };
        if offset > info.size {
            return Err(FetchError::Protocol("resume offset beyond the end"));
        }
        sink.begin(&info, offset).await?;
        let holder = self.name.clone();
        let mut received = offset;
        let via = &self.via;
        let mut report = |done| {
            progress(&Transfer {
                info: &info,
                peer: &holder,
                resumed: offset,
                done,
                via: via(),
            })
        };
        report(received);
        let hash = loop {
            let len = match self.session.recv_reply().await? {
                Reply::Data(data) => data.len(),
                Reply::End { hash } if received == info.size => break hash,
                Reply::End { .. } => return Err(FetchError::Corrupt),
                Reply::Abort { reason } => return Err(FetchError::Aborted(reason)),
                _ => return Err(FetchError::Protocol("expected drop content")),
            };
            received += len as u64;
            if received > info.size {
                return Err(FetchError::Corrupt);
            }
            // The record's buffer goes to the sink as it is: [kind][content].
            let record = self.session.take_record(sink.spare());
            sink.write(Chunk::new(record, 1..1 + len)).await?;
            report(received);
        };
        // Checking and saving can outlast the holder's patience for a record (a folder of a
        // million entries takes a while to unpack): say we are still here meanwhile, three
        // times per idle timeout (both sides use the same one, 30 s).
        {
            let every = self.session.idle() / 3;
            let finish = sink.finish(&info, hash);
            tokio::pin!(finish);
            loop {
                tokio::select! {
                    done = &mut finish => break done?,
                    _ = tokio::time::sleep(every) => {
                        self.session.send_request(&Request::Wait).await?;
                    }
                }
            }
        }
        // The copy is complete, verified and published: from here on nothing can be lost. The
        // holder counts the fetch when it reads the Ack; if that or its confirmation goes astray
        // (the holder exited right after counting, say), the drop is still ours.
        if let Err(e) = self.acknowledge(token).await {
            tracing::info!("the acknowledgement of {token} was not confirmed: {e}");
        }
        Ok(FetchOutcome::Done(info))
    }

    async fn acknowledge(&mut self, token: Token) -> Result<(), SessionError> {
        self.session.send_request(&Request::Ack { token }).await?;
        loop {
            match self.session.recv_reply().await? {
                Reply::Acked { token: t } if t == token => return Ok(()),
                // A holder that does not know `Wait` said so, once per `Wait` we sent.
                Reply::Unsupported { .. } => continue,
                _ => {
                    return Err(SessionError::Protocol(
                        "expected the acknowledgement to be confirmed",
                    ));
                }
            }
        }
    }

    /// Ends the session cleanly.
    pub async fn close(mut self) {
        let _ = self.session.close().await;
    }
}

/// A holder that does not know [`Request::Device`] said so (it counts by PeerId then).
fn is_device_unknown(r: &Reply<'_>) -> bool {
    matches!(r, Reply::Unsupported { kind } if *kind == Request::DEVICE_KIND)
}

/// When to send queries: quickly at first (lost datagrams are retried), then every `every` if
/// set. Receivers that name unicast peers keep asking, because peers do not hear broadcasts.
pub struct Queries {
    sent: usize,
    next: Option<Instant>,
    every: Option<Duration>,
}

/// After the first queries, `list` and `fetch` keep asking this often while they wait.
const QUERY_EVERY: Duration = Duration::from_secs(2);
/// Gaps between the first queries.
const QUERY_GAPS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_secs(2),
];

impl Queries {
    pub fn new(every: Option<Duration>) -> Self {
        Queries {
            sent: 0,
            next: Some(Instant::now()),
            every,
        }
    }

    /// Resolves when the next query is due (never, once the schedule is over).
    pub async fn due(&self) {
        match self.next {
            Some(at) => sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Sends a query now and plans the next one.
    pub async fn send(&mut self, discovery: &Discovery, me: PeerId) {
        discovery.query(me).await;
        // The start-up gaps, but never longer than the steady interval.
        let gap = match (QUERY_GAPS.get(self.sent).copied(), self.every) {
            (Some(g), Some(e)) => Some(g.min(e)),
            (g, e) => g.or(e),
        };
        self.sent += 1;
        self.next = gap.map(|g| Instant::now() + g);
    }
}

/// The TCP endpoint an announcement points to, its generation and the holder's id, if it is
/// one: `None` for queries and our own.
pub fn announced(heard: Heard, me: PeerId) -> Option<(SocketAddr, u64, PeerId)> {
    match heard {
        Heard::Announce {
            endpoint,
            id,
            generation,
            ..
        } if id != me => Some((endpoint, generation, id)),
        _ => None,
    }
}

/// Holders heard on the LAN lately, by id: the wide-area path is not used for them (the LAN
/// comes first). Bounded: when full, ids older than [`FORGET_AFTER`] are swept out, at most
/// once a second (a flood of fresh ids must not cost a sweep per datagram); until then a new id
/// is not noted, which costs only a second path to that holder (the book aliases the two).
///
/// [`FORGET_AFTER`]: crate::session::contacts::FORGET_AFTER
#[derive(Debug, Default)]
pub struct HeardOnLan {
    ids: HashMap<PeerId, std::time::Instant>,
    swept: Option<std::time::Instant>,
}

impl HeardOnLan {
    const MAX: usize = 1024;
    const SWEEP_EVERY: Duration = Duration::from_secs(1);

    pub fn note(&mut self, id: PeerId) {
        let now = std::time::Instant::now();
        if self.ids.len() >= Self::MAX && !self.ids.contains_key(&id) {
            if self
                .swept
                .is_some_and(|t| now.saturating_duration_since(t) < Self::SWEEP_EVERY)
            {
                return;
            }
            self.swept = Some(now);
            self.ids.retain(|_, t| {
                now.saturating_duration_since(*t) < crate::session::contacts::FORGET_AFTER
            });
            if self.ids.len() >= Self::MAX {
                return;
            }
        }
        self.ids.insert(id, now);
    }

    pub fn contains(&self, id: &PeerId) -> bool {
        self.ids
            .get(id)
            .is_some_and(|t| t.elapsed() < crate::session::contacts::FORGET_AFTER)
    }
}

/// Sleeps until `t` (a [`std::time::Instant`], as the book uses).
pub async fn sleep_until_std(t: std::time::Instant) {
    sleep_until(Instant::from_std(t)).await
}

/// Sessions with holders running at once, each holding the book's attempt until it ends.
pub struct Sessions<T> {
    tasks: JoinSet<T>,
    attempts: HashMap<tokio::task::Id, Attempt>,
}

impl<T: Send + 'static> Default for Sessions<T> {
    fn default() -> Self {
        Sessions {
            tasks: JoinSet::new(),
            attempts: HashMap::new(),
        }
    }
}

impl<T: Send + 'static> Sessions<T> {
    pub fn spawn(&mut self, attempt: Attempt, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.attempts.insert(handle.id(), attempt);
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next session to end: its attempt and result (`None` if the task failed).
    pub async fn next(&mut self) -> Option<(Attempt, Option<T>)> {
        let (id, result) = match self.tasks.join_next_with_id().await? {
            Ok((id, t)) => (id, Some(t)),
            Err(e) => {
                tracing::warn!("a session task failed: {e}");
                (e.id(), None)
            }
        };
        let attempt = self
            .attempts
            .remove(&id)
            .expect("every task has an attempt");
        Some((attempt, result))
    }

    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// The timeouts for a session with a holder: a stranger's are short.
pub fn timeouts_for(ctx: &ClientContext, attempt: &Attempt) -> Timeouts {
    if attempt.member {
        ctx.timeouts
    } else {
        ctx.timeouts.for_stranger()
    }
}

/// What `fetch` by token found when it did not get the drop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    #[error(
        "no holder in this room offers that drop ({holders} holder(s) answered); it may have been fetched already, withdrawn or expired"
    )]
    NotFound { holders: usize },
    #[error(
        "{rejected} holder(s) answered but none accepted the passphrase: wrong passphrase, or someone interfered"
    )]
    NoRoom { rejected: usize },
    #[error(
        "{holders} holder(s) were found but closed every connection before the handshake (busy, or limiting connections); try again"
    )]
    Busy { holders: usize },
    #[error("{0}")]
    Refused(Refusal),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// How contacting the room went, for `fetch` and `list` to explain an empty result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Holders that proved they are in the room.
    pub members: usize,
    /// Holders that failed the passphrase check.
    pub rejected: usize,
    /// Holders whose last connection was cut before the handshake.
    pub cut: usize,
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Complete | Outcome::Incomplete => self.members += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Cut => self.cut += 1,
            Outcome::Unreachable => {}
        }
    }
}

/// Contacts every holder that announces before `deadline`, as the book allows: `session` runs
/// for each (at once, each in its own task); `done` takes each result on this task and says how
/// the session went, or ends everything with a value. With `drain`, sessions still running at
/// the deadline are waited for (each is bounded by its timeouts); without, they are dropped.
async fn each_holder<T, R, F>(
    ctx: &ClientContext,
    discovery: &Discovery,
    deadline: std::time::Instant,
    drain: bool,
    session: impl Fn(ClientContext, Contact, Timeouts) -> F,
    mut done: impl AsyncFnMut(&Attempt, Option<T>) -> ControlFlow<R, Outcome>,
) -> (Option<R>, Tally)
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut book = Book::new(Mode::Once);
    let mut queries = Queries::new(Some(QUERY_EVERY));
    let mut sessions: Sessions<T> = Sessions::default();
    let mut members = wide_members(ctx);
    let mut lan = HeardOnLan::default();
    let mut tally = Tally::default();
    // Holders whose last try was cut, counted once at the end.
    let mut cut = std::collections::HashSet::new();
    let mut finish = async |book: &mut Book, attempt: Attempt, result: Option<T>| {
        let outcome = match done(&attempt, result).await {
            ControlFlow::Continue(outcome) => outcome,
            ControlFlow::Break(r) => return Some(r),
        };
        match outcome {
            Outcome::Cut => {
                cut.insert(attempt.addr);
            }
            Outcome::Unreachable => {
                cut.remove(&attempt.addr);
            }
            _ => {
                cut.remove(&attempt.addr);
                tally.count(outcome);
            }
        }
        book.finished(attempt, outcome, std::time::Instant::now());
        None
    };
    loop {
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        while let Some(attempt) = book.next(now) {
            let task = session(ctx.clone(), attempt.addr, timeouts_for(ctx, &attempt));
            sessions.spawn(attempt, task);
        }
        // At least a millisecond, so a wake-up that finds nothing to start cannot spin.
        let floor = now + Duration::from_millis(1);
        let wake = book
            .next_wake(now)
            .unwrap_or(deadline)
            .min(deadline)
            .max(floor);
        tokio::select! {
            heard = discovery.recv() => {
                if let Some((addr, generation, id)) = announced(heard, ctx.id) {
                    lan.note(id);
                    book.on_announce(addr, generation, Some(id), std::time::Instant::now());
                }
            }
            list = next_members(&mut members) => on_members(&mut book, &list, &lan),
            Some((attempt, result)) = sessions.next(), if !sessions.is_empty() => {
                if let Some(r) = finish(&mut book, attempt, result).await {
                    sessions.abort_all();
                    return (Some(r), tally);
                }
            }
            _ = sleep_until_std(wake) => book.wake(),
            _ = queries.due() => queries.send(discovery, ctx.id).await,
        }
    }
    if drain {
        while let Some((attempt, result)) = sessions.next().await {
            if let Some(r) = finish(&mut book, attempt, result).await {
                return (Some(r), tally);
            }
        }
    }
    sessions.abort_all();
    tally.cut = cut.len();
    // Beyond the LAN, a wrong passphrase shows first at the meeting point.
    if ctx.wide.as_ref().is_some_and(|w| w.rejected_at_meeting()) {
        tally.rejected += 1;
    }
    (None, tally)
}

/// The meeting point's member lists of the wide-area room, if there is one; the current list
/// comes first.
pub fn wide_members(ctx: &ClientContext) -> Option<tokio::sync::watch::Receiver<Arc<Vec<Member>>>> {
    ctx.wide.as_ref().map(|room| {
        let mut rx = room.members();
        rx.mark_changed();
        rx
    })
}

/// The next member list (never, without a wide-area room).
pub async fn next_members(
    rx: &mut Option<tokio::sync::watch::Receiver<Arc<Vec<Member>>>>,
) -> Arc<Vec<Member>> {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return rx.borrow_and_update().clone();
    }
    std::future::pending().await
}

/// Holders on the meeting point's list are announcements of the wide-area room, except those
/// heard on the LAN.
pub fn on_members(book: &mut Book, members: &[Member], lan: &HeardOnLan) {
    let now = std::time::Instant::now();
    for m in members {
        if lan.contains(&m.peer) {
            continue;
        }
        if let Some(generation) = m.generation {
            book.on_announce(
                Contact::Wide(m.id, Some(m.peer)),
                generation,
                Some(m.peer),
                now,
            );
        }
    }
}

/// The outcome of a failed attempt to open a session, logged.
fn failed(addr: Contact, result: Option<OpenError>) -> Outcome {
    match result {
        Some(e) => {
            tracing::info!("holder at {addr}: {e}");
            e.outcome()
        }
        None => Outcome::Cut,
    }
}

/// Finds the holder of `token` within `wait` and fetches it into `sink`. Returns the drop, the
/// holder's name and its address. Handshakes with every holder found run at once (a silent stranger delays
/// no one); the fetches themselves run one at a time, since they share the sink.
pub async fn fetch_token<S: Sink>(
    ctx: &ClientContext,
    discovery: &Discovery,
    token: Token,
    wait: Duration,
    sink: &mut S,
    mut progress: impl FnMut(&Transfer<'_>) + Send,
) -> Result<(DropInfo, String, Contact, Via), FindError> {
    let deadline = std::time::Instant::now() + wait;
    let open =
        |ctx: ClientContext, addr, t| async move { HolderSession::open(&ctx, addr, t).await };
    let (found, tally) = each_holder(
        ctx,
        discovery,
        deadline,
        false,
        open,
        async |attempt: &Attempt, opened: Option<Result<HolderSession, OpenError>>| {
            let mut hs = match opened {
                Some(Ok(hs)) => hs,
                Some(Err(e)) => return ControlFlow::Continue(failed(attempt.addr, Some(e))),
                None => return ControlFlow::Continue(failed(attempt.addr, None)),
            };
            let outcome = hs.fetch(token, sink, &mut progress).await;
            let (name, addr, via) = (hs.name.clone(), hs.addr, hs.via());
            hs.close().await;
            match outcome {
                Ok(FetchOutcome::Done(info)) => ControlFlow::Break(Ok((info, name, addr, via))),
                Ok(FetchOutcome::Refused(Refusal::NotFound)) => {
                    ControlFlow::Continue(Outcome::Complete)
                }
                Ok(FetchOutcome::Refused(r)) => ControlFlow::Break(Err(FindError::Refused(r))),
                Err(e) => ControlFlow::Break(Err(e.into())),
            }
        },
    )
    .await;
    if let Some(result) = found {
        return result;
    }
    Err(if tally.members == 0 && tally.rejected > 0 {
        FindError::NoRoom {
            rejected: tally.rejected,
        }
    } else if tally.members == 0 && tally.cut > 0 {
        FindError::Busy { holders: tally.cut }
    } else {
        FindError::NotFound {
            holders: tally.members,
        }
    })
}

/// One holder's answer to `list`.
#[derive(Debug, Clone)]
pub struct Listing {
    pub holder: String,
    /// The holder's id, as it proved it in the handshake: one process, whatever path reached it.
    pub holder_id: PeerId,
    pub addr: Contact,
    pub drops: Vec<DropInfo>,
}

/// Lists the drops on offer in the room: every holder that announces within `wait`. Returns
/// the listings and how the other holders answered.
pub async fn list_room(
    ctx: &ClientContext,
    discovery: &Discovery,
    wait: Duration,
) -> (Vec<Listing>, Tally) {
    let deadline = std::time::Instant::now() + wait;
    let list = |ctx: ClientContext, addr, t| async move {
        let mut hs = HolderSession::open(&ctx, addr, t).await?;
        let drops = hs.list().await.map_err(|error| OpenError {
            error,
            authenticated: true,
        })?;
        let listing = Listing {
            holder: hs.name.clone(),
            holder_id: hs.holder_id(),
            addr,
            drops,
        };
        hs.close().await;
        Ok(listing)
    };
    let mut listings = Vec::new();
    let (_, tally) = each_holder::<_, (), _>(
        ctx,
        discovery,
        deadline,
        true,
        list,
        async |attempt: &Attempt, result: Option<Result<Listing, OpenError>>| {
            ControlFlow::Continue(match result {
                Some(Ok(listing)) => {
                    // A holder reached on two paths (IPv4 and IPv6, say) is listed once.
                    if !listings
                        .iter()
                        .any(|l: &Listing| l.holder_id == listing.holder_id)
                    {
                        listings.push(listing);
                    }
                    Outcome::Complete
                }
                Some(Err(e)) => failed(attempt.addr, Some(e)),
                None => failed(attempt.addr, None),
            })
        },
    )
    .await;
    listings.sort_by_key(|l| l.addr);
    (listings, tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::DropKind;
    use tokio::net::TcpListener;

    /// A holder serving `content` as drop `token` to one session, with `idle` patience. It
    /// confirms the Ack if `confirm`, else exits right after reading it.
    async fn one_drop_holder(
        pass: Passphrase,
        listener: TcpListener,
        token: Token,
        content: &'static [u8],
        idle: Duration,
        confirm: bool,
    ) -> Vec<Request> {
        let (mut stream, _) = listener.accept().await.unwrap();
        let t = Timeouts {
            idle,
            ..Timeouts::default()
        };
        let hello = transport::read_client_hello(&mut stream, t.handshake)
            .await
            .unwrap();
        let mut s = transport::accept(stream, &hello, &pass, PeerId([1; 16]), t)
            .await
            .unwrap();
        assert!(matches!(
            s.recv_request().await.unwrap(),
            Some(Request::Hello { .. })
        ));
        s.send_reply(&Reply::Hello { name: "h".into() })
            .await
            .unwrap();
        assert!(matches!(
            s.recv_request().await.unwrap(),
            Some(Request::Fetch { .. })
        ));
        let info = DropInfo {
            token,
            kind: DropKind::Message,
            size: content.len() as u64,
            name: "message".into(),
            created_unix: 0,
            ttl_left_ms: 1000,
            fetches_left: 1,
            executable: false,
        };
        s.send_reply(&Reply::Start { info, offset: 0 })
            .await
            .unwrap();
        let mut frame = vec![0; transport::DATA_FRAME_OVERHEAD];
        transport::data_frame(&mut frame);
        frame.extend_from_slice(content);
        s.send_data_frame(&mut frame).await.unwrap();
        s.send_reply(&Reply::End {
            hash: *blake3::hash(content).as_bytes(),
        })
        .await
        .unwrap();
        // Everything the receiver says until its acknowledgement, each within `idle`.
        let mut heard = Vec::new();
        loop {
            let req = s.recv_request().await.unwrap().unwrap();
            heard.push(req.clone());
            if let Request::Ack { .. } = req {
                if confirm {
                    s.send_reply(&Reply::Acked { token }).await.unwrap();
                }
                return heard;
            }
        }
    }

    fn context(pass: Passphrase, idle: Duration) -> ClientContext {
        ClientContext {
            pass,
            id: PeerId([2; 16]),
            name: "r".into(),
            scope: Arc::new(Scope::loopback(1)),
            timeouts: Timeouts {
                idle,
                ..Timeouts::default()
            },
            wide: None,
            device: None,
        }
    }

    #[tokio::test]
    async fn regression_a_message_counted_by_a_holder_that_then_exits_is_still_shown() {
        // The load test's holder exited right after counting the last drop; its confirmation
        // never came back and the receiver dropped a message it held, verified.
        let pass = Passphrase::new("secret123".into()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = Token([9; 16]);
        let idle = Timeouts::default().idle;
        let holder = tokio::spawn(one_drop_holder(
            pass.clone(),
            listener,
            token,
            b"hi",
            idle,
            false,
        ));
        let ctx = context(pass, idle);
        let mut hs = HolderSession::open(&ctx, addr.into(), ctx.timeouts)
            .await
            .unwrap();
        let mut sink = MemorySink::new(100);
        let outcome = hs.fetch(token, &mut sink, |_| {}).await.unwrap();
        assert!(matches!(outcome, FetchOutcome::Done(_)));
        assert_eq!(sink.data, b"hi");
        assert_eq!(holder.await.unwrap(), [Request::Ack { token }]);
    }

    /// Holds content in memory but takes `delay` to "save" it.
    struct SlowSink(MemorySink, Duration);

    impl Sink for SlowSink {
        async fn begin(&mut self, info: &DropInfo, offset: u64) -> Result<(), FetchError> {
            self.0.begin(info, offset).await
        }
        async fn write(&mut self, chunk: Chunk) -> Result<(), FetchError> {
            self.0.write(chunk).await
        }
        async fn finish(&mut self, info: &DropInfo, hash: [u8; 32]) -> Result<(), FetchError> {
            tokio::time::sleep(self.1).await;
            self.0.finish(info, hash).await
        }
        async fn abort(&mut self, resumable: bool) {
            self.0.abort(resumable).await
        }
    }

    #[tokio::test]
    async fn regression_a_receiver_saving_longer_than_the_holder_waits_keeps_its_reservation() {
        // A million-entry folder took 39 s to unpack; the holder stopped waiting for the Ack
        // after 30 s, so the one-time drop was never counted. The receiver now says it is
        // still working.
        let pass = Passphrase::new("secret123".into()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = Token([8; 16]);
        let idle = Duration::from_millis(600);
        let holder = tokio::spawn(one_drop_holder(
            pass.clone(),
            listener,
            token,
            b"hi",
            idle,
            true,
        ));
        let ctx = context(pass, idle);
        let mut hs = HolderSession::open(&ctx, addr.into(), ctx.timeouts)
            .await
            .unwrap();
        let mut sink = SlowSink(MemorySink::new(100), idle * 3);
        let outcome = hs.fetch(token, &mut sink, |_| {}).await.unwrap();
        assert!(matches!(outcome, FetchOutcome::Done(_)));
        let heard = holder.await.unwrap();
        assert!(
            heard.iter().filter(|r| **r == Request::Wait).count() >= 3,
            "{heard:?}"
        );
        assert_eq!(heard.last(), Some(&Request::Ack { token }));
    }
}
