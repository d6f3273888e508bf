//! Listening TCP sockets and the processes (and units) that hold them, from /proc.

use crate::facts::Listener;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One listening socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub address: IpAddr,
    pub port: u16,
    /// The uid that owns the socket (the creating process's), from the kernel.
    pub uid: u32,
    pub inode: u64,
}

/// Parses one /proc/net/tcp{,6} table, returning its listeners.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Socket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((addr_hex, port_hex)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        let (Ok(inode), Ok(uid)) = (f[9].parse::<u64>(), f[7].parse::<u32>()) else {
            continue;
        };
        let addr = if v6 {
            if addr_hex.len() != 32 {
                continue;
            }
            // Four little-endian 32-bit words.
            let mut bytes = [0u8; 16];
            for w in 0..4 {
                let Ok(word) = u32::from_str_radix(&addr_hex[w * 8..w * 8 + 8], 16) else {
                    continue;
                };
                bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        } else {
            let Ok(word) = u32::from_str_radix(addr_hex, 16) else {
                continue;
            };
            IpAddr::V4(Ipv4Addr::from(word.to_le_bytes()))
        };
        out.push(Socket {
            address: addr,
            port,
            uid,
            inode,
        });
    }
    out
}

/// Every listening TCP socket of this network namespace.
pub fn sockets() -> Vec<Socket> {
    let mut sockets = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            sockets.extend(parse_proc_net_tcp(&text, v6));
        }
    }
    sockets
}

/// The uid owning the socket that listens on 127.0.0.1:`port` (or on every
/// address), as the kernel says: who would receive what is sent there.
pub fn loopback_listener_uid(port: u16) -> Option<u32> {
    sockets()
        .into_iter()
        .find(|s| {
            s.port == port
                && (s.address == IpAddr::V4(Ipv4Addr::LOCALHOST) || s.address.is_unspecified())
        })
        .map(|s| s.uid)
}

/// The system service a process belongs to, from its cgroup path: only a unit
/// directly under `system.slice` is one (a user's own `analytics-redis.service`,
/// under `user.slice`, has the same name but is not the stack's).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(|path| {
            let mut segs = path.trim_start_matches('/').split('/');
            match (segs.next(), segs.next()) {
                (Some("system.slice"), Some(unit))
                    if unit.ends_with(".service") || unit.ends_with(".scope") =>
                {
                    Some(unit.to_string())
                }
                _ => None,
            }
        })
}

pub fn listeners() -> Vec<Listener> {
    let sockets = sockets();
    let mut owners: HashMap<u64, u32> = HashMap::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy();
                    if let Some(inode) = t
                        .strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .and_then(|s| s.parse().ok())
                    {
                        owners.entry(inode).or_insert(pid);
                    }
                }
            }
        }
    }
    sockets
        .into_iter()
        .map(
            |Socket {
                 address,
                 port,
                 inode,
                 ..
             }| {
                let pid = owners.get(&inode).copied();
                let process = pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
                    .map(|s| s.trim().to_string());
                let unit = pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
                    .and_then(|t| unit_of_cgroup(&t));
                Listener {
                    address,
                    port,
                    pid,
                    process,
                    unit,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_of_both_families() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 31337 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:1538 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   107        0 31338 1 0000000000000000 100 0 0 10 0\n\
           2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n";
        let got = parse_proc_net_tcp(v4, false);
        let brief: Vec<_> = got
            .iter()
            .map(|s| (s.address, s.port, s.uid, s.inode))
            .collect();
        assert_eq!(
            brief,
            vec![
                ("127.0.0.1".parse().unwrap(), 5432, 107, 31337),
                ("0.0.0.0".parse().unwrap(), 80, 0, 4242)
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 777 1\n";
        let got = parse_proc_net_tcp(v6, true);
        assert_eq!(
            (got[0].address, got[0].port, got[0].uid, got[0].inode),
            ("::1".parse().unwrap(), 6379, 108, 777)
        );
    }

    #[test]
    fn finds_the_unit_in_a_cgroup_path() {
        assert_eq!(
            unit_of_cgroup("0::/system.slice/analytics-postgres.service\n").as_deref(),
            Some("analytics-postgres.service")
        );
        assert_eq!(
            unit_of_cgroup(
                "12:pids:/system.slice/nginx.service\n1:name=systemd:/system.slice/nginx.service\n"
            )
            .as_deref(),
            Some("nginx.service")
        );
        assert_eq!(unit_of_cgroup("0::/\n"), None);
        // A user's own unit of the same name is not the stack's.
        assert_eq!(
            unit_of_cgroup(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/analytics-redis-broker.service\n"
            ),
            None
        );
        assert_eq!(
            unit_of_cgroup("1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
    }
}
