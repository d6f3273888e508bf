//! End-to-end, across hosts: the stack on one container and an outsider on another,
//! on a private bridge with no route out (tests/common/net.rs). From the other host,
//! only NGINX's door answers — every other port of the stack is closed to it — and
//! the door serves the landing page by address, over HTTPS. The stack installs there
//! with no network beyond the bridge (Debian packages from the image's apt cache).
//! The multi-host tests of workers build on this network.

mod common;

use common::{net::Bridge, Container};

const PRIMARY: &str = "10.231.0.1";
const OUTSIDER: &str = "10.231.0.9";

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn from_another_host_only_the_door_answers() {
    let bridge = Bridge::create("as-test-br0");
    let primary = Container::boot_on("as-e2e-net-primary", &bridge, PRIMARY);
    primary.start_daemon();
    primary.without_apps();
    primary.without_release_archives();
    // Installed from the image's apt cache (no route out), which has no exporter.
    primary.ok("printf '[postgres_exporter]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/02-offline.toml");
    let out = primary.ok("analytics-stack apply 2>&1");
    assert!(out.contains("every component is healthy"), "{out}");
    let outsider = Container::boot_on("as-e2e-net-outsider", &bridge, OUTSIDER);

    // The bridge connects them, and nothing else: no route out.
    outsider.ok(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/80'"));
    let out = outsider.sh("timeout 5 curl -fsS -o /dev/null https://pypi.org/simple/");
    assert_ne!(out.status.code(), Some(0), "the bridge routes out");

    // Every TCP port anything listens on in the primary, tried from the other host.
    let listening: std::collections::BTreeSet<u16> = primary
        .ok("ss -Hltn | awk '{print $4}' | sed 's/.*://'")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        [5432u16, 6379, 9090, 9100]
            .iter()
            .all(|p| listening.contains(p)),
        "the stack runs: {listening:?}"
    );
    let open: Vec<u16> = listening
        .iter()
        .copied()
        .filter(|port| {
            outsider
                .sh(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/{port}'"))
                .status
                .success()
        })
        .collect();
    assert_eq!(
        open,
        [80, 443],
        "of {listening:?}, the ports the other host reaches"
    );

    // The door, by address, over HTTPS with the stack's CA (its certificate names
    // the host's addresses).
    let ca = primary.ok("cat /var/lib/analytics-stack/tls/ca.crt");
    outsider.ok(&format!("cat > /root/stack-ca.crt <<'EOF'\n{ca}EOF"));
    let page = outsider.ok(&format!(
        "curl -fsS --cacert /root/stack-ca.crt https://{PRIMARY}/"
    ));
    assert!(page.contains("<html"), "{page}");
    let redirect = outsider.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{PRIMARY}/"
    ));
    assert!(
        redirect.starts_with("30"),
        "plain HTTP redirects: {redirect}"
    );
    drop(outsider);
    drop(primary);
    drop(bridge);
}
