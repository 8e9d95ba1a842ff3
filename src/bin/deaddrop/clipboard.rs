//! The clipboard: `send-msg --clipboard` reads its text, `run --copy` and `fetch --copy` put a
//! received message on it.
//!
//! Where a display's clipboard exists (X11, Wayland, Windows, macOS) it is used through
//! `arboard`. On X11 and Wayland the clipboard's content is served by the program that copied
//! it and is gone when that program exits, so there the text is handed to a copy of this
//! program (`deaddrop __hold-clipboard`, not a command) that serves it until something else is
//! copied, the way `xclip` and `wl-copy` do: `fetch --copy` exits at once and the text stays
//! pasteable.
//! Where no display exists (SSH, Termux, a console) the text goes to the terminal as an OSC 52
//! sequence, which most terminals (and tmux with `set-clipboard on`) put on their clipboard.

use std::io::{self, IsTerminal, Write};
use std::sync::mpsc;
use std::thread;

use anyhow::{Result, anyhow, bail};
use data_encoding::BASE64;

use deaddrop::session::holder::MAX_MESSAGE;

/// The OSC 52 sequence that asks a terminal to put `text` on its clipboard. The text is
/// base64: nothing in it can reach the terminal as a control sequence.
pub fn osc52(text: &str) -> String {
    format!("\x1b]52;c;{}\x07", BASE64.encode(text.as_bytes()))
}

/// `send-msg --clipboard`: the clipboard's text, at most a message's size.
pub fn read() -> Result<String> {
    let text = system::read().map_err(|e| {
        anyhow!(
            "cannot read the clipboard: {e}. Without a display's clipboard (SSH, Termux), pipe the \
             text in instead: `... | deaddrop send-msg -` (on Termux: `termux-clipboard-get | \
             deaddrop send-msg -`)"
        )
    })?;
    if text.len() > MAX_MESSAGE {
        bail!("the clipboard's text is over 1 MiB; send large text as a file");
    }
    if text.is_empty() {
        bail!("the clipboard holds no text");
    }
    Ok(text)
}

/// Puts texts on the clipboard one after another, off the async runtime (a clipboard call
/// blocks, and on macOS it must stay on one thread). When texts arrive faster than they can be
/// copied, only the last one is: the clipboard holds one text anyway.
pub struct Copier {
    tx: mpsc::Sender<(String, mpsc::Sender<bool>)>,
}

impl Copier {
    /// `failed` is told why a text could not be copied.
    pub fn new(failed: impl Fn(String) + Send + 'static) -> Copier {
        let (tx, rx) = mpsc::channel::<(String, mpsc::Sender<bool>)>();
        thread::Builder::new()
            .name("clipboard".into())
            .spawn(move || {
                while let Ok(mut next) = rx.recv() {
                    while let Ok(later) = rx.try_recv() {
                        // Replaced before it was copied: it counts as copied and then replaced.
                        let _ = next.1.send(true);
                        next = later;
                    }
                    let (text, done) = next;
                    let copied = copy(&text);
                    if let Err(e) = &copied {
                        failed(format!("{e:#}"));
                    }
                    let _ = done.send(copied.is_ok());
                }
            })
            .expect("spawn the clipboard thread");
        Copier { tx }
    }

    /// Starts copying `text`; the receiver hears whether it was copied.
    pub fn copy(&self, text: &str) -> mpsc::Receiver<bool> {
        let (done, result) = mpsc::channel();
        let _ = self.tx.send((text.to_owned(), done));
        result
    }
}

/// Copies `text`: to the system clipboard if there is one, else to the terminal's.
fn copy(text: &str) -> Result<()> {
    let system = match system::write(text) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // No display's clipboard: the terminal's, if there is a terminal to ask.
    let stderr = io::stderr();
    if stderr.is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb") {
        let mut err = stderr.lock();
        err.write_all(osc52(text).as_bytes())?;
        err.flush()?;
        return Ok(());
    }
    bail!("{system}; and standard error is not a terminal to copy to (OSC 52)")
}

/// The first argument that makes this program a clipboard holder (no command has this name;
/// clap never sees it).
pub const HOLD_ARG: &str = "__hold-clipboard";

/// `deaddrop __hold-clipboard`: puts standard input's text on the clipboard and serves it until
/// something else is copied (X11 and Wayland). Says `ok` (or the error) on standard output
/// first, so that the program that started it knows.
pub fn hold() -> std::process::ExitCode {
    use std::io::Read;
    let mut text = Vec::new();
    let read = io::stdin()
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut text);
    let text = match read.map(|_| String::from_utf8(text)) {
        Ok(Ok(text)) if text.len() <= MAX_MESSAGE => text,
        _ => {
            println!("not a message on standard input");
            return std::process::ExitCode::FAILURE;
        }
    };
    match system::hold(&text) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// X11 and Wayland: the clipboard's content lives in the process that copied it.
#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "android", target_os = "emscripten"))
))]
mod system {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use anyhow::{Context, Result, anyhow, bail};
    use arboard::SetExtLinux;

    /// How long a holder may take to say it holds the text.
    const HOLDER_READY: Duration = Duration::from_secs(5);

    /// No display at all: said in plain words, without starting a holder.
    fn display() -> Result<()> {
        if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
            bail!("no display (neither DISPLAY nor WAYLAND_DISPLAY is set)");
        }
        Ok(())
    }

    pub fn read() -> Result<String> {
        display()?;
        Ok(arboard::Clipboard::new()?.get_text()?)
    }

    /// Hands `text` to a holder process and waits until it says it holds it.
    pub fn write(text: &str) -> Result<()> {
        display()?;
        let exe = std::env::current_exe().context("cannot find this program to hold the text")?;
        let mut child = Command::new(exe)
            .arg(super::HOLD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .current_dir(std::env::temp_dir())
            .spawn()
            .context("cannot start a process to hold the clipboard")?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(text.as_bytes())?;
        drop(stdin);
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let said = rx.recv_timeout(HOLDER_READY).unwrap_or_default();
        // The holder goes on alone; it exits when something else is copied. Reap it then, so
        // that a long `run --copy` leaves no zombies.
        std::thread::spawn(move || child.wait());
        match said.trim_end() {
            "ok" => Ok(()),
            "" => Err(anyhow!("the clipboard did not answer")),
            e => Err(anyhow!("{e}")),
        }
    }

    /// In the holder: copies `text` and serves it until the clipboard is someone else's.
    pub fn hold(text: &str) -> Result<()> {
        let mut clipboard = arboard::Clipboard::new()?;
        clipboard.set_text(text)?;
        // It is on the clipboard now; the parent may go.
        println!("ok");
        let _ = std::io::stdout().flush();
        // Serve it (again, now waiting) until something else is copied.
        clipboard.set().wait().text(text)?;
        Ok(())
    }
}

/// Windows and macOS: the system keeps the clipboard's content after the program exits.
#[cfg(any(windows, target_os = "macos"))]
mod system {
    use anyhow::Result;

    pub fn read() -> Result<String> {
        Ok(arboard::Clipboard::new()?.get_text()?)
    }

    pub fn write(text: &str) -> Result<()> {
        Ok(arboard::Clipboard::new()?.set_text(text)?)
    }

    pub fn hold(text: &str) -> Result<()> {
        write(text)?;
        println!("ok");
        Ok(())
    }
}

/// Android (Termux) and anything else: no clipboard a terminal program can reach; copies go
/// to the terminal (OSC 52).
#[cfg(not(any(
    windows,
    target_os = "macos",
    all(
        unix,
        not(any(target_os = "macos", target_os = "android", target_os = "emscripten"))
    )
)))]
mod system {
    use anyhow::{Result, bail};

    pub fn read() -> Result<String> {
        bail!("this system has no clipboard this program can read")
    }

    pub fn write(_text: &str) -> Result<()> {
        bail!("this system has no clipboard this program can write")
    }

    pub fn hold(text: &str) -> Result<()> {
        write(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osc52_carries_the_text_as_base64_and_nothing_else() {
        assert_eq!(osc52("hi"), "\x1b]52;c;aGk=\x07");
        let s = osc52("\x1b]52;c;evil\x07\x1b[2J");
        assert_eq!(s.matches('\x1b').count(), 1);
        assert_eq!(s.matches('\x07').count(), 1);
    }
}
