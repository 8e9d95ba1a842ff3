//! Command-line definitions.

use std::path::PathBuf;
use std::time::Duration;

use std::path::Path;

use clap::{Args, Parser, Subcommand};
use deaddrop::storage::store::MAX_TTL;
use deaddrop::units::{parse_duration, parse_size};

pub const EXIT_CODES: &str = "\
Exit codes:
  0    success (send-*: the drop was fetched; run: stopped by Ctrl-C)
  1    error (network, file system, bad input)
  2    usage error
  3    send-*: the time-to-live ran out before anyone fetched the drop
  4    fetch: no holder in the room offers that token
  5    fetch: the drop exists but was refused (already taken, or already fetched by you)
  6    fetch/list: holders answered but none accepted the passphrase
  7    doctor: it found a problem (its findings say what to do)
  130  interrupted by Ctrl-C while holding a drop (the drop is withdrawn)";

/// The environment variables, as a man page section.
pub const MAN_ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBDEADDROP_ROOM\fR
The room passphrase, instead of \fB--room\fR (which other users can see in \fBps\fR) or the prompt.
.TP
\fBDEADDROP_PORT\fR
The UDP discovery port, instead of \fB--port\fR (default 48557; every device of a room must use the same).
.TP
\fBDEADDROP_INTERFACE\fR
Interfaces to confine discovery and connections to, comma-separated, instead of \fB--interface\fR.
.TP
\fBDEADDROP_INVITE\fR
A wide-area room's invite, instead of \fB--invite\fR.
.TP
\fBDEADDROP_CONFIG_DIR\fR
Where the device key, joined rooms and a relay's certificate are kept (default: the platform's config folder, e.g. ~/.config/deaddrop).
.TP
\fBRUST_LOG\fR
Log filter for diagnostics on standard error (as \fB-v\fR, \fB-vv\fR), e.g. deaddrop=debug.
"#;

#[derive(Debug, Parser)]
#[command(
    name = "deaddrop",
    version,
    propagate_version = true,
    about = "A peer-to-peer dead drop for your local network.",
    long_about = "A peer-to-peer dead drop for your local network.\n\n\
        Devices on one LAN join a room by a shared passphrase. A receiver left running \
        (`deaddrop run`) picks up every new drop in the room; a drop (a message, a file or a \
        folder) is end-to-end \
        encrypted, stays with its sender, and is gone once fetched or when its time-to-live runs \
        out. Room membership is proven with a PAKE, so nothing on the wire lets an eavesdropper \
        test passphrase guesses.",
    after_help = EXIT_CODES,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Flags people type for the room's passphrase (the word is everywhere in the docs) that
/// deaddrop spells `--room`: clap's own suggestions only find names that look alike.
const PASSPHRASE_FLAGS: &[&str] = &["--passphrase", "--password", "--pass", "--secret"];

impl Cli {
    /// Parses the command line as [`Parser::parse`] does, and on an unknown `--passphrase`
    /// (or the like) says to use `--room`.
    pub fn parse_args() -> Cli {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        Cli::try_parse().unwrap_or_else(|mut e| {
            if e.kind() == ErrorKind::UnknownArgument
                && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
                && PASSPHRASE_FLAGS.contains(&arg.split('=').next().unwrap_or_default())
            {
                e.insert(
                    ContextKind::Suggested,
                    ContextValue::StyledStrs(vec![
                        "the room's passphrase is given with --room PASSPHRASE (or DEADDROP_ROOM, \
                         or typed at the prompt)"
                            .into(),
                    ]),
                );
            }
            e.exit()
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the room and take every new drop as it appears: show messages, save files and
    /// folders (until Ctrl-C).
    #[command(after_help = EXIT_CODES, override_usage = "deaddrop run [OPTIONS]")]
    Run {
        /// Save files and folders here, created when the first one arrives [default: your
        /// Downloads folder, in deaddrop/ (~/Downloads/deaddrop)]. `--dir .` saves into the
        /// current folder.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Show larger file and folder drops without fetching them (e.g. 500M, 2G); fetch them
        /// by token if you want them.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Take messages only; file and folder drops are shown, not fetched.
        #[arg(long)]
        no_files: bool,
        /// Open a message that is exactly a web link (http or https) in the system's browser,
        /// at most one every 2 s. Without this flag nothing is ever opened.
        #[arg(long)]
        open: bool,
        /// Put each message received on the clipboard (the last one wins). Without a display
        /// (SSH, Termux), the terminal's clipboard (OSC 52). Files are never copied.
        #[arg(long)]
        copy: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Offer a message to the room and wait until it is fetched or expires.
    #[command(
        after_help = EXIT_CODES,
        override_usage = "deaddrop send-msg [OPTIONS] <TEXT|->\n       deaddrop send-msg [OPTIONS] --clipboard"
    )]
    SendMsg {
        /// The message; `-` reads it from standard input.
        #[arg(required_unless_present = "clipboard", conflicts_with = "clipboard")]
        text: Option<String>,
        /// Send the clipboard's text (at most 1 MiB).
        #[arg(long)]
        clipboard: bool,
        /// How long the drop is on offer: 30, 30s, 5m, 2h (at most 7 days).
        #[arg(long, default_value = "12s", value_parser = parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        limit: Limit,
        #[command(flatten)]
        common: Common,
    },
    /// Offer a file or a folder (as one drop, its tree kept) and wait until it is fetched or
    /// expires. The content is read from disk as it is sent; a file that changes meanwhile
    /// stops that fetch.
    #[command(after_help = EXIT_CODES, override_usage = "deaddrop send-file [OPTIONS] <PATH>")]
    SendFile {
        /// The file or folder to offer.
        path: PathBuf,
        /// How long the drop is on offer: 30, 30s, 5m, 2h (at most 7 days).
        #[arg(long, default_value = "5m", value_parser = parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        limit: Limit,
        #[command(flatten)]
        common: Common,
    },
    /// Fetch one drop by its token: a message to standard output, a file or folder into --dir.
    /// An interrupted file fetch resumes where it stopped when run again.
    #[command(after_help = EXIT_CODES, override_usage = "deaddrop fetch [OPTIONS] <TOKEN>")]
    Fetch {
        /// The drop's token, as printed by send-msg, send-file or list (with --legacy: the
        /// original script's token).
        token: String,
        /// Save to exactly this path (never overwritten); `-` writes a file to standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Save files and folders here, under the drop's name (never overwriting: "name (1)").
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// How long to look for the drop's holder [default: 5s; 15s with an invite, since
        /// members beyond the LAN are found through the relay].
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Open the message in the system's browser if it is exactly a web link (http or
        /// https). Without this flag nothing is ever opened.
        #[arg(long)]
        open: bool,
        /// Put the message on the clipboard too (it is still printed). Without a display
        /// (SSH, Termux), the terminal's clipboard (OSC 52).
        #[arg(long)]
        copy: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show the drops on offer in the room, without fetching them.
    #[command(after_help = EXIT_CODES, override_usage = "deaddrop list [OPTIONS]")]
    List {
        /// How long to collect answers from holders [default: 1s; 6s with an invite].
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Find out why devices do or don't see each other: shows the interfaces and which
    /// discovery paths (broadcast, mDNS over IPv4 and IPv6, unicast peers) work on them, lists
    /// the deaddrop processes heard (random ids and addresses only), and says what to do. Run
    /// it on two devices at once: they see each other and name the paths between them. With
    /// the room passphrase (--room or DEADDROP_ROOM; never asked for), it also tries the room
    /// handshake with every holder it hears. With an invite (--invite, --joined), it also
    /// checks the room's relay and, with the passphrase, who holds its meeting point.
    #[command(after_help = EXIT_CODES, override_usage = "deaddrop doctor [OPTIONS]")]
    Doctor {
        /// How long to listen. With the passphrase, the room handshakes with what was heard
        /// take at most 5 s more (at most 16 holders, each held to its address's guess budget).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Create a room that reaches beyond this LAN (other subnets, other networks behind NAT):
    /// prints its invite, a line of text and a QR code. Share the invite and, separately, the
    /// passphrase; each side then adds `--invite INVITE` (or `--joined NAME` after `deaddrop
    /// join`). The invite holds no passphrase: seeing it does not let anyone in.
    #[command(override_usage = "deaddrop invite --relay URL [--name NAME] [--this-device]")]
    Invite {
        /// The room's relay, as `deaddrop relay` prints it (https://host:port#sha256=...), or
        /// `n0` for the public relays of iroh's operator.
        #[arg(long, value_name = "URL")]
        relay: String,
        /// Also keep the invite on this device under this name (as `deaddrop join` does).
        #[arg(long)]
        name: Option<String>,
        /// Name this device in the invite (its endpoint id), for a device that keeps `deaddrop
        /// run` going for the room: members that never met then still find each other through
        /// it if someone without the passphrase holds the room's meeting point. The id is the
        /// same in every room of this device, so whoever sees two such invites can tell they
        /// share it.
        #[arg(long)]
        this_device: bool,
        /// Print the invite as one JSON object instead of text and a QR code.
        #[arg(long)]
        json: bool,
    },
    /// Show the room as a QR code for another device's camera, and as a `deaddrop:` link:
    /// the passphrase (asked for, or --room / DEADDROP_ROOM) and, with --invite or --joined,
    /// the invite. Whoever sees the code, or a photo of it, is in the room. The other device
    /// joins with `--room-uri LINK`.
    #[command(override_usage = "deaddrop qr [--room PASSPHRASE] [--invite INVITE | --joined NAME]")]
    Qr {
        /// The room passphrase (as for every command; asked for when not given).
        #[arg(long, env = "DEADDROP_ROOM", hide_env_values = true, value_parser = parse_room)]
        room: Option<RoomArg>,
        /// Put this invite in the link too, for a room beyond the LAN.
        #[arg(long, value_name = "INVITE", conflicts_with = "joined")]
        invite: Option<String>,
        /// Put the invite kept under NAME (by `deaddrop join`) in the link too.
        #[arg(long, value_name = "NAME")]
        joined: Option<String>,
        /// Print only the link, no QR code.
        #[arg(long)]
        no_qr: bool,
    },
    /// Keep a wide-area room's invite on this device under a name, for `--joined NAME` (in
    /// the config folder; the passphrase is never stored). INVITE may also be a `deaddrop:`
    /// room link (from `deaddrop qr`): its invite is kept, not its passphrase.
    #[command(override_usage = "deaddrop join <INVITE> --name NAME")]
    Join {
        /// The invite, as `deaddrop invite` printed it, or a room link with one.
        invite: String,
        /// The name to use it by.
        #[arg(long)]
        name: String,
    },
    /// Run a relay for wide-area rooms on a host both sides can reach (until Ctrl-C). It
    /// forwards encrypted packets between members that cannot reach each other directly and
    /// never sees content or the passphrase. Prints the URL to give to `deaddrop invite`.
    #[command(
        override_usage = "deaddrop relay [--bind ADDR:PORT] [--hostname NAME] [--max-clients N]"
    )]
    Relay {
        /// Where to listen: HTTPS on this TCP port, QUIC address discovery on this UDP port.
        #[arg(long, default_value = "0.0.0.0:3340")]
        bind: std::net::SocketAddr,
        /// The name or address members reach this host by, for the printed URL (repeatable).
        #[arg(long, value_name = "NAME")]
        hostname: Vec<String>,
        /// Clients relayed at once; more are refused (each member process uses two, three while
        /// it holds the meeting point). Besides, at most 16 connections per address (256 in
        /// all) may be in their handshake at once, each for at most 10 s.
        #[arg(long, value_name = "N", default_value_t = deaddrop::wide::relay::DEFAULT_MAX_CLIENTS,
              value_parser = clap::value_parser!(usize))]
        max_clients: usize,
    },
    /// Print shell completions for bash, zsh, fish, powershell or elvish.
    #[command(after_help = COMPLETIONS_HELP, override_usage = "deaddrop completions <SHELL>")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (`deaddrop man | man -l -`), or write a page for deaddrop and one
    /// for each of its commands into a folder.
    #[command(override_usage = "deaddrop man [--dir DIR]")]
    Man {
        /// Write deaddrop.1 and deaddrop-<command>.1 here (e.g. ~/.local/share/man/man1)
        /// instead of printing deaddrop.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

const COMPLETIONS_HELP: &str = "\
Install:
  bash        deaddrop completions bash > ~/.local/share/bash-completion/completions/deaddrop
  zsh         deaddrop completions zsh > ~/.zfunc/_deaddrop   (with fpath+=~/.zfunc before compinit)
  fish        deaddrop completions fish > ~/.config/fish/completions/deaddrop.fish
  PowerShell  deaddrop completions powershell >> $PROFILE";

/// How often a drop may be fetched.
#[derive(Debug, Args)]
pub struct Limit {
    /// Deliver to at most N distinct receivers, then burn it.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_fetches: u32,
    /// Deliver to every room member that asks before the TTL runs out (once each).
    #[arg(long, conflicts_with = "max_fetches")]
    pub everyone: bool,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The room passphrase. Prefer DEADDROP_ROOM or the prompt: a command-line argument is
    /// visible to other users in `ps` and stays in shell history.
    #[arg(long, env = "DEADDROP_ROOM", hide_env_values = true, value_parser = parse_room)]
    pub room: Option<RoomArg>,
    /// The room as a `deaddrop:` link (from `deaddrop qr`): its passphrase, and its invite if
    /// it has one. Instead of --room (and --invite); as visible in `ps` as --room.
    #[arg(long, value_name = "LINK", value_parser = parse_room)]
    pub room_uri: Option<RoomArg>,
    /// How you are shown to others in the room [default: this host's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON object per line per event instead of text.
    #[arg(long)]
    pub json: bool,
    /// UDP port for discovery [default: 48557; with --legacy: 48555].
    #[arg(
        long,
        env = "DEADDROP_PORT",
        hide_env_values = true,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub port: Option<u16>,
    /// Confine discovery and connections to these interfaces, by name (eth0) or by one of
    /// their addresses (repeatable, or comma-separated). By default every interface that is up
    /// is used, except loopback, VPN tunnels and container or VM bridges (docker0, br-*,
    /// virbr*, veth*, vEthernet...), which are used only when named here.
    #[arg(
        long,
        env = "DEADDROP_INTERFACE",
        value_name = "NAME|ADDR",
        value_delimiter = ','
    )]
    pub interface: Vec<String>,
    /// Also reach this peer by unicast, where broadcast and multicast do not get through, e.g.
    /// on another subnet (repeatable): 10.0.5.7, host:48557, fd00::7, [fe80::1%eth0]:48557.
    /// Either side may name the other. PORT is the peer's discovery port; with --legacy, its
    /// fetch port (default 48556), and only `fetch` uses it.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub peer: Vec<String>,
    /// Reach the room beyond this LAN too, through the relay named in this invite (from
    /// `deaddrop invite`). The LAN is still used first; the passphrase is still needed.
    #[arg(
        long,
        env = "DEADDROP_INVITE",
        hide_env_values = true,
        value_name = "INVITE",
        conflicts_with = "joined"
    )]
    pub invite: Option<String>,
    /// Like --invite, with the invite kept under NAME by `deaddrop join`.
    #[arg(long, value_name = "NAME")]
    pub joined: Option<String>,
    /// Speak the original p2p_dead_drop.py protocol, to exchange drops with people still running
    /// that script. Much weaker: anyone on the LAN can test passphrase guesses offline against
    /// its room id, and anyone on the LAN can fetch (and so burn) a drop. One fetch per drop.
    #[arg(long)]
    pub legacy: bool,
    /// More log output on stderr (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where `run` saves files by default: a folder of its own in the user's Downloads folder (as
/// browsers and LocalSend do), never the current folder, which is often the home folder.
pub fn default_receive_dir() -> PathBuf {
    match directories::UserDirs::new() {
        Some(user) => user
            .download_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| user.home_dir().join("Downloads"))
            .join("deaddrop"),
        // No home folder at all (a service account): a folder of its own here.
        None => PathBuf::from("deaddrop"),
    }
}

/// `--room`'s value (or DEADDROP_ROOM's): zeroized when dropped, never `Debug`-printed. Taken
/// out of the parsed arguments into the passphrase, so no plain copy of ours outlives parsing.
/// (The process's own argument and environment memory keeps its copy: prefer the prompt.)
#[derive(Clone)]
pub struct RoomArg(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for RoomArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomArg(<redacted>)")
    }
}

fn parse_room(text: &str) -> Result<RoomArg, String> {
    Ok(RoomArg(zeroize::Zeroizing::new(text.to_owned())))
}

/// A time-to-live: a duration between 1 ms and 7 days.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text).map_err(|e| e.to_string())?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err("the time-to-live must be between 1 ms and 7 days".into());
    }
    Ok(ttl)
}
