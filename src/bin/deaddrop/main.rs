//! The `deaddrop` command: parses arguments, asks for the passphrase, renders events, and maps
//! outcomes to exit codes. All protocol work is in the library.

mod cli;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use deaddrop::client::{self, ClientContext, FindError, MemorySink};
use deaddrop::discovery::{self, Discovery, DiscoveryConfig};
use deaddrop::event::{Event, Events};
use deaddrop::holder::{Holder, HolderOptions, MAX_MESSAGE};
use deaddrop::id::{PeerId, Token};
use deaddrop::message::{DropKind, Refusal};
use deaddrop::receiver::{self, ReceiverOptions};
use deaddrop::secret::Passphrase;
use deaddrop::store::FetchLimit;
use deaddrop::transport::Timeouts;
use tokio::sync::mpsc;

use cli::{Cli, Command, Common, Offer};
use output::{stderr_line, stdout_line};

const EXIT_ERROR: u8 = 1;
const EXIT_EXPIRED: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;
const EXIT_REFUSED: u8 = 5;
const EXIT_NO_ROOM: u8 = 6;
const EXIT_INTERRUPTED: u8 = 130;
/// After its last drop is used up, a sender keeps answering for this long, so that fetchers
/// racing for a one-time drop hear "already taken" rather than "no such drop".
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Run { common }
        | Command::SendMsg { common, .. }
        | Command::Fetch { common, .. }
        | Command::List { common, .. } => common,
    };
    init_logging(common.verbose);
    let json = common.json;
    let result = passphrase(common).and_then(|pass| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(dispatch(cli.command, pass))
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(json, &format!("{e:#}"));
            if let Some(hint) = hint(&e) {
                stderr_line(&format!("hint: {hint}"));
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A fatal error: on stderr for people, and as an `error` event for `--json` readers.
fn report_error(json: bool, message: &str) {
    stderr_line(&format!("error: {message}"));
    if json {
        stdout_line(&output::json_line(&Event::Error {
            message: message.to_owned(),
        }));
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
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
fn passphrase(common: &Common) -> Result<Passphrase> {
    let text = match &common.room {
        Some(room) => room.clone(),
        None if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() => {
            rpassword::prompt_password("Room passphrase: ").context("cannot read the passphrase")?
        }
        None => bail!(
            "no room passphrase: pass --room, set DEADDROP_ROOM, or run in a terminal to be asked"
        ),
    };
    Ok(Passphrase::new(text)?)
}

fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{e:#}");
    if text.contains("cannot open a UDP socket") {
        Some(
            "another program may hold the discovery port; choose another with --port (every peer must use the same)",
        )
    } else if text.contains("no IPv4 interface") {
        Some("use an interface name from the list above, or one of its IPv4 addresses")
    } else {
        None
    }
}

fn display_name(common: &Common) -> String {
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    deaddrop::codec::truncate_utf8(&name, deaddrop::message::MAX_PEER_NAME).to_owned()
}

async fn open_discovery(common: &Common) -> Result<Discovery> {
    let scope = discovery::resolve(&DiscoveryConfig {
        port: common.port,
        interface: common.interface.clone(),
        peers: common.peer.clone(),
    })
    .await?;
    Ok(Discovery::bind(scope)?)
}

fn client_context(pass: Passphrase, common: &Common, discovery: &Discovery) -> ClientContext {
    ClientContext {
        pass,
        id: PeerId::random(),
        name: display_name(common),
        bind_ip: discovery.scope().bind_ip,
        timeouts: Timeouts::default(),
    }
}

/// Prints events as text or JSON; forwards them to `tap` too, if given.
fn printer(json: bool, tap: Option<mpsc::UnboundedSender<Event>>) -> Events {
    Arc::new(move |event: Event| {
        if json {
            stdout_line(&output::json_line(&event));
        } else if let Some((line, to_stdout)) = output::human(&event) {
            if to_stdout {
                stdout_line(&line);
            } else {
                stderr_line(&line);
            }
        }
        if let Some(tap) = &tap {
            let _ = tap.send(event);
        }
    })
}

async fn dispatch(command: Command, pass: Passphrase) -> Result<u8> {
    match command {
        Command::Run { common } => run(pass, common).await,
        Command::SendMsg {
            text,
            offer,
            common,
        } => send_msg(pass, text, offer, common).await,
        Command::Fetch {
            token,
            out,
            wait,
            common,
        } => fetch(pass, token, out.as_deref(), wait, common).await,
        Command::List { wait, common } => list(pass, wait, common).await,
    }
}

async fn run(pass: Passphrase, common: Common) -> Result<u8> {
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    receiver::run(
        ctx,
        ReceiverOptions::default(),
        discovery,
        printer(common.json, None),
        shutdown,
    )
    .await;
    Ok(0)
}

fn read_message(text: String) -> Result<String> {
    if text != "-" {
        return Ok(text);
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

async fn send_msg(pass: Passphrase, text: String, offer: Offer, common: Common) -> Result<u8> {
    let text = read_message(text)?;
    let discovery = open_discovery(&common).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = HolderOptions {
        name: display_name(&common),
        ..HolderOptions::default()
    };
    let holder = Holder::start(pass, opts, discovery, printer(common.json, Some(tx)))
        .await
        .context("cannot start serving")?;
    let limit = if offer.everyone {
        FetchLimit::Everyone
    } else {
        FetchLimit::Max(offer.max_fetches)
    };
    let token = holder.offer_message(&text, offer.ttl, limit)?;
    if !common.json {
        stdout_line(&token.to_string());
        stderr_line(&format!(
            "Holding a message ({} bytes) at {} for {}, {}. Ctrl-C withdraws it.",
            text.len(),
            holder.local_addr(),
            deaddrop::duration::format_duration(offer.ttl),
            match limit {
                FetchLimit::Everyone => "for everyone in the room".to_string(),
                FetchLimit::Max(1) => "for one receiver".to_string(),
                FetchLimit::Max(n) => format!("for up to {n} receivers"),
            }
        ));
    }
    wait_for_end(&holder, &mut rx, &[token]).await
}

/// Waits until every one of `tokens` is used up or expired, or Ctrl-C.
async fn wait_for_end(
    holder: &Holder,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    tokens: &[Token],
) -> Result<u8> {
    let mut left: Vec<Token> = tokens.to_vec();
    let mut unfetched_expiry = false;
    let mut used_up = false;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::UsedUp { token, .. }) => {
                    left.retain(|t| *t != token);
                    used_up = true;
                }
                Some(Event::Expired { token, delivered }) => {
                    left.retain(|t| *t != token);
                    unfetched_expiry |= delivered == 0;
                }
                Some(_) => continue,
                None => bail!("the holder stopped unexpectedly"),
            },
            _ = tokio::signal::ctrl_c() => {
                holder.withdraw_all();
                stderr_line("Interrupted: the drop is withdrawn.");
                return Ok(EXIT_INTERRUPTED);
            }
        }
        if left.is_empty() {
            if used_up {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            return Ok(if unfetched_expiry { EXIT_EXPIRED } else { 0 });
        }
    }
}

async fn fetch(
    pass: Passphrase,
    token: Token,
    out: Option<&Path>,
    wait: std::time::Duration,
    common: Common,
) -> Result<u8> {
    if let Some(path) = out
        && path.exists()
    {
        bail!(
            "{} already exists; deaddrop never overwrites",
            path.display()
        );
    }
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery);
    let mut sink = MemorySink::new(MAX_MESSAGE);
    let (info, holder) =
        match client::fetch_token(&ctx, &discovery, token, wait, &mut sink, |_, _| {}).await {
            Ok(found) => found,
            Err(e) => {
                report_error(common.json, &e.to_string());
                return Ok(match e {
                    FindError::NotFound { .. } => EXIT_NOT_FOUND,
                    FindError::NoRoom { .. } => EXIT_NO_ROOM,
                    FindError::Refused(Refusal::Taken | Refusal::AlreadyYours) => EXIT_REFUSED,
                    _ => EXIT_ERROR,
                });
            }
        };
    if info.kind != DropKind::Message {
        bail!("this version can only fetch messages");
    }
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(&sink.data)?;
            f.sync_all()?;
        }
        None if common.json => {}
        None if std::io::stdout().is_terminal() => {
            stdout_line(&output::sanitize(
                &String::from_utf8_lossy(&sink.data),
                true,
            ));
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&sink.data).and_then(|_| stdout.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    if common.json {
        stdout_line(&output::json_line(&Event::Message {
            token,
            from: holder,
            address: String::new(),
            text: String::from_utf8_lossy(&sink.data).into_owned(),
            sent_unix: info.created_unix,
        }));
    }
    Ok(0)
}

async fn list(pass: Passphrase, wait: std::time::Duration, common: Common) -> Result<u8> {
    let discovery = open_discovery(&common).await?;
    let ctx = client_context(pass, &common, &discovery);
    let (listings, rejected) = client::list_room(&ctx, &discovery, wait).await;
    let total: usize = listings.iter().map(|l| l.drops.len()).sum();
    if common.json {
        for l in &listings {
            for d in &l.drops {
                stdout_line(
                    &serde_json::json!({
                        "event": "drop",
                        "token": d.token,
                        "kind": d.kind,
                        "name": d.name,
                        "size": d.size,
                        "from": l.holder,
                        "address": l.addr.to_string(),
                        "ttl_left_ms": d.ttl_left_ms,
                        "fetches_left": (d.fetches_left != deaddrop::message::EVERYONE).then_some(d.fetches_left),
                    })
                    .to_string(),
                );
            }
        }
    } else if total > 0 {
        stdout_line(output::LISTING_HEADER);
        for l in &listings {
            for d in &l.drops {
                stdout_line(&output::listing_row(d, &l.holder));
            }
        }
    } else {
        stderr_line(&format!(
            "No drops on offer ({} holder(s) in the room answered within {}).",
            listings.len(),
            deaddrop::duration::format_duration(wait)
        ));
    }
    if listings.is_empty() && rejected > 0 {
        report_error(
            common.json,
            &format!(
                "{rejected} holder(s) answered but none accepted the passphrase: wrong passphrase, or someone interfered"
            ),
        );
        return Ok(EXIT_NO_ROOM);
    }
    Ok(0)
}
