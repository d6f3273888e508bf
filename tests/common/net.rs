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

/// Runs each `ip` command in turn; any failure stops the test, with its words.
fn ip_each(commands: &[Vec<&str>]) {
    for args in commands {
        let out = ip(args);
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Bridge {
    /// A fresh bridge `name` (one left by an aborted run is removed first).
    pub fn create(name: &str) -> Bridge {
        let _stale = ip(&["link", "del", name]);
        ip_each(&[
            vec!["link", "add", name, "type", "bridge"],
            vec!["link", "set", name, "up"],
        ]);
        Bridge { name: name.into() }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _gone = ip(&["link", "del", &self.name]);
    }
}

/// Another host of a bridge's network that keeps what it is sent: an SMTP relay and
/// a webhook receiver (`tests/harness/alert_sinks.py`) in a network namespace of
/// its own, joined to the bridge by a veth pair, at `address`. The host itself
/// gets no address on the bridge (see [`Bridge`]).
pub struct AlertSinks {
    namespace: String,
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub address: String,
    pub smtp_port: u16,
    pub http_port: u16,
}

impl AlertSinks {
    pub fn start(bridge: &Bridge, namespace: &str, address: &str) -> AlertSinks {
        let _stale = ip(&["netns", "del", namespace]);
        let outside = format!("{namespace}-o");
        let _stale = ip(&["link", "del", &outside]);
        let cidr = format!("{address}/24");
        ip_each(&[
            vec!["netns", "add", namespace],
            vec![
                "link", "add", &outside, "type", "veth", "peer", "name", "sink0",
            ],
            vec!["link", "set", "sink0", "netns", namespace],
            vec!["link", "set", &outside, "master", &bridge.name],
            vec!["link", "set", &outside, "up"],
            vec!["-n", namespace, "addr", "add", &cidr, "dev", "sink0"],
            vec!["-n", namespace, "link", "set", "sink0", "up"],
            vec!["-n", namespace, "link", "set", "lo", "up"],
        ]);
        let dir = tempfile::tempdir().expect("a directory for what the sinks keep");
        let (smtp_port, http_port) = (2525, 8025);
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "/usr/bin/python3"])
            .arg(super::repo().join("tests/harness/alert_sinks.py"))
            .arg(dir.path())
            .args([smtp_port.to_string(), http_port.to_string()])
            .spawn()
            .expect("start tests/harness/alert_sinks.py");
        let ready = dir.path().join("ready");
        for _ in 0..100 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(ready.exists(), "the alert sinks did not start");
        AlertSinks {
            namespace: namespace.into(),
            child,
            dir,
            address: address.into(),
            smtp_port,
            http_port,
        }
    }

    /// What arrived so far of `kind` ("mail" or "hook"), in order.
    pub fn received(&self, kind: &str) -> Vec<String> {
        let mut found: Vec<(u32, String)> = std::fs::read_dir(self.dir.path())
            .expect("read the sinks' directory")
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name
                    .strip_prefix(&format!("{kind}-"))?
                    .split_once('.')
                    .filter(|(_, ext)| !ext.ends_with("partial"))?
                    .0
                    .parse()
                    .ok()?;
                Some((n, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, text)| text).collect()
    }
}

impl Drop for AlertSinks {
    fn drop(&mut self) {
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
        let _gone = ip(&["netns", "del", &self.namespace]);
        let _gone = ip(&["link", "del", &format!("{}-o", self.namespace)]);
    }
}
