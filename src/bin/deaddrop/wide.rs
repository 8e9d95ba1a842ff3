//! The wide-area commands (`invite`, `join`, `relay`) and starting a room's wide-area side for
//! `run`, `send-*`, `fetch` and `list`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use deaddrop::discovery::Scope;
use deaddrop::protocol::id::PeerId;
use deaddrop::protocol::secret::Passphrase;
use deaddrop::session::transport::Timeouts;
use deaddrop::wide::config;
use deaddrop::wide::invite::{self, Invite};
use deaddrop::wide::room::{WideOptions, WideRoom};

use crate::cli::Common;
use crate::output::stderr_line;
use crate::{EXIT_ERROR, EXIT_USAGE, usage};
use deaddrop::uri::RoomUri;

/// `deaddrop invite`: a new room id, with the relay, printed (and kept if named).
pub fn invite(relay: &str, name: Option<&str>, this_device: bool, json: bool) -> ExitCode {
    let relay = match invite::parse_relay(relay) {
        Ok(r) => r,
        Err(e) => {
            stderr_line(&format!("error: --relay: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut endpoints = Vec::new();
    if this_device {
        match config::dir().and_then(|dir| config::device_id(&dir)) {
            Ok(id) => endpoints.push(id),
            Err(e) => {
                stderr_line(&format!("error: cannot read this device's key: {e}"));
                return ExitCode::from(EXIT_ERROR);
            }
        }
    }
    let invite = Invite::new(relay, endpoints);
    if let Some(name) = name {
        let kept = config::dir().and_then(|dir| config::join(&dir, name, &invite));
        if let Err(e) = kept {
            stderr_line(&format!("error: cannot keep the invite: {e}"));
            return ExitCode::from(EXIT_ERROR);
        }
    }
    let text = invite.to_text();
    if json {
        let line = serde_json::json!({ "invite": text, "name": name });
        println!("{line}");
        return ExitCode::SUCCESS;
    }
    println!("{text}");
    eprintln!();
    eprint!("{}", invite.to_qr());
    eprintln!();
    eprintln!("This invite lets devices beyond this LAN find the room; it does not hold the");
    eprintln!("passphrase, so share the passphrase separately. On each device:");
    eprintln!("  deaddrop run --invite {text}");
    eprintln!("or keep it once:  deaddrop join {text} --name ROOM  (then --joined ROOM)");
    if let Some(name) = name {
        eprintln!("Kept on this device as {name:?}: use --joined {name}.");
    }
    if this_device {
        eprintln!("It names this device: keep `deaddrop run` going here for the room, and");
        eprintln!("members that never met still find each other through it.");
    }
    ExitCode::SUCCESS
}

/// `deaddrop join`: keeps an invite under a name.
pub fn join(text: &str, name: &str) -> ExitCode {
    let text = match RoomUri::parse(text) {
        Ok(RoomUri {
            invite: Some(invite),
            ..
        }) => invite,
        Ok(RoomUri { invite: None, .. }) => {
            stderr_line(
                "error: this room link has no invite (a room on this LAN): use it with --room-uri LINK",
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(_) => text.to_owned(),
    };
    let invite = match Invite::from_text(&text) {
        Ok(i) => i,
        Err(e) => {
            stderr_line(&format!("error: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match config::dir().and_then(|dir| config::join(&dir, name, &invite).map(|()| dir)) {
        Ok(dir) => {
            stderr_line(&format!(
                "Kept as {name:?} in {}: use --joined {name} (with the room's passphrase).",
                dir.join("rooms.json").display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            stderr_line(&format!("error: cannot keep the invite: {e}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `--room-uri LINK`: the link's passphrase becomes `--room`, and its invite (if any)
/// `--invite`; an error says what is wrong with the link, or that another invite was given too.
pub fn apply_room_uri(common: &mut Common) -> std::result::Result<(), String> {
    let Some(link) = common.room_uri.take() else {
        return Ok(());
    };
    let uri = RoomUri::parse(&link.0).map_err(|e| format!("--room-uri: {e}"))?;
    if let Some(invite) = uri.invite {
        let other =
            common.joined.is_some() || common.invite.as_deref().is_some_and(|i| i.trim() != invite);
        if other {
            return Err(
                "--room-uri: the link has its own invite; leave out --invite, --joined and DEADDROP_INVITE"
                    .into(),
            );
        }
        common.invite = Some(invite);
    }
    common.room = Some(crate::cli::RoomArg(uri.room));
    Ok(())
}

/// `deaddrop qr`: the room as a link and a QR code, on standard output.
pub fn qr(
    room: Option<crate::cli::RoomArg>,
    invite: Option<&str>,
    joined: Option<&str>,
    no_qr: bool,
) -> ExitCode {
    let made = crate::passphrase_text(room).and_then(|room| {
        // Refused as every command would refuse it.
        Passphrase::from_zeroizing(room.clone())?;
        let invite = invite_from(invite, joined)?;
        Ok(RoomUri {
            room,
            invite: invite.map(|i| i.to_text()),
        })
    });
    let uri = match made {
        Ok(uri) => uri,
        Err(e) => {
            stderr_line(&format!("error: {e:#}"));
            return ExitCode::from(if e.downcast_ref::<crate::Usage>().is_some() {
                EXIT_USAGE
            } else {
                EXIT_ERROR
            });
        }
    };
    let text = uri.to_text();
    if !no_qr {
        match deaddrop::uri::qr(text.as_bytes()) {
            Some(code) => println!("{code}"),
            None => stderr_line("warning: the link is too long for a QR code; here it is as text"),
        }
    }
    println!("{}", text.as_str());
    stderr_line(
        "This code holds the room's passphrase: whoever sees it, or a photo of it, is in the",
    );
    stderr_line("room. Show it only to the people you mean; on their device:");
    stderr_line("  deaddrop run --room-uri 'LINK'   (or any command with --room-uri)");
    ExitCode::SUCCESS
}

/// `deaddrop relay`: serves until Ctrl-C.
#[cfg(feature = "relay-server")]
pub fn relay(bind: SocketAddr, hostnames: &[String], max_clients: usize) -> ExitCode {
    let run = async {
        let dir = config::dir().context("cannot find the config folder")?;
        let mut names: Vec<String> = hostnames.to_vec();
        if !bind.ip().is_unspecified() {
            names.push(bind.ip().to_string());
        }
        if names.is_empty() {
            names.push("deaddrop-relay".into());
        }
        let relay = deaddrop::wide::relay::server::start(bind, &dir, &names, max_clients).await?;
        let port = relay.https_addr().map_or(bind.port(), |a| a.port());
        let pin = invite::hex(&relay.pin);
        let hosts: Vec<String> = if !hostnames.is_empty() {
            hostnames.to_vec()
        } else if !bind.ip().is_unspecified() {
            vec![bind.ip().to_string()]
        } else {
            local_addresses()
        };
        println!("deaddrop relay listening on {bind} (HTTPS on TCP, QUIC on UDP).");
        println!("Its certificate is kept in {}.", dir.display());
        println!("Create a room that uses it, on any device (with the address the others reach):");
        for host in hosts {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            println!("  deaddrop invite --relay 'https://{host}:{port}#sha256={pin}'");
        }
        tokio::select! {
            r = relay.stopped() => r.context("the relay stopped"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: {e:#}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `deaddrop relay` in a build without the relay server.
#[cfg(not(feature = "relay-server"))]
pub fn relay(_bind: SocketAddr, _hostnames: &[String], _max_clients: usize) -> ExitCode {
    stderr_line(
        "error: this deaddrop was built without the relay server (the cargo feature \
         `relay-server`); everything else works, including rooms that use a relay",
    );
    stderr_line(
        "hint: the release binaries have it; from the source tree, build with the default \
         features (`cargo build --release`)",
    );
    ExitCode::from(EXIT_ERROR)
}

/// This host's addresses that others could reach, for the printed URLs.
#[cfg(feature = "relay-server")]
fn local_addresses() -> Vec<String> {
    let mut out: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| {
            !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .map(|ip| ip.to_string())
        .collect();
    if out.is_empty() {
        out.push("THIS-HOST".into());
    }
    out
}

/// Whether a wide-area room is named (`--invite`, `DEADDROP_INVITE`, `--joined`).
pub fn named(common: &Common) -> bool {
    common.invite.is_some() || common.joined.is_some()
}

/// The room's wide-area side when an invite is given (`--invite`, `DEADDROP_INVITE`,
/// `--joined`); `None` for a LAN-only room, which then starts nothing of this.
/// `me`: this process's id (its holder's, or its client's); `may_host`: whether this process
/// may hold the room's meeting point (long-running ones).
pub async fn room(
    common: &Common,
    pass: &Passphrase,
    scope: &Scope,
    me: PeerId,
    may_host: bool,
) -> Result<Option<Arc<WideRoom>>> {
    match plan(common, scope, me, may_host)? {
        Some(opts) => {
            let room = start(opts, pass).await?;
            // Only senders serve sessions beyond the LAN ([`start`] with a holder).
            room.refuse_sessions();
            Ok(Some(room))
        }
        None => Ok(None),
    }
}

/// Checks the invite and takes the device key, without touching the network: a sender does
/// this before offering (a bad invite offers nothing) and [`start`]s the room after (the LAN
/// hears of the drop without waiting for the endpoint).
pub fn plan(
    common: &Common,
    scope: &Scope,
    me: PeerId,
    may_host: bool,
) -> Result<Option<WideOptions>> {
    let Some(invite) = invite_of(common)? else {
        return Ok(None);
    };
    if common.legacy {
        return Err(usage(
            "--legacy rooms stay on the LAN: leave out --invite or --joined",
        ));
    }
    let dir = config::dir()?;
    let device = config::device(&dir)
        .with_context(|| format!("cannot keep this device's key in {}", dir.display()))?;
    let device_key = device.key;
    // Held until the process exits: the next deaddrop process on this device uses a key of
    // its own meanwhile.
    Box::leak(Box::new(device));
    let bind = bind_of(scope);
    let peers_file = Some(config::peers_path(&dir, &invite.room));
    Ok(Some(WideOptions {
        invite,
        device_key,
        bind,
        me,
        peers_file,
        may_host,
        timeouts: Timeouts::default(),
    }))
}

/// The invite given (`--invite`, `DEADDROP_INVITE`, `--joined`), if any.
pub fn invite_of(common: &Common) -> Result<Option<Invite>> {
    invite_from(common.invite.as_deref(), common.joined.as_deref())
}

/// The invite named by its text or by the name it is kept under.
fn invite_from(invite: Option<&str>, joined: Option<&str>) -> Result<Option<Invite>> {
    Ok(Some(match (invite, joined) {
        (Some(text), _) => Invite::from_text(text).map_err(|e| usage(format!("--invite: {e}")))?,
        (None, Some(name)) => {
            let dir = config::dir()?;
            config::room(&dir, name).map_err(|e| usage(format!("--joined: {e}")))?
        }
        (None, None) => return Ok(None),
    }))
}

/// Where endpoints bind their UDP sockets: confined (--interface), to the chosen addresses,
/// one per address family; otherwise every address (empty).
pub fn bind_of(scope: &Scope) -> Vec<IpAddr> {
    let mut bind: Vec<IpAddr> = Vec::new();
    if scope.confined {
        for addr in scope.listen_addrs() {
            let ip = addr.ip();
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
            if !link_local && !bind.iter().any(|b| b.is_ipv4() == ip.is_ipv4()) {
                bind.push(ip);
            }
        }
    }
    bind
}

/// Starts the room's endpoint and membership; it is left when the process exits.
pub async fn start(opts: WideOptions, pass: &Passphrase) -> Result<Arc<WideRoom>> {
    let room = WideRoom::start(opts, pass.clone()).await?;
    OPEN.lock().expect("open rooms lock").push(room.clone());
    Ok(room)
}

/// The rooms this process started, to leave when it exits.
static OPEN: std::sync::Mutex<Vec<Arc<WideRoom>>> = std::sync::Mutex::new(Vec::new());

/// Leaves every room this process started (closes their connections, so members see this
/// process go at once). Called when a command ends, however it ended.
pub async fn leave_all() {
    let rooms = std::mem::take(&mut *OPEN.lock().expect("open rooms lock"));
    let mut set = tokio::task::JoinSet::new();
    for room in rooms {
        set.spawn(async move { room.close().await });
    }
    while set.join_next().await.is_some() {}
}
