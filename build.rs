//! Only for the tests: marks a build made by root on Linux (`cfg(deaddrop_root)`), where the
//! multi-host tests can create network namespaces. Elsewhere `cargo test` lists them as
//! ignored, "needs root", rather than passing them silently. The program itself does not use it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(deaddrop_root)");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") && effective_uid() == Some(0)
    {
        println!("cargo::rustc-cfg=deaddrop_root");
    }
}

/// The effective user id of this build, from /proc (Linux).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}
