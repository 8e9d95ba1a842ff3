//! Sessions over a byte stream: runs the handshake with timeouts and a length cap, then carries
//! [`Request`]s and [`Reply`]s in sealed records. Generic over the stream so tests can use
//! in-memory pipes.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::protocol::codec::DecodeError;
use crate::protocol::handshake::{self, HandshakeError, MAX_HANDSHAKE_MESSAGE};
use crate::protocol::id::PeerId;
use crate::protocol::message::{DATA_KIND, Reply, Request};
use crate::protocol::record::{self, HEADER_LEN, Opener, RecordError, Sealer};
use crate::protocol::secret::Passphrase;

/// How long to wait on a peer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole handshake.
    pub handshake: Duration,
    /// Any one record, once the session is up.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// For a holder that has not proven it is in the room yet: a silent or slow stranger holds
    /// a connection slot for at most a few seconds. A room member on a LAN answers a hello in
    /// milliseconds (a 300 ms round trip takes 0.6 s for connect and handshake).
    pub fn for_stranger(self) -> Self {
        Self {
            connect: self.connect.min(Duration::from_secs(2)),
            handshake: self.handshake.min(Duration::from_secs(2)),
            ..self
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error(transparent)]
    Rejected(#[from] HandshakeError),
    /// The peer hung up, or answered something that is not a handshake message, before any
    /// passphrase check: a busy or rate-limiting holder, or not a deaddrop peer. No guess was
    /// made on either side.
    #[error(
        "the peer closed the connection before the handshake (busy, rate-limiting, or not a deaddrop peer)"
    )]
    Refused,
    #[error("timed out waiting for the peer ({0})")]
    Timeout(&'static str),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the connection was cut before the peer finished")]
    Truncated,
    #[error("the peer ended the session")]
    Closed,
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("bad message: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

impl SessionError {
    /// True when the peer failed to prove it knows the passphrase (or someone interfered): a
    /// PAKE message was evaluated, so a guess was spent.
    pub fn is_rejection(&self) -> bool {
        matches!(self, SessionError::Rejected(_))
    }

    /// True when nothing answered at all: the connection was refused or the host is unreachable
    /// (a stale or fake announcement, not a busy holder).
    pub fn is_unreachable(&self) -> bool {
        use io::ErrorKind::*;
        matches!(self, SessionError::Io(e)
            if matches!(e.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable))
    }

    /// True when the session failed before any passphrase check (refused, reset, timed out):
    /// worth trying again later, and no guess was made.
    pub fn is_cut(&self) -> bool {
        matches!(
            self,
            SessionError::Refused | SessionError::Io(_) | SessionError::Timeout(_)
        )
    }
}

async fn with_timeout<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, SessionError> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SessionError::Truncated),
        Ok(Err(e)) => Err(SessionError::Io(e)),
        Err(_) => Err(SessionError::Timeout(what)),
    }
}

async fn write_handshake<S: AsyncWrite + Unpin>(io: &mut S, msg: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    frame.extend_from_slice(msg);
    io.write_all(&frame).await
}

/// Reads one length-prefixed handshake message. A peer that hangs up, or announces a length no
/// handshake message has (not a deaddrop peer, or a hostile one), is [`SessionError::Refused`].
async fn read_handshake<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, SessionError> {
    let len = usize::from(io.read_u16().await.map_err(map_eof)?);
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(SessionError::Refused);
    }
    let mut msg = vec![0u8; len];
    io.read_exact(&mut msg).await.map_err(map_eof)?;
    Ok(msg)
}

fn map_eof(e: io::Error) -> SessionError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SessionError::Refused
    } else {
        SessionError::Io(e)
    }
}

async fn in_time<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    timeout(limit, fut)
        .await
        .unwrap_or(Err(SessionError::Timeout("handshake")))
}

/// Runs the client side of the handshake on `io`. Until a well-formed ServerHello arrives, every
/// failure is a cut ([`SessionError::is_cut`]): only checking a ServerHello spends a guess, and
/// only that can end in [`SessionError::Rejected`].
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    pass: &Passphrase,
    me: PeerId,
    timeouts: Timeouts,
) -> Result<Session<S>, SessionError> {
    let keys = in_time(timeouts.handshake, async {
        let (client, hello) = handshake::Client::start(pass, me);
        write_handshake(&mut io, &hello).await?;
        let reply = read_handshake(&mut io).await?;
        if !handshake::is_server_hello(&reply) {
            return Err(SessionError::Refused);
        }
        let (finish, keys) = client.finish(&reply)?;
        write_handshake(&mut io, &finish).await?;
        Ok(keys)
    })
    .await?;
    Ok(Session::new(io, keys, timeouts.idle))
}

/// The server side of the handshake, split so the caller can rate-limit by who is asking
/// between reading the hello and doing PAKE work.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: Duration,
) -> Result<Vec<u8>, SessionError> {
    in_time(limit, read_handshake(io)).await
}

/// Answers a client hello read with [`read_client_hello`] and completes the handshake.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    hello: &[u8],
    pass: &Passphrase,
    me: PeerId,
    timeouts: Timeouts,
) -> Result<Session<S>, SessionError> {
    let keys = in_time(timeouts.handshake, async {
        // A malformed hello gets no answer, so it is no guess: a cut, like a hang-up.
        let (server, reply) =
            handshake::Server::respond(pass, me, hello).map_err(|_| SessionError::Refused)?;
        write_handshake(&mut io, &reply).await?;
        // The client has our confirmation now, so it has had its guess: hanging up instead of
        // confirming is the same as confirming wrongly.
        let finish = match read_handshake(&mut io).await {
            Err(SessionError::Refused) => return Err(HandshakeError::Rejected.into()),
            other => other?,
        };
        Ok(server.finish(&finish)?)
    })
    .await?;
    Ok(Session::new(io, keys, timeouts.idle))
}

/// Bytes of a data frame that are not content: the record header and the message kind.
pub const DATA_FRAME_OVERHEAD: usize = HEADER_LEN + 1;

/// Writes the first [`DATA_FRAME_OVERHEAD`] bytes of a data record: header room and the message
/// kind. The content follows them in the same buffer, which goes to [`Session::send_data_frame`].
pub fn data_frame(prefix: &mut [u8]) {
    prefix[..HEADER_LEN].fill(0);
    prefix[HEADER_LEN] = DATA_KIND;
}

/// An authenticated, encrypted session.
pub struct Session<S> {
    io: S,
    peer: PeerId,
    binding: [u8; 32],
    sealer: Sealer,
    opener: Opener,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    idle: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(io: S, keys: handshake::Established, idle: Duration) -> Self {
        Self {
            io,
            peer: keys.peer,
            binding: keys.binding,
            sealer: Sealer::new(keys.send),
            opener: Opener::new(keys.recv),
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            idle,
        }
    }

    /// The authenticated peer's id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The handshake's transcript hash, the same on both sides of this session only (see
    /// [`handshake::Established::binding`]).
    pub fn binding(&self) -> [u8; 32] {
        self.binding
    }

    /// How long this side waits for any one record.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    async fn write_frame(&mut self, last: bool) -> Result<(), SessionError> {
        self.sealer.seal(&mut self.wbuf, last)?;
        with_timeout(self.idle, "send", self.io.write_all(&self.wbuf)).await
    }

    fn start_frame(&mut self) -> &mut Vec<u8> {
        self.wbuf.clear();
        self.wbuf.resize(HEADER_LEN, 0);
        &mut self.wbuf
    }

    pub async fn send_request(&mut self, req: &Request) -> Result<(), SessionError> {
        req.encode_into(self.start_frame());
        self.write_frame(matches!(req, Request::Bye)).await
    }

    pub async fn send_reply(&mut self, reply: &Reply<'_>) -> Result<(), SessionError> {
        reply.encode_into(self.start_frame());
        self.write_frame(false).await
    }

    /// Seals and sends a data record built in the caller's buffer with [`data_frame`]. Lets
    /// content be read straight into the buffer that is encrypted in place and sent.
    pub async fn send_data_frame(&mut self, frame: &mut Vec<u8>) -> Result<(), SessionError> {
        self.sealer.seal(frame, false)?;
        with_timeout(self.idle, "send", self.io.write_all(frame)).await
    }

    /// Ends the session: sends a final record so the peer can tell it from a cut connection.
    pub async fn close(&mut self) -> Result<(), SessionError> {
        if self.opener.finished() {
            return Ok(());
        }
        self.send_request(&Request::Bye).await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// Hands over the buffer holding the last record received (its plaintext first), taking
    /// `replacement` for the next one: lets data be written out without copying it.
    pub fn take_record(&mut self, replacement: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.rbuf, replacement)
    }

    /// Reads and opens one record; its plaintext is `self.rbuf[..n]`.
    async fn recv_record(&mut self) -> Result<usize, SessionError> {
        if self.opener.finished() {
            return Err(SessionError::Closed);
        }
        let mut header = [0u8; HEADER_LEN];
        with_timeout(self.idle, "receive", self.io.read_exact(&mut header)).await?;
        // The cap is checked here, before the buffer grows.
        let (len, last) = record::parse_header(header)?;
        if self.rbuf.len() < len {
            self.rbuf.resize(len, 0);
        }
        let idle = self.idle;
        with_timeout(idle, "receive", self.io.read_exact(&mut self.rbuf[..len])).await?;
        Ok(self.opener.open(&mut self.rbuf[..len], last)?.len())
    }

    /// The next request; `Ok(None)` when the client said goodbye.
    pub async fn recv_request(&mut self) -> Result<Option<Request>, SessionError> {
        let n = self.recv_record().await?;
        match Request::decode(&self.rbuf[..n])? {
            Request::Bye => Ok(None),
            req => Ok(Some(req)),
        }
    }

    /// The next reply, skipping kinds this build does not know.
    pub async fn recv_reply(&mut self) -> Result<Reply<'_>, SessionError> {
        let n = loop {
            let n = self.recv_record().await?;
            match self.rbuf[..n].first() {
                Some(&kind) if !Reply::is_known_kind(kind) => {
                    tracing::debug!("skipping reply kind {kind:#04x} from {}", self.peer);
                }
                _ => break n,
            }
        };
        Ok(Reply::decode(&self.rbuf[..n])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id::Token;
    use crate::protocol::message::{DropInfo, DropKind};
    use tokio::io::{DuplexStream, duplex};

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    async fn pair(
        client_pass: &str,
        server_pass: &str,
    ) -> (
        Result<Session<DuplexStream>, SessionError>,
        Result<Session<DuplexStream>, SessionError>,
    ) {
        let (a, mut b) = duplex(1 << 16);
        let t = Timeouts::default();
        let (cp, sp) = (pass(client_pass), pass(server_pass));
        let server = async move {
            let hello = read_client_hello(&mut b, t.handshake).await?;
            accept(b, &hello, &sp, PeerId([2; 16]), t).await
        };
        let client = connect(a, &cp, PeerId([1; 16]), t);
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn a_session_carries_requests_and_replies() {
        let (c, s) = pair("secret123", "secret123").await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.peer(), PeerId([2; 16]));
        assert_eq!(s.peer(), PeerId([1; 16]));
        c.send_request(&Request::List).await.unwrap();
        assert_eq!(s.recv_request().await.unwrap(), Some(Request::List));
        let info = DropInfo {
            token: Token([5; 16]),
            kind: DropKind::Message,
            size: 2,
            name: "message".into(),
            created_unix: 1,
            ttl_left_ms: 2,
            fetches_left: 1,
            executable: false,
        };
        s.send_reply(&Reply::Listing(vec![info.clone()]))
            .await
            .unwrap();
        let mut frame = vec![0; DATA_FRAME_OVERHEAD];
        data_frame(&mut frame);
        frame.extend_from_slice(b"hi");
        s.send_data_frame(&mut frame).await.unwrap();
        assert_eq!(c.recv_reply().await.unwrap(), Reply::Listing(vec![info]));
        assert_eq!(c.recv_reply().await.unwrap(), Reply::Data(b"hi"));
        c.close().await.unwrap();
        assert_eq!(s.recv_request().await.unwrap(), None);
        assert!(matches!(s.recv_request().await, Err(SessionError::Closed)));
    }

    #[tokio::test]
    async fn a_wrong_passphrase_fails_on_both_sides_with_the_same_error() {
        let (c, s) = pair("secret123", "wrong").await;
        let (c, s) = (c.err().unwrap(), s.err().unwrap());
        assert!(c.is_rejection(), "{c:?}");
        assert!(s.is_rejection(), "{s:?}");
        assert_eq!(c.to_string(), "wrong passphrase, or someone interfered");
        assert_eq!(c.to_string(), s.to_string());
    }

    #[tokio::test]
    async fn a_cut_connection_is_reported_as_truncation() {
        let (c, s) = pair("secret123", "secret123").await;
        let (c, mut s) = (c.unwrap(), s.unwrap());
        drop(c);
        assert!(matches!(
            s.recv_request().await,
            Err(SessionError::Truncated)
        ));
    }

    #[tokio::test]
    async fn an_oversized_handshake_length_is_refused_unread() {
        let (mut a, mut b) = duplex(1024);
        a.write_all(&[0xff, 0xff]).await.unwrap();
        let e = read_client_hello(&mut b, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SessionError::Refused), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_a, mut b) = duplex(1024);
        let e = read_client_hello(&mut b, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, SessionError::Timeout(_)), "{e:?}");
    }

    #[tokio::test]
    async fn an_oversized_record_header_is_refused_before_allocating() {
        let (c, s) = pair("secret123", "secret123").await;
        let (c, mut s) = (c.unwrap(), s.unwrap());
        let mut raw = c.io;
        raw.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            s.recv_request().await,
            Err(SessionError::Record(RecordError::TooLong(_)))
        ));
        assert!(s.rbuf.capacity() < 1024);
    }
}
