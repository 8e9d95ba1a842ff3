//! A man in the middle for tests: hears a holder's announcements on one discovery port,
//! re-announces it on another with its own TCP port, and pipes connections through, slowed down,
//! with one byte flipped, or cut, in the holder-to-receiver direction. Loopback only.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use deaddrop::protocol::beacon::Beacon;
use socket2::{Domain, Protocol, Socket, Type};

/// What the relay does to the holder's bytes.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward at most this many bytes per second.
    Throttle(u64),
    /// Flip the lowest bit of the byte at this offset of each connection.
    FlipAt(u64),
    /// Forward untouched, and keep a copy of what the receiver sent to the holder.
    RecordClient(Arc<Mutex<Vec<u8>>>),
    /// On the first connection only, at this offset, hang up on the receiver but leave the
    /// holder's side open and unread, as a dead Wi-Fi link would (the holder does not notice).
    VanishOnceAt(u64, Arc<AtomicBool>),
    /// Deliver every byte this long after it arrived, in both directions (a long-haul link).
    Delay(Duration),
}

pub struct Relay {
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn shared_udp(port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.into()
}

impl Relay {
    /// Relays holders announcing on `holder_port` to receivers listening on `receiver_port`.
    pub fn start(holder_port: u16, receiver_port: u16, mode: Mode) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_port = listener.local_addr().unwrap().port();
        let holder: Arc<Mutex<Option<(Beacon, SocketAddr)>>> = Arc::default();

        // Learn the holder from its announcements; re-announce it as ourselves.
        let (h, s) = (holder.clone(), stop.clone());
        thread::spawn(move || {
            let listen = shared_udp(holder_port);
            let out = UdpSocket::bind("127.0.0.1:0").unwrap();
            out.set_broadcast(true).unwrap();
            let mut buf = [0u8; 128];
            let mut last = Instant::now() - Duration::from_secs(1);
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, src)) = listen.recv_from(&mut buf)
                    && let Ok(b @ Beacon::Announce { port, .. }) = Beacon::decode(&buf[..n])
                {
                    *h.lock().unwrap() = Some((b, SocketAddr::new(src.ip(), port)));
                }
                if last.elapsed() >= Duration::from_millis(200)
                    && let Some((Beacon::Announce { id, generation, .. }, _)) = *h.lock().unwrap()
                {
                    let beacon = Beacon::Announce {
                        id,
                        port: relay_port,
                        generation,
                    };
                    let _ = out.send_to(&beacon.encode(), ("127.255.255.255", receiver_port));
                    last = Instant::now();
                }
            }
        });

        let (h, s) = (holder, stop.clone());
        let mode = mode.clone();
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Some((_, target)) = *h.lock().unwrap() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up =
                    matches!(mode, Mode::RecordClient(_) | Mode::Delay(_)).then(|| mode.clone());
                thread::spawn(move || pipe(c2, s2, up));
                let down = (!matches!(mode, Mode::RecordClient(_))).then(|| mode.clone());
                thread::spawn(move || pipe(server, client, down));
            }
        });
        Relay { stop }
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it was read.
fn delay_line(mut from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut writer = to.try_clone().unwrap();
    let w = thread::spawn(move || {
        for (at, chunk) in rx {
            if let Some(wait) = (at + delay).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = w.join();
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn pipe(mut from: TcpStream, mut to: TcpStream, mode: Option<Mode>) {
    if let Some(Mode::Delay(d)) = mode {
        return delay_line(from, to, d);
    }
    let mut buf = [0u8; 16 * 1024];
    let mut offset = 0u64;
    let start = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match &mode {
            Some(Mode::RecordClient(copy)) => copy.lock().unwrap().extend_from_slice(&buf[..n]),
            Some(Mode::VanishOnceAt(at, done))
                if offset + n as u64 >= *at && !done.swap(true, Ordering::SeqCst) =>
            {
                let _ = to.shutdown(std::net::Shutdown::Both);
                // Keep the holder's connection open and unread until the test ends.
                thread::sleep(Duration::from_secs(60));
                return;
            }
            Some(Mode::FlipAt(at)) if (offset..offset + n as u64).contains(at) => {
                buf[(*at - offset) as usize] ^= 0x01;
            }
            Some(Mode::Throttle(rate)) => {
                let due = Duration::from_secs_f64((offset + n as u64) as f64 / *rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        offset += n as u64;
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
