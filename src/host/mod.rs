//! Side effects on the real host: files under a root, systemd over D-Bus, apt, users,
//! sockets. The planner never calls these; the executor and fact gathering do.

pub mod apt;
pub mod fsroot;
pub mod gather;
pub mod ports;
pub mod systemd;

use tokio::process::Command;

/// `useradd` for a system user with its own group and no login shell.
pub async fn create_system_user(
    name: &str,
    home: &std::path::Path,
    groups: &[String],
) -> Result<(), String> {
    let mut cmd = Command::new("useradd");
    if !groups.is_empty() {
        cmd.arg("--groups").arg(groups.join(","));
    }
    let out = cmd
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "analytics-stack service user",
            "--home-dir",
        ])
        .arg(home)
        .arg(name)
        .output()
        .await
        .map_err(|e| format!("cannot run useradd: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `userdel` (the user's home is the stack's data directory: never removed here).
pub async fn delete_system_user(name: &str) -> Result<(), String> {
    let out = Command::new("userdel")
        .arg(name)
        .output()
        .await
        .map_err(|e| format!("cannot run userdel: {e}"))?;
    // 6: no such user — already gone, which is what was wanted.
    if out.status.success() || out.status.code() == Some(6) {
        Ok(())
    } else {
        Err(format!(
            "userdel {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The last lines a unit wrote to the journal, for error messages.
pub async fn journal_tail(unit: &str, lines: u32) -> String {
    match Command::new("journalctl")
        .args([
            "--no-pager",
            "-o",
            "short-iso",
            "-n",
            &lines.to_string(),
            "-u",
            unit,
        ])
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        Err(e) => format!("(cannot read the journal: {e})"),
    }
}

/// A new random secret: 32 bytes from the kernel, hex-encoded (safe in URLs and configs).
pub fn new_secret(name: &str) -> std::io::Result<String> {
    Ok(crate::util::format_secret(name, &random_bytes()?))
}

/// N bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}
