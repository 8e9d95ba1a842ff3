//! The engine's own ceiling for `bench/wide.py`: bytes moved over iroh with the same endpoint
//! setup as a wide-area room (the invite's relay, its certificate pinned, hole punching), one
//! QUIC stream, and nothing else: no handshake of deaddrop's, no records of its own (QUIC's TLS
//! is the only encryption), and the receiver only counts what arrives (no hash, no file).
//! deaddrop's direct path does all of this and more, so its throughput over iroh cannot beat
//! this program's; the gap between the two is what deaddrop's design costs over the engine.
//!
//! It uses a fresh endpoint key per run and protects nothing beyond what QUIC does.
//!
//! ```text
//! iroh_floor recv INVITE [--bind IP]   (prints "id HEX", then "BYTES VIA SECONDS", the
//!                                       seconds from the first byte to the last)
//! iroh_floor send INVITE ID IN_FILE [--bind IP]
//! ```

use std::net::IpAddr;
use std::process::ExitCode;

use deaddrop::wide::invite::{Invite, hex};
use deaddrop::wide::room::{endpoint, member_addr, via};
use iroh::SecretKey;
use tokio::fs::File;
use tokio::io::AsyncReadExt;

const ALPN: &[u8] = b"deaddrop/floor/1";
const CHUNK: usize = 1 << 20;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn recv(invite: &Invite, bind: &[IpAddr]) -> Result<()> {
    let ep = endpoint(invite, bind, SecretKey::generate(), vec![ALPN.to_vec()]).await?;
    ep.online().await;
    println!("id {}", hex(ep.id().as_bytes()));
    let incoming = ep.accept().await.ok_or("endpoint closed")?;
    let conn = incoming.accept()?.await?;
    let mut stream = conn.accept_uni().await?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = AsyncReadExt::read(&mut stream, &mut buf).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(std::time::Instant::now);
        total += n as u64;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{total} {:?} {secs:.3}", via(&conn));
    conn.close(0u32.into(), b"done");
    ep.close().await;
    Ok(())
}

async fn send(invite: &Invite, id: &str, input: &str, bind: &[IpAddr]) -> Result<()> {
    let id = parse_id(id)?;
    let ep = endpoint(invite, bind, SecretKey::generate(), vec![]).await?;
    let conn = ep.connect(member_addr(invite, id)?, ALPN).await?;
    let mut stream = conn.open_uni().await?;
    let mut file = File::open(input).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.finish()?;
    // The receiver closes the connection once it has everything.
    conn.closed().await;
    // What the path did, for diagnosis (the benchmark ignores it).
    let st = conn.stats();
    eprintln!(
        "sent {} packets ({} datagrams, {} bytes), lost {} packets ({} bytes)",
        st.sent_packets, st.udp_tx.datagrams, st.udp_tx.bytes, st.lost_packets, st.lost_bytes
    );
    ep.close().await;
    Ok(())
}

fn parse_id(text: &str) -> Result<[u8; 32]> {
    let mut id = [0u8; 32];
    if text.len() != 64 {
        return Err("an endpoint id is 64 hex digits".into());
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(id)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut bind = Vec::new();
    if let Some(i) = args.iter().position(|a| a == "--bind") {
        match args.get(i + 1).map(|a| a.parse::<IpAddr>()) {
            Some(Ok(ip)) => bind.push(ip),
            _ => {
                eprintln!("--bind needs an IP address");
                return ExitCode::from(2);
            }
        }
        args.drain(i..i + 2);
    }
    let invite = match args.get(1).map(|t| Invite::from_text(t)) {
        Some(Ok(i)) => i,
        _ => {
            eprintln!("usage: iroh_floor recv INVITE | send INVITE ID IN_FILE [--bind IP]");
            return ExitCode::from(2);
        }
    };
    let result = match (args[0].as_str(), args.len()) {
        ("recv", 2) => recv(&invite, &bind).await,
        ("send", 4) => send(&invite, &args[2], &args[3], &bind).await,
        _ => {
            eprintln!("usage: iroh_floor recv INVITE | send INVITE ID IN_FILE [--bind IP]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
