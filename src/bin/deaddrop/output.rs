//! Rendering events for people (text) or programs (JSON lines), and making peer-supplied text
//! safe to show on a terminal.

use std::io::{self, Write};
use std::time::Duration;

use chrono::{Local, SecondsFormat, TimeZone, Utc};
use deaddrop::duration::format_duration;
use deaddrop::event::Event;
use deaddrop::message::{DropInfo, EVERYONE};

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
    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
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

pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Human text for an event: (line, goes to stdout).
pub fn human(event: &Event) -> Option<(String, bool)> {
    Some(match event {
        Event::Listening {
            discovery_port,
            targets,
        } => (
            format!(
                "Listening for drops on UDP {discovery_port} (asking {}). Ctrl-C to stop.",
                targets.join(", ")
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
        Event::Offered { .. } => return None,
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
        sanitize(deaddrop::codec::truncate_utf8(&d.name, 20), false),
        sanitize(deaddrop::codec::truncate_utf8(holder, 16), false),
        format_duration(Duration::from_millis(d.ttl_left_ms)),
        left
    )
}

pub const LISTING_HEADER: &str = "TOKEN                             KIND            SIZE  NAME                 SENDER           TIME-LEFT  FETCHES-LEFT";

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }
}
