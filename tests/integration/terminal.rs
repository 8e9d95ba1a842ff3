//! What a person sees in a real terminal: commands run on a pseudo-terminal (through
//! `script`), their output replayed on a virtual screen (`vt100`), and the screen checked.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::files::{Relayed, partials, relayed, wait_partial};
use crate::relay::Mode;
use crate::util::Proc;

const T: Duration = Duration::from_secs(30);
const ROWS: u16 = 40;
const COLS: u16 = 120;

/// A command running on a pseudo-terminal of 120 × 40.
struct Terminal {
    child: Child,
    keys: ChildStdin,
    output: Arc<Mutex<Vec<u8>>>,
}

fn quote(arg: &std::ffi::OsStr) -> String {
    format!("'{}'", arg.to_string_lossy().replace('\'', "'\\''"))
}

impl Terminal {
    /// Runs `cmd` (its program, arguments and environment) on a new pseudo-terminal.
    fn spawn(cmd: &Command) -> Terminal {
        let line: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(quote)
            .collect();
        let mut script = Command::new("script");
        script.args([
            "-qfec",
            &format!("stty cols {COLS} rows {ROWS}; exec {}", line.join(" ")),
            "/dev/null",
        ]);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let mut child = script
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux) runs");
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            child,
            keys,
            output,
        }
    }

    /// What the screen shows now, line by line.
    fn screen(&self) -> String {
        let size = |n| std::num::NonZeroU16::new(n).unwrap();
        let mut parser = vt100::Parser::new(size(ROWS), size(COLS), 0);
        parser.process(&self.output.lock().unwrap());
        parser.screen().contents()
    }

    /// Waits until the screen satisfies `pred`; returns it.
    fn wait_screen(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "screen never matched:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types Ctrl-C.
    fn ctrl_c(&mut self) {
        self.keys.write_all(b"\x03").unwrap();
        self.keys.flush().unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A progress bar's line: a label, then the bar in brackets.
fn bar_lines<'a>(screen: &'a str, label: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.contains(label) && l.contains(" ["))
        .collect()
}

fn throttled(name: &str) -> Relayed {
    relayed(Mode::Throttle(4 << 20), name, 24 << 20, &["--ttl", "60s"])
}

#[test]
fn a_receivers_bar_ends_when_the_sender_withdraws() {
    let mut t = throttled("draft.bin");
    let dir = t.dst.path().to_str().unwrap();
    let run = Terminal::spawn(&t.via.cmd(&["run", "--name", "bob", "--dir", dir]));
    let label = "from alice: draft.bin";
    run.wait_screen(T, |s| !bar_lines(s, label).is_empty());
    t.sender.interrupt();
    assert_eq!(t.sender.wait(T).code(), Some(130));
    let screen = run.wait_screen(T, |s| s.contains("withdrew"));
    // Bars are redrawn a few times a second: give a stale one time to show.
    std::thread::sleep(Duration::from_millis(600));
    let screen = format!("{screen}\n{}", run.screen());
    assert!(
        bar_lines(&screen, label).is_empty(),
        "a bar stayed:\n{screen}"
    );
    assert!(
        screen.contains("draft.bin") && screen.contains(&t.token),
        "names the drop and its token:\n{screen}"
    );
    assert!(partials(t.dst.path()).is_empty());
}

#[test]
fn a_senders_bar_ends_when_the_receiver_stops() {
    let t = throttled("draft.bin");
    drop(t.sender);
    // Offer it again from a terminal, reached through the same kind of relay.
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("report.bin");
    std::fs::write(&path, &t.bytes).unwrap();
    let room = crate::util::Room::new("secret123");
    let via = crate::util::Room {
        pass: room.pass.clone(),
        port: crate::util::free_port(),
    };
    let _relay = crate::relay::Relay::start(room.port, via.port, Mode::Throttle(4 << 20));
    let mut sender = Terminal::spawn(&room.cmd(&[
        "send-file",
        "--name",
        "alice",
        "--ttl",
        "60s",
        path.to_str().unwrap(),
    ]));
    let screen = sender.wait_screen(T, |s| s.lines().any(|l| l.len() == 32 && !l.contains(' ')));
    let token = screen
        .lines()
        .find(|l| l.len() == 32 && !l.contains(' '))
        .unwrap()
        .to_owned();
    let dst = tempfile::tempdir().unwrap();
    let mut fetch = Proc::spawn(via.cmd(&[
        "fetch",
        "--name",
        "bob",
        "--dir",
        dst.path().to_str().unwrap(),
        &token,
    ]));
    sender.wait_screen(T, |s| !bar_lines(s, "to bob: report.bin").is_empty());
    fetch.interrupt();
    assert_eq!(fetch.wait(T).code(), Some(130));
    sender.wait_screen(T, |s| s.contains("sending to bob stopped"));
    std::thread::sleep(Duration::from_millis(600));
    let screen = sender.screen();
    assert!(
        bar_lines(&screen, "to bob").is_empty(),
        "a bar stayed:\n{screen}"
    );
    // Ctrl-C in the sender's terminal withdraws the drop and leaves no bar either.
    sender.ctrl_c();
    let screen = sender.wait_screen(T, |s| s.contains("the drop is withdrawn"));
    assert!(bar_lines(&screen, " [").is_empty(), "{screen}");
}

#[test]
fn a_resumed_fetch_shows_the_real_rate_and_names_the_sender_and_file() {
    let mut t = throttled("movie.bin");
    let dir = t.dst.path().to_str().unwrap();
    let mut first = Proc::spawn(t.via.cmd(&["fetch", "--json", "--dir", dir, &t.token]));
    wait_partial(t.dst.path(), 12 << 20);
    first.child.kill().unwrap();
    first.wait(T);
    let fetch = Terminal::spawn(&t.via.cmd(&["fetch", "--dir", dir, &t.token]));
    let label = "from alice: movie.bin";
    // A second of progress, so the rate has something to measure.
    std::thread::sleep(Duration::from_millis(1500));
    let screen = fetch.wait_screen(T, |s| {
        bar_lines(s, label)
            .iter()
            .any(|l| l.contains("MiB/s") || l.contains("KiB/s"))
    });
    let line = bar_lines(&screen, label)[0].to_owned();
    assert!(screen.contains("Resuming"), "{screen}");
    // "… 13.0 MiB/24.0 MiB 4.0 MiB/s ETA 3s": the link gives 4 MiB/s.
    let rate = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1].ends_with("/s"))
        .map(|w| {
            let n: f64 = w[0].parse().unwrap();
            match w[1] {
                "MiB/s" => n,
                "KiB/s" => n / 1024.0,
                "GiB/s" => n * 1024.0,
                _ => n / (1 << 20) as f64,
            }
        })
        .unwrap_or_else(|| panic!("no rate in {line:?}"));
    assert!(rate < 12.0, "{rate} MiB/s shown on a 4 MiB/s link: {line}");
    assert_eq!(t.sender.wait(T).code(), Some(0));
}

#[test]
fn send_msg_dash_at_a_terminal_says_how_to_end_the_message() {
    let room = crate::util::Room::new("secret123");
    let mut t = Terminal::spawn(&room.cmd(&["send-msg", "--ttl", "3s", "-"]));
    t.wait_screen(T, |s| s.contains("Ctrl-D"));
    t.keys.write_all(b"typed by hand\n\x04").unwrap();
    t.keys.flush().unwrap();
    let screen = t.wait_screen(T, |s| s.contains("Holding a message (14 bytes)"));
    assert!(!screen.contains("error"), "{screen}");
}

/// A fake sender of the original protocol on loopback: every fetch gets `reply`, then (for an
/// `ok` reply) `payload` with its 8-byte length. Anyone who saw the legacy room id can be one.
fn fake_legacy_sender(reply: Vec<u8>, payload: Vec<u8>) -> u16 {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let mut line = String::new();
            let _ = std::io::BufReader::new(c.try_clone().unwrap()).read_line(&mut line);
            let _ = c.write_all(&reply);
            if !payload.is_empty() {
                let _ = c.write_all(&(payload.len() as u64).to_be_bytes());
                let _ = c.write_all(&payload);
            }
        }
    });
    port
}

/// What a hostile peer sends: set the window title, clear the screen, and fake a result on a
/// line of its own.
const ESCAPES: &str = "\x1b]0;pwned\x07\x1b[2J\r\nok: drop saved";

/// The output holds none of the peer's control sequences and (where the text is not a message,
/// whose lines are the sender's to write) no line begins with its fake result; the rest of its
/// text is shown, with the controls replaced.
fn assert_defused(t: &Terminal, screen: &str, one_line: bool) {
    let raw = t.output.lock().unwrap().clone();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("\x1b]0;pwned"),
        "a title escape got through: {raw:?}"
    );
    assert!(
        !raw.contains("\x1b[2J"),
        "a clear-screen escape got through: {raw:?}"
    );
    assert!(
        !one_line
            || !screen
                .lines()
                .any(|l| l.trim_start().starts_with("ok: drop saved")),
        "{screen}"
    );
    assert!(screen.contains("]0;pwned"), "{screen}");
}

#[test]
fn regression_a_legacy_peers_escape_sequences_never_reach_the_terminal() {
    // Review finding (issue 26.4): the original protocol's room id is on the wire in every
    // datagram, so anyone on the LAN can answer `fetch --legacy` or offer to `run --legacy`. Its
    // refusal text, message text and drop ids were written to the terminal raw.
    use deaddrop::legacy::wire::{Datagram, Kind, Reply, room_id, seal_payload};
    use deaddrop::protocol::secret::Passphrase;
    let room = crate::util::Room::new("secret123");
    let pass = Passphrase::new(room.pass.clone()).unwrap();

    // A refusal with escapes, shown as fetch's error.
    let port = fake_legacy_sender(Reply::err(ESCAPES).line(), Vec::new());
    let peer = format!("127.0.0.1:{port}");
    let mut t = Terminal::spawn(&room.cmd(&["fetch", "f00d", "--legacy", "--peer", &peer]));
    let screen = t.wait_screen(T, |s| s.contains("pwned"));
    assert_eq!(t.child.wait().unwrap().code(), Some(1), "{screen}");
    assert!(screen.contains("error: the sender refused"), "{screen}");
    assert_defused(&t, &screen, true);

    // A message with escapes, shown by fetch on the terminal.
    let payload = seal_payload(&pass, ESCAPES.as_bytes());
    let port = fake_legacy_sender(Reply::ok(Kind::Message, "message").line(), payload);
    let peer = format!("127.0.0.1:{port}");
    let mut t = Terminal::spawn(&room.cmd(&["fetch", "f00d", "--legacy", "--peer", &peer]));
    let screen = t.wait_screen(T, |s| s.contains("pwned"));
    assert_eq!(t.child.wait().unwrap().code(), Some(0), "{screen}");
    assert_defused(&t, &screen, false);

    // An offer to `run --legacy` whose id and name carry escapes, from a port that refuses:
    // run shows both when it says the file was not saved.
    let dir = tempfile::tempdir().unwrap();
    let t = Terminal::spawn(&room.cmd(&["run", "--legacy", "--dir", dir.path().to_str().unwrap()]));
    t.wait_screen(T, |s| s.contains("Listening"));
    let offer = Datagram::Offer {
        id: format!("id{ESCAPES}"),
        kind: Kind::File,
        name: format!("name{ESCAPES}"),
        port: 9,
        expires_at: 4e9,
        room: room_id(&pass),
    };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_broadcast(true).unwrap();
    udp.send_to(&offer.encode(), ("127.255.255.255", room.port))
        .unwrap();
    let screen = t.wait_screen(T, |s| s.contains("not saved"));
    assert_defused(&t, &screen, true);
}

/// A message fetched to a terminal ends its line: the shell's prompt comes back on a line of
/// its own (issue 28.5), whether or not the text ends with a newline.
#[test]
fn a_message_fetched_at_a_terminal_ends_with_a_newline() {
    let room = crate::util::Room::new("secret123");
    let mut send = crate::util::Proc::spawn(room.cmd(&[
        "send-msg",
        "--json",
        "--ttl",
        "20s",
        "no newline at the end",
    ]));
    let offered = send.wait_event(T, "offered").expect("the sender offers");
    let token = offered["token"].as_str().unwrap().to_owned();
    let fetch = Terminal::spawn(&room.cmd(&["fetch", &token]));
    let status = {
        let mut child = fetch;
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = child.child.try_wait().unwrap() {
                break (status, child);
            }
            assert!(Instant::now() < deadline, "fetch never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (status, fetch) = status;
    assert!(status.success());
    // Give the output reader the last bytes.
    std::thread::sleep(Duration::from_millis(200));
    let output = String::from_utf8_lossy(&fetch.output.lock().unwrap()).into_owned();
    assert!(
        output.ends_with("no newline at the end\r\n"),
        "the terminal got {output:?}"
    );
    assert!(send.wait(T).success());
}

/// A folder with a fake `xdg-open` (the system opener the `open` crate tries first on Linux)
/// that writes each thing it is asked to open to `opened`, one per line; and a PATH with it first.
fn fake_opener() -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("xdg-open");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n",
            dir.path().join("opened").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (dir, path)
}

/// What the fake opener was asked to open, after a moment for a detached opener to run.
fn opened(dir: &tempfile::TempDir) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(500));
    std::fs::read_to_string(dir.path().join("opened"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends `text` to the room and waits for `run` to show it.
fn deliver(room: &crate::util::Room, run: &mut crate::util::Proc, text: &str) {
    let mut send = crate::util::Proc::spawn(room.cmd(&["send-msg", "--ttl", "20s", text]));
    let m = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no message {text:?}: {}", run.stderr()));
    assert_eq!(m["text"], text);
    assert!(send.wait(T).success());
}

/// Issue 28.2: with `--open`, a message that is exactly a web link is opened with the system's
/// opener, at most one every 2 s; nothing else is ever opened (another scheme, text around a
/// link); and without the flag nothing at all.
#[test]
fn run_open_opens_web_links_only_when_asked_and_only_links() {
    let room = crate::util::Room::new("secret123");
    let (dir, path) = fake_opener();
    let mut run = room.cmd(&["run", "--json", "--no-files", "--open"]);
    run.env("PATH", &path);
    let mut run = crate::util::Proc::spawn(run);
    run.wait_event(T, "listening").unwrap();
    // Not links: never opened (first, so that the rate limit cannot hide an opening).
    deliver(&room, &mut run, "file:///etc/passwd");
    deliver(&room, &mut run, "see https://example.org/b");
    deliver(&room, &mut run, "javascript:alert(1)");
    deliver(&room, &mut run, "https://example.org/a?b=c");
    deliver(&room, &mut run, "https://example.org/too-soon");
    assert_eq!(opened(&dir), ["https://example.org/a?b=c"]);
    assert!(run.stderr().contains("not opened"), "{}", run.stderr());
    drop(run);

    let (dir, path) = fake_opener();
    let mut run = room.cmd(&["run", "--json", "--no-files"]);
    run.env("PATH", &path);
    let mut run = crate::util::Proc::spawn(run);
    run.wait_event(T, "listening").unwrap();
    deliver(&room, &mut run, "https://example.org/never");
    assert!(opened(&dir).is_empty(), "opened without --open");
}

/// On a terminal, a message that is a web link is shown as an OSC 8 hyperlink whose target is
/// the text shown; a message with other text is not a link.
#[test]
fn a_web_link_message_is_a_hyperlink_on_a_terminal() {
    let room = crate::util::Room::new("secret123");
    let run = Terminal::spawn(&room.cmd(&["run", "--no-files"]));
    run.wait_screen(T, |s| s.contains("Listening"));
    let mut send = crate::util::Proc::spawn(room.cmd(&[
        "send-msg",
        "--ttl",
        "20s",
        "https://example.org/path?q=1",
    ]));
    run.wait_screen(T, |s| s.contains("https://example.org/path?q=1"));
    assert!(send.wait(T).success());
    let raw = String::from_utf8_lossy(&run.output.lock().unwrap()).into_owned();
    assert!(
        raw.contains(
            "\x1b]8;;https://example.org/path?q=1\x1b\\https://example.org/path?q=1\x1b]8;;\x1b\\"
        ),
        "{raw:?}"
    );
    let mut send = crate::util::Proc::spawn(room.cmd(&["send-msg", "--ttl", "20s", "plain words"]));
    run.wait_screen(T, |s| s.contains("plain words"));
    assert!(send.wait(T).success());
    let raw = String::from_utf8_lossy(&run.output.lock().unwrap()).into_owned();
    assert_eq!(raw.matches("\x1b]8;;h").count(), 1, "{raw:?}");
}

/// Without a display (SSH, Termux), `run --copy` puts a message on the terminal's clipboard:
/// an OSC 52 sequence with the text in base64, so nothing in it reaches the terminal as a
/// control sequence; and the message is shown as usual.
#[test]
fn without_a_display_run_copy_copies_to_the_terminal_with_osc_52() {
    let room = crate::util::Room::new("secret123");
    let mut cmd = room.cmd(&["run", "--no-files", "--copy"]);
    cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    let run = Terminal::spawn(&cmd);
    run.wait_screen(T, |s| s.contains("Listening"));
    let text = "copied over ssh \x1b]52;c;ZXZpbA==\x07";
    let mut send = crate::util::Proc::spawn(room.cmd(&["send-msg", "--ttl", "20s", text]));
    run.wait_screen(T, |s| s.contains("copied over ssh"));
    assert!(send.wait(T).success());
    let deadline = Instant::now() + T;
    let want = "\x1b]52;c;Y29waWVkIG92ZXIgc3NoIBtdNTI7YztaWFpwYkE9PQc=\x07";
    loop {
        let raw = String::from_utf8_lossy(&run.output.lock().unwrap()).into_owned();
        if raw.contains(want) {
            // The sender's own sequence never reaches the terminal: only the one copy.
            assert_eq!(raw.matches("\x1b]52;").count(), 1, "{raw:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no OSC 52 copy: {raw:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
