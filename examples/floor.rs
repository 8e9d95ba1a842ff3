//! The least work an encrypted, verified copy can do, for `bench/throughput.py`: one thread per
//! side, no handshake, no protocol. The sender reads 1 MiB, seals it with AES-256-GCM and sends
//! it; the receiver reads a record, opens it, hashes it with BLAKE3 and writes it. deaddrop does
//! this and more (a handshake, a protocol, resume, progress), so on a CPU-bound path its
//! throughput cannot beat this program's, and the gap between the two is what deaddrop's own
//! design costs.
//!
//! It uses a fixed, public key: it measures, it does not protect anything.
//!
//! ```text
//! floor recv LISTEN_ADDR OUT_FILE     (prints the BLAKE3 hash of what it wrote)
//! floor send IN_FILE ADDR
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["send", input, addr] => send(input, addr),
        ["recv", listen, output] => recv(listen, output),
        _ => {
            eprintln!("usage: floor send IN_FILE ADDR | floor recv LISTEN_ADDR OUT_FILE");
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
