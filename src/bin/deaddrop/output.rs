//! Rendering events for people (text) or programs (JSON lines), and making peer-supplied text
//! safe to show on a terminal.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Local, SecondsFormat, TimeZone, Utc};
use deaddrop::event::{DropId, Event};
use deaddrop::protocol::message::{DropInfo, EVERYONE};
use deaddrop::units::{format_duration, format_size};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

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
                "{} offers {} {:?} ({}), not fetched: {reason}. Token: {token}",
                sanitize(from, false),
                kind.as_str(),
                sanitize(name, false),
                size(*bytes)
            ),
            false,
        ),
        Event::Offered { .. } | Event::Progress { .. } => return None,
        Event::Received {
            kind,
            path,
            size: bytes,
            from,
            ..
        } => (
            format!(
                "[{}] {}: saved {} {} ({})",
                clock(None),
                sanitize(from, false),
                kind.as_str(),
                sanitize(path, false),
                size(*bytes)
            ),
            true,
        ),
        Event::Fetched { by, address, .. } => (
            format!("Fetched by {} ({address}).", sanitize(by, false)),
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
        Event::FetchFailed { from, reason, .. } => (
            format!(
                "warning: fetching a drop from {} failed: {reason}",
                sanitize(from, false)
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
        Event::Warning { message } => (format!("warning: {message}"), false),
        _ => return None,
    })
}

/// A listing table row.
pub fn listing_row(d: &DropInfo, holder: &str) -> String {
    let left = if d.fetches_left == EVERYONE {
        "everyone".to_string()
    } else {
        d.fetches_left.to_string()
    };
    format!(
        "{}  {:<9} {:>10}  {:<20} {:<16} {:>8}  {}",
        d.token,
        d.kind.as_str(),
        size(d.size),
        sanitize(deaddrop::protocol::codec::truncate_utf8(&d.name, 20), false),
        sanitize(deaddrop::protocol::codec::truncate_utf8(holder, 16), false),
        format_duration(Duration::from_millis(d.ttl_left_ms)),
        left
    )
}

pub const LISTING_HEADER: &str = "TOKEN                             KIND            SIZE  NAME                 SENDER           TIME-LEFT  FETCHES-LEFT";

/// Where the program's output goes: JSON lines, or text with progress bars on a terminal.
pub struct Ui {
    json: bool,
    /// Standard output carries a drop's content (`fetch --out -`): every line goes to stderr.
    stdout_is_content: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    active: Mutex<HashMap<String, ProgressBar>>,
}

impl Ui {
    /// `stdout_is_content`: standard output is reserved for a drop's bytes, so events and
    /// lines go to standard error instead.
    pub fn new(json: bool, stdout_is_content: bool) -> Arc<Ui> {
        let bars = (!json && io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            active: Mutex::new(HashMap::new()),
        });
        Arc::new(Ui {
            json,
            stdout_is_content,
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

    /// Renders one event.
    pub fn event(&self, event: &Event) {
        if self.json {
            self.line_out(&json_line(event));
            return;
        }
        if let Event::Progress {
            token,
            peer,
            sending,
            done,
            total,
        } = event
        {
            let arrow = if *sending { "to" } else { "from" };
            let peer = sanitize(deaddrop::protocol::codec::truncate_utf8(peer, 16), false);
            self.progress(
                &transfer_key(token, &peer, *sending),
                &format!("{arrow} {peer}"),
                *done,
                *total,
            );
            return;
        }
        if let Some((line, to_stdout)) = human(event) {
            if to_stdout {
                self.out(&line);
            } else {
                self.err(&line);
            }
        }
    }

    /// Moves the bar named `key` (shown as `label`); removes it when `done` reaches `total`.
    pub fn progress(&self, key: &str, label: &str, done: u64, total: u64) {
        let Some(b) = &self.bars else { return };
        let mut active = b.active.lock().expect("bars lock");
        let bar = active.entry(key.to_owned()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar
        });
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            b.multi.remove(bar);
            active.remove(key);
        }
    }
}

fn transfer_key(token: &DropId, peer: &str, sending: bool) -> String {
    format!("{token}/{peer}/{sending}")
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
    fn human_lines_for_received_files_are_sanitized() {
        let (line, to_stdout) = human(&Event::Received {
            token: Token([0; 16]).into(),
            kind: deaddrop::protocol::message::DropKind::File,
            path: "./a\x1b[2Jb.txt".into(),
            size: 2048,
            from: "alice".into(),
            address: String::new(),
        })
        .unwrap();
        assert!(to_stdout);
        assert!(
            line.contains("alice: saved file ./a\u{fffd}[2Jb.txt (2.0 KiB)"),
            "{line}"
        );
    }
}
