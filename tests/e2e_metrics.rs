//! End-to-end: real Prometheus, node_exporter and Alertmanager from Debian's
//! packages run as `analytics-*` units; Prometheus scrapes node_exporter, whose
//! systemd collector reports the stack's units; a failed unit's alert reaches an
//! SMTP relay and a webhook on the test's network, its resolution too, and a
//! silence made through the door keeps another's away.

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
    // The receivers of the alerts: another host of the test's network.
    let sinks = common::net::AlertSinks::start(&bridge, "as-sinks", "10.233.0.9");
    let c = Container::boot_on("as-e2e-metrics", &bridge, "10.233.0.1");
    c.start_daemon();
    c.without_release_archives();
    c.without_apps();
    // The metrics pair and Alertmanager, behind NGINX's door.
    c.ok("mkdir -p /etc/analytics-stack && printf '[postgres]\\nenabled = false\\n[redis]\\nenabled = false\\n' > /etc/analytics-stack/stack.toml");
    // Short waits, so that the test sees a notification within seconds of the
    // alert; the relay on the test network offers no STARTTLS.
    c.ok(&format!(
        "printf '[alertmanager]\\ngroup_wait = \"1s\"\\ngroup_interval = \"5s\"\\nrepeat_interval = \"1h\"\\n[alertmanager.email]\\nto = [\"oncall@example.test\"]\\nsmarthost = \"{a}:{smtp}\"\\nrequire_tls = false\\n[alertmanager.webhook]\\nurls = [\"http://{a}:{http}/hook\"]\\n' > /etc/analytics-stack/stack.d/20-alerts.toml",
        a = sinks.address,
        smtp = sinks.smtp_port,
        http = sinks.http_port
    ));
    c.ok("analytics-stack apply");
    c.trust_stack_ca();

    let status: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack status --json")).unwrap();
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
            "node-exporter",
            "prometheus",
            "alertmanager",
            "backup"
        ]
    );
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
    c.ok("systemd-analyze verify /etc/systemd/system/analytics-prometheus.service /etc/systemd/system/analytics-node-exporter.service /etc/systemd/system/analytics-alertmanager.service");
    // Alertmanager's configuration passes its own checker, and its unit is as
    // sandboxed as docs/security.md says.
    let amtool = c.ok("amtool check-config /etc/analytics-stack/alertmanager/alertmanager.yml");
    assert!(amtool.contains("SUCCESS"), "{amtool}");
    let exposure = c.exposure("analytics-alertmanager.service");
    assert!(
        exposure <= 1.5,
        "analytics-alertmanager.service: {exposure}"
    );

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
    // nginx, node-exporter, prometheus, alertmanager and the backup timer.
    wait_for_value(&c, "analytics_stack_components", "5");
    wait_for_value(&c, "up{job=\"alertmanager\"}", "1");
    // The door's certificates' ends, for the alert that warns before them.
    wait_for_value(
        &c,
        "analytics_stack_certificate_not_after_seconds{certificate=\"server\"} - time() > bool 300 * 86400",
        "1",
    );

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

    // Alertmanager's UI and API are behind the door's password: none, or a wrong
    // one, is refused; the generated one (from `credentials`) lets the administrator
    // make a silence.
    let login = door_login(&c);
    for (how, user) in [("no password", ""), ("a wrong one", "-u admin:wrong")] {
        let code = c.ok(&format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' {user} https://127.0.0.1/alertmanager/api/v2/status"
        ));
        assert_eq!(code.trim(), "401", "{how}");
    }
    c.ok(&format!(
        "curl -fsS -o /dev/null -u '{login}' https://127.0.0.1/alertmanager/"
    ));
    let silence: serde_json::Value = serde_json::from_str(&c.ok(&format!(
        "curl -fsS -u '{login}' -H 'Content-Type: application/json' -d '{{\"matchers\": [{{\"name\": \"name\", \"value\": \"analytics-silenced.service\", \"isRegex\": false}}], \"startsAt\": \"2020-01-01T00:00:00Z\", \"endsAt\": \"2099-01-01T00:00:00Z\", \"createdBy\": \"e2e\", \"comment\": \"known\"}}' https://127.0.0.1/alertmanager/api/v2/silences"
    )))
    .unwrap();
    let silence_id = silence["silenceID"]
        .as_str()
        .expect("a silence id")
        .to_string();

    // Two stack units fail: the systemd collector reports them, and after the rule's
    // minute their alerts fire in Prometheus; Alertmanager notifies both receivers of
    // the one that is not silenced.
    c.sh("systemd-run --unit=analytics-broken.service --property=Restart=no /bin/sh -c 'echo the broken unit says goodbye; exit 1'");
    c.sh("systemd-run --unit=analytics-silenced.service --property=Restart=no /bin/sh -c 'exit 1'");
    wait_for_value(
        &c,
        "node_systemd_unit_state{name=~\"analytics-(broken|silenced).service\",state=\"failed\"}",
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
    let fired = std::time::Instant::now();
    // The stack's name for this host (Prometheus's `instance`; `stack_host` is the
    // same name, added to every alert it sends).
    let host = firing["labels"]["instance"].as_str().unwrap().to_string();
    let hook = wait_for_sink(&sinks, "hook", |text| {
        text.contains("analytics-broken.service") && text.contains("\"firing\"")
    });
    let hook_after = fired.elapsed();
    let mail = wait_for_sink(&sinks, "mail", |text| {
        text.contains("AnalyticsUnitFailed") && text.contains("FIRING")
    });
    let mail_after = fired.elapsed();
    let hook: serde_json::Value = serde_json::from_str(&hook).unwrap();
    let alert = &hook["alerts"][0];
    assert_eq!(
        alert["labels"]["alertname"], "AnalyticsUnitFailed",
        "{hook}"
    );
    assert_eq!(alert["labels"]["stack_host"], host.as_str(), "{hook}");
    assert_eq!(alert["status"], "firing", "{hook}");
    assert!(mail.starts_with("RCPT TO:<oncall@example.test>"), "{mail}");
    assert!(mail.contains(&host), "the mail names the host: {mail}");
    // Seen at both receivers within group_wait (1 s) and one evaluation interval
    // (15 s) of Prometheus's firing, with a few seconds for the poll.
    assert!(
        hook_after.max(mail_after) < std::time::Duration::from_secs(20),
        "{hook_after:?} {mail_after:?}"
    );
    eprintln!(
        "[figure] firing in Prometheus to notified: webhook {:.1} s, e-mail {:.1} s",
        hook_after.as_secs_f64(),
        mail_after.as_secs_f64()
    );
    // `alerts` lists both, the silenced one with its silence.
    let listed: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack alerts --json")).unwrap();
    let silenced = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["summary"] == "analytics-silenced.service has failed")
        .unwrap_or_else(|| panic!("the silenced alert is listed: {listed}"));
    assert_eq!(silenced["state"], "suppressed", "{listed}");
    assert_eq!(silenced["silenced_by"][0], silence_id.as_str(), "{listed}");
    let text = c.ok("analytics-stack alerts");
    assert!(
        text.contains("AnalyticsUnitFailed") && text.contains(&format!("[silenced: {silence_id}]")),
        "{text}"
    );
    // Resolved: the unit's failure is cleared, and both receivers hear of it.
    c.ok("systemctl reset-failed analytics-broken.service");
    let resolved = std::time::Instant::now();
    wait_for_sink(&sinks, "hook", |text| {
        text.contains("analytics-broken.service") && text.contains("\"resolved\"")
    });
    wait_for_sink(&sinks, "mail", |text| text.contains("RESOLVED"));
    eprintln!(
        "[figure] unit recovered to resolution notified: {:.1} s",
        resolved.elapsed().as_secs_f64()
    );
    // The silenced unit's alert reached neither receiver at any time.
    for kind in ["hook", "mail"] {
        for text in sinks.received(kind) {
            assert!(!text.contains("analytics-silenced"), "{kind}: {text}");
        }
    }
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

    // All three listen on loopback only; Alertmanager's cluster port is not open.
    let listeners = c.ok("ss -Hltn '( sport = :9090 or sport = :9100 or sport = :9093 )'");
    assert!(
        listeners.lines().count() >= 3 && listeners.lines().all(|l| l.contains("127.0.0.1:")),
        "{listeners}"
    );
    let cluster = c.ok("ss -Hlnu '( sport = :9094 )'; ss -Hlnt '( sport = :9094 )'");
    assert!(cluster.trim().is_empty(), "{cluster}");
}

/// `user:password` for the door's Alertmanager login, as `credentials` prints it.
fn door_login(c: &Container) -> String {
    let creds: serde_json::Value =
        serde_json::from_str(&c.ok("analytics-stack credentials alertmanager")).unwrap();
    let line = creds["alertmanager"]["admin"]
        .as_str()
        .unwrap_or_else(|| panic!("no Alertmanager login: {creds}"));
    let password = line
        .split("password ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(line.starts_with("user admin, "), "{line}");
    format!("admin:{password}")
}

/// Waits (up to two minutes) for something of `kind` the sinks keep that `wanted`
/// says is the one; returns it.
fn wait_for_sink(
    sinks: &common::net::AlertSinks,
    kind: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    for _ in 0..600 {
        if let Some(found) = sinks.received(kind).into_iter().find(|t| wanted(t)) {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("never received: {:#?}", sinks.received(kind));
}
