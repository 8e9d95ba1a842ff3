//! One holder offering many message drops at once, for the load test and manual trials:
//!
//! ```text
//! DEADDROP_ROOM=secret many --drops 200 [--tag T] [--ttl-secs 120] [--interface I] [--port P]
//! ```
//! Drop `i` says "T i" and may be fetched by `i % 3 + 1` receivers. Prints a JSON `ready` line,
//! then a `done` line with the time from the first offer until every drop was used up (exit 0),
//! or exits 3 if the TTL ran out first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deaddrop::discovery::{self, Discovery, DiscoveryConfig};
use deaddrop::event::Event;
use deaddrop::protocol::secret::Passphrase;
use deaddrop::session::holder::{Holder, HolderOptions};
use deaddrop::storage::store::FetchLimit;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// How many receivers may fetch drop `i`.
pub fn limit(i: usize) -> u32 {
    (i % 3 + 1) as u32
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let drops: usize = arg(&args, "--drops")
        .map(|v| v.parse().unwrap())
        .unwrap_or(200);
    let tag = arg(&args, "--tag").unwrap_or_else(|| "load".into());
    let ttl = Duration::from_secs(
        arg(&args, "--ttl-secs")
            .map(|v| v.parse().unwrap())
            .unwrap_or(120),
    );
    let pass = Passphrase::new(std::env::var("DEADDROP_ROOM").expect("DEADDROP_ROOM")).unwrap();
    let scope = discovery::resolve(&DiscoveryConfig {
        port: arg(&args, "--port")
            .map(|v| v.parse().unwrap())
            .unwrap_or(deaddrop::protocol::beacon::DEFAULT_PORT),
        interfaces: arg(&args, "--interface").into_iter().collect(),
        peers: Vec::new(),
    })
    .await
    .unwrap();
    let used_up = Arc::new(AtomicUsize::new(0));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (u, f) = (used_up.clone(), fetches.clone());
    let events = Arc::new(move |e: Event| match e {
        Event::UsedUp { .. } => {
            u.fetch_add(1, Ordering::SeqCst);
        }
        Event::Fetched { .. } => {
            f.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    });
    let opts = HolderOptions {
        name: "many".into(),
        ..HolderOptions::default()
    };
    let holder = Holder::start(pass, opts, Discovery::bind(scope).unwrap(), events)
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..drops {
        holder
            .offer_message(&format!("{tag} {i}"), ttl, FetchLimit::Max(limit(i)))
            .unwrap();
    }
    let expected: u32 = (0..drops).map(limit).sum();
    println!(
        "{}",
        serde_json::json!({"event": "ready", "drops": drops, "deliveries": expected})
    );
    let done = tokio::time::timeout(ttl, holder.drained()).await.is_ok();
    // The last completions' events may still be on their way from their connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "{}",
        serde_json::json!({
            "event": "done",
            "all_used_up": done,
            "used_up": used_up.load(Ordering::SeqCst),
            "fetches": fetches.load(Ordering::SeqCst),
            "elapsed_ms": start.elapsed().as_millis() as u64,
        })
    );
    std::process::exit(if done { 0 } else { 3 });
}
