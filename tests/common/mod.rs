//! A throwaway Debian 12 container with a real systemd as PID 1 (systemd-nspawn,
//! volatile overlay over a cached root filesystem), with this build's binaries,
//! daemon unit and D-Bus policy bound in. See docs/TESTING.md.

#![allow(dead_code)]

pub mod apps;
pub mod desk;
pub mod egress;
pub mod mirror;
pub mod net;
pub mod relabel;
pub mod statsd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rootfs() -> PathBuf {
    rootfs_of("bookworm")
}

/// The cached test root of a Debian release (tests/run-all.sh builds both first).
fn rootfs_of(suite: &str) -> PathBuf {
    let (var, default) = match suite {
        "trixie" => (
            "ANALYTICS_STACK_TEST_ROOTFS_TRIXIE",
            "/var/tmp/analytics-stack-test/rootfs-trixie",
        ),
        _ => (
            "ANALYTICS_STACK_TEST_ROOTFS",
            "/var/tmp/analytics-stack-test/rootfs",
        ),
    };
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let status = Command::new(repo().join("tests/harness/build-rootfs.sh"))
        .arg(&dir)
        .arg(suite)
        .status()
        .expect("run build-rootfs.sh");
    assert!(
        status.success(),
        "building the {suite} test root filesystem failed"
    );
    dir
}

pub struct Container {
    nspawn: Child,
    pub leader: u32,
    pub name: String,
    /// The container's memory cgroup on the host, when booted with a memory limit.
    memory_cgroup: Option<PathBuf>,
    /// The container's directory on the host's disk (its root, an overlay or a
    /// copy), removed with it.
    disk: Option<PathBuf>,
    /// The container's cgroup in the unified hierarchy, whose `cpu.stat` counts the
    /// CPU time of everything inside; None where there is no such hierarchy.
    cgroup: Option<PathBuf>,
    /// Whether its CPU time was written down already (at a halt or a drop).
    cpu_recorded: bool,
    /// Held while a container on the host's network lives (see `boot_full`).
    _host_network: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// nspawn-in-cgroup.sh's cgroup for container `name` (named after the script's
/// `pid`) in the hierarchy mounted at `mount`, below this process's own cgroup there
/// (the line of /proc/self/cgroup that starts with `prefix`, e.g. "0::").
fn container_cgroup(mount: &str, prefix: &str, name: &str, pid: u32) -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let base = own
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, path)| path.to_string()))?;
    Some(PathBuf::from(format!(
        "{mount}{}/analytics-test-{name}-{pid}",
        base.trim_end_matches('/')
    )))
}

/// How a container boots, besides its binds.
#[derive(Default)]
struct Boot {
    /// Loopback only, no route out.
    private_network: bool,
    /// A memory limit for the whole container, in bytes.
    memory_max: Option<u64>,
    /// A root directory of its own, booted as it is (writes persist in it); None =
    /// the cached test root under a volatile overlay.
    root: Option<PathBuf>,
    /// On a private bridge (its veth's far end `host0` inside), with this address.
    bridge: Option<(String, String)>,
    /// On the host's network but running none of the stack's services (it only
    /// downloads, e.g. `bundle create`): it need not wait for the stack's ports, which
    /// a test running beside it may hold.
    binds_no_ports: bool,
    /// Debian 13's test root instead of Debian 12's.
    trixie: bool,
}

fn find_leader(nspawn_pid: u32) -> Option<u32> {
    // The container's PID 1: a descendant of nspawn whose NSpid line has two
    // fields and ends in 1.
    let mut frontier = vec![nspawn_pid];
    while let Some(pid) = frontier.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
            if let Some(ns) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) {
                let f: Vec<&str> = ns.split_whitespace().collect();
                if f.len() == 2 && f[1] == "1" {
                    return Some(c);
                }
            }
            frontier.push(c);
        }
    }
    None
}

impl Container {
    /// A container with this build's binaries, daemon unit and D-Bus policy bound in.
    pub fn boot(name: &str) -> Container {
        Container::boot_inner(name, &Container::own_build(), false)
    }

    /// Like `boot`, for a container that only downloads (`bundle create`) and runs
    /// none of the stack's services: on the host's network, it may boot while a test
    /// beside it holds the stack's ports.
    pub fn boot_for_downloads(name: &str) -> Container {
        Container::boot_full(
            name,
            &Container::own_build(),
            Boot {
                binds_no_ports: true,
                ..Boot::default()
            },
        )
    }

    /// A Debian 13 container (its own cached root, volatile) with `binds` and nothing
    /// of this build: a test installs the Debian package into it.
    pub fn boot_trixie_with(name: &str, binds: &[(PathBuf, &str)]) -> Container {
        Container::boot_full(
            name,
            binds,
            Boot {
                trixie: true,
                ..Boot::default()
            },
        )
    }

    /// Like `boot`, the whole container limited to `bytes` of memory (its own memory
    /// cgroup, like a VM of that size): see [`Container::oom_kills`]. Its root is a
    /// copy of the test root filesystem on the host's disk, booted as it is: with the
    /// usual volatile overlay every file the stack writes (packages, venvs, data)
    /// would sit in tmpfs, memory that cannot be reclaimed and counts against the
    /// limit, where a VM writes to its disk.
    pub fn boot_with_memory(name: &str, bytes: u64) -> Container {
        Container::boot_memory_limited(name, bytes, None, &[])
    }

    /// Like `boot_with_memory`, on `bridge` at `address`, with `binds` added.
    pub fn boot_with_memory_on(
        name: &str,
        bytes: u64,
        bridge: &net::Bridge,
        address: &str,
        binds: &[(PathBuf, &str)],
    ) -> Container {
        Container::boot_memory_limited(
            name,
            bytes,
            Some((bridge.name.clone(), address.to_string())),
            binds,
        )
    }

    fn boot_memory_limited(
        name: &str,
        bytes: u64,
        bridge: Option<(String, String)>,
        binds: &[(PathBuf, &str)],
    ) -> Container {
        let disk = PathBuf::from(format!("/var/tmp/analytics-stack-test/disk-{name}"));
        let _ = std::fs::remove_dir_all(&disk);
        std::fs::create_dir_all(&disk).unwrap();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(rootfs())
            .arg(disk.join("root"))
            .status()
            .expect("cp");
        assert!(copied.success(), "cannot copy the root filesystem");
        let mut all = Container::own_build();
        all.extend(binds.iter().cloned());
        let mut c = Container::boot_full(
            name,
            &all,
            Boot {
                memory_max: Some(bytes),
                root: Some(disk.join("root")),
                bridge,
                ..Boot::default()
            },
        );
        c.disk = Some(disk);
        c
    }

    /// The OOM kills the kernel made inside a container booted with a memory limit.
    pub fn oom_kills(&self) -> u64 {
        let dir = self
            .memory_cgroup
            .as_ref()
            .expect("the container was booted with a memory limit");
        let text = std::fs::read_to_string(dir.join("memory.oom_control"))
            .or_else(|_| std::fs::read_to_string(dir.join("memory.events")))
            .expect("the container's memory cgroup");
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .expect("an oom_kill count")
    }

    fn own_build() -> Vec<(PathBuf, &'static str)> {
        let r = repo();
        vec![
            (
                PathBuf::from(env!("CARGO_BIN_EXE_analytics-stackd")),
                "/usr/sbin/analytics-stackd",
            ),
            (
                PathBuf::from(env!("CARGO_BIN_EXE_analytics-stack")),
                "/usr/bin/analytics-stack",
            ),
            (
                r.join("units/analytics-stackd.service"),
                "/etc/systemd/system/analytics-stackd.service",
            ),
            (
                r.join("packaging/dbus-1/system.d/org.analyticsstack.Stack1.conf"),
                "/etc/dbus-1/system.d/org.analyticsstack.Stack1.conf",
            ),
        ]
    }

    /// A container of this build on `bridge` (a private network of test containers,
    /// no route out), with `address` (in the bridge's /24).
    pub fn boot_on(name: &str, bridge: &net::Bridge, address: &str) -> Container {
        Container::boot_on_with(name, bridge, address, &[])
    }

    /// Like `boot_on`, with `binds` (source on the host, path inside) added.
    pub fn boot_on_with(
        name: &str,
        bridge: &net::Bridge,
        address: &str,
        binds: &[(PathBuf, &str)],
    ) -> Container {
        let mut all: Vec<(PathBuf, &str)> = Container::own_build();
        all.extend(binds.iter().cloned());
        Container::boot_with_on(name, bridge, address, &all)
    }

    /// Like `boot_with` (nothing of this build, only `binds`), on `bridge` with
    /// `address`: for a test that installs the Debian package and needs no network.
    pub fn boot_with_on(
        name: &str,
        bridge: &net::Bridge,
        address: &str,
        binds: &[(PathBuf, &str)],
    ) -> Container {
        Container::boot_full(
            name,
            binds,
            Boot {
                bridge: Some((bridge.name.clone(), address.to_string())),
                ..Boot::default()
            },
        )
    }

    /// A container with only `binds` (source on the host, path inside) added.
    pub fn boot_with(name: &str, binds: &[(PathBuf, &str)]) -> Container {
        Container::boot_inner(name, binds, false)
    }

    /// Like `boot_with`, in a private network namespace: loopback only, no route out.
    pub fn boot_offline_with(name: &str, binds: &[(PathBuf, &str)]) -> Container {
        Container::boot_inner(name, binds, true)
    }

    fn boot_inner(name: &str, binds: &[(PathBuf, &str)], private_network: bool) -> Container {
        let boot = Boot {
            private_network,
            ..Boot::default()
        };
        Container::boot_full(name, binds, boot)
    }

    fn boot_full(name: &str, binds: &[(PathBuf, &str)], boot: Boot) -> Container {
        let Boot {
            private_network,
            memory_max,
            root,
            bridge,
            binds_no_ports,
            trixie,
        } = boot;
        let host_network = (!private_network && bridge.is_none() && !binds_no_ports).then(|| {
            // The host's network is shared: one such container at a time (the
            // tests that use it may run beside each other), and the previous
            // one may still be stopping its services.
            let file = std::fs::File::create("/run/analytics-stack-test.host-network.lock")
                .expect("the host network's lock file");
            let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("the host network's lock");
            wait_for_stack_ports(name);
            lock
        });
        let r = repo();
        let mut cmd = Command::new(r.join("tests/harness/nspawn-in-cgroup.sh"));
        // Thrown away with the container: an overlay of the cached root filesystem.
        let (root, overlay) = match root {
            Some(root) => (root, None),
            None => {
                let disk =
                    overlay_root(name, &rootfs_of(if trixie { "trixie" } else { "bookworm" }));
                (disk.join("root"), Some(disk))
            }
        };
        cmd.args([name, "-q", "-D"]).arg(&root).args([
            "-M",
            name,
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--kill-signal=SIGRTMIN+3",
        ]);
        for (src, dst) in binds {
            cmd.arg(format!("--bind-ro={}:{dst}", src.display()));
        }
        if private_network {
            cmd.arg("--private-network");
        }
        if let Some((bridge_name, _)) = &bridge {
            cmd.arg(format!("--network-bridge={bridge_name}"));
        }
        if !private_network && bridge.is_none() {
            // On the host's network nspawn drops CAP_NET_ADMIN, which systemd needs to
            // bring up the loopback of a unit's own network namespace
            // (PrivateNetwork=: Loki's, whose gRPC port lives there). A host, or a
            // container with a network of its own, has it.
            cmd.arg("--capability=CAP_NET_ADMIN");
        }
        if let Some(bytes) = memory_max {
            cmd.env("ANALYTICS_TEST_MEMORY_MAX", bytes.to_string());
        }
        let nspawn = cmd
            .arg(format!(
                "--bind-ro={}:/usr/local/sbin/analytics-test-init",
                r.join("tests/harness/init.sh").display()
            ))
            .arg("/usr/local/sbin/analytics-test-init")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start systemd-nspawn");
        let pid = nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(l) = find_leader(pid) {
                break l;
            }
            assert!(Instant::now() < deadline, "container {name} did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        // nspawn-in-cgroup.sh's memory cgroup (cgroup v1), named after its pid.
        let memory_cgroup = memory_max
            .and_then(|_| container_cgroup("/sys/fs/cgroup/memory", ":memory:", name, pid));
        // The unified hierarchy: beside v1's (hybrid) or alone (v2).
        let unified = if Path::new("/sys/fs/cgroup/unified").is_dir() {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        let c = Container {
            nspawn,
            leader,
            name: name.into(),
            memory_cgroup,
            disk: overlay,
            cgroup: container_cgroup(unified, "0::", name, pid),
            cpu_recorded: false,
            _host_network: host_network,
        };
        // PID 1 may still be the pre-exec nspawn child: wait for systemd to answer.
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let out = c.sh("timeout 10 systemctl is-system-running --wait 2>&1");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break state;
            }
            assert!(Instant::now() < deadline, "container {name} state: {state}");
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("[{name}] systemd is {state} (leader pid {leader})");
        if let Some((_, address)) = &bridge {
            // Hosts of one network have names of their own (the image's is shared).
            c.ok(&format!(
                "ip addr add {address}/24 dev host0 && ip link set host0 up \
                 && echo {name} > /etc/hostname && hostname {name}"
            ));
        }
        c
    }

    /// Makes `to` (a server of the test: `HOST:PORT`, or a Unix socket bound into
    /// the container) answer on this container's loopback at `port`, through
    /// systemd's own socket proxy: for a server the stack trusts only on loopback (an
    /// archive mirror whose checksum files come over plain http).
    pub fn loopback_proxy(&self, port: u16, to: &str) {
        self.ok(&format!(
            "printf '[Socket]\\nListenStream=127.0.0.1:{port}\\n' > /run/systemd/system/test-proxy-{port}.socket \
             && printf '[Service]\\nExecStart=/lib/systemd/systemd-socket-proxyd {to}\\n' > /run/systemd/system/test-proxy-{port}.service \
             && systemctl daemon-reload && systemctl start test-proxy-{port}.socket"
        ));
    }

    /// Gives this container (booted on a bridge with [`egress::EgressProxy::dir`]
    /// bound at [`egress::DIR_INSIDE`]) its way out: the proxy on its loopback, and
    /// the daemon's unit told of it, as an operator behind a site's proxy would (a
    /// runtime drop-in, in /run: /etc/systemd/system stays the stack's to check).
    /// Call before `start_daemon`.
    pub fn use_egress_proxy(&self) {
        let port = egress::PORT;
        self.loopback_proxy(port, &format!("{}/proxy.sock", egress::DIR_INSIDE));
        self.ok(&format!(
            "mkdir -p /run/systemd/system/analytics-stackd.service.d && printf '[Service]\\nEnvironment=%s\\n' \\
             'http_proxy=http://127.0.0.1:{port} https_proxy=http://127.0.0.1:{port} no_proxy=127.0.0.1,localhost' \\
             > /run/systemd/system/analytics-stackd.service.d/egress-proxy.conf && systemctl daemon-reload"
        ));
        // The test's own apt commands (a clean environment) through it too; one
        // request per connection, as the proxy forwards them.
        self.ok(&format!(
            "printf 'Acquire::http::Proxy \"http://127.0.0.1:{port}\";\\nAcquire::http::Pipeline-Depth \"0\";\\n' > /etc/apt/apt.conf.d/80test-egress-proxy"
        ));
    }

    /// Runs a shell command inside, as root, with a clean environment.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "--",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "bash",
                "-c",
                cmd,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Writes `text` to `inside` (root's, 0600) from the host, through PID 1's root:
    /// a secret that no command line inside ever carries.
    pub fn put_secret(&self, inside: &str, text: &str) {
        let to = format!("/proc/{}/root{inside}", self.leader);
        std::fs::write(&to, text).unwrap_or_else(|e| panic!("write {to}: {e}"));
        self.ok(&format!("chown root:root {inside} && chmod 0600 {inside}"));
    }

    /// Writes `text` to `inside` (root's, 0644) from the host, through PID 1's root.
    pub fn put_file(&self, inside: &str, text: &str) {
        let to = format!("/proc/{}/root{inside}", self.leader);
        std::fs::write(&to, text).unwrap_or_else(|e| panic!("write {to}: {e}"));
        self.ok(&format!("chown root:root {inside} && chmod 0644 {inside}"));
    }

    /// Runs `cmd` while reading every process's command line inside, as any local
    /// account can (`/proc/*/cmdline` is world-readable), every 50 ms until `cmd`
    /// ends. Returns its output and each distinct argument seen.
    pub fn sh_watching_cmdlines(&self, cmd: &str) -> (Output, String) {
        let tag = std::process::id();
        let (log, stop) = (
            format!("/tmp/cmdlines-{tag}.log"),
            format!("/tmp/cmdlines-{tag}.stop"),
        );
        let out = self.sh(&format!(
            "rm -f {stop}
             (while [ ! -e {stop} ]; do
                setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'cat /proc/[0-9]*/cmdline' 2>/dev/null | tr '\\0' '\\n'
                sleep 0.05
              done | awk '!seen[$0]++' > {log}) & scanner=$!
             {cmd}
             rc=$?; touch {stop}; wait $scanner; exit $rc"
        ));
        let seen = self.ok(&format!("cat {log}; rm -f {log} {stop}"));
        (out, seen)
    }

    /// `systemd-analyze security`'s overall exposure of `unit` (printed as a figure).
    pub fn exposure(&self, unit: &str) -> f64 {
        let score = self.ok(&format!(
            "systemd-analyze security --no-pager {unit} | tail -n 1"
        ));
        eprintln!("[figure] {unit}: {}", score.trim());
        score
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no exposure figure for {unit}: {score}"))
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "`{cmd}` failed ({:?}):\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Turns off the components that come from release archives: their hosts cannot
    /// be reached from the test machines (tests/e2e_archives.rs covers them through
    /// a local mirror).
    pub fn without_release_archives(&self) {
        self.ok("mkdir -p /etc/analytics-stack/stack.d && printf '# The release hosts cannot be reached from the test machines.\\n[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/00-no-release-hosts.toml");
    }

    /// Turns off Airflow, Superset and dlt (tests/e2e_apps.rs covers them): tests of
    /// the other tiers need not build venvs.
    pub fn without_apps(&self) {
        self.ok("mkdir -p /etc/analytics-stack/stack.d && printf '# This test is about other tiers.\\n[airflow]\\nenabled = false\\n[superset]\\nenabled = false\\n[dlt]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/01-no-apps.toml");
    }

    /// Asserts that nothing of the stack listens beyond loopback but NGINX (80, 443)
    /// and returns the listeners. The container shares the host's network: only
    /// sockets of the container's own processes, those `ss -p` can name from inside,
    /// are the stack's.
    pub fn assert_only_nginx_beyond_loopback(&self) -> String {
        let listeners = self.ok("ss -Hltnp");
        for line in listeners.lines().filter(|l| l.contains("users:(")) {
            let local = line.split_whitespace().nth(3).unwrap_or("");
            assert!(
                local.starts_with("127.0.0.1:")
                    || local.starts_with("[::1]:")
                    || local.ends_with(":80")
                    || local.ends_with(":443"),
                "{local} listens beyond loopback:\n{listeners}"
            );
        }
        listeners
    }

    /// The tests' curl trusts the stack CA the first apply creates, as a user who
    /// imported it would (`analytics-stack credentials nginx` names it).
    pub fn trust_stack_ca(&self) {
        self.ok("printf 'cacert = \"/var/lib/analytics-stack/tls/ca.crt\"\n' > /root/.curlrc");
    }

    /// A file of the container, read through its PID 1's root from the host.
    pub fn copy_out(&self, inside: &str, host: &std::path::Path) {
        let from = format!("/proc/{}/root{inside}", self.leader);
        std::fs::copy(&from, host).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    }

    /// A host file put into the container (root's, 0600).
    pub fn copy_in(&self, host: &std::path::Path, inside: &str) {
        let to = format!("/proc/{}/root{inside}", self.leader);
        std::fs::copy(host, &to).unwrap_or_else(|e| panic!("copy to {to}: {e}"));
        self.ok(&format!("chown root:root {inside} && chmod 0600 {inside}"));
    }

    pub fn start_daemon(&self) {
        self.trust_stack_ca();
        // For measuring an apply one step at a time (bench/cold-apply.sh): the
        // daemon's own setting, from the test's environment.
        if let Ok(steps) = std::env::var("ANALYTICS_STACK_APPLY_STEPS") {
            let steps: u32 = steps
                .parse()
                .expect("ANALYTICS_STACK_APPLY_STEPS is a number");
            self.ok(&format!("mkdir -p /run/systemd/system/analytics-stackd.service.d && printf '[Service]\\nEnvironment=ANALYTICS_STACK_APPLY_STEPS={steps}\\n' > /run/systemd/system/analytics-stackd.service.d/apply-steps.conf"));
        }
        self.ok("systemctl daemon-reload && systemctl start analytics-stackd.service");
        eprintln!(
            "[{}] analytics-stackd is {}",
            self.name,
            self.ok("systemctl is-active analytics-stackd.service")
                .trim()
        );
    }

    /// `kill -9` after every step an apply records: the daemon runs with the
    /// failpoint ANALYTICS_STACK_KILL_AFTER_STEPS=1, so each apply is killed right
    /// after its first recorded step and the next one replans what is left, until
    /// one completes. `between` checks the host after each kill. Returns the kills,
    /// checked against the daemon's journal; the daemon runs normally again after.
    pub fn apply_killed_after_each_step(&self, between: impl Fn(&Container)) -> usize {
        self.daemon_failpoint(Some("ANALYTICS_STACK_KILL_AFTER_STEPS=1"));
        let journal_before = self.failpoint_kills();
        let mut kills = 0;
        let mut daemon = self.daemon_main_pid();
        loop {
            if kills > 0 {
                self.start_daemon_after_kill(daemon);
                daemon = self.daemon_main_pid();
            }
            let out = self.sh("analytics-stack apply");
            if out.status.code() == Some(0) {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("analytics-stackd exited during the apply"),
                "{stderr}"
            );
            kills += 1;
            assert!(kills < 60, "the applies never converged");
            between(self);
        }
        assert_eq!(self.failpoint_kills() - journal_before, kills);
        self.daemon_failpoint(None);
        kills
    }

    /// `command` (an `analytics-stack OPERATION …` line) with the daemon killed
    /// (`ANALYTICS_STACK_KILL_AT=OPERATION:N`) after its first phase, then, run again
    /// from the start, after its second, and so on until it completes; `between`
    /// checks the host after each kill, with the daemon started again. Returns the
    /// kills; the daemon runs normally again after.
    pub fn killed_after_each_phase(
        &self,
        operation: &str,
        command: &str,
        between: impl Fn(&Container),
    ) -> usize {
        let mut kills = 0;
        loop {
            self.daemon_failpoint(Some(&format!(
                "ANALYTICS_STACK_KILL_AT={operation}:{}",
                kills + 1
            )));
            let daemon = self.daemon_main_pid();
            let out = self.sh(command);
            if out.status.code() == Some(0) {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("analytics-stackd exited during the {operation}")),
                "{stderr}"
            );
            kills += 1;
            assert!(kills < 40, "{command} never completed");
            self.start_daemon_after_kill(daemon);
            between(self);
        }
        self.daemon_failpoint(None);
        kills
    }

    /// The daemon's main PID as systemd knows it (0 while it is not running).
    pub fn daemon_main_pid(&self) -> u32 {
        self.ok("systemctl show -P MainPID analytics-stackd.service")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Starts the daemon again after its process `killed` died. The CLI learns of a
    /// death from the bus, which can be before systemd has handled it: a `start`
    /// then finds the unit still active and does nothing, and a check after it sees
    /// the host before the daemon's recovery (seen once in three loaded runs). So
    /// first wait (up to 30 s) until systemd no longer names that process; `start`
    /// then waits for the new daemon's READY, which it says after its recovery.
    pub fn start_daemon_after_kill(&self, killed: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.daemon_main_pid() == killed && killed != 0 {
            assert!(
                Instant::now() < deadline,
                "systemd still names the killed daemon ({killed}) as running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.ok("systemctl reset-failed analytics-stackd.service; systemctl start analytics-stackd.service");
    }

    /// Restarts the daemon with a failpoint in its environment
    /// (`ANALYTICS_STACK_KILL_AFTER_STEPS=N`: SIGKILL after its Nth recorded step;
    /// `ANALYTICS_STACK_KILL_AT=restore:N`: after a restore's Nth phase), or without.
    pub fn daemon_failpoint(&self, env: Option<&str>) {
        let conf = "/run/systemd/system/analytics-stackd.service.d/kill.conf";
        match env {
            Some(env) => self.ok(&format!(
                "mkdir -p $(dirname {conf}) && printf '[Service]\\nEnvironment={env}\\n' > {conf}"
            )),
            None => self.ok(&format!("rm -f {conf}")),
        };
        self.ok("systemctl daemon-reload && systemctl reset-failed analytics-stackd.service; systemctl restart analytics-stackd.service");
    }

    /// How many times the daemon's journal says the failpoint killed it.
    pub fn failpoint_kills(&self) -> usize {
        self.ok(
            "journalctl -u analytics-stackd --no-pager | grep -c 'failpoint: killed after' || true",
        )
        .trim()
        .parse()
        .unwrap_or(0)
    }
}

/// Ports the stack's services listen on (the defaults).
const STACK_PORTS: &[u16] = &[
    80, 3000, 3100, 5432, 6379, 6380, 8080, 8088, 8974, 9080, 9090, 9096, 9100, 9102, 9125,
];

/// Waits (up to a minute) until no listener holds one of the stack's ports on the
/// host's network, and fails naming the port if one still does.
fn wait_for_stack_ports(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy: Vec<u16> = analytics_stack::host::ports::sockets()
            .into_iter()
            .map(|s| s.port)
            .filter(|p| STACK_PORTS.contains(p))
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: ports {busy:?} are still held on the host's network"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Container {
    /// Halts the container (as the host's shutdown would: SIGTERM to nspawn, which
    /// halts PID 1) and returns how long that took, up to 90 s; `Drop` then finds it
    /// halted.
    pub fn halt_seconds(&mut self) -> f64 {
        self.record_cpu();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.nspawn.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed().as_secs_f64()
    }

    /// Appends the CPU seconds everything in the container used to
    /// `target/e2e-cpu.tsv` (test binary, test, container, seconds), once, before
    /// it halts: `tests/harness/timings.py` sums them per test for the suite's
    /// budget. Best effort: a figure, not a check.
    fn record_cpu(&mut self) {
        if std::mem::replace(&mut self.cpu_recorded, true) {
            return;
        }
        let Some(seconds) = self
            .cgroup
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join("cpu.stat")).ok())
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map(|usec| usec as f64 / 1e6)
        else {
            return;
        };
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!(
            "{}\t{test}\t{}\t{seconds:.1}\n",
            env!("CARGO_CRATE_NAME"),
            self.name
        );
        let _best_effort = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(repo().join("target/e2e-cpu.tsv"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.record_cpu();
        let already_halted = matches!(self.nspawn.try_wait(), Ok(Some(_)));
        if already_halted {
            if let Some(disk) = &self.disk {
                remove_disk(disk);
            }
            return;
        }
        // SIGTERM to nspawn; it halts PID 1 with SIGRTMIN+3.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.nspawn.id().to_string())
            .status();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut halted = false;
        while !halted && Instant::now() < deadline {
            halted = matches!(self.nspawn.try_wait(), Ok(Some(_)));
            if !halted {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if !halted {
            // What systemd was still waiting for, then the kill.
            let waiting = self.sh("systemctl list-jobs --no-pager --no-legend 2>&1; systemctl list-units --no-pager --no-legend --state=deactivating 2>&1");
            eprintln!(
                "[{}] did not halt within {} s: killed; still stopping:\n{}",
                self.name,
                started.elapsed().as_secs(),
                String::from_utf8_lossy(&waiting.stdout)
            );
            // SIGKILL to the container's PID 1 ends every process of its PID
            // namespace; killing only nspawn would leave them running, holding the
            // stack's ports on the shared network.
            let _ = Command::new("kill")
                .args(["-KILL", &self.leader.to_string()])
                .status();
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        if let Some(disk) = &self.disk {
            remove_disk(disk);
        }
    }
}

/// A container's root on the host's disk, `DISK/root`: an overlay whose lower layer
/// is the cached root filesystem (read-only, shared) and whose upper layer is
/// `DISK/upper`, thrown away with the container. nspawn's `--volatile=overlay` would
/// put the upper layer in tmpfs: every file the stack writes (packages, venvs,
/// databases, backups) held in memory that cannot be reclaimed — 17 GiB of it with
/// three tests at once, when the kernel's OOM killer took Airflow's API server.
fn overlay_root(name: &str, lower: &Path) -> PathBuf {
    let disk = PathBuf::from(format!("/var/tmp/analytics-stack-test/overlay-{name}"));
    remove_disk(&disk);
    for dir in ["upper", "work", "root"] {
        std::fs::create_dir_all(disk.join(dir)).unwrap();
    }
    // `volatile`: fsync and syncfs are no-ops on it, as they were on tmpfs (dpkg and
    // PostgreSQL sync often; a root thrown away with its container need not survive
    // a crash of the host). Without it (run 43), `e2e_apps` took 317 s against 210 s
    // on tmpfs (run 35).
    let options = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        lower.display(),
        disk.join("upper").display(),
        disk.join("work").display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(disk.join("root"))
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "cannot mount the overlay of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    disk
}

/// Removes a container's directory on the host's disk, unmounting its overlay root
/// first (a copied root is no mount: `umount` then fails, harmlessly).
fn remove_disk(disk: &Path) {
    let root = disk.join("root");
    if root.exists() {
        // Lazily: a process still holding it lets go when it ends.
        let _not_mounted = Command::new("umount")
            .arg("-l")
            .arg(&root)
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(disk);
}

/// The Debian package built by packaging/build-deb.sh (built now if missing).
/// How a Redis door refused a `redis-cli … PING`: `Auth` (the server answered and
/// refused the login), `Closed` (the connection ended before any Redis answer: the
/// door's allow list or its TLS handshake), or `NotRefused` (a PONG, or anything
/// else, which a test must treat as a failure).
#[derive(Debug, PartialEq, Eq)]
pub enum RedisRefusal {
    Auth,
    Closed,
    NotRefused(String),
}

/// curl to this host's Loki through NGINX's loopback door, with the primary's
/// client certificate (the only way in; the door names the tenant). Append the
/// path (and curl's options after it).
pub const LOKI: &str = "curl -fsS --cacert /var/lib/analytics-stack/tls/ca.crt --cert /var/lib/analytics-stack/tls/primary-client.crt --key /var/lib/analytics-stack/tls/primary-client.key --resolve localhost:3100:127.0.0.1 https://localhost:3100";

pub fn redis_refusal(out: &Output) -> RedisRefusal {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.lines().any(|l| l.trim() == "PONG") {
        return RedisRefusal::NotRefused(said);
    }
    // redis-cli killed by SIGPIPE, having said nothing: it wrote into a connection
    // the door had already closed.
    use std::os::unix::process::ExitStatusExt;
    if said.trim().is_empty() && out.status.signal() == Some(13) {
        return RedisRefusal::Closed;
    }
    if ["WRONGPASS", "NOAUTH", "AUTH failed"]
        .iter()
        .any(|m| said.contains(m))
    {
        return RedisRefusal::Auth;
    }
    let closed = [
        "Server closed the connection",
        "Connection reset by peer",
        "Could not negotiate a TLS connection",
        "SSL_connect",
        "I/O error",
        "Broken pipe",
    ];
    if closed.iter().any(|m| said.contains(m)) {
        return RedisRefusal::Closed;
    }
    RedisRefusal::NotRefused(said)
}

pub fn package_deb() -> PathBuf {
    let dir = repo().join("target/debian");
    // This machine's architecture (an arm64 package may lie beside it).
    let suffix = format!("_{}.deb", analytics_stack::artifact::catalog::debian_arch());
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(&suffix))
    });
    match found {
        Some(p) => p,
        None => {
            let ok = std::process::Command::new(repo().join("packaging/build-deb.sh"))
                .status()
                .unwrap();
            assert!(ok.success(), "building the package failed");
            package_deb()
        }
    }
}
