//! Rendering events for people (text) or programs (JSON lines), and making peer-supplied text
//! safe to show on a terminal.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Local, SecondsFormat, TimeZone, Utc};
use deaddrop::event::{DropId, Event};
use deaddrop::protocol::message::{DropInfo, DropKind, EVERYONE};
use deaddrop::units::{format_duration, format_size};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Replaces control, escape and bidirectional-override characters, so text from a peer cannot
/// move the cursor, recolour the terminal or reorder what is shown. Newlines and tabs are kept
/// only where `multiline` is set.
pub fn sanitize(text: &str, multiline: bool) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' if multiline => c,
            c if c.is_control() => '\u{fffd}',
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                '\u{fffd}'
            }
            c => c,
        })
        .collect()
}

/// `--open` opens at most one link this often.
const OPEN_EVERY: Duration = Duration::from_secs(2);

/// A message that is exactly one web address (white space around it aside): http or https
/// with a host, printable ASCII, at most 2,048 bytes. Nothing else is ever a link or opened.
pub fn web_link(text: &str) -> Option<url::Url> {
    let text = text.trim();
    if text.is_empty() || text.len() > 2048 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let url = url::Url::parse(text).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host().is_some()).then_some(url)
}

/// `shown` (the link's own text, printable ASCII) as an OSC 8 hyperlink to `url`; terminals
/// without hyperlinks show `shown` alone.
fn hyperlink(url: &url::Url, shown: &str) -> String {
    format!("\x1b]8;;{}\x1b\\{shown}\x1b]8;;\x1b\\", url.as_str())
}

/// Writes a line to stdout. A closed pipe (`deaddrop run | head -1`) ends the program quietly.
pub fn stdout_line(line: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush())
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub fn stderr_line(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// One event as a JSON line, with the time it was printed.
pub fn json_line(event: &Event) -> String {
    let mut v = serde_json::to_value(event).expect("events serialize");
    v["time"] = Utc::now()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
        .into();
    v.to_string()
}

fn clock(unix: Option<u64>) -> String {
    let t = unix
        .and_then(|s| Local.timestamp_opt(s as i64, 0).single())
        .unwrap_or_else(Local::now);
    t.format("%H:%M:%S").to_string()
}

/// Said after a transfer that did not go over the LAN: the user may want to know that a file
/// went through the relay.
fn beyond_lan(via: deaddrop::event::Via) -> &'static str {
    match via {
        deaddrop::event::Via::Lan => "",
        deaddrop::event::Via::Direct => ", direct",
        deaddrop::event::Via::Relayed => ", through the relay",
    }
}

fn size(bytes: u64) -> String {
    format_size(bytes)
}

/// Human text for an event: (line, goes to stdout).
pub fn human(event: &Event) -> Option<(String, bool)> {
    Some(match event {
        Event::Listening {
            discovery_port,
            targets,
            folder,
        } => (
            format!(
                "Listening for drops on UDP {discovery_port} ({}); {}. Ctrl-C to stop.",
                targets.join(", "),
                match folder {
                    Some(f) => format!("files go to {f}"),
                    None => "messages only".into(),
                }
            ),
            false,
        ),
        Event::Message { from, text, .. } => {
            let text = sanitize(text, true).replace('\n', "\n    ");
            (
                format!("[{}] {}: {text}", clock(None), sanitize(from, false)),
                true,
            )
        }
        Event::Skipped {
            token,
            kind,
            name,
            size: bytes,
            from,
            reason,
        } => (
            format!(
                "[{}] {} offers {} {:?} ({}), not fetched: {}. Token: {}",
                clock(None),
                sanitize(from, false),
                kind.as_str(),
                sanitize(name, false),
                size(*bytes),
                sanitize(reason, false),
                safe_token(token)
            ),
            false,
        ),
        Event::Offered { .. } | Event::Progress { .. } => return None,
        Event::Received {
            kind,
            path,
            size: bytes,
            files,
            from,
            via,
            ..
        } => (
            format!(
                "[{}] {}: saved {} {} ({}{})",
                clock(None),
                sanitize(from, false),
                kind.as_str(),
                sanitize(path, false),
                match kind {
                    DropKind::Directory => format!("{}, {}", crate::files(*files), size(*bytes)),
                    _ => size(*bytes),
                },
                beyond_lan(*via)
            ),
            true,
        ),
        Event::Fetched {
            by, address, via, ..
        } => (
            format!(
                "Fetched by {} ({address}{}).",
                sanitize(by, false),
                beyond_lan(*via)
            ),
            false,
        ),
        Event::UsedUp { .. } => return None,
        Event::Expired { delivered, .. } => (
            if *delivered == 0 {
                "The time-to-live ran out; nobody fetched the drop.".into()
            } else {
                format!("The time-to-live ran out after {delivered} fetch(es).")
            },
            false,
        ),
        Event::FetchFailed {
            token,
            kind,
            name,
            from,
            reason,
            ..
        } => (
            format!(
                "[{}] warning: {} {:?} from {} was not saved: {}. Token: {}",
                clock(None),
                kind.as_str(),
                sanitize(name, false),
                sanitize(from, false),
                sanitize(reason, false),
                safe_token(token)
            ),
            false,
        ),
        Event::SendStopped { to, reason, .. } => (
            format!(
                "warning: sending to {} stopped: {}",
                sanitize(to, false),
                sanitize(reason, false)
            ),
            false,
        ),
        Event::Refused { reason, .. } => (format!("warning: a drop was refused: {reason}"), false),
        Event::Rejected { address } => (
            format!(
                "warning: {address} failed the room handshake (another passphrase, or someone interfered)"
            ),
            false,
        ),
        Event::Warning { message } => (format!("warning: {}", sanitize(message, false)), false),
        _ => return None,
    })
}

/// A drop's token made safe to show: a legacy token is whatever string its sender chose.
fn safe_token(token: &DropId) -> String {
    match token {
        DropId::Native(t) => t.to_string(),
        DropId::Legacy(s) => sanitize(s, false),
    }
}

/// A listing table row.
pub fn listing_row(d: &DropInfo, holder: &str) -> String {
    let left = if d.fetches_left == EVERYONE {
        "everyone".to_string()
    } else {
        d.fetches_left.to_string()
    };
    format!(
        "{}  {:<9} {:>10}  {} {} {:>8}  {}",
        d.token,
        d.kind.as_str(),
        size(d.size),
        pad(&sanitize(&d.name, false), 20),
        pad(&sanitize(holder, false), 16),
        format_duration(Duration::from_millis(d.ttl_left_ms)),
        left
    )
}

pub const LISTING_HEADER: &str = "TOKEN                             KIND            SIZE  NAME                 SENDER           TIME-LEFT  FETCHES-LEFT";

/// Where the program's output goes: JSON lines, or text with progress bars on a terminal.
pub struct Ui {
    json: bool,
    /// Standard output is a terminal: a message that is a web link is shown as a hyperlink.
    links: bool,
    /// `--open`: when the last web link was opened (None: never; `--open` not given: no
    /// opener at all).
    opener: Option<Mutex<Option<std::time::Instant>>>,
    /// Standard output carries a drop's content (`fetch --out -`): every line goes to stderr.
    stdout_is_content: bool,
    /// `--copy`: received messages go on the clipboard; whether the last one was copied.
    #[allow(clippy::type_complexity)]
    copier: Option<(
        crate::clipboard::Copier,
        Mutex<Option<std::sync::mpsc::Receiver<bool>>>,
    )>,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    active: Mutex<HashMap<BarKey, ProgressBar>>,
}

/// One transfer's bar: which drop, the other end, and the direction (true: sending).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BarKey {
    token: String,
    peer: String,
    sending: bool,
}

impl Ui {
    /// `stdout_is_content`: standard output is reserved for a drop's bytes, so events and
    /// lines go to standard error instead.
    /// `open_links`: `--open`; `copy`: `--copy`.
    pub fn new(json: bool, stdout_is_content: bool, open_links: bool, copy: bool) -> Arc<Ui> {
        let bars = (!json && io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            active: Mutex::new(HashMap::new()),
        });
        let links = !json
            && !stdout_is_content
            && io::stdout().is_terminal()
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Arc::new(Ui {
            json,
            links,
            opener: open_links.then(|| Mutex::new(None)),
            stdout_is_content,
            copier: copy.then(|| {
                // A text that cannot be copied is a warning; the message is shown anyway.
                let copier = crate::clipboard::Copier::new(move |why| {
                    let message = format!("the message was not copied: {why}");
                    if json && !stdout_is_content {
                        stdout_line(&json_line(&Event::Warning { message }));
                    } else {
                        stderr_line(&format!("warning: {}", sanitize(&message, false)));
                    }
                });
                (copier, Mutex::new(None))
            }),
            bars,
        })
    }

    /// A line where a line of output belongs: stdout, unless it carries content.
    fn line_out(&self, line: &str) {
        if self.stdout_is_content {
            stderr_line(line)
        } else {
            stdout_line(line)
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// A line on standard output, drawn above any progress bars.
    pub fn out(&self, line: &str) {
        match &self.bars {
            Some(b) => b.multi.suspend(|| self.line_out(line)),
            None => self.line_out(line),
        }
    }

    /// A line on standard error, drawn above any progress bars.
    pub fn err(&self, line: &str) {
        match &self.bars {
            Some(b) => b.multi.suspend(|| stderr_line(line)),
            None => stderr_line(line),
        }
    }

    /// With `--open`, opens `url` in the system's browser, at most once every
    /// [`OPEN_EVERY`] (a room member cannot open a tab per message); says so otherwise.
    fn open_link(&self, url: &url::Url) {
        let Some(last) = &self.opener else { return };
        {
            let mut last = last.lock().expect("opener lock");
            if last.is_some_and(|t| t.elapsed() < OPEN_EVERY) {
                self.err(&format!(
                    "[{}] not opened (one link every {} s at most): {}",
                    clock(None),
                    OPEN_EVERY.as_secs(),
                    url.as_str()
                ));
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Err(e) = open::that_detached(url.as_str()) {
            self.err(&format!("warning: cannot open {}: {e}", url.as_str()));
        }
    }

    /// With `--copy`, puts a received message on the clipboard, in the background (a failure
    /// is reported as a warning).
    pub fn copy(&self, text: &str) {
        if let Some((copier, last)) = &self.copier {
            *last.lock().expect("copy lock") = Some(copier.copy(text));
        }
    }

    /// With `--copy`, waits until the last message is on the clipboard: false if it could not
    /// be copied (said already) or the clipboard did not answer in `timeout`.
    pub fn copied(&self, timeout: Duration) -> bool {
        let Some((_, last)) = &self.copier else {
            return true;
        };
        let last = last.lock().expect("copy lock").take();
        last.is_none_or(|done| done.recv_timeout(timeout).unwrap_or(false))
    }

    /// A message shown by `fetch` on a terminal: the text, a web link as a hyperlink (and
    /// opened with `--open`).
    pub fn message_text(&self, text: &str) {
        let shown = sanitize(text, true);
        match web_link(text) {
            Some(url) => {
                self.out(&if self.links {
                    hyperlink(&url, text.trim())
                } else {
                    shown
                });
                self.open_link(&url);
            }
            None => self.out(&shown),
        }
    }

    /// Renders one event. A transfer's bar ends with any event that says how it ended.
    pub fn event(&self, event: &Event) {
        // A message that is a web link: opened with --open (also with --json), a hyperlink on
        // a terminal.
        let link = match event {
            Event::Message { text, .. } => web_link(text).map(|url| (url, text.trim())),
            _ => None,
        };
        if let Some((url, _)) = &link {
            self.open_link(url);
        }
        if let Event::Message { text, .. } = event {
            // `--copy`: copied in the background, the last one wins.
            self.copy(text);
        }
        if self.json {
            self.line_out(&json_line(event));
            return;
        }
        match event {
            Event::Progress {
                token,
                name,
                peer,
                sending,
                resumed,
                done,
                total,
                via: _,
            } => {
                let key = BarKey {
                    token: token.to_string(),
                    peer: peer.clone(),
                    sending: *sending,
                };
                self.progress(
                    key,
                    &transfer_label(name, peer, *sending),
                    *resumed,
                    *done,
                    *total,
                );
                return;
            }
            Event::Received { token, .. }
            | Event::Message { token, .. }
            | Event::Skipped { token, .. }
            | Event::FetchFailed { token, .. }
            | Event::Refused { token, .. }
            | Event::UsedUp { token, .. }
            | Event::Expired { token, .. } => self.end_transfers(token, None),
            Event::Fetched {
                token, by: peer, ..
            }
            | Event::SendStopped {
                token, to: peer, ..
            } => self.end_transfers(token, Some(peer)),
            _ => {}
        }
        if let Some((line, to_stdout)) = human(event) {
            // Every field from a peer is sanitized where the line is made; this catches what a
            // new field would miss (the line's own newlines and tabs are kept).
            let mut line = sanitize(&line, true);
            if let Some((url, shown)) = &link
                && self.links
                && let Some(at) = line.rfind(shown)
            {
                line.replace_range(at..at + shown.len(), &hyperlink(url, shown));
            }
            if to_stdout {
                self.out(&line);
            } else {
                self.err(&line);
            }
        }
    }

    /// Moves the bar `key` (shown as `label`; `resumed` bytes were there before it began, so
    /// they count for the position but not for the rate); removes it when `done` reaches `total`.
    fn progress(&self, key: BarKey, label: &str, resumed: u64, done: u64, total: u64) {
        let Some(b) = &self.bars else { return };
        let mut active = b.active.lock().expect("bars lock");
        let bar = active.entry(key.clone()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new(total));
            bar.set_style(bar_style(resumed));
            bar.set_prefix(label.to_owned());
            bar
        });
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            b.multi.remove(bar);
            active.remove(&key);
        }
    }

    /// Removes the bars of `token`'s transfers (with `peer` only, if given).
    pub fn end_transfers(&self, token: &DropId, peer: Option<&str>) {
        let Some(b) = &self.bars else { return };
        let token = token.to_string();
        let mut active = b.active.lock().expect("bars lock");
        active.retain(|key, bar| {
            let ended = key.token == token && peer.is_none_or(|p| p == key.peer);
            if ended {
                bar.finish_and_clear();
                b.multi.remove(bar);
            }
            !ended
        });
    }

    /// Removes every bar (before the program exits).
    pub fn clear(&self) {
        let Some(b) = &self.bars else { return };
        let mut active = b.active.lock().expect("bars lock");
        for (_, bar) in active.drain() {
            bar.finish_and_clear();
            b.multi.remove(&bar);
        }
        let _ = b.multi.clear();
    }
}

/// A transfer's label: the direction, the other end and the drop's name, each cut to fit.
fn transfer_label(name: &str, peer: &str, sending: bool) -> String {
    let arrow = if sending { "to" } else { "from" };
    format!(
        "{arrow} {}: {}",
        fit(&sanitize(peer, false), 16),
        fit(&sanitize(name, false), 24)
    )
}

/// `text` cut to at most `columns` terminal columns, ending in `…` when cut.
pub fn fit(text: &str, columns: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    if unicode_width::UnicodeWidthStr::width(text) <= columns {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > columns.saturating_sub(1) {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// `text` cut or padded with spaces to exactly `columns` terminal columns.
pub fn pad(text: &str, columns: usize) -> String {
    let text = fit(text, columns);
    let width = unicode_width::UnicodeWidthStr::width(text.as_str());
    format!("{text}{}", " ".repeat(columns.saturating_sub(width)))
}

/// The bar's look: the rate and the time left count only the bytes moved since it began (not
/// the `resumed` ones already there).
fn bar_style(resumed: u64) -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {rate} ETA {left}")
        .expect("valid template")
        .with_key(
            "rate",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", size(rate(s, resumed) as u64));
            },
        )
        .with_key(
            "left",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let per_sec = rate(s, resumed);
                let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                let _ = if per_sec > 0.0 {
                    write!(
                        w,
                        "{}",
                        format_duration(Duration::from_secs((left as f64 / per_sec).ceil() as u64))
                    )
                } else {
                    write!(w, "-")
                };
            },
        )
        .progress_chars("=> ")
}

/// Bytes per second since the bar began, not counting `resumed` ones.
fn rate(s: &ProgressState, resumed: u64) -> f64 {
    let secs = s.elapsed().as_secs_f64();
    if secs < 0.1 {
        return 0.0;
    }
    s.pos().saturating_sub(resumed) as f64 / secs
}

#[cfg(test)]
mod tests {
    use super::*;
    use deaddrop::protocol::id::Token;

    #[test]
    fn terminal_escapes_and_bidi_are_neutralised() {
        assert_eq!(sanitize("a\x1b[2Jb", false), "a\u{fffd}[2Jb");
        assert_eq!(sanitize("line1\nline2\ttab", true), "line1\nline2\ttab");
        assert_eq!(sanitize("line1\nline2", false), "line1\u{fffd}line2");
        assert_eq!(sanitize("abc\u{202e}fdp.exe", false), "abc\u{fffd}fdp.exe");
        assert_eq!(sanitize("\r\x07\u{9b}", true), "\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(sanitize("héllo 🙂", false), "héllo 🙂");
    }

    #[test]
    fn names_are_cut_to_their_width_on_screen_with_an_ellipsis() {
        assert_eq!(fit("short.txt", 20), "short.txt");
        assert_eq!(
            fit("a-rather-long-file-name.txt", 20),
            "a-rather-long-file-…"
        );
        // Wide characters take two columns each.
        assert_eq!(fit("報告書の最終版です.pdf", 10), "報告書の…");
        assert_eq!(
            unicode_width::UnicodeWidthStr::width(pad("報告書の最終版です.pdf", 20).as_str()),
            20
        );
        assert_eq!(pad("ab", 4), "ab  ");
    }

    #[test]
    fn listing_columns_line_up_whatever_the_names() {
        let row = |name: &str, holder: &str| {
            listing_row(
                &DropInfo {
                    token: Token([7; 16]),
                    kind: deaddrop::protocol::message::DropKind::File,
                    name: name.into(),
                    size: 1 << 20,
                    ttl_left_ms: 60_000,
                    fetches_left: 1,
                    created_unix: 0,
                    executable: false,
                },
                holder,
            )
        };
        let rows = [
            row("notes.txt", "alice"),
            row(
                "報告書の最終版です-2026年12月.pdf",
                "山田太郎のノートパソコン",
            ),
            row(
                "a-very-long-name-that-goes-on-and-on.tar",
                "a-host-with-a-long-name",
            ),
        ];
        let width = |r: &String| unicode_width::UnicodeWidthStr::width(r.as_str());
        assert!(
            rows.iter().all(|r| width(r) == width(&rows[0])),
            "{rows:#?}"
        );
        assert!(rows[2].contains("a-very-long-name-th…"), "{}", rows[2]);
        assert_eq!(rows[0].find("notes.txt"), LISTING_HEADER.find("NAME"));
        assert_eq!(rows[0].find("alice"), LISTING_HEADER.find("SENDER"));
    }

    #[test]
    fn a_failed_save_names_the_drop_its_sender_and_its_token() {
        let (line, to_stdout) = human(&Event::FetchFailed {
            token: Token([0xcd; 16]).into(),
            kind: deaddrop::protocol::message::DropKind::File,
            name: "minutes.txt".into(),
            from: "alice".into(),
            reason: "cannot save in /data: No space left on device (os error 28); trying again while the drop is on offer".into(),
            retrying: true,
        })
        .unwrap();
        assert!(!to_stdout);
        assert!(line.starts_with('['), "timestamped: {line}");
        let (skipped, _) = human(&Event::Skipped {
            token: Token([0xcd; 16]).into(),
            kind: deaddrop::protocol::message::DropKind::File,
            name: "big.iso".into(),
            size: 1 << 30,
            from: "alice".into(),
            reason: "larger than --max-size 500.0 MiB; fetch it by token".into(),
        })
        .unwrap();
        assert!(skipped.starts_with('['), "timestamped: {skipped}");
        for needle in ["file \"minutes.txt\"", "alice", "/data", &"cd".repeat(16)] {
            assert!(line.contains(needle), "{needle} missing: {line}");
        }
    }

    #[test]
    fn human_lines_for_received_files_are_sanitized() {
        let (line, to_stdout) = human(&Event::Received {
            token: Token([0; 16]).into(),
            kind: deaddrop::protocol::message::DropKind::File,
            path: "./a\x1b[2Jb.txt".into(),
            size: 2048,
            files: 1,
            from: "alice".into(),
            address: String::new(),
            via: deaddrop::event::Via::Lan,
        })
        .unwrap();
        assert!(to_stdout);
        assert!(
            line.contains("alice: saved file ./a\u{fffd}[2Jb.txt (2.0 KiB)"),
            "{line}"
        );
    }

    #[test]
    fn human_lines_say_when_a_transfer_went_beyond_the_lan() {
        let received = |via| {
            human(&Event::Received {
                token: Token([0; 16]).into(),
                kind: deaddrop::protocol::message::DropKind::File,
                path: "./a.txt".into(),
                size: 2048,
                files: 1,
                from: "alice".into(),
                address: String::new(),
                via,
            })
            .unwrap()
            .0
        };
        use deaddrop::event::Via;
        assert!(received(Via::Lan).ends_with("(2.0 KiB)"));
        assert!(received(Via::Relayed).ends_with("(2.0 KiB, through the relay)"));
        assert!(received(Via::Direct).ends_with("(2.0 KiB, direct)"));
    }
}
