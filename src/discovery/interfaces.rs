//! Which network interfaces discovery uses: the host's interfaces grouped by name, the default
//! choice (every up, non-loopback interface with a usable address, except container and VM
//! bridges and point-to-point tunnels), and `--interface` confinement by name or address.
//! [`choose`] is pure; [`list`] asks the system.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4 {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
    /// Where broadcasts to this address's network go (none on a /32 or point-to-point link).
    pub broadcast: Option<Ipv4Addr>,
}

impl V4 {
    /// Whether `ip` is on this address's network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask);
        u32::from(ip) & m == u32::from(self.ip) & m
    }
}

/// One IPv6 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6 {
    pub ip: Ipv6Addr,
    pub prefix_len: u8,
}

impl V6 {
    pub fn is_link_local(&self) -> bool {
        self.ip.segments()[0] & 0xffc0 == 0xfe80
    }

    /// Whether `ip` is in this address's prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let bits = u32::from(self.prefix_len.min(128));
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        u128::from(ip) & mask == u128::from(self.ip) & mask
    }
}

/// A network interface and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    pub name: String,
    /// The system's index (IPv6 scope id); 0 if unknown.
    pub index: u32,
    pub v4: Vec<V4>,
    pub v6: Vec<V6>,
    pub loopback: bool,
    pub point_to_point: bool,
    pub up: bool,
}

impl NetInterface {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .iter()
            .map(|a| IpAddr::V4(a.ip))
            .chain(self.v6.iter().map(|a| IpAddr::V6(a.ip)))
    }

    /// Whether a datagram or connection from `ip` came from this interface's networks (an IPv6
    /// link-local source must also carry this interface's scope).
    pub fn reaches(&self, ip: IpAddr, scope: u32) -> bool {
        match ip {
            IpAddr::V4(v4) => self.v4.iter().any(|a| a.contains(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4.iter().any(|a| a.contains(v4)),
                // A link-local source is on this link if it came by this interface, and only
                // if IPv6 link-local is in use on it.
                None if v6.segments()[0] & 0xffc0 == 0xfe80 => {
                    scope == self.index && self.index != 0 && self.v6.iter().any(V6::is_link_local)
                }
                None => self.v6.iter().any(|a| !a.is_link_local() && a.contains(v6)),
            },
        }
    }
}

/// Why an interface is left out by default, if it is.
pub fn left_out_by_default(i: &NetInterface) -> Option<&'static str> {
    if !i.up {
        Some("down")
    } else if i.loopback {
        Some("loopback")
    } else if i.point_to_point {
        Some("a point-to-point tunnel (VPN): no broadcast or multicast")
    } else if is_virtual_bridge(&i.name) {
        Some("a container or VM bridge")
    } else if i.v4.is_empty() && i.v6.is_empty() {
        Some("no address")
    } else {
        None
    }
}

/// Container and VM bridges and their ends: discovery stays off them unless named, so a drop is
/// not announced into a container network by accident.
pub fn is_virtual_bridge(name: &str) -> bool {
    const PREFIXES: [&str; 14] = [
        "docker",
        "br-",
        "virbr",
        "veth",
        "vEthernet",
        "lxcbr",
        "lxdbr",
        "cni",
        "flannel",
        "vboxnet",
        "vmnet",
        "podman",
        "cali",
        "kube-",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why `--interface` could not be satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSuchInterface {
    pub wanted: String,
    pub available: String,
}

/// The interfaces discovery uses: those `wanted` names (by name, or by one of their addresses)
/// if any, else every interface not [`left_out_by_default`].
pub fn choose(
    all: &[NetInterface],
    wanted: &[String],
) -> Result<Vec<NetInterface>, NoSuchInterface> {
    if wanted.is_empty() {
        return Ok(all
            .iter()
            .filter(|i| left_out_by_default(i).is_none())
            .cloned()
            .collect());
    }
    let mut chosen: Vec<NetInterface> = Vec::new();
    for w in wanted {
        let by_addr = parse_ip(w);
        let found = all.iter().find(|i| match by_addr {
            Some(ip) => i.addresses().any(|a| a == ip),
            None => i.name == *w,
        });
        let Some(found) = found else {
            return Err(NoSuchInterface {
                wanted: w.clone(),
                available: describe(all),
            });
        };
        // Named by an address: only that address of the interface.
        let mut i = found.clone();
        if let Some(ip) = by_addr {
            i.v4.retain(|a| IpAddr::V4(a.ip) == ip);
            i.v6.retain(|a| IpAddr::V6(a.ip) == ip);
        }
        match chosen.iter_mut().find(|c| c.name == i.name) {
            Some(c) => {
                for a in i.v4 {
                    if !c.v4.contains(&a) {
                        c.v4.push(a);
                    }
                }
                for a in i.v6 {
                    if !c.v6.contains(&a) {
                        c.v6.push(a);
                    }
                }
            }
            None => chosen.push(i),
        }
    }
    Ok(chosen)
}

/// An IP address, with an IPv6 zone (`fe80::1%eth0`) dropped.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.split('%').next().and_then(|t| t.parse().ok())
}

/// "lo (127.0.0.1), eth0 (10.0.0.5, fe80::1)" for error messages.
pub fn describe(all: &[NetInterface]) -> String {
    all.iter()
        .map(|i| {
            let addrs: Vec<String> = i.addresses().map(|a| a.to_string()).collect();
            format!("{} ({})", i.name, addrs.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The host's interfaces, with their IPv4 and IPv6 (including link-local) addresses.
pub fn list() -> io::Result<Vec<NetInterface>> {
    let mut out: Vec<NetInterface> = Vec::new();
    for i in if_addrs::get_if_addrs()? {
        let pos = match out.iter().position(|o| o.name == i.name) {
            Some(p) => p,
            None => {
                out.push(NetInterface {
                    name: i.name.clone(),
                    index: i.index.unwrap_or(0),
                    v4: Vec::new(),
                    v6: Vec::new(),
                    loopback: i.is_loopback(),
                    point_to_point: i.is_p2p(),
                    up: i.is_oper_up() || i.is_loopback(),
                });
                out.len() - 1
            }
        };
        let entry = &mut out[pos];
        entry.loopback |= i.is_loopback();
        entry.up |= i.is_oper_up();
        match i.addr {
            if_addrs::IfAddr::V4(a) => entry.v4.push(V4 {
                ip: a.ip,
                netmask: a.netmask,
                broadcast: broadcast_of(a.ip, a.netmask, a.broadcast),
            }),
            if_addrs::IfAddr::V6(a) => entry.v6.push(V6 {
                ip: a.ip,
                prefix_len: a.prefixlen,
            }),
        }
    }
    Ok(out)
}

/// The directed broadcast address of `ip`'s network, if it has a usable one. Never the limited
/// broadcast 255.255.255.255 (which leaves by the default interface) nor an address outside
/// `ip`'s own network, whatever the system reports: some report no mask or a zero one (Wine's
/// loopback, say), which would make a broadcast to everything. A loopback address always uses
/// the loopback network's, 127.255.255.255.
pub(crate) fn broadcast_of(
    ip: Ipv4Addr,
    netmask: Ipv4Addr,
    reported: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    if ip.is_loopback() {
        return Some(Ipv4Addr::new(127, 255, 255, 255));
    }
    let mask = u32::from(netmask);
    // A mask is contiguous ones; fewer than 8 of them is no real LAN (and a /31 or /32 has
    // no broadcast).
    if mask.leading_ones() + mask.trailing_zeros() != 32 || !(8..=30).contains(&mask.leading_ones())
    {
        return None;
    }
    let ours = Ipv4Addr::from(u32::from(ip) | !mask);
    match reported {
        Some(b) if b == ours => Some(b),
        // A reported address that is not this network's broadcast is not trusted.
        Some(_) | None => Some(ours),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn broadcasts_stay_inside_their_network() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let b = |a: &str, m: &str, r: Option<&str>| broadcast_of(ip(a), ip(m), r.map(ip));
        assert_eq!(
            b("192.168.1.20", "255.255.255.0", None),
            Some(ip("192.168.1.255"))
        );
        assert_eq!(
            b("10.1.2.3", "255.0.0.0", Some("10.255.255.255")),
            Some(ip("10.255.255.255"))
        );
        // What some systems report for loopback: no mask, or a broadcast to everything.
        assert_eq!(b("127.0.0.1", "0.0.0.0", None), Some(ip("127.255.255.255")));
        assert_eq!(
            b("127.0.0.1", "255.255.255.255", Some("255.255.255.255")),
            Some(ip("127.255.255.255"))
        );
        assert_eq!(
            b("127.0.0.1", "255.0.0.0", None),
            Some(ip("127.255.255.255"))
        );
        // Never the limited broadcast, nor another network's address.
        assert_eq!(b("192.168.1.20", "0.0.0.0", Some("255.255.255.255")), None);
        assert_eq!(
            b("192.168.1.20", "255.255.255.0", Some("255.255.255.255")),
            Some(ip("192.168.1.255"))
        );
        assert_eq!(
            b("192.168.1.20", "255.255.255.0", Some("10.0.0.255")),
            Some(ip("192.168.1.255"))
        );
        // No broadcast on /31, /32, or a mask with holes.
        assert_eq!(b("10.0.0.1", "255.255.255.255", None), None);
        assert_eq!(b("10.0.0.1", "255.255.255.254", None), None);
        assert_eq!(b("10.0.0.1", "255.0.255.0", None), None);
    }

    pub(crate) fn iface(name: &str, index: u32, v4: &[&str], v6: &[&str]) -> NetInterface {
        NetInterface {
            name: name.into(),
            index,
            v4: v4
                .iter()
                .map(|s| {
                    let (ip, len) = s.split_once('/').unwrap();
                    let len: u32 = len.parse().unwrap();
                    let ip: Ipv4Addr = ip.parse().unwrap();
                    let netmask = Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0));
                    V4 {
                        ip,
                        netmask,
                        broadcast: Some(Ipv4Addr::from(u32::from(ip) | !u32::from(netmask))),
                    }
                })
                .collect(),
            v6: v6
                .iter()
                .map(|s| {
                    let (ip, len) = s.split_once('/').unwrap();
                    V6 {
                        ip: ip.parse().unwrap(),
                        prefix_len: len.parse().unwrap(),
                    }
                })
                .collect(),
            loopback: name == "lo",
            point_to_point: name.starts_with("tun"),
            up: true,
        }
    }

    fn host() -> Vec<NetInterface> {
        vec![
            iface("lo", 1, &["127.0.0.1/8"], &["::1/128"]),
            iface("eth0", 2, &["10.0.0.5/24"], &["fe80::5/64", "fd00::5/64"]),
            iface("wlan0", 3, &["192.168.1.9/24"], &[]),
            iface("docker0", 4, &["172.17.0.1/16"], &[]),
            iface("veth12ab", 5, &[], &["fe80::99/64"]),
            iface("tun0", 6, &["10.8.0.2/32"], &[]),
        ]
    }

    fn names(v: &[NetInterface]) -> Vec<&str> {
        v.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn by_default_real_interfaces_only() {
        let chosen = choose(&host(), &[]).unwrap();
        assert_eq!(names(&chosen), ["eth0", "wlan0"]);
        assert_eq!(
            left_out_by_default(&host()[3]),
            Some("a container or VM bridge")
        );
        assert!(left_out_by_default(&host()[5]).unwrap().contains("tunnel"));
    }

    #[test]
    fn named_interfaces_are_used_even_if_left_out_by_default() {
        let chosen = choose(&host(), &["docker0".into(), "lo".into()]).unwrap();
        assert_eq!(names(&chosen), ["docker0", "lo"]);
    }

    #[test]
    fn an_address_names_its_interface_and_only_that_address() {
        let chosen = choose(&host(), &["fd00::5".into()]).unwrap();
        assert_eq!(names(&chosen), ["eth0"]);
        assert!(chosen[0].v4.is_empty());
        assert_eq!(chosen[0].v6.len(), 1);
        let chosen = choose(&host(), &["127.0.0.1".into(), "fe80::5%eth0".into()]).unwrap();
        assert_eq!(names(&chosen), ["lo", "eth0"]);
        assert_eq!(chosen[1].v6[0].ip, "fe80::5".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn an_unknown_interface_lists_the_available_ones() {
        let e = choose(&host(), &["nosuch0".into()]).unwrap_err();
        assert_eq!(e.wanted, "nosuch0");
        assert!(
            e.available.contains("eth0 (10.0.0.5, fe80::5, fd00::5)"),
            "{}",
            e.available
        );
    }

    #[test]
    fn sources_are_matched_to_their_interface() {
        let eth0 = &host()[1];
        assert!(eth0.reaches("10.0.0.77".parse().unwrap(), 0));
        assert!(eth0.reaches("::ffff:10.0.0.77".parse().unwrap(), 0));
        assert!(!eth0.reaches("10.0.1.77".parse().unwrap(), 0));
        assert!(eth0.reaches("fe80::1234".parse().unwrap(), 2));
        assert!(
            !eth0.reaches("fe80::1234".parse().unwrap(), 3),
            "another link"
        );
        assert!(eth0.reaches("fd00::77".parse().unwrap(), 0));
        assert!(!eth0.reaches("fd01::77".parse().unwrap(), 0));
    }
}
