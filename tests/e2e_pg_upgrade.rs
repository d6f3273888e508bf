//! End-to-end: a PostgreSQL major upgrade with the majors Debian offers — bookworm's
//! postgresql-15, then trixie's postgresql-17 in a container whose apt sources add
//! trixie (pinned below bookworm; postgresql-17 installed with `apt -t trixie`,
//! which brings the newer libc and libraries it needs). Real PostgreSQL, real
//! pg_upgrade, a real systemd; the daemon killed with SIGKILL in the middle of the
//! upgrade, and the next apply converging with every row kept.

mod common;

use common::egress::OwnNetwork;
use common::Container;
use std::time::{Duration, Instant};

fn psql(c: &Container, sql: &str) -> String {
    c.ok(&format!(
        "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -X -A -t -h 127.0.0.1 -U warehouse -d warehouse -c \"{sql}\""
    ))
    .trim()
    .to_string()
}

/// A container whose stack runs bookworm's PostgreSQL 15 with 200 000 rows, with
/// trixie's postgresql-17 installed beside it and `[postgres] major = 17` set: the
/// next apply upgrades. Returns it and a digest of the rows.
fn prepared(network: &OwnNetwork, name: &str) -> (Container, String) {
    let c = network.boot(name, "10.242.0.1");
    c.start_daemon();
    c.ok("mkdir -p /etc/analytics-stack/stack.d && printf '# Only PostgreSQL: this test is about its upgrade.\\n[redis]\\nenabled = false\\n[nginx]\\nenabled = false\\n[prometheus]\\nenabled = false\\n[node_exporter]\\nenabled = false\\n[postgres_exporter]\\nenabled = false\\n[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n[airflow]\\nenabled = false\\n[superset]\\nenabled = false\\n[dlt]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/00-postgres-only.toml");
    c.ok("analytics-stack apply");
    psql(
        &c,
        "CREATE TABLE readings AS SELECT g AS id, g * 1.5 AS value, md5(g::text) AS tag FROM generate_series(1, 200000) g",
    );
    psql(&c, "CREATE INDEX ON readings (tag)");
    let before = psql(
        &c,
        "SELECT count(*), sum(id), md5(string_agg(tag, ',' ORDER BY id)) FROM readings",
    );
    assert!(psql(&c, "SHOW server_version").starts_with("15."));

    // trixie's sources beside bookworm's, below them unless asked for.
    c.ok("printf 'Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: trixie\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' > /etc/apt/sources.list.d/trixie.sources && printf 'Package: *\\nPin: release n=trixie\\nPin-Priority: 100\\n' > /etc/apt/preferences.d/trixie-below-bookworm");
    let started = Instant::now();
    c.ok("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie postgresql-17 > /tmp/apt.log 2>&1 || (tail -30 /tmp/apt.log; false)");
    eprintln!(
        "[figure] trixie's postgresql-17 installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The distribution made no cluster of its own (the stack's createcluster.d).
    assert_eq!(c.ok("pg_lsclusters -h | wc -l").trim(), "0");

    c.ok("printf '[postgres]\\nmajor = 17\\n' > /etc/analytics-stack/stack.d/50-postgres-17.toml");
    // Bookworm's pgBackRest (2.45) cannot read a PostgreSQL 17 cluster: archiving
    // would fail from the first segment, so apply refuses before anything changes.
    let refused = c.sh("analytics-stack apply");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL 17 with continuous archiving needs pgBackRest 2.54 or newer; this host's is 2.45"),
        "{stderr}"
    );
    assert!(psql(&c, "SHOW server_version").starts_with("15."));
    // As a dist-upgrade would: trixie's pgBackRest too (it reads 17, and 15), taken
    // by an apply on 15 first (a Debian package's upgrade of its own), so that the
    // major upgrade below is the PostgreSQL one alone.
    // (15 said explicitly: the container may already say trixie, whose default is 17.)
    c.ok("printf '[postgres]\\nmajor = 15\\n' > /etc/analytics-stack/stack.d/50-postgres-17.toml");
    c.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie pgbackrest/trixie > /tmp/apt.log 2>&1 || (tail -30 /tmp/apt.log; false)");
    let out = c.ok("analytics-stack apply");
    assert!(out.contains("every component is healthy"), "{out}");
    let status = c.ok("analytics-stack status");
    assert!(
        status.contains("pgbackrest       healthy   2.55"),
        "{status}"
    );
    assert!(psql(&c, "SHOW server_version").starts_with("15."));
    c.ok("printf '[postgres]\\nmajor = 17\\n' > /etc/analytics-stack/stack.d/50-postgres-17.toml");
    let plan = c.ok("analytics-stack plan");
    assert!(
        plan.contains("upgrade PostgreSQL 15 → 17: pg_upgrade /var/lib/analytics-stack/postgres/15 into /var/lib/analytics-stack/postgres/17"),
        "{plan}"
    );
    assert!(!plan.contains("initialise PostgreSQL"), "{plan}");

    (c, before)
}

/// After the upgrade: PostgreSQL 17 with every row and index, a backup taken
/// before, the 15 cluster gone, nothing left to do.
fn upgraded(c: &Container, before: &str) {
    assert!(psql(c, "SHOW server_version").starts_with("17."));
    assert_eq!(
        psql(
            c,
            "SELECT count(*), sum(id), md5(string_agg(tag, ',' ORDER BY id)) FROM readings"
        ),
        before
    );
    // The stack's roles log in with their passwords; the index came along.
    assert_eq!(
        psql(
            c,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'readings'"
        ),
        "1"
    );
    // Archiving goes on: the stanza upgraded to 17, a full base backup of the new
    // cluster taken (the 15 one's cannot be restored on it), archiving shown to work.
    let info: serde_json::Value = serde_json::from_str(&c.ok(
        "runuser -u analytics-postgres -- pgbackrest --config=/etc/analytics-stack/pgbackrest/pgbackrest.conf --stanza=analytics --output=json info",
    ))
    .unwrap();
    let newest = info[0]["backup"]
        .as_array()
        .and_then(|b| b.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(newest["type"], "full", "{info}");
    assert_eq!(
        newest["database"]["id"], 2,
        "a base backup of the upgraded stanza: {info}"
    );
    c.ok("runuser -u analytics-postgres -- pgbackrest --config=/etc/analytics-stack/pgbackrest/pgbackrest.conf --stanza=analytics check");
    // A backup was taken first; the old cluster went once 17 was healthy.
    let backups = c.ok("ls /var/backups/analytics-stack/");
    assert!(
        backups
            .lines()
            .any(|l| l.starts_with("analytics-stack-pre-upgrade-") && l.ends_with(".tar")),
        "{backups}"
    );
    assert!(
        c.sh("test -e /var/lib/analytics-stack/postgres/15")
            .status
            .code()
            != Some(0)
    );
    assert!(
        c.sh("ls -d /var/lib/analytics-stack/postgres/17.upgrading")
            .status
            .code()
            != Some(0)
    );
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));
}

#[test]
#[ignore = "needs root, systemd-nspawn and Debian's mirror: run through tests/run-all.sh"]
fn bookworms_postgresql_15_cluster_is_upgraded_to_trixies_17_with_every_row() {
    // On a bridge of its own (so that it runs beside other tests), Debian's mirror
    // through the host's egress proxy.
    let network = OwnNetwork::new("as-test-br11");
    let (c, before) = prepared(&network, "as-e2e-pg-upgrade");
    // Killed in the middle of pg_upgrade: the daemon, and pg_upgrade with it.
    c.ok("systemd-run --unit=apply-killed --collect analytics-stack apply");
    let deadline = Instant::now() + Duration::from_secs(300);
    while c.sh("pgrep -x pg_upgrade").status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "pg_upgrade never ran:\n{}",
            c.ok("journalctl -u analytics-stackd -n 40 --no-pager")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ok("systemctl kill -s KILL analytics-stackd.service; pkill -KILL -x pg_upgrade; pkill -KILL -f 'postgresql/1[57]/bin/postgres' || true");
    // What the kill left: no cluster in 17's place, the 15 cluster as it was.
    assert!(
        c.sh("test -e /var/lib/analytics-stack/postgres/17/PG_VERSION")
            .status
            .code()
            != Some(0)
    );
    c.ok("test -f /var/lib/analytics-stack/postgres/15/PG_VERSION");
    // And the old cluster's own server killed too, as a crash would leave it (the
    // kill above may or may not have found it running): the next apply must recover
    // it before pg_upgrade, which refuses a cluster not shut down cleanly.
    c.ok("runuser -u analytics-postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/analytics-stack/postgres/15 -l /tmp/pg15.log -o \"-c listen_addresses='' -c unix_socket_directories=/tmp -c hba_file=/etc/analytics-stack/postgres/pg_hba.conf -c ident_file=/etc/analytics-stack/postgres/pg_ident.conf\" -w start");
    c.ok("pkill -KILL -u analytics-postgres; sleep 1");
    assert!(c
        .ok("/usr/lib/postgresql/15/bin/pg_controldata /var/lib/analytics-stack/postgres/15 | grep 'cluster state'")
        .contains("in production"));

    c.ok(
        "systemctl reset-failed analytics-stackd.service; systemctl start analytics-stackd.service",
    );

    // The next apply upgrades, and 17 does not start (simulated: a drop-in that
    // fails while a 17 cluster is in place): apply rolls back to 15, every row
    // there, and stays on 15 until unhold.
    c.ok("mkdir -p /run/systemd/system/analytics-postgres.service.d && printf '[Service]\\nExecStartPre=/bin/sh -c \"test ! -e /var/lib/analytics-stack/postgres/17/PG_VERSION || { echo simulated: PostgreSQL 17 does not start on this host >&2; exit 1; }\"\\n' > /run/systemd/system/analytics-postgres.service.d/simulated-failure.conf && systemctl daemon-reload");
    let started = Instant::now();
    let out = c.sh("analytics-stack apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "[figure] an upgrade to 17 that does not start, rolled back to 15: {:.1} s\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("simulated: PostgreSQL 17 does not start on this host"),
        "the failure quotes the new major's journal: {stderr}"
    );
    assert!(
        stderr.contains("PostgreSQL 17 did not become healthy: rolled back to PostgreSQL 15"),
        "{stderr}"
    );
    assert!(psql(&c, "SHOW server_version").starts_with("15."));
    assert_eq!(
        psql(
            &c,
            "SELECT count(*), sum(id), md5(string_agg(tag, ',' ORDER BY id)) FROM readings"
        ),
        before
    );
    assert!(
        c.sh("test -e /var/lib/analytics-stack/postgres/17")
            .status
            .code()
            != Some(0)
    );
    let plan = c.ok("analytics-stack plan");
    assert!(
        plan.contains("nothing to do")
            && plan.contains(
                "held: postgres stays on PostgreSQL 15: the upgrade to 17 was rolled back"
            ),
        "{plan}"
    );
    assert!(c.ok("analytics-stack apply").contains("nothing to do"));
    c.ok("rm -r /run/systemd/system/analytics-postgres.service.d && systemctl daemon-reload");
    c.ok("analytics-stack unhold postgres");

    let started = Instant::now();
    let out = c.ok("analytics-stack apply");
    eprintln!(
        "[figure] the upgrade after the kill: {:.1} s\n{out}",
        started.elapsed().as_secs_f64()
    );
    upgraded(&c, &before);
    // Going back a major is refused before anything changes. (Said explicitly: with
    // trixie's libc the container's os-release may already say trixie, whose
    // default is 17.)
    eprintln!(
        "[figure] the container's release after apt -t trixie: {}",
        c.ok(". /etc/os-release; echo $VERSION_CODENAME").trim()
    );
    c.ok("printf '[postgres]\\nmajor = 15\\n' > /etc/analytics-stack/stack.d/50-postgres-17.toml");
    let out = c.sh("analytics-stack apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("cannot be downgraded"), "{stderr}");
    assert!(
        c.sh("test -e /var/lib/analytics-stack/postgres/15")
            .status
            .code()
            != Some(0)
    );
}

/// `kill -9` after every step an upgrade records: each apply killed after its first
/// step, the next one replanning what is left, until one completes.
#[test]
#[ignore = "needs root, systemd-nspawn and Debian's mirror: run through tests/run-all.sh"]
fn an_upgrade_killed_after_each_of_its_steps_converges_with_every_row() {
    let network = OwnNetwork::new("as-test-br12");
    let (c, before) = prepared(&network, "as-e2e-pg-upgrade-kills");
    let started = Instant::now();
    let kills = c.apply_killed_after_each_step(|c| {
        // Never two majors at once.
        let running = c.ok("pgrep -a -f 'postgresql/1[57]/bin/postgres -D' || true");
        assert!(running.lines().count() <= 1, "{running}");
    });
    eprintln!(
        "[figure] kill-safety: SIGKILL after each of the {kills} steps the upgrade recorded, one apply after another: {kills}/{kills} converged ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 5, "the upgrade recorded only {kills} steps");
    upgraded(&c, &before);
}
