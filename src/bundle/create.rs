//! `analytics-stack bundle create`: run on a connected machine, gathers everything an
//! install of the configured stack needs for a target distribution and architecture
//! into one file. Debian packages are resolved with a private apt root (its own
//! sources, an empty dpkg status, the target architecture), so the bundle holds every
//! dependency down to libc, whatever the connected machine has installed.

use super::wheels::{self, Target};
use super::{BundledArchive, Manifest};
use crate::artifact::Fetcher;
use crate::components::{render_all, Platform};
use crate::config::Config;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub output: PathBuf,
    pub distro: String,
    pub arch: String,
    /// Debian mirror the packages come from.
    pub debian_mirror: String,
    /// Where downloads are cached between runs.
    pub cache: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateReport {
    pub output: String,
    pub bytes: u64,
    pub debs: usize,
    pub wheels: usize,
    pub archives: usize,
}

type Say<'a> = &'a (dyn Fn(&str) + Sync);

fn step_err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub async fn create(
    config: &Config,
    opts: &CreateOptions,
    say: Say<'_>,
    bytes: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<CreateReport, String> {
    let target = Target::for_debian(&opts.distro, &opts.arch).ok_or_else(|| {
        format!(
            "cannot bundle for Debian {} {}: known are bookworm and trixie, amd64 and arm64",
            opts.distro, opts.arch
        )
    })?;
    let platform = Platform {
        codename: opts.distro.clone(),
        arch: opts.arch.clone(),
        ..Default::default()
    };
    let mut specs = render_all(config, &platform);
    // A primary's bundle installs its worker hosts too (`join --bundle`): what a
    // worker host runs that this host does not is added (its DAG sync's curl).
    if config.workers.address.get().is_some() {
        let worker = crate::components::as_worker_host(config);
        let extra: Vec<_> = render_all(&worker, &platform)
            .into_iter()
            .filter(|s| !specs.iter().any(|p| p.name == s.name))
            .collect();
        specs.extend(extra);
    }
    let problems = crate::stack::python_problems(
        &specs,
        &crate::facts::HostFacts {
            codename: opts.distro.clone(),
            ..Default::default()
        },
    );
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let work = opts.output.with_extension("partial.d");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = gather(config, opts, &specs, &target, &work, say, bytes).await;
    let outcome = result.and_then(|mut manifest| {
        manifest.files = super::list_files(&work).map_err(|e| e.to_string())?;
        say(&format!(
            "writing {} ({} files)",
            opts.output.display(),
            manifest.files.len() + 1
        ));
        super::write(&work, &manifest, &opts.output).map_err(|e| e.to_string())?;
        Ok(manifest)
    });
    let _ = std::fs::remove_dir_all(&work);
    let manifest = outcome?;
    let size = std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(0);
    let count = |dir: &str| {
        manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(dir))
            .count()
    };
    Ok(CreateReport {
        output: opts.output.display().to_string(),
        bytes: size,
        debs: manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with("debs/") && f.path.ends_with(".deb"))
            .count(),
        wheels: count("wheels/"),
        archives: manifest.archives.len(),
    })
}

const BUILD_BACKENDS: &str = "build backends";

async fn gather(
    config: &Config,
    opts: &CreateOptions,
    specs: &[crate::model::ComponentSpec],
    target: &Target,
    work: &Path,
    say: Say<'_>,
    bytes: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Manifest, String> {
    let packages: BTreeSet<String> = specs.iter().flat_map(|s| s.packages.clone()).collect();
    let packages: Vec<String> = packages.into_iter().collect();
    let mut apt_suites = Vec::new();
    if !packages.is_empty() {
        say(&format!(
            "resolving Debian packages for {} {}: {}",
            opts.distro,
            opts.arch,
            packages.join(" ")
        ));
        apt_suites = debian_closure(opts, &packages, &work.join("debs"))
            .await
            .map_err(step_err("Debian packages"))?;
    }

    let fetcher = Fetcher::new(opts.cache.join("downloads")).map_err(|e| e.to_string())?;
    let mut archives = Vec::new();
    let mut pins: Vec<crate::artifact::catalog::ArchivePin> =
        specs.iter().filter_map(|s| s.archive.clone()).collect();
    // uv, and the managed CPython when an application is built on it.
    for pin in specs
        .iter()
        .filter_map(|s| s.venv.as_ref())
        .flat_map(|v| v.tool_pins())
    {
        if !pins.contains(pin) {
            pins.push(pin.clone());
        }
    }
    for pin in pins {
        say(&format!(
            "release archive {} {}",
            pin.component, pin.version
        ));
        let (path, _sha) =
            crate::artifact::obtain(&fetcher, &pin, config.archives.mirror.as_str(), None, bytes)
                .await
                .map_err(|e| e.to_string())?;
        let rel = format!("archives/{}/{}", pin.component, pin.file_name);
        link_or_copy(&path, &work.join(&rel))?;
        archives.push(BundledArchive {
            component: pin.component.clone(),
            version: pin.version.clone(),
            path: rel,
        });
    }

    let index = if config.python.index_url.as_str().is_empty() {
        "https://pypi.org/simple".to_string()
    } else {
        config
            .python
            .index_url
            .as_str()
            .trim_end_matches('/')
            .to_string()
    };
    let mut venvs = Vec::new();
    let mut seen = BTreeSet::new();
    // Each venv's wheels for the Python it is built on: the distribution's, or the
    // stack's own CPython's minor (Superset on trixie: 3.12 beside 3.13).
    let mut locks: Vec<(String, std::sync::Arc<str>, Target)> = specs
        .iter()
        .filter_map(|s| s.venv.as_ref())
        .map(|v| {
            let minor = v
                .python
                .as_ref()
                .and_then(crate::components::python::managed_minor)
                .unwrap_or(target.python_minor);
            let on = Target {
                python_minor: minor,
                ..*target
            };
            (v.name.clone(), v.lock.clone(), on)
        })
        .collect();
    // The build backends uv builds the locked sdists (e.g. odfpy) with, offline, for
    // each Python a venv is built on.
    let minors: BTreeSet<u32> = locks.iter().map(|(_, _, t)| t.python_minor).collect();
    for minor in minors {
        locks.push((
            BUILD_BACKENDS.into(),
            std::sync::Arc::from(crate::components::python::BUILD_LOCK),
            Target {
                python_minor: minor,
                ..*target
            },
        ));
    }
    for (name, lock, on) in locks {
        if name != BUILD_BACKENDS {
            venvs.push(name.clone());
        }
        let locked = wheels::parse_lock(&lock);
        say(&format!(
            "wheels of {name} for Python 3.{} ({} packages)",
            on.python_minor,
            locked.len()
        ));
        for l in &locked {
            if !seen.insert((l.name.clone(), l.version.clone(), on.python_minor)) {
                continue;
            }
            let page = fetcher
                .get_json(&format!("{index}/{}/", l.name))
                .await
                .map_err(|e| format!("{}: {e}", l.name))?;
            let files = wheels::parse_index(&page, &index);
            let Some(file) = wheels::choose(l, &files, &on) else {
                continue;
            };
            let path = fetcher
                .fetch(&file.url, &file.filename, &file.sha256, bytes)
                .await
                .map_err(|e| e.to_string())?;
            link_or_copy(&path, &work.join("wheels").join(&file.filename))?;
        }
    }
    let catalog = work.join("catalog/archives.toml");
    std::fs::create_dir_all(catalog.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&catalog, crate::artifact::catalog::EMBEDDED))
        .map_err(|e| format!("{}: {e}", catalog.display()))?;
    Ok(Manifest {
        format: super::FORMAT,
        distro: opts.distro.clone(),
        arch: opts.arch.clone(),
        created_by: format!("analytics-stack {}", env!("CARGO_PKG_VERSION")),
        debian_packages: packages,
        archives,
        venvs,
        apt_suites,
        components: specs.iter().map(|s| s.name.to_string()).collect(),
        files: Vec::new(),
    })
}

/// `%XX` escapes decoded; None for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), String> {
    // Same name, same verified file (a wheel two lock files share, or a build backend
    // a lock pins too); copying a hard link onto itself would empty it.
    if to.exists() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(|_| ()))
        .map_err(|e| format!("{}: {e}", to.display()))
}

/// Downloads `packages` and their whole dependency closure for the target into
/// `out` as a partial mirror of Debian's archives: each suite's signed `InRelease`
/// and `main/binary-ARCH/Packages` (as apt fetched and verified them), and every
/// `.deb` at its pool path under `out/ROOT/` (ROOT: `debian`, `debian-security`).
async fn debian_closure(
    opts: &CreateOptions,
    packages: &[String],
    out: &Path,
) -> Result<Vec<super::debian::AptSuite>, String> {
    let root = opts
        .cache
        .join(format!("apt-{}-{}", opts.distro, opts.arch));
    for d in [
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    let status = root.join("var/lib/dpkg/status");
    std::fs::write(&status, "").map_err(|e| e.to_string())?;
    let keyring = super::debian::KEYRING;
    let m = opts.debian_mirror.trim_end_matches('/').to_string();
    let security = m.strip_suffix("/debian").map_or_else(
        || "http://security.debian.org/debian-security".to_string(),
        |base| format!("{base}/debian-security"),
    );
    let d = &opts.distro;
    // (archive root in the bundle, its base URL, suite)
    let suites = [
        ("debian", m.clone(), d.clone()),
        ("debian", m.clone(), format!("{d}-updates")),
        ("debian-security", security.clone(), format!("{d}-security")),
    ];
    let sources: String = suites
        .iter()
        .map(|(_, base, suite)| format!("deb [signed-by={keyring}] {base} {suite} main\n"))
        .collect();
    std::fs::write(root.join("etc/apt/sources.list"), sources).map_err(|e| e.to_string())?;
    let r = root.display().to_string();
    let options = [
        format!("Dir={r}"),
        format!("Dir::State::status={}", status.display()),
        format!("Dir::Etc::SourceList={r}/etc/apt/sources.list"),
        format!("Dir::Etc::SourceParts={r}/etc/apt/sources.list.d"),
        format!("Dir::Etc::Parts={r}/etc/apt/apt.conf.d"),
        format!("Dir::Etc::Preferences={r}/etc/apt/preferences"),
        format!("Dir::Etc::PreferencesParts={r}/etc/apt/preferences.d"),
        format!("APT::Architecture={}", opts.arch),
        format!("APT::Architectures={}", opts.arch),
        "APT::Install-Recommends=false".into(),
        "Debug::NoLocking=true".into(),
        // The indexes are kept as Debian signed them (uncompressed, as the signed
        // Release lists them), whatever this machine's apt is set to store.
        "Acquire::GzipIndexes=false".into(),
        "Acquire::Languages=none".into(),
    ];
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        for o in &options {
            c.args(["-o", o]);
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(apt(&["update", "-q"])).await?;
    // Remove what an earlier run left, so the bundle holds this closure exactly.
    let archives = root.join("var/cache/apt/archives");
    for e in std::fs::read_dir(&archives)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "deb") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    // Where each file of the closure sits in its archive: apt's own URIs.
    let mut uris = vec!["install", "-y", "-qq", "--print-uris"];
    uris.extend(packages.iter().map(String::as_str));
    let printed = apt(&uris)
        .output()
        .await
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !printed.status.success() {
        return Err(String::from_utf8_lossy(&printed.stderr).into_owned());
    }
    // (Asked before downloading: apt names only what it still has to fetch.)
    let mut args = vec!["install", "-y", "-q", "--download-only"];
    args.extend(packages.iter().map(String::as_str));
    run(apt(&args)).await?;
    let bases = [("debian-security", &security), ("debian", &m)];
    let mut placed = 0;
    for line in String::from_utf8_lossy(&printed.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(uri), Some(file)) = (f.next(), f.next()) else {
            continue;
        };
        let uri = uri.trim_matches('\'');
        let Some((archive_root, rel)) = bases.iter().find_map(|(name, base)| {
            uri.strip_prefix(base.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .map(|rel| (*name, rel))
        }) else {
            return Err(format!("{uri}: not from the configured Debian mirrors"));
        };
        // apt prints URIs escaped (`+` as `%2b`); the index names the plain path.
        let rel = percent_decode(rel).ok_or_else(|| format!("{uri}: not a URI path"))?;
        if !rel.starts_with("pool/") || rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!("{uri}: not a pool path"));
        }
        link_or_copy(&archives.join(file), &out.join(archive_root).join(rel))?;
        placed += 1;
    }
    if placed == 0 {
        return Err("apt named no package files to download".into());
    }
    // The signed indexes, as apt verified them.
    let lists = root.join("var/lib/apt/lists");
    let names: Vec<String> = std::fs::read_dir(&lists)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let find = |suffix: &str| {
        names
            .iter()
            .find(|n| n.ends_with(suffix))
            .map(|n| lists.join(n))
            .ok_or_else(|| format!("apt kept no {suffix} in {}", lists.display()))
    };
    // Each suite's index exactly as Debian signed it (Packages.xz: apt on the
    // target asks for the compressed file the signed Release lists first), fetched
    // and checked against the InRelease apt verified here.
    let fetcher = Fetcher::new(opts.cache.join("downloads")).map_err(|e| e.to_string())?;
    let work_root = out.parent().expect("debs/ has a parent");
    let mut kept = Vec::new();
    for (archive_root, base, suite) in &suites {
        let s = super::debian::AptSuite {
            root: archive_root.to_string(),
            suite: suite.clone(),
        };
        let in_release = find(&format!("_dists_{suite}_InRelease"))?;
        let text = std::fs::read_to_string(&in_release)
            .map_err(|e| format!("{}: {e}", in_release.display()))?;
        let index = super::debian::index_path(&opts.arch);
        let sha = super::debian::release_sha256(&text, &index)
            .ok_or_else(|| format!("{suite}'s InRelease lists no sha256 for {index}"))?;
        let packages = fetcher
            .fetch(
                &format!("{base}/dists/{suite}/{index}"),
                &format!("Packages-{suite}-{}.xz", opts.arch),
                &sha,
                &|_, _| {},
            )
            .await
            .map_err(|e| e.to_string())?;
        link_or_copy(&in_release, &work_root.join(s.in_release()))?;
        link_or_copy(&packages, &work_root.join(s.packages(&opts.arch)))?;
        kept.push(s);
    }
    Ok(kept)
}

async fn run(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apts_escaped_uris_decode_to_the_indexes_paths() {
        assert_eq!(
            percent_decode("pool/main/b/bzip2/libbz2-1.0_1.0.8-5%2bb1_amd64.deb").as_deref(),
            Some("pool/main/b/bzip2/libbz2-1.0_1.0.8-5+b1_amd64.deb")
        );
        assert_eq!(percent_decode("a%3ab").as_deref(), Some("a:b"));
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("cut%2"), None);
    }

    #[test]
    fn linking_the_same_file_twice_keeps_its_contents() {
        let t = tempfile::tempdir().unwrap();
        let cached = t.path().join("cache/setuptools-1-py3-none-any.whl");
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"wheel bytes").unwrap();
        let bundled = t.path().join("work/wheels/setuptools-1-py3-none-any.whl");
        link_or_copy(&cached, &bundled).unwrap();
        link_or_copy(&cached, &bundled).unwrap();
        assert_eq!(std::fs::read(&bundled).unwrap(), b"wheel bytes");
        assert_eq!(std::fs::read(&cached).unwrap(), b"wheel bytes");
    }
}
