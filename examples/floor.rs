//! The least work an encrypted, verified copy can do, for `bench/throughput.py`: one thread per
//! side, no handshake, no protocol. The sender reads 1 MiB, seals it with AES-256-GCM and sends
//! it; the receiver reads a record, opens it, hashes it with BLAKE3 and writes it. deaddrop does
//! this and more (a handshake, a protocol, resume, progress), so on a CPU-bound path its
//! throughput cannot beat this program's, and the gap between the two is what deaddrop's own
//! design costs.
//!
//! With `-jN` (N ≥ 2), each side seals or opens records on N threads at once (records are
//! independent; the wire keeps their order), and one more thread reads (sender) or hashes and
//! writes (receiver): the experiment of #13, whether more than one core per side pays.
//!
//! It uses a fixed, public key: it measures, it does not protect anything.
//!
//! ```text
//! floor recv LISTEN_ADDR OUT_FILE [-jN]    (prints the BLAKE3 hash of what it wrote)
//! floor send IN_FILE ADDR [-jN]
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

fn key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x42; 32]).expect("32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn send(input: &str, addr: &str) -> io::Result<()> {
    let key = key();
    let mut file = File::open(input)?;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 4 + CHUNK + TAG];
    for counter in 0.. {
        buf.resize(4 + CHUNK, 0);
        let mut n = 0;
        while n < CHUNK {
            match file.read(&mut buf[4 + n..])? {
                0 => break,
                got => n += got,
            }
        }
        if n == 0 {
            return Ok(());
        }
        buf.truncate(4 + n);
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf[4..])
            .map_err(|_| io::Error::other("seal failed"))?;
        buf.extend_from_slice(tag.as_ref());
        buf[..4].copy_from_slice(&((n + TAG) as u32).to_be_bytes());
        stream.write_all(&buf)?;
    }
    Ok(())
}

fn recv(listen: &str, output: &str) -> io::Result<()> {
    let key = key();
    let (mut stream, _) = TcpListener::bind(listen)?.accept()?;
    let mut out = File::create(output)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK + TAG];
    for counter in 0.. {
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            other => other?,
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > buf.len() || len < TAG {
            return Err(io::Error::other("bad record length"));
        }
        stream.read_exact(&mut buf[..len])?;
        let plain = key
            .open_in_place(nonce(counter), Aad::empty(), &mut buf[..len])
            .map_err(|_| io::Error::other("record failed authentication"))?;
        hasher.update(plain);
        out.write_all(plain)?;
    }
    out.sync_all()?;
    println!("{}", hasher.finalize());
    Ok(())
}

/// Reads `CHUNK`-sized pieces of `file` into `4 + n` buffers (room for the length first).
fn read_chunk(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4 + CHUNK];
    let mut n = 0;
    while n < CHUNK {
        match file.read(&mut buf[4 + n..])? {
            0 => break,
            got => n += got,
        }
    }
    buf.truncate(4 + n);
    Ok((n > 0).then_some(buf))
}

/// `jobs` workers, each applying `work` to every `jobs`-th item (item i goes to worker i % jobs),
/// with the results taken back in order. Returns the inputs and the ordered output.
#[allow(clippy::type_complexity)]
fn pool(
    jobs: usize,
    work: impl Fn(u64, Vec<u8>) -> io::Result<Vec<u8>> + Send + Sync + Clone + 'static,
) -> (
    Vec<SyncSender<(u64, Vec<u8>)>>,
    Vec<Receiver<io::Result<Vec<u8>>>>,
) {
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..jobs {
        let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(2);
        let (otx, orx) = sync_channel(2);
        let work = work.clone();
        std::thread::spawn(move || {
            for (counter, buf) in rx {
                if otx.send(work(counter, buf)).is_err() {
                    return;
                }
            }
        });
        inputs.push(tx);
        outputs.push(orx);
    }
    (inputs, outputs)
}

fn send_parallel(input: &str, addr: &str, jobs: usize) -> io::Result<()> {
    let mut file = File::open(input)?;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let key = std::sync::Arc::new(key());
    let (inputs, outputs) = pool(jobs, move |counter, mut buf| {
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf[4..])
            .map_err(|_| io::Error::other("seal failed"))?;
        buf.extend_from_slice(tag.as_ref());
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    });
    let reader = std::thread::spawn(move || -> io::Result<()> {
        let mut counter = 0u64;
        while let Some(buf) = read_chunk(&mut file)? {
            if inputs[(counter % jobs as u64) as usize]
                .send((counter, buf))
                .is_err()
            {
                break;
            }
            counter += 1;
        }
        Ok(())
    });
    'records: for counter in 0usize.. {
        match outputs[counter % jobs].recv() {
            Ok(sealed) => stream.write_all(&sealed?)?,
            Err(_) => break 'records,
        }
    }
    reader.join().expect("reader thread")
}

fn recv_parallel(listen: &str, output: &str, jobs: usize) -> io::Result<()> {
    let (mut stream, _) = TcpListener::bind(listen)?.accept()?;
    let mut out = File::create(output)?;
    let key = std::sync::Arc::new(key());
    let (inputs, outputs) = pool(jobs, move |counter, mut buf| {
        let n = key
            .open_in_place(nonce(counter), Aad::empty(), &mut buf)
            .map_err(|_| io::Error::other("record failed authentication"))?
            .len();
        buf.truncate(n);
        Ok(buf)
    });
    let writer = std::thread::spawn(move || -> io::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        for counter in 0usize.. {
            match outputs[counter % jobs].recv() {
                Ok(plain) => {
                    let plain = plain?;
                    hasher.update(&plain);
                    out.write_all(&plain)?;
                }
                Err(_) => break,
            }
        }
        out.sync_all()?;
        Ok(hasher.finalize())
    });
    for counter in 0u64.. {
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            other => other?,
        }
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG..=CHUNK + TAG).contains(&len) {
            return Err(io::Error::other("bad record length"));
        }
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf)?;
        if inputs[(counter % jobs as u64) as usize]
            .send((counter, buf))
            .is_err()
        {
            break;
        }
    }
    drop(inputs);
    println!("{}", writer.join().expect("writer thread")?);
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut jobs = 1;
    if let Some(j) = args.last().and_then(|a| a.strip_prefix("-j")) {
        jobs = j.parse().unwrap_or(0);
        args.pop();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match (&args[..], jobs) {
        (_, 0) => Err(io::Error::other("-jN wants a number of threads, 1 or more")),
        (&["send", input, addr], 1) => send(input, addr),
        (&["recv", listen, output], 1) => recv(listen, output),
        (&["send", input, addr], n) => send_parallel(input, addr, n),
        (&["recv", listen, output], n) => recv_parallel(listen, output, n),
        _ => {
            eprintln!(
                "usage: floor send IN_FILE ADDR [-jN] | floor recv LISTEN_ADDR OUT_FILE [-jN]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
