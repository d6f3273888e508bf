//! Debian packages through apt-get, with the distribution's services kept from
//! starting while they install (policy-rc.d, honoured by invoke-rc.d and
//! deb-systemd-invoke).

use std::path::Path;
use tokio::process::Command;

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const POLICY_MARKER: &str = "# analytics-stack: installing packages";

#[derive(Debug, thiserror::Error)]
#[error("apt-get install {packages} failed: {detail}")]
pub struct AptError {
    pub packages: String,
    pub detail: String,
}

/// Installed version of each package asked about (absent: not installed).
pub async fn installed_versions(packages: &[String]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if packages.is_empty() {
        return out;
    }
    let Ok(output) = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\t${Version}\n")
        .args(packages)
        .output()
        .await
    else {
        return out;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut f = line.split('\t');
        if let (Some(p), Some(status), Some(v)) = (f.next(), f.next(), f.next()) {
            if status.ends_with(" installed") {
                out.insert(p.to_string(), v.to_string());
            }
        }
    }
    out
}

fn lists_present() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false)
}

async fn apt_get(args: &[&str]) -> Result<(), String> {
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(tail.join("\n"))
}

/// dpkg with `args`, non-interactive; its stderr is the error.
async fn dpkg(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run dpkg: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let words: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Err(format!(
            "dpkg {}: {}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn dpkg_configure_pending() -> Result<(), String> {
    dpkg(&["--configure", "-a", "--force-confdef", "--force-confold"].map(std::ffi::OsStr::new))
        .await
}

/// Where packages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptSources {
    /// The host's own sources.list.
    Host,
    /// Only these `deb …` lines (an internal mirror, or a bundle's local repository),
    /// used for this install and nothing else: the host's configuration is not touched.
    Only(String),
}

/// The apt directory for [`AptSources::Only`] lists.
const OWN_SOURCES: &str = "/var/cache/analytics-stack/apt";

pub async fn install(packages: &[String], sources: &AptSources) -> Result<(), AptError> {
    let err = |detail: String| AptError {
        packages: packages.join(" "),
        detail,
    };
    let mut source_args: Vec<String> = Vec::new();
    if let AptSources::Only(lines) = sources {
        let list = Path::new(OWN_SOURCES).join("sources.list");
        std::fs::create_dir_all(OWN_SOURCES)
            .and_then(|()| std::fs::write(&list, lines))
            .map_err(|e| err(format!("cannot write {}: {e}", list.display())))?;
        source_args = [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            // The host's lists of its own sources stay as they are.
            "APT::Get::List-Cleanup=0".into(),
            // Package descriptions in other languages are not needed to install, and
            // a bundle carries only the signed indexes of packages.
            "Acquire::Languages=none".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
    }
    let own_policy = hold_services().map_err(err)?;
    let with_sources = |rest: &[&str]| -> Vec<String> {
        source_args
            .iter()
            .cloned()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(packages.iter().map(String::as_str));
    let install = with_sources(&args);
    let update = with_sources(&["update", "-q"]);
    fn as_strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    // Finish any install a killed daemon interrupted; a no-op otherwise.
    let mut result = dpkg_configure_pending().await;
    // Our own sources are always read fresh (a bundle's repository is new each time).
    if result.is_ok() && (!lists_present() || !source_args.is_empty()) {
        result = apt_get(&as_strs(&update)).await;
    }
    if result.is_ok() {
        result = apt_get(&as_strs(&install)).await;
        if result.is_err() && source_args.is_empty() {
            // Package lists may be stale or missing the package: refresh once.
            result = match apt_get(&as_strs(&update)).await {
                Ok(()) => apt_get(&as_strs(&install)).await,
                Err(e) => Err(e),
            };
        }
    }
    release_services(own_policy);
    result.map_err(err)
}

/// Keeps services from starting while packages install (a policy-rc.d refusing
/// them); leaves an operator's own policy alone. A file with our marker was left by
/// a daemon killed mid-install: it is ours. Returns whether the policy is ours.
fn hold_services() -> Result<bool, String> {
    let own_policy = std::fs::read_to_string(POLICY_RC_D)
        .map_or(!Path::new(POLICY_RC_D).exists(), |t| {
            t.contains(POLICY_MARKER)
        });
    if own_policy {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC_D,
            format!("#!/bin/sh\n{POLICY_MARKER}\nexit 101\n"),
        )
        .map_err(|e| format!("cannot write {POLICY_RC_D}: {e}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{POLICY_RC_D}: {e}"))?;
    }
    Ok(own_policy)
}

fn release_services(own_policy: bool) {
    if own_policy {
        if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
            tracing::warn!("cannot remove {POLICY_RC_D}: {e}");
        }
    }
}

/// Installs one `.deb` file (a kept copy, to go back to its version): dpkg only,
/// so nothing is fetched; a downgrade is what it is for.
pub async fn install_file(deb: &Path) -> Result<(), String> {
    let own_policy = hold_services()?;
    let mut result = dpkg_configure_pending().await;
    if result.is_ok() {
        let options = ["--force-confdef", "--force-confold", "-i"].map(std::ffi::OsStr::new);
        result = dpkg(&[&options[..], &[deb.as_os_str()]].concat()).await;
    }
    release_services(own_policy);
    result
}
