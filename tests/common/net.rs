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

    /// A fresh bridge `name` on which the host itself has `address` (a /24): for a
    /// container that must reach a server of the test (the archive mirror) on the
    /// host, and nothing else (still no forwarding, no NAT).
    pub fn create_with_host_address(name: &str, address: &str) -> Bridge {
        let bridge = Bridge::create(name);
        let cidr = format!("{address}/24");
        let out = ip(&["addr", "add", &cidr, "dev", name]);
        assert!(
            out.status.success(),
            "ip addr add {cidr} dev {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _gone = ip(&["link", "del", &self.name]);
    }
}
