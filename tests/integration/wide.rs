//! Wide-area rooms on loopback: a `deaddrop relay`, and members that cannot hear each other's
//! LAN discovery (each on its own discovery port) meeting through the invite. Every packet stays
//! on 127.0.0.1. The NAT topology tests are in `wide_nat`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{Proc, Room, assert_ok, bin, free_port, json};

const T: Duration = Duration::from_secs(30);

/// A relay on loopback, its config folder kept by the caller.
pub struct TestRelay {
    pub proc: Proc,
    /// The URL with the certificate pin, as `deaddrop relay` printed it.
    pub url: String,
}

impl TestRelay {
    pub fn start(config: &Path, bind: &str) -> TestRelay {
        let mut c = Command::new(bin());
        c.args(["relay", "--bind", bind])
            .env("DEADDROP_CONFIG_DIR", config);
        TestRelay::spawn(c)
    }

    /// A relay on a free loopback port.
    pub fn on_loopback(config: &Path) -> TestRelay {
        TestRelay::start(config, &format!("127.0.0.1:{}", free_port()))
    }

    /// Runs `cmd` (a `deaddrop relay` command line) and reads its URL.
    pub fn spawn(cmd: Command) -> TestRelay {
        let mut proc = Proc::spawn(cmd);
        let line = proc
            .wait_line(T, |l| l.contains("--relay"))
            .unwrap_or_else(|| panic!("no relay URL; stderr: {}", proc.stderr()));
        let url = line
            .split('\'')
            .nth(1)
            .expect("the URL is quoted")
            .to_owned();
        TestRelay { proc, url }
    }
}

/// A new room's invite for `relay`.
pub fn invite(config: &Path, relay: &str) -> String {
    invite_with(config, relay, &[])
}

/// `deaddrop invite` with more options.
fn invite_with(config: &Path, relay: &str, more: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["invite", "--relay", relay])
        .args(more)
        .env("DEADDROP_CONFIG_DIR", config)
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(text.starts_with("deaddrop1:"), "{text}");
    text
}

/// A member on loopback with its own discovery port (so LAN discovery cannot find the others)
/// and its own config folder (its own device key).
fn member(room: &str, invite: &str, config: &Path, args: &[&str]) -> Command {
    let mut c = Room {
        pass: room.into(),
        port: free_port(),
    }
    .cmd(args);
    c.args(["--invite", invite])
        .env("DEADDROP_CONFIG_DIR", config);
    c
}

#[test]
fn members_that_cannot_hear_each_other_meet_through_the_invite() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a, b, c, got) = (
        dir.path().join("relay"),
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
        dir.path().join("got"),
    );
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite(&a, &relay.url);

    // A receiver with the invite gets a message from a sender it cannot hear on the LAN.
    let mut run = Proc::spawn(member(
        "secret123",
        &invite,
        &a,
        &["run", "--json", "--dir", got.to_str().unwrap()],
    ));
    run.wait_event(T, "listening").unwrap();
    let mut send = Proc::spawn(member(
        "secret123",
        &invite,
        &b,
        &[
            "send-msg",
            "--json",
            "--ttl",
            "60s",
            "over the relay's room",
        ],
    ));
    let msg = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no message; receiver: {}", run.stderr()));
    assert_eq!(msg["text"], "over the relay's room");
    assert!(
        msg["address"].as_str().unwrap().starts_with("endpoint "),
        "{msg}"
    );
    // Not over the LAN; directly or through the relay, depending on whether the hole was
    // punched before this small transfer ended (the NAT tests check the paths).
    let wide = |v: &serde_json::Value| v == "direct" || v == "relayed";
    assert!(wide(&msg["via"]), "{msg}");
    assert!(send.wait(T).success(), "{}", send.stderr());
    let fetched = send
        .drain(Duration::ZERO)
        .iter()
        .map(|l| json(l))
        .find(|v| v["event"] == "fetched")
        .map(|v| v["via"].clone())
        .expect("a fetched event");
    assert!(wide(&fetched), "{fetched}");

    // A file, fetched by token with `fetch` from a third device, checked whole.
    drop(run);
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &content).unwrap();
    let mut hold = Proc::spawn(member(
        "secret123",
        &invite,
        &b,
        &["send-file", "--json", file.to_str().unwrap()],
    ));
    let token = hold.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out_dir = dir.path().join("fetched");
    std::fs::create_dir(&out_dir).unwrap();
    let out = member(
        "secret123",
        &invite,
        &c,
        &[
            "fetch",
            "--json",
            "--dir",
            out_dir.to_str().unwrap(),
            &token,
        ],
    )
    .output()
    .unwrap();
    assert_ok(&out);
    let received = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json)
        .find(|v| v["event"] == "received")
        .expect("a received event");
    assert!(wide(&received["via"]), "{received}");
    assert_eq!(std::fs::read(out_dir.join("data.bin")).unwrap(), content);
    assert!(hold.wait(T).success(), "{}", hold.stderr());
}

#[test]
fn an_invite_without_the_passphrase_gets_nothing_and_burns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::on_loopback(&dir.path().join("relay"));
    let invite = invite(&dir.path().join("a"), &relay.url);
    let mut send = Proc::spawn(member(
        "secret123",
        &invite,
        &dir.path().join("a"),
        &["send-msg", "--json", "--ttl", "60s", "for members only"],
    ));
    let token = send.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Someone with the invite and a wrong passphrase: finds the holder, fails the handshake.
    let out = member(
        "wrong guess",
        &invite,
        &dir.path().join("x"),
        &["fetch", "--wait", "12s", &token],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was burned: a member still gets it.
    let out = member(
        "secret123",
        &invite,
        &dir.path().join("b"),
        &["fetch", "--out", "-", &token],
    )
    .output()
    .unwrap();
    assert_ok(&out);
    assert_eq!(out.stdout, b"for members only");
    assert!(send.wait(T).success(), "{}", send.stderr());
}

#[test]
fn invites_are_kept_by_name_and_damaged_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pin = "ab".repeat(32);
    let relay = format!("https://127.0.0.1:9#sha256={pin}");
    let out = Command::new(bin())
        .args(["invite", "--relay", &relay, "--name", "home", "--json"])
        .env("DEADDROP_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json(String::from_utf8_lossy(&out.stdout).trim());
    let text = v["invite"].as_str().unwrap().to_owned();
    let rooms = std::fs::read_to_string(dir.path().join("rooms.json")).unwrap();
    assert!(rooms.contains(&text), "{rooms}");
    // The passphrase is nowhere in what is kept.
    let out = Command::new(bin())
        .args(["join", &text, "--name", "office"])
        .env("DEADDROP_CONFIG_DIR", dir.path())
        .env("DEADDROP_ROOM", "secret123")
        .output()
        .unwrap();
    assert_ok(&out);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"secret123"));
    }
    // A damaged invite: a usage error that says so, before anything starts.
    let mut broken = text.clone();
    broken.truncate(text.len() - 3);
    let out = Room::new("secret123")
        .cmd(&["list", "--invite", &broken])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown room name says which are kept.
    let out = Room::new("secret123")
        .cmd(&["list", "--joined", "nowhere"])
        .env("DEADDROP_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("home") && err.contains("office"), "{err}");
    // Plain HTTP relays are refused.
    let out = Command::new(bin())
        .args(["invite", "--relay", "http://127.0.0.1:9"])
        .env("DEADDROP_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// One device's processes share its endpoint id. A receiver that was still dialling a sender
/// that has just exited must not hold up the same device's next sender behind that dead dial
/// (it once waited for the dial's handshake timeout, 5 s, or for QUIC's retransmissions to
/// reach the new process): senders leave the room when they exit, and a dial gives up when
/// the meeting point no longer lists the process it was for.
#[test]
fn a_devices_next_sender_is_not_held_up_by_its_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a, b) = (
        dir.path().join("relay"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite(&a, &relay.url);
    let mut run = Proc::spawn(member(
        "secret123",
        &invite,
        &a,
        &["run", "--json", "--no-files", "-v"],
    ));
    run.wait_event(T, "listening").unwrap();
    for i in 0..4 {
        let text = format!("message {i}");
        let mut send = Proc::spawn(member(
            "secret123",
            &invite,
            &b,
            &["send-msg", "--ttl", "60s", &text],
        ));
        let m = run
            .wait_event(T, "message")
            .unwrap_or_else(|| panic!("no message {i}: {}", run.stderr()));
        assert_eq!(m["text"], text.as_str());
        assert!(send.wait(T).success(), "{}", send.stderr());
    }
    let log = run.stderr();
    assert!(
        !log.contains("timed out"),
        "the receiver waited on a sender that had gone: {log}"
    );
    drop(relay);
}

/// Waits until `proc`'s log (stderr) says `what`.
fn wait_log(proc: &Proc, what: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if proc.stderr().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Someone with the invite but not the passphrase (a wrong one), once it holds the room's
/// meeting point: its handshake fails for every member that dials it.
fn squatter(invite: &str, config: &Path) -> Proc {
    let squatter = Proc::spawn(member(
        "wrong guess",
        invite,
        config,
        &["run", "--no-files", "-v"],
    ));
    assert!(
        wait_log(&squatter, "holding the room's meeting point", T),
        "{}",
        squatter.stderr()
    );
    squatter
}

/// Someone with the invite but not the passphrase holds the room's meeting point (here the
/// first to come after the members left, with a wrong passphrase: its handshake fails for
/// everyone else). Members that met before still find each other, at their own meeting points
/// on their device endpoints; without them the sender would wait 30 s to 10 minutes between
/// tries at the squatter and the message would never arrive.
#[test]
fn members_met_before_find_each_other_past_a_squatted_meeting_point() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a, b, s) = (
        dir.path().join("relay"),
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("s"),
    );
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite(&a, &relay.url);
    let receiver = || {
        let mut run = Proc::spawn(member(
            "secret123",
            &invite,
            &a,
            &["run", "--json", "--no-files", "-v"],
        ));
        run.wait_event(T, "listening").unwrap();
        run
    };
    let send = |text: &str| {
        Proc::spawn(member(
            "secret123",
            &invite,
            &b,
            &["send-msg", "--ttl", "60s", text],
        ))
    };

    // They meet once, at the room's meeting point, and remember each other.
    let mut run = receiver();
    let mut first = send("first");
    let m = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no first message: {}", run.stderr()));
    assert_eq!(m["text"], "first");
    assert!(first.wait(T).success(), "{}", first.stderr());
    let kept = |config: &Path| {
        std::fs::read_dir(config.join("peers")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
    };
    assert_eq!(kept(&a), 1, "the receiver keeps the members it met");
    assert_eq!(kept(&b), 1, "the sender keeps the members it met");
    drop(run);

    // The squatter takes the meeting key while nobody holds it.
    let squatter = squatter(&invite, &s);

    // The receiver comes back and fails the handshake at the meeting point...
    let mut run = receiver();
    assert!(
        wait_log(&run, "fails the room handshake", T),
        "{}",
        run.stderr()
    );
    // ...and so does the sender, which then finds the receiver where it met it before.
    let mut second = send("second");
    let m = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no second message: {}", run.stderr()));
    assert_eq!(m["text"], "second");
    assert!(second.wait(T).success(), "{}", second.stderr());
    drop(squatter);
    drop(relay);
}

/// An invite made with `--this-device` names the inviting device: members that never met find
/// each other through that device's own meeting point while a squatter holds the room's.
#[test]
fn members_that_never_met_find_each_other_through_the_device_an_invite_names() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a, b, s) = (
        dir.path().join("relay"),
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("s"),
    );
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite_with(&a, &relay.url, &["--this-device"]);

    // The squatter takes the meeting key before any member comes.
    let squatter = squatter(&invite, &s);

    // The inviting device runs the room; a sender that has never met a member fails the
    // handshake at the room's meeting point and finds the receiver through the invite.
    let mut run = Proc::spawn(member(
        "secret123",
        &invite,
        &a,
        &["run", "--json", "--no-files", "-v"],
    ));
    run.wait_event(T, "listening").unwrap();
    let mut send = Proc::spawn(member(
        "secret123",
        &invite,
        &b,
        &["send-msg", "--ttl", "60s", "-v", "hello"],
    ));
    let m = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no message: {}\n{}", run.stderr(), send.stderr()));
    assert_eq!(m["text"], "hello");
    assert!(send.wait(T).success(), "{}", send.stderr());
    assert!(
        send.stderr()
            .contains("fails the room handshake; meeting at 1 members met before"),
        "{}",
        send.stderr()
    );
    drop(squatter);
    drop(relay);
}

#[test]
fn doctor_with_an_invite_checks_the_relay_and_the_meeting_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::on_loopback(&dir.path().join("relay"));
    let invite = invite(&dir.path().join("a"), &relay.url);
    let doctor = |pass: &str| {
        let out = member(
            pass,
            &invite,
            &dir.path().join("doctor"),
            &["doctor", "--json", "--wait", "300ms"],
        )
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
        let report: serde_json::Value = serde_json::from_str(line).unwrap();
        (report, out.status.code())
    };
    // Nobody online: the relay answers, nobody holds the meeting point.
    let (r, _) = doctor("secret123");
    let w = &r["wide"];
    assert_eq!(w["relay_port_open"], true, "{r}");
    assert!(w["relay_connected_ms"].is_u64(), "{r}");
    assert_eq!(w["meeting_point"], "no_answer", "{r}");

    // A member online holds it: the room handshake succeeds there, and fails with another
    // passphrase.
    let mut run = Proc::spawn(member(
        "secret123",
        &invite,
        &dir.path().join("b"),
        &["run", "--json"],
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (r, _) = doctor("secret123");
        if r["wide"]["meeting_point"] == "member" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the member's meeting point never answers: {r}\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (r, code) = doctor("another passphrase");
    assert_eq!(r["wide"]["meeting_point"], "rejected", "{r}");
    assert_eq!(code, Some(7), "a problem: {r}");
    run.interrupt();
    run.wait(T);

    // The relay gone: its port is closed, and the report says what to do.
    let _ = relay.proc.child.kill();
    let _ = relay.proc.child.wait();
    let (r, code) = doctor("secret123");
    let w = &r["wide"];
    assert_eq!(w["relay_port_open"], false, "{r}");
    assert!(w["relay_connected_ms"].is_null(), "{r}");
    assert_eq!(w["meeting_point"], "not_checked", "{r}");
    assert_eq!(code, Some(7), "{r}");
    let findings = r["findings"].to_string();
    assert!(findings.contains("does not take connections"), "{findings}");
}

/// What one attacker connection got a member to take: streams opened and bytes accepted.
struct Stuffed {
    conn: iroh::endpoint::Connection,
    _endpoint: iroh::Endpoint,
    streams: usize,
    bytes: u64,
}

/// An invite holder without the passphrase (a fresh endpoint key) opens `conns` connections to
/// the member whose device endpoint is `victim` (ALPN `deaddrop/1`), and on each opens up to
/// 100 streams with 1.2 MB each, never a ClientHello.
async fn stuff_streams(invite: &str, victim: [u8; 32], conns: usize) -> Vec<Stuffed> {
    use deaddrop::wide::invite::Invite;
    use deaddrop::wide::room::{ALPN_SESSION, endpoint, member_addr};
    let invite = Invite::from_text(invite).unwrap();
    let mut out = Vec::new();
    for _ in 0..conns {
        let key = iroh::SecretKey::from_bytes(&deaddrop::protocol::id::random_array());
        let ep = endpoint(&invite, &["127.0.0.1".parse().unwrap()], key, Vec::new())
            .await
            .unwrap();
        let addr = member_addr(&invite, victim).unwrap();
        let conn = tokio::time::timeout(T, ep.connect(addr, ALPN_SESSION))
            .await
            .expect("the member answers in time")
            .expect("the member takes the connection");
        let (mut streams, mut writers) = (0, tokio::task::JoinSet::new());
        for _ in 0..100 {
            let Ok(Ok((mut send, recv))) =
                tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await
            else {
                break;
            };
            streams += 1;
            writers.spawn(async move {
                let _recv = recv;
                let chunk = vec![0x5a; 64 * 1024];
                let mut sent = 0u64;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                while sent < 1_200_000 {
                    match tokio::time::timeout_at(deadline, send.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len() as u64,
                        _ => break,
                    }
                }
                // Held open (not finished) until the connection goes.
                std::mem::forget(send);
                sent
            });
        }
        let mut bytes = 0;
        while let Some(sent) = writers.join_next().await {
            bytes += sent.unwrap_or(0);
        }
        out.push(Stuffed {
            conn,
            _endpoint: ep,
            streams,
            bytes,
        });
    }
    out
}

#[test]
fn regression_an_invite_holder_cannot_stuff_a_members_streams() {
    // Review finding (issue 26.6): with an invite but not the passphrase, a stranger who learned
    // a member's device endpoint id could open connections to it, fill up to 100 streams with
    // 1.2 MB each (no connection-wide cap) and never send a ClientHello; `run` never took such
    // connections off its queue, so they stayed open as long as the stranger kept them alive.
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a, b) = (
        dir.path().join("relay"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite(&a, &relay.url);
    let mut run = Proc::spawn(member(
        "secret123",
        &invite,
        &a,
        &["run", "--json", "--no-files"],
    ));
    run.wait_event(T, "listening").unwrap();
    let victim = deaddrop::wide::config::device_id(&a).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stuffed = rt.block_on(stuff_streams(&invite, victim, 8));
    let streams: usize = stuffed.iter().map(|s| s.streams).sum();
    let bytes: u64 = stuffed.iter().map(|s| s.bytes).sum();
    // While the connections are held, a member still gets its message through.
    let start = std::time::Instant::now();
    let mut send = Proc::spawn(member(
        "secret123",
        &invite,
        &b,
        &["send-msg", "--json", "--ttl", "60s", "through the stuffing"],
    ));
    let msg = run
        .wait_event(T, "message")
        .unwrap_or_else(|| panic!("no message; receiver: {}", run.stderr()));
    let took = start.elapsed();
    assert_eq!(msg["text"], "through the stuffing");
    assert_eq!(send.wait(T).code(), Some(0));
    // The member closes connections that never sent a ClientHello.
    let open = rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stuffed
            .iter()
            .filter(|s| s.conn.close_reason().is_none())
            .count()
    });
    let rss = crate::hostile::peak_rss_kib(&run);
    eprintln!(
        "figure: 8 stuffing connections: {streams} streams opened, {bytes} bytes taken, {open} still open; message in {took:?}; run peak RSS {rss} KiB"
    );
    assert!(
        streams <= 8 * 2,
        "{streams} streams opened on 8 connections"
    );
    assert!(
        bytes <= 8 * 1_400_000,
        "{bytes} bytes taken from 8 connections"
    );
    assert_eq!(open, 0, "connections without a ClientHello stayed open");
    assert!(rss < 64 * 1024, "run peaked at {rss} KiB");
    drop(stuffed);
}

/// How many of an attacker's connections to a relay have finished TLS and are still open.
#[derive(Default)]
struct Held {
    made: std::sync::atomic::AtomicUsize,
    /// Since when each open connection has been open, by its number.
    since: std::sync::Mutex<std::collections::HashMap<usize, std::time::Instant>>,
}

impl Held {
    fn open(&self) -> usize {
        self.since.lock().unwrap().len()
    }

    /// How long the oldest connection still open has been open.
    fn oldest(&self) -> Duration {
        let since = self.since.lock().unwrap();
        since
            .values()
            .map(|t| t.elapsed())
            .max()
            .unwrap_or_default()
    }
}

/// A stranger holds `count` connections to the relay at `addr` from the address `from`: each
/// finishes TLS (the pinned certificate) and then sends nothing (even ones) or a WebSocket
/// upgrade to `/relay` and then nothing (odd ones: iroh's relay handshake waits after the
/// upgrade). A connection that is closed is opened again a quarter of a second later, until
/// `stop`.
fn hold_relay_handshakes(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    pin: [u8; 32],
    from: std::net::IpAddr,
    count: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::Arc<Held> {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(deaddrop::wide::relay::PinnedCert::new(
            pin, provider,
        )))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let held = Arc::new(Held::default());
    for i in 0..count {
        let (connector, held, stop) = (connector.clone(), held.clone(), stop.clone());
        rt.spawn(async move {
            while !stop.load(Relaxed) {
                let attempt = async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind((from, 0).into())?;
                    let tcp = socket.connect(addr).await?;
                    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
                    let mut tls = connector.connect(name, tcp).await?;
                    if i % 2 == 1 {
                        tls.write_all(
                            b"GET /relay HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: iroh-relay-v2\r\n\r\n",
                        )
                        .await?;
                    }
                    held.made.fetch_add(1, Relaxed);
                    held.since.lock().unwrap().insert(i, std::time::Instant::now());
                    let mut buf = [0u8; 4096];
                    while !matches!(tls.read(&mut buf).await, Ok(0) | Err(_)) {}
                    held.since.lock().unwrap().remove(&i);
                    std::io::Result::Ok(())
                };
                let _ = attempt.await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    held
}

/// Issue 26.5: connections that finish TLS and then say nothing (or ask for the WebSocket
/// upgrade and then say nothing) must not take a relay's file descriptors and handshake slots
/// from real clients. 1,100 of them from one address, reopened as they are closed, against a
/// relay limited to 1,024 open files (a service's usual soft limit): a real client (doctor's
/// relay check, from another address) still connects within 2 s, the relay stays under
/// 100 MiB, and it keeps at most its per-address share of unfinished handshakes open. Before
/// the fix the relay held all of them until iroh's 30 s establish timeout (the upgraded ones
/// with no timeout at all) and, out of descriptors, could accept nobody else.
#[test]
fn regression_silent_connections_cannot_take_a_relays_handshake_slots() {
    use std::os::unix::process::CommandExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin());
    cmd.args(["relay", "--bind", &format!("127.0.0.1:{port}")])
        .env("DEADDROP_CONFIG_DIR", dir.path().join("relay"));
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let relay = TestRelay::spawn(cmd);
    let invite = invite(&dir.path().join("a"), &relay.url);
    let pin = match deaddrop::wide::invite::parse_relay(&relay.url).unwrap() {
        deaddrop::wide::invite::Relay::Url { pin, .. } => pin.expect("the URL pins"),
        other => panic!("{other:?}"),
    };

    // The attacker needs 1,000 descriptors of its own: raise this process's soft limit.
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut l = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();
    let held = hold_relay_handshakes(
        &rt,
        ([127, 0, 0, 1], port).into(),
        pin,
        [127, 0, 0, 2].into(),
        1100,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(4));

    let out = member(
        "secret123",
        &invite,
        &dir.path().join("doctor"),
        &["doctor", "--json", "--wait", "300ms"],
    )
    .output()
    .unwrap();
    let open_at_doctor = held.open();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
    // Every one is shut once its time to finish the handshake is up, upgraded or not.
    let limit = deaddrop::wide::relay::ESTABLISH_TIME + Duration::from_secs(2);
    std::thread::sleep(limit.saturating_sub(started.elapsed()) + Duration::from_secs(1));
    let oldest = held.oldest();
    let rss = crate::hostile::peak_rss_kib(&relay.proc);
    stop.store(true, Relaxed);
    let made = held.made.load(Relaxed);
    drop(rt);
    let connected = report["wide"]["relay_connected_ms"].as_u64();
    eprintln!(
        "figure: 1,100 silent connections from one address: {open_at_doctor} held open at once \
         ({made} made in all), the oldest open for {oldest:?}; a real client connected in \
         {connected:?} ms; relay peak RSS {rss} KiB"
    );
    let connected = connected.unwrap_or_else(|| panic!("a real client is relayed: {report}"));
    assert!(connected < 2000, "a real client took {connected} ms");
    assert!(rss < 100 * 1024, "the relay peaked at {rss} KiB");
    assert!(
        open_at_doctor <= deaddrop::wide::relay::UNFINISHED_PER_SOURCE,
        "{open_at_doctor} unfinished handshakes from one address held open"
    );
    assert!(
        oldest < limit,
        "a silent connection was held for {oldest:?}"
    );
}

/// What a stranger holding the room's meeting key saw of one member's connection to it.
#[derive(Debug)]
struct Seen {
    /// The endpoint id the connection came from.
    from: [u8; 32],
    /// Whether the connection ever had a direct (IP) path: the member's address.
    direct: bool,
    /// Whether the member sent a ClientHello.
    hello: bool,
}

/// Holds the room's meeting key with `wrong` for a passphrase and records every connection
/// made to it: who it came from and whether it went direct. Each stream's ClientHello is held
/// 2.5 s (iroh punches a hole on loopback within milliseconds) before the wrong answer.
async fn squat(
    invite: String,
    wrong: &'static str,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
) {
    use deaddrop::protocol::secret::Passphrase;
    use deaddrop::session::transport::{self, Timeouts};
    use deaddrop::wide::invite::Invite;
    use deaddrop::wide::room::{ALPN_MEET, WideLink, endpoint};
    let invite = Invite::from_text(&invite).unwrap();
    let key = iroh::SecretKey::from_bytes(&invite.room.meeting_secret());
    let ep = endpoint(
        &invite,
        &["127.0.0.1".parse().unwrap()],
        key,
        vec![ALPN_MEET.to_vec()],
    )
    .await
    .unwrap();
    let pass = std::sync::Arc::new(Passphrase::new(wrong.into()).unwrap());
    while let Some(incoming) = ep.accept().await {
        let (seen, pass) = (seen.clone(), pass.clone());
        tokio::spawn(async move {
            let Ok(Ok(conn)) = tokio::time::timeout(T, async { incoming.await }).await else {
                return;
            };
            let Ok(Ok((send, recv))) = tokio::time::timeout(T, conn.accept_bi()).await else {
                return;
            };
            let mut link = WideLink::new(conn.clone(), send, recv);
            let t = Timeouts::default();
            let hello = transport::read_client_hello(&mut link, t.handshake).await;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let direct = conn.paths().iter().any(|p| p.is_ip());
            seen.lock().unwrap().push(Seen {
                from: *conn.remote_id().as_bytes(),
                direct,
                hello: hello.is_ok(),
            });
            if let Ok(hello) = hello {
                let _ = transport::accept(
                    link,
                    &hello,
                    &pass,
                    deaddrop::protocol::id::PeerId::random(),
                    t,
                )
                .await;
            }
        });
    }
}

/// Issue 26.7: someone with the invite but not the passphrase binds the meeting key before
/// anyone else. Members dialled it from their device endpoint, so it learned each member's
/// device endpoint id (the same in every room of that device, and the one to dial for
/// sessions) and, by hole punching, its addresses, before the room handshake failed. Now
/// members dial meeting points from a throwaway relay-only endpoint and prove their device
/// endpoint only inside the session: the squatter sees neither.
#[test]
fn regression_a_meeting_point_squatter_learns_no_device_endpoint_and_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_cfg, a) = (dir.path().join("relay"), dir.path().join("a"));
    let relay = TestRelay::on_loopback(&relay_cfg);
    let invite = invite(&a, &relay.url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    rt.spawn(squat(invite.clone(), "wrong guess", seen.clone()));
    // The squatter's endpoint has the relay (and so the meeting id) before the member comes.
    std::thread::sleep(Duration::from_secs(2));
    let run = Proc::spawn(member(
        "secret123",
        &invite,
        &a,
        &["run", "--no-files", "-v"],
    ));
    let deadline = std::time::Instant::now() + T;
    while seen.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never dialled the squatter: {}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let device = deaddrop::wide::config::device_id(&a).unwrap();
    let seen = seen.lock().unwrap();
    eprintln!(
        "figure: the squatter saw {} connection(s): device endpoint id {}, direct path {}",
        seen.len(),
        seen.iter().any(|s| s.from == device),
        seen.iter().any(|s| s.direct)
    );
    assert!(
        seen.iter().any(|s| s.hello),
        "the squatter got no ClientHello: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.from != device),
        "the squatter learned the member's device endpoint id"
    );
    assert!(
        seen.iter().all(|s| !s.direct),
        "the squatter got a direct path (the member's address): {seen:?}"
    );
}
