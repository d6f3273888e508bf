//! End-to-end: day two. A backup of the whole application stack (real PostgreSQL,
//! Redis, NGINX, Prometheus, node_exporter, postgres_exporter from Debian; real
//! Airflow, Superset and dlt from PyPI), abused as an attacker would, then
//! `uninstall --purge-data`, then a restore on a fresh container that brings back
//! the rows, the logins, the DAG history and the saved query. The first host ran
//! the previous Airflow release (3.3.1) before it was upgraded to the package's. On
//! the restored host,
//! Airflow upgraded to a new build (`[python] lock_dir`), rolled back by hand, then
//! upgraded to a broken build and rolled back automatically. The one STAND-IN is
//! statsd_exporter (tests/standins/, from a local mirror); Grafana, Loki and Alloy
//! are off (their real releases cannot be downloaded here), so Grafana's database
//! is a file this test writes where Grafana keeps it. Both hosts are on a bridge of
//! their own with no route out: Debian's packages and PyPI's files come through the
//! host's egress proxy (given to the daemon as an operator's site proxy is), and the
//! test asserts that nothing else was reached.

mod common;

use common::apps::*;
use common::egress::OwnNetwork;
use common::Container;
use std::path::PathBuf;
use std::time::Instant;

const BACKUPS: &str = "/var/backups/analytics-stack";

fn psql(c: &Container, role: &str, sql: &str) -> String {
    c.ok(&format!(
        "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-{role}) psql -X -A -t -h 127.0.0.1 -U {role} -d warehouse -c \"{sql}\""
    ))
    .trim()
    .to_string()
}

/// The rows of `mine` the user's own role `reader` sees.
fn reader_count(c: &Container) -> String {
    c.ok("PGPASSWORD=reader-pw psql -X -A -t -h 127.0.0.1 -U reader -d warehouse -c 'SELECT count(*) FROM mine'")
        .trim()
        .to_string()
}

/// What a user made on the stack before the backup, to be found after the restore.
struct Made {
    run_id: String,
    airflow_password: String,
    saved_query: String,
    grafana_db: String,
}

fn make_things(c: &Container) -> Made {
    let run = run_sample_dag(c);
    // A table of the user's own in the warehouse, and a role of theirs that may read it.
    psql(
        c,
        "warehouse",
        "CREATE TABLE mine AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1234) g",
    );
    c.ok("runuser -u analytics-postgres -- psql -X -h /run/analytics-postgres -U postgres -d warehouse -c \"CREATE ROLE reader LOGIN PASSWORD 'reader-pw'\"");
    psql(
        c,
        "warehouse",
        "GRANT CONNECT ON DATABASE warehouse TO reader",
    );
    psql(c, "warehouse", "GRANT SELECT ON mine TO reader");
    assert_eq!(reader_count(c), "1234");
    // A DAG author (the `airflow` role, whose password Airflow's tasks hold) leaves
    // a table whose CHECK calls its own function: run as a superuser, as a restore
    // loads the table's rows, it would make `airflow` one.
    c.ok("PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-airflow) psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U airflow -d airflow <<'EOF'
CREATE FUNCTION trap_escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE airflow SUPERUSER';
  END IF;
  RETURN true;
EXCEPTION WHEN others THEN RETURN true;
END $$;
CREATE TABLE trap (n int CHECK (trap_escalate()));
INSERT INTO trap VALUES (1);
EOF");
    assert_eq!(airflow_is_superuser(c), "false|1");
    // A saved query in Superset.
    let session = superset_login(c);
    let db = session.warehouse_id(c);
    let label = "rows by city (backup test)";
    let saved = session.call(
        c,
        "POST",
        "/saved_query/",
        Some(&format!(
            r#"{{"db_id": {db}, "label": "{label}", "sql": "SELECT city, count(*) FROM sample_data.readings GROUP BY city", "schema": "sample_data"}}"#
        )),
    );
    assert!(saved["id"].as_u64().is_some(), "saved query: {saved}");
    c.ok("printf '# the user\\x27s own DAG\\n' > /var/lib/analytics-stack/dags/mine.py && chown analytics-airflow /var/lib/analytics-stack/dags/mine.py && chmod 640 /var/lib/analytics-stack/dags/mine.py");
    // Grafana's database, where the real Grafana keeps it (the stand-in keeps none).
    c.ok("mkdir -p /var/lib/analytics-stack/grafana && head -c 300000 /dev/urandom > /var/lib/analytics-stack/grafana/grafana.db && chmod 0640 /var/lib/analytics-stack/grafana/grafana.db");
    Made {
        run_id: run.run_id,
        airflow_password: secret(c, "airflow-admin"),
        saved_query: label.into(),
        grafana_db: c.ok("sha256sum < /var/lib/analytics-stack/grafana/grafana.db"),
    }
}

/// Whether the `airflow` role is a superuser, and the rows of the DAG author's trap
/// table (restored as its owner: its function ran, as `airflow`).
fn airflow_is_superuser(c: &Container) -> String {
    c.ok("psql -X -A -t -h /run/analytics-postgres -U postgres -d airflow -c \"SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = 'airflow') || '|' || (SELECT count(*) FROM public.trap)\"")
        .trim()
        .to_string()
}

fn found_again(c: &Container, made: &Made) {
    assert_eq!(
        airflow_is_superuser(c),
        "false|1",
        "the trap's function ran as the superuser"
    );
    assert_eq!(
        psql(c, "warehouse", "SELECT count(*) FROM sample_data.readings"),
        "150"
    );
    assert_eq!(
        psql(c, "warehouse", "SELECT count(*), sum(id) FROM mine"),
        "1234|761995"
    );
    // The user's role, its password and its grants.
    assert_eq!(reader_count(c), "1234");
    // Airflow's admin logs in with the same password, and the DAG's run is there.
    assert_eq!(secret(c, "airflow-admin"), made.airflow_password);
    let token = airflow_token(c);
    let runs = airflow(c, &token, "GET", &format!("/dags/{DAG}/dagRuns"), None);
    let ids: Vec<&str> = runs["dag_runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{runs}"))
        .iter()
        .filter_map(|r| r["dag_run_id"].as_str())
        .collect();
    assert!(ids.contains(&made.run_id.as_str()), "{ids:?}");
    // Superset's saved query.
    let session = superset_login(c);
    let queries = session.call(c, "GET", "/saved_query/", None);
    assert!(
        queries["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{queries}"))
            .iter()
            .any(|q| q["label"] == made.saved_query.as_str()),
        "{queries}"
    );
    assert_eq!(
        c.ok("sha256sum < /var/lib/analytics-stack/grafana/grafana.db"),
        made.grafana_db
    );
    assert_eq!(
        c.ok("stat -c %a /var/lib/analytics-stack/grafana/grafana.db")
            .trim(),
        "640"
    );
    // A DAG of the user's, with its owner (by name: uids differ between hosts) and mode.
    assert_eq!(
        c.ok("stat -c '%U %a' /var/lib/analytics-stack/dags/mine.py; cat /var/lib/analytics-stack/dags/mine.py"),
        "analytics-airflow 640\n# the user's own DAG\n"
    );
    // And SQL Lab answers on the restored warehouse.
    let answer = superset_sql(c, "SELECT count(*) AS n FROM sample_data.readings");
    assert_eq!(answer["data"][0]["n"], 150, "{answer}");
}

#[test]
#[ignore = "needs root, systemd-nspawn and PyPI: run through tests/run-all.sh"]
fn a_backup_restored_on_a_fresh_host_brings_back_rows_logins_history_and_queries() {
    // Both hosts on a bridge of their own (no route out, so that the test runs beside
    // others), Debian and PyPI through the host's egress proxy.
    let network = OwnNetwork::new("as-test-br9");
    let mirror = &network.mirror;
    mirror.put_statsd_exporter();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);
    let config = format!(
        "printf '[statsd_exporter]\\nenabled = true\\n[archives]\\nmirror = \"{}\"\\n[backup]\\nkeep = 2\\n' > /etc/analytics-stack/stack.d/10-backup-test.toml",
        mirror.url
    );
    let share = PathBuf::from("/var/tmp/analytics-stack-test/e2e-backup");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    let saved = share.join("stack.tar");

    let made = {
        let c = network.boot("as-e2e-backup", "10.240.0.1");
        c.start_daemon();
        c.without_release_archives();
        c.ok("mkdir -p /etc/analytics-stack/stack.d");
        c.ok(&config);
        // The previous Airflow release first (the package's own requirements at
        // 3.3.1, tests/data/locks/), so that the upgrade to the package's 3.3.2 below
        // is one between two real releases.
        c.ok("mkdir -p /etc/analytics-stack/locks && printf '[python]\\nlock_dir = \"/etc/analytics-stack/locks\"\\n' > /etc/analytics-stack/stack.d/30-locks.toml");
        c.copy_in(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/locks/airflow-3.3.1.lock"),
            "/etc/analytics-stack/locks/airflow.lock",
        );
        c.ok("analytics-stack apply");
        let previous = airflow_current(&c);
        assert!(previous.starts_with("3.3.1-"), "{previous}");
        let made = make_things(&c);

        // The package's own Airflow: a real upgrade, 3.3.1 to 3.3.2, backed up
        // first, migrated, health-gated; every row, login, run and query kept.
        c.ok("rm -r /etc/analytics-stack/locks /etc/analytics-stack/stack.d/30-locks.toml");
        let plan = c.ok("analytics-stack plan");
        assert!(plan.contains("build the airflow venv 3.3.2-"), "{plan}");
        let started = Instant::now();
        c.ok("analytics-stack apply");
        eprintln!(
            "[figure] Airflow upgraded from 3.3.1 to 3.3.2: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(airflow_current(&c).starts_with("3.3.2-"));
        let status = airflow_status(&c);
        assert_eq!(status["healthy"], true, "{status:#}");
        assert_eq!(status["previous_version"], previous.as_str(), "{status:#}");
        let version = c.ok("/opt/analytics-stack/airflow/current/bin/python -c 'import importlib.metadata as m; print(m.version(\"apache-airflow\"))'");
        assert_eq!(version.trim(), "3.3.2");
        found_again(&c, &made);
        let pre = c.ok(&format!("ls {BACKUPS}"));
        assert!(
            pre.lines()
                .any(|l| l.starts_with("analytics-stack-pre-upgrade-")),
            "{pre}"
        );

        // The timer is scheduled and its service is as sandboxed as it can be as root.
        let timers = c.ok("systemctl list-timers --all --no-legend analytics-backup.timer");
        assert!(timers.contains("analytics-backup.service"), "{timers}");
        c.ok("systemd-analyze verify /etc/systemd/system/analytics-backup.service /etc/systemd/system/analytics-backup.timer");
        // docs/security.md's figure: 0.8.
        let exposure = c.exposure("analytics-backup.service");
        assert!(exposure <= 0.8, "analytics-backup.service: {exposure}");
        let status = json(&c.ok("analytics-stack status --json"));
        let backup = status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "backup")
            .unwrap_or_else(|| panic!("{status:#}"));
        assert_eq!(backup["healthy"], true, "{backup:#}");

        // Scheduled backups: three runs, the two newest kept.
        for _ in 0..3 {
            c.ok("systemctl start analytics-backup.service");
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        // (The backup taken before the upgrade is not one of the scheduled ones.)
        let kept = c.ok(&format!(
            "ls {BACKUPS} | grep -v '^analytics-stack-pre-upgrade-'"
        ));
        assert_eq!(kept.lines().count(), 2, "{kept}");
        assert!(
            kept.lines()
                .all(|l| l.starts_with("analytics-stack-backup-") && l.ends_with(".tar")),
            "{kept}"
        );
        assert_eq!(
            c.ok(&format!("stat -c '%U %a' {BACKUPS}")).trim(),
            "root 700"
        );
        let metric =
            c.ok("cat /var/lib/analytics-stack/node-exporter/textfile/analytics_stack_backup.prom");
        assert!(
            metric.contains("analytics_stack_backup_last_success_timestamp_seconds"),
            "{metric}"
        );

        // A backup by hand, with its figures.
        let started = Instant::now();
        let report = json(&c.ok("analytics-stack backup --output /root/stack.tar --json"));
        eprintln!(
            "[figure] backup of the sample stack: {:.1} s, {:.1} MiB ({} entries)",
            started.elapsed().as_secs_f64(),
            report["bytes"].as_f64().unwrap() / 1048576.0,
            report["entries"]
        );
        let dbs = report["databases"].as_array().unwrap();
        for db in ["airflow", "superset", "warehouse"] {
            assert!(dbs.iter().any(|d| d == db), "{report}");
        }
        assert_eq!(c.ok("stat -c '%U %a' /root/stack.tar").trim(), "root 600");
        assert!(c.sh("ls /root/stack.tar.partial").status.code() != Some(0));
        c.copy_out("/root/stack.tar", &saved);

        // A backup killed (SIGKILL) after each of its phases, one after another:
        // the daemon, when it comes back, starts what the backup had stopped
        // (Prometheus, for --with-telemetry); the CLI leaves no file, the daemon no
        // spool; the next backup completes.
        let started = Instant::now();
        let kills = c.killed_after_each_phase(
            "backup",
            "analytics-stack backup --with-telemetry --output /root/killed.tar",
            |c| {
                assert_eq!(
                    c.ok("systemctl is-active analytics-prometheus.service")
                        .trim(),
                    "active"
                );
                // (`ls -d`: an empty spool directory left behind counts too.)
                let left = c.ok("ls -d /root/killed.tar* /var/lib/analytics-stack/backup-spool 2>/dev/null || true");
                assert!(
                    left.trim().is_empty(),
                    "left behind by a killed backup: {left}\n{}",
                    c.ok("ls -la --time-style=full-iso /root /var/lib/analytics-stack/backup-spool 2>&1; systemctl status --no-pager analytics-stackd.service 2>&1; journalctl --no-pager -o short-precise -n 40 -u analytics-stackd.service 2>&1")
                );
            },
        );
        eprintln!(
            "[figure] kill-safety: a backup killed after each of its {kills} phases: {kills}/{kills} recovered ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        assert!(kills >= 5, "the backup had only {kills} phases");
        c.ok("tar -tf /root/killed.tar | grep -q '^files/var/lib/analytics-stack/prometheus/' && rm /root/killed.tar");

        // Only root may ask for a backup or a restore, not even the admin group
        // (which may apply): a backup holds every secret.
        c.ok("groupadd stackadmins && useradd -m -G stackadmins backupadmin && printf '[stack]\\nadmin_group = \"stackadmins\"\\n' > /etc/analytics-stack/stack.d/20-admins.toml");
        for cmd in [
            "analytics-stack backup --output /tmp/admin.tar",
            "analytics-stack restore /root/stack.tar",
        ] {
            let out = c.sh(&format!("cp /root/stack.tar /tmp/ 2>/dev/null; chmod 644 /tmp/stack.tar; runuser -u backupadmin -- {}", cmd.replace("/root/", "/tmp/")));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(5), "{cmd}: {stderr}");
            assert!(stderr.contains("only root may"), "{cmd}: {stderr}");
        }
        assert!(
            c.sh("test -s /tmp/admin.tar").status.code() != Some(0),
            "the admin got bytes"
        );
        c.ok("rm -f /etc/analytics-stack/stack.d/20-admins.toml /tmp/admin.tar* /tmp/stack.tar");

        // A damaged backup and a foreign file are refused before anything changes.
        let before =
            c.ok("sha256sum /etc/analytics-stack/stack.d/*.toml; ls /etc/analytics-stack/stack.d/");
        // One byte inside the first database dump's data (after its PGDMP magic).
        let dump_at: u64 = c
            .ok("grep -obUa PGDMP /root/stack.tar | head -n 1 | cut -d: -f1")
            .trim()
            .parse()
            .unwrap();
        c.ok(&format!(
            "cp /root/stack.tar /root/bad.tar && printf 'X' | dd of=/root/bad.tar bs=1 seek={} conv=notrunc status=none",
            dump_at + 1000
        ));
        for (file, why) in [
            (
                "/root/bad.tar",
                "postgres/airflow.dump does not match its sha256 in the manifest",
            ),
            ("/etc/hostname", "is not an analytics-stack backup"),
        ] {
            let out = c.sh(&format!("analytics-stack restore {file}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(10), "{file}: {stderr}");
            assert!(
                stderr.contains(why) && stderr.contains(file),
                "{file}: {stderr}"
            );
        }
        assert_eq!(
            c.ok("sha256sum /etc/analytics-stack/stack.d/*.toml; ls /etc/analytics-stack/stack.d/"),
            before
        );
        assert!(
            c.sh("ls /var/lib/analytics-stack/restore-staging")
                .status
                .code()
                != Some(0)
        );
        assert_eq!(psql(&c, "warehouse", "SELECT count(*) FROM mine"), "1234");

        // Purge: the data goes, the backups stay.
        c.ok("analytics-stack uninstall --purge-data");
        assert!(c.sh("ls /var/lib/analytics-stack/postgres").status.code() != Some(0));
        assert_eq!(c.ok(&format!("ls {BACKUPS} | wc -l")).trim(), "3");
        made
    };

    // A fresh host: the package (binaries) and nothing else.
    let c = network.boot("as-e2e-restore", "10.240.0.2");
    c.start_daemon();
    c.copy_in(&saved, "/root/stack.tar");
    let started = Instant::now();
    let out = c.ok("analytics-stack restore /root/stack.tar");
    eprintln!(
        "[figure] restore on a fresh host (install included): {:.1} s\n{out}",
        started.elapsed().as_secs_f64()
    );
    found_again(&c, &made);
    // The applications started once, on the restored databases: not first on empty
    // ones (their first migrations) only to be stopped for the restore.
    for init in [
        "analytics-airflow-init.service",
        "analytics-superset-init.service",
    ] {
        let starts = c.ok(&format!(
            "journalctl -b --no-pager -o cat -u {init} | grep -c '^Starting ' || true"
        ));
        assert_eq!(starts.trim(), "1", "{init} ran {} times", starts.trim());
    }
    let status = json(&c.ok("analytics-stack status --json"));
    assert!(
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["healthy"] == true),
        "{status:#}"
    );
    // The restored host is the backed-up one: an apply has nothing to do.
    let again = c.ok("analytics-stack apply");
    assert!(again.contains("nothing to do"), "{again}");
    upgrades_and_rollbacks(&c, &made);

    // A restore over a running stack converges to the backup too, even killed
    // (SIGKILL) after any of its phases: apply refuses the half-restored host, and
    // the next restore starts over.
    psql(&c, "warehouse", "DELETE FROM mine WHERE id > 1000");
    let started = Instant::now();
    let kills =
        c.killed_after_each_phase("restore", "analytics-stack restore /root/stack.tar", |c| {
            let refused = c.sh("analytics-stack apply");
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert_eq!(refused.status.code(), Some(6), "{stderr}");
            assert!(
                stderr.contains("a restore of /root/stack.tar did not complete"),
                "{stderr}"
            );
        });
    eprintln!(
        "[figure] kill-safety: a restore killed after each of its {kills} phases, restored again each time: {kills}/{kills} converged ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 8, "the restore had only {kills} phases");
    found_again(&c, &made);
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));

    // Everything the two hosts fetched came from Debian's mirror and PyPI: the
    // installer phones nowhere else (and went through the site's proxy it was given).
    let reached = network.proxy.destinations();
    for expected in [
        "deb.debian.org:80",
        "pypi.org:443",
        "files.pythonhosted.org:443",
    ] {
        assert!(
            reached.contains(expected),
            "{expected} not reached: {reached:?}"
        );
    }
    assert_eq!(reached.len(), 3, "{reached:?}");
}

fn airflow_current(c: &Container) -> String {
    c.ok("readlink /opt/analytics-stack/airflow/current")
        .trim()
        .to_string()
}

fn airflow_status(c: &Container) -> serde_json::Value {
    let status = json(&c.ok("analytics-stack status --json"));
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "airflow")
        .cloned()
        .unwrap_or_else(|| panic!("{status:#}"))
}

/// The DAG's run from before the backup is still in Airflow's database.
fn run_history_kept(c: &Container, made: &Made) {
    let token = airflow_token(c);
    let runs = airflow(c, &token, "GET", &format!("/dags/{DAG}/dagRuns"), None);
    assert!(
        runs["dag_runs"]
            .as_array()
            .unwrap_or_else(|| panic!("{runs}"))
            .iter()
            .any(|r| r["dag_run_id"] == made.run_id.as_str()),
        "{runs}"
    );
}

/// Health-gated upgrades of Airflow with locks of the operator's (`[python]
/// lock_dir`): a rebuild that comes up healthy keeps the previous version for a
/// rollback by hand; a broken build (its lock without the FAB provider its auth
/// manager is, so its API server cannot start) is rolled back by apply itself.
fn upgrades_and_rollbacks(c: &Container, made: &Made) {
    const LOCK: &str = include_str!("../python/airflow.lock");
    let share = PathBuf::from("/var/tmp/analytics-stack-test/e2e-backup");
    let installed = airflow_current(c);
    c.ok("mkdir -p /etc/analytics-stack/locks && printf '[python]\\nlock_dir = \"/etc/analytics-stack/locks\"\\n[stack]\\nhealth_timeout_secs = 90\\n' > /etc/analytics-stack/stack.d/30-locks.toml");

    // A new build of the same packages: an upgrade that succeeds.
    std::fs::write(
        share.join("rebuilt.lock"),
        format!("{LOCK}\n# rebuilt by e2e_backup\n"),
    )
    .unwrap();
    c.copy_in(
        &share.join("rebuilt.lock"),
        "/etc/analytics-stack/locks/airflow.lock",
    );
    let plan = c.ok("analytics-stack plan");
    assert!(plan.contains("build the airflow venv 3.3.2-"), "{plan}");
    // Killed (SIGKILL) after each step the upgrade records, one apply after another.
    let started = Instant::now();
    let kills = c.apply_killed_after_each_step(|_| {});
    eprintln!(
        "[figure] kill-safety: an Airflow upgrade killed after each of its {kills} steps: {kills}/{kills} converged ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 3, "the upgrade recorded only {kills} steps");
    // Converged: no Airflow process of the old version runs (the files processes
    // map are named by their real paths, the venv's own directory).
    let mapped = c.ok(
        "grep -ho '/opt/analytics-stack/airflow/[^/]*/' /proc/[0-9]*/maps 2>/dev/null | sort -u",
    );
    assert_eq!(
        mapped.lines().collect::<Vec<_>>(),
        [format!(
            "/opt/analytics-stack/airflow/{}/",
            airflow_current(c)
        )],
        "{mapped}"
    );
    let upgraded = airflow_current(c);
    assert_ne!(upgraded, installed);
    let status = airflow_status(c);
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["version"], upgraded.as_str());
    assert_eq!(status["previous_version"], installed.as_str());
    let pre = c.ok(&format!(
        "ls {BACKUPS} | grep '^analytics-stack-pre-upgrade-' | wc -l"
    ));
    assert_eq!(pre.trim(), "1", "a backup before the upgrade");
    run_history_kept(c, made);

    // Back by hand.
    let out = c.ok("analytics-stack rollback airflow");
    eprintln!("{out}");
    assert_eq!(airflow_current(c), installed);
    let status = airflow_status(c);
    assert_eq!(status["healthy"], true, "{status:#}");
    assert!(status["previous_version"].is_null(), "{status:#}");
    run_history_kept(c, made);
    let again = c.sh("analytics-stack rollback airflow");
    assert_eq!(again.status.code(), Some(7), "nothing left to roll back to");

    // A broken build: apply fails, says why with the new version's journal, and
    // Airflow is back on the version it ran, healthy, its history and rows intact.
    let broken: String = {
        let mut skipping = false;
        LOCK.lines()
            .filter(|l| {
                if l.starts_with("apache-airflow-providers-fab==") {
                    skipping = true;
                } else if !l.starts_with(' ') {
                    skipping = false;
                }
                !skipping
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert!(!broken.contains("apache-airflow-providers-fab=="));
    std::fs::write(share.join("broken.lock"), broken).unwrap();
    c.copy_in(
        &share.join("broken.lock"),
        "/etc/analytics-stack/locks/airflow.lock",
    );
    let started = Instant::now();
    let out = c.sh("analytics-stack apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "[figure] a broken Airflow build, applied and rolled back: {:.1} s\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Whether its migration fails (a step) or its processes never answer (health),
    // the failure quotes the new version's journal.
    assert!(
        stderr.contains("airflow is not healthy")
            || stderr.contains("step 'restart analytics-airflow-"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--- last journal lines of analytics-airflow-"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("did not become healthy: rolled back to {installed}, database airflow restored from {BACKUPS}/analytics-stack-pre-upgrade-")),
        "{stderr}"
    );
    assert_eq!(airflow_current(c), installed);
    let status = airflow_status(c);
    assert_eq!(status["healthy"], true, "{status:#}");
    run_history_kept(c, made);
    assert_eq!(
        airflow_is_superuser(c),
        "false|1",
        "after the rollback's restore"
    );
    assert_eq!(
        psql(c, "warehouse", "SELECT count(*) FROM sample_data.readings"),
        "150"
    );

    // The package's own lock again: what runs already, nothing to do.
    c.ok("rm -r /etc/analytics-stack/locks /etc/analytics-stack/stack.d/30-locks.toml");
    let again = c.ok("analytics-stack apply");
    assert!(again.contains("nothing to do"), "{again}");
}
