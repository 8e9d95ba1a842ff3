//! The `--legacy` commands: the original script's protocol, for people still running it.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use deaddrop::discovery::{self, DiscoveryConfig, Scope};
use deaddrop::event::Event;
use deaddrop::legacy::net::{self, Caps, Got, Offer, Outcome, ReceiveOptions};
use deaddrop::legacy::wire::{self, Kind};
use deaddrop::protocol::secret::Passphrase;
use deaddrop::units::{format_duration, format_size};

use crate::cli::{Common, Limit};
use crate::interrupt::Interrupt;
use crate::output::Ui;
use crate::{EXIT_EXPIRED, EXIT_INTERRUPTED, EXIT_NOT_FOUND, destination, printer, write_stdout};

pub const WARNING: &str = "--legacy speaks the original p2p_dead_drop.py protocol: its room id lets anyone on the \
    LAN test passphrase guesses offline, and anyone on the LAN can fetch (and so burn) a drop. Use it only to \
    exchange drops with people still running that script.";

async fn scope(common: &Common) -> Result<Scope> {
    Ok(discovery::resolve(&DiscoveryConfig {
        port: common.port.unwrap_or(wire::UDP_PORT),
        interfaces: common.interface.clone(),
        peers: Vec::new(),
    })
    .await?)
}

/// `--peer HOST[:PORT]` as TCP addresses of legacy senders (default port 48556).
async fn tcp_peers(common: &Common) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for peer in &common.peer {
        let with_port = if peer.contains(':') {
            peer.clone()
        } else {
            format!("{peer}:{}", wire::TCP_PORT)
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve peer {peer:?}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("peer {peer:?} has no IPv4 address"))?;
        out.push(addr);
    }
    Ok(out)
}

pub async fn run(
    pass: Passphrase,
    files: Option<PathBuf>,
    max_size: Option<u64>,
    common: Common,
    ui: Arc<Ui>,
    interrupt: Interrupt,
) -> Result<u8> {
    if !common.peer.is_empty() {
        return Err(crate::usage(
            "--peer with --legacy only works for fetch: the original protocol has no way to ask a peer for its drops",
        ));
    }
    if let Some(dir) = &files {
        crate::check_receive_dir(dir)?;
    }
    let scope = scope(&common).await?;
    let opts = ReceiveOptions {
        files,
        caps: Caps {
            file: max_size.unwrap_or(net::DEFAULT_MAX_FILE),
            ..Caps::default()
        },
    };
    net::receive(pass, scope, opts, printer(ui, None), interrupt.wait())
        .await
        .context("cannot listen for legacy offers")?;
    Ok(0)
}

pub enum What {
    Message(String),
    Path(PathBuf),
}

pub async fn send(
    pass: Passphrase,
    what: What,
    ttl: Duration,
    limit: Limit,
    common: Common,
    ui: Arc<Ui>,
    interrupt: Interrupt,
) -> Result<u8> {
    if limit.everyone || limit.max_fetches != 1 {
        return Err(crate::usage(
            "--legacy drops are fetched once, as the original script does: --max-fetches and --everyone do not apply",
        ));
    }
    let (kind, name, plaintext) = match what {
        What::Message(text) => (Kind::Message, "message".to_owned(), text.into_bytes()),
        What::Path(path) => read_file(&path)?,
    };
    let scope = scope(&common).await?;
    let size = plaintext.len();
    let offer = Offer {
        kind,
        name: name.clone(),
        plaintext: Arc::new(plaintext),
        ttl,
    };
    let events = printer(ui.clone(), None);
    let offered_ui = ui.clone();
    let announce = Arc::new(move |e: Event| {
        if let Event::Offered { token, address, .. } = &e
            && !offered_ui.json()
        {
            offered_ui.out(&token.to_string());
            offered_ui.err(&format!(
                "Holding {name:?} ({}) for the original protocol at {address} for {}. Ctrl-C withdraws it.",
                format_size(size as u64),
                format_duration(ttl)
            ));
        }
        events(e);
    });
    tokio::select! {
        outcome = net::serve(&pass, offer, &scope, announce) => Ok(match outcome? {
            Outcome::Fetched { .. } => 0,
            Outcome::Expired => EXIT_EXPIRED,
        }),
        _ = interrupt.wait() => {
            ui.err("Interrupted: the drop is withdrawn.");
            Ok(EXIT_INTERRUPTED)
        }
    }
}

fn read_file(path: &Path) -> Result<(Kind, String, Vec<u8>)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "the original protocol cannot send folders; send the files one by one, or drop --legacy"
        );
    }
    if meta.len() > net::DEFAULT_MAX_FILE {
        bail!(
            "{} is {}; --legacy sends at most {} (the original script itself fails above 16 MiB)",
            path.display(),
            format_size(meta.len()),
            format_size(net::DEFAULT_MAX_FILE)
        );
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((Kind::File, name, bytes))
}

pub async fn fetch(
    pass: Passphrase,
    token: String,
    out: Option<PathBuf>,
    dir: PathBuf,
    wait: Duration,
    common: Common,
    ui: Arc<Ui>,
) -> Result<u8> {
    crate::check_out_path(out.as_deref())?;
    let scope = scope(&common).await?;
    let peers = tcp_peers(&common).await?;
    let files = destination(out.clone(), dir);
    let found = net::find(&pass, &scope, &token, &peers, wait, Caps::default(), &files).await;
    let fetched = match found {
        Ok(f) => f,
        Err(net::LegacyError::NotFound) => {
            crate::report_error(&ui, "no legacy sender in this room offers that drop");
            return Ok(EXIT_NOT_FOUND);
        }
        Err(e) => return Err(e.into()),
    };
    match &fetched.got {
        Got::Message(plain) => {
            let plain = plain.clone();
            let json_event = ui.json() && out.is_none();
            match &out {
                Some(path) if path == Path::new("-") => write_stdout(&plain)?,
                Some(path) => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, &plain))
                        .with_context(|| format!("cannot create {}", path.display()))?;
                }
                _ if ui.json() => net::deliver(fetched, &token, &printer(ui.clone(), None)),
                // On a terminal, the text is shown as `run` shows it: no control characters.
                _ if std::io::stdout().is_terminal() => ui.out(&crate::output::sanitize(
                    &String::from_utf8_lossy(&plain),
                    true,
                )),
                _ => write_stdout(&plain)?,
            }
            // `--copy`: on the clipboard as well (the JSON event asked for it already).
            if !json_event {
                ui.copy(&String::from_utf8_lossy(&plain));
            }
            if !ui.copied(crate::COPY_WAIT) {
                return Ok(crate::EXIT_ERROR);
            }
        }
        // Saved (or written to standard output) as it arrived.
        Got::File { .. } => net::deliver(fetched, &token, &printer(ui, None)),
    }
    Ok(0)
}
