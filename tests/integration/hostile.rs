//! Attacks from a peer without the passphrase, each asserting what a user would check: the real
//! drop still arrives, once; memory stays bounded; guesses are held to the documented rate;
//! nothing is fetched or burned without the passphrase. The attacker is `examples/hostile.rs`,
//! sending from its own loopback addresses (127.0.0.6x), as a separate host would.

use std::thread;
use std::time::Duration;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use crate::relay::{Mode, Relay};
use crate::util::{Proc, Room, free_port};

#[allow(dead_code)]
#[path = "../../examples/hostile.rs"]
mod program;

const T: Duration = Duration::from_secs(20);
/// The memory budget each side must stay under, whatever is thrown at it.
const MAX_RSS_KIB: u64 = 32 * 1024;

fn attack(args: &[&str]) -> serde_json::Value {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    program::run(&args).expect("a known attack")
}

/// Peak resident memory of a running process, from /proc.
fn peak_rss_kib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn receiver(room: &Room) -> Proc {
    let dir = std::env::temp_dir();
    let mut r = Proc::spawn(room.cmd(&[
        "run",
        "--json",
        "--no-files",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    r.wait_event(T, "listening").unwrap();
    r
}

fn messages(lines: &[String], text: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("\"message\"") && l.contains(text))
        .count()
}

#[test]
fn a_drop_arrives_once_through_a_flood_of_fake_and_garbage_announcements() {
    let room = Room::new("secret123");
    let mut r = receiver(&room);
    let to = format!("127.255.255.255:{}", room.port);
    let flood = {
        let to = to.clone();
        thread::spawn(move || {
            let fake = attack(&[
                "announce",
                "--to",
                &to,
                "--from",
                "127.0.0.61",
                "--ids",
                "10000",
                "--count",
                "100000",
            ]);
            let junk = attack(&[
                "garbage",
                "--to",
                &to,
                "--from",
                "127.0.0.62",
                "--count",
                "50000",
            ]);
            (fake, junk)
        })
    };
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--json", "--ttl", "15s", "through the flood"]));
    let msg = r
        .wait_event(T, "message")
        .expect("delivered during the flood");
    assert_eq!(msg["text"], "through the flood");
    let (fake, junk) = flood.join().unwrap();
    assert_eq!(
        (fake["sent"].as_u64(), junk["sent"].as_u64()),
        (Some(100_000), Some(50_000))
    );
    assert_eq!(s.wait(T).code(), Some(0));
    let lines = r.drain(Duration::from_millis(500));
    assert_eq!(messages(&lines, "through the flood"), 1, "shown once only");
    let rss = peak_rss_kib(&r);
    eprintln!(
        "figure: receiver peak RSS {rss} KiB under 100k fake announcements and 50k garbage datagrams"
    );
    assert!(
        rss < MAX_RSS_KIB,
        "receiver peaked at {rss} KiB under the flood"
    );
}

#[test]
fn guesses_are_held_to_the_documented_rate_and_burn_nothing() {
    let room = Room::new("secret123");
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--json", "--ttl", "30s", "guarded"]));
    let offered = s.wait_event(T, "offered").unwrap();
    let to = offered["address"].as_str().unwrap().to_owned();
    let g = attack(&[
        "guess",
        "--to",
        &to,
        "--from",
        "127.0.0.63",
        "--count",
        "40",
    ]);
    let (answered, secs) = (
        g["answered"].as_u64().unwrap(),
        g["seconds"].as_f64().unwrap(),
    );
    // 10 at once, then 1 per second (SECURITY.md).
    let allowed = 10 + secs.ceil() as u64 + 1;
    eprintln!("figure: {answered} of 40 guesses answered in {secs:.2} s");
    assert!(
        (10..=allowed).contains(&answered),
        "{answered} guesses answered in {secs:.1} s; allowed {allowed}"
    );
    assert!(g["cut"].as_u64().unwrap() >= 40 - allowed);
    // Nothing was burned: a member still gets it.
    let out = room
        .cmd(&["fetch", "--wait", "3s", offered["token"].as_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"guarded",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn silent_and_half_open_connections_do_not_block_a_delivery() {
    let room = Room::new("secret123");
    let mut s = Proc::spawn(room.cmd(&[
        "send-msg",
        "--json",
        "--everyone",
        "--ttl",
        "12s",
        "still here",
    ]));
    let offered = s.wait_event(T, "offered").unwrap();
    let to = offered["address"].as_str().unwrap().to_owned();
    let (to1, to2) = (to.clone(), to.clone());
    let silent = thread::spawn(move || {
        attack(&[
            "silent",
            "--to",
            &to1,
            "--from",
            "127.0.0.64",
            "--count",
            "200",
            "--hold",
            "7",
        ])
    });
    let half = thread::spawn(move || {
        attack(&[
            "half",
            "--to",
            &to2,
            "--from",
            "127.0.0.65",
            "--count",
            "100",
            "--hold",
            "7",
        ])
    });
    thread::sleep(Duration::from_millis(500));
    let mut r = receiver(&room);
    assert_eq!(
        r.wait_event(T, "message")
            .expect("delivered during the attack")["text"],
        "still here"
    );
    let (silent, half) = (silent.join().unwrap(), half.join().unwrap());
    // Every connection was closed by the holder: past 16 per address at once, and the rest by
    // the 5 s handshake timeout.
    assert_eq!(silent["closed_by_peer"], silent["opened"], "{silent}");
    assert_eq!(half["closed_by_peer"], half["opened"], "{half}");
    let rss = peak_rss_kib(&s);
    eprintln!("figure: sender peak RSS {rss} KiB; silent {silent}; half {half}");
    assert!(
        rss < MAX_RSS_KIB,
        "sender peaked at {rss} KiB under the attack"
    );
    s.interrupt();
    s.wait(T);
}

#[test]
fn replayed_announcements_show_nothing_twice() {
    let room = Room::new("secret123");
    let mut r = receiver(&room);
    let recording = tempfile::NamedTempFile::new().unwrap();
    let path = recording.path().to_str().unwrap().to_owned();
    let port = room.port.to_string();
    let recorder = thread::spawn(move || {
        attack(&["record", "--listen", &port, "--count", "3", "--out", &path])
    });
    let mut s = Proc::spawn(room.cmd(&[
        "send-msg",
        "--json",
        "--everyone",
        "--ttl",
        "5s",
        "only once",
    ]));
    assert_eq!(r.wait_event(T, "message").unwrap()["text"], "only once");
    assert_eq!(recorder.join().unwrap()["recorded"], 3);
    let to = format!("127.255.255.255:{}", room.port);
    let replayed = attack(&[
        "replay-udp",
        "--to",
        &to,
        "--from",
        "127.0.0.66",
        "--in",
        recording.path().to_str().unwrap(),
        "--times",
        "200",
    ]);
    assert_eq!(replayed["sent"], 600);
    assert_eq!(s.wait(T).code(), Some(0));
    // After the drop expired, replay the old announcements again: still nothing new.
    attack(&[
        "replay-udp",
        "--to",
        &to,
        "--in",
        recording.path().to_str().unwrap(),
        "--times",
        "50",
    ]);
    let lines = r.drain(Duration::from_secs(1));
    assert_eq!(messages(&lines, "only once"), 1, "{lines:?}");
}

#[test]
fn a_token_cannot_be_claimed_or_burned_without_the_passphrase() {
    let room = Room::new("secret123");
    let mut s = Proc::spawn(room.cmd(&["send-msg", "--json", "--ttl", "20s", "not yours"]));
    let offered = s.wait_event(T, "offered").unwrap();
    let (to, token) = (
        offered["address"].as_str().unwrap(),
        offered["token"].as_str().unwrap(),
    );
    let claim = attack(&[
        "claim",
        "--to",
        to,
        "--from",
        "127.0.0.67",
        "--token",
        token,
    ]);
    assert_eq!(claim["closed_without_content"], true);
    let big = attack(&["oversized", "--to", to, "--from", "127.0.0.67"]);
    assert_eq!(big["closed"], true);
    let out = room.cmd(&["fetch", token]).output().unwrap();
    assert_eq!(out.stdout, b"not yours", "still there for a member");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
fn a_recorded_session_replayed_to_the_holder_gets_nothing() {
    let room = Room::new("secret123");
    let watched = Room {
        pass: room.pass.clone(),
        port: free_port(),
    };
    let copy = Arc::new(Mutex::new(Vec::new()));
    let _relay = Relay::start(room.port, watched.port, Mode::RecordClient(copy.clone()));
    let mut s = Proc::spawn(room.cmd(&[
        "send-msg",
        "--json",
        "--max-fetches",
        "2",
        "--ttl",
        "20s",
        "twice at most",
    ]));
    let offered = s.wait_event(T, "offered").unwrap();
    let (to, token) = (
        offered["address"].as_str().unwrap().to_owned(),
        offered["token"].as_str().unwrap().to_owned(),
    );
    // A member fetches through the eavesdropper, which records every byte it sent.
    let out = watched.cmd(&["fetch", &token]).output().unwrap();
    assert_eq!(
        out.stdout,
        b"twice at most",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = copy.lock().unwrap().clone();
    assert!(recorded.len() > 100, "recorded {} bytes", recorded.len());
    // The attacker replays the member's bytes to the holder, twice.
    for _ in 0..2 {
        let mut c = std::net::TcpStream::connect(&to).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&recorded).unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        // A fresh ServerHello (length-prefixed, 114 bytes) and nothing after it.
        assert!(
            answer.len() <= 2 + 114,
            "the holder said more than its hello: {} bytes",
            answer.len()
        );
    }
    // The replays counted nothing: exactly one fetch so far, and a second member still gets it.
    let out = room.cmd(&["fetch", &token]).output().unwrap();
    assert_eq!(out.stdout, b"twice at most");
    assert_eq!(s.wait(T).code(), Some(0));
    let fetched = s
        .drain(Duration::ZERO)
        .iter()
        .filter(|l| l.contains("\"fetched\""))
        .count();
    assert_eq!(fetched, 2);
}
