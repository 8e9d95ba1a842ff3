//! Files and folders end to end over loopback: round trips, safe receiving, resume and faults.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::relay::{Mode, Relay};
use crate::util::{Proc, Room, assert_ok, free_port, json};

const T: Duration = Duration::from_secs(30);

/// Deterministic bytes that do not compress.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn send(room: &Room, path: &Path, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["send-file", "--json", "--name", "alice"];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    let mut p = Proc::spawn(room.cmd(&all));
    let offered = p
        .wait_event(T, "offered")
        .unwrap_or_else(|| panic!("no offer: {}", p.stderr()));
    (p, offered["token"].as_str().unwrap().to_owned())
}

fn receiver(room: &Room, dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "run",
        "--json",
        "--name",
        "bob",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(room.cmd(&args));
    p.wait_event(T, "listening").unwrap();
    p
}

/// Visible entries of a folder, sorted (hidden partial files start with a dot).
pub(crate) fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

pub(crate) fn partials(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".deaddrop-")
        })
        .collect()
}

/// Every file and folder under `root`: (relative path, contents or None for folders, executable).
fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>, bool)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>, bool)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                out.push((rel, None, false));
                walk(root, &e.path(), out);
            } else {
                use std::os::unix::fs::PermissionsExt;
                out.push((
                    rel,
                    Some(fs::read(e.path()).unwrap()),
                    meta.permissions().mode() & 0o100 != 0,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn files_of_every_size_arrive_byte_identical() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let room = Room::new("secret123");
    let mut r = receiver(&room, dst.path(), &[]);
    for (name, len) in [
        ("empty.bin", 0usize),
        ("one byte", 1),
        ("big file ✓.bin", 100 << 20),
    ] {
        let path = src.path().join(name);
        let bytes = data(len, len as u64);
        fs::write(&path, &bytes).unwrap();
        let (mut s, token) = send(&room, &path, &[]);
        let got = r
            .wait_event(T, "received")
            .unwrap_or_else(|| panic!("{name} not received: {}", r.stderr()));
        assert_eq!(got["token"], token);
        assert_eq!(got["size"], len);
        assert_eq!(got["from"], "alice");
        let saved = PathBuf::from(got["path"].as_str().unwrap());
        assert_eq!(saved, dst.path().join(name));
        assert!(fs::read(&saved).unwrap() == bytes, "{name} differs");
        assert_eq!(s.wait(T).code(), Some(0), "{}", s.stderr());
    }
    assert!(partials(dst.path()).is_empty());
}

#[test]
fn a_folder_tree_arrives_whole() {
    use std::os::unix::fs::PermissionsExt;
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = src.path().join("Project files ✓");
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty folder")).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    fs::write(root.join("a/one MiB.bin"), data(1 << 20, 3)).unwrap();
    fs::write(root.join("naïve résumé.txt"), b"unicode").unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let room = Room::new("secret123");
    let mut r = receiver(&room, dst.path(), &[]);
    let (mut s, _) = send(&room, &root, &[]);
    let got = r.wait_event(T, "received").expect("folder received");
    assert_eq!(got["kind"], "directory");
    // The size of a folder is what its files hold, not the size of the transfer.
    // deep.txt, one MiB.bin, naïve résumé.txt, run.sh (empty.txt holds nothing).
    let content = 4 + (1 << 20) + 7 + 18;
    assert_eq!(
        (got["files"].as_u64(), got["size"].as_u64()),
        (Some(5), Some(content))
    );
    let saved = dst.path().join("Project files ✓");
    assert_eq!(PathBuf::from(got["path"].as_str().unwrap()), saved);
    assert_eq!(tree(&saved), tree(&root));
    assert!(
        tree(&saved)
            .iter()
            .any(|(p, _, exec)| p == "run.sh" && *exec)
    );
    assert!(saved.join("empty folder").is_dir());
    assert_eq!(s.wait(T).code(), Some(0));
    assert_eq!(visible(dst.path()), ["Project files ✓"]);
    assert!(partials(dst.path()).is_empty());
}

#[test]
fn folder_sizes_are_what_the_files_hold() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let empty = src.path().join("nothing here");
    fs::create_dir(&empty).unwrap();
    let three = src.path().join("three");
    fs::create_dir(&three).unwrap();
    for n in 0..3 {
        fs::write(three.join(format!("{n}.txt")), data(1000, n)).unwrap();
    }
    let room = Room::new("secret123");
    for (dir, said, files, bytes) in [
        (&empty, "folder \"nothing here\" (0 files, 0 B)", 0, 0),
        (&three, "folder \"three\" (3 files, 2.9 KiB)", 3, 3000),
    ] {
        let mut s = Proc::spawn(room.cmd(&["send-file", dir.to_str().unwrap()]));
        let token = s.wait_line(T, |l| l.len() == 32).expect("token");
        let out = room
            .cmd(&[
                "fetch",
                "--json",
                "--dir",
                dst.path().to_str().unwrap(),
                &token,
            ])
            .output()
            .unwrap();
        assert_ok(&out);
        let got = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(json)
            .find(|v| v["event"] == "received")
            .expect("received");
        assert_eq!(
            (got["files"].as_u64(), got["size"].as_u64()),
            (Some(files), Some(bytes))
        );
        assert_eq!(s.wait(T).code(), Some(0));
        assert!(s.stderr().contains(said), "{}", s.stderr());
    }
}

#[test]
fn fetch_by_token_into_a_folder_an_exact_path_and_stdout() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let room = Room::new("secret123");
    let path = src.path().join("notes.txt");
    let bytes = data(300_000, 9);
    fs::write(&path, &bytes).unwrap();
    let (mut s, token) = send(&room, &path, &["--max-fetches", "4"]);
    let out = room
        .cmd(&["fetch", "--dir", dst.path().to_str().unwrap(), &token])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(fs::read(dst.path().join("notes.txt")).unwrap(), bytes);
    // A second process is another receiver; an exact path never overwrites.
    let exact = dst.path().join("copy.txt");
    let out = room
        .cmd(&["fetch", "--out", exact.to_str().unwrap(), &token])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(fs::read(&exact).unwrap(), bytes);
    let out = room
        .cmd(&["fetch", "--out", "-", &token])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(out.stdout == bytes, "stdout differs");
    // With --json too, stdout still carries only the content; the events go to stderr.
    let out = room
        .cmd(&["fetch", "--json", "--out", "-", &token])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(out.stdout == bytes, "stdout differs with --json");
    let err = String::from_utf8_lossy(&out.stderr);
    let progress = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .count();
    assert!(progress > 0, "no JSON progress on stderr: {err}");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn a_message_fetched_to_stdout_with_json_is_only_its_text() {
    let room = Room::new("secret123");
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--json", "hello there"]));
    let token = s.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = room
        .cmd(&["fetch", "--json", "--out", "-", &token])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(out.stdout, b"hello there");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(dst.path().join("report.pdf"), b"my own report").unwrap();
    let path = src.path().join("report.pdf");
    fs::write(&path, b"their report").unwrap();
    let room = Room::new("secret123");
    let mut r = receiver(&room, dst.path(), &[]);
    let (mut s, _) = send(&room, &path, &[]);
    let got = r.wait_event(T, "received").unwrap();
    assert_eq!(
        PathBuf::from(got["path"].as_str().unwrap()),
        dst.path().join("report (1).pdf")
    );
    assert_eq!(
        fs::read(dst.path().join("report.pdf")).unwrap(),
        b"my own report"
    );
    assert_eq!(
        fs::read(dst.path().join("report (1).pdf")).unwrap(),
        b"their report"
    );
    s.wait(T);
}

#[test]
fn hostile_names_are_made_safe_on_arrival() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let room = Room::new("secret123");
    let mut r = receiver(&room, dst.path(), &[]);
    for (name, want) in [
        ("evil\x1b[2J\u{202e}txt.exe", "evil_[2J_txt.exe"),
        ("CON", "_CON"),
        ("line\nbreak", "line_break"),
        ("trailing dot.", "trailing dot"),
    ] {
        let path = src.path().join(name);
        fs::write(&path, name).unwrap();
        let (mut s, _) = send(&room, &path, &[]);
        let got = r.wait_event(T, "received").unwrap();
        assert_eq!(
            PathBuf::from(got["path"].as_str().unwrap()),
            dst.path().join(want),
            "{name:?}"
        );
        s.wait(T);
    }
}

#[test]
fn max_size_and_no_files_show_drops_without_fetching_them() {
    let (src, small, none) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let room = Room::new("secret123");
    let mut capped = receiver(&room, small.path(), &["--max-size", "1K"]);
    let mut messages_only = receiver(&room, none.path(), &["--no-files"]);
    let path = src.path().join("two-k.bin");
    fs::write(&path, data(2048, 1)).unwrap();
    let (mut s, token) = send(&room, &path, &["--ttl", "20s"]);
    for r in [&mut capped, &mut messages_only] {
        let skipped = r.wait_event(T, "skipped").expect("shown");
        assert_eq!(skipped["token"], token);
        assert_eq!(skipped["size"], 2048);
    }
    assert!(
        capped.seen.iter().any(|l| l.contains("max-size")),
        "{:?}",
        capped.seen
    );
    assert!(
        messages_only.seen.iter().any(|l| l.contains("no-files")),
        "{:?}",
        messages_only.seen
    );
    // Messages still arrive on the --no-files receiver.
    let mut m = Proc::spawn(room.cmd(&["send-msg", "--everyone", "--ttl", "3s", "just text"]));
    assert_eq!(
        messages_only.wait_event(T, "message").unwrap()["text"],
        "just text"
    );
    m.wait(T);
    assert!(visible(small.path()).is_empty() && visible(none.path()).is_empty());
    // Nothing was burned: it can still be fetched by token.
    let out = room
        .cmd(&["fetch", "--dir", small.path().to_str().unwrap(), &token])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(visible(small.path()), ["two-k.bin"]);
    s.wait(T);
}

/// Waits until a hidden partial file in `dir` holds at least `bytes`.
pub(crate) fn wait_partial(dir: &Path, bytes: u64) -> u64 {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Some(len) = partials(dir)
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .max()
            && len >= bytes
        {
            return len;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no partial file of {bytes} bytes in {}", dir.display());
}

/// A sender offering one file in `room`, and `via`: the same room reached only through a relay.
pub(crate) struct Relayed {
    pub dst: tempfile::TempDir,
    pub room: Room,
    pub via: Room,
    pub bytes: Vec<u8>,
    pub sender: Proc,
    pub token: String,
    _src: tempfile::TempDir,
    _relay: Relay,
}

pub(crate) fn relayed(mode: Mode, name: &str, len: usize, send_args: &[&str]) -> Relayed {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let room = Room::new("secret123");
    let via = Room {
        pass: room.pass.clone(),
        port: free_port(),
    };
    let relay = Relay::start(room.port, via.port, mode);
    let path = src.path().join(name);
    let bytes = data(len, len as u64);
    fs::write(&path, &bytes).unwrap();
    let (sender, token) = send(&room, &path, send_args);
    Relayed {
        dst,
        room,
        via,
        bytes,
        sender,
        token,
        _src: src,
        _relay: relay,
    }
}

#[test]
fn a_receiver_killed_mid_transfer_resumes_on_the_next_fetch() {
    let mut t = relayed(
        Mode::Throttle(8 << 20),
        "movie.bin",
        24 << 20,
        &["--ttl", "60s"],
    );
    let dir = t.dst.path().to_str().unwrap();
    let mut first = Proc::spawn(t.via.cmd(&["fetch", "--json", "--dir", dir, &t.token]));
    let held = wait_partial(t.dst.path(), 4 << 20);
    first.child.kill().unwrap();
    first.wait(T);
    assert!(
        visible(t.dst.path()).is_empty(),
        "nothing under a final name"
    );
    // Progress events came at most a few per second.
    let progress = first
        .drain(Duration::ZERO)
        .iter()
        .filter(|l| l.contains("\"progress\""))
        .count();
    assert!(
        (1..=8).contains(&progress),
        "{progress} progress events in under 2 s"
    );
    // The drop was not burned, and the next fetch continues where the first stopped.
    let mut second = Proc::spawn(t.room.cmd(&["fetch", "--json", "--dir", dir, &t.token]));
    let p = second.wait_event(T, "progress").expect("progress");
    assert!(
        p["done"].as_u64().unwrap() >= held,
        "resumed from {} with {held} held",
        p["done"]
    );
    assert_eq!(second.wait(T).code(), Some(0), "{}", second.stderr());
    assert!(
        fs::read(t.dst.path().join("movie.bin")).unwrap() == t.bytes,
        "resumed copy differs"
    );
    assert!(partials(t.dst.path()).is_empty());
    assert_eq!(t.sender.wait(T).code(), Some(0));
}

#[test]
fn a_sender_that_withdraws_mid_transfer_tells_run_which_deletes_what_arrived() {
    let mut t = relayed(
        Mode::Throttle(8 << 20),
        "draft.bin",
        24 << 20,
        &["--ttl", "60s"],
    );
    let dir = t.dst.path().to_str().unwrap();
    let mut r = Proc::spawn(t.via.cmd(&["run", "--json", "--dir", dir]));
    wait_partial(t.dst.path(), 2 << 20);
    t.sender.interrupt();
    assert_eq!(t.sender.wait(T).code(), Some(130));
    let failed = r.wait_event(T, "fetch_failed").expect("told");
    assert!(
        failed["reason"].as_str().unwrap().contains("withdrew"),
        "{failed}"
    );
    assert_eq!(failed["retrying"], false, "{failed}");
    assert_eq!(failed["name"], "draft.bin", "{failed}");
    assert!(
        partials(t.dst.path()).is_empty() && visible(t.dst.path()).is_empty(),
        "what arrived is deleted at once"
    );
}

#[test]
fn a_sender_that_withdraws_mid_transfer_tells_fetch_which_deletes_what_arrived() {
    let mut t = relayed(
        Mode::Throttle(8 << 20),
        "draft.bin",
        24 << 20,
        &["--ttl", "60s"],
    );
    let dir = t.dst.path().to_str().unwrap();
    let mut r = Proc::spawn(t.via.cmd(&["fetch", "--dir", dir, &t.token]));
    wait_partial(t.dst.path(), 2 << 20);
    t.sender.interrupt();
    assert_eq!(r.wait(T).code(), Some(1));
    let err = r.stderr();
    assert!(err.contains("withdrew") && err.contains("deleted"), "{err}");
    assert!(!err.contains("resume"), "no false promise: {err}");
    assert!(partials(t.dst.path()).is_empty() && visible(t.dst.path()).is_empty());
    assert_eq!(t.sender.wait(T).code(), Some(130));
}

#[test]
fn run_names_a_drop_it_could_not_save_and_saves_it_once_the_cause_is_gone() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let inbox = dst.path().join("inbox");
    fs::create_dir(&inbox).unwrap();
    let room = Room::new("secret123");
    let mut r = receiver(&room, &inbox, &[]);
    // The folder goes away and a file takes its name: saving fails (as root too).
    fs::remove_dir(&inbox).unwrap();
    fs::write(&inbox, b"in the way").unwrap();
    let path = src.path().join("minutes.txt");
    fs::write(&path, b"we met").unwrap();
    let (mut s, token) = send(&room, &path, &["--ttl", "60s"]);
    let failed = r.wait_event(T, "fetch_failed").expect("reported");
    assert_eq!(failed["token"], token.as_str(), "{failed}");
    assert_eq!(failed["name"], "minutes.txt", "{failed}");
    assert_eq!(failed["retrying"], true, "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains(inbox.to_str().unwrap()),
        "names the folder: {reason}"
    );
    // Failing again for the same reason is not reported again; once the folder is back, the
    // next attempt saves it.
    std::thread::sleep(Duration::from_secs(3));
    fs::remove_file(&inbox).unwrap();
    fs::create_dir(&inbox).unwrap();
    let got = r
        .wait_event(Duration::from_secs(20), "received")
        .expect("saved after a retry");
    assert_eq!(got["token"], token.as_str());
    assert_eq!(fs::read(inbox.join("minutes.txt")).unwrap(), b"we met");
    let lines = r.drain(Duration::ZERO);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"fetch_failed\""))
            .count(),
        1,
        "one report for one cause: {lines:?}"
    );
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn a_sender_killed_mid_transfer_leaves_no_file_under_a_final_name() {
    let mut t = relayed(Mode::Throttle(8 << 20), "doomed.bin", 24 << 20, &[]);
    let dir = t.dst.path().to_str().unwrap();
    let mut r = Proc::spawn(t.via.cmd(&["fetch", "--dir", dir, &t.token]));
    wait_partial(t.dst.path(), 2 << 20);
    t.sender.child.kill().unwrap();
    assert_eq!(r.wait(T).code(), Some(1));
    assert!(
        r.stderr().contains("cut before the peer finished"),
        "{}",
        r.stderr()
    );
    assert!(visible(t.dst.path()).is_empty());
}

#[test]
fn a_flipped_byte_publishes_nothing_and_burns_nothing() {
    let mut t = relayed(Mode::FlipAt(3 << 20), "precious.bin", 8 << 20, &[]);
    let dir = t.dst.path().to_str().unwrap();
    let out = t
        .via
        .cmd(&["fetch", "--dir", dir, &t.token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed authentication"),
        "{out:?}"
    );
    assert!(visible(t.dst.path()).is_empty());
    // Not burned: a clean fetch gets it, whole and identical.
    let out = t
        .room
        .cmd(&["fetch", "--dir", dir, &t.token])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(fs::read(t.dst.path().join("precious.bin")).unwrap() == t.bytes);
    assert_eq!(t.sender.wait(T).code(), Some(0));
}

#[test]
fn a_file_changed_after_the_offer_is_not_sent_as_a_mix() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let room = Room::new("secret123");
    let path = src.path().join("log.txt");
    fs::write(&path, data(1 << 20, 8)).unwrap();
    let (mut s, token) = send(&room, &path, &["--ttl", "20s"]);
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all_at_end(b"more");
    let out = room
        .cmd(&["fetch", "--dir", dst.path().to_str().unwrap(), &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not read"),
        "{out:?}"
    );
    assert!(visible(dst.path()).is_empty() && partials(dst.path()).is_empty());
    let stopped = s
        .wait_event(T, "send_stopped")
        .expect("the sender says why");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("changed while it was being sent"),
        "{stopped}"
    );
    s.interrupt();
    s.wait(T);
}

trait AppendExt {
    fn write_all_at_end(self, bytes: &[u8]);
}

impl AppendExt for fs::File {
    fn write_all_at_end(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).unwrap();
    }
}

#[test]
fn regression_a_receiver_whose_link_died_unnoticed_resumes_in_the_same_run() {
    // The holder still held the first transfer's reservation when the same `run` process asked
    // again, and answered "already yours": the drop was never received.
    let vanish = Mode::VanishOnceAt(
        6 << 20,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let t = relayed(vanish, "film.bin", 16 << 20, &["--ttl", "60s"]);
    let mut r = Proc::spawn(
        t.via
            .cmd(&["run", "--json", "--dir", t.dst.path().to_str().unwrap()]),
    );
    let failed = r
        .wait_event(T, "fetch_failed")
        .expect("the first transfer breaks");
    assert!(
        failed["reason"].as_str().unwrap().contains("resumes"),
        "{failed}"
    );
    let got = r
        .wait_event(T, "received")
        .expect("the same run resumes and finishes");
    assert_eq!(got["size"], 16 << 20);
    assert!(fs::read(t.dst.path().join("film.bin")).unwrap() == t.bytes);
}

#[test]
fn a_long_haul_link_still_delivers_messages_and_files() {
    // 150 ms added each way: a fetch is a few round trips (handshake, hello, list, fetch, ack).
    let mut t = relayed(
        Mode::Delay(Duration::from_millis(150)),
        "far.bin",
        2 << 20,
        &["--ttl", "60s"],
    );
    let started = Instant::now();
    let out = t
        .via
        .cmd(&[
            "fetch",
            "--wait",
            "10s",
            "--dir",
            t.dst.path().to_str().unwrap(),
            &t.token,
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(fs::read(t.dst.path().join("far.bin")).unwrap() == t.bytes);
    eprintln!(
        "figure: 2 MiB over a 300 ms round trip in {:?}",
        started.elapsed()
    );
    assert_eq!(t.sender.wait(T).code(), Some(0));
    let mut m = Proc::spawn(
        t.room
            .cmd(&["send-msg", "--json", "--ttl", "20s", "far away"]),
    );
    m.wait_event(T, "offered").unwrap();
    let mut r = Proc::spawn(t.via.cmd(&["run", "--json", "--no-files"]));
    assert_eq!(
        r.wait_event(T, "message")
            .expect("delivered across the slow link")["text"],
        "far away"
    );
    assert_eq!(m.wait(T).code(), Some(0));
}

/// CPU time a process has used so far (user + system), from /proc.
fn cpu_time(p: &Proc) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel reports clock ticks; Linux's USER_HZ is 100.
    Duration::from_millis(ticks * 10)
}

#[test]
fn regression_a_holder_whose_transfer_outlives_its_ttl_does_not_spin() {
    // The expiry timer kept the in-flight drop's past deadline first and woke at once, forever:
    // one core at 100 % until the transfer ended.
    let mut t = relayed(
        Mode::Throttle(64 << 10),
        "slow.bin",
        8 << 20,
        &["--ttl", "2s"],
    );
    let dir = t.dst.path().to_str().unwrap();
    let mut r = Proc::spawn(t.via.cmd(&["fetch", "--json", "--dir", dir, &t.token]));
    r.wait_event(T, "progress").expect("the transfer started");
    std::thread::sleep(Duration::from_secs(3));
    let before = cpu_time(&t.sender);
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_time(&t.sender) - before;
    eprintln!("figure: holder CPU {used:?} over 5 s with a stalled transfer past its TTL");
    assert!(used < Duration::from_millis(500), "{used:?} of CPU in 5 s");
    assert!(
        t.sender.child.try_wait().unwrap().is_none(),
        "the transfer under way may still finish"
    );
}
