//! A private network between test containers, for what spans hosts (a primary and
//! its workers, and an outsider probing them): a Linux bridge on the host with no
//! address, no forwarding and no NAT, so containers on it reach each other and
//! nothing else. Each container joins it with `systemd-nspawn --network-bridge`
//! (a veth pair; `host0` inside), its address set by hand.

use std::process::Command;

pub struct Bridge {
    pub name: String,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

impl Bridge {
    /// A fresh bridge `name` (one left by an aborted run is removed first).
    pub fn create(name: &str) -> Bridge {
        let _stale = ip(&["link", "del", name]);
        for args in [
            vec!["link", "add", name, "type", "bridge"],
            vec!["link", "set", name, "up"],
        ] {
            let out = ip(&args);
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Bridge { name: name.into() }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _gone = ip(&["link", "del", &self.name]);
    }
}
