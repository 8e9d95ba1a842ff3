//! A hostile peer, for tests and manual trials: everything an attacker on the LAN without the
//! passphrase can throw at deaddrop. Loopback and test namespaces only: it sends where it is
//! told and nowhere else.
//!
//! ```text
//! hostile garbage     --to ADDR:PORT --count N             datagrams of random bytes and sizes
//!                     (every command takes --from IP: the source address to attack from)
//! hostile announce    --to ADDR:PORT --ids N --count N     valid announcements from N fake ids
//! hostile silent      --to ADDR:PORT --count N --hold SECS connections that never speak
//! hostile half        --to ADDR:PORT --count N --hold SECS ClientHellos never finished
//! hostile guess       --to ADDR:PORT --count N [--pass P]  wrong-passphrase handshakes, full speed
//! hostile oversized   --to ADDR:PORT                       a 64 KiB handshake length, then data
//! hostile claim       --to ADDR:PORT --token T             fetch a token without the passphrase
//! hostile record      --listen PORT --count N --out FILE   record N announcements heard
//! hostile replay-udp  --to ADDR:PORT --in FILE             send recorded datagrams again
//! hostile replay-tcp  --to ADDR:PORT --in FILE             replay a recorded client session
//! ```
//! Prints one JSON line with what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use deaddrop::beacon::Beacon;
use deaddrop::handshake::Client;
use deaddrop::id::{PeerId, random_bytes};
use deaddrop::secret::Passphrase;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn target(args: &[String]) -> SocketAddr {
    let to = arg(args, "--to").expect("--to ADDR:PORT");
    let addr: SocketAddr = to.parse().expect("--to takes ADDR:PORT");
    assert!(
        addr.ip().is_loopback() || std::env::var_os("HOSTILE_ALLOW_NON_LOOPBACK").is_some(),
        "refusing to attack {addr}: loopback only (set HOSTILE_ALLOW_NON_LOOPBACK inside a test namespace)"
    );
    addr
}

/// The source address to attack from (`--from IP`, a loopback address in tests).
fn from(args: &[String]) -> std::net::IpAddr {
    arg(args, "--from")
        .map(|a| a.parse().expect("--from takes an IP"))
        .unwrap_or([0, 0, 0, 0].into())
}

fn udp(args: &[String]) -> UdpSocket {
    let s = UdpSocket::bind((from(args), 0)).unwrap();
    s.set_broadcast(true).unwrap();
    s
}

fn connect(args: &[String], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from(args), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

fn hello_frame(pass: &str) -> Vec<u8> {
    let pass = Passphrase::new(pass.into()).unwrap();
    let (_, hello) = Client::start(&pass, PeerId::random());
    let mut frame = (hello.len() as u16).to_be_bytes().to_vec();
    frame.extend(hello);
    frame
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Some(report) => println!("{report}"),
        None => {
            eprintln!(
                "{}",
                include_str!("hostile.rs")
                    .lines()
                    .take(16)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::process::exit(2);
        }
    }
}

/// Runs one attack; `None` for an unknown command. The integration tests call this directly.
pub fn run(args: &[String]) -> Option<serde_json::Value> {
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let start = Instant::now();
    Some(match cmd {
        "garbage" => {
            let (to, count, s) = (target(args), num(args, "--count", 10_000), udp(args));
            let mut buf = [0u8; 1500];
            for i in 0..count {
                let len = (i as usize * 7919) % buf.len();
                random_bytes(&mut buf[..len]);
                if i % 3 == 0 && len >= 6 {
                    buf[..6].copy_from_slice(b"DDRP\x01\x01"); // looks like ours, is not
                }
                let _ = s.send_to(&buf[..len], to);
            }
            serde_json::json!({"sent": count})
        }
        "announce" => {
            let (to, s) = (target(args), udp(args));
            let (ids, count) = (num(args, "--ids", 1000), num(args, "--count", 10_000));
            let port = num(args, "--port", 9) as u16;
            for i in 0..count {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i % ids).to_be_bytes());
                let b = Beacon::Announce {
                    id: PeerId(id),
                    port,
                    generation: i,
                };
                let _ = s.send_to(&b.encode(), to);
            }
            serde_json::json!({"sent": count, "ids": ids})
        }
        "silent" | "half" => {
            let (to, count) = (target(args), num(args, "--count", 100));
            let hold = Duration::from_secs(num(args, "--hold", 10));
            let mut conns = Vec::new();
            let mut refused = 0;
            for _ in 0..count {
                match connect(args, to) {
                    Ok(mut c) => {
                        if cmd == "half" {
                            let _ = c.write_all(&hello_frame("not the passphrase"));
                        }
                        conns.push(c);
                    }
                    Err(_) => refused += 1,
                }
            }
            std::thread::sleep(hold);
            // Which of them did the holder close meanwhile?
            let mut closed = 0;
            for c in &mut conns {
                c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut b = [0u8; 256];
                loop {
                    match c.read(&mut b) {
                        Ok(0) => {
                            closed += 1;
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            closed += 1;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            serde_json::json!({"opened": conns.len(), "refused": refused, "closed_by_peer": closed})
        }
        "guess" => {
            let (to, count) = (target(args), num(args, "--count", 100));
            let pass = arg(args, "--pass").unwrap_or_else(|| "guess".into());
            let (mut answered, mut cut) = (0u64, 0u64);
            for _ in 0..count {
                let Ok(mut c) = connect(args, to) else {
                    cut += 1;
                    continue;
                };
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = c.write_all(&hello_frame(&pass));
                let mut len = [0u8; 2];
                match c.read_exact(&mut len) {
                    Ok(()) => answered += 1,
                    Err(_) => cut += 1,
                }
            }
            let secs = start.elapsed().as_secs_f64();
            serde_json::json!({"tried": count, "answered": answered, "cut": cut, "seconds": secs})
        }
        "oversized" => {
            let to = target(args);
            let mut c = connect(args, to).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(&[0xff, 0xff]);
            let _ = c.write_all(&vec![0x41; 1 << 20]);
            let mut b = [0u8; 16];
            let closed = matches!(c.read(&mut b), Ok(0) | Err(_));
            serde_json::json!({"closed": closed})
        }
        "claim" => {
            // Without the passphrase there is no session to ask in: the best an attacker can do
            // is a handshake with a guess, then a "Fetch" sealed under keys it does not share.
            let to = target(args);
            let token = arg(args, "--token").expect("--token");
            let mut c = connect(args, to).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(&hello_frame("a guess"));
            let mut b = vec![0u8; 512];
            let _ = c.read(&mut b);
            let mut finish = vec![0, 33, 0x13];
            finish.extend([0u8; 32]);
            let _ = c.write_all(&finish);
            let mut fetch = vec![0, 0, 0, 40, 0x03];
            fetch.extend(token.as_bytes().iter().take(16));
            let _ = c.write_all(&fetch);
            let closed = matches!(c.read(&mut b), Ok(0) | Err(_));
            serde_json::json!({"closed_without_content": closed})
        }
        "record" => {
            let port = num(args, "--listen", 48557) as u16;
            let count = num(args, "--count", 1) as usize;
            let out = arg(args, "--out").expect("--out FILE");
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
                .unwrap();
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut recorded = Vec::new();
            let mut buf = [0u8; 2048];
            while recorded.len() < count {
                let Ok((n, _)) = s.recv_from(&mut buf) else {
                    break;
                };
                if Beacon::decode(&buf[..n]).is_ok_and(|b| matches!(b, Beacon::Announce { .. })) {
                    recorded.push(buf[..n].to_vec());
                }
            }
            let hex: Vec<String> = recorded
                .iter()
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            std::fs::write(&out, hex.join("\n")).unwrap();
            serde_json::json!({"recorded": recorded.len()})
        }
        "replay-udp" => {
            let (to, s) = (target(args), udp(args));
            let input = std::fs::read_to_string(arg(args, "--in").expect("--in FILE")).unwrap();
            let mut sent = 0;
            for line in input.lines().filter(|l| !l.is_empty()) {
                let bytes: Vec<u8> = (0..line.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                    .collect();
                for _ in 0..num(args, "--times", 100) {
                    let _ = s.send_to(&bytes, to);
                    sent += 1;
                }
            }
            serde_json::json!({"sent": sent})
        }
        "replay-tcp" => {
            // FILE holds the bytes a member once sent to a holder (as recorded on the wire).
            let to = target(args);
            let recorded = std::fs::read(arg(args, "--in").expect("--in FILE")).unwrap();
            let mut c = connect(args, to).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(&recorded);
            let mut answer = Vec::new();
            let _ = c.read_to_end(&mut answer);
            serde_json::json!({"sent": recorded.len(), "answer_bytes": answer.len()})
        }
        _ => return None,
    })
}
