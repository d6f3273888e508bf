//! Gathers the host facts the planner compares against: only what the desired
//! components and the recorded state name.

use super::fsroot::FsRoot;
use super::systemd::Systemd;
use crate::facts::{FileFact, HostFacts};
use crate::model::{paths, ComponentSpec, Provision};
use crate::state::RecordedState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn os_codename(fs: &FsRoot) -> String {
    let text = fs
        .read(Path::new("/etc/os-release"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "bookworm".into())
}

pub fn read_secret(fs: &FsRoot, name: &str) -> Option<String> {
    let bytes = fs.read(&PathBuf::from(paths::SECRETS).join(name)).ok()?;
    let s = String::from_utf8(bytes).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

pub async fn gather(
    fs: &FsRoot,
    systemd: &Systemd,
    desired: &[ComponentSpec],
    state: &RecordedState,
) -> Result<HostFacts, super::systemd::SystemdError> {
    let mut facts = HostFacts {
        codename: os_codename(fs),
        ..Default::default()
    };
    let packages: Vec<String> = desired.iter().flat_map(|s| s.packages.clone()).collect();
    facts.packages = super::apt::installed_versions(&packages).await;
    for user in desired.iter().flat_map(|s| &s.users) {
        if super::fsroot::uid_of(&user.name).is_some() {
            facts.users.insert(user.name.clone());
        }
    }
    let mut dirs: Vec<PathBuf> = vec![paths::STATE.into(), paths::SECRETS.into()];
    dirs.extend(
        desired
            .iter()
            .flat_map(|s| s.dirs.iter().map(|d| d.path.clone())),
    );
    dirs.extend(desired.iter().flat_map(|s| {
        s.pre_install_files
            .iter()
            .filter_map(|f| f.path.parent().map(Path::to_path_buf))
    }));
    for d in dirs {
        if let Some(o) = fs.ownership(&d) {
            facts.dirs.insert(d, o);
        }
    }
    let mut files: Vec<PathBuf> = desired
        .iter()
        .flat_map(|s| s.all_files().map(|f| f.path.clone()))
        .collect();
    files.push(crate::units::stack_target().path());
    files.extend(
        desired
            .iter()
            .flat_map(|s| s.units.iter().map(|u| u.path())),
    );
    for gone in &state.components {
        files.extend(
            crate::components::unit_names(gone)
                .into_iter()
                .map(|u| PathBuf::from(paths::UNIT_DIR).join(u)),
        );
    }
    for f in files {
        if let (Ok(bytes), Some(ownership)) = (fs.read(&f), fs.ownership(&f)) {
            facts.files.insert(
                f,
                FileFact {
                    sha256: crate::util::sha256_hex(&bytes),
                    ownership,
                },
            );
        }
    }
    // The secrets the stack generates, and those its files name that it is given
    // (a worker host's logins on its primary, from `join`).
    let named = desired.iter().flat_map(|s| {
        s.secrets
            .iter()
            .cloned()
            .chain(s.all_files().flat_map(|f| f.secret_names()))
    });
    for name in named {
        if facts.secrets.contains_key(&name) {
            continue;
        }
        if let Some(v) = read_secret(fs, &name) {
            facts.secrets.insert(name, v);
        }
    }
    let mut units: Vec<String> = vec![paths::TARGET.into()];
    units.extend(desired.iter().flat_map(|s| {
        s.units
            .iter()
            .map(|u| u.name.clone())
            .chain(s.distro_units.iter().cloned())
    }));
    units.extend(
        state
            .components
            .iter()
            .flat_map(|c| crate::components::unit_names(c)),
    );
    // One bus round trip each, all at once (a no-op apply asks for ~50 units).
    let asked = futures_util::future::join_all(units.iter().map(|u| systemd.unit_fact(u))).await;
    for (u, fact) in units.into_iter().zip(asked) {
        facts.units.insert(u, fact?);
    }
    for p in desired.iter().flat_map(|s| &s.init) {
        if let Provision::PostgresInitdb { data_dir, .. } = p {
            let marker = data_dir.join("PG_VERSION");
            if fs.exists(&marker) {
                facts.existing.insert(marker);
            }
            if let Some(parent) = data_dir.parent() {
                facts.postgres_clusters = postgres_clusters(fs, parent);
            }
        }
    }
    for pin in desired.iter().flat_map(|s| s.archive_pins()) {
        let root = PathBuf::from(paths::OPT).join(&pin.component);
        if fs.path(&root.join(&pin.version)).is_dir() {
            facts
                .archives
                .insert((pin.component.clone(), pin.version.clone()));
        }
        if let Ok(target) = std::fs::read_link(fs.path(&root.join("current"))) {
            facts
                .current_archives
                .insert(pin.component.clone(), target.to_string_lossy().into_owned());
        }
    }
    // The interpreter of a path (the managed one's version is known from its pin).
    if let Some(venv) = desired
        .iter()
        .filter_map(|s| s.venv.as_ref())
        .find(|v| v.python.is_none())
    {
        facts.python_minor = python_minor(&fs.path(&venv.interpreter)).await;
    }
    for venv in desired.iter().filter_map(|s| s.venv.as_ref()) {
        let current = std::fs::read_link(fs.path(&venv.root().join("current")));
        if let Ok(id) = current {
            let id = id.to_string_lossy().into_owned();
            let dir = venv.root().join(&id);
            if fs.exists(&dir.join(crate::model::VENV_COMPLETE))
                && !built_on_another_python(fs, venv, &dir, facts.python_minor)
            {
                facts.venvs.insert(venv.name.clone(), id);
            }
        }
    }
    facts.listeners = super::ports::listeners();
    if let Some(spec) = desired.iter().find_map(|s| s.tls.as_ref()) {
        facts.tls = Some(crate::tls::gather(fs, spec));
    }
    Ok(facts)
}

/// Facts for an uninstall: what of the stack is still on the host.
/// The clusters below `dir` (`dir/MAJOR` holding a `PG_VERSION` that says MAJOR):
/// a directory named otherwise (`17.upgrading`, a half-made upgrade) is no cluster.
pub fn postgres_clusters(fs: &FsRoot, dir: &Path) -> BTreeMap<u32, PathBuf> {
    let mut clusters = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(fs.path(dir)) else {
        return clusters;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(major) = name.parse::<u32>() else {
            continue;
        };
        let data = dir.join(&name);
        let version = fs.read(&data.join("PG_VERSION")).unwrap_or_default();
        if String::from_utf8_lossy(&version).trim() == major.to_string() {
            clusters.insert(major, data);
        }
    }
    clusters
}

pub async fn gather_uninstall(
    fs: &FsRoot,
    systemd: &Systemd,
    state: &RecordedState,
) -> Result<HostFacts, super::systemd::SystemdError> {
    use crate::plan::uninstall::{all_stack_units, generated_trees};
    let mut facts = HostFacts {
        codename: os_codename(fs),
        ..Default::default()
    };
    // Presence and ownership are enough to plan a removal: no hashing.
    let record = |facts: &mut HostFacts, path: PathBuf| {
        if let Some(ownership) = fs.ownership(&path) {
            facts.files.insert(
                path,
                FileFact {
                    sha256: String::new(),
                    ownership,
                },
            );
        }
    };
    for unit in all_stack_units() {
        let fact = systemd.unit_fact(&unit).await?;
        facts.units.insert(unit.clone(), fact);
        let path = PathBuf::from(paths::UNIT_DIR).join(&unit);
        record(&mut facts, path);
    }
    for f in &state.files {
        let path = PathBuf::from(f);
        record(&mut facts, path);
    }
    for user in &state.users {
        if super::fsroot::uid_of(user).is_some() {
            facts.users.insert(user.clone());
        }
    }
    for dir in generated_trees()
        .into_iter()
        .chain([PathBuf::from(paths::STATE)])
    {
        if let Some(o) = fs.ownership(&dir) {
            facts.dirs.insert(dir, o);
        }
    }
    if fs.exists(Path::new(paths::STATE_FILE)) {
        facts.existing.insert(paths::STATE_FILE.into());
    }
    Ok(facts)
}

/// The Python 3 minor version of `interpreter`, if it runs.
pub async fn python_minor(interpreter: &Path) -> Option<u32> {
    let out = tokio::process::Command::new(interpreter)
        .args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ])
        .env_clear()
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["3", minor] => minor.parse().ok(),
        _ => None,
    }
}

/// The host's names for links and the certificate: its FQDN first, then its short
/// name. The FQDN is found as `hostname --fqdn` finds it on a host without DNS: the
/// first dotted name on the `/etc/hosts` line that names the host.
pub fn host_names(fs: &FsRoot) -> Vec<String> {
    let short = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let hosts = fs
        .read(Path::new("/etc/hosts"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    names_from(&short, &hosts)
}

/// Pure part of [`host_names`]: FQDN first, short name second, valid DNS names only.
pub fn names_from(hostname: &str, hosts: &str) -> Vec<String> {
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 253
            && n.parse::<std::net::IpAddr>().is_err()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    let short = hostname.split('.').next().unwrap_or_default();
    let mut names = Vec::new();
    if hostname.contains('.') {
        names.push(hostname.to_string());
    } else {
        let fqdn = hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .find(|aliases| aliases.iter().any(|a| a.split('.').next() == Some(short)))
            .and_then(|aliases| {
                aliases
                    .into_iter()
                    .find(|a| a.contains('.') && a.split('.').next() == Some(short))
            });
        if let Some(f) = fqdn {
            names.push(f.to_string());
        }
    }
    names.push(short.to_string());
    names.retain(|n| valid(n));
    names.dedup();
    names
}

/// The host's addresses for the certificate: loopback first, then every interface's
/// address but link-local IPv6 ones (scoped to a link, never in a URL a person types).
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut out: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip: IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
                v4.ip().into()
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                ip.into()
            } else {
                continue;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The memory the stack may count on: the RAM sysinfo reports, or the limit of the
/// host's root memory cgroup when one is lower (a container limited to 2 GiB sees
/// the machine's RAM in /proc/meminfo, but can use only its limit).
pub fn host_memory_bytes() -> u64 {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let ram = system.total_memory();
    let cgroup_limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|text| text.trim().parse::<u64>().ok());
    memory_available(ram, cgroup_limit)
}

/// Pure part of [`host_memory_bytes`]: "max" (no number) or a limit above the RAM
/// means no limit.
pub fn memory_available(ram: u64, cgroup_limit: Option<u64>) -> u64 {
    match cgroup_limit {
        Some(limit) if ram == 0 || limit < ram => limit,
        _ => ram,
    }
}

/// The cores the daemon may use (affinity and CPU quota counted).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// A venv whose interpreter is gone, or (built on a path, not the managed CPython)
/// is now another Python 3 minor version than `now` (Debian's python3 after an
/// upgrade to trixie), is no venv: it is built again.
pub fn built_on_another_python(
    fs: &FsRoot,
    venv: &crate::model::VenvSpec,
    dir: &Path,
    now: Option<u32>,
) -> bool {
    let other_minor = venv.python.is_none()
        && matches!((venv_minor(fs, dir), now), (Some(built), Some(now)) if built != now);
    other_minor || interpreter_gone(fs, dir)
}

/// Whether the interpreter a venv was built on no longer exists: its `bin/python`
/// link (uv writes the interpreter's absolute path) names nothing, read inside `fs`.
/// A venv whose link cannot be read is not judged.
pub fn interpreter_gone(fs: &FsRoot, venv_dir: &Path) -> bool {
    let link = venv_dir.join("bin/python");
    let Ok(target) = std::fs::read_link(fs.path(&link)) else {
        return false;
    };
    let target = if target.is_absolute() {
        target
    } else {
        venv_dir.join("bin").join(target)
    };
    !fs.exists(&target)
}

/// The Python 3 minor version a venv was built for (`version_info` in its
/// `pyvenv.cfg`).
pub fn venv_minor(fs: &FsRoot, venv_dir: &Path) -> Option<u32> {
    let cfg = fs.read(&venv_dir.join("pyvenv.cfg")).ok()?;
    String::from_utf8_lossy(&cfg).lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "version_info")
            .then(|| value.trim().split('.').nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod interpreter_tests {
    use super::*;

    #[test]
    fn a_venv_whose_interpreter_was_removed_is_seen_as_gone() {
        let t = tempfile::tempdir().unwrap();
        let fs = FsRoot::new(t.path());
        let venv = Path::new("/opt/analytics-stack/airflow/3.3.2-abc");
        std::fs::create_dir_all(fs.path(&venv.join("bin"))).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3.11", fs.path(&venv.join("bin/python")))
            .unwrap();
        // bookworm's python3.11 is gone (the host is trixie now).
        assert!(interpreter_gone(&fs, venv));
        std::fs::create_dir_all(fs.path(Path::new("/usr/bin"))).unwrap();
        std::fs::write(fs.path(Path::new("/usr/bin/python3.11")), b"").unwrap();
        assert!(!interpreter_gone(&fs, venv));
        std::fs::write(
            fs.path(&venv.join("pyvenv.cfg")),
            b"home = /usr/bin\nimplementation = CPython\nversion_info = 3.11.2\n",
        )
        .unwrap();
        assert_eq!(venv_minor(&fs, venv), Some(11));
        // No link to read (not a venv uv made): not judged.
        assert!(!interpreter_gone(
            &fs,
            Path::new("/opt/analytics-stack/dlt/x")
        ));
    }
}

#[cfg(test)]
mod name_tests {
    use super::names_from;

    #[test]
    fn the_fqdn_comes_from_the_hosts_line_that_names_the_host() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tstack.example.org stack # installer\n::1 localhost ip6-localhost\n";
        assert_eq!(names_from("stack", hosts), ["stack.example.org", "stack"]);
        // A dotted hostname is its own FQDN.
        assert_eq!(
            names_from("db1.corp.example", ""),
            ["db1.corp.example", "db1"]
        );
        // No hosts line: the short name alone; nothing invalid ever becomes a name.
        assert_eq!(names_from("vm", "127.0.0.1 localhost\n"), ["vm"]);
        assert!(names_from("", "").is_empty());
        assert!(names_from("bad_name", "").is_empty());
        assert_eq!(
            names_from("stack", "10.0.0.1 other.example stack.lan\n"),
            ["stack.lan", "stack"]
        );
    }
}
