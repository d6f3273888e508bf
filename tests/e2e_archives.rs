//! End-to-end: components installed from release archives through a local mirror in
//! upstream's layout (the real hosts cannot be reached here). Loki 3.7.0, Promtail
//! 3.5.1 and statsd_exporter 0.30.0 are the REAL programs (shared/fixtures/
//! release-archives/, built from upstream's source at the catalog's tags): their
//! configs must load, their probes answer, Promtail's journal lines reach Loki.
//! Grafana and Alloy are STAND-INS (tests/standins/: small Perl servers), so for them
//! the test proves download, verification, unpacking, `current`, units and probes.

mod common;

use common::mirror::{
    real_archive, statsd_tarball, Mirror, LOKI_DIR, LOKI_ZIP, STATSD_DIR, STATSD_TGZ,
};
use common::{net::Bridge, Container};

fn sha(b: &[u8]) -> String {
    analytics_stack::util::sha256_hex(b)
}

/// The file `name` of the zip archive `zip`.
fn unzipped(zip: &[u8], name: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut file = archive.by_name(name).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
    bytes
}

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn archives_from_a_mirror_are_verified_unpacked_and_run() {
    // On a private bridge of its own (no route out), so that it runs beside the
    // host-network tests (.config/nextest.toml). The mirror listens on a Unix socket
    // the container binds, and the stack reaches it on its own loopback (a plain-http
    // mirror's checksum files are trusted on loopback only) through
    // systemd-socket-proxyd. (Not an address of the host's on the bridge: the
    // host-network tests beside it would see that address come and go, and their
    // certificates follow the host's addresses.)
    let bridge = Bridge::create("as-test-br3");
    let socket_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mirror = Mirror::start_on_socket(&socket_dir.path().join("mirror.sock"), 18080);
    let good = real_archive(&format!("{STATSD_DIR}/{STATSD_TGZ}"));
    // Grafana (behind a resolver answering like grafana.com's download API, naming a
    // URL with a build id, fetched through the same mirror) and Alloy as stand-ins;
    // the real Loki and Promtail; the statsd_exporter files are replaced below, case
    // by case.
    mirror.put_release_archives();
    mirror.put_real_loki_promtail_statsd();

    let c = Container::boot_on_with(
        "as-e2e-archives",
        &bridge,
        "10.234.0.1",
        &[(socket_dir.path().to_path_buf(), "/srv/mirror")],
    );
    c.loopback_proxy(mirror.port(), "/srv/mirror/mirror.sock");
    let mirror_url = mirror.url.clone();
    c.start_daemon();
    c.without_apps();
    c.ok(&format!(
        "mkdir -p /etc/analytics-stack && printf '[postgres]\\nenabled = false\\n[redis]\\nenabled = false\\n[grafana]\\nenabled = true\\n[log_shipper]\\nenabled = true\\n[prometheus]\\nenabled = false\\n[node_exporter]\\nenabled = false\\n[statsd_exporter]\\nenabled = true\\n[loki]\\nenabled = true\\n[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.toml",
        mirror_url
    ));
    let nothing_installed = |c: &Container| {
        c.ok("ls /opt/analytics-stack/statsd-exporter 2>/dev/null | grep -v '^current$' || true")
            .trim()
            .is_empty()
    };

    // 1. A digest that does not match: refused with a typed error naming both digests.
    mirror.put(&format!("{STATSD_DIR}/{STATSD_TGZ}"), &good);
    mirror.put(
        &format!("{STATSD_DIR}/sha256sums.txt"),
        format!("{}  {STATSD_TGZ}\n", "0".repeat(64)).as_bytes(),
    );
    let out = c.sh("analytics-stack apply");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(
        err.contains("Integrity")
            && err.contains("sha256 mismatch")
            && err.contains(&"0".repeat(64))
            && err.contains(&sha(&good)),
        "{err}"
    );
    assert!(
        err.contains(&format!("{mirror_url}/{STATSD_DIR}/{STATSD_TGZ}")),
        "{err}"
    );
    assert!(nothing_installed(&c));
    assert_eq!(
        c.ok("ls /var/cache/analytics-stack/downloads/ | grep statsd || true")
            .trim(),
        "",
        "a refused download is not kept"
    );

    // 2. An archive with an entry escaping its directory: refused, nothing unpacked.
    let evil = statsd_tarball(Some(
        "statsd_exporter-0.30.0.linux-amd64/../../../../../tmp/escaped",
    ));
    mirror.put(&format!("{STATSD_DIR}/{STATSD_TGZ}"), &evil);
    mirror.put(
        &format!("{STATSD_DIR}/sha256sums.txt"),
        format!("{}  {STATSD_TGZ}\n", sha(&evil)).as_bytes(),
    );
    let out = c.sh("analytics-stack apply");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(err.contains("would escape the target directory"), "{err}");
    assert!(nothing_installed(&c));
    assert!(!c.sh("test -e /tmp/escaped").status.success());
    assert!(
        c.ok("ls -A /opt/analytics-stack/statsd-exporter/ 2>/dev/null || true")
            .trim()
            .is_empty(),
        "no staging directory may be left"
    );

    // 3. The good archive, and Loki's download cut in the middle: the apply fails…
    mirror.put(&format!("{STATSD_DIR}/{STATSD_TGZ}"), &good);
    mirror.put(
        &format!("{STATSD_DIR}/sha256sums.txt"),
        format!("{}  {STATSD_TGZ}\n", sha(&good)).as_bytes(),
    );
    mirror.cut_once(&format!("{LOKI_DIR}/{LOKI_ZIP}"), 150_000);
    let out = c.sh("analytics-stack apply");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        c.ok("ls /opt/analytics-stack/loki 2>/dev/null || true")
            .trim()
            .is_empty(),
        "nothing of Loki is unpacked"
    );

    // 4. …and the next one resumes the download and converges.
    let out = c.ok("analytics-stack apply 2>&1");
    assert!(out.contains("every component is healthy"), "{out}");
    assert!(
        out.contains("downloaded"),
        "byte progress reaches the CLI: {out}"
    );
    let loki_requests: Vec<Option<u64>> = mirror
        .requests()
        .into_iter()
        .filter(|(p, _)| p.ends_with(LOKI_ZIP))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(loki_requests.first(), Some(&None));
    assert!(
        matches!(loki_requests.last(), Some(Some(n)) if *n > 0),
        "the second download resumes with a Range request: {loki_requests:?}"
    );

    assert_eq!(
        c.ok("readlink /opt/analytics-stack/statsd-exporter/current")
            .trim(),
        "0.30.0"
    );
    assert_eq!(
        c.ok("readlink /opt/analytics-stack/loki/current").trim(),
        "3.7.0"
    );
    assert_eq!(
        c.ok("sha256sum < /opt/analytics-stack/loki/current/loki-linux-amd64")
            .split_whitespace()
            .next()
            .unwrap(),
        sha(&unzipped(
            &real_archive(&format!("{LOKI_DIR}/{LOKI_ZIP}")),
            "loki-linux-amd64"
        ))
    );
    // The real programs run as their units, sandboxed, with the configs the daemon
    // rendered, and answer their probes.
    let ready = c.ok(&format!("{}/ready", common::LOKI));
    assert_eq!(ready.trim(), "ready");
    let metrics = c.ok("curl -fsS http://127.0.0.1:9102/metrics");
    assert!(
        metrics.contains("statsd_exporter_build_info{") && metrics.contains("version=\"0.30.0\""),
        "{metrics}"
    );
    assert!(
        c.ok("journalctl -u analytics-statsd-exporter.service --no-pager")
            .contains("Configuration check successful"),
        "ExecStartPre ran --check-config on the rendered mapping"
    );
    c.ok("systemd-analyze verify /etc/systemd/system/analytics-loki.service /etc/systemd/system/analytics-statsd-exporter.service");
    let status: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
    for comp in status["components"].as_array().unwrap() {
        assert_eq!(comp["healthy"], true, "{comp}");
    }
    let names: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "nginx",
            "statsd-exporter",
            "loki",
            "alloy",
            "grafana",
            "backup"
        ]
    );
    let versions: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|c| c["version"].as_str().unwrap())
        .collect();
    // The release archives' versions, then the backup timer's (the daemon's own).
    assert_eq!(
        versions,
        [
            "0.30.0",
            "3.7.0",
            "1.12.0",
            "13.0.1",
            env!("CARGO_PKG_VERSION")
        ]
    );

    // The log shipper (stand-in Alloy) runs in the systemd-journal group and can read
    // the stack units' journal.
    let journal = c.ok("journalctl -u analytics-alloy.service --no-pager");
    let lines: usize = journal
        .split("stand-in alloy: journal readable, ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(lines > 0, "the shipper saw no analytics-* lines: {journal}");
    assert_eq!(
        c.ok("id -nG analytics-alloy")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["analytics-alloy", "systemd-journal"]
    );

    // Grafana (stand-in) through NGINX under /grafana/, with its admin password
    // arriving as a systemd credential and nowhere in its config files.
    assert_eq!(
        c.ok("readlink /opt/analytics-stack/grafana/current").trim(),
        "13.0.1"
    );
    let health = c.ok("curl -fsS https://127.0.0.1/grafana/api/health");
    assert!(health.contains("\"database\":\"ok\""), "{health}");
    let password = c
        .ok("cat /var/lib/analytics-stack/secrets/grafana-admin")
        .trim()
        .to_string();
    assert_eq!(password.len(), 64);
    assert!(c
        .ok("journalctl -u analytics-grafana.service --no-pager")
        .contains("stand-in grafana: admin password from credential, 64 characters"));
    assert!(
        !c.sh(&format!("grep -r {password} /etc/analytics-stack"))
            .status
            .success(),
        "the password is in no config file"
    );
    assert!(c
        .ok("analytics-stack credentials grafana")
        .contains(&password));
    assert_eq!(
        c.ok("stat -c '%a %U' /var/lib/analytics-stack/secrets/grafana-admin")
            .trim(),
        "600 root"
    );
    let provisioned = c.ok("ls /etc/analytics-stack/grafana/dashboards");
    // Airflow is off here: its dashboard would show only "no data".
    assert_eq!(
        provisioned.split_whitespace().collect::<Vec<_>>(),
        ["host.json", "logs.json", "stack.json"]
    );
    // Checked against what Grafana is given beside them, not against the renderer:
    // each file is the dashboard named here, its panels have distinct ids and
    // non-empty queries of the dashboard's kind, the logs' queries name the Loki
    // datasource the provisioning file defines (Prometheus is off here), and with
    // PostgreSQL and the applications off nothing asks for their metrics.
    let provisioning: serde_yaml::Value = serde_yaml::from_str(
        &c.ok("cat /etc/analytics-stack/grafana/provisioning/datasources/analytics-stack.yaml"),
    )
    .expect("the datasources file is YAML");
    let datasources: std::collections::BTreeMap<String, String> = provisioning["datasources"]
        .as_sequence()
        .expect("a list of datasources")
        .iter()
        .map(|d| {
            (
                d["uid"].as_str().unwrap().to_string(),
                d["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        datasources.values().collect::<Vec<_>>(),
        ["loki"],
        "Prometheus is off here: {datasources:?}"
    );
    for (file, uid, title, queries) in [
        (
            "host.json",
            "analytics-host",
            "Host (node_exporter)",
            "prometheus",
        ),
        (
            "stack.json",
            "analytics-stack-overview",
            "Stack overview",
            "prometheus",
        ),
        ("logs.json", "analytics-logs", "Logs per unit", "loki"),
    ] {
        let written: serde_json::Value = serde_json::from_str(&c.ok(&format!(
            "cat /etc/analytics-stack/grafana/dashboards/{file}"
        )))
        .expect("dashboard files are JSON");
        assert_eq!(written["uid"], uid, "{file}");
        assert_eq!(written["title"], title, "{file}");
        let panels = written["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{file}");
        let ids: std::collections::BTreeSet<u64> =
            panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids repeat");
        for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
            let ds = &target["datasource"];
            assert_eq!(ds["type"], queries, "{file}: {target}");
            let expr = target["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty(), "{file}: an empty query");
            for off in ["pg_", "superset_", "airflow_"] {
                assert!(
                    !expr.contains(off),
                    "{file} queries {off}* with it off: {expr}"
                );
            }
            if queries == "loki" {
                assert_eq!(
                    datasources
                        .get(ds["uid"].as_str().unwrap())
                        .map(String::as_str),
                    Some("loki"),
                    "{file}: {target}"
                );
            }
        }
    }

    // A second apply downloads nothing and changes nothing.
    let before = mirror.requests().len();
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));
    assert_eq!(
        mirror.requests().len(),
        before,
        "a converged host fetches nothing"
    );

    // Promtail instead of Alloy: Alloy's unit goes, Promtail's comes, same result.
    c.ok("mkdir -p /etc/analytics-stack/stack.d && printf '[log_shipper]\\nkind = \"promtail\"\\n' > /etc/analytics-stack/stack.d/50-promtail.toml");
    let plan = c.ok("analytics-stack plan");
    assert!(
        plan.contains("stop analytics-alloy.service") && plan.contains("install promtail 3.5.1"),
        "{plan}"
    );
    c.ok("analytics-stack apply");
    assert!(!c
        .sh("test -e /etc/systemd/system/analytics-alloy.service")
        .status
        .success());
    assert_eq!(
        c.ok("systemctl is-active analytics-promtail.service")
            .trim(),
        "active"
    );
    assert_eq!(
        c.ok("curl -fsS http://127.0.0.1:9080/ready").trim(),
        "Ready"
    );
    // What the real Promtail keeps from the journal reaches the real Loki, labelled
    // by unit as the relabel rules say: the stack's own units' lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let units = loop {
        let answer: serde_json::Value =
            serde_json::from_str(&c.ok(&format!("{}/loki/api/v1/label/unit/values", common::LOKI)))
                .unwrap();
        let units: Vec<String> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(String::from))
            .collect();
        if units.iter().any(|u| u == "analytics-loki.service") {
            break units;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no journal lines of the stack reached Loki: {answer}\n{}",
            c.ok("journalctl -u analytics-promtail.service --no-pager -n 30")
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    // (The stand-in Alloy, before Promtail replaced it, pushed one line of its own.)
    assert!(
        units
            .iter()
            .all(|u| u.starts_with("analytics-") || u == "stand-in-alloy"),
        "only the stack's units are kept: {units:?}"
    );
    let lines = c.ok(&format!("{}/loki/api/v1/query_range -G --data-urlencode 'query={{unit=\"analytics-loki.service\"}}' --data-urlencode 'limit=5' --data-urlencode \"start=$(( $(date +%s) - 3600 ))000000000\"", common::LOKI));
    assert!(
        lines.contains("\"status\":\"success\"") && lines.contains("\"values\":[["),
        "{lines}"
    );
    // This host's lines are its tenant's, named by NGINX's door from the client
    // certificate Promtail presented (asked of Loki's socket directly, as root).
    let tenant = |id: &str| {
        c.ok(&format!("curl -fsS --unix-socket /run/analytics-loki/http:0 -H 'X-Scope-OrgID: {id}' http://loki/loki/api/v1/label/unit/values"))
    };
    assert!(tenant("primary").contains("analytics-loki.service"));
    assert!(
        !tenant("fake").contains("analytics-"),
        "no line outside the tenants"
    );
    // A local account reads nothing of it: not through the door (no client
    // certificate: the primary's key is root's and its units'), not on Loki's socket
    // (NGINX's group's), not on its gRPC port (in Loki's own network namespace).
    let mut refused = 0;
    for (how, command) in [
        ("the door without a certificate", "curl -sS -k https://127.0.0.1:3100/loki/api/v1/labels"),
        ("the door with the primary's certificate, unreadable to it", "curl -sS -k --cert /var/lib/analytics-stack/tls/primary-client.crt --key /var/lib/analytics-stack/tls/primary-client.key https://127.0.0.1:3100/loki/api/v1/labels"),
        ("Loki's socket", "curl -sS --unix-socket /run/analytics-loki/http:0 http://loki/loki/api/v1/labels"),
        ("Loki's gRPC port", "timeout 3 bash -c '</dev/tcp/127.0.0.1/9095'"),
    ] {
        let out = c.sh(&format!("runuser -u nobody -- {command}"));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            !said.contains("\"status\":\"success\"") && (!out.status.success() || said.contains("400") || said.contains("403")),
            "a local account through {how}: {out:?}"
        );
        refused += 1;
    }
    eprintln!("[figure] a local account's reads of Loki refused: {refused}");
    eprintln!(
        "[figure] units whose journal lines the real Promtail shipped to the real Loki: {units:?}"
    );
    // Nothing but NGINX (80, 443) listens beyond loopback (the stand-ins bind what the real
    // programs bind, e.g. Promtail's gRPC server, which listens on every interface
    // unless told otherwise).
    c.assert_only_nginx_beyond_loopback();
    assert!(c.ok("analytics-stack plan").contains("nothing to do"));

    archive_upgrades_are_health_gated(&c);

    // The host halts promptly: Promtail stops before Loki (its unit is ordered after
    // Loki's) and sends what it holds — among it systemd's own lines about the stack's
    // units stopping — to a Loki still running. (Unordered, Loki stopped first and
    // Promtail retried against it until systemd killed it: the halt took over a
    // minute.)
    let mut c = c;
    let took = c.halt_seconds();
    eprintln!("[figure] the container with the real Loki and Promtail halted in {took:.1} s");
    assert!(took < 20.0, "the container took {took:.1} s to halt");
}

fn statsd_status(c: &Container) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "statsd-exporter")
        .cloned()
        .unwrap_or_else(|| panic!("statsd-exporter in {v:#}"))
}

fn statsd_current(c: &Container) -> String {
    c.ok("readlink /opt/analytics-stack/statsd-exporter/current")
        .trim()
        .to_string()
}

/// A new archive pin (what a newer package of the stack brings) is an upgrade, health
/// gated. The host as an older package left it is simulated: the installed
/// stand-in moved to 0.29.0 and made current; the "broken" 0.30.0 is the stand-in's
/// program replaced by one that exits (a build that does not run on this host).
fn archive_upgrades_are_health_gated(c: &Container) {
    c.ok("printf '[stack]\\nhealth_timeout_secs = 20\\n' > /etc/analytics-stack/stack.d/40-timeout.toml");
    c.ok("cd /opt/analytics-stack/statsd-exporter && mv 0.30.0 0.29.0 && ln -sfn 0.29.0 current && systemctl restart analytics-statsd-exporter.service");
    let plan = c.ok("analytics-stack plan");
    assert!(plan.contains("install statsd-exporter 0.30.0"), "{plan}");
    c.ok("analytics-stack apply");
    assert_eq!(statsd_current(c), "0.30.0");
    let s = statsd_status(c);
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(s["previous_version"], "0.29.0", "{s:#}");

    // Back by hand; the next apply leaves it there until unhold.
    c.ok("analytics-stack rollback statsd-exporter");
    assert_eq!(statsd_current(c), "0.29.0");
    let s = statsd_status(c);
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(s["held_version"], "0.30.0", "{s:#}");
    let plan = c.ok("analytics-stack plan");
    assert!(
        plan.contains("nothing to do")
            && plan.contains("held: statsd-exporter stays on 0.29.0: 0.30.0 was rolled back"),
        "{plan}"
    );
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));
    assert_eq!(statsd_current(c), "0.29.0");
    let out = c.ok("analytics-stack unhold statsd-exporter");
    assert!(
        out.contains("statsd-exporter 0.30.0 is no longer held"),
        "{out}"
    );
    assert_eq!(
        c.sh("analytics-stack unhold statsd-exporter").status.code(),
        Some(7)
    );

    // A 0.30.0 that does not start here: apply reports it with its journal and puts
    // 0.29.0 back, healthy, and holds 0.30.0.
    c.ok("f=$(find /opt/analytics-stack/statsd-exporter/0.30.0 -name statsd_exporter -type f) && printf '#!/bin/sh\\necho simulated broken build >&2\\nexit 1\\n' > \"$f\"");
    let out = c.sh("analytics-stack apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--- last journal lines of analytics-statsd-exporter.service")
            && stderr.contains("simulated broken build")
            && stderr
                .contains("statsd-exporter 0.30.0 did not become healthy: rolled back to 0.29.0"),
        "{stderr}"
    );
    assert_eq!(statsd_current(c), "0.29.0");
    let s = statsd_status(c);
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(s["held_version"], "0.30.0", "{s:#}");
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));
    c.ok("rm /etc/analytics-stack/stack.d/40-timeout.toml");
}
