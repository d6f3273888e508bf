//! Backup and restore of a warehouse of about 1 GB (generated here) in a real-systemd
//! container on disk: time, size, and the daemon's memory while it streams (sampled
//! every 100 ms), side by side with what a user would otherwise run — `pg_dump -Fc`
//! of the same database and `pg_restore` of it. Data tier only (PostgreSQL), so the
//! figures are the data's, not the applications' restarts.
//! Run as root: `cargo bench --bench backup` (about five minutes).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Container;
use std::time::Instant;

/// Runs `cmd` in the container while sampling the daemon's VmRSS; returns the
/// seconds it took and the highest VmRSS seen, in MiB.
fn timed_with_daemon_rss(c: &Container, cmd: &str) -> (f64, f64) {
    let pid = c
        .ok("systemctl show -p MainPID --value analytics-stackd")
        .trim()
        .to_string();
    c.ok(&format!(
        "rm -f /tmp/rss; (while kill -0 {pid} 2>/dev/null && [ ! -e /tmp/stop ]; do awk '/^VmRSS/ {{print $2}}' /proc/{pid}/status >> /tmp/rss; sleep 0.1; done) >/dev/null 2>&1 &"
    ));
    let started = Instant::now();
    c.ok(cmd);
    let took = started.elapsed().as_secs_f64();
    c.ok("touch /tmp/stop; sleep 0.3; rm -f /tmp/stop");
    let peak = c
        .ok("sort -n /tmp/rss | tail -n 1")
        .trim()
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1024.0;
    (took, peak)
}

fn mib(c: &Container, path: &str) -> f64 {
    c.ok(&format!("stat -c %s {path}"))
        .trim()
        .parse::<f64>()
        .unwrap()
        / 1048576.0
}

fn main() {
    let c = Container::boot_with_memory("as-bench-backup", 16 << 30);
    c.start_daemon();
    c.ok("mkdir -p /etc/analytics-stack/stack.d && printf '[redis]\\nenabled = false\\n[nginx]\\nenabled = false\\n[prometheus]\\nenabled = false\\n[node_exporter]\\nenabled = false\\n[postgres_exporter]\\nenabled = false\\n[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n[airflow]\\nenabled = false\\n[superset]\\nenabled = false\\n[dlt]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/00-data-only.toml");
    c.ok("analytics-stack apply");
    let psql = |sql: &str| {
        c.ok(&format!(
            "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -X -A -t -h 127.0.0.1 -U warehouse -d warehouse -c \"{sql}\""
        ))
        .trim()
        .to_string()
    };
    let started = Instant::now();
    psql("CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload, (g % 1000) * 0.25 AS value, timestamp '2026-01-01' + g * interval '1 second' AS at FROM generate_series(1, 8500000) g");
    psql("CREATE INDEX ON big (at)");
    let size = psql("SELECT pg_database_size('warehouse') / 1048576");
    println!(
        "warehouse generated: {size} MiB in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let rows_before = psql("SELECT count(*), sum(id) FROM big");

    // The alternative: pg_dump -Fc of the warehouse alone, as root through the
    // stack's socket (what a hand-written cron job would run).
    let started = Instant::now();
    c.ok("/usr/lib/postgresql/15/bin/pg_dump -h /run/analytics-postgres -U postgres -Fc -d warehouse -f /root/warehouse.dump");
    let plain = started.elapsed().as_secs_f64();
    let plain_size = mib(&c, "/root/warehouse.dump");

    let (backup_s, backup_rss) =
        timed_with_daemon_rss(&c, "analytics-stack backup --output /root/stack.tar");
    let backup_size = mib(&c, "/root/stack.tar");

    let started = Instant::now();
    c.ok("runuser -u analytics-postgres -- psql -X -q -h /run/analytics-postgres -U postgres -c 'DROP DATABASE warehouse WITH (FORCE)' && /usr/lib/postgresql/15/bin/pg_restore -h /run/analytics-postgres -U postgres --create -d postgres /root/warehouse.dump");
    let plain_restore = started.elapsed().as_secs_f64();
    assert_eq!(psql("SELECT count(*), sum(id) FROM big"), rows_before);

    psql("DELETE FROM big WHERE id > 1000");
    let (restore_s, restore_rss) =
        timed_with_daemon_rss(&c, "analytics-stack restore /root/stack.tar");
    assert_eq!(psql("SELECT count(*), sum(id) FROM big"), rows_before);
    // Point-in-time recovery of the same mistake: a backup (its base backup, as the
    // nightly timer takes it), a moment noted, the rows deleted, the warehouse back
    // to the moment from pgBackRest's repository (the base backup restored, the WAL
    // since replayed).
    c.ok("analytics-stack backup --output /root/nightly.tar");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let noted =
        psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    psql("DELETE FROM big WHERE id > 1000");
    let (pitr_s, pitr_rss) =
        timed_with_daemon_rss(&c, &format!("analytics-stack restore --to '{noted}'"));
    assert_eq!(psql("SELECT count(*), sum(id) FROM big"), rows_before);
    let repository = c
        .ok("du -sm /var/backups/analytics-stack-pgbackrest | cut -f1")
        .trim()
        .to_string();
    let idle_rss = c
        .ok("sleep 20; awk '/^VmRSS/ {print $2}' /proc/$(systemctl show -p MainPID --value analytics-stackd)/status")
        .trim()
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1024.0;

    println!(
        "{:<44} {:>10} {:>10} {:>16}",
        "", "seconds", "MiB", "daemon peak RSS"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>16}",
        "pg_dump -Fc of the warehouse (alone)", plain, plain_size, "-"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>13.1} MiB",
        "analytics-stack backup (everything)", backup_s, backup_size, backup_rss
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>16}",
        "pg_restore --create of the warehouse (alone)", plain_restore, "", "-"
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>13.1} MiB",
        "analytics-stack restore (everything)", restore_s, "", restore_rss
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>13.1} MiB",
        "analytics-stack restore --to (pgBackRest)", pitr_s, "", pitr_rss
    );
    println!("pgBackRest's repository after it all: {repository} MiB");
    println!("daemon VmRSS 20 s after the restore: {idle_rss:.1} MiB");
}
