//! The `deaddrop` command: parses arguments, asks for the passphrase, renders events, and maps
//! outcomes to exit codes. All protocol work is in the library.

mod cli;
mod clipboard;
mod doctor;
mod interrupt;
mod legacy;
mod output;
mod wide;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use deaddrop::discovery::{self, Discovery, DiscoveryConfig};
use deaddrop::event::{Event, Events, Throttle};
use deaddrop::protocol::id::{PeerId, Token};
use deaddrop::protocol::message::{DropKind, Refusal};
use deaddrop::protocol::secret::Passphrase;
use deaddrop::session::client::{self, ClientContext, FetchError, FindError};
use deaddrop::session::holder::{Holder, HolderOptions, MAX_MESSAGE};
use deaddrop::session::receiver::{self, ReceiverOptions};
use deaddrop::session::transport::Timeouts;
use deaddrop::storage::sink::{self, Destination, DropSink, FileSink};
use deaddrop::storage::source::Source;
use deaddrop::storage::store::FetchLimit;
use deaddrop::units::{format_duration, format_size};
use tokio::sync::mpsc;

use cli::{Cli, Command, Common, Limit};
use interrupt::Interrupt;
use output::{Ui, stderr_line};

pub(crate) const EXIT_ERROR: u8 = 1;
pub(crate) const EXIT_EXPIRED: u8 = 3;
pub(crate) const EXIT_NOT_FOUND: u8 = 4;
const EXIT_REFUSED: u8 = 5;
const EXIT_NO_ROOM: u8 = 6;
pub(crate) const EXIT_PROBLEM: u8 = 7;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_INTERRUPTED: u8 = 130;
/// After its last drop is used up, a sender exits as soon as no room member has a session open
/// (the receiver that used it up has its confirmation; members racing for a one-time drop have
/// heard "already taken"), or after this long at most.
const LINGER: Duration = Duration::from_secs(1);
/// How long `fetch` and `list` look for holders by default: on the LAN, and in a room with an
/// invite (finding members through a relay takes a meeting point's answer first).
const FETCH_WAIT: Duration = Duration::from_secs(5);
const FETCH_WAIT_WIDE: Duration = Duration::from_secs(15);
/// How long `fetch --copy` waits for the clipboard to take the message.
pub(crate) const COPY_WAIT: Duration = Duration::from_secs(10);
const LIST_WAIT: Duration = Duration::from_secs(1);
const LIST_WAIT_WIDE: Duration = Duration::from_secs(6);
/// On Ctrl-C, how long a sender waits for the receivers of transfers under way to be told
/// that the drop is withdrawn.
const WITHDRAW_NOTICE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    // `--copy` on X11 and Wayland: a copy of this program that serves the copied text.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == clipboard::HOLD_ARG)
    {
        return clipboard::hold();
    }
    let mut cli = Cli::parse_args();
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man(dir.as_deref()),
        Command::Invite {
            relay,
            name,
            this_device,
            json,
        } => {
            return wide::invite(relay, name.as_deref(), *this_device, *json);
        }
        Command::Join { invite, name } => return wide::join(invite, name),
        Command::Qr { .. } => {
            let Command::Qr {
                room,
                invite,
                joined,
                no_qr,
            } = cli.command
            else {
                unreachable!("matched above")
            };
            return wide::qr(room, invite.as_deref(), joined.as_deref(), no_qr);
        }
        Command::Relay {
            bind,
            hostname,
            max_clients,
        } => {
            init_logging(0);
            return wide::relay(*bind, hostname, *max_clients);
        }
        _ => {}
    }
    // `fetch --out -`: standard output carries the drop's bytes and nothing else.
    let stdout_is_content = matches!(
        &cli.command,
        Command::Fetch { out: Some(out), .. } if out.as_path() == Path::new("-")
    );
    let open_links = matches!(
        &cli.command,
        Command::Run { open: true, .. } | Command::Fetch { open: true, .. }
    );
    let copy = matches!(
        &cli.command,
        Command::Run { copy: true, .. } | Command::Fetch { copy: true, .. }
    );
    let common = match &mut cli.command {
        Command::Run { common, .. }
        | Command::SendMsg { common, .. }
        | Command::SendFile { common, .. }
        | Command::Fetch { common, .. }
        | Command::List { common, .. }
        | Command::Doctor { common, .. } => common,
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Invite { .. }
        | Command::Join { .. }
        | Command::Qr { .. }
        | Command::Relay { .. } => unreachable!("handled above"),
    };
    init_logging(common.verbose);
    let ui = Ui::new(common.json, stdout_is_content, open_links, copy);
    if let Err(e) = wide::apply_room_uri(common) {
        report_error(&ui, &e);
        return ExitCode::from(EXIT_USAGE);
    }
    if common.legacy {
        ui.event(&Event::Warning {
            message: legacy::WARNING.into(),
        });
    }
    let room = common.room.take();
    if let Command::Doctor { wait, common } = cli.command {
        // Never asks for the passphrase: it only adds the handshake check.
        let pass = match room.map(|r| Passphrase::from_zeroizing(r.0)).transpose() {
            Ok(p) => p,
            Err(e) => {
                report_error(&ui, &e.to_string());
                return ExitCode::from(EXIT_USAGE);
            }
        };
        return doctor::run(pass, wait, &common, &ui);
    }
    let result = passphrase(room).and_then(|pass| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(async {
                let interrupt =
                    Interrupt::install().context("cannot install the Ctrl-C handler")?;
                let result = dispatch(cli.command, pass, ui.clone(), interrupt).await;
                wide::leave_all().await;
                result
            })
    });
    // No bar may stay on screen, however the command ended.
    ui.clear();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is::<Usage>() => {
            report_error(&ui, &format!("{e:#}"));
            ui.err("\nFor more information, try '--help'.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            report_error(&ui, &format!("{e:#}"));
            if let Some(hint) = hint(&e) {
                ui.err(&format!("hint: {hint}"));
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints completions for `shell` to standard output.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "deaddrop", &mut out);
    match write_stdout(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: cannot write the completions: {e}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints the manual page, or writes one page per command into `dir`.
fn man(dir: Option<&Path>) -> ExitCode {
    match manual(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: {e:#}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn manual(dir: Option<&Path>) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let render = |cmd: clap::Command| -> Result<Vec<u8>> {
        let page_of_a_command = cmd.get_name() != "deaddrop";
        let man =
            clap_mangen::Man::new(cmd).source(format!("deaddrop {}", env!("CARGO_PKG_VERSION")));
        let mut page = Vec::new();
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        man.render_subcommands_section(&mut page)?;
        page.extend_from_slice(cli::MAN_ENVIRONMENT.as_bytes());
        page.extend_from_slice(exit_status_roff().as_bytes());
        if page_of_a_command {
            page.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBdeaddrop\\fR(1)\n");
        }
        man.render_version_section(&mut page)?;
        Ok(page)
    };
    let Some(dir) = dir else {
        return write_stdout(&render(cmd)?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("deaddrop".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // After `build`, a command's display name is `deaddrop-<command>`.
        let name = sub.get_display_name().unwrap_or(sub.get_name()).to_owned();
        pages.push((name, sub.clone()));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(page)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        stderr_line(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// The exit codes of `--help`, as a man page section.
fn exit_status_roff() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for line in cli::EXIT_CODES.lines().skip(1) {
        if let Some((code, meaning)) = line.trim().split_once(char::is_whitespace) {
            roff.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", meaning.trim()));
        }
    }
    roff
}

/// A mistake in how the command was called (exit code 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// A fatal error: on stderr for people, and as an `error` event for `--json` readers.
pub(crate) fn report_error(ui: &Ui, message: &str) {
    // An error may quote a peer (a legacy sender's refusal, say): shown on one line, with no
    // control characters; JSON escapes them itself.
    ui.err(&format!("error: {}", output::sanitize(message, false)));
    if ui.json() {
        ui.event(&Event::Error {
            message: message.to_owned(),
        });
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // iroh's own warnings are about its internals; what matters to the user (a relay that
        // cannot be reached, say) deaddrop reports itself. -vv shows everything of ours.
        0 => "warn,iroh=off,iroh_relay=off,noq=off,noq_proto=off,noq_udp=off",
        1 => "deaddrop=info",
        _ => "deaddrop=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// The passphrase from `--room`/`DEADDROP_ROOM`, else a hidden prompt.
fn passphrase(room: Option<cli::RoomArg>) -> Result<Passphrase> {
    Ok(Passphrase::from_zeroizing(passphrase_text(room)?)?)
}

/// The passphrase's text: `--room` (or DEADDROP_ROOM), else asked for on a terminal.
fn passphrase_text(room: Option<cli::RoomArg>) -> Result<zeroize::Zeroizing<String>> {
    Ok(match room {
        Some(room) => room.0,
        None if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() => {
            zeroize::Zeroizing::new(
                rpassword::prompt_password("Room passphrase: ")
                    .context("cannot read the passphrase")?,
            )
        }
        None => {
            return Err(usage(
                "no room passphrase: pass --room, set DEADDROP_ROOM, or run in a terminal to be asked",
            ));
        }
    })
}

fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{e:#}");
    if text.contains("cannot open a UDP socket") {
        Some(
            "another program may hold the discovery port; choose another with --port (every peer must use the same)",
        )
    } else if text.contains("no interface is named") {
        Some("use an interface name from the list above, or one of its addresses")
    } else {
        None
    }
}

pub(crate) fn display_name(common: &Common) -> String {
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    deaddrop::protocol::codec::truncate_utf8(&name, deaddrop::protocol::message::MAX_PEER_NAME)
        .to_owned()
}

pub(crate) fn discovery_config(common: &Common) -> DiscoveryConfig {
    DiscoveryConfig {
        port: common
            .port
            .unwrap_or(deaddrop::protocol::beacon::DEFAULT_PORT),
        interfaces: common.interface.clone(),
        peers: common.peer.clone(),
    }
}

async fn open_discovery(common: &Common) -> Result<Discovery> {
    let scope = discovery::resolve(&discovery_config(common)).await?;
    Ok(Discovery::bind(scope)?)
}

async fn client_context(
    pass: Passphrase,
    common: &Common,
    discovery: &Discovery,
    long_running: bool,
) -> Result<ClientContext> {
    let id = PeerId::random();
    let wide = wide::room(common, &pass, discovery.scope(), id, long_running).await?;
    Ok(ClientContext {
        pass,
        id,
        name: display_name(common),
        scope: std::sync::Arc::new(discovery.scope().clone()),
        timeouts: Timeouts::default(),
        wide,
        device: this_device(),
    })
}

/// How holders count this device's fetches: from its device key (made on first use in the
/// config folder). Without a usable config folder, fetches count per process, as before.
fn this_device() -> Option<PeerId> {
    let key = deaddrop::wide::config::dir().and_then(|d| deaddrop::wide::config::device_key(&d));
    match key {
        Ok(key) => Some(client::device_id(&key)),
        Err(e) => {
            tracing::warn!(
                "no device key ({e}); holders count this process's fetches as its own, not the device's"
            );
            None
        }
    }
}

/// Renders events; forwards them to `tap` too, if given.
pub(crate) fn printer(ui: Arc<Ui>, tap: Option<mpsc::UnboundedSender<Event>>) -> Events {
    Arc::new(move |event: Event| {
        ui.event(&event);
        if let Some(tap) = &tap {
            let _ = tap.send(event);
        }
    })
}

async fn dispatch(
    command: Command,
    pass: Passphrase,
    ui: Arc<Ui>,
    interrupt: Interrupt,
) -> Result<u8> {
    match command {
        Command::Run {
            dir,
            max_size,
            no_files,
            common,
            ..
        } if common.legacy => {
            let dir = dir.unwrap_or_else(cli::default_receive_dir);
            legacy::run(
                pass,
                (!no_files).then_some(dir),
                max_size,
                common,
                ui,
                interrupt,
            )
            .await
        }
        Command::Run {
            dir,
            max_size,
            no_files,
            common,
            ..
        } => {
            let dir = dir.unwrap_or_else(cli::default_receive_dir);
            let opts = ReceiverOptions {
                files: (!no_files).then_some(dir),
                max_size,
                ..ReceiverOptions::default()
            };
            run(pass, opts, common, ui, interrupt).await
        }
        Command::SendMsg {
            text,
            clipboard,
            ttl,
            limit,
            common,
        } if common.legacy => {
            let text = read_message(text, clipboard)?;
            let what = legacy::What::Message(text);
            legacy::send(pass, what, ttl, limit, common, ui, interrupt).await
        }
        Command::SendFile {
            path,
            ttl,
            limit,
            common,
        } if common.legacy => {
            let what = legacy::What::Path(path);
            legacy::send(pass, what, ttl, limit, common, ui, interrupt).await
        }
        Command::SendMsg {
            text,
            clipboard,
            ttl,
            limit,
            common,
        } => {
            let text = read_message(text, clipboard)?;
            let offer = Offer::Message(text);
            send(pass, offer, ttl, limit, common, ui, interrupt).await
        }
        Command::SendFile {
            path,
            ttl,
            limit,
            common,
        } => send(pass, Offer::Path(path), ttl, limit, common, ui, interrupt).await,
        Command::Fetch {
            token,
            out,
            dir,
            wait,
            common,
            ..
        } if common.legacy => {
            let wait = wait.unwrap_or(FETCH_WAIT);
            let fetch = legacy::fetch(pass, token, out, dir, wait, common, ui.clone());
            interrupted(fetch, &interrupt, &ui).await
        }
        Command::Fetch {
            token,
            out,
            dir,
            wait,
            common,
            ..
        } => {
            let wait = wait.unwrap_or(if wide::named(&common) {
                FETCH_WAIT_WIDE
            } else {
                FETCH_WAIT
            });
            let token: Token = match token.parse() {
                Ok(t) => t,
                Err(e) => {
                    use clap::CommandFactory;
                    // The error shows fetch's own usage line.
                    let mut cmd = Cli::command();
                    cmd.build();
                    cmd.find_subcommand_mut("fetch")
                        .expect("fetch is a subcommand")
                        .error(
                            clap::error::ErrorKind::InvalidValue,
                            format!("invalid value {token:?} for '<TOKEN>': {e}"),
                        )
                        .exit()
                }
            };
            let fetch = fetch(pass, token, out, dir, wait, common, ui.clone());
            interrupted(fetch, &interrupt, &ui).await
        }
        Command::List { common, .. } if common.legacy => Err(usage(
            "list is not available with --legacy: the original protocol cannot list drops",
        )),
        Command::Doctor { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Invite { .. }
        | Command::Join { .. }
        | Command::Qr { .. }
        | Command::Relay { .. } => {
            unreachable!("handled before the passphrase")
        }
        Command::List { wait, common } => {
            let wait = wait.unwrap_or(if wide::named(&common) {
                LIST_WAIT_WIDE
            } else {
                LIST_WAIT
            });
            interrupted(list(pass, wait, common, ui.clone()), &interrupt, &ui).await
        }
    }
}

/// Runs a command that holds nothing for others (`fetch`, `list`) until Ctrl-C: then it stops
/// with code 130. A partial file stays hidden in the folder for the next fetch to resume.
async fn interrupted(
    work: impl Future<Output = Result<u8>>,
    interrupt: &Interrupt,
    ui: &Ui,
) -> Result<u8> {
    tokio::select! {
        done = work => done,
        _ = interrupt.wait() => {
            ui.err("Interrupted.");
            Ok(EXIT_INTERRUPTED)
        }
    }
}

async fn run(
    pass: Passphrase,
    opts: ReceiverOptions,
    common: Common,
    ui: Arc<Ui>,
    interrupt: Interrupt,
) -> Result<u8> {
    if let Some(dir) = &opts.files {
        check_receive_dir(dir)?;
    }
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery, true).await?;
    receiver::run(ctx, opts, discovery, printer(ui, None), interrupt.wait()).await;
    Ok(0)
}

/// Checks at start that files can be saved in `dir`: an existing folder we can write to, or a
/// path where one can be made when the first file arrives.
pub(crate) fn check_receive_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!("cannot save files in {}: not a folder", dir.display()),
        Ok(_) => {
            let probe = dir.join(format!(".deaddrop-probe-{}", PeerId::random()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
                .with_context(|| format!("cannot save files in {}", dir.display()))?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Made on first use; its nearest existing ancestor must be a folder.
            let mut up = dir.parent();
            while let Some(p) = up.filter(|p| !p.as_os_str().is_empty()) {
                if let Ok(meta) = std::fs::metadata(p) {
                    if !meta.is_dir() {
                        bail!(
                            "cannot save files in {}: {} is not a folder",
                            dir.display(),
                            p.display()
                        );
                    }
                    break;
                }
                up = p.parent();
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot save files in {}", dir.display())),
    }
}

/// The message to send: the argument, standard input (`-`) or the clipboard.
fn read_message(text: Option<String>, clipboard: bool) -> Result<String> {
    match text {
        _ if clipboard => return clipboard::read(),
        Some(text) if text != "-" => return Ok(text),
        _ => {}
    }
    if std::io::stdin().is_terminal() {
        stderr_line(if cfg!(windows) {
            "Type the message, then press Ctrl-Z and Enter on a line of its own."
        } else {
            "Type the message, then press Ctrl-D on a line of its own."
        });
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut buf)
        .context("cannot read the message from standard input")?;
    if buf.len() > MAX_MESSAGE {
        bail!("the message on standard input is over 1 MiB; send large text as a file");
    }
    String::from_utf8(buf).context("the message on standard input is not UTF-8 text")
}

enum Offer {
    Message(String),
    Path(PathBuf),
}

async fn send(
    pass: Passphrase,
    offer: Offer,
    ttl: Duration,
    limit: Limit,
    common: Common,
    ui: Arc<Ui>,
    interrupt: Interrupt,
) -> Result<u8> {
    let prepared = match &offer {
        Offer::Path(path) => {
            let path = path.clone();
            // Nothing is read here (a folder's tree is walked): the first transfer hashes.
            let prepared = tokio::task::spawn_blocking(move || Source::path(&path)).await??;
            for skipped in &prepared.skipped {
                ui.err(&format!(
                    "warning: left out {} (not a regular file or folder)",
                    skipped.display()
                ));
            }
            Some(prepared)
        }
        Offer::Message(_) => None,
    };
    let discovery = open_discovery(&common).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = HolderOptions {
        name: display_name(&common),
        ..HolderOptions::default()
    };
    let scope = discovery.scope().clone();
    let wide_pass = wide::named(&common).then(|| pass.clone());
    let mut holder = Holder::start(pass, opts, discovery, printer(ui.clone(), Some(tx)))
        .await
        .context("cannot start serving")?;
    let wide = match wide_pass {
        Some(pass) => wide::plan(&common, &scope, holder.id(), true)?.map(|opts| (opts, pass)),
        None => None,
    };
    let limit = if limit.everyone {
        FetchLimit::Everyone
    } else {
        FetchLimit::Max(limit.max_fetches)
    };
    let (token, what) = match (&offer, &prepared) {
        (Offer::Message(text), _) => (
            holder.offer_message(text, ttl, limit)?,
            format!("a message ({} bytes)", text.len()),
        ),
        (Offer::Path(_), Some(p)) => (
            holder.offer_path(p, ttl, limit)?,
            match p.kind {
                DropKind::Directory => format!(
                    "folder {:?} ({}, {})",
                    p.name,
                    files(p.files),
                    format_size(p.bytes)
                ),
                _ => format!("file {:?} ({})", p.name, format_size(p.bytes)),
            },
        ),
        (Offer::Path(_), None) => unreachable!("prepared above"),
    };
    // On offer on the LAN first; then beyond it.
    if let Some((opts, pass)) = wide {
        holder.serve_wide(wide::start(opts, &pass).await?);
    }
    if !ui.json() {
        ui.out(&token.to_string());
        ui.err(&format!(
            "Holding {what} at {} for {}, {}. Ctrl-C withdraws it.",
            holder.local_addr(),
            format_duration(ttl),
            match limit {
                FetchLimit::Everyone => "for everyone in the room".to_string(),
                FetchLimit::Max(1) => "for one receiver".to_string(),
                FetchLimit::Max(n) => format!("for up to {n} receivers"),
            }
        ));
    }
    wait_for_end(&holder, &mut rx, &[token], &ui, &interrupt).await
}

/// "1 file", "3 files".
pub(crate) fn files(n: u64) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// Waits until every one of `tokens` is used up or expired, or Ctrl-C.
async fn wait_for_end(
    holder: &Holder,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    tokens: &[Token],
    ui: &Ui,
    interrupt: &Interrupt,
) -> Result<u8> {
    let mut left: Vec<Token> = tokens.to_vec();
    let mut unfetched_expiry = false;
    let mut used_up = false;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::UsedUp { token, .. }) => {
                    left.retain(|t| token != *t);
                    used_up = true;
                }
                Some(Event::Expired { token, delivered }) => {
                    left.retain(|t| token != *t);
                    unfetched_expiry |= delivered == 0;
                }
                Some(_) => continue,
                None => bail!("the holder stopped unexpectedly"),
            },
            _ = interrupt.wait() => {
                holder.withdraw_all();
                // Receivers in the middle of a fetch are told, so they delete what arrived.
                holder.transfers_stopped(WITHDRAW_NOTICE).await;
                ui.err("Interrupted: the drop is withdrawn.");
                return Ok(EXIT_INTERRUPTED);
            }
        }
        if left.is_empty() {
            if used_up {
                tokio::select! {
                    _ = holder.sessions_ended(LINGER) => {}
                    _ = interrupt.wait() => {}
                }
            }
            return Ok(if unfetched_expiry { EXIT_EXPIRED } else { 0 });
        }
    }
}

pub(crate) fn destination(out: Option<PathBuf>, dir: PathBuf) -> Destination {
    match out {
        Some(p) if p == Path::new("-") => Destination::Stdout,
        Some(p) => Destination::Exact(p),
        None => Destination::Folder(dir),
    }
}

async fn fetch(
    pass: Passphrase,
    token: Token,
    out: Option<PathBuf>,
    dir: PathBuf,
    wait: Duration,
    common: Common,
    ui: Arc<Ui>,
) -> Result<u8> {
    check_out_path(out.as_deref())?;
    let dest = destination(out.clone(), dir);
    if let Destination::Folder(dir) = &dest {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || sink::sweep(&dir));
    }
    let folder = match &dest {
        Destination::Folder(dir) => dir.display().to_string(),
        _ => ".".into(),
    };
    let file =
        FileSink::new(dest, token, None).with_context(|| format!("cannot save in {folder}"))?;
    let mut sink = DropSink::new(file, MAX_MESSAGE);
    let resuming = sink_offset(&sink);
    if resuming > 0 && !ui.json() {
        ui.err(&format!(
            "Resuming: {} already here.",
            format_size(resuming)
        ));
    }
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery, false).await?;
    let mut throttle = Throttle::new();
    let progress_ui = ui.clone();
    let progress = move |t: &client::Transfer<'_>| {
        // A message's progress means nothing.
        if t.info.kind != DropKind::Message && throttle.ready(t.done == t.info.size) {
            progress_ui.event(&t.event(false));
        }
    };
    let (info, holder, address, via) = match client::fetch_token(
        &ctx, &discovery, token, wait, &mut sink, progress,
    )
    .await
    {
        Ok(found) => found,
        Err(e) => {
            ui.end_transfers(&token.into(), None);
            let mut message = e.to_string();
            match &e {
                    // Its holder says it cannot be had: what arrived of it is of no use.
                    FindError::Refused(_) => sink.file.discard(),
                    FindError::Fetch(f) if f.is_resumable() => message.push_str(
                        "; what arrived is kept: run the same command again to resume (until the drop expires)",
                    ),
                    FindError::Fetch(FetchError::Aborted(Refusal::Withdrawn)) => {
                        message.push_str("; what arrived was deleted")
                    }
                    _ => {}
                }
            report_error(&ui, &message);
            return Ok(match e {
                FindError::NotFound { .. } => EXIT_NOT_FOUND,
                FindError::NoRoom { .. } => EXIT_NO_ROOM,
                FindError::Refused(Refusal::Taken | Refusal::AlreadyYours) => EXIT_REFUSED,
                _ => EXIT_ERROR,
            });
        }
    };
    match info.kind {
        DropKind::Message => {
            let text = &sink.memory.data;
            match &out {
                Some(path) if path == Path::new("-") => write_stdout(text)?,
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    std::io::Write::write_all(&mut f, text)?;
                    f.sync_all()?;
                }
                _ if ui.json() => ui.event(&Event::Message {
                    token: token.into(),
                    from: holder,
                    address: address.to_string(),
                    via,
                    text: String::from_utf8_lossy(text).into_owned(),
                    sent_unix: info.created_unix,
                }),
                _ if std::io::stdout().is_terminal() => {
                    ui.message_text(&String::from_utf8_lossy(text));
                }
                _ => write_stdout(text)?,
            }
            // `--copy`: on the clipboard as well (the JSON event asked for it already).
            if !ui.json() || out.is_some() {
                ui.copy(&String::from_utf8_lossy(text));
            }
            if !ui.copied(COPY_WAIT) {
                return Ok(EXIT_ERROR);
            }
        }
        _ => {
            // Nothing was published when the file went to standard output.
            if let Some(path) = sink.file.published() {
                ui.event(&Event::Received {
                    token: token.into(),
                    kind: info.kind,
                    path: path.display().to_string(),
                    size: sink.file.saved().bytes,
                    files: sink.file.saved().files,
                    from: holder,
                    address: address.to_string(),
                    via,
                });
            }
        }
    }
    Ok(0)
}

/// Checks at start that `fetch --out PATH` can be created: nothing is there yet, and its folder
/// exists.
pub(crate) fn check_out_path(out: Option<&Path>) -> Result<()> {
    let Some(path) = out.filter(|p| *p != Path::new("-")) else {
        return Ok(());
    };
    if path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; deaddrop never overwrites",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!(
            "cannot save to {}: {} is not a folder",
            path.display(),
            parent.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot save to {}: the folder {} does not exist",
            path.display(),
            parent.display()
        ),
        Err(e) => bail!("cannot save to {}: {e}", path.display()),
    }
}

fn sink_offset(sink: &DropSink) -> u64 {
    use deaddrop::session::client::Sink;
    sink.offset()
}

/// Raw bytes to a pipe; a reader that went away (`| head`) is not an error.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn list(pass: Passphrase, wait: Duration, common: Common, ui: Arc<Ui>) -> Result<u8> {
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery, false).await?;
    let (listings, tally) = client::list_room(&ctx, &discovery, wait).await;
    let total: usize = listings.iter().map(|l| l.drops.len()).sum();
    if listings.is_empty() && tally.rejected > 0 {
        report_error(
            &ui,
            &format!(
                "{} holder(s) answered but none accepted the passphrase: wrong passphrase, or someone interfered",
                tally.rejected
            ),
        );
        return Ok(EXIT_NO_ROOM);
    }
    if ui.json() {
        for l in &listings {
            for d in &l.drops {
                ui.out(
                    &serde_json::json!({
                        "event": "drop",
                        "token": d.token,
                        "kind": d.kind,
                        "name": d.name,
                        "size": d.size,
                        "from": l.holder,
                        "address": l.addr.to_string(),
                        "ttl_left_ms": d.ttl_left_ms,
                        "fetches_left": (d.fetches_left != deaddrop::protocol::message::EVERYONE).then_some(d.fetches_left),
                    })
                    .to_string(),
                );
            }
        }
    } else if total > 0 {
        ui.out(output::LISTING_HEADER);
        for l in &listings {
            for d in &l.drops {
                ui.out(&output::listing_row(d, &l.holder));
            }
        }
    } else if listings.is_empty() && tally.cut > 0 {
        stderr_line(&format!(
            "No drops found: {} holder(s) closed the connection before the handshake (busy, or limiting connections); try again.",
            tally.cut
        ));
    } else {
        stderr_line(&format!(
            "No drops on offer ({} holder(s) in the room answered within {}).",
            listings.len(),
            format_duration(wait)
        ));
    }
    Ok(0)
}
