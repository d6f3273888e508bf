//! End-to-end: the Debian package on a fresh Debian 12 with a real systemd. `apt
//! install` leaves the daemon running; apply brings the stack up; `apt remove` takes
//! the stack's units away and keeps data and configuration; after
//! `analytics-stack uninstall --purge-data` and `apt purge`, nothing of the stack is
//! left running or on disk. The package is built by packaging/build-deb.sh
//! (tests/run-all.sh runs it first).

mod common;

use common::Container;

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn the_package_installs_runs_the_stack_and_leaves_nothing_when_purged() {
    let deb = common::package_deb();
    let name = deb.file_name().unwrap().to_string_lossy().to_string();
    // On a bridge of its own, no route out: the package and the data tier install
    // from what the image holds, beside the tests that share the host's network.
    let bridge = common::net::Bridge::create("as-test-br6");
    let c = Container::boot_with_on(
        "as-e2e-package",
        &bridge,
        "10.237.0.1",
        &[(deb.parent().unwrap().to_path_buf(), "/mnt/deb")],
    );
    let install = format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/deb/{name}");

    // apt install leaves the daemon running (dh_installsystemd enabled and started it).
    c.ok(&install);
    assert_eq!(
        c.ok("systemctl is-enabled analytics-stackd.service").trim(),
        "enabled"
    );
    c.ok("for i in $(seq 50); do busctl status org.analyticsstack.Stack1 >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1");
    assert!(c
        .ok("man -w analytics-stack 2>/dev/null || ls /usr/share/man/man1/analytics-stack.1.gz")
        .contains("analytics-stack.1"));
    assert!(c
        .sh("test -f /usr/share/bash-completion/completions/analytics-stack")
        .status
        .success());
    assert!(c
        .ok("dpkg-query -W -f='${Conffiles}' analytics-stack")
        .contains("/etc/analytics-stack/stack.toml"));

    c.without_release_archives();
    c.without_apps();
    c.ok("analytics-stack apply");
    let status: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
    assert!(
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["healthy"] == true),
        "{status}"
    );
    c.ok("PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -h 127.0.0.1 -U warehouse -d warehouse -c 'CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)'");

    // apt remove: the stack's units go; data, the users that own it and the
    // configuration stay.
    c.ok("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q analytics-stack");
    assert_eq!(
        c.ok("systemctl list-units --all --no-legend 'analytics-*' | grep -v 'not-found' || true")
            .trim(),
        ""
    );
    assert!(c.sh("getent passwd analytics-postgres").status.success());
    assert!(c
        .sh("test -f /var/lib/analytics-stack/postgres/15/PG_VERSION")
        .status
        .success());
    assert!(c.sh("test -f /etc/analytics-stack/stack.toml && test -f /etc/analytics-stack/stack.d/00-no-release-hosts.toml").status.success());

    // Reinstalled, the stack comes back on its kept data.
    c.ok(&install);
    c.ok("for i in $(seq 50); do busctl status org.analyticsstack.Stack1 >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1");
    c.ok("analytics-stack apply");
    assert_eq!(c.ok("PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -h 127.0.0.1 -U warehouse -d warehouse -tAX -c 'SELECT n FROM kept'").trim(), "7");

    // uninstall --purge-data, then apt purge: nothing of the stack is left.
    c.ok("analytics-stack uninstall --purge-data");
    c.ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q analytics-stack");
    for path in [
        "/etc/analytics-stack",
        "/var/lib/analytics-stack",
        "/opt/analytics-stack",
        "/var/cache/analytics-stack",
        "/usr/sbin/analytics-stackd",
        "/usr/bin/analytics-stack",
        "/usr/share/dbus-1/system.d/org.analyticsstack.Stack1.conf",
    ] {
        assert!(
            !c.sh(&format!("test -e {path}")).status.success(),
            "{path} is left behind"
        );
    }
    assert_eq!(
        c.ok("ls /etc/systemd/system /lib/systemd/system | grep analytics || true")
            .trim(),
        ""
    );
    assert_eq!(
        c.ok("getent passwd | grep '^analytics-' || true").trim(),
        ""
    );
    assert_eq!(
        c.ok("ps -eo comm | grep -E 'analytics|postgres|redis-server|nginx|prometheus' || true")
            .trim(),
        ""
    );
    // The distribution's services were put back as they were, not masked.
    assert_ne!(
        c.ok("systemctl is-enabled nginx.service || true").trim(),
        "masked"
    );
}
