//! Listening TCP sockets and the processes (and units) that hold them, from /proc.

use crate::facts::Listener;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses one /proc/net/tcp{,6} table, returning (address, port, inode) of listeners.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<(IpAddr, u16, u64)> {
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
        let Ok(inode) = f[9].parse::<u64>() else {
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
        out.push((addr, port, inode));
    }
    out
}

/// The unit a process belongs to, from its cgroup path.
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.split('/'))
        .rfind(|seg| seg.ends_with(".service") || seg.ends_with(".scope"))
        .map(String::from)
}

pub fn listeners() -> Vec<Listener> {
    let mut sockets = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            sockets.extend(parse_proc_net_tcp(&text, v6));
        }
    }
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
        .map(|(address, port, inode)| {
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
        })
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
        assert_eq!(
            got,
            vec![
                ("127.0.0.1".parse().unwrap(), 5432, 31337),
                ("0.0.0.0".parse().unwrap(), 80, 4242)
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 777 1\n";
        assert_eq!(
            parse_proc_net_tcp(v6, true),
            vec![("::1".parse().unwrap(), 6379, 777)]
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
    }
}
