//! End-to-end: the applications tier. Real Airflow 3.3, Superset 6.1 and dlt from PyPI
//! (through the locked venvs uv builds), real PostgreSQL, Redis, NGINX, Prometheus and
//! node_exporter from Debian, and the REAL statsd_exporter 0.30.0
//! (shared/fixtures/release-archives/, served from a local mirror in upstream's
//! layout), in a real systemd. What Airflow and Superset send is read from the
//! exporter's own debug log; what it makes of it, from its metrics and from Prometheus.

mod common;

use common::apps::*;
use common::desk::{Desk, DnsLog, DNS_LOG_ADDRESS, DOOR_ADDRESS};
use common::mirror::{Mirror, CPYTHON_FIXTURE_LIBRARIES, CPYTHON_FIXTURE_LIBRARIES_TRIXIE};
use common::statsd::Outcome;
use common::Container;
use serde_json::Value;
use std::time::Instant;

#[test]
#[ignore = "needs root, systemd-nspawn and PyPI: run through tests/run-all.sh"]
fn airflow_runs_the_dlt_sample_into_the_warehouse_and_superset_queries_it() {
    applications_end_to_end(Distro::Bookworm);
}

/// Debian 13, as a new server gets it: the package installed with apt, trixie's own
/// PostgreSQL 17, Redis, NGINX and Prometheus; Airflow and dlt on trixie's Python
/// 3.13, Superset (which supports 3.10–3.12) on the stack's own CPython, chosen by the
/// daemon; then everything the Debian 12 run checks, the browser included.
#[test]
#[ignore = "needs root, systemd-nspawn and PyPI: run through tests/run-all.sh"]
fn on_debian_13_the_package_runs_the_same_flow_with_superset_on_the_stacks_python() {
    applications_end_to_end(Distro::Trixie);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Distro {
    /// Debian 12 with this build's binaries bound in, every venv on the managed
    /// CPython (`[python] interpreter = "managed"`).
    Bookworm,
    /// Debian 13 with the Debian package, the default interpreter.
    Trixie,
}

fn applications_end_to_end(distro: Distro) {
    // statsd_exporter (the real one) and uv come through the archive mirror; uv's
    // wheel is the real one, fetched from PyPI for the mirror.
    let mirror = Mirror::start();
    mirror.put_real_loki_promtail_statsd();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);
    // The fixture CPython 3.12 stands in for the catalog's python-build-standalone
    // build (`[python.managed]`, with the test's digest): on Debian 12 every venv is
    // built on it; on Debian 13 the daemon chooses it for Superset alone. (Debian's
    // python3 on Debian 12 is what e2e_backup, e2e_workers and e2e_edge build on.)
    let managed_python = match distro {
        Distro::Bookworm => mirror.put_cpython_fixture(true, &CPYTHON_FIXTURE_LIBRARIES),
        Distro::Trixie => mirror.put_cpython_fixture(false, &CPYTHON_FIXTURE_LIBRARIES_TRIXIE),
    };

    // A second host on a wire to this one (before the first apply, so the stack's
    // certificate names its address), and a resolver that writes down every name the
    // stack looks up.
    let desk = Desk::new();
    let dns = DnsLog::start();

    let c = match distro {
        Distro::Bookworm => {
            let c = Container::boot("as-e2e-apps");
            c.ok(&format!(
                "rm -f /etc/resolv.conf && printf 'nameserver {DNS_LOG_ADDRESS}\\n' > /etc/resolv.conf"
            ));
            c.start_daemon();
            c
        }
        Distro::Trixie => {
            let deb = common::package_deb();
            let name = deb.file_name().unwrap().to_string_lossy().to_string();
            let c = Container::boot_trixie_with(
                "as-e2e-apps-trixie",
                &[(deb.parent().unwrap().to_path_buf(), "/mnt/deb")],
            );
            assert!(c.ok("cat /etc/debian_version").starts_with("13"));
            c.ok(&format!(
                "rm -f /etc/resolv.conf && printf 'nameserver {DNS_LOG_ADDRESS}\\n' > /etc/resolv.conf"
            ));
            // apt install leaves the daemon running.
            c.ok(&format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/deb/{name}"
            ));
            c.ok("for i in $(seq 600); do busctl status org.analyticsstack.Stack1 >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1");
            c.trust_stack_ca();
            c
        }
    };
    c.without_release_archives();
    c.ok(&format!(
        "printf '[statsd_exporter]\\nenabled = true\\n[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.d/10-apps-test.toml",
        mirror.url
    ));
    c.put_file(
        "/etc/analytics-stack/stack.d/20-managed-python.toml",
        &managed_python,
    );
    // `plan` says which Python each application gets, and why.
    let planned = c.ok("analytics-stack plan");
    let managed = "on /opt/analytics-stack/python/3.12.14/bin/python3";
    for app in ["airflow", "superset", "dlt"] {
        let why = match (distro, app) {
            (Distro::Bookworm, _) => format!("{managed} ([python] interpreter = \"managed\")"),
            (Distro::Trixie, "superset") => format!(
                "{managed} (Debian trixie's python3 is 3.13; superset 6.1.0 supports 3.10 to 3.12)"
            ),
            (Distro::Trixie, _) => {
                "on /usr/bin/python3 (Debian trixie's python3 (3.13))".to_string()
            }
        };
        assert!(
            planned
                .lines()
                .any(|l| l.contains(&format!("build the {app} venv")) && l.contains(&why)),
            "{app}: {why}: {planned}"
        );
    }

    let started = Instant::now();
    c.ok("analytics-stack apply");
    eprintln!(
        "[figure] cold apply of the stack with the applications ({distro:?}): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "[figure] where the cold apply's time went ({distro:?}): {}",
        c.ok("journalctl -u analytics-stackd.service -o cat | grep -E '^apply timings:|^health wait' | tail -2")
            .trim()
    );
    // An apply looks up the software sources it is configured with (Debian's mirror,
    // PyPI for the locked venvs) and the host's own name; nothing else.
    let own = c.ok("hostname").trim().to_string();
    let asked = dns.take();
    eprintln!("[figure] names the apply looked up: {asked:?}");
    // apt may ask for the mirror's SRV record (`_http._tcp.deb.debian.org`, apt's
    // Acquire::EnableSrvRecords) before it connects: the same mirror.
    let sources = ["deb.debian.org", "pypi.org", "files.pythonhosted.org"];
    let unexpected: Vec<&String> = asked
        .iter()
        .filter(|n| {
            let name = n.strip_prefix("_http._tcp.").unwrap_or(n);
            !sources.contains(&name) && n.split('.').next() != Some(own.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "the apply looked up {unexpected:?}");
    // ... and the log does see the stack's lookups: the wheels' index and files.
    for name in ["pypi.org", "files.pythonhosted.org"] {
        assert!(
            asked.iter().any(|n| n == name),
            "the DNS log never saw {name}: {asked:?}"
        );
    }

    // Every component healthy.
    let status = json(&c.ok("analytics-stack status --json"));
    let components = status["components"].as_array().unwrap();
    let names: Vec<&str> = components
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "postgres",
        "redis",
        "nginx",
        "statsd-exporter",
        "airflow",
        "superset",
        "dlt",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        components.iter().all(|c| c["healthy"] == true),
        "{status:#}"
    );
    // The exporter logs each StatsD line it receives at debug level: the test's tap
    // on what Airflow and Superset send (a drop-in of the test's, in /run; the
    // journal's rate limit off for it, so no line is lost).
    let exec_start =
        c.ok("grep '^ExecStart=' /etc/systemd/system/analytics-statsd-exporter.service");
    c.ok(&format!(
        "mkdir -p /run/systemd/system/analytics-statsd-exporter.service.d && printf '[Service]\\nExecStart=\\n%s --log.level=debug\\nLogRateLimitIntervalSec=0\\n' '{}' > /run/systemd/system/analytics-statsd-exporter.service.d/debug.conf && systemctl daemon-reload && systemctl restart analytics-statsd-exporter.service",
        exec_start.trim()
    ));

    // Venvs built from the lock files, current links in place, the marks written last.
    for app in ["airflow", "superset", "dlt"] {
        c.ok(&format!(
            "test -f /opt/analytics-stack/{app}/current/.analytics-stack-complete && test -x /opt/analytics-stack/{app}/current/bin/python"
        ));
    }
    // On the Python the plan named: the managed CPython, unpacked by the stack's
    // unpacker where the venvs point (the fixture is 3.12; Debian 12's python3 is
    // 3.11, Debian 13's 3.13), or Debian's.
    for app in ["airflow", "superset", "dlt"] {
        let version = c.ok(&format!(
            "/opt/analytics-stack/{app}/current/bin/python -c 'import sys; print(sys.version.split()[0], sys.base_prefix)'"
        ));
        let on_managed = distro == Distro::Bookworm || app == "superset";
        if on_managed {
            assert_eq!(
                version.trim(),
                "3.12.14 /opt/analytics-stack/python/3.12.14",
                "{app}"
            );
        } else {
            assert!(
                version.starts_with("3.13.") && version.trim().ends_with(" /usr"),
                "{app}: {version}"
            );
        }
    }
    assert_eq!(
        c.ok("find -P /opt/analytics-stack/python/ ! -user root | head -n 3")
            .trim(),
        "",
        "the managed CPython is root's"
    );
    // Built by uv as the unprivileged build user (its cache is that user's), and
    // owned by root once complete: no service user and not the builder can change it.
    for app in ["airflow", "superset", "dlt"] {
        assert_eq!(
            c.ok(&format!(
                "find -P /opt/analytics-stack/{app}/ ! -user root | head -n 3"
            ))
            .trim(),
            "",
            "{app}'s venv is root's"
        );
    }
    assert_eq!(
        c.ok("stat -c %U /var/cache/analytics-stack/uv").trim(),
        "analytics-build"
    );
    assert_eq!(
        c.ok("find /var/cache/analytics-stack/uv -user root | head -n 3")
            .trim(),
        "",
        "nothing in uv's cache was written as root"
    );
    let airflow_version = c.ok("/opt/analytics-stack/airflow/current/bin/python -c 'import airflow; print(airflow.__version__)'");
    assert_eq!(airflow_version.trim(), "3.3.2");

    // Units verify, run as their own users, and report their sandboxing.
    let units = c.ok("ls /etc/systemd/system/analytics-airflow-*.service /etc/systemd/system/analytics-superset-*.service");
    c.ok(&format!(
        "systemd-analyze verify {}",
        units.split_whitespace().collect::<Vec<_>>().join(" ")
    ));
    // At most what they score today (docs/security.md's figures).
    for (unit, at_most) in [
        ("analytics-airflow-api-server.service", 1.4),
        ("analytics-superset-web.service", 1.4),
        ("analytics-airflow-worker.service", 1.6),
    ] {
        let exposure = c.exposure(unit);
        assert!(exposure <= at_most, "{unit}: {exposure}");
    }
    assert_eq!(
        c.ok("ps -o user= -p $(systemctl show -p MainPID --value analytics-airflow-scheduler.service)").trim(),
        "analytics-airflow"
    );
    // Secrets: the env file is root's alone; nothing secret is printed by status.
    assert_eq!(
        c.ok("stat -c '%a %U' /etc/analytics-stack/airflow/airflow.env")
            .trim(),
        "600 root"
    );
    assert!(!c
        .ok("analytics-stack status --json")
        .contains(&secret(&c, "airflow-admin")));
    // Nothing of the whole stack — applications, their workers, the data tier and
    // every exporter — listens beyond loopback but NGINX.
    c.assert_only_nginx_beyond_loopback();
    // The log servers do not listen on the network.
    let listeners = c.ok("ss -Hltn");
    assert!(
        !listeners.contains(":8793") && !listeners.contains(":8794"),
        "{listeners}"
    );
    assert!(
        !listeners.contains("0.0.0.0:8080") && !listeners.contains("0.0.0.0:8088"),
        "{listeners}"
    );

    // One door: the landing page links the apps; each answers under its prefix.
    let landing = c.ok("curl -fsS https://127.0.0.1/");
    assert!(
        landing.contains("/airflow/") && landing.contains("/superset/"),
        "{landing}"
    );
    c.ok("curl -fsS https://127.0.0.1/superset/health");
    c.ok("curl -fsS https://127.0.0.1/airflow/api/v2/monitor/health");
    let login_page =
        c.ok("curl -sS -o /dev/null -w '%{http_code}' https://127.0.0.1/superset/login/");
    assert_eq!(login_page.trim(), "200");
    // Without a session the entry goes to the login page at once (relative, so the
    // browser stays on its origin); the UI itself is served under the prefix.
    assert_eq!(
        c.ok(
            "curl -sS -o /dev/null -w '%{http_code} %header{location}' https://127.0.0.1/airflow/"
        )
        .trim(),
        "302 /airflow/auth/login/?next=/airflow/"
    );
    let ui = c.ok("curl -fsS https://127.0.0.1/airflow/dags");
    assert!(
        ui.contains("/airflow/"),
        "the UI is served for its prefix: {ui}"
    );
    // credentials prints both logins (root only).
    let creds = json(&c.ok("analytics-stack credentials"));
    assert!(creds["airflow"]["admin"]
        .as_str()
        .unwrap()
        .contains(&secret(&c, "airflow-admin")));
    assert!(creds["superset"]["admin"]
        .as_str()
        .unwrap()
        .contains(&secret(&c, "superset-admin")));

    // Trigger the sample DAG through /airflow/: dlt loads the warehouse.
    let sample = run_sample_dag(&c);
    eprintln!(
        "[figure] sample DAG run (trigger to success): {:.1} s",
        sample.took.as_secs_f64()
    );
    let psql = "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -h 127.0.0.1 -U warehouse -d warehouse -tAX";
    let rows = c.ok(&format!(
        "{psql} -c 'SELECT count(*) FROM sample_data.readings'"
    ));
    assert_eq!(
        rows.trim(),
        analytics_stack::components::dlt::SAMPLE_ROWS.to_string()
    );

    // The same rows through Superset's API (SQL Lab on the registered warehouse).
    let query = superset_sql(&c, "SELECT count(*) AS n FROM sample_data.readings");
    assert_eq!(
        query["data"][0]["n"].as_u64(),
        Some(analytics_stack::components::dlt::SAMPLE_ROWS as u64),
        "{query}"
    );

    // What the stack makes of the applications' metrics (the same archive and
    // mapping on either release) is checked on Debian 12 alone.
    if distro == Distro::Bookworm {
        // Airflow's and Superset's StatsD lines reached the real exporter at
        // 127.0.0.1:9125 (its debug log has each one).
        let sent = common::statsd::sent_lines(
            &c.ok("journalctl --no-pager -o cat -u analytics-statsd-exporter.service"),
        );
        assert!(
            sent.iter().any(|l| l.name.starts_with("airflow.")),
            "no Airflow StatsD line reached the exporter: {sent:?}"
        );
        // Every name real Airflow sent lands in a known family or is a known duplicate:
        // none is left for the last rule, and the sample's task has its labels.
        let mapping = common::statsd::Mapping::parse(
            &c.ok("cat /etc/analytics-stack/statsd-exporter/mapping.yml"),
        );
        let mut typed: Vec<(&str, &str)> = sent
            .iter()
            .map(|l| (l.name.as_str(), l.kind.as_str()))
            .collect();
        typed.sort();
        typed.dedup();
        let seen: Vec<&str> = typed.iter().map(|(n, _)| *n).collect();
        let mut families = std::collections::BTreeSet::new();
        let mut unmapped = Vec::new();
        for (name, kind) in &typed {
            match mapping.map_as(name, kind) {
                Outcome::Family(family, _) => {
                    families.insert(family);
                }
                Outcome::Dropped => {}
                other => unmapped.push(format!("{name} ({other:?})")),
            }
        }
        assert!(
            unmapped.is_empty(),
            "Airflow or Superset sent names the mapping does not know: {unmapped:#?}"
        );
        eprintln!(
        "[figure] StatsD names Airflow and Superset sent: {}; metric families they become: {} ({} of them Superset's)",
        seen.len(),
        families.len(),
        families.iter().filter(|f| f.starts_with("superset_")).count()
    );
        // What the real exporter made of them: each family the test's reading of the
        // mapping expects is one the exporter itself exports (its `# TYPE` lines), so the
        // test's reading and the real program agree. (The exporter logs a line when it
        // receives it and exports it once its event queue is flushed, every 200 ms: a
        // line just received may need a moment; up to 15 s are allowed.)
        let deadline = Instant::now() + std::time::Duration::from_secs(15);
        let (exported_families, missing) = loop {
            let exported = c.ok("curl -fsS http://127.0.0.1:9102/metrics");
            let exported_families: std::collections::BTreeSet<String> = exported
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect();
            let missing: Vec<String> = families
                .iter()
                .filter(|f| !exported_families.contains(f.as_str()))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break (exported_families, missing);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        };
        assert!(
            missing.is_empty(),
            "families the real statsd_exporter does not export: {missing:?}"
        );
        // And Prometheus scraped them: every family a dashboard queries that this traffic
        // produced has series in Prometheus (the dashboards' other families, of things
        // this run never did, are only counted).
        let dashboard_families: std::collections::BTreeSet<String> =
            analytics_stack::components::dashboards::all()
                .iter()
                .flat_map(|(_, d)| d["panels"].as_array().cloned().unwrap_or_default())
                .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
                .filter_map(|t| t["expr"].as_str().map(String::from))
                .flat_map(|expr| {
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("airflow_") || w.starts_with("superset_"))
                        .map(|w| {
                            w.trim_end_matches("_bucket")
                                .trim_end_matches("_sum")
                                .trim_end_matches("_count")
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
        let produced: Vec<&String> = dashboard_families
            .iter()
            .filter(|f| families.contains(f.as_str()))
            .collect();
        assert!(!produced.is_empty(), "{dashboard_families:?} {families:?}");
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let absent = loop {
            let absent: Vec<&String> = produced
            .iter()
            .copied()
            .filter(|f| {
                let answer = json(&c.ok(&format!(
                    "curl -fsS --get --data-urlencode 'query=count({{__name__=~\"{f}(_count)?\"}})' http://127.0.0.1:9090/api/v1/query"
                )));
                answer["data"]["result"].as_array().is_none_or(|r| r.is_empty())
            })
            .collect();
            if absent.is_empty() || Instant::now() > deadline {
                break absent;
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
        };
        assert!(
            absent.is_empty(),
            "dashboard families this run produced but Prometheus has no series of: {absent:?}"
        );
        eprintln!(
            "[figure] dashboard families with series in Prometheus after this run: {} of {}",
            produced.len(),
            dashboard_families.len()
        );
        // Superset's web process (gunicorn's own metrics and the REST API's) and its
        // Celery worker (SQL Lab's steps run there when asynchronous; here the query above
        // ran in the web process) reach statsd_exporter.
        for family in [
            "superset_http_requests",
            "superset_http_responses",
            "superset_http_request_duration",
            "superset_api_calls",
            "superset_api_duration",
            "superset_sqllab_query_duration",
        ] {
            assert!(
                families.contains(family) && exported_families.contains(family),
                "no Superset metric becomes {family}: {seen:?}"
            );
        }
        // The task's duration as statsd_exporter exports it (StatsD milliseconds turned
        // into seconds, the unit of the dashboard's panel) is the time the task took:
        // Airflow's task runner times it from its start to its finalize step, which is
        // within what the API server records (that also counts the supervisor reporting
        // back), itself within the run. A unit error of 1000× either way fails.
        let timer = format!("airflow.dag.{DAG}.load_sample_readings.duration");
        let sent_ms: f64 = sent
            .iter()
            .rev()
            .find(|l| l.name == timer)
            .map(|l| l.value)
            .unwrap_or_else(|| panic!("{timer} was not sent: {seen:?}"));
        let exported = common::statsd::exported_value(sent_ms, "ms");
        let ti = airflow(
            &c,
            &sample.token,
            "GET",
            &format!(
                "/dags/{DAG}/dagRuns/{}/taskInstances/load_sample_readings",
                sample.run_id
            ),
            None,
        );
        let recorded = ti["duration"]
            .as_f64()
            .unwrap_or_else(|| panic!("no duration: {ti}"));
        let run = airflow(
            &c,
            &sample.token,
            "GET",
            &format!("/dags/{DAG}/dagRuns/{}", sample.run_id),
            None,
        );
        let run_seconds =
            epoch_seconds(&c, &run["end_date"]) - epoch_seconds(&c, &run["start_date"]);
        eprintln!(
        "[figure] sample task duration: StatsD {sent_ms:.0} ms -> exported {exported:.2} s; Airflow's record {recorded:.2} s; the run {run_seconds:.2} s"
    );
        assert!(
            exported >= 0.1 && exported <= recorded + 0.5 && recorded <= run_seconds + 0.5,
            "exported {exported} s, Airflow recorded {recorded} s, the run took {run_seconds} s"
        );
        let panel_unit = analytics_stack::components::dashboards::all()
            .into_iter()
            .find(|(f, _)| *f == "airflow.json")
            .and_then(|(_, d)| {
                d["panels"].as_array().unwrap().iter().find_map(|p| {
                    let reads = p["targets"][0]["expr"]
                        .as_str()?
                        .contains("airflow_task_duration");
                    reads.then(|| p["fieldConfig"]["defaults"]["unit"].clone())
                })
            });
        assert_eq!(panel_unit, Some(Value::from("s")));
        assert_eq!(
            mapping.map(&format!("airflow.dag.{DAG}.load_sample_readings.duration")),
            Outcome::Family(
                "airflow_task_duration".into(),
                vec![
                    ("dag_id".into(), DAG.into()),
                    ("task_id".into(), "load_sample_readings".into())
                ]
            )
        );
        assert!(
            seen.iter()
                .any(|n| n.starts_with(&format!("airflow.dag.{DAG}."))),
            "the sample DAG's task timers arrived: {seen:?}"
        );
    }

    // A second apply changes nothing and restarts nothing.
    let before = main_pids(&c);
    let again = json(&c.ok("analytics-stack apply --json"));
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(main_pids(&c), before);
    // And takes (the CLI's start, the bus, the facts, the health checks), timed
    // inside, best of 5:
    let noop_ms = c.ok("for i in 1 2 3 4 5; do a=$(date +%s%N); analytics-stack apply > /dev/null; b=$(date +%s%N); echo $(( (b - a) / 1000000 )); done | sort -n | head -1");
    eprintln!(
        "[figure] no-op apply of the whole stack ({distro:?}): {} ms; the daemon's part of the last: {}",
        noop_ms.trim(),
        c.ok("journalctl -u analytics-stackd.service -o cat | grep -E '^apply: |^health wait' | tail -2")
            .trim()
            .replace('\n', "; ")
    );

    // How a setting change and a killed worker are handled is the daemon's and
    // systemd's logic, the same on either release: on Debian 12 alone.
    if distro == Distro::Bookworm {
        // One worker setting restarts that worker alone: every other main PID is kept.
        c.ok("printf '[airflow]\\nworker_concurrency = 3\\n' > /etc/analytics-stack/stack.d/20-workers.toml");
        let changed = json(&c.ok("analytics-stack apply --json"));
        let worker = analytics_stack::components::airflow::WORKER_UNIT;
        assert_eq!(
            changed["steps"],
            serde_json::json!([
                format!("note as due until done: systemd's daemon-reload, {worker} (to restart)"),
                format!("write unit {worker} (changed)"),
                "reload systemd",
                format!("restart {worker}")
            ]),
            "{changed}"
        );
        let after = main_pids(&c);
        for ((unit, pid), (_, was)) in after.iter().zip(&before) {
            assert_eq!(pid == was, unit != worker, "{unit}: {was} → {pid}");
        }
        assert!(c
            .ok(&format!(
                "ps -o args= -p {}",
                after.iter().find(|(u, _)| u == worker).unwrap().1
            ))
            .contains("--concurrency 3"));

        // kill -9 of the Celery worker: systemd restarts it, and a new run succeeds.
        let old = c.ok("systemctl show -p MainPID --value analytics-airflow-worker.service");
        c.ok(&format!("kill -9 {}", old.trim()));
        c.ok(&format!("for i in $(seq 240); do p=$(systemctl show -p MainPID --value analytics-airflow-worker.service); [ \"$(systemctl is-active analytics-airflow-worker.service)\" = active ] && [ \"$p\" != 0 ] && [ \"$p\" != {} ] && exit 0; sleep 0.5; done; exit 1", old.trim()));
        run_sample_dag(&c);
        assert_eq!(
            c.ok(&format!(
                "{psql} -c 'SELECT count(*) FROM sample_data.readings'"
            ))
            .trim(),
            analytics_stack::components::dlt::SAMPLE_ROWS.to_string(),
            "the pipeline merges on id: a rerun adds no duplicates"
        );
    }

    // Idle memory of every unit (PSS), for the closing note.
    eprintln!("[figure] idle PSS per unit (MiB):\n{}", c.ok(
        "for u in $(systemctl list-units --plain --no-legend 'analytics-*.service' | awk '{print $1}'); do t=0; for p in $(cat /sys/fs/cgroup/systemd/system.slice/$u/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/system.slice/$u/cgroup.procs 2>/dev/null); do s=$(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup 2>/dev/null); t=$((t + ${s:-0})); done; echo \"$u $((t / 1024))\"; done"
    ));

    door_from_another_host(&c, &desk, airflow_version.trim());
    browser_session(&c, &desk);
    // The DAG runs, the browser session and everything the stack did meanwhile looked
    // up no name at all (the host's own aside).
    let asked: Vec<String> = dns
        .take()
        .into_iter()
        .filter(|n| n.split('.').next() != Some(own.as_str()))
        .collect();
    assert!(asked.is_empty(), "the running stack looked up {asked:?}");
}

/// What a machine on the network can and cannot reach, from the desk's side of the
/// wire: the door over HTTPS (plain HTTP redirects there), no backend port, no
/// internal endpoint, no versions.
fn door_from_another_host(c: &Container, desk: &Desk, airflow_version: &str) {
    let ca = format!("/proc/{}/root/var/lib/analytics-stack/tls/ca.crt", c.leader);
    let curl = format!("curl -sS --max-time 20 --cacert {ca}");
    let base = format!("https://{DOOR_ADDRESS}");
    // Plain HTTP answers with a redirect to the same address over HTTPS.
    let redirect = desk.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{DOOR_ADDRESS}/airflow/?x=1"
    ));
    assert_eq!(redirect.trim(), format!("301 {base}/airflow/?x=1"));
    // The certificate verifies for the address (its SAN), chained to the stack CA.
    for path in ["/", "/airflow/", "/superset/login/"] {
        let code = desk.ok(&format!(
            "{curl} -o /dev/null -w '%{{http_code}}' {base}{path}"
        ));
        assert!(["200", "302"].contains(&code.trim()), "{path}: {code}");
    }
    // Security headers on the door's own pages and the applications' alike.
    for path in ["/", "/airflow/", "/superset/login/"] {
        let headers = desk.ok(&format!("{curl} -o /dev/null -D - {base}{path}"));
        let lower = headers.to_lowercase();
        for want in [
            "x-content-type-options: nosniff",
            "referrer-policy:",
            "x-frame-options:",
        ] {
            assert!(lower.contains(want), "{path} lacks {want}:\n{headers}");
        }
        assert_eq!(
            lower.matches("x-frame-options:").count(),
            1,
            "{path}: one X-Frame-Options:\n{headers}"
        );
    }
    // The applications know they are behind HTTPS: their session cookies are Secure.
    for path in ["/superset/login/", "/airflow/auth/login/"] {
        let headers = desk.ok(&format!("{curl} -o /dev/null -D - {base}{path}"));
        let cookies: Vec<&str> = headers
            .lines()
            .filter(|l| l.to_lowercase().starts_with("set-cookie:"))
            .collect();
        assert!(
            !cookies.is_empty(),
            "{path} sets a session cookie:\n{headers}"
        );
        for cookie in cookies {
            assert!(cookie.contains("; Secure"), "{path}: {cookie}");
        }
    }
    // Internal endpoints answer the stack's own processes only.
    for path in ["/airflow/execution/health", "/airflow/execution/"] {
        let code = desk.ok(&format!(
            "{curl} -o /dev/null -w '%{{http_code}}' {base}{path}"
        ));
        assert_eq!(code.trim(), "403", "{path} from another host");
    }
    assert_ne!(
        c.ok("curl -sS -o /dev/null -w '%{http_code}' https://127.0.0.1/airflow/execution/health")
            .trim(),
        "403",
        "the stack itself still reaches the execution API through the door"
    );
    // Grafana is off here: its route says so, over HTTPS, and exposes nothing.
    for path in ["/grafana/", "/grafana/metrics"] {
        let code = desk.ok(&format!(
            "{curl} -o /dev/null -w '%{{http_code}}' {base}{path}"
        ));
        assert_eq!(code.trim(), "503", "{path}");
    }
    // Superset's web app manifest: every icon it names loads under /superset/.
    let manifest = desk.ok(&format!(
        "{curl} -f {base}/superset/static/assets/pwa-manifest.json"
    ));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let icons: Vec<&str> = manifest["icons"]
        .as_array()
        .unwrap()
        .iter()
        .chain(manifest["screenshots"].as_array().unwrap())
        .map(|i| i["src"].as_str().unwrap())
        .collect();
    assert!(!icons.is_empty());
    for src in icons {
        assert!(src.starts_with("/superset/static/"), "{src}");
        desk.ok(&format!("{curl} -f -o /dev/null {base}{src}"));
    }
    // Versions and units for the operator on the host; health only for others.
    let public = desk.ok(&format!("{curl} {base}/status.json"));
    let local = c.ok("curl -fsS https://127.0.0.1/status.json");
    assert!(local.contains("\"version\""), "{local}");
    assert!(
        !public.contains("version") && !public.contains("units") && public.contains("\"healthy\""),
        "{public}"
    );
    let page = desk.ok(&format!("{curl} {base}/"));
    assert!(
        !page.contains(airflow_version) && !page.contains("analytics-airflow-"),
        "{page}"
    );
    // Every backend port is closed to the network: only NGINX listens beyond loopback.
    for port in [
        3000, 5432, 6379, 6380, 8080, 8088, 8974, 9090, 9100, 9102, 9125,
    ] {
        let out = desk.sh(&format!(
            "curl -sS --max-time 5 -o /dev/null http://{DOOR_ADDRESS}:{port}/"
        ));
        assert_eq!(
            out.status.code(),
            Some(7),
            "port {port} from another host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A redirect never sends a browser to another name: Airflow's login redirect (to
    // its configured base URL) arrives relative, whatever Host the browser used.
    // (-k: the certificate does not name analytics.example.test; that is not what
    // this checks.)
    let headers = desk.ok(&format!(
        "curl -sS -k --max-time 20 -o /dev/null -D - --resolve analytics.example.test:443:{DOOR_ADDRESS} 'https://analytics.example.test/airflow/api/v2/auth/login?next=https%3A%2F%2Fanalytics.example.test%2Fairflow%2F'"
    ));
    let location = headers
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("location:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no redirect: {headers}"));
    assert!(
        location.starts_with("/airflow/auth/login/"),
        "Airflow's login redirect must stay on the browser's origin: {location}"
    );
}

/// A person at the desk, in Chromium: tests/browser/desk.py. The stack's CA is
/// imported into the browser's certificate database, as a user would.
fn browser_session(c: &Container, desk: &Desk) {
    let repo = common::repo();
    let home = tempfile::tempdir().unwrap();
    let shots = repo.join("target/browser-screenshots");
    let ca = format!("/proc/{}/root/var/lib/analytics-stack/tls/ca.crt", c.leader);
    let h = home.path().display();
    desk.ok(&format!(
        "mkdir -p {h}/.pki/nssdb && certutil -d sql:{h}/.pki/nssdb -N --empty-password && certutil -d sql:{h}/.pki/nssdb -A -t 'C,,' -n analytics-stack-ca -i {ca}"
    ));
    let superset = c.ok("/opt/analytics-stack/superset/current/bin/python -c 'import importlib.metadata as m; print(m.version(\"apache-superset\"))'");
    let started = Instant::now();
    let out = desk.sh(&format!(
        "HOME={h} DESK_AIRFLOW_PASSWORD='{}' DESK_SUPERSET_PASSWORD='{}' /usr/bin/python3 {} --base https://{DOOR_ADDRESS} --shots {} --version superset={} 2>&1",
        secret(c, "airflow-admin"),
        secret(c, "superset-admin"),
        repo.join("tests/browser/desk.py").display(),
        shots.display(),
        superset.trim()
    ));
    let log = String::from_utf8_lossy(&out.stdout);
    eprintln!("{log}");
    eprintln!(
        "[figure] browser session (landing, Airflow login and DAG run, Superset dashboard and SQL Lab): {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(out.status.success(), "the browser session failed:\n{log}");
}
