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

async fn dpkg_configure_pending() -> Result<(), String> {
    let out = Command::new("dpkg")
        .args(["--configure", "-a", "--force-confdef", "--force-confold"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run dpkg: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dpkg --configure -a: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub async fn install(packages: &[String]) -> Result<(), AptError> {
    let err = |detail: String| AptError {
        packages: packages.join(" "),
        detail,
    };
    // Keep services from starting during the install; leave an existing policy alone.
    // A file with our marker was left by a daemon killed mid-install: it is ours.
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
        .map_err(|e| err(format!("cannot write {POLICY_RC_D}: {e}")))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(e.to_string()))?;
    }
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
    // Finish any install a killed daemon interrupted; a no-op otherwise.
    let mut result = dpkg_configure_pending().await;
    if result.is_ok() && !lists_present() {
        result = apt_get(&["update", "-q"]).await;
    }
    if result.is_ok() {
        result = apt_get(&args).await;
        if result.is_err() {
            // Package lists may be stale or missing the package: refresh once.
            result = match apt_get(&["update", "-q"]).await {
                Ok(()) => apt_get(&args).await,
                Err(e) => Err(e),
            };
        }
    }
    if own_policy {
        if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
            tracing::warn!("cannot remove {POLICY_RC_D}: {e}");
        }
    }
    result.map_err(err)
}
