//! Invites to wide-area rooms: a room id (random, never derived from the passphrase), where the
//! room's relay is, and a few endpoints to start from. Pure: bytes and text in and out.
//!
//! An invite does **not** carry the passphrase: whoever sees one (over a shoulder, in a chat
//! log, on a photographed QR code) can find the room's members and try online guesses, held to
//! the guess budget, but cannot get in. The passphrase is shared separately, as on the LAN.
//!
//! Text form: `deaddrop1:` then the fields in base32 (RFC 4648, no padding), so a QR code can use
//! its compact alphanumeric mode (the code holds the text in capitals; both cases decode).

use data_encoding::BASE32_NOPAD;

/// What starts every invite.
pub const PREFIX: &str = "deaddrop1:";
/// The binary format's version.
const VERSION: u8 = 1;
/// Endpoints named in one invite.
pub const MAX_BOOTSTRAP: usize = 4;
/// The longest relay URL.
pub const MAX_URL: usize = 200;
/// The longest invite text accepted (what a maximal invite takes, with room to spare).
pub const MAX_TEXT: usize = 512;

const FLAG_PIN: u8 = 0x01;
const FLAG_PUBLIC_RELAYS: u8 = 0x02;

/// A room's random id: 128 bits from the OS generator. Only values derived from it are used to
/// meet, so publishing them gives nothing to test passphrase guesses against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RoomId(pub [u8; 16]);

impl RoomId {
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).expect("the OS random generator failed");
        RoomId(id)
    }

    /// The 32-byte secret of the room's meeting endpoint: every member can compute it, so any
    /// of them can hold the meeting point (see PROTOCOL.md, "Rooms beyond the LAN").
    pub fn meeting_secret(&self) -> [u8; 32] {
        blake3::derive_key("deaddrop/v1/meeting-key", &self.0)
    }
}

impl std::fmt::Debug for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not a secret (an invite is not a credential), but no reason to spread it in logs.
        f.write_str("RoomId(..)")
    }
}

/// Which relay a room uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// A self-hosted relay (`deaddrop relay`): its URL and, when its certificate is
    /// self-signed, the SHA-256 of that certificate, which is then the only one accepted.
    Url { url: String, pin: Option<[u8; 32]> },
    /// The public relays of iroh's operator (number 0), only when the user asked for them.
    Public,
}

/// A wide-area room invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub room: RoomId,
    pub relay: Relay,
    /// Device endpoint ids to try first (the inviter's, or an always-on member's).
    pub bootstrap: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("not a deaddrop invite (it starts with {PREFIX})")]
    NotAnInvite,
    #[error("the invite is damaged or cut short: {0}")]
    Damaged(&'static str),
    #[error("the invite is from a newer deaddrop (format {0}); update deaddrop")]
    Newer(u8),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a relay URL as `invite --relay` takes it: `https://host[:port]`, optionally
/// `#sha256=<64 hex digits>` to pin a self-signed certificate (as `deaddrop relay` prints it);
/// `n0` for iroh's public relays. Plain HTTP is refused: it would show every member's endpoint
/// id to anyone on the path.
pub fn parse_relay(text: &str) -> Result<Relay, InviteError> {
    if text == "n0" {
        return Ok(Relay::Public);
    }
    let (url, pin) = match text.split_once('#') {
        Some((url, fragment)) => {
            let hex = fragment.strip_prefix("sha256=").ok_or_else(|| {
                InviteError::Invalid(format!(
                    "unknown relay option #{fragment}: expected #sha256=<certificate hash>"
                ))
            })?;
            (url, Some(parse_hex32(hex)?))
        }
        None => (text, None),
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| InviteError::Invalid(format!("bad relay URL {url:?}: {e}")))?;
    if parsed.scheme() != "https" || parsed.host().is_none() {
        return Err(InviteError::Invalid(format!(
            "bad relay URL {url:?}: expected https://host:port"
        )));
    }
    if url.len() > MAX_URL {
        return Err(InviteError::Invalid(format!(
            "the relay URL is longer than {MAX_URL} characters"
        )));
    }
    Ok(Relay::Url {
        url: url.to_owned(),
        pin,
    })
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], InviteError> {
    let bad = || InviteError::Invalid("a certificate hash is 64 hex digits".into());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Invite {
    /// A new room's invite.
    pub fn new(relay: Relay, bootstrap: Vec<[u8; 32]>) -> Self {
        Invite {
            room: RoomId::random(),
            relay,
            bootstrap: bootstrap.into_iter().take(MAX_BOOTSTRAP).collect(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![VERSION];
        b.extend_from_slice(&self.room.0);
        match &self.relay {
            Relay::Public => b.push(FLAG_PUBLIC_RELAYS),
            Relay::Url { url, pin } => {
                b.push(if pin.is_some() { FLAG_PIN } else { 0 });
                if let Some(pin) = pin {
                    b.extend_from_slice(pin);
                }
                let url = &url.as_bytes()[..url.len().min(MAX_URL)];
                b.push(url.len() as u8);
                b.extend_from_slice(url);
            }
        }
        let boot = &self.bootstrap[..self.bootstrap.len().min(MAX_BOOTSTRAP)];
        b.push(boot.len() as u8);
        for id in boot {
            b.extend_from_slice(id);
        }
        b
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InviteError> {
        let mut r = bytes;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], InviteError> {
            if r.len() < n {
                return Err(InviteError::Damaged(what));
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        let version = take(1, "version")?[0];
        if version != VERSION {
            return Err(if version > VERSION {
                InviteError::Newer(version)
            } else {
                InviteError::Damaged("version")
            });
        }
        let room = RoomId(take(16, "room id")?.try_into().expect("16 bytes"));
        let flags = take(1, "flags")?[0];
        if flags & !(FLAG_PIN | FLAG_PUBLIC_RELAYS) != 0 {
            return Err(InviteError::Damaged("flags"));
        }
        let relay = if flags & FLAG_PUBLIC_RELAYS != 0 {
            if flags & FLAG_PIN != 0 {
                return Err(InviteError::Damaged("flags"));
            }
            Relay::Public
        } else {
            let pin = if flags & FLAG_PIN != 0 {
                Some(take(32, "certificate hash")?.try_into().expect("32 bytes"))
            } else {
                None
            };
            let len = usize::from(take(1, "relay URL")?[0]);
            let url = std::str::from_utf8(take(len, "relay URL")?)
                .map_err(|_| InviteError::Damaged("relay URL"))?;
            match parse_relay(url).map_err(|_| InviteError::Damaged("relay URL"))? {
                Relay::Url { url, pin: None } => Relay::Url { url, pin },
                _ => return Err(InviteError::Damaged("relay URL")),
            }
        };
        let n = usize::from(take(1, "endpoints")?[0]);
        if n > MAX_BOOTSTRAP {
            return Err(InviteError::Damaged("endpoints"));
        }
        let mut bootstrap = Vec::with_capacity(n);
        for _ in 0..n {
            bootstrap.push(take(32, "endpoints")?.try_into().expect("32 bytes"));
        }
        if !r.is_empty() {
            return Err(InviteError::Damaged("trailing bytes"));
        }
        Ok(Invite {
            room,
            relay,
            bootstrap,
        })
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase()
        )
    }

    /// Parses the text form (either case; surrounding blanks ignored).
    pub fn from_text(text: &str) -> Result<Self, InviteError> {
        let text = text.trim();
        if text.len() > MAX_TEXT {
            return Err(InviteError::Damaged("too long"));
        }
        let lower = text.to_ascii_lowercase();
        let body = lower.strip_prefix(PREFIX).ok_or(InviteError::NotAnInvite)?;
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::Damaged("not base32"))?;
        Self::from_bytes(&bytes)
    }

    /// The text as a QR code drawn with Unicode half blocks (two rows of modules per line),
    /// dark on light, with the quiet zone the standard asks for.
    pub fn to_qr(&self) -> String {
        crate::uri::qr(self.to_text().to_ascii_uppercase().as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invite {
        Invite {
            room: RoomId([7; 16]),
            relay: Relay::Url {
                url: "https://relay.example.org:3340".into(),
                pin: Some([9; 32]),
            },
            bootstrap: vec![[1; 32], [2; 32]],
        }
    }

    #[test]
    fn invites_round_trip_through_text_in_either_case() {
        for invite in [
            sample(),
            Invite {
                relay: Relay::Public,
                bootstrap: vec![],
                ..sample()
            },
            Invite {
                relay: Relay::Url {
                    url: "https://127.0.0.1:3340".into(),
                    pin: None,
                },
                ..sample()
            },
        ] {
            let text = invite.to_text();
            assert!(text.starts_with(PREFIX), "{text}");
            assert!(text.len() <= MAX_TEXT);
            assert_eq!(Invite::from_text(&text).unwrap(), invite);
            assert_eq!(
                Invite::from_text(&format!(" {} \n", text.to_ascii_uppercase())).unwrap(),
                invite
            );
        }
    }

    #[test]
    fn a_damaged_invite_is_refused_not_misread() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Invite::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Invite::from_bytes(&longer).is_err());
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert_eq!(Invite::from_bytes(&newer), Err(InviteError::Newer(2)));
        assert_eq!(Invite::from_text("hello"), Err(InviteError::NotAnInvite));
        assert!(Invite::from_text("deaddrop1:!!!").is_err());
        assert!(Invite::from_text(&"deaddrop1:a".repeat(100)).is_err());
    }

    #[test]
    fn relay_urls_and_pins_are_checked() {
        let pin = "ab".repeat(32);
        assert_eq!(
            parse_relay(&format!("https://10.0.0.1:3340#sha256={pin}")).unwrap(),
            Relay::Url {
                url: "https://10.0.0.1:3340".into(),
                pin: Some([0xab; 32])
            }
        );
        assert_eq!(parse_relay("n0").unwrap(), Relay::Public);
        for bad in [
            "ftp://x",
            "http://10.0.0.1:3340",
            "relay.example.org",
            "https://x#sha256=12",
            "https://x#md5=00",
            "https://x#sha256=zz",
        ] {
            assert!(parse_relay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_meeting_secret_depends_on_the_room_id_only() {
        assert_eq!(
            RoomId([1; 16]).meeting_secret(),
            RoomId([1; 16]).meeting_secret()
        );
        assert_ne!(
            RoomId([1; 16]).meeting_secret(),
            RoomId([2; 16]).meeting_secret()
        );
        assert_ne!(RoomId::random().0, RoomId::random().0);
    }

    #[test]
    fn the_qr_code_is_drawn() {
        let qr = sample().to_qr();
        assert!(qr.lines().count() > 10, "{qr}");
        assert!(qr.contains('█') || qr.contains('▀') || qr.contains('▄'));
    }
}
