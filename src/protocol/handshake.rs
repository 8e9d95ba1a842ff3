//! The room handshake: a balanced PAKE (SPAKE2 on Ed25519, symmetric mode) over the room
//! passphrase, bound to both peers' ids and fresh nonces, with explicit key confirmation both ways,
//! then one HKDF key per direction for the record layer. Pure: bytes in, bytes and keys out; the
//! socket side lives in `transport`.
//!
//! ```text
//! client -> server  ClientHello  "DDRP" 01 11 client_id[16] nonce_c[32] pake_c[33]
//! server -> client  ServerHello  12 server_id[16] nonce_s[32] pake_s[33] confirm_s[32]
//! client -> server  ClientFinish 13 confirm_c[32]
//! ```
//!
//! An attacker who does not know the passphrase gets one online guess per handshake: the PAKE
//! messages are uniformly random group elements, and the confirmation tags are keyed by the PAKE
//! output, which depends on the guess. Every failure looks the same ([`HandshakeError::Rejected`]).

use curve25519_dalek::edwards::CompressedEdwardsY;
use ring::{digest, hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::protocol::beacon::{MAGIC, VERSION};
use crate::protocol::codec::{Put, Reader};
use crate::protocol::id::{PeerId, random_array};
use crate::protocol::secret::Passphrase;

const KIND_CLIENT_HELLO: u8 = 0x11;
const KIND_SERVER_HELLO: u8 = 0x12;
const KIND_CLIENT_FINISH: u8 = 0x13;
const PAKE_LEN: usize = 33;
const NONCE_LEN: usize = 32;
const CONFIRM_LEN: usize = 32;

pub const CLIENT_HELLO_LEN: usize = 4 + 1 + 1 + 16 + NONCE_LEN + PAKE_LEN;
const SERVER_HELLO_CORE_LEN: usize = 1 + 16 + NONCE_LEN + PAKE_LEN;
pub const SERVER_HELLO_LEN: usize = SERVER_HELLO_CORE_LEN + CONFIRM_LEN;
pub const CLIENT_FINISH_LEN: usize = 1 + CONFIRM_LEN;
/// No handshake message is longer; the transport refuses longer length prefixes unread.
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;

/// The SPAKE2 identity string: separates our use of the passphrase from any other protocol's.
const PAKE_IDENTITY: &[u8] = b"deaddrop/v1/room";
const LABEL_TRANSCRIPT: &[u8] = b"deaddrop/v1/transcript";
const LABEL_CONFIRM_SERVER: &[u8] = b"deaddrop/v1/confirm/server";
const LABEL_CONFIRM_CLIENT: &[u8] = b"deaddrop/v1/confirm/client";
const LABEL_CLIENT_TO_SERVER: &[u8] = b"deaddrop/v1/record/client-to-server";
const LABEL_SERVER_TO_CLIENT: &[u8] = b"deaddrop/v1/record/server-to-client";

/// Why a handshake failed. Deliberately coarse: a wrong passphrase, a tampered message and a
/// malformed one are indistinguishable to the caller, so the error is no oracle.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("wrong passphrase, or someone interfered")]
    Rejected,
}

/// The key that encrypts records this side sends.
pub struct SendKey(pub(crate) Zeroizing<[u8; 32]>);
/// The key that decrypts records this side receives.
pub struct RecvKey(pub(crate) Zeroizing<[u8; 32]>);

/// What a finished handshake gives: the authenticated peer and one key per direction.
pub struct Established {
    pub peer: PeerId,
    pub send: SendKey,
    pub recv: RecvKey,
    /// The transcript hash: the same on both sides of this session and on no other session,
    /// so a signature over it proves something to this peer only (a channel binding). It is a
    /// hash of messages sent in the clear, not a secret.
    pub binding: [u8; 32],
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

struct Schedule {
    transcript: [u8; 32],
    confirm_server: hmac::Key,
    confirm_client: hmac::Key,
    client_to_server: Zeroizing<[u8; 32]>,
    server_to_client: Zeroizing<[u8; 32]>,
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&[label], Len32)
        .and_then(|okm| okm.fill(out.as_mut()))
        .expect("HKDF-SHA256 can always expand 32 bytes");
    out
}

impl Schedule {
    fn derive(pake_key: &[u8], client_hello: &[u8], server_hello_core: &[u8]) -> Schedule {
        let mut th = digest::Context::new(&digest::SHA256);
        th.update(LABEL_TRANSCRIPT);
        th.update(client_hello);
        th.update(server_hello_core);
        let transcript: [u8; 32] = th
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &transcript).extract(pake_key);
        let confirm = |label| hmac::Key::new(hmac::HMAC_SHA256, expand(&prk, label).as_ref());
        Schedule {
            transcript,
            confirm_server: confirm(LABEL_CONFIRM_SERVER),
            confirm_client: confirm(LABEL_CONFIRM_CLIENT),
            client_to_server: expand(&prk, LABEL_CLIENT_TO_SERVER),
            server_to_client: expand(&prk, LABEL_SERVER_TO_CLIENT),
        }
    }

    fn server_tag(&self) -> hmac::Tag {
        hmac::sign(&self.confirm_server, &self.transcript)
    }

    fn client_tag(&self) -> hmac::Tag {
        hmac::sign(&self.confirm_client, &self.transcript)
    }
}

fn start_pake(pass: &Passphrase) -> (Spake2<Ed25519Group>, Vec<u8>) {
    // spake2 copies the password into a plain Vec it does not zeroize; the copy lives only for
    // this call and the scalar derived from it for one handshake.
    Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(pass.expose()),
        &Identity::new(PAKE_IDENTITY),
    )
}

/// Whether a peer's SPAKE2 message carries a canonical encoding of a point in the prime-order
/// subgroup, other than the identity. The `spake2` crate accepts any curve point; a point with a
/// small-order component, the identity or a second encoding of a point is refused here, as
/// python-spake2 and other careful implementations do.
fn is_valid_element(msg: &[u8]) -> bool {
    let Some(bytes) = msg.get(1..).and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
        return false;
    };
    let Some(point) = CompressedEdwardsY(bytes).decompress() else {
        return false;
    };
    point.compress().0 == bytes && !point.is_small_order() && point.is_torsion_free()
}

fn finish_pake(
    state: Spake2<Ed25519Group>,
    ours: &[u8],
    theirs: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    // A reflected message would make both sides "agree" with themselves; refuse it outright.
    if ours == theirs || !is_valid_element(theirs) {
        return Err(HandshakeError::Rejected);
    }
    state
        .finish(theirs)
        .map(Zeroizing::new)
        .map_err(|_| HandshakeError::Rejected)
}

/// The client side, after sending its hello.
pub struct Client {
    pake: Spake2<Ed25519Group>,
    hello: Vec<u8>,
}

/// Whether bytes from a server are shaped like a ServerHello (right length and kind). Only a
/// well-formed ServerHello is evaluated against the passphrase, so only one costs a guess.
pub fn is_server_hello(bytes: &[u8]) -> bool {
    parse_server_hello(bytes).is_some()
}

impl Client {
    /// Starts a handshake. Returns the state and the ClientHello to send.
    pub fn start(pass: &Passphrase, me: PeerId) -> (Client, Vec<u8>) {
        let (pake, pake_msg) = start_pake(pass);
        let mut hello = Vec::with_capacity(CLIENT_HELLO_LEN);
        hello.put_bytes(&MAGIC);
        hello.put_u8(VERSION);
        hello.put_u8(KIND_CLIENT_HELLO);
        hello.put_bytes(&me.0);
        hello.put_bytes(&random_array::<NONCE_LEN>());
        hello.put_bytes(&pake_msg);
        debug_assert_eq!(hello.len(), CLIENT_HELLO_LEN);
        let out = hello.clone();
        (Client { pake, hello }, out)
    }

    /// Takes the ServerHello; returns the ClientFinish to send and the session keys. The server
    /// is a room member once its confirmation checks out, whatever id it names: the id only tells
    /// processes apart (an announcement's id is not authenticated, so it cannot be a reason to
    /// refuse a member).
    pub fn finish(self, server_hello: &[u8]) -> Result<(Vec<u8>, Established), HandshakeError> {
        let parsed = parse_server_hello(server_hello).ok_or(HandshakeError::Rejected)?;
        let ours = &self.hello[CLIENT_HELLO_LEN - PAKE_LEN..];
        let key = finish_pake(self.pake, ours, parsed.pake)?;
        let schedule = Schedule::derive(&key, &self.hello, parsed.core);
        hmac::verify(
            &schedule.confirm_server,
            &schedule.transcript,
            parsed.confirm,
        )
        .map_err(|_| HandshakeError::Rejected)?;
        let mut finish = Vec::with_capacity(CLIENT_FINISH_LEN);
        finish.put_u8(KIND_CLIENT_FINISH);
        finish.put_bytes(schedule.client_tag().as_ref());
        Ok((
            finish,
            Established {
                peer: parsed.server_id,
                send: SendKey(schedule.client_to_server),
                recv: RecvKey(schedule.server_to_client),
                binding: schedule.transcript,
            },
        ))
    }
}

struct ServerHelloParts<'a> {
    core: &'a [u8],
    server_id: PeerId,
    pake: &'a [u8],
    confirm: &'a [u8],
}

fn parse_server_hello(bytes: &[u8]) -> Option<ServerHelloParts<'_>> {
    if bytes.len() != SERVER_HELLO_LEN {
        return None;
    }
    let mut r = Reader::new(bytes);
    if r.u8().ok()? != KIND_SERVER_HELLO {
        return None;
    }
    let server_id = PeerId(r.array().ok()?);
    let _nonce = r.bytes(NONCE_LEN).ok()?;
    let pake = r.bytes(PAKE_LEN).ok()?;
    let confirm = r.bytes(CONFIRM_LEN).ok()?;
    Some(ServerHelloParts {
        core: &bytes[..SERVER_HELLO_CORE_LEN],
        server_id,
        pake,
        confirm,
    })
}

fn parse_client_hello(bytes: &[u8]) -> Option<(PeerId, &[u8])> {
    if bytes.len() != CLIENT_HELLO_LEN {
        return None;
    }
    let mut r = Reader::new(bytes);
    if r.array::<4>().ok()? != MAGIC || r.u8().ok()? != VERSION {
        return None;
    }
    if r.u8().ok()? != KIND_CLIENT_HELLO {
        return None;
    }
    let id = PeerId(r.array().ok()?);
    let _nonce = r.bytes(NONCE_LEN).ok()?;
    Some((id, r.bytes(PAKE_LEN).ok()?))
}

/// The server side, after sending its hello and before the client's confirmation.
pub struct Server {
    schedule: Schedule,
    client: PeerId,
}

impl Server {
    /// Answers a ClientHello. Returns the state and the ServerHello to send.
    pub fn respond(
        pass: &Passphrase,
        me: PeerId,
        client_hello: &[u8],
    ) -> Result<(Server, Vec<u8>), HandshakeError> {
        let (client, client_pake) =
            parse_client_hello(client_hello).ok_or(HandshakeError::Rejected)?;
        let (pake, pake_msg) = start_pake(pass);
        let key = finish_pake(pake, &pake_msg, client_pake)?;
        let mut hello = Vec::with_capacity(SERVER_HELLO_LEN);
        hello.put_u8(KIND_SERVER_HELLO);
        hello.put_bytes(&me.0);
        hello.put_bytes(&random_array::<NONCE_LEN>());
        hello.put_bytes(&pake_msg);
        let schedule = Schedule::derive(&key, client_hello, &hello);
        hello.put_bytes(schedule.server_tag().as_ref());
        debug_assert_eq!(hello.len(), SERVER_HELLO_LEN);
        Ok((Server { schedule, client }, hello))
    }

    /// Checks the client's confirmation; only then is the client a room member.
    pub fn finish(self, client_finish: &[u8]) -> Result<Established, HandshakeError> {
        let s = self.schedule;
        match client_finish.split_first() {
            Some((&KIND_CLIENT_FINISH, tag)) if tag.len() == CONFIRM_LEN => {
                hmac::verify(&s.confirm_client, &s.transcript, tag)
                    .map_err(|_| HandshakeError::Rejected)?;
            }
            _ => return Err(HandshakeError::Rejected),
        }
        Ok(Established {
            peer: self.client,
            send: SendKey(s.server_to_client),
            recv: RecvKey(s.client_to_server),
            binding: s.transcript,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    fn run(
        client_pass: &str,
        server_pass: &str,
    ) -> Result<(Established, Established), HandshakeError> {
        let (c_id, s_id) = (PeerId::random(), PeerId::random());
        let (client, hello) = Client::start(&pass(client_pass), c_id);
        let (server, reply) = Server::respond(&pass(server_pass), s_id, &hello)?;
        let (fin, c_keys) = client.finish(&reply)?;
        let s_keys = server.finish(&fin)?;
        assert_eq!(c_keys.peer, s_id);
        assert_eq!(s_keys.peer, c_id);
        Ok((c_keys, s_keys))
    }

    #[test]
    fn same_passphrase_agrees_on_directional_keys() {
        let (c, s) = run("secret123", "secret123").unwrap();
        assert_eq!(*c.send.0, *s.recv.0);
        assert_eq!(*c.recv.0, *s.send.0);
        assert_ne!(*c.send.0, *c.recv.0);
        assert_eq!(c.binding, s.binding, "both sides bind the same session");
    }

    #[test]
    fn each_session_has_fresh_keys() {
        let (a, _) = run("secret123", "secret123").unwrap();
        let (b, _) = run("secret123", "secret123").unwrap();
        assert_ne!(*a.send.0, *b.send.0);
        assert_ne!(a.binding, b.binding, "a channel binding is one session's");
    }

    #[test]
    fn wrong_passphrase_is_rejected_by_the_client() {
        assert_eq!(
            run("secret123", "secret124").unwrap_err(),
            HandshakeError::Rejected
        );
    }

    #[test]
    fn tampering_gives_the_same_error_as_a_wrong_passphrase() {
        let p = pass("secret123");
        let s_id = PeerId::random();
        for i in 0..CLIENT_HELLO_LEN {
            let (client, mut hello) = Client::start(&p, PeerId::random());
            hello[i] ^= 0x01;
            let result = Server::respond(&p, s_id, &hello)
                .and_then(|(_, reply)| client.finish(&reply).map(|_| ()));
            assert_eq!(
                result,
                Err(HandshakeError::Rejected),
                "flip in hello byte {i}"
            );
        }
        for i in 0..SERVER_HELLO_LEN {
            let (client, hello) = Client::start(&p, PeerId::random());
            let (_, mut reply) = Server::respond(&p, s_id, &hello).unwrap();
            reply[i] ^= 0x80;
            assert_eq!(
                client.finish(&reply).map(|_| ()),
                Err(HandshakeError::Rejected),
                "flip in reply byte {i}"
            );
        }
        for i in 0..CLIENT_FINISH_LEN {
            let (client, hello) = Client::start(&p, PeerId::random());
            let (server, reply) = Server::respond(&p, s_id, &hello).unwrap();
            let (mut fin, _) = client.finish(&reply).unwrap();
            fin[i] ^= 0x01;
            assert_eq!(
                server.finish(&fin).map(|_| ()),
                Err(HandshakeError::Rejected)
            );
        }
    }

    #[test]
    fn a_wrong_passphrase_client_is_rejected_by_the_server() {
        // A client that ignores the server's failed confirmation and sends a finish anyway
        // (an attacker guessing) must still be refused by the server.
        let s_id = PeerId::random();
        let (_client, hello) = Client::start(&pass("guess"), PeerId::random());
        let (server, _reply) = Server::respond(&pass("secret123"), s_id, &hello).unwrap();
        let mut forged = vec![KIND_CLIENT_FINISH];
        forged.extend([0u8; 32]);
        assert_eq!(
            server.finish(&forged).map(|_| ()),
            Err(HandshakeError::Rejected)
        );
    }

    #[test]
    fn truncated_and_oversized_messages_are_rejected() {
        let p = pass("secret123");
        let (client, hello) = Client::start(&p, PeerId::random());
        for n in [0, 1, CLIENT_HELLO_LEN - 1] {
            assert!(Server::respond(&p, PeerId::random(), &hello[..n]).is_err());
        }
        let mut long = hello.clone();
        long.push(0);
        assert!(Server::respond(&p, PeerId::random(), &long).is_err());
        let (_, reply) = Server::respond(&p, PeerId::random(), &hello).unwrap();
        assert!(client.finish(&reply[..SERVER_HELLO_LEN - 1]).is_err());
    }

    #[test]
    fn a_reflected_hello_is_rejected() {
        let p = pass("secret123");
        let (client, hello) = Client::start(&p, PeerId::random());
        // An attacker echoes the client's own PAKE message back inside a server hello.
        let mut reply = vec![KIND_SERVER_HELLO];
        reply.extend([7u8; 16]);
        reply.extend(&hello[22..22 + NONCE_LEN]);
        reply.extend(&hello[CLIENT_HELLO_LEN - PAKE_LEN..]);
        reply.extend([0u8; 32]);
        assert_eq!(
            client.finish(&reply).map(|_| ()),
            Err(HandshakeError::Rejected)
        );
    }

    #[test]
    fn a_member_is_accepted_whatever_id_it_names() {
        // Announcement ids are not authenticated: refusing a member whose id differs from an
        // announcement would let anyone who spoofs announcements stop a delivery.
        let p = pass("secret123");
        let (client, hello) = Client::start(&p, PeerId::random());
        let (_, reply) = Server::respond(&p, PeerId([2; 16]), &hello).unwrap();
        let (_, keys) = client.finish(&reply).unwrap();
        assert_eq!(keys.peer, PeerId([2; 16]));
    }

    /// A server hello answering `hello` whose PAKE element is `element` (with a confirmation
    /// the client cannot check, as an attacker without the passphrase would send).
    fn hello_with_element(hello: &[u8], element: [u8; 32]) -> Vec<u8> {
        let mut reply = vec![KIND_SERVER_HELLO];
        reply.extend([7u8; 16]);
        reply.extend([1u8; NONCE_LEN]);
        reply.push(b'S');
        reply.extend(element);
        reply.extend([0u8; CONFIRM_LEN]);
        assert_ne!(
            &reply[17 + NONCE_LEN..17 + NONCE_LEN + PAKE_LEN],
            &hello[..PAKE_LEN]
        );
        reply
    }

    #[test]
    fn pake_elements_outside_the_prime_order_subgroup_are_refused() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        let p = pass("secret123");
        let valid = (ED25519_BASEPOINT_POINT * curve25519_dalek::Scalar::from(12345u64)).compress();
        let mixed = (ED25519_BASEPOINT_POINT * curve25519_dalek::Scalar::from(12345u64)
            + EIGHT_TORSION[1])
            .compress();
        let identity = curve25519_dalek::EdwardsPoint::default().compress();
        let small = EIGHT_TORSION[4].compress();
        let mut msg = vec![b'S'];
        msg.extend(valid.0);
        assert!(is_valid_element(&msg));
        for (what, bad) in [
            ("a point with a torsion component", mixed.0),
            ("the identity", identity.0),
            ("a small-order point", small.0),
            ("not on the curve", [0xff; 32]),
        ] {
            let mut msg = vec![b'S'];
            msg.extend(bad);
            assert!(!is_valid_element(&msg), "{what}");
            // Both roles refuse it.
            let (client, hello) = Client::start(&p, PeerId::random());
            assert_eq!(
                client.finish(&hello_with_element(&hello, bad)).map(|_| ()),
                Err(HandshakeError::Rejected),
                "client: {what}"
            );
            let (_, mut hello) = Client::start(&p, PeerId::random());
            hello[CLIENT_HELLO_LEN - 32..].copy_from_slice(&bad);
            assert!(
                Server::respond(&p, PeerId::random(), &hello).is_err(),
                "server: {what}"
            );
        }
        // y = p + 1, a second encoding of y = 1 (the identity), which dalek decodes.
        let mut y = [0xff; 32];
        y[0] = 0xee;
        y[31] = 0x7f;
        let mut msg = vec![b'S'];
        msg.extend(y);
        assert!(!is_valid_element(&msg), "non-canonical identity");
    }

    #[test]
    fn an_eavesdropper_cannot_test_guesses_against_a_recorded_handshake() {
        // A whole successful handshake is recorded. For every guess (the real passphrase among
        // them), the attacker runs the only computation open to it: a PAKE of its own under the
        // guess against each recorded PAKE message, then the key schedule over the recorded
        // transcript, and checks the recorded confirmations. None checks out, not even for the
        // right guess, so the recording tells the guesses apart no better than chance.
        let real = pass("correct horse");
        let (client, hello) = Client::start(&real, PeerId::random());
        let (server, reply) = Server::respond(&real, PeerId::random(), &hello).unwrap();
        let (finish, _) = client.finish(&reply).unwrap();
        server.finish(&finish).unwrap();
        let (core, confirm_s) = reply.split_at(SERVER_HELLO_CORE_LEN);
        for guess in [
            "correct horse",
            "123456",
            "password",
            "secret123",
            "correct horse!",
        ] {
            for theirs in [
                &hello[CLIENT_HELLO_LEN - PAKE_LEN..],
                &core[core.len() - PAKE_LEN..],
            ] {
                let (state, ours) = start_pake(&pass(guess));
                let key = finish_pake(state, &ours, theirs).unwrap();
                let s = Schedule::derive(&key, &hello, core);
                assert!(
                    hmac::verify(&s.confirm_server, &s.transcript, confirm_s).is_err(),
                    "the server's confirmation checks out under {guess:?}"
                );
                assert!(
                    hmac::verify(&s.confirm_client, &s.transcript, &finish[1..]).is_err(),
                    "the client's confirmation checks out under {guess:?}"
                );
            }
        }
    }

    #[test]
    fn nothing_on_the_wire_is_a_function_of_the_passphrase_alone() {
        // Two hellos with the same passphrase share no bytes beyond the fixed header: there is
        // nothing to precompute a dictionary against.
        let p = pass("secret123");
        let (_, a) = Client::start(&p, PeerId([0; 16]));
        let (_, b) = Client::start(&p, PeerId([0; 16]));
        assert_eq!(a[..22], b[..22]);
        assert_ne!(a[22 + NONCE_LEN + 1..], b[22 + NONCE_LEN + 1..]);
        assert_eq!(a.len(), CLIENT_HELLO_LEN);
    }
}
