//! DAGs and pipelines on every worker host. The choice: the stack's own sync, not a
//! git repository. Users already put DAGs and pipelines in folders on the primary
//! (where the scheduler and DAG processor read them); a git server would be one more
//! thing to run, secure and back up on an air-gapped host. So the primary publishes
//! the two folders as one content-addressed archive (`analytics-dag-bundle.timer`,
//! every 30 s, only when they changed), NGINX serves it over TLS to the worker hosts'
//! addresses only, and each worker (`analytics-dag-sync.timer`, every 30 s) fetches a
//! new version, checks its sha256, unpacks it beside the previous ones and switches a
//! symlink in one rename. The versions are sha256s: `current` names the one in force
//! on either side, and the journal says when each became current. Both run as the
//! Airflow user, with only their own directory writable.

use super::airflow::USER as AIRFLOW_USER;
use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

/// On the primary: the published archives and `current`; NGINX reads them (its
/// group), the Airflow user writes them.
pub const DIR: &str = "/var/lib/analytics-stack/dag-bundle";
/// On a worker host: `versions/SHA256/{dags,pipelines}` and the symlink `current`.
pub const SYNC_DIR: &str = "/var/lib/analytics-stack/dag-sync";
pub const PUBLISH_SERVICE: &str = "analytics-dag-bundle.service";
pub const PUBLISH_TIMER: &str = "analytics-dag-bundle.timer";
pub const SYNC_SERVICE: &str = "analytics-dag-sync.service";
pub const SYNC_TIMER: &str = "analytics-dag-sync.timer";
const CONF_DIR: &str = "/etc/analytics-stack/dag-bundle";
pub const PUBLISH_SH: &str = include_str!("../../templates/dag-bundle/publish.sh");
pub const SYNC_SH: &str = include_str!("../../templates/dag-bundle/sync.sh");

/// The DAG folder a worker host's Airflow reads: the current synced version.
pub fn worker_dags_dir() -> String {
    format!("{SYNC_DIR}/current/dags")
}

/// The pipeline folder on a worker host.
pub fn worker_pipelines_dir() -> String {
    format!("{SYNC_DIR}/current/pipelines")
}

/// Runs `service` at once when started, then 30 s after each run.
fn timer(name: &str, description: &str, service: &str) -> UnitSpec {
    crate::units::timer(
        name,
        description,
        &["OnActiveSec=0", "OnUnitInactiveSec=30s", "AccuracySec=1s"],
        service,
    )
}

fn script_service(
    name: &str,
    description: &str,
    script: &str,
    writable: &str,
    environment: Vec<(String, String)>,
    credentials: Vec<(String, String)>,
) -> UnitSpec {
    let mut unit = ServiceUnit::new(
        name,
        description,
        AIRFLOW_USER,
        format!("/bin/sh {CONF_DIR}/{script}"),
    );
    unit.service_type = "oneshot";
    unit.timeout_sec = 600;
    unit.read_write_paths = vec![writable.into()];
    unit.environment = environment;
    unit.credentials = credentials;
    let mut unit = unit.render();
    unit.triggered = true;
    unit
}

fn script_file(name: &str, text: &str, service: &str) -> FileSpec {
    FileSpec::new(format!("{CONF_DIR}/{name}"), text)
        .mode(0o640)
        .group(AIRFLOW_USER)
        .notify(service, OnChange::Restart)
}

/// On a primary with worker hosts: publishes the folders for them.
pub fn render_publisher() -> ComponentSpec {
    ComponentSpec {
        name: "dag-bundle",
        description: "The DAG and pipeline folders, published for the worker hosts",
        dirs: vec![
            DirSpec::config(CONF_DIR, AIRFLOW_USER),
            // setgid: what the Airflow user writes here is NGINX's group's to read.
            DirSpec {
                path: DIR.into(),
                mode: 0o2750,
                owner: AIRFLOW_USER.into(),
                group: super::nginx::USER.into(),
            },
        ],
        files: vec![script_file("publish.sh", PUBLISH_SH, PUBLISH_SERVICE)],
        units: vec![
            timer(
                PUBLISH_TIMER,
                "analytics-stack: publish the DAG and pipeline folders for the worker hosts",
                PUBLISH_SERVICE,
            ),
            script_service(
                PUBLISH_SERVICE,
                "analytics-stack: publish the DAG and pipeline folders for the worker hosts",
                "publish.sh",
                DIR,
                vec![
                    ("ROOT".into(), crate::model::paths::STATE.into()),
                    ("OUT".into(), DIR.into()),
                ],
                Vec::new(),
            ),
        ],
        ..Default::default()
    }
}

/// The primary's HTTPS origin as a worker host reaches it.
pub fn primary_origin(config: &Config) -> String {
    let door = config
        .primary_at(config.worker.primary_https_port)
        .map(|a| a.to_string())
        .unwrap_or_default();
    format!("https://{door}")
}

/// On a worker host: keeps the primary's folders current.
pub fn render_sync(config: &Config) -> ComponentSpec {
    let client = crate::tls::client::credentials(SYNC_SERVICE);
    ComponentSpec {
        name: "dag-sync",
        description: "The primary's DAG and pipeline folders, kept current here",
        packages: vec!["curl".into()],
        dirs: vec![
            DirSpec::config(CONF_DIR, AIRFLOW_USER),
            DirSpec::private(SYNC_DIR, AIRFLOW_USER),
        ],
        files: vec![script_file("sync.sh", SYNC_SH, SYNC_SERVICE)],
        units: vec![
            timer(
                SYNC_TIMER,
                "analytics-stack: keep the primary's DAG and pipeline folders current",
                SYNC_SERVICE,
            ),
            script_service(
                SYNC_SERVICE,
                "analytics-stack: fetch the primary's DAG and pipeline folders",
                "sync.sh",
                SYNC_DIR,
                vec![
                    (
                        "BASE".into(),
                        format!("{}/stack-dags", primary_origin(config)),
                    ),
                    ("CA".into(), crate::tls::CA_CERT.into()),
                    // This worker's certificate: the DAG door admits current workers.
                    ("CERT".into(), client.cert.clone()),
                    ("KEY".into(), client.key.clone()),
                    ("DIR".into(), SYNC_DIR.into()),
                ],
                client.credentials.clone(),
            ),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    //! The two scripts, run here against directories of a temporary tree: curl is a
    //! stand-in on PATH serving the publisher's output directory, so the version,
    //! checksum, link and switch logic of the real scripts is what is tested.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    const FAKE_CURL: &str = r#"#!/bin/sh
out=""; url=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        --max-time|--cacert|--cert|--key|--max-filesize|--proto) shift 2 ;;
        -*) shift ;;
        *) url=$1; shift ;;
    esac
done
file="$SERVE/${url##*/}"
[ -f "$file" ] || { echo "404 $url" >&2; exit 22; }
if [ -n "$out" ]; then cp "$file" "$out"; else cat "$file"; fi
"#;

    struct Sides {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        out: PathBuf,
        sync: PathBuf,
        bin: PathBuf,
    }

    fn sides() -> Sides {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().to_path_buf();
        for d in ["root/dags", "root/pipelines", "out", "sync", "bin"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::write(p.join("root/dags/a.py"), "a = 1\n").unwrap();
        std::fs::write(p.join("root/pipelines/p.py"), "p = 1\n").unwrap();
        let curl = p.join("bin/curl");
        std::fs::write(&curl, FAKE_CURL).unwrap();
        std::fs::set_permissions(&curl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Sides {
            root: p.join("root"),
            out: p.join("out"),
            sync: p.join("sync"),
            bin: p.join("bin"),
            _tmp: tmp,
        }
    }

    fn run(script: &str, env: &[(&str, &Path)], bin: &Path) -> (bool, String) {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).env("PATH", path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    impl Sides {
        fn publish(&self) -> String {
            let (ok, log) = run(
                super::PUBLISH_SH,
                &[("ROOT", &self.root), ("OUT", &self.out)],
                &self.bin,
            );
            assert!(ok, "{log}");
            std::fs::read_to_string(self.out.join("current"))
                .unwrap()
                .trim()
                .to_string()
        }
        fn sync(&self) -> (bool, String) {
            run(
                super::SYNC_SH,
                &[
                    ("BASE", Path::new("https://primary/stack-dags")),
                    ("CA", Path::new("/nonexistent")),
                    ("CERT", Path::new("/nonexistent.crt")),
                    ("KEY", Path::new("/nonexistent.key")),
                    ("DIR", &self.sync),
                    ("SERVE", &self.out),
                ],
                &self.bin,
            )
        }
        fn current(&self) -> String {
            std::fs::read_link(self.sync.join("current"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        }
        fn serve(&self, version: &str, tar: &[u8]) {
            std::fs::write(self.out.join(format!("dags-{version}.tar")), tar).unwrap();
            std::fs::write(self.out.join("current"), format!("{version}\n")).unwrap();
        }
    }

    #[test]
    fn versions_are_content_addressed_and_switched_whole() {
        let s = sides();
        let v1 = s.publish();
        assert_eq!(v1.len(), 64);
        assert_eq!(s.publish(), v1, "unchanged folders, the same version");
        let (ok, log) = s.sync();
        assert!(ok, "{log}");
        assert_eq!(s.current(), format!("versions/{v1}"));
        assert_eq!(
            std::fs::read_to_string(s.sync.join("current/dags/a.py")).unwrap(),
            "a = 1\n"
        );
        assert!(s.sync().0, "nothing new: nothing to do");

        std::fs::write(s.root.join("dags/a.py"), "a = 2\n").unwrap();
        let v2 = s.publish();
        assert_ne!(v2, v1);
        assert!(s.sync().0);
        assert_eq!(s.current(), format!("versions/{v2}"));
        assert_eq!(
            std::fs::read_to_string(s.sync.join("current/dags/a.py")).unwrap(),
            "a = 2\n"
        );
        // Three versions stay on either side.
        for i in 3..=5 {
            std::fs::write(s.root.join("dags/a.py"), format!("a = {i}\n")).unwrap();
            s.publish();
            assert!(s.sync().0);
        }
        let tars = std::fs::read_dir(&s.out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tar")
            })
            .count();
        assert_eq!(tars, 3);
        assert_eq!(
            std::fs::read_dir(s.sync.join("versions")).unwrap().count(),
            3
        );
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for dir in ["dags/", "pipelines/"] {
            let mut h = tar::Header::new_gnu();
            h.set_path(dir).unwrap();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            // Raw names: the tar crate would refuse '..' itself.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name(link).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            } else {
                h.set_size(5);
                h.set_cksum();
                b.append(&h, &b"evil\n"[..]).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_bad_version_a_wrong_checksum_or_a_hostile_archive_changes_nothing() {
        let s = sides();
        let good = s.publish();
        assert!(s.sync().0);
        let before = s.current();
        let sha = |b: &[u8]| crate::util::sha256_hex(b);

        // Not a sha256: never used in a path.
        std::fs::write(s.out.join("current"), "../../etc\n").unwrap();
        let (ok, log) = s.sync();
        assert!(!ok && log.contains("not a sha256"), "{log}");
        // An archive that is not the version it is named by.
        let other = tar_with(&[("dags/x.py", tar::EntryType::Regular, "")]);
        s.serve(&"ab".repeat(32), &other);
        let (ok, log) = s.sync();
        assert!(!ok, "{log}");
        // Members with '..', and links (into the system or not), even with a good sum.
        for hostile in [
            tar_with(&[("dags/../../escaped", tar::EntryType::Regular, "")]),
            tar_with(&[("dags/etc", tar::EntryType::Symlink, "/etc")]),
            tar_with(&[("dags/near", tar::EntryType::Symlink, "a.py")]),
        ] {
            s.serve(&sha(&hostile), &hostile);
            let (ok, log) = s.sync();
            assert!(!ok, "{log}");
            assert!(!s.sync.join(format!("versions/{}", sha(&hostile))).exists());
        }
        assert_eq!(s.current(), before, "the version in force stays");
        assert!(!s.sync.parent().unwrap().join("escaped").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&s.sync)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // The primary's own bundle again: back in force.
        std::fs::write(s.out.join("current"), format!("{good}\n")).unwrap();
        assert!(s.sync().0);
    }
}
