//! Real processes over loopback: every command, as a user runs it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Proc, Room, assert_ok, bin, json};

const T: Duration = Duration::from_secs(10);

fn receiver(room: &Room, name: &str) -> Proc {
    let mut p = Proc::spawn(room.cmd(&["run", "--json", "--name", name]));
    p.wait_event(T, "listening")
        .expect("receiver starts listening");
    p
}

/// Starts a sender and returns it with the drop's token (from its JSON `offered` event).
fn sender(room: &Room, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["send-msg", "--json", "--name", "alice"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(room.cmd(&all));
    let offered = p.wait_event(T, "offered").expect("sender offers the drop");
    let token = offered["token"].as_str().unwrap().to_owned();
    (p, token)
}

#[test]
fn a_message_appears_on_a_running_receiver() {
    let room = Room::new("secret123");
    let mut r = receiver(&room, "bob");
    let (mut s, token) = sender(&room, &["Hello, team!"]);
    let msg = r.wait_event(T, "message").expect("message shown");
    assert_eq!(msg["text"], "Hello, team!");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["token"], token);
    let fetched = s
        .wait_event(T, "fetched")
        .expect("sender reports the fetch");
    assert_eq!(fetched["by"], "bob");
    assert!(s.wait_event(T, "used_up").is_some());
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn human_output_shows_sender_and_text_and_the_token() {
    let room = Room::new("secret123");
    let mut r = Proc::spawn(room.cmd(&["run", "--name", "bob"]));
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--name", "alice", "--ttl", "10s", "hi there"]));
    let token = s.wait_line(T, |_| true).expect("token line");
    assert!(
        token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let line = r
        .wait_line(T, |l| l.contains("hi there"))
        .expect("message line");
    assert!(line.contains("alice: hi there"), "{line}");
    assert_eq!(s.wait(T).code(), Some(0));
    assert!(s.stderr().contains("Fetched by bob"), "{}", s.stderr());
}

#[test]
fn a_receiver_in_another_room_sees_nothing_and_burns_nothing() {
    let room = Room::new("secret123");
    let mut outsider = receiver(&room.other("another-room"), "eve");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "for members only"]);
    // The outsider hears the announcement and tries the handshake, which fails.
    assert!(
        outsider.wait_event(T, "rejected").is_some(),
        "outsider saw a holder it cannot join"
    );
    // Over more than one announcement period it neither sees the message nor tries again:
    // a holder in another room costs one handshake per process.
    let lines = outsider.drain(Duration::from_millis(3500));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("for members only") || l.contains("\"message\"")),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("rejected")).count(),
        1,
        "{lines:?}"
    );
    // The drop is still there for a member.
    let out = room.cmd(&["fetch", &token]).output().unwrap();
    assert_ok(&out);
    assert_eq!(out.stdout, b"for members only");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn an_unfetched_drop_expires_with_exit_code_3() {
    let room = Room::new("secret123");
    let start = Instant::now();
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--ttl", "1s", "nobody listens"]));
    let status = s.wait(T);
    assert_eq!(status.code(), Some(3), "{}", s.stderr());
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(s.stderr().contains("nobody fetched"), "{}", s.stderr());
}

#[test]
fn exactly_one_of_five_concurrent_fetchers_wins_a_one_time_drop() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "30s", "only once"]);
    let fetchers: Vec<_> = (0..5)
        .map(|_| {
            room.cmd(&["fetch", "--wait", "5s", &token])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = fetchers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let winners: Vec<_> = outputs
        .iter()
        .filter(|o| o.status.code() == Some(0))
        .collect();
    assert_eq!(winners.len(), 1, "{outputs:?}");
    assert_eq!(winners[0].stdout, b"only once");
    // A loser that reached the sender before it left hears "taken"; the sender leaves as soon
    // as no one is connected, so one that was still looking finds no holder.
    for o in outputs.iter().filter(|o| o.status.code() != Some(0)) {
        let stderr = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(5) => assert!(stderr.contains("already taken"), "{stderr}"),
            Some(4) => assert!(stderr.contains("may have been fetched already"), "{stderr}"),
            other => panic!("exit {other:?}: {stderr}"),
        }
        assert!(o.stdout.is_empty());
    }
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn everyone_reaches_three_receivers() {
    let room = Room::new("secret123");
    let mut receivers: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| receiver(&room, n))
        .collect();
    let (mut s, _) = sender(&room, &["--everyone", "--ttl", "3s", "for all"]);
    for r in &mut receivers {
        let msg = r.wait_event(T, "message").expect("every receiver gets it");
        assert_eq!(msg["text"], "for all");
    }
    let mut by = Vec::new();
    for _ in 0..3 {
        by.push(
            s.wait_event(T, "fetched").unwrap()["by"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    by.sort();
    assert_eq!(by, ["r1", "r2", "r3"]);
    // Nobody gets it twice, however often it is announced until the TTL.
    let expired = s.wait_event(T, "expired").unwrap();
    assert_eq!(expired["delivered"], 3);
    assert_eq!(s.wait(T).code(), Some(0));
    for r in &mut receivers {
        let again = r.drain(Duration::from_millis(500));
        assert_eq!(
            again.iter().filter(|l| l.contains("\"message\"")).count(),
            1,
            "{again:?}"
        );
    }
}

#[test]
fn max_fetches_two_reaches_two_of_three_receivers() {
    let room = Room::new("secret123");
    let mut receivers: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| receiver(&room, n))
        .collect();
    let (mut s, _) = sender(&room, &["--max-fetches", "2", "--ttl", "20s", "two only"]);
    assert_eq!(s.wait(T).code(), Some(0), "{}", s.stderr());
    let got = receivers
        .iter_mut()
        .map(|r| r.drain(Duration::from_millis(700)))
        .filter(|lines| lines.iter().any(|l| l.contains("two only")))
        .count();
    assert_eq!(got, 2);
}

#[test]
fn max_fetches_counts_devices_not_processes() {
    // `fetch TOKEN` twice on one device used both slots of a `--max-fetches 2` drop.
    let room = Room::new("secret123");
    let (mut s, token) = sender(
        &room,
        &["--max-fetches", "2", "--ttl", "20s", "two devices"],
    );
    let laptop = crate::util::own_device();
    let fetch_on = |device: &std::path::Path| {
        room.cmd(&["fetch", &token])
            .env("DEADDROP_CONFIG_DIR", device)
            .output()
            .unwrap()
    };
    let first = fetch_on(&laptop);
    assert_ok(&first);
    assert_eq!(String::from_utf8_lossy(&first.stdout), "two devices");
    let again = fetch_on(&laptop);
    assert_eq!(again.status.code(), Some(5), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already fetched by this receiver"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The second slot is still there for another device.
    let other = fetch_on(&crate::util::own_device());
    assert_ok(&other);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "two devices");
    assert_eq!(s.wait(T).code(), Some(0), "used up: {}", s.stderr());
}

#[test]
fn an_everyone_drop_reaches_one_device_once_however_many_receivers_it_runs() {
    let room = Room::new("secret123");
    let device = crate::util::own_device();
    let mut same: Vec<Proc> = ["a", "b"]
        .iter()
        .map(|n| {
            let mut c = room.cmd(&["run", "--json", "--name", n]);
            c.env("DEADDROP_CONFIG_DIR", &device);
            let mut p = Proc::spawn(c);
            p.wait_event(T, "listening").expect("listening");
            p
        })
        .collect();
    let mut other = receiver(&room, "c");
    let (mut s, _) = sender(&room, &["--everyone", "--ttl", "3s", "one per device"]);
    other
        .wait_event(T, "message")
        .expect("the other device has it");
    let shown = same
        .iter_mut()
        .map(|r| r.drain(Duration::from_millis(1500)))
        .filter(|lines| lines.iter().any(|l| l.contains("one per device")))
        .count();
    assert_eq!(shown, 1, "one device, one copy");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn a_late_receiver_fetches_a_drop_made_before_it_started() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "made earlier"]);
    std::thread::sleep(Duration::from_secs(1));
    let mut r = receiver(&room, "late");
    let msg = r
        .wait_event(Duration::from_secs(3), "message")
        .expect("found through its start-up query");
    assert_eq!(msg["token"], token);
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn list_shows_drops_without_fetching_them() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(
        &room,
        &["--ttl", "20s", "--max-fetches", "3", "look, don't touch"],
    );
    let out = room.cmd(&["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(&token))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains("message") && row.contains("alice") && row.contains("17 B"),
        "{row}"
    );
    assert!(row.trim_end().ends_with('3'), "fetches left: {row}");
    let out = room.cmd(&["list", "--json"]).output().unwrap();
    let v = json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    assert_eq!(v["token"], token);
    assert_eq!(v["size"], 17);
    assert_eq!(v["fetches_left"], 3);
    assert!(v["ttl_left_ms"].as_u64().unwrap() > 10_000);
    // Listing burned nothing.
    assert!(s.child.try_wait().unwrap().is_none());
    s.interrupt();
    assert_eq!(s.wait(T).code(), Some(130));
}

#[test]
fn fetch_json_names_the_holder_and_its_address() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "with an address"]);
    let offered_at = s
        .seen
        .iter()
        .find_map(|l| {
            let v = json(l);
            (v["event"] == "offered").then(|| v["address"].as_str().unwrap().to_owned())
        })
        .unwrap();
    let out = room.cmd(&["fetch", "--json", &token]).output().unwrap();
    assert_ok(&out);
    let msg = json(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
    assert_eq!(msg["event"], "message");
    assert_eq!(msg["text"], "with an address");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["address"], offered_at.as_str(), "{msg}");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn errors_name_the_path_and_say_the_cause_once() {
    let room = Room::new("secret123");
    let out = room
        .cmd(&["send-file", "nonexistent.bin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nonexistent.bin"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A destination whose folder does not exist is named before anything is fetched.
    let (mut s, token) = sender(&room, &["--ttl", "20s", "hello"]);
    let out = room
        .cmd(&["fetch", "--out", "/nonexistent/dir/x", &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/dir/x") && err.contains("/nonexistent/dir does not exist"),
        "{err}"
    );
    // Nothing was fetched: the drop is still there.
    let out = room.cmd(&["fetch", &token]).output().unwrap();
    assert_ok(&out);
    assert_eq!(out.stdout, b"hello");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn messages_have_no_progress_events() {
    let room = Room::new("secret123");
    let mut r = receiver(&room, "bob");
    let (mut s, token) = sender(&room, &["--max-fetches", "2", "--ttl", "20s", "hi there"]);
    r.wait_event(T, "message").expect("delivered");
    let out = room.cmd(&["fetch", "--json", &token]).output().unwrap();
    assert_ok(&out);
    assert_eq!(s.wait(T).code(), Some(0));
    let fetched = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = r
        .drain(Duration::from_millis(100))
        .into_iter()
        .chain(s.drain(Duration::ZERO))
        .chain(fetched.lines().map(str::to_owned))
        .collect();
    assert!(
        !lines.iter().any(|l| l.contains("\"progress\"")),
        "{lines:#?}"
    );
}

#[test]
fn list_with_a_wrong_passphrase_says_so_once() {
    let room = Room::new("secret123");
    let (_s, _) = sender(&room, &["--ttl", "20s", "hello"]);
    let out = room.other("wrong-pass").cmd(&["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one message: {err}");
    assert!(lines[0].contains("none accepted the passphrase"), "{err}");
}

#[test]
fn fetch_by_token_then_it_is_gone() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "by token"]);
    let out = room.cmd(&["fetch", &token]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"by token");
    assert_eq!(s.wait(T).code(), Some(0));
    let again = room
        .cmd(&["fetch", "--wait", "1s", &token])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn fetch_with_a_wrong_passphrase_says_so_and_burns_nothing() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "guarded"]);
    let out = room
        .other("guess")
        .cmd(&["fetch", "--wait", "1s", &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase, or someone interfered")
    );
    assert!(
        s.wait_event(T, "rejected").is_some(),
        "the sender sees the failed attempt"
    );
    let out = room.cmd(&["fetch", &token]).output().unwrap();
    assert_eq!(out.stdout, b"guarded");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn fetch_out_writes_a_new_file_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "20s", "to a file"]);
    let existing = dir.path().join("exists.txt");
    std::fs::write(&existing, "keep me").unwrap();
    let out = room
        .cmd(&["fetch", &token, "--out", existing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
    let target = dir.path().join("new.txt");
    let out = room
        .cmd(&["fetch", &token, "--out", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "to a file");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn a_message_from_stdin() {
    let room = Room::new("secret123");
    let mut r = receiver(&room, "bob");
    let mut child = room
        .cmd(&["send-msg", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("line one\nline two ✓\n".as_bytes())
        .unwrap();
    let msg = r.wait_event(T, "message").unwrap();
    assert_eq!(msg["text"], "line one\nline two ✓\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn regression_ctrl_c_right_after_the_offer_withdraws_it_every_time() {
    // The Ctrl-C handler used to be installed after the drop was offered and printed: a Ctrl-C
    // in that window killed the sender without withdrawing (17 of 30 runs failed).
    let room = Room::new("secret123");
    for i in 0..50 {
        let mut s = if i % 2 == 0 {
            sender(&room, &["--ttl", "60s", "changed my mind"]).0
        } else {
            // Text mode: the token line is the first thing printed.
            let mut s = Proc::spawn(room.cmd(&["send-msg", "--ttl", "60s", "changed my mind"]));
            s.wait_line(T, |_| true).expect("the token");
            s
        };
        s.interrupt();
        assert_eq!(s.wait(T).code(), Some(130), "run {i}: {}", s.stderr());
        assert!(
            s.stderr().contains("Interrupted: the drop is withdrawn."),
            "run {i}: {}",
            s.stderr()
        );
    }
}

#[test]
fn ctrl_c_stops_run_list_and_fetch_cleanly_at_any_moment() {
    let room = Room::new("secret123");
    for i in 0..10 {
        let mut r = Proc::spawn(room.cmd(&["run", "--json", "--no-files"]));
        r.wait_event(T, "listening").unwrap();
        r.interrupt();
        assert_eq!(r.wait(T).code(), Some(0), "run {i}: {}", r.stderr());
        for args in [
            &["list", "--wait", "10s"][..],
            &["fetch", "--wait", "10s", "00112233445566778899aabbccddeeff"][..],
        ] {
            let mut p = Proc::spawn(room.cmd(args));
            // Before its handler is in place, a Ctrl-C ends a process that has done nothing
            // yet; from then on, at any moment, it stops cleanly.
            assert!(p.wait_catches_ctrl_c(T), "{args:?}: {}", p.stderr());
            std::thread::sleep(Duration::from_millis(20 * i));
            p.interrupt();
            assert_eq!(p.wait(T).code(), Some(130), "{args:?} {i}: {}", p.stderr());
            assert!(p.stderr().contains("Interrupted."), "{}", p.stderr());
        }
    }
}

#[test]
fn ctrl_c_withdraws_the_drop() {
    let room = Room::new("secret123");
    let (mut s, token) = sender(&room, &["--ttl", "60s", "changed my mind"]);
    s.interrupt();
    assert_eq!(s.wait(T).code(), Some(130));
    let out = room
        .cmd(&["fetch", "--wait", "1s", &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn the_passphrase_never_appears_in_output_or_logs() {
    let room = Room::new("correct horse battery staple");
    let mut r = Proc::spawn(room.cmd(&["run", "--json", "-vv"]));
    r.wait_event(T, "listening").unwrap();
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--json", "-vv", "x"]));
    r.wait_event(T, "message").unwrap();
    s.wait(T);
    let help = Command::new(bin())
        .args(["run", "--help"])
        .env("DEADDROP_ROOM", &room.pass)
        .output()
        .unwrap();
    r.interrupt();
    r.wait(T);
    for text in [
        r.stderr(),
        s.stderr(),
        r.seen.join("\n"),
        s.drain(Duration::ZERO).join("\n"),
        String::from_utf8_lossy(&help.stdout).into_owned(),
    ] {
        assert!(!text.contains("horse"), "passphrase leaked: {text}");
    }
}

#[test]
fn help_documents_the_exit_codes_and_the_defaults() {
    let out = Command::new(bin())
        .args(["send-msg", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit codes",
        "3    send-*: the time-to-live ran out",
        "--max-fetches",
        "--everyone",
        "[default: 12s]",
        "DEADDROP_ROOM",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

#[test]
fn bash_completions_load_and_complete_commands_and_options() {
    let script = format!(
        "source <('{}' completions bash) || exit 9; complete -p deaddrop || exit 8; \
         COMP_WORDS=(deaddrop se); COMP_CWORD=1; _deaddrop deaddrop se deaddrop; \
         echo \"commands: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(deaddrop fetch --); COMP_CWORD=2; _deaddrop deaddrop -- fetch; \
         echo \"options: ${{COMPREPLY[*]}}\"",
        bin()
    );
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "bash complained: {stderr}");
    assert!(stdout.contains("commands: send-msg send-file"), "{stdout}");
    assert!(
        stdout.contains("--out") && stdout.contains("--wait"),
        "{stdout}"
    );
    // The other shells get scripts too.
    for (shell, needle) in [
        ("zsh", "#compdef deaddrop"),
        ("fish", "complete -c deaddrop"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[deaddrop]"),
    ] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{shell}"
        );
    }
}

#[test]
fn the_man_pages_render_with_man() {
    // `man -l` renders a page from a file: the main page from stdout, then every page.
    let page = Command::new(bin()).arg("man").output().unwrap();
    assert_ok(&page);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stdout.1"), &page.stdout).unwrap();
    let written = Command::new(bin())
        .args(["man", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&written);
    let render = |name: &str| {
        let out = Command::new("man")
            .args(["-l", dir.path().join(name).to_str().unwrap()])
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db) is installed");
        assert!(out.status.success(), "man -l {name}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let main = render("stdout.1");
    for needle in [
        "NAME",
        "deaddrop - A peer-to-peer dead drop",
        "deaddrop-run(1)",
        "ENVIRONMENT",
        "DEADDROP_INTERFACE",
        "EXIT STATUS",
        "interrupted by Ctrl-C",
    ] {
        assert!(main.contains(needle), "{needle:?} missing:\n{main}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("deaddrop.1")).unwrap(),
        page.stdout
    );
    for cmd in [
        "run",
        "send-msg",
        "send-file",
        "fetch",
        "list",
        "doctor",
        "completions",
        "man",
    ] {
        let text = render(&format!("deaddrop-{cmd}.1"));
        assert!(text.contains(&format!("deaddrop {cmd}")), "{cmd}:\n{text}");
        assert!(text.contains("SEE ALSO"), "{cmd}");
    }
    let fetch = render("deaddrop-fetch.1");
    assert!(
        fetch.contains("--out") && fetch.contains("--wait"),
        "{fetch}"
    );
}

#[test]
fn bad_input_is_a_usage_error_with_a_clear_message() {
    let room = Room::new("secret123");
    for (args, needle) in [
        (vec!["send-msg", "--ttl", "soon", "x"], "not a duration"),
        (vec!["fetch", "xyz"], "32 hexadecimal digits"),
        (vec!["send-msg", "--max-fetches", "0", "x"], "--max-fetches"),
        (
            vec!["send-msg", "--everyone", "--max-fetches", "2", "x"],
            "cannot be used with",
        ),
        (
            vec!["send-msg", "--ttl", "0", "x"],
            "between 1 ms and 7 days",
        ),
        (
            vec!["send-file", "--ttl", "100d", "x"],
            "between 1 ms and 7 days",
        ),
        (
            vec!["list", "--legacy"],
            "list is not available with --legacy",
        ),
        (
            vec!["run", "--legacy", "--peer", "127.0.0.1"],
            "--peer with --legacy",
        ),
        (
            vec!["send-msg", "--legacy", "--everyone", "x"],
            "--max-fetches and --everyone do not apply",
        ),
    ] {
        let out = room.cmd(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
        // A usage line, when there is one, is the subcommand's own, and never lists the
        // options that came from the environment (the room, the port) as if required.
        if let Some(line) = err.lines().find(|l| l.starts_with("Usage:")) {
            assert!(
                line.starts_with(&format!("Usage: deaddrop {}", args[0])),
                "{line}"
            );
            assert!(
                !line.contains("--room") && !line.contains("--port <"),
                "{line}"
            );
        }
    }
    let out = Command::new(bin())
        .args(["run", "--port", "0"])
        .env("DEADDROP_ROOM", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--port 0");
    assert!(String::from_utf8_lossy(&out.stderr).contains("'--port <PORT>'"));
    // Help shows which variables are read, never their values.
    let out = room
        .cmd(&["run", "--help"])
        .env("DEADDROP_PORT", "4242")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DEADDROP_PORT]"), "{help}");
    assert!(
        !help.contains("4242") && !help.contains("DEADDROP_PORT="),
        "{help}"
    );
    let out = Command::new(bin())
        .args(["run", "--interface", "nosuch0", "--port", "1"])
        .env("DEADDROP_ROOM", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch0"));
}

#[test]
fn no_passphrase_and_no_terminal_is_a_clear_error() {
    let out = Command::new(bin())
        .args(["list", "--interface", "127.0.0.1", "--port", "1"])
        .env_remove("DEADDROP_ROOM")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing passphrase is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEADDROP_ROOM"));
}

#[test]
fn several_senders_and_receivers_share_one_host() {
    let room = Room::new("secret123");
    let mut receivers: Vec<_> = ["r1", "r2"].iter().map(|n| receiver(&room, n)).collect();
    let senders: Vec<_> = (0..4)
        .map(|i| sender(&room, &["--everyone", "--ttl", "3s", &format!("note {i}")]))
        .collect();
    for r in &mut receivers {
        let mut texts: Vec<String> = (0..4)
            .map(|_| {
                r.wait_event(T, "message").expect("all four notes")["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        texts.sort();
        assert_eq!(texts, ["note 0", "note 1", "note 2", "note 3"]);
    }
    for (mut s, _) in senders {
        assert_eq!(s.wait(T).code(), Some(0));
    }
}

#[test]
fn run_saves_files_into_a_folder_of_its_own_in_downloads_by_default() {
    // Saving into the current folder (often the home folder) by default let a drop land next to
    // a user's dotfiles; now files go where browsers put them, in a folder of their own.
    let home = tempfile::tempdir().unwrap();
    let room = Room::new("secret123");
    let mut c = room.cmd(&["run", "--json"]);
    c.env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .current_dir(home.path());
    let mut r = Proc::spawn(c);
    let listening = r.wait_event(T, "listening").unwrap();
    let folder = home.path().join("Downloads").join("deaddrop");
    assert_eq!(listening["folder"], folder.display().to_string().as_str());
    assert!(
        !folder.exists(),
        "made when the first file arrives, not before"
    );
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join(".profile");
    std::fs::write(&path, b"echo hi").unwrap();
    let mut s = Proc::spawn(room.cmd(&["send-file", "--json", path.to_str().unwrap()]));
    let got = r.wait_event(T, "received").expect("the file arrives");
    assert_eq!(
        got["path"],
        folder.join("_profile").display().to_string().as_str()
    );
    assert_eq!(std::fs::read(folder.join("_profile")).unwrap(), b"echo hi");
    let in_home: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(in_home, ["Downloads"], "nothing else in the home folder");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn run_refuses_a_receive_folder_that_is_not_one_at_start() {
    let room = Room::new("secret123");
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = room
        .cmd(&["run", "--dir", file.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a folder") && err.contains(file.path().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn two_doctors_on_one_host_see_each_other_and_say_so_in_plain_words() {
    let room = Room::new("secret123");
    let doctor = || {
        let mut c = room.cmd(&["doctor", "--wait", "1500ms"]);
        c.env_remove("DEADDROP_ROOM");
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (doctor(), doctor());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ta, tb) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    // Without mDNS (not on loopback), a doctor shows as a process asking for drops.
    let me = |t: &str| t.split_whitespace().nth(2).unwrap().to_owned();
    assert!(
        ta.contains(&format!("{} receiver 127.0.0.1 on broadcast", me(&tb))),
        "{ta}\n---\n{tb}"
    );
    assert!(
        tb.contains(&format!("{} receiver 127.0.0.1 on broadcast", me(&ta))),
        "{tb}"
    );
    assert!(ta.contains("ok: broadcast carries discovery on lo"), "{ta}");
    assert!(ta.contains("Interfaces") && ta.contains("Verdict"), "{ta}");
    assert_eq!(a.status.code(), Some(0), "{ta}");
}

/// The dependency names of the `deaddrop` package in a Cargo.lock (versions left out: the fuzz
/// workspace resolves its own).
fn locked_dependencies(lock: &str) -> Vec<String> {
    let start = lock
        .find("[[package]]\nname = \"deaddrop\"\n")
        .expect("the lock file lists deaddrop");
    let block = &lock[start..];
    let deps = &block[block
        .find("dependencies = [")
        .expect("deaddrop has dependencies")..];
    let deps = &deps[..deps.find(']').expect("the list ends")];
    let mut names: Vec<String> = deps
        .lines()
        .skip(1)
        .filter_map(|line| {
            line.trim()
                .trim_matches(|c| c == '"' || c == ',')
                .split(' ')
                .next()
        })
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// CI builds the fuzz targets with `--locked`: a dependency added to the crate and not to
/// fuzz/Cargo.lock fails CI at its very end (run `cargo +nightly metadata` in fuzz/ to update it).
#[test]
fn the_fuzz_lock_file_knows_every_dependency_of_the_crate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).expect(path);
    // The fuzz workspace does not build this crate's tests, so it has no dev-dependencies.
    let manifest = read("Cargo.toml");
    let dev = &manifest[manifest
        .find("[dev-dependencies]")
        .expect("dev-dependencies")..];
    let dev: Vec<&str> = dev
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    let fuzz = locked_dependencies(&read("fuzz/Cargo.lock"));
    let missing: Vec<String> = locked_dependencies(&read("Cargo.lock"))
        .into_iter()
        .filter(|name| !fuzz.contains(name) && !dev.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "fuzz/Cargo.lock is out of date (no {missing:?}): run `cargo +nightly metadata --format-version 1` in fuzz/"
    );
}

/// Someone used to "the passphrase" types `--passphrase`: the error says the flag is `--room`
/// (issue 28.5), with the usage error's exit code, and nothing is sent.
#[test]
fn passphrase_flags_point_to_room() {
    for flag in ["--passphrase", "--password=secret123"] {
        let out = Command::new(bin())
            .args(["send-msg", flag, "secret123", "hi"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--room PASSPHRASE"), "{flag}: {err}");
    }
}

/// The text a QR code drawn with Unicode half blocks (as `deaddrop qr` and `deaddrop invite`
/// draw them) holds, read back by a QR decoder; either polarity.
pub fn decode_terminal_qr(drawn: &str) -> Option<String> {
    let rows: Vec<Vec<char>> = drawn
        .lines()
        .filter(|l| l.chars().any(|c| "█▀▄".contains(c)))
        .map(|l| l.chars().collect())
        .collect();
    let width = rows.iter().map(Vec::len).max()?;
    // Each character is two modules stacked: is the top (bottom) one inked?
    let inked = |x: usize, y: usize| {
        let c = rows[y / 2].get(x).copied().unwrap_or(' ');
        matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1))
    };
    const SCALE: usize = 4;
    let height = rows.len() * 2;
    for ink_is_dark in [false, true] {
        let mut img =
            rqrr::PreparedImage::prepare_from_greyscale(width * SCALE, height * SCALE, |x, y| {
                let dark = inked(x / SCALE, y / SCALE) == ink_is_dark;
                if dark { 0 } else { 255 }
            });
        for grid in img.detect_grids() {
            if let Ok((_, text)) = grid.decode() {
                return Some(text);
            }
        }
    }
    None
}

/// `deaddrop qr` shows the room as a QR code a camera reads back to the same `deaddrop:` link,
/// and a device given that link with `--room-uri` is in the room: it gets a message sent with
/// the passphrase (issue 28.3).
#[test]
fn the_room_qr_code_reads_back_to_a_link_that_joins_the_room() {
    let room = Room::new("two words & a + sign");
    let out = Command::new(bin())
        .args(["qr", "--room", "two words & a + sign"])
        .output()
        .unwrap();
    assert_ok(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds the room's passphrase"), "{stderr}");
    let link = stdout.lines().last().unwrap().to_owned();
    assert!(link.starts_with("deaddrop:join?room="), "{stdout}");
    let read = decode_terminal_qr(&stdout).expect("the QR code reads back");
    assert_eq!(read, link);

    // A receiver joined by the link, not the passphrase.
    let mut run = room.cmd(&["run", "--json", "--room-uri", &link]);
    run.env_remove("DEADDROP_ROOM");
    let mut run = Proc::spawn(run);
    run.wait_event(T, "listening")
        .expect("the receiver listens");
    let (mut send, _) = sender(&room, &["found by the link"]);
    let m = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no message: {}", run.stderr()));
    assert_eq!(m["text"], "found by the link");
    assert!(send.wait(T).success());

    // A damaged link is a usage error that says what is wrong.
    let out = room
        .cmd(&["list", "--room-uri", "deaddrop:join?invite=x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no room= passphrase"));
}

/// The invite's QR code reads back to the invite.
#[test]
fn the_invite_qr_code_reads_back_to_the_invite() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .env("DEADDROP_CONFIG_DIR", dir.path())
        .args(["invite", "--relay", "https://relay.test:3340#sha256=0000000000000000000000000000000000000000000000000000000000000000"])
        .output()
        .unwrap();
    assert_ok(&out);
    let invite = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let read = decode_terminal_qr(&String::from_utf8_lossy(&out.stderr)).expect("reads back");
    assert_eq!(read.to_ascii_lowercase(), invite.to_ascii_lowercase());
}
