//! `--legacy`: interop with the original script's protocol, against Python's `cryptography` and a
//! Python stand-in written from the protocol facts (tests/legacy/standin.py). Loopback only.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use deaddrop::legacy::{fernet, wire};
use deaddrop::protocol::secret::Passphrase;

use crate::files::data;
use crate::util::{Proc, Room, assert_ok, json};

const T: Duration = Duration::from_secs(20);

/// The stand-in, if Python and its `cryptography` package are here (CI installs them).
fn standin(args: &[&str]) -> Option<Command> {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install python3 and its cryptography package"
        );
        eprintln!(
            "skipping legacy interop test: python3 with the cryptography package is not installed"
        );
        return None;
    }
    let mut c = Command::new("python3");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/legacy/standin.py"
    ))
    .args(args);
    Some(c)
}

fn py(args: &[&str]) -> Option<String> {
    let out = standin(args)?.output().unwrap();
    assert!(
        out.status.success(),
        "standin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.into()).unwrap()
}

/// The stand-in offering `bytes` as the file `name` in `room`; returns it and its folder.
fn standin_serves_file(room: &Room, name: &str, bytes: &[u8]) -> Option<(Proc, tempfile::TempDir)> {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join(name);
    fs::write(&path, bytes).unwrap();
    let port = room.port.to_string();
    let serve = standin(&[
        "serve",
        "--room",
        &room.pass,
        "--udp-port",
        &port,
        "--file",
        path.to_str().unwrap(),
    ])?;
    Some((Proc::spawn(serve), src))
}

/// The TCP port in an `offered` event's address.
fn tcp_port(offered: &serde_json::Value) -> String {
    offered["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned()
}

/// `deaddrop ... --legacy` in `room`, confined to loopback on the room's port.
fn ours(room: &Room, args: &[&str]) -> Command {
    let mut all = args.to_vec();
    all.push("--legacy");
    room.cmd(&all)
}

#[test]
fn fernet_scrypt_and_room_ids_agree_with_pythons_cryptography() {
    let Some(room_id) = py(&["room-id", "--room", "secret123"]) else {
        return;
    };
    assert_eq!(room_id, wire::room_id(&pass("secret123")));
    // scrypt keys, derived both ways.
    let salt = [7u8; 16];
    let theirs = py(&[
        "scrypt-key",
        "--room",
        "correct horse",
        "--salt-hex",
        &"07".repeat(16),
    ])
    .unwrap();
    let ours = fernet::Key::derive(&pass("correct horse"), &salt);
    assert_eq!(theirs, ours.to_base64());
    // Tokens made there decrypt here...
    let token = py(&[
        "fernet-encrypt",
        "--key",
        &theirs,
        "--data",
        "from python ✓",
    ])
    .unwrap();
    assert_eq!(
        ours.decrypt(token.as_bytes(), 0, None).unwrap(),
        "from python ✓".as_bytes()
    );
    // ...and tokens made here decrypt there.
    let token = ours.encrypt_now("from rust ✓".as_bytes());
    assert_eq!(
        py(&["fernet-decrypt", "--key", &theirs, "--data", &token]).unwrap(),
        "from rust ✓"
    );
    // Whole payloads (salt + token), both ways.
    let payload = py(&["seal", "--room", "secret123", "--text", "sealed in python"]).unwrap();
    let payload: Vec<u8> = (0..payload.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        wire::open_payload(&pass("secret123"), &payload).unwrap(),
        b"sealed in python"
    );
    let payload = wire::seal_payload(&pass("secret123"), b"sealed in rust");
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        py(&["unseal", "--room", "secret123", "--payload-hex", &hex]).unwrap(),
        "sealed in rust"
    );
}

#[test]
fn run_legacy_takes_messages_and_files_from_an_original_sender() {
    let Some(mut serve_msg) = standin(&[]) else {
        return;
    };
    let room = Room::new("secret123");
    let dst = tempfile::tempdir().unwrap();
    let mut r = Proc::spawn(ours(
        &room,
        &["run", "--json", "--dir", dst.path().to_str().unwrap()],
    ));
    let warning = r.wait_event(T, "warning").expect("the legacy warning");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("test passphrase guesses offline")
    );
    r.wait_event(T, "listening").unwrap();
    let port = room.port.to_string();
    serve_msg.args([
        "serve",
        "--room",
        "secret123",
        "--udp-port",
        &port,
        "--msg",
        "hello from the script",
    ]);
    let mut s = Proc::spawn(serve_msg);
    let msg = r
        .wait_event(T, "message")
        .expect("message from the original");
    assert_eq!(msg["text"], "hello from the script");
    assert_eq!(
        s.wait(T).code(),
        Some(0),
        "the stand-in saw its drop fetched"
    );
    // A file, with a name that needs sanitizing.
    let bytes = data(3 << 20, 11);
    let (mut s, _src) = standin_serves_file(&room, "notes\u{202e}.txt", &bytes).unwrap();
    let got = r.wait_event(T, "received").expect("file from the original");
    assert_eq!(
        got["path"].as_str().unwrap(),
        dst.path().join("notes_.txt").to_str().unwrap()
    );
    assert!(fs::read(dst.path().join("notes_.txt")).unwrap() == bytes);
    assert_eq!(s.wait(T).code(), Some(0));
    // The warning was printed once.
    let all = r.drain(Duration::from_millis(200));
    assert_eq!(all.iter().filter(|l| l.contains("\"warning\"")).count(), 1);
}

#[test]
fn an_original_receiver_gets_our_legacy_message() {
    let Some(mut recv) = standin(&[]) else { return };
    let room = Room::new("secret123");
    recv.args([
        "receive",
        "--room",
        "secret123",
        "--udp-port",
        &room.port.to_string(),
    ]);
    let mut r = Proc::spawn(recv);
    std::thread::sleep(Duration::from_millis(400)); // let it bind before the one OFFER goes out
    let mut s = Proc::spawn(ours(&room, &["send-msg", "--json", "for the old script"]));
    let got = json(
        &r.wait_line(T, |l| l.contains("kind"))
            .expect("the stand-in printed the message"),
    );
    assert_eq!(got["text"], "for the old script");
    assert_eq!(s.wait(T).code(), Some(0), "{}", s.stderr());
    assert!(
        s.drain(Duration::ZERO)
            .iter()
            .any(|l| l.contains("\"fetched\""))
    );
}

#[test]
fn an_original_fetcher_gets_our_legacy_file_once() {
    let Some(_) = standin(&[]) else { return };
    let room = Room::new("secret123");
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("report.pdf");
    let bytes = data(2 << 20, 12);
    fs::write(&path, &bytes).unwrap();
    let mut s = Proc::spawn(ours(
        &room,
        &[
            "send-file",
            "--json",
            "--ttl",
            "20s",
            path.to_str().unwrap(),
        ],
    ));
    let offered = s.wait_event(T, "offered").unwrap();
    let token = offered["token"].as_str().unwrap().to_owned();
    let port = tcp_port(&offered);
    let out = src.path().join("fetched.pdf");
    let fetch = |out: &str| {
        py(&[
            "fetch",
            "--room",
            "secret123",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--token",
            &token,
            "--out",
            out,
        ])
    };
    let got = json(&fetch(out.to_str().unwrap()).unwrap());
    assert_eq!(got["name"], "report.pdf");
    assert!(fs::read(&out).unwrap() == bytes);
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn the_original_one_time_rule_holds() {
    let Some(_) = standin(&[]) else { return };
    let room = Room::new("secret123");
    let mut s = Proc::spawn(ours(&room, &["send-msg", "--json", "--ttl", "20s", "once"]));
    let offered = s.wait_event(T, "offered").unwrap();
    let token = offered["token"].as_str().unwrap().to_owned();
    let port = tcp_port(&offered);
    // A wrong token burns nothing.
    let wrong = standin(&[
        "fetch",
        "--room",
        "secret123",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--token",
        "nope",
    ])
    .unwrap()
    .output()
    .unwrap();
    assert_eq!(wrong.status.code(), Some(4));
    assert_eq!(
        json(String::from_utf8_lossy(&wrong.stdout).trim())["err"],
        "notfound"
    );
    let got = py(&[
        "fetch",
        "--room",
        "secret123",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--token",
        &token,
    ])
    .unwrap();
    assert_eq!(json(&got)["text"], "once");
    assert_eq!(s.wait(T).code(), Some(0));
    // Gone after its first fetch: the sender has exited, nobody answers.
    let again = standin(&[
        "fetch",
        "--room",
        "secret123",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--token",
        &token,
    ])
    .unwrap()
    .output()
    .unwrap();
    assert!(!again.status.success());
}

#[test]
fn fetch_legacy_finds_an_original_sender_by_its_hello() {
    let room = Room::new("secret123");
    let bytes = data(500_000, 13);
    let Some((mut s, _src)) = standin_serves_file(&room, "photo.jpg", &bytes) else {
        return;
    };
    let token = json(&s.wait_line(T, |_| true).unwrap())["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Started after the one OFFER went out: the sender is found through its HELLO (every 5 s).
    let dst = tempfile::tempdir().unwrap();
    let out = ours(
        &room,
        &[
            "fetch",
            "--wait",
            "8s",
            "--dir",
            dst.path().to_str().unwrap(),
            &token,
        ],
    )
    .output()
    .unwrap();
    assert_ok(&out);
    assert!(fs::read(dst.path().join("photo.jpg")).unwrap() == bytes);
    assert_eq!(s.wait(T).code(), Some(0));
    // And fetching it again finds nothing: exit 4.
    let out = ours(&room, &["fetch", "--wait", "1s", &token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn legacy_and_native_never_mix() {
    let Some(mut serve) = standin(&[]) else {
        return;
    };
    let room = Room::new("secret123");
    // A native receiver on the legacy port hears the stand-in's JSON and ignores it.
    let dir = tempfile::tempdir().unwrap();
    let mut native =
        Proc::spawn(room.cmd(&["run", "--json", "--dir", dir.path().to_str().unwrap()]));
    native.wait_event(T, "listening").unwrap();
    serve.args([
        "serve",
        "--room",
        "secret123",
        "--udp-port",
        &room.port.to_string(),
        "--msg",
        "legacy only",
        "--ttl",
        "2",
    ]);
    let mut s = Proc::spawn(serve);
    assert_eq!(s.wait(T).code(), Some(3), "nobody fetched it");
    let lines = native.drain(Duration::from_millis(200));
    assert!(
        !lines.iter().any(|l| l.contains("legacy only")),
        "{lines:?}"
    );
    // Legacy refuses what it cannot do, clearly, as a usage error.
    for (args, needle) in [
        (vec!["list"], "list is not available with --legacy"),
        (vec!["send-msg", "--everyone", "x"], "fetched once"),
        (vec!["run", "--peer", "127.0.0.1"], "only works for fetch"),
    ] {
        let out = ours(&room, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error: {args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_oversized_legacy_file_is_refused_before_its_payload_is_read() {
    if standin(&[]).is_none() {
        return;
    }
    let room = Room::new("secret123");
    let dst = tempfile::tempdir().unwrap();
    let mut r = Proc::spawn(ours(
        &room,
        &[
            "run",
            "--json",
            "--max-size",
            "1K",
            "--dir",
            dst.path().to_str().unwrap(),
        ],
    ));
    r.wait_event(T, "listening").unwrap();
    let (mut s, _src) = standin_serves_file(&room, "big.bin", &data(64 << 10, 14)).unwrap();
    let failed = r.wait_event(T, "fetch_failed").expect("refused");
    assert!(
        failed["reason"].as_str().unwrap().contains("over the cap"),
        "{failed}"
    );
    assert!(
        fs::read_dir(dst.path()).unwrap().next().is_none(),
        "nothing written"
    );
    s.wait(T);
}

#[test]
fn regression_an_outsider_declaring_a_huge_legacy_payload_cannot_abort_run() {
    // `run --legacy --max-size <large>` allocated the declared payload length before reading a
    // byte: an outsider's OFFER (the legacy room id is on the wire for anyone to copy) declaring
    // 150 GiB aborted the process. Files now stream to disk, checked for free space first.
    use deaddrop::legacy::wire::{Datagram, Kind as WireKind, Reply, room_id};
    use std::io::{BufRead, BufReader, Write};
    let room = Room::new("secret123");
    let dst = tempfile::tempdir().unwrap();
    let mut r = Proc::spawn(ours(
        &room,
        &[
            "run",
            "--json",
            "--max-size",
            "4T",
            "--dir",
            dst.path().to_str().unwrap(),
        ],
    ));
    r.wait_event(T, "listening").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        c.write_all(&Reply::ok(WireKind::File, "huge.bin").line())
            .unwrap();
        c.write_all(&(3u64 << 40).to_be_bytes()).unwrap();
        let _ = c.write_all(&[b'A'; 4096]);
        std::thread::sleep(Duration::from_secs(2));
    });
    let offer = Datagram::Offer {
        id: "f00d".into(),
        kind: WireKind::File,
        name: "huge.bin".into(),
        port,
        expires_at: 4e9,
        room: room_id(&pass(&room.pass)),
    };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_broadcast(true).unwrap();
    udp.send_to(&offer.encode(), ("127.255.255.255", room.port))
        .unwrap();
    let failed = r.wait_event(T, "fetch_failed").expect("refused");
    assert!(
        failed["reason"].as_str().unwrap().contains("disk space"),
        "{failed}"
    );
    fake.join().unwrap();
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "run --legacy is still running"
    );
    assert!(
        fs::read_dir(dst.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}
