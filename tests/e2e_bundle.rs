//! End-to-end: an offline bundle. It is created in a networked real-systemd container
//! (Debian packages from Debian, wheels from PyPI, uv's real wheel and the STAND-IN
//! statsd_exporter from the tests' local archive mirror), then installed in a fresh
//! container with no network at all (a private network namespace: loopback only):
//! the package from its .deb, then `apply --bundle`. A copy with one altered byte is
//! refused first, naming the file, and leaves nothing installed.

mod common;

use common::{mirror::Mirror, Container};
use serde_json::Value;
use std::time::Instant;

const CONFIG: &str =
    "[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n";

#[test]
#[ignore = "needs root, systemd-nspawn, Debian's mirror and PyPI: run through tests/run-all.sh"]
fn a_bundle_installs_the_stack_with_no_network_and_an_altered_one_is_refused() {
    let mirror = Mirror::start();
    mirror.put_statsd_exporter();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);
    let out = tempfile::tempdir_in("/var/tmp").unwrap();

    // On a connected machine.
    {
        let c = Container::boot_for_downloads("as-e2e-bundle-make");
        c.ok(&format!(
            "mkdir -p /etc/analytics-stack && printf '{CONFIG}[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.toml",
            mirror.url
        ));
        let started = Instant::now();
        let report: Value = serde_json::from_str(
            &c.ok("analytics-stack bundle create --output /var/lib/stack-bundle.tar --json"),
        )
        .unwrap();
        eprintln!(
            "[figure] bundle create: {:.1} s, {:.1} MiB ({} debs, {} wheels, {} archives)",
            started.elapsed().as_secs_f64(),
            report["bytes"].as_f64().unwrap() / 1048576.0,
            report["debs"],
            report["wheels"],
            report["archives"]
        );
        assert!(report["debs"].as_u64().unwrap() > 50, "{report}");
        assert!(report["wheels"].as_u64().unwrap() > 200, "{report}");
        assert_eq!(report["archives"], 2, "statsd_exporter and uv: {report}");
        let inside = format!("/proc/{}/root/var/lib/stack-bundle.tar", c.leader);
        std::fs::copy(&inside, out.path().join("stack-bundle.tar")).unwrap();
    }
    // A forged bundle: one .deb replaced, and a manifest rewritten to vouch for it.
    std::fs::write(
        out.path().join("forged-bundle.tar"),
        forge_deb(&std::fs::read(out.path().join("stack-bundle.tar")).unwrap()),
    )
    .unwrap();
    // One byte altered, in the middle of the file (inside some package or wheel).
    let mut bytes = std::fs::read(out.path().join("stack-bundle.tar")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(out.path().join("altered-bundle.tar"), &bytes).unwrap();
    drop(bytes);

    // On the air-gapped host.
    let deb = common::package_deb();
    let c = Container::boot_offline_with(
        "as-e2e-bundle-use",
        &[
            (deb.parent().unwrap().to_path_buf(), "/mnt/deb"),
            (out.path().to_path_buf(), "/srv/bundles"),
        ],
    );
    // No network: only loopback, and nothing answers outside.
    let links = c.ok("ip -o link show | awk -F': ' '{print $2}'");
    assert_eq!(links.trim(), "lo", "{links}");
    assert!(!c
        .sh("curl -sS --max-time 5 -o /dev/null https://pypi.org/simple/")
        .status
        .success());
    // The image's pre-downloaded packages go: everything must come from the bundle.
    c.ok("apt-get clean");
    let name = deb.file_name().unwrap().to_string_lossy().to_string();
    c.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/deb/{name}"
    ));
    c.ok("for i in $(seq 600); do busctl status org.analyticsstack.Stack1 >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1");
    c.ok(&format!(
        "printf '{CONFIG}' > /etc/analytics-stack/stack.d/10-test.toml"
    ));

    let refused = c.sh("analytics-stack apply --bundle /srv/bundles/altered-bundle.tar");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(10), "integrity error: {err}");
    assert!(err.contains("is altered"), "{err}");
    assert!(
        err.contains("debs/") || err.contains("wheels/") || err.contains("archives/"),
        "names the file: {err}"
    );
    // Nothing installed, nothing half-written.
    assert!(!c.sh("dpkg -s postgresql-15").status.success());
    c.ok("test ! -e /opt/analytics-stack && test ! -e /var/lib/analytics-stack/state.json");
    assert_eq!(
        c.ok("ls /etc/systemd/system | grep -c '^analytics-' || true")
            .trim(),
        "0",
        "no unit written"
    );
    c.ok("test -z \"$(ls -A /var/cache/analytics-stack/bundles 2>/dev/null)\"");

    // The forged .deb passes the manifest but not Debian's signatures: refused
    // before apt runs, naming the file, with nothing installed.
    let refused = c.sh("analytics-stack apply --bundle /srv/bundles/forged-bundle.tar");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(10), "integrity error: {err}");
    assert!(
        err.contains("is not what Debian signed") && err.contains(".deb"),
        "{err}"
    );
    assert!(!c.sh("dpkg -s postgresql-15").status.success());
    c.ok("test ! -e /opt/analytics-stack && test ! -e /var/lib/analytics-stack/state.json");
    c.ok("test -z \"$(ls -A /var/cache/analytics-stack/bundles 2>/dev/null)\"");

    let started = Instant::now();
    c.ok("analytics-stack apply --bundle /srv/bundles/stack-bundle.tar");
    eprintln!(
        "[figure] apply from the bundle, no network: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status: Value = serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
    let components = status["components"].as_array().unwrap();
    let names: Vec<&str> = components
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "postgres",
            "pgbackrest",
            "redis",
            "nginx",
            "node-exporter",
            "postgres-exporter",
            "statsd-exporter",
            "prometheus",
            "alertmanager",
            "airflow",
            "superset",
            "dlt",
            "backup"
        ]
    );
    assert!(
        components.iter().all(|c| c["healthy"] == true),
        "{status:#}"
    );
    // The packages came from the bundle's repository (the only source apt had: the
    // image's cache was cleaned and there is no network).
    let policy = c.ok("apt-cache -o Dir::Etc::SourceList=/var/cache/analytics-stack/apt/sources.list -o Dir::Etc::SourceParts=/nonexistent policy postgresql-15");
    assert!(
        policy.contains("/var/cache/analytics-stack/bundles/"),
        "{policy}"
    );
    c.trust_stack_ca();
    c.ok("curl -fsS https://127.0.0.1/airflow/api/v2/monitor/health && curl -fsS https://127.0.0.1/superset/health");
    // Again from the same bundle: nothing to do.
    let again: Value = serde_json::from_str(
        &c.ok("analytics-stack apply --bundle /srv/bundles/stack-bundle.tar --json"),
    )
    .unwrap();
    assert_eq!(again["changed"], false, "{again}");

    // The suites it installed from are recorded with Debian's dates; a bundle whose
    // suites are older than those (a replayed one: still validly signed) is refused.
    let recorded: Value =
        serde_json::from_str(&c.ok("cat /var/lib/analytics-stack/apt-suite-dates.json")).unwrap();
    let suites = recorded.as_object().unwrap();
    assert!(
        suites.contains_key("debian/bookworm")
            && suites.contains_key("debian-security/bookworm-security"),
        "{recorded}"
    );
    let newer: serde_json::Map<String, Value> = suites
        .iter()
        .map(|(k, v)| (k.clone(), (v.as_u64().unwrap() + 90 * 86_400).into()))
        .collect();
    c.ok(&format!(
        "cp /var/lib/analytics-stack/apt-suite-dates.json /root/dates && printf '%s' '{}' > /var/lib/analytics-stack/apt-suite-dates.json",
        Value::Object(newer)
    ));
    let refused = c.sh("analytics-stack apply --bundle /srv/bundles/stack-bundle.tar");
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(10), "{err}");
    assert!(
        err.contains("/InRelease") && err.contains("90 days before"),
        "{err}"
    );
    c.ok("mv /root/dates /var/lib/analytics-stack/apt-suite-dates.json");
}

/// `bundle` with its first `.deb` replaced by other bytes and the manifest's entry
/// for it rewritten to match: what anyone handing a bundle over could make.
fn forge_deb(bundle: &[u8]) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(bundle);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push((path, data));
    }
    let target = entries
        .iter()
        .position(|(p, _)| p.ends_with(".deb"))
        .expect("a .deb in the bundle");
    let forged = b"!<arch>\nforged package with an evil postinst\n".to_vec();
    let name = entries[target].0.clone();
    entries[target].1 = forged.clone();
    let mut manifest: Value = serde_json::from_slice(&entries[0].1).unwrap();
    for f in manifest["files"].as_array_mut().unwrap() {
        if f["path"] == name.as_str() {
            f["sha256"] = analytics_stack::util::sha256_hex(&forged).into();
            f["size"] = forged.len().into();
        }
    }
    entries[0].1 = serde_json::to_vec(&manifest).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}
