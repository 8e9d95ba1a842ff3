//! The clipboard (issue 28.1) against a real X11 clipboard: an Xvfb server of the test's own
//! (a Unix socket, no TCP), read and written with `xclip` as another program on the desktop
//! would. `.ci/run` installs both; elsewhere the tests skip, saying why.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Proc, Room, assert_ok, json};

const T: Duration = Duration::from_secs(20);

/// A virtual X server for one test, stopped (and with it every clipboard holder) on drop.
struct Display {
    server: Child,
    name: String,
}

impl Display {
    /// None (the test skips) when Xvfb or xclip is missing and this is not CI.
    fn start() -> Option<Display> {
        let have = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("Xvfb") || !have("xclip") {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the clipboard tests: Xvfb and xclip are not installed"
            );
            eprintln!(
                "skipping clipboard test: Xvfb and xclip are not installed (apt install xvfb xclip)"
            );
            return None;
        }
        // Xvfb picks a free display number and writes it to standard output (-displayfd 1).
        let mut server = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "320x240x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb starts");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let number: u32 = line.trim().parse().expect("Xvfb says its display number");
        Some(Display {
            server,
            name: format!(":{number}"),
        })
    }

    /// `cmd` on this display (and not on a Wayland one the test happens to run under).
    fn on(&self, cmd: &mut Command) {
        cmd.env("DISPLAY", &self.name).env_remove("WAYLAND_DISPLAY");
    }

    /// Copies `text` as another program would (xclip serves it in the background).
    fn set(&self, text: &str) {
        let mut xclip = Command::new("xclip");
        xclip.args(["-i", "-selection", "clipboard"]);
        self.on(&mut xclip);
        let mut xclip = xclip
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        xclip
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(xclip.wait().unwrap().success());
    }

    /// What a paste would give now (None: nothing on the clipboard).
    fn get(&self) -> Option<String> {
        let mut xclip = Command::new("xclip");
        xclip.args(["-o", "-selection", "clipboard"]);
        self.on(&mut xclip);
        let out = xclip.stderr(Stdio::null()).output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }

    /// Waits until a paste gives `want`; what it gave last.
    fn wait_for(&self, want: &str) -> Option<String> {
        let deadline = Instant::now() + T;
        loop {
            let got = self.get();
            if got.as_deref() == Some(want) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `send-msg --clipboard` sends what is on the clipboard; `fetch --copy` puts the message on
/// the clipboard (and still prints it), and it stays pasteable after fetch has exited.
#[test]
fn send_msg_clipboard_sends_it_and_fetch_copy_leaves_it_on_the_clipboard() {
    let Some(x) = Display::start() else { return };
    let room = Room::new("secret123");
    let text = "a snippet from the clipboard ✓\nsecond line";
    x.set(text);
    let mut send = room.cmd(&["send-msg", "--json", "--ttl", "20s", "--clipboard"]);
    x.on(&mut send);
    let mut send = Proc::spawn(send);
    let offered = send
        .wait_event(T, "offered")
        .unwrap_or_else(|| panic!("not offered: {}", send.stderr()));
    assert_eq!(offered["size"], text.len());
    let token = offered["token"].as_str().unwrap().to_owned();

    // Something else is on the clipboard by the time the message is fetched.
    x.set("placeholder");
    let mut fetch = room.cmd(&["fetch", "--json", "--copy", &token]);
    x.on(&mut fetch);
    let out = fetch.output().unwrap();
    assert_ok(&out);
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(json(line.trim())["text"], text);
    assert!(send.wait(T).success());
    // fetch is gone; a moment later (a process that only copied and exited would be gone
    // too), the clipboard still gives the message.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(x.get().as_deref(), Some(text));
    // ... until something else is copied.
    x.set("later");
    assert_eq!(x.get().as_deref(), Some("later"));
}

/// `run --copy` puts each message it receives on the clipboard, the last one winning; without
/// the flag it leaves the clipboard alone.
#[test]
fn run_copy_puts_each_received_message_on_the_clipboard() {
    let Some(x) = Display::start() else { return };
    let room = Room::new("secret123");
    let mut run = room.cmd(&["run", "--json", "--no-files", "--copy"]);
    x.on(&mut run);
    let mut run = Proc::spawn(run);
    run.wait_event(T, "listening").unwrap();
    for text in ["first message", "second message"] {
        let mut send = Proc::spawn(room.cmd(&["send-msg", "--ttl", "20s", text]));
        let m = run
            .wait_event(T, "message")
            .unwrap_or_else(|| panic!("no message: {}", run.stderr()));
        assert_eq!(m["text"], text);
        assert!(send.wait(T).success());
        assert_eq!(x.wait_for(text).as_deref(), Some(text), "{}", run.stderr());
    }
    drop(run);

    x.set("mine");
    let mut run = room.cmd(&["run", "--json", "--no-files"]);
    x.on(&mut run);
    let mut run = Proc::spawn(run);
    run.wait_event(T, "listening").unwrap();
    let mut send = Proc::spawn(room.cmd(&["send-msg", "--ttl", "20s", "not copied"]));
    run.wait_event(T, "message").unwrap();
    assert!(send.wait(T).success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(x.get().as_deref(), Some("mine"));
}

/// With no display, `send-msg --clipboard` says how to send the text instead and offers
/// nothing; `fetch --copy` with no display and no terminal still prints the message, warns,
/// and exits 1.
#[test]
fn without_a_display_the_clipboard_options_say_what_to_do() {
    let room = Room::new("secret123");
    let mut send = room.cmd(&["send-msg", "--clipboard"]);
    send.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    let out = send.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no display") && err.contains("send-msg -"),
        "{err}"
    );

    let mut send = Proc::spawn(room.cmd(&["send-msg", "--json", "--ttl", "20s", "kept"]));
    let token = send.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut fetch = room.cmd(&["fetch", "--copy", &token]);
    fetch.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    let out = fetch.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not copied") && err.contains("OSC 52"),
        "{err}"
    );
    assert!(send.wait(T).success());
}
