//! End-to-end: nothing committed more than `archive_timeout` before a lost cluster
//! is lost. Real PostgreSQL and pgBackRest from Debian: apply sets up archiving
//! (`archive_timeout` set to 15 s here, so that the test waits 30 s rather than the
//! default 60's 90; the default is pinned by a unit test) and a first base backup;
//! rows are written, a moment noted, more rows written, then the cluster is lost
//! (PostgreSQL stopped, its data directory deleted) with no backup taken since;
//! `restore --to latest` brings back every row committed twice the timeout before
//! the loss, `restore --to` the noted moment exactly the rows
//! before it. Abuse: a time before the oldest base backup, one in the future, text
//! that is not a time, an ordinary user — each refused, nothing changed.

mod common;

use common::Container;
use std::time::Instant;

const DATA: &str = "/var/lib/analytics-stack/postgres/15";
const TEXTFILE: &str = "/var/lib/analytics-stack/node-exporter/textfile";
/// `[postgres.archiving] archive_timeout` in this test, in seconds.
const ARCHIVE_TIMEOUT: u64 = 15;
const PGBACKREST: &str = "runuser -u analytics-postgres -- pgbackrest --config=/etc/analytics-stack/pgbackrest/pgbackrest.conf --stanza=analytics";

fn sql(c: &Container, sql: &str) -> String {
    c.ok(&format!(
        "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -X -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U warehouse -d warehouse -c \"{sql}\""
    ))
    .trim()
    .to_string()
}

/// Rows of each batch in the table, `first|second|third` (0 for a missing batch).
fn batches(c: &Container) -> String {
    sql(
        c,
        "SELECT count(*) FILTER (WHERE batch = 1) || '|' || count(*) FILTER (WHERE batch = 2) || '|' || count(*) FILTER (WHERE batch = 3) FROM readings",
    )
}

fn insert(c: &Container, batch: u32, rows: u32) {
    sql(
        c,
        &format!("INSERT INTO readings SELECT {batch}, g, clock_timestamp() FROM generate_series(1, {rows}) g"),
    );
}

/// The database's clock, UTC, to the microsecond.
fn now(c: &Container) -> String {
    sql(
        c,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    )
}

fn base_backups(c: &Container) -> Vec<serde_json::Value> {
    let info: serde_json::Value =
        serde_json::from_str(&c.ok(&format!("{PGBACKREST} --output=json info"))).unwrap();
    info[0]["backup"].as_array().cloned().unwrap_or_default()
}

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn a_lost_cluster_comes_back_to_any_second_and_loses_nothing_older_than_its_archive_timeout() {
    let bridge = common::net::Bridge::create("as-test-br7");
    let c = Container::boot_on("as-e2e-pitr", &bridge, "10.238.0.1");
    c.start_daemon();
    c.without_release_archives();
    c.without_apps();
    c.ok(&format!("mkdir -p /etc/analytics-stack/stack.d && printf '[postgres.archiving]\\narchive_timeout = {ARCHIVE_TIMEOUT}\\n' > /etc/analytics-stack/stack.d/20-archive-timeout.toml"));
    let started = Instant::now();
    let out = c.ok("analytics-stack apply");
    assert!(out.contains("every component is healthy"), "{out}");
    eprintln!(
        "[figure] apply with archiving: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Archiving is set up by apply: the repository is PostgreSQL's user's alone, the
    // stanza holds a full base backup, and a second apply changes nothing.
    assert_eq!(
        c.ok("stat -c '%U %a' /var/backups/analytics-stack-pgbackrest")
            .trim(),
        "analytics-postgres 750"
    );
    let backups = base_backups(&c);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["type"], "full");
    assert!(c.ok("analytics-stack plan").contains("nothing to do"));
    let conf = c.ok("cat /etc/analytics-stack/postgres/postgresql.conf");
    assert!(conf.contains("archive_mode = on\n"), "{conf}");
    assert!(
        conf.contains(&format!("archive_timeout = {ARCHIVE_TIMEOUT}\n")),
        "{conf}"
    );

    // status says what a lost disk would cost; Prometheus gets the figures.
    let status = c.ok("analytics-stack status");
    assert!(status.contains("last WAL archived 20"), "{status}");
    assert!(
        status.contains("newest base backup 20") && status.contains("(full, "),
        "{status}"
    );
    assert!(!status.contains("ARCHIVING FAILS"), "{status}");
    // Archiving that fails is said, and measured for the alert, at once.
    c.ok("chmod 000 /var/backups/analytics-stack-pgbackrest/archive/analytics");
    c.ok("psql -X -h /run/analytics-postgres -U postgres -c 'CREATE TABLE switch_me (n int); DROP TABLE switch_me; SELECT pg_switch_wal()'");
    c.ok("for i in $(seq 100); do analytics-stack status | grep -q 'ARCHIVING FAILS' && exit 0; sleep 0.3; done; analytics-stack status; exit 1");
    c.ok(&format!("for i in $(seq 100); do awk '/^analytics_stack_wal_last_failed_timestamp_seconds/ {{f=$2}} /^analytics_stack_wal_last_archived_timestamp_seconds/ {{a=$2}} END {{exit !(f > a)}}' {TEXTFILE}/analytics_stack_archiving.prom && exit 0; sleep 0.3; done; cat {TEXTFILE}/analytics_stack_archiving.prom; exit 1"));
    c.ok("for i in $(seq 100); do grep -q 'ARCHIVING FAILS' /var/lib/analytics-stack/www/index.html && exit 0; sleep 0.3; done; exit 1");
    let page = c.ok("cat /var/lib/analytics-stack/www/index.html");
    assert!(page.contains("<h2>Point-in-time recovery</h2>"), "{page}");
    assert!(!c
        .ok("cat /var/lib/analytics-stack/www/public.html 2>/dev/null || true")
        .contains("Point-in-time"));
    c.ok("chmod 750 /var/backups/analytics-stack-pgbackrest/archive/analytics");

    // Rows, a moment noted, more rows; a last batch twice the timeout before the loss.
    sql(
        &c,
        "CREATE TABLE readings (batch int, n int, at timestamptz)",
    );
    insert(&c, 1, 1000);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let noted = now(&c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    insert(&c, 2, 1000);
    insert(&c, 3, 500);
    let third_committed = Instant::now();
    assert_eq!(batches(&c), "1000|1000|500");
    std::thread::sleep(
        std::time::Duration::from_secs(2 * ARCHIVE_TIMEOUT)
            .saturating_sub(third_committed.elapsed()),
    );

    // PostgreSQL's archiver caught up once the repository was writable again.
    let status = c.ok("analytics-stack status");
    assert!(
        !status.contains("ARCHIVING FAILS") && status.contains("0 segments waiting"),
        "{status}"
    );

    // The disk is lost: PostgreSQL stopped, its cluster gone. No backup since apply.
    c.ok("systemctl stop analytics-postgres.service");
    c.ok(&format!("rm -rf {DATA}"));
    assert_eq!(base_backups(&c).len(), 1, "no base backup was taken since");

    // Abuse first: each refused before anything changes (PostgreSQL stays down,
    // the directory stays absent), the culprit named.
    let typo = c.sh("analytics-stack restore --to 'yesterday 10:00'");
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("\"yesterday 10:00\" is not a time"));
    let future = c.sh("analytics-stack restore --to '2999-01-01 00:00:00'");
    assert!(!future.status.success());
    let said = String::from_utf8_lossy(&future.stderr);
    assert!(
        said.contains("2999-01-01 00:00:00.000000+00 is in the future"),
        "{said}"
    );
    let early = c.sh("analytics-stack restore --to '2001-01-01 00:00:00'");
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success());
    assert!(
        said.contains("is before the oldest base backup kept"),
        "{said}"
    );
    let alice = c.sh("runuser -u alice -- analytics-stack restore --to latest");
    assert!(!alice.status.success());
    assert!(
        String::from_utf8_lossy(&alice.stderr).contains("AccessDenied"),
        "{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    let injected = c.sh("busctl call org.analyticsstack.Stack1 /org/analyticsstack/Stack1 org.analyticsstack.Stack1.Manager RestoreTo s \"2026-01-01 00:00:00' recovery_target_action='shutdown\"");
    assert!(!injected.status.success());
    assert!(String::from_utf8_lossy(&injected.stderr).contains("is not a time"));
    assert!(
        c.sh(&format!("test -e {DATA}")).status.code() == Some(1),
        "nothing was restored by a refusal"
    );
    assert_eq!(
        c.sh("systemctl is-active -q analytics-postgres.service")
            .status
            .code(),
        Some(3)
    );

    // Everything archived: every row committed more than the timeout before.
    let started = Instant::now();
    let out = c.ok("analytics-stack restore --to latest");
    let latest_secs = started.elapsed().as_secs_f64();
    assert!(out.contains("restored the databases to latest"), "{out}");
    assert_eq!(
        batches(&c),
        "1000|1000|500",
        "rows committed {} s before the loss",
        2 * ARCHIVE_TIMEOUT
    );
    eprintln!("[figure] restore --to latest of a lost cluster: {latest_secs:.1} s; rows lost: 0 of 2500 committed ≥ {} s before the loss (archive_timeout {ARCHIVE_TIMEOUT} s)", 2 * ARCHIVE_TIMEOUT);
    assert!(c.ok("analytics-stack plan").contains("nothing to do"));

    // The noted moment: exactly the rows before it; the cluster it replaces kept.
    let started = Instant::now();
    let out = c.ok(&format!("analytics-stack restore --to '{noted}'"));
    eprintln!(
        "[figure] restore --to a moment: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.contains(&format!("restored the databases to {noted}")),
        "{out}"
    );
    assert!(out.contains(&format!("{DATA}.replaced")), "{out}");
    assert_eq!(batches(&c), "1000|0|0", "exactly the rows before {noted}");
    assert!(c
        .sh(&format!("test -s {DATA}.replaced/PG_VERSION"))
        .status
        .success());

    // Kills. The daemon after each phase of a restore --to (apply refuses between,
    // naming the restore to run again), then run again: the same rows each time.
    let started = Instant::now();
    let kills = c.killed_after_each_phase(
        "restore",
        &format!("analytics-stack restore --to '{noted}'"),
        |c| {
            let refused = c.sh("analytics-stack apply");
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert_eq!(refused.status.code(), Some(6), "{stderr}");
            assert!(
                stderr.contains(&format!(
                    "run `analytics-stack restore --to '{noted}+00'` again"
                )),
                "{stderr}"
            );
        },
    );
    eprintln!(
        "[figure] kill-safety: a restore --to killed after each of its {kills} phases: {kills}/{kills} converged ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 4, "restore --to had only {kills} phases");
    assert_eq!(batches(&c), "1000|0|0");
    // The daemon killed once pgBackRest has restored the files, and PostgreSQL
    // killed while it replays the WAL: the next run converges. (A busy wait: the
    // moments last a fraction of a second.)
    for (what, when, kill) in [
        (
            "the files restored",
            format!("[ -e {DATA}/recovery.signal ]"),
            "systemctl kill -s KILL analytics-stackd.service",
        ),
        (
            "PostgreSQL began replaying",
            format!("[ -e {DATA}/recovery.signal ] && [ -e {DATA}/postmaster.pid ]"),
            "systemctl kill -s KILL analytics-postgres.service",
        ),
    ] {
        let daemon = c.daemon_main_pid();
        c.ok("setsid bash -c \"analytics-stack restore --to latest > /tmp/killed.out 2>&1; echo \\$? > /tmp/killed.rc\" < /dev/null > /dev/null 2>&1 &");
        c.ok(&format!(
            "until {when}; do [ $SECONDS -lt 60 ] || exit 1; done; {kill}"
        ));
        c.ok("for i in $(seq 600); do test -s /tmp/killed.rc && exit 0; sleep 0.1; done; exit 1");
        let said = c.ok("cat /tmp/killed.out; cat /tmp/killed.rc");
        eprintln!("killed after {what}: {said}");
        if kill.contains("stackd") {
            assert_ne!(
                said.lines().last(),
                Some("0"),
                "a killed daemon's restore said it succeeded: {said}"
            );
        }
        c.ok("rm -f /tmp/killed.rc");
        if kill.contains("stackd") {
            c.start_daemon_after_kill(daemon);
        }
        let out = c.ok("analytics-stack restore --to latest");
        assert!(out.contains("restored the databases to latest"), "{out}");
        assert_eq!(
            batches(&c),
            "1000|0|0",
            "the newest timeline's end, after a kill after {what}"
        );
    }

    // Writes go on, archived on the new timeline; a backup takes a differential.
    insert(&c, 2, 10);
    let out = c.ok("analytics-stack backup --json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["base_backup"]["kind"], "diff", "{out}");
    assert_eq!(base_backups(&c).len(), 2);
    c.ok(&format!("{PGBACKREST} check"));

    // The daemon, then PostgreSQL, killed while pgBackRest takes a base backup: the
    // backup fails saying so, leaves no file, and the next one succeeds.
    for kill in [
        "systemctl kill -s KILL analytics-stackd.service",
        "systemctl kill -s KILL analytics-postgres.service",
    ] {
        let daemon = c.daemon_main_pid();
        c.ok("rm -f /tmp/killed.rc; setsid bash -c \"analytics-stack backup --output /root/killed.tar > /tmp/killed.out 2>&1; echo \\$? > /tmp/killed.rc\" < /dev/null > /dev/null 2>&1 &");
        c.ok(&format!("until pgrep -f 'pgbackrest.*--type=(full|diff) backup' > /dev/null; do [ $SECONDS -lt 60 ] || exit 1; done; {kill}"));
        c.ok("for i in $(seq 600); do test -s /tmp/killed.rc && exit 0; sleep 0.1; done; exit 1");
        let said = c.ok("cat /tmp/killed.out; cat /tmp/killed.rc");
        eprintln!("killed during a base backup ({kill}): {said}");
        assert_ne!(said.lines().last(), Some("0"), "{said}");
        assert!(
            c.ok("ls /root").trim().is_empty(),
            "a killed backup left a file"
        );
        if kill.contains("stackd") {
            c.start_daemon_after_kill(daemon);
        }
        c.ok("for i in $(seq 300); do systemctl is-active -q analytics-postgres.service && exit 0; sleep 0.1; done; systemctl status --no-pager analytics-postgres.service; exit 1");
        let out = c.ok("analytics-stack backup --json --output /root/after.tar");
        assert!(out.contains("\"base_backup\""), "{out}");
        c.ok("rm /root/after.tar");
        c.ok(&format!("{PGBACKREST} check"));
    }
    assert_eq!(batches(&c), "1000|10|0");
}
