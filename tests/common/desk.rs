//! A second host on a wire to the stack's host: a network namespace (`ip netns`) joined
//! to the host's network by a veth pair, with no other route. What runs in it reaches
//! the stack the way a person's desktop does: by an address that is not loopback, so
//! NGINX sees a non-local client, and nothing else on the way.
//!
//! Also: a DNS forwarder that writes down every name the stack's container looks up
//! (tests/harness/dnslog.py), for the tests that prove nothing phones home.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// The stack host's end of the wire (in the host's network, which the test
/// containers share) and the desk's end.
pub const DOOR_ADDRESS: &str = "10.213.0.1";
pub const DESK_ADDRESS: &str = "10.213.0.2";
const NETNS: &str = "as-desk";
const HOST_LINK: &str = "as-door";

pub struct Desk;

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

impl Desk {
    /// Creates the namespace and the wire (replacing leftovers of an earlier run).
    /// Before the stack's first apply, so its certificate names the door's address.
    pub fn new() -> Desk {
        Desk::remove();
        for cmd in [
            vec!["ip", "netns", "add", NETNS],
            vec![
                "ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "desk0",
            ],
            vec!["ip", "link", "set", "desk0", "netns", NETNS],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{DOOR_ADDRESS}/30"),
                "dev",
                HOST_LINK,
            ],
            vec!["ip", "link", "set", HOST_LINK, "up"],
            vec![
                "ip",
                "-n",
                NETNS,
                "addr",
                "add",
                &format!("{DESK_ADDRESS}/30"),
                "dev",
                "desk0",
            ],
            vec!["ip", "-n", NETNS, "link", "set", "desk0", "up"],
            vec!["ip", "-n", NETNS, "link", "set", "lo", "up"],
        ] {
            let out = run(&cmd);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Desk
    }

    fn remove() {
        let _ = run(&["ip", "link", "del", HOST_LINK]);
        let _ = run(&["ip", "netns", "del", NETNS]);
    }

    /// Runs a shell command on the desk (root, the host's file system, the desk's
    /// network only).
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", NETNS, "bash", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    pub fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "desk: `{cmd}` failed ({:?}):\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        Desk::remove();
    }
}

/// Every name the stack's container looks up, in order.
pub struct DnsLog {
    child: Child,
    pub path: PathBuf,
}

/// Where the container's resolver listens (on the shared host network).
pub const DNS_LOG_ADDRESS: &str = "127.0.0.77";

impl DnsLog {
    /// Starts the forwarder towards the host's own resolver.
    pub fn start() -> DnsLog {
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("nameserver").map(|a| a.trim().to_string()))
            .expect("the host has a nameserver");
        let path = std::env::temp_dir().join(format!("as-dns-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let child = Command::new("/usr/bin/python3")
            .arg(super::repo().join("tests/harness/dnslog.py"))
            .args([DNS_LOG_ADDRESS, &upstream])
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start tests/harness/dnslog.py");
        for _ in 0..50 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(path.exists(), "the DNS log did not start");
        DnsLog { child, path }
    }

    /// The names asked since the last call, each once, in order.
    pub fn take(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        std::fs::write(&self.path, "").unwrap();
        let mut names: Vec<String> = Vec::new();
        for name in text.lines().filter_map(|l| l.split_whitespace().next()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }
}

impl Drop for DnsLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}
