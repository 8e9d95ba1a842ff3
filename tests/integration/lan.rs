//! Multi-host tests: a LAN of network-namespace hosts on one bridge, each running the binary
//! with its default (unconfined) discovery, so broadcasts really cross hosts. Nothing leaves the
//! namespaces. Needs root: in CI these must run; elsewhere they are skipped with a reason.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::util::{Proc, assert_ok, bin};

const T: Duration = Duration::from_secs(15);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `ip` arguments for a host's default route through the switch.
const DEFAULT_ROUTE: &[&str] = &[
    "route",
    "add",
    "default",
    "via",
    "10.77.0.254",
    "dev",
    "eth0",
    "onlink",
];

fn sh(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hosts `10.77.0.1..=n` on a bridge inside a switch namespace, and optionally one "far" host
/// `10.78.0.1` behind a router at 10.77.0.254 (broadcasts do not cross it); removed on drop.
pub struct Lan {
    pub names: Vec<String>,
    switch: String,
    tag: String,
}

/// The multi-host tests are ignored ("needs root") where the build was not made by root; CI
/// runs as root and must run them.
#[test]
fn multi_host_tests_run_in_ci() {
    if std::env::var_os("CI").is_some() {
        assert!(
            is_root() && cfg!(deaddrop_root),
            "CI must run the multi-host tests: build and test as root"
        );
    }
}

/// Whether network namespaces can be made here; says why not (and fails in CI, which must run
/// the multi-host tests).
pub fn namespaces_possible() -> bool {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "multi-host tests need root (network namespaces), and CI must run them"
        );
        eprintln!("skipping multi-host test: needs root to create network namespaces");
        return false;
    }
    true
}

impl Lan {
    /// A LAN of `n` hosts, or `None` (with the reason printed) where it cannot be built.
    pub fn new(n: usize) -> Option<Lan> {
        if !namespaces_possible() {
            return None;
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "dd{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}sw");
        let mut lan = Lan {
            names: Vec::new(),
            switch: switch.clone(),
            tag: tag.clone(),
        };
        sh(&["netns", "add", &switch]);
        sh(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        sh(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let host = format!("{tag}h{i}");
            sh(&["netns", "add", &host]);
            lan.names.push(host.clone());
            let port = format!("p{i}");
            sh(&[
                "link", "add", "name", "eth0", "netns", &host, "type", "veth", "peer", "name",
                &port, "netns", &switch,
            ]);
            sh(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            sh(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ]);
            sh(&["-n", &host, "link", "set", "eth0", "up"]);
            sh(&["-n", &host, "link", "set", "lo", "up"]);
            // A default route makes 255.255.255.255 routable, as on a real LAN.
            sh(&[&["-n", host.as_str()], DEFAULT_ROUTE].concat());
        }
        Some(lan)
    }

    /// Adds a router and a host on another subnet behind it; returns the host's index.
    pub fn add_far_host(&mut self) -> usize {
        let (router, far) = (format!("{}r", self.tag), format!("{}far", self.tag));
        sh(&["netns", "add", &router]);
        self.names.push(router.clone());
        sh(&[
            "link",
            "add",
            "name",
            "lan0",
            "netns",
            &router,
            "type",
            "veth",
            "peer",
            "name",
            "pr",
            "netns",
            &self.switch,
        ]);
        sh(&[
            "-n",
            &self.switch,
            "link",
            "set",
            "pr",
            "master",
            "br0",
            "up",
        ]);
        sh(&[
            "-n",
            &router,
            "addr",
            "add",
            "10.77.0.254/24",
            "brd",
            "+",
            "dev",
            "lan0",
        ]);
        sh(&["-n", &router, "link", "set", "lan0", "up"]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .unwrap();
        assert!(out.success());
        sh(&["netns", "add", &far]);
        sh(&[
            "link", "add", "name", "eth0", "netns", &far, "type", "veth", "peer", "name", "far0",
            "netns", &router,
        ]);
        sh(&[
            "-n",
            &router,
            "addr",
            "add",
            "10.78.0.254/24",
            "brd",
            "+",
            "dev",
            "far0",
        ]);
        sh(&["-n", &router, "link", "set", "far0", "up"]);
        sh(&[
            "-n",
            &far,
            "addr",
            "add",
            "10.78.0.1/24",
            "brd",
            "+",
            "dev",
            "eth0",
        ]);
        sh(&["-n", &far, "link", "set", "eth0", "up"]);
        sh(&["-n", &far, "link", "set", "lo", "up"]);
        sh(&["-n", &far, "route", "add", "default", "via", "10.78.0.254"]);
        self.names.push(far);
        self.names.len()
    }

    pub fn ip(&self, host: usize) -> String {
        format!("10.77.0.{host}")
    }

    /// The addresses of host `host`'s eth0 (IPv4 and IPv6, link-local included).
    pub fn addresses(&self, host: usize) -> Vec<std::net::IpAddr> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.names[host - 1],
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let cidr = l
                    .split_whitespace()
                    .skip_while(|w| !w.starts_with("inet"))
                    .nth(1)?;
                cidr.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// Drops the frames crossing the switch that match each of `matches` (nftables, bridge
    /// family), e.g. `ether type ip ether daddr ff:ff:ff:ff:ff:ff`; each rule counts what it
    /// dropped ([`Lan::filtered`]).
    pub fn drop_on_bridge(&self, matches: &[&str]) {
        let nft = |args: &[&str]| {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.switch, "nft"])
                .args(args)
                .output()
                .expect("run nft");
            assert!(
                out.status.success(),
                "nft {}: {} (is nftables installed?)",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        nft(&["add", "table", "bridge", "lanfilter"]);
        nft(&["add chain bridge lanfilter fw { type filter hook forward priority 0; }"]);
        for m in matches {
            nft(&[&format!("add rule bridge lanfilter fw {m} counter drop")]);
        }
    }

    /// Packets the bridge filter's rules have matched, in order.
    pub fn filtered(&self) -> Vec<u64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.switch,
                "nft",
                "list",
                "table",
                "bridge",
                "lanfilter",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split("packets ")
            .skip(1)
            .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
            .collect()
    }

    /// Isolates the hosts' switch ports from each other (as an access point's client isolation
    /// does), or lifts it; the switch itself answers at 10.77.0.254, like a gateway.
    pub fn isolate_clients(&self, on: bool) {
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.switch,
                "addr",
                "add",
                "10.77.0.254/24",
                "dev",
                "br0",
            ])
            .output();
        for i in 1..=self.names.len() {
            let port = format!("p{i}");
            let state = if on { "on" } else { "off" };
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.switch,
                    "bridge",
                    "link",
                    "set",
                    "dev",
                    &port,
                ])
                .args(["isolated", state])
                .output();
        }
    }

    /// Gives host `host` a VPN-like tunnel `tun0` that holds the default route.
    pub fn vpn_default_route(&self, host: usize) {
        let h = self.names[host - 1].as_str();
        sh(&["-n", h, "tuntap", "add", "dev", "tun0", "mode", "tun"]);
        sh(&["-n", h, "link", "set", "tun0", "up"]);
        sh(&["-n", h, "addr", "add", "10.8.0.2/32", "dev", "tun0"]);
        sh(&["-n", h, "route", "replace", "default", "dev", "tun0"]);
    }

    /// Takes every host's IPv4 address away and gives it `fd77::N/64` instead; waits until the
    /// IPv6 addresses (link-local too) are usable.
    pub fn ipv6_only(&self, hosts: usize) {
        for i in 1..=hosts {
            let host = self.names[i - 1].as_str();
            let _ = Command::new("ip")
                .args(["-n", host, "route", "del", "default"])
                .status();
            sh(&[
                "-n",
                host,
                "addr",
                "del",
                &format!("10.77.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            sh(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("fd77::{i}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        self.wait_ipv6(hosts);
    }

    /// Waits until no host has a tentative (duplicate-address-checking) IPv6 address.
    pub fn wait_ipv6(&self, hosts: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for host in &self.names[..hosts] {
            loop {
                let out = Command::new("ip")
                    .args(["-n", host, "-6", "addr", "show", "dev", "eth0"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("inet6 fe80") && !text.contains("tentative") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "IPv6 not ready: {text}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Gives host `host` a bridge named `docker0` (172.17.0.1/16) with a "container" behind
    /// it (172.17.0.2); returns the container's index for [`Lan::cmd`].
    pub fn add_container(&mut self, host: usize) -> usize {
        let h = self.names[host - 1].clone();
        let c = format!("{}c{host}", self.tag);
        sh(&["-n", &h, "link", "add", "docker0", "type", "bridge"]);
        sh(&[
            "-n",
            &h,
            "addr",
            "add",
            "172.17.0.1/16",
            "brd",
            "+",
            "dev",
            "docker0",
        ]);
        sh(&["-n", &h, "link", "set", "docker0", "up"]);
        sh(&["netns", "add", &c]);
        self.names.push(c.clone());
        sh(&[
            "link", "add", "name", "eth0", "netns", &c, "type", "veth", "peer", "name", "vethc0",
            "netns", &h,
        ]);
        sh(&["-n", &h, "link", "set", "vethc0", "master", "docker0", "up"]);
        sh(&[
            "-n",
            &c,
            "addr",
            "add",
            "172.17.0.2/16",
            "brd",
            "+",
            "dev",
            "eth0",
        ]);
        sh(&["-n", &c, "link", "set", "eth0", "up"]);
        sh(&["-n", &c, "link", "set", "lo", "up"]);
        sh(&["-n", &c, "route", "add", "default", "via", "172.17.0.1"]);
        self.names.len()
    }

    /// `deaddrop ARGS` on host `host` (1-based), in room `pass`.
    pub fn cmd(&self, host: usize, pass: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[host - 1], bin()])
            .args(args)
            .env("DEADDROP_ROOM", pass)
            .env("DEADDROP_CONFIG_DIR", crate::util::own_device())
            .env_remove("DEADDROP_PORT")
            .env_remove("DEADDROP_INTERFACE");
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.names.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Host 1 offers a file of `len` bytes; returns its folder (keep it), the sender and the token.
fn offer_file(lan: &Lan, len: usize, args: &[&str]) -> (tempfile::TempDir, Proc, String) {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("offered.bin");
    std::fs::write(&path, crate::files::data(len, len as u64)).unwrap();
    let mut all = vec!["send-file", "--json"];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    let mut s = Proc::spawn(lan.cmd(1, "secret123", &all));
    let token = s.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (src, s, token)
}

/// Runs `script` with `sh` on host 2, in the mount namespace `ip netns exec` gives it.
fn on_host_2(lan: &Lan, script: &str) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.names[1], "sh", "-c", script])
        .env("DEADDROP_ROOM", "secret123")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn receiver(lan: &Lan, host: usize, pass: &str, name: &str) -> Proc {
    let mut p = Proc::spawn(lan.cmd(host, pass, &["run", "--json", "--name", name]));
    p.wait_event(T, "listening").expect("receiver listening");
    p
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_message_from_host_1_reaches_hosts_2_and_3_but_not_another_room() {
    let Some(lan) = Lan::new(3) else { return };
    let mut r2 = receiver(&lan, 2, "secret123", "h2");
    let mut r3 = receiver(&lan, 3, "secret123", "h3");
    let mut outsider = receiver(&lan, 3, "other-room", "h3-other");
    let mut s = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &[
            "send-msg",
            "--json",
            "--name",
            "h1",
            "--everyone",
            "--ttl",
            "4s",
            "across the LAN",
        ],
    ));
    for r in [&mut r2, &mut r3] {
        let msg = r.wait_event(T, "message").expect("message crosses hosts");
        assert_eq!(msg["text"], "across the LAN");
        assert_eq!(msg["from"], "h1");
        assert!(
            msg["address"].as_str().unwrap().starts_with(&lan.ip(1)),
            "{msg}"
        );
    }
    assert_eq!(s.wait(T).code(), Some(0), "{}", s.stderr());
    let seen = outsider.drain(Duration::from_millis(500));
    assert!(
        seen.iter().any(|l| l.contains("\"rejected\"")),
        "the outsider tried and failed: {seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("across the LAN")),
        "{seen:?}"
    );
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_late_receiver_on_another_host_finds_existing_drops() {
    let Some(lan) = Lan::new(2) else { return };
    let mut s = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &["send-msg", "--json", "--ttl", "20s", "waiting for you"],
    ));
    s.wait_event(T, "offered").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut r = receiver(&lan, 2, "secret123", "late");
    let msg = r
        .wait_event(Duration::from_secs(3), "message")
        .expect("found by the start-up query");
    assert_eq!(msg["text"], "waiting for you");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn list_and_fetch_across_hosts_and_confined_to_an_interface() {
    let Some(lan) = Lan::new(2) else { return };
    let mut s = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &[
            "send-msg",
            "--json",
            "--interface",
            "eth0",
            "--ttl",
            "20s",
            "by token",
        ],
    ));
    let token = s.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = lan
        .cmd(2, "secret123", &["list", "--interface", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&token),
        "{out:?}"
    );
    let out = lan
        .cmd(
            2,
            "secret123",
            &["fetch", "--interface", &lan.ip(2), &token],
        )
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(out.stdout, b"by token");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn peer_reaches_a_holder_where_broadcast_does_not() {
    let Some(mut lan) = Lan::new(1) else { return };
    let far = lan.add_far_host();
    let mut s = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &[
            "send-msg",
            "--json",
            "--max-fetches",
            "2",
            "--ttl",
            "20s",
            "over the router",
        ],
    ));
    let token = s.wait_event(T, "offered").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Broadcast alone finds nothing from the far subnet...
    let out = lan.cmd(far, "secret123", &["list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&token),
        "{out:?}"
    );
    // ...but --peer does, for list, run and fetch.
    let out = lan
        .cmd(far, "secret123", &["list", "--peer", "10.77.0.1"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&token),
        "{out:?}"
    );
    let mut r = Proc::spawn(lan.cmd(far, "secret123", &["run", "--json", "--peer", "10.77.0.1"]));
    let msg = r.wait_event(T, "message").expect("message over --peer");
    assert_eq!(msg["text"], "over the router");
    let out = lan
        .cmd(
            far,
            "secret123",
            &["fetch", "--peer", "10.77.0.1:48557", &token],
        )
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"over the router", "{out:?}");
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_256_mib_file_reaches_two_hosts_with_everyone() {
    let Some(lan) = Lan::new(3) else { return };
    let (src, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let path = src.path().join("big.bin");
    let bytes = crate::files::data(256 << 20, 42);
    std::fs::write(&path, &bytes).unwrap();
    let mut receivers: Vec<Proc> = [(2, &d2), (3, &d3)]
        .iter()
        .map(|(host, dir)| {
            let mut p = Proc::spawn(lan.cmd(
                *host,
                "secret123",
                &["run", "--json", "--dir", dir.path().to_str().unwrap()],
            ));
            p.wait_event(T, "listening").unwrap();
            p
        })
        .collect();
    let mut s = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &[
            "send-file",
            "--json",
            "--everyone",
            "--ttl",
            "40s",
            path.to_str().unwrap(),
        ],
    ));
    for (r, dir) in receivers.iter_mut().zip([&d2, &d3]) {
        let got = r
            .wait_event(Duration::from_secs(60), "received")
            .unwrap_or_else(|| panic!("{}", r.stderr()));
        assert_eq!(got["size"], 256 << 20);
        assert!(
            std::fs::read(dir.path().join("big.bin")).unwrap() == bytes,
            "copy differs"
        );
    }
    // The holder counted two deliveries, to the two hosts.
    let fetched: Vec<_> = (0..2)
        .map(|_| s.wait_event(T, "fetched").unwrap())
        .collect();
    // Two sessions count at once: their events may come out in either order.
    let mut delivered: Vec<u64> = fetched
        .iter()
        .map(|f| f["delivered"].as_u64().unwrap())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, [1, 2], "{fetched:?}");
    // From hosts 2 and 3, over IPv4 or IPv6 link-local, whichever was found first.
    let mut hosts: Vec<usize> = fetched
        .iter()
        .map(|f| {
            let addr: std::net::SocketAddr = f["address"].as_str().unwrap().parse().unwrap();
            (2..=3)
                .find(|h| lan.addresses(*h).contains(&addr.ip()))
                .unwrap_or_else(|| panic!("{addr} is not host 2's or 3's"))
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, [2, 3], "{fetched:?}");
    s.interrupt();
    s.wait(T);
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_full_disk_gives_a_clear_error_and_leaves_no_partial_file() {
    let Some(lan) = Lan::new(2) else { return };
    let (_src, mut s, token) = offer_file(&lan, 8 << 20, &["--ttl", "30s"]);
    // A 4 MiB tmpfs, mounted in host 2's own mount namespace.
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    let (stdout, stderr) = on_host_2(
        &lan,
        &format!(
            "mount -t tmpfs -o size=4m deaddrop-test {m} || exit 9; {bin} fetch --dir {m} {token}; \
             echo \"exit=$?\"; ls -A {m}; umount {m}",
            bin = bin()
        ),
    );
    // Nothing at all is left in the full file system: no file, no partial.
    assert_failed_leaving_nothing(&stdout, &stderr, "not enough disk space");
    // And the drop was not burned.
    let dst = tempfile::tempdir().unwrap();
    let out = lan
        .cmd(
            2,
            "secret123",
            &["fetch", "--dir", dst.path().to_str().unwrap(), &token],
        )
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(s.wait(T).code(), Some(0));
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn run_on_a_full_disk_says_which_drop_and_saves_it_once_space_is_freed() {
    let Some(lan) = Lan::new(2) else { return };
    let (_src, mut s, token) = offer_file(&lan, 8 << 20, &["--ttl", "60s"]);
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = log.path().to_str().unwrap();
    // 12 MiB, 8 of them taken: no room for the 8 MiB drop until the filler goes.
    let (stdout, stderr) = on_host_2(
        &lan,
        &format!(
            "mount -t tmpfs -o size=12m deaddrop-test {m} || exit 9; \
             head -c 8M /dev/zero > {m}/filler; \
             {bin} run --json --dir {m}/in > {out} 2>&1 & pid=$!; \
             for i in $(seq 200); do grep -q fetch_failed {out} && break; sleep 0.05; done; \
             rm {m}/filler; \
             for i in $(seq 400); do grep -q '\"received\"' {out} && break; sleep 0.05; done; \
             kill -INT $pid; wait $pid; ls -A {m}/in; umount {m}",
            bin = bin()
        ),
    );
    let log = std::fs::read_to_string(out).unwrap();
    let failed: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "fetch_failed")
        .collect();
    assert_eq!(failed.len(), 1, "reported once: {log}\n{stderr}");
    assert_eq!(failed[0]["token"], token.as_str());
    assert_eq!(failed[0]["name"], "offered.bin");
    assert_eq!(failed[0]["retrying"], true);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(reason.contains("not enough disk space"), "{reason}");
    assert!(
        log.contains("\"received\""),
        "saved once space was freed: {log}"
    );
    assert_eq!(
        stdout.trim(),
        "offered.bin",
        "only the drop, no partial: {stdout}"
    );
    assert_eq!(s.wait(T).code(), Some(0));
}

/// The fetch on the small disk exited 1 with `error` on stderr, and the listing of the disk
/// printed after it shows nothing at all.
fn assert_failed_leaving_nothing(stdout: &str, stderr: &str, error: &str) {
    assert!(stdout.lines().any(|l| l == "exit=1"), "{stdout}\n{stderr}");
    assert!(stderr.contains(error), "{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| !l.starts_with("exit=")).count(),
        0,
        "left behind: {stdout}"
    );
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_disk_that_fills_up_mid_transfer_leaves_no_partial_file() {
    let Some(lan) = Lan::new(2) else { return };
    // About 5 MB/s out of host 1, so the disk can fill while the transfer runs.
    throttle_host_1(&lan);
    let (_src, mut s, token) = offer_file(&lan, 8 << 20, &["--ttl", "60s"]);
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    // Room for the drop when the fetch starts; then something else takes the space.
    let (stdout, stderr) = on_host_2(
        &lan,
        &format!(
            "mount -t tmpfs -o size=12m deaddrop-test {m} || exit 9; \
             {bin} fetch --dir {m} {token} & pid=$!; \
             for i in $(seq 100); do ls -A {m} | grep -q part && break; sleep 0.05; done; \
             head -c 20M /dev/zero > {m}/filler 2>/dev/null; \
             wait $pid; echo \"exit=$?\"; rm -f {m}/filler; ls -A {m}; umount {m}",
            bin = bin()
        ),
    );
    assert_failed_leaving_nothing(&stdout, &stderr, "No space left on device");
    s.interrupt();
    assert_eq!(s.wait(T).code(), Some(130), "the drop was still there");
}

/// Slows host 1's output to about 5 MB/s, so a transfer takes long enough to break.
fn throttle_host_1(lan: &Lan) {
    let tc = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.names[0],
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
        ])
        .args(["tbf", "rate", "40mbit", "burst", "64kb", "latency", "400ms"])
        .status()
        .unwrap();
    assert!(tc.success());
}

fn link(lan: &Lan, host: usize, up: bool) {
    sh(&[
        "-n",
        &lan.names[host - 1],
        "link",
        "set",
        "eth0",
        if up { "up" } else { "down" },
    ]);
    if up {
        // Taking the link down removed the default route with it.
        let _ = Command::new("ip")
            .args(["-n", lan.names[host - 1].as_str()])
            .args(DEFAULT_ROUTE)
            .status();
    }
}

fn partial_len(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// Host 2's link goes down for `down` in the middle of a file transfer to a running receiver.
fn link_flap(lan: Lan, down: Duration) -> (Proc, Vec<u8>, tempfile::TempDir) {
    throttle_host_1(&lan);
    let len = 12 << 20;
    let (src, mut s, _) = offer_file(&lan, len, &["--ttl", "120s"]);
    let bytes = std::fs::read(src.path().join("offered.bin")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut r = Proc::spawn(lan.cmd(
        2,
        "secret123",
        &["run", "--json", "--dir", dst.path().to_str().unwrap()],
    ));
    r.wait_event(T, "listening").unwrap();
    let deadline = std::time::Instant::now() + T;
    while partial_len(dst.path()) < 2 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the transfer never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link(&lan, 2, false);
    std::thread::sleep(down);
    link(&lan, 2, true);
    let got = r
        .wait_event(Duration::from_secs(90), "received")
        .unwrap_or_else(|| panic!("{:?}", r.seen));
    assert_eq!(got["size"], len);
    s.interrupt();
    s.wait(T);
    drop(lan);
    (r, bytes, dst)
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_link_that_drops_briefly_mid_transfer_recovers() {
    let Some(lan) = Lan::new(2) else { return };
    let (mut r, bytes, dst) = link_flap(lan, Duration::from_secs(3));
    assert!(std::fs::read(dst.path().join("offered.bin")).unwrap() == bytes);
    let lines = r.drain(Duration::ZERO);
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"received\"")).count(),
        1
    );
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_link_down_longer_than_the_timeout_fails_clearly_then_resumes() {
    let Some(lan) = Lan::new(2) else { return };
    let (mut r, bytes, dst) = link_flap(lan, Duration::from_secs(35));
    assert!(std::fs::read(dst.path().join("offered.bin")).unwrap() == bytes);
    let lines = r.drain(Duration::ZERO);
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("\"fetch_failed\""))
        .collect();
    assert!(
        !failed.is_empty(),
        "the stalled transfer was reported: {lines:?}"
    );
    assert!(
        failed[0].contains("timed out") && failed[0].contains("resumes"),
        "{}",
        failed[0]
    );
}

/// The program of `examples/NAME.rs`, which `cargo test` builds along with the tests.
pub fn example_bin(name: &str) -> String {
    let path = std::path::Path::new(bin())
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole `cargo test` (it builds the examples) or `cargo build --example {name}`",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn load_one_holder_with_200_drops_and_20_receivers_on_three_hosts() {
    let Some(lan) = Lan::new(4) else { return };
    let many = example_bin("many");
    // 20 receivers: 7, 7 and 6 on hosts 2, 3 and 4.
    let mut receivers: Vec<Proc> = (0..20)
        .map(|i| {
            let host = 2 + i % 3;
            let mut p = Proc::spawn(lan.cmd(
                host,
                "secret123",
                &["run", "--json", "--no-files", "--name", &format!("r{i}")],
            ));
            p.wait_event(T, "listening").unwrap();
            p
        })
        .collect();
    let mut figures = Vec::new();
    for (round, drops) in [(0, 20usize), (1, 200)] {
        let tag = format!("round{round}");
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &lan.names[0],
            &many,
            "--drops",
            &drops.to_string(),
            "--tag",
            &tag,
        ]);
        c.env("DEADDROP_ROOM", "secret123");
        let mut holder = Proc::spawn(c);
        let done = holder
            .wait_line(Duration::from_secs(120), |l| l.contains("\"done\""))
            .unwrap_or_else(|| panic!("round {round} did not finish: {}", holder.stderr()));
        let done = crate::util::json(&done);
        assert_eq!(done["all_used_up"], true, "{done}");
        figures.push((
            drops,
            done["elapsed_ms"].as_u64().unwrap(),
            done["fetches"].as_u64().unwrap(),
        ));
        // Every drop was delivered exactly as its limit says, and never twice to one receiver.
        let mut per_drop = vec![0u32; drops];
        for r in &mut receivers {
            let lines = r.drain(Duration::from_millis(300));
            let mut mine = std::collections::HashSet::new();
            for l in lines
                .iter()
                .filter(|l| l.contains("\"message\"") && l.contains(&tag))
            {
                let text = crate::util::json(l)["text"].as_str().unwrap().to_owned();
                assert!(
                    mine.insert(text.clone()),
                    "{text} shown twice on one receiver"
                );
                let i: usize = text.rsplit(' ').next().unwrap().parse().unwrap();
                per_drop[i] += 1;
            }
        }
        for (i, got) in per_drop.iter().enumerate() {
            assert_eq!(*got, (i % 3 + 1) as u32, "drop {i} of round {round}");
        }
        assert_eq!(holder.wait(T).code(), Some(0));
    }
    eprintln!("figure: load (drops, ms until all used up, fetches): {figures:?}");
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn on_a_dual_stack_lan_each_drop_is_listed_once_and_each_holder_counted_once() {
    // A holder is heard over IPv4 (broadcast, mDNS) and IPv6 (mDNS, link-local): `list`
    // showed every drop twice, and fetch counted its holders twice.
    let Some(lan) = Lan::new(2) else { return };
    lan.wait_ipv6(2);
    let mut senders: Vec<Proc> = ["first", "second"]
        .iter()
        .map(|t| {
            let mut p =
                Proc::spawn(lan.cmd(1, "secret123", &["send-msg", "--json", "--ttl", "30s", t]));
            p.wait_event(T, "offered").expect("offered");
            p
        })
        .collect();
    let out = lan
        .cmd(2, "secret123", &["list", "--json", "--wait", "3s"])
        .output()
        .unwrap();
    assert_ok(&out);
    let drops: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(crate::util::json)
        .filter(|v| v["event"] == "drop")
        .collect();
    assert_eq!(drops.len(), 2, "{drops:#?}");
    assert_ne!(drops[0]["token"], drops[1]["token"]);
    let out = lan
        .cmd(2, "secret123", &["fetch", "--wait", "3s", &"0".repeat(32)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(2 holder(s) answered)"), "{err}");
    for s in &mut senders {
        s.interrupt();
        s.wait(T);
    }
}

/// The messages `r` has shown (its `message` events), each with when it was printed.
fn shown(r: &mut Proc, within: Duration) -> Vec<(std::time::Instant, String)> {
    r.drain(within);
    r.seen
        .iter()
        .zip(&r.seen_at)
        .filter_map(|(l, at)| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "message").then(|| (*at, v["text"].as_str().unwrap().to_owned()))
        })
        .collect()
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_busy_room_delivers_every_drop_exactly_once_in_time() {
    // Measured before the fix (debug build): 30 receivers x 30 `--everyone` drops took 15.9 s,
    // since every fetch changed the holder's generation and made every receiver sync again;
    // after it, 1.1 s.
    let Some(lan) = Lan::new(4) else { return };
    let spawn_receivers = |hosts: &[usize], each: usize| -> Vec<Proc> {
        let mut all: Vec<Proc> = hosts
            .iter()
            .flat_map(|h| std::iter::repeat_n(*h, each))
            .map(|h| Proc::spawn(lan.cmd(h, "secret123", &["run", "--json", "--no-files"])))
            .collect();
        for r in &mut all {
            r.wait_event(T, "listening").expect("listening");
        }
        all
    };
    let send_all = |n: usize, extra: &[&str]| -> (std::time::Instant, Vec<Proc>) {
        let start = std::time::Instant::now();
        let senders = (0..n)
            .map(|i| {
                let text = format!("busy {i}");
                let args = [&["send-msg", "--ttl", "30s"], extra, &[text.as_str()]].concat();
                Proc::spawn(lan.cmd(4, "secret123", &args))
            })
            .collect();
        (start, senders)
    };
    // 20 one-time drops made at once on one device, one receiver on another: within 1 s.
    let mut one = spawn_receivers(&[1], 1);
    let (start, mut senders) = send_all(20, &[]);
    let got = shown(&mut one[0], Duration::from_secs(3));
    let texts: std::collections::HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(got.len(), 20, "{got:?}");
    assert_eq!(texts.len(), 20, "each drop once");
    let last = got.iter().map(|(at, _)| *at - start).max().unwrap();
    eprintln!("figure: 20 drops at once to one receiver: the last after {last:?}");
    assert!(last < Duration::from_secs(1), "the last after {last:?}");
    for s in &mut senders {
        assert_eq!(s.wait(T).code(), Some(0), "fetched: {}", s.stderr());
    }
    drop(one);
    // 30 receivers on 3 hosts x 30 `--everyone` drops from a fourth: 900 deliveries, each
    // exactly once, within the product's 5 s.
    let mut many = spawn_receivers(&[1, 2, 3], 10);
    let (start, _senders) = send_all(30, &["--everyone"]);
    let deadline = start + Duration::from_secs(8);
    let mut last = Duration::ZERO;
    let mut total = 0;
    for (i, r) in many.iter_mut().enumerate() {
        while shown(r, Duration::ZERO).len() < 30 && std::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            r.wait_line(left.min(Duration::from_millis(100)), |_| true);
        }
        let got = shown(r, Duration::from_millis(50));
        let texts: std::collections::HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts.len(), 30, "receiver {i} got {} drops", texts.len());
        assert_eq!(
            got.len(),
            30,
            "receiver {i} was shown a drop twice: {got:?}"
        );
        last = last.max(got.iter().map(|(at, _)| *at - start).max().unwrap());
        total += got.len();
    }
    eprintln!(
        "figure: 30 receivers x 30 --everyone drops: {total} deliveries, the last after {last:?}"
    );
    assert!(last < Duration::from_secs(5), "the last after {last:?}");
}

/// Drops `percent` % of the packets host `host` receives, at random (nftables; the kernel here
/// has no netem).
fn lossy(lan: &Lan, host: usize, percent: u32) {
    let ns = &lan.names[host - 1];
    let nft = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "nft"])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "nft {args:?} (is nftables installed?)");
    };
    nft(&["add", "table", "inet", "lossy"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "lossy",
        "input",
        "{ type filter hook input priority 0; }",
    ]);
    nft(&[
        "add",
        "rule",
        "inet",
        "lossy",
        "input",
        "numgen",
        "random",
        "mod",
        "100",
        "lt",
        &percent.to_string(),
        "drop",
    ]);
}

#[test]
#[cfg_attr(not(deaddrop_root), ignore = "needs root: network namespaces")]
fn a_lossy_link_still_delivers_messages_and_files_whole() {
    let Some(lan) = Lan::new(2) else { return };
    lossy(&lan, 2, 10);
    let dst = tempfile::tempdir().unwrap();
    let mut r = Proc::spawn(lan.cmd(
        2,
        "secret123",
        &["run", "--json", "--dir", dst.path().to_str().unwrap()],
    ));
    r.wait_event(T, "listening").unwrap();
    let started = std::time::Instant::now();
    let mut m = Proc::spawn(lan.cmd(
        1,
        "secret123",
        &["send-msg", "--json", "--ttl", "30s", "through the noise"],
    ));
    assert_eq!(
        r.wait_event(Duration::from_secs(30), "message")
            .expect("message")["text"],
        "through the noise"
    );
    let message_time = started.elapsed();
    assert_eq!(m.wait(T).code(), Some(0));
    let (src, mut s, _) = offer_file(&lan, 8 << 20, &["--ttl", "120s"]);
    let started = std::time::Instant::now();
    let got = r
        .wait_event(Duration::from_secs(100), "received")
        .unwrap_or_else(|| panic!("{:?}", r.seen));
    eprintln!(
        "figure: 10 % loss: message in {message_time:?}, 8 MiB in {:?}",
        started.elapsed()
    );
    assert_eq!(got["size"], 8 << 20);
    assert!(
        std::fs::read(dst.path().join("offered.bin")).unwrap()
            == std::fs::read(src.path().join("offered.bin")).unwrap()
    );
    assert_eq!(s.wait(T).code(), Some(0));
}
