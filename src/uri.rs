//! The `deaddrop:` URI that carries a room to another device (a phone's camera reads it from a
//! QR code), and QR codes drawn in a terminal.
//!
//! `deaddrop:join?room=PASSPHRASE[&invite=INVITE]`, the values percent-encoded. It holds the
//! passphrase: whoever sees it (or a photo of it) is in the room. The invite, if any, is the
//! `deaddrop1:` text of [`crate::wide::invite::Invite`].

use zeroize::Zeroizing;

/// The URI's scheme.
pub const SCHEME: &str = "deaddrop";
/// A URI is at most this long (a passphrase of a few hundred bytes and an invite).
pub const MAX_URI: usize = 2048;

/// A room as a `deaddrop:` URI carries it.
pub struct RoomUri {
    /// The passphrase.
    pub room: Zeroizing<String>,
    /// The invite's text, for a room beyond the LAN.
    pub invite: Option<String>,
}

impl std::fmt::Debug for RoomUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomUri")
            .field("room", &"<redacted>")
            .field("invite", &self.invite)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("not a deaddrop: room link (it starts with deaddrop:join?)")]
    NotARoomUri,
    #[error("the room link is longer than {MAX_URI} bytes")]
    TooLong,
    #[error("the room link has no room= passphrase")]
    NoRoom,
    #[error("the room link names {0} twice")]
    Twice(&'static str),
}

impl RoomUri {
    /// The URI's text (the passphrase in it).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("room", &self.room);
        if let Some(invite) = &self.invite {
            query.append_pair("invite", invite);
        }
        let query = Zeroizing::new(query.finish());
        Zeroizing::new(format!("{SCHEME}:join?{}", query.as_str()))
    }

    /// Reads a URI made by [`RoomUri::to_text`] (surrounding white space ignored; unknown
    /// parameters too, for later versions).
    pub fn parse(text: &str) -> Result<RoomUri, UriError> {
        let text = text.trim();
        if text.len() > MAX_URI {
            return Err(UriError::TooLong);
        }
        let query = text
            .get(..SCHEME.len() + 1)
            .filter(|scheme| scheme.eq_ignore_ascii_case(&format!("{SCHEME}:")))
            .and_then(|_| text[SCHEME.len() + 1..].strip_prefix("join?"))
            .ok_or(UriError::NotARoomUri)?;
        let (mut room, mut invite) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = Zeroizing::new(value.into_owned());
            match &*key {
                "room" if room.is_some() => return Err(UriError::Twice("room")),
                "room" => room = Some(value),
                "invite" if invite.is_some() => return Err(UriError::Twice("invite")),
                "invite" => invite = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(RoomUri {
            room: room.filter(|r| !r.is_empty()).ok_or(UriError::NoRoom)?,
            invite,
        })
    }
}

/// `text` as a QR code drawn with Unicode half blocks (two rows of modules per line), dark on
/// light, with the quiet zone the standard asks for; `None` if it is too long for one.
pub fn qr(text: &[u8]) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::L).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_uri_round_trips_any_passphrase_and_invite() {
        for room in ["secret123", "two words & more=?#%", "ünïcödé 🖥", "+plus+"] {
            for invite in [None, Some("deaddrop1:abcdef234567")] {
                let uri = RoomUri {
                    room: Zeroizing::new(room.into()),
                    invite: invite.map(str::to_owned),
                };
                let text = uri.to_text();
                assert!(text.starts_with("deaddrop:join?room="), "{}", text.as_str());
                let back = RoomUri::parse(&text).unwrap();
                assert_eq!(back.room.as_str(), room);
                assert_eq!(back.invite.as_deref(), invite);
            }
        }
    }

    #[test]
    fn bad_room_uris_are_refused_clearly() {
        assert_eq!(
            RoomUri::parse("https://example.org/?room=x").unwrap_err(),
            UriError::NotARoomUri
        );
        assert_eq!(
            RoomUri::parse("deaddrop:join?").unwrap_err(),
            UriError::NoRoom
        );
        assert_eq!(
            RoomUri::parse("deaddrop:join?room=").unwrap_err(),
            UriError::NoRoom
        );
        assert_eq!(
            RoomUri::parse("deaddrop:join?room=a&room=b").unwrap_err(),
            UriError::Twice("room")
        );
        let long = format!("deaddrop:join?room={}", "a".repeat(MAX_URI));
        assert_eq!(RoomUri::parse(&long).unwrap_err(), UriError::TooLong);
        // Case of the scheme does not matter (some QR readers shout); later parameters are skipped.
        let uri = RoomUri::parse(" DEADDROP:join?room=x&later=1\n").unwrap();
        assert_eq!(uri.room.as_str(), "x");
    }

    #[test]
    fn the_debug_form_hides_the_passphrase() {
        let uri = RoomUri {
            room: Zeroizing::new("secret123".into()),
            invite: None,
        };
        assert!(!format!("{uri:?}").contains("secret123"));
    }
}
