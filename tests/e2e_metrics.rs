//! End-to-end: real Prometheus and node_exporter from Debian's packages run as
//! `analytics-*` units; Prometheus scrapes node_exporter, whose systemd collector
//! reports the stack's units.

mod common;

use common::Container;

fn query(c: &Container, promql: &str) -> serde_json::Value {
    let out = c.ok(&format!(
        "curl -fsS --get --data-urlencode 'query={promql}' http://127.0.0.1:9090/api/v1/query"
    ));
    serde_json::from_str(&out).expect("Prometheus answers JSON")
}

/// Waits (up to a minute: the scrape interval is 15 s) for a query to return `want`.
fn wait_for_value(c: &Container, promql: &str, want: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..120 {
        last = query(c, promql);
        let results = last["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !results.is_empty() && results.iter().all(|r| r["value"][1] == want) {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("{promql} never became {want}: {last}");
}

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn prometheus_scrapes_node_exporter_and_sees_the_stack_units() {
    // On a private bridge of its own (an interface for node_exporter's network
    // metrics, no route out): the pair installs from the image's apt cache, and the
    // test runs beside the host-network tests (.config/nextest.toml).
    let bridge = common::net::Bridge::create("as-test-br2");
    let c = Container::boot_on("as-e2e-metrics", &bridge, "10.233.0.1");
    c.start_daemon();
    c.without_release_archives();
    c.without_apps();
    // The metrics pair alone (plus NGINX's landing page is not needed here).
    c.ok("mkdir -p /etc/analytics-stack && printf '[postgres]\\nenabled = false\\n[redis]\\nenabled = false\\n[nginx]\\nenabled = false\\n' > /etc/analytics-stack/stack.toml");
    c.ok("analytics-stack apply");

    let status: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
    let names: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-exporter", "prometheus", "backup"]);
    assert!(
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["healthy"] == true),
        "{status}"
    );

    // The generated configuration passes Prometheus's own checker.
    let check = c.ok("promtool check config /etc/analytics-stack/prometheus/prometheus.yml");
    assert!(check.contains("SUCCESS"), "{check}");
    // The alert rules pass promtool's checker and their unit tests (the same file the
    // daemon wrote, tested with the same promtool the stack runs).
    let rules = c.ok("promtool check rules /etc/analytics-stack/prometheus/alerts.yml");
    assert!(
        rules.contains(&format!(
            "SUCCESS: {} rules found",
            analytics_stack::components::alerts::RULES.len()
        )),
        "{rules}"
    );
    std::fs::copy(
        common::repo().join("tests/data/alerts.test.yml"),
        format!("/proc/{}/root/tmp/alerts.test.yml", c.leader),
    )
    .unwrap();
    let tested = c.ok("promtool test rules /tmp/alerts.test.yml");
    assert!(tested.contains("SUCCESS"), "{tested}");
    c.ok("systemd-analyze verify /etc/systemd/system/analytics-prometheus.service /etc/systemd/system/analytics-node-exporter.service");

    // Scraped: up{job="node"} = 1, through the Prometheus HTTP API.
    wait_for_value(&c, "up{job=\"node\"}", "1");
    wait_for_value(&c, "up{job=\"prometheus\"}", "1");
    // The systemd collector reports the stack's units as active.
    let active = wait_for_value(
        &c,
        "node_systemd_unit_state{name=\"analytics-prometheus.service\",state=\"active\"}",
        "1",
    );
    assert_eq!(active["data"]["result"][0]["metric"]["job"], "node");
    // Host metrics really come through (needs all of /proc despite the sandbox).
    let mem = wait_for_value(&c, "node_memory_MemTotal_bytes > bool 0", "1");
    assert_eq!(mem["data"]["result"].as_array().unwrap().len(), 1);
    // Network device statistics (netlink is allowed to the exporter, nothing else).
    wait_for_value(&c, "count(node_network_receive_bytes_total) > bool 0", "1");
    // The daemon's own figures arrive through the textfile collector.
    wait_for_value(&c, "analytics_stack_last_apply_success", "1");
    // node-exporter, prometheus and the backup timer.
    wait_for_value(&c, "analytics_stack_components", "3");

    // Each unit's memory and restarts, published by the daemon's refresher.
    wait_for_value(
        &c,
        "count(analytics_stack_unit_restarts{unit=\"analytics-prometheus.service\"}) > bool 0",
        "1",
    );
    wait_for_value(
        &c,
        "analytics_stack_unit_memory_bytes{unit=\"analytics-prometheus.service\"} > bool 1000000",
        "1",
    );
    // A unit given a memory limit (here at run time, as `systemctl set-property`
    // would) gets its limit published beside its memory, and the memory alert's
    // ratio is computed for it; a unit without a limit has none.
    c.ok("systemctl set-property --runtime analytics-node-exporter.service MemoryHigh=1G");
    wait_for_value(
        &c,
        "analytics_stack_unit_memory_limit_bytes{unit=\"analytics-node-exporter.service\"}",
        "1073741824",
    );
    wait_for_value(
        &c,
        "count(analytics_stack_unit_memory_bytes{unit=\"analytics-node-exporter.service\"} / on(component, unit) analytics_stack_unit_memory_limit_bytes < 0.9)",
        "1",
    );
    wait_for_value(
        &c,
        "count(analytics_stack_unit_memory_limit_bytes{unit=\"analytics-prometheus.service\"}) or vector(0)",
        "0",
    );

    // Every node_* metric the Grafana dashboards query is one the real node_exporter
    // produces here.
    let exposed = c.ok("curl -fsS http://127.0.0.1:9100/metrics");
    let mut checked = 0;
    for expr in analytics_stack::components::dashboards::prometheus_exprs() {
        for name in analytics_stack::components::dashboards::metric_names(&expr) {
            if name.starts_with("node_") {
                assert!(
                    exposed.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "dashboard metric {name} is not exported by node_exporter"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "{checked}");

    // A stack unit that fails: the systemd collector reports it, and after the rule's
    // minute its alert fires in Prometheus.
    c.sh("systemd-run --unit=analytics-broken.service --property=Restart=no /bin/sh -c 'echo the broken unit says goodbye; exit 1'");
    wait_for_value(
        &c,
        "node_systemd_unit_state{name=\"analytics-broken.service\",state=\"failed\"}",
        "1",
    );
    let started = std::time::Instant::now();
    let firing = loop {
        let alerts: serde_json::Value =
            serde_json::from_str(&c.ok("curl -fsS http://127.0.0.1:9090/api/v1/alerts")).unwrap();
        let found = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["alertname"] == "AnalyticsUnitFailed"
                    && a["labels"]["name"] == "analytics-broken.service"
                    && a["state"] == "firing"
            })
            .cloned();
        if let Some(a) = found {
            break a;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(180),
            "AnalyticsUnitFailed never fired: {alerts}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    assert_eq!(
        firing["annotations"]["summary"],
        "analytics-broken.service has failed"
    );
    // The line an operator looks for after the failure is written by PID 1 with the
    // fields the log shippers' relabel rules are built on (`_SYSTEMD_UNIT=init.scope`,
    // the service in `UNIT`; the rules' handling of exactly these fields is evaluated
    // in the unit tests): checked here against a real systemd's journal.
    let entries = c.ok("journalctl -o json --no-pager UNIT=analytics-broken.service");
    let exited = entries
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("Main process exited"))
        })
        .unwrap_or_else(|| panic!("no \"Main process exited\" line:\n{entries}"));
    assert_eq!(exited["_SYSTEMD_UNIT"], "init.scope", "{exited}");
    assert_eq!(exited["_PID"], "1", "{exited}");
    // These journal entries, replayed through the relabel rules the daemon renders
    // for Promtail (parsed from the YAML, applied as Promtail applies them): PID 1's
    // lines about the failed unit and the unit's own line are shipped under its
    // name; PID 1's lines about other units and other units' lines are not.
    let promtail = common::relabel::rendered_promtail();
    let rules = common::relabel::promtail_rules(&promtail);
    let job_labels = common::relabel::promtail_journal_labels(&promtail);
    let journal = c.ok(
        "journalctl -o json --no-pager UNIT=analytics-broken.service + _SYSTEMD_UNIT=analytics-broken.service + _SYSTEMD_UNIT=systemd-journald.service + _SYSTEMD_UNIT=init.scope",
    );
    let (mut shipped, mut dropped) = (Vec::new(), 0);
    for entry in journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let message = entry["MESSAGE"].as_str().unwrap_or("").to_string();
        let mut labels = common::relabel::journal_labels(&entry);
        labels.extend(job_labels.clone());
        match common::relabel::apply(&rules, labels) {
            Some(labels) => shipped.push((labels, message)),
            None => dropped += 1,
        }
    }
    let about_broken = |needle: &str| {
        shipped.iter().any(|(labels, message)| {
            labels.get("unit").map(String::as_str) == Some("analytics-broken.service")
                && message.contains(needle)
        })
    };
    assert!(about_broken("Main process exited"), "{shipped:#?}");
    assert!(about_broken("Failed with result"), "{shipped:#?}");
    assert!(about_broken("the broken unit says goodbye"), "{shipped:#?}");
    assert!(
        shipped.iter().all(
            |(l, _)| l.get("unit").is_some_and(|u| u.starts_with("analytics-"))
                && l.get("job").map(String::as_str) == Some("systemd-journal")
        ),
        "only stack units are shipped: {shipped:#?}"
    );
    assert!(dropped > 0, "the host's own lines are dropped");
    assert!(
        shipped.iter().any(|(l, _)| l.get("level").is_some()),
        "{shipped:#?}"
    );
    eprintln!(
        "[figure] unit failure to firing alert: {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // Both listen on loopback only.
    let listeners = c.ok("ss -Hltn '( sport = :9090 or sport = :9100 )'");
    assert!(
        listeners.lines().count() >= 2 && listeners.lines().all(|l| l.contains("127.0.0.1:")),
        "{listeners}"
    );
}
