//! End-to-end, three hosts and an outsider on a private bridge with no route out
//! (tests/common/net.rs): a primary and two worker hosts, every one installed from
//! the same offline bundle (made first on a connected container). `worker add` on
//! the primary, `join --bundle` on each worker; the primary's own Celery worker is
//! off, so every task runs on a worker host. A DAG of 20 parallel tasks is delivered
//! by the stack's DAG sync and runs on both workers; one worker's Celery worker is
//! killed (SIGKILL, every task process with it) mid-run and the run still succeeds,
//! its lost tasks retried on the other; the same DAG on one worker host and on two is
//! the benchmark; the stack's dlt sample runs on a worker into the primary's warehouse
//! (as the warehouse role). Prometheus scrapes three node_exporters; Loki's push door takes the
//! workers' journals: the REAL Loki 3.7.0 on the primary and the REAL Promtail 3.5.1
//! on every host (shared/fixtures/release-archives/), the push through the real NGINX
//! door, TLS and allow-list, and a worker host's Celery worker lines are read back
//! from Loki by host and unit. The primary lets its workers run
//! Superset's Celery worker too, and its own is off: an asynchronous SQL Lab query
//! runs on a worker host (the warehouse sees it connect from there) and its result
//! comes back through the cache's door. From the outsider PostgreSQL, the broker's
//! and the cache's doors, the execution API, the log push and the DAGs all refuse;
//! after `worker remove`, each of the removed worker's logins fails from its own host.

mod common;

use common::apps::{airflow, airflow_token};
use common::{mirror::Mirror, net::Bridge, Container};
use serde_json::Value;
use std::time::{Duration, Instant};

const PRIMARY: &str = "10.232.0.1";
const W1: &str = "10.232.0.2";
const W2: &str = "10.232.0.3";
const OUTSIDER: &str = "10.232.0.9";
const DAG_ID: &str = "fan_out";
/// Seconds each of the DAG's tasks sleeps.
const TASK_SECONDS: u32 = 8;

/// The primary: worker hosts on PRIMARY, running Superset's Celery worker too; its
/// own Celery workers (Airflow's and Superset's) off, so every task and every
/// asynchronous query runs on a worker host. Grafana is not needed here.
/// Every host ships its journal with Promtail: the real program (Alloy's is a
/// stand-in), so what reaches Loki is what the real shipper sends.
const PROMTAIL: &str = "[log_shipper]\\nkind = \\\"promtail\\\"\\n";

fn primary_config() -> String {
    format!(
        "[workers]\\naddress = \\\"{PRIMARY}\\\"\\nsuperset = true\\n[airflow]\\nlocal_worker = false\\n[superset]\\ncelery_worker = false\\n[grafana]\\nenabled = false\\n{PROMTAIL}"
    )
}

/// 20 tasks with no dependencies between them, each recording where it ran.
fn fan_out_dag() -> String {
    format!(
        r#"import socket
import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

with DAG(
    dag_id="{DAG_ID}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_tasks=20,
    default_args={{"retries": 2, "retry_delay": timedelta(seconds=2)}},
) as dag:

    @task
    def work(i):
        time.sleep({TASK_SECONDS})
        return socket.gethostname()

    for i in range(20):
        work.override(task_id=f"t{{i:02d}}")(i)
"#
    )
}

#[test]
#[ignore = "needs root, systemd-nspawn, Debian's mirror and PyPI: run through tests/run-all.sh"]
fn two_worker_hosts_run_the_stacks_tasks_and_survive_losing_one() {
    let mirror = Mirror::start();
    mirror.put_release_archives();
    mirror.put_real_loki_promtail_statsd();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);
    let bundles = tempfile::tempdir_in("/var/tmp").unwrap();

    // The bundle, on a connected machine with the primary's configuration: it holds
    // what the primary and its worker hosts install.
    {
        let c = Container::boot_for_downloads("as-e2e-workers-make");
        c.ok(&format!(
            "mkdir -p /etc/analytics-stack && printf '{}[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.toml",
            primary_config(),
            mirror.url
        ));
        let started = Instant::now();
        c.ok("analytics-stack bundle create --output /var/lib/stack-bundle.tar");
        eprintln!(
            "[figure] bundle create (primary and workers): {:.1} s",
            started.elapsed().as_secs_f64()
        );
        c.copy_out(
            "/var/lib/stack-bundle.tar",
            &bundles.path().join("stack-bundle.tar"),
        );
    }
    let bundle = "/srv/bundles/stack-bundle.tar";
    let binds = [(bundles.path().to_path_buf(), "/srv/bundles")];

    let bridge = Bridge::create("as-test-br1");
    let primary = Container::boot_on_with("as-e2e-wk-primary", &bridge, PRIMARY, &binds);
    primary.start_daemon();
    primary.ok(&format!(
        "mkdir -p /etc/analytics-stack && printf '{}' > /etc/analytics-stack/stack.toml",
        primary_config()
    ));
    let started = Instant::now();
    primary.ok(&format!("analytics-stack apply --bundle {bundle}"));
    eprintln!(
        "[figure] primary from the bundle: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bad = primary.sh("analytics-stack worker add w1 --address 127.0.0.1");
    assert_eq!(bad.status.code(), Some(6), "a loopback worker address");
    let token = |name: &str, address: &str| {
        primary
            .ok(&format!(
                "analytics-stack worker add {name} --address {address}"
            ))
            .trim()
            .to_string()
    };
    let (t1, t2) = (token("w1", W1), token("w2", W2));
    let clash = primary.sh(&format!("analytics-stack worker add w3 --address {W1}"));
    assert_eq!(clash.status.code(), Some(6), "one address, one worker");

    let w1 = Container::boot_on_with("as-e2e-wk-w1", &bridge, W1, &binds);
    let w2 = Container::boot_on_with("as-e2e-wk-w2", &bridge, W2, &binds);
    for w in [&w1, &w2] {
        w.start_daemon();
        w.ok(&format!(
            "mkdir -p /etc/analytics-stack && printf '{PROMTAIL}' > /etc/analytics-stack/stack.toml"
        ));
    }
    // A token for another primary, and a forged pin, are refused with nothing
    // written.
    // Tokens travel in files (root's, 0600), never on a command line.
    let join = |w: &Container, primary: &str, token: &str| {
        w.put_secret("/root/join.token", token);
        w.sh(&format!(
            "analytics-stack join {primary} --token-file /root/join.token"
        ))
    };
    let wrong = join(&w1, "10.232.0.7", &t1);
    assert_eq!(wrong.status.code(), Some(6), "{wrong:?}");
    let skewed = forge(&t1, "airflow_venv", "3.2.0-000000000000");
    let refused = join(&w1, PRIMARY, &skewed);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(6), "{err}");
    assert!(err.contains("the primary runs Airflow 3.2.0"), "{err}");
    let forged = forge(&t1, "ca_sha256", &"00".repeat(32));
    let refused = join(&w1, PRIMARY, &forged);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(10), "{err}");
    assert!(err.contains("not the token's"), "{err}");
    w1.ok("test ! -e /etc/analytics-stack/stack.d/10-join.toml && test ! -e /var/lib/analytics-stack/secrets/primary-postgres");

    let started = Instant::now();
    std::thread::scope(|s| {
        for (w, t) in [(&w1, &t1), (&w2, &t2)] {
            s.spawn(move || {
                w.put_secret("/root/join.token", t);
                // Every command line on the worker, as any local account reads them,
                // through the whole join and apply: none holds a secret of the token.
                let (out, cmdlines) = w.sh_watching_cmdlines(&format!(
                    "analytics-stack join {PRIMARY} --token-file /root/join.token --bundle {bundle}"
                ));
                assert!(out.status.success(), "{out:?}");
                assert!(cmdlines.contains("--token-file"), "the scan saw the join");
                let fields: Value = serde_json::from_slice(
                    &analytics_stack::util::base64_url_decode(&t["asw1.".len()..]).unwrap(),
                )
                .unwrap();
                for secret in [
                    t.as_str(),
                    fields["postgres_password"].as_str().unwrap(),
                    fields["broker_password"].as_str().unwrap(),
                    fields["superset"]["secret_key"].as_str().unwrap(),
                    fields["enroll_secret"].as_str().unwrap(),
                ] {
                    assert!(!cmdlines.contains(secret), "a secret on a command line");
                }
                w.ok("rm /root/join.token");
            });
        }
    });
    eprintln!(
        "[figure] two worker hosts joined from the bundle (in parallel): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for w in [&w1, &w2] {
        let status: Value = serde_json::from_str(&w.ok("analytics-stack status --json")).unwrap();
        let names: Vec<&str> = status["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "node-exporter",
                "promtail",
                "airflow",
                "superset",
                "dlt",
                "dag-sync"
            ],
            "a worker host runs these only"
        );
        assert!(
            status["components"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["healthy"] == true),
            "{status:#}"
        );
        assert_eq!(
            w.ok("stat -c '%a %U' /var/lib/analytics-stack/secrets/*")
                .trim(),
            "600 root\n600 root\n600 root"
        );
        // What a worker holds of the primary's secrets: its two logins and, as the
        // primary grants Superset, Superset's key; no more.
        assert_eq!(
            w.ok("ls /var/lib/analytics-stack/secrets")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["primary-broker", "primary-postgres", "superset-secret-key"]
        );
        assert_eq!(
            w.ok("cat /var/lib/analytics-stack/secrets/superset-secret-key"),
            primary.ok("cat /var/lib/analytics-stack/secrets/superset-secret-key")
        );
        w.ok("systemctl is-active analytics-superset-worker.service");
        for absent in [
            "analytics-superset-web.service",
            "analytics-superset-init.service",
        ] {
            let cat = w.sh(&format!("systemctl cat {absent}"));
            assert!(!cat.status.success(), "{absent} on a worker host");
        }
        let plan = w.ok("analytics-stack plan");
        let again = w.ok("analytics-stack apply");
        assert!(again.contains("nothing to do"), "{plan}\n{again}");
    }
    // The units a worker host and the DAG publisher run: valid, and as sandboxed as
    // every other unit of the stack.
    let units = [
        (&w1, "analytics-airflow-worker.service"),
        (&w1, "analytics-superset-worker.service"),
        (&w1, "analytics-dag-sync.service"),
        (&w1, "analytics-node-exporter.service"),
        (&w1, "analytics-promtail.service"),
        (&primary, "analytics-dag-bundle.service"),
    ];
    w1.ok("systemd-analyze verify /etc/systemd/system/analytics-*.service /etc/systemd/system/analytics-*.timer");
    primary.ok("systemd-analyze verify /etc/systemd/system/analytics-dag-bundle.service /etc/systemd/system/analytics-dag-bundle.timer");
    for (c, unit) in units {
        let exposure = c.exposure(unit);
        assert!(exposure <= 1.6, "{unit}: {exposure}");
    }
    let listed = primary.ok("analytics-stack worker list");
    assert!(listed.contains(W1) && listed.contains(W2), "{listed}");

    observability(&primary);
    lines_are_their_senders(&primary, &w1);

    // The DAG, put where users put DAGs on the primary, reaches both workers.
    primary.ok(&format!(
        "cat > /var/lib/analytics-stack/dags/{DAG_ID}.py <<'EOF'\n{}EOF",
        fan_out_dag()
    ));
    primary.ok("systemctl start analytics-dag-bundle.service");
    let version = primary.ok("cat /var/lib/analytics-stack/dag-bundle/current");
    for w in [&w1, &w2] {
        w.ok("systemctl start analytics-dag-sync.service");
        assert_eq!(
            w.ok("readlink /var/lib/analytics-stack/dag-sync/current")
                .trim(),
            format!("versions/{}", version.trim())
        );
        w.ok(&format!(
            "test -f /var/lib/analytics-stack/dag-sync/current/dags/{DAG_ID}.py"
        ));
    }
    // Code running as the Airflow user plants a link in the published folder, to a
    // file NGINX can read: the door serves regular files only (the link is refused,
    // the version beside it is served).
    primary.ok("runuser -u analytics-airflow -- ln -s /etc/hostname /var/lib/analytics-stack/dag-bundle/leak");
    let fetch = |path: &str| {
        w1.ok(&format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /var/lib/analytics-stack/tls/ca.crt --cert /var/lib/analytics-stack/tls/client.crt --key /var/lib/analytics-stack/tls/client.key https://{PRIMARY}/stack-dags/{path}"
        ))
    };
    assert_eq!(fetch("leak").trim(), "403", "a link in the DAG door");
    assert_eq!(fetch("current").trim(), "200");
    // A local account on the worker host (from the worker's address, but without
    // the worker's key, which is root's and its units' alone) gets no DAG code.
    assert_eq!(
        w1.ok("stat -c '%a %U' /var/lib/analytics-stack/tls/client.key")
            .trim(),
        "600 root"
    );
    for path in [
        "/stack-dags/current",
        "/airflow/execution/health",
        "/loki/api/v1/push",
    ] {
        let code = w1.ok(&format!(
            "runuser -u nobody -- curl -sS -o /dev/null -w '%{{http_code}}' --cacert /var/lib/analytics-stack/tls/ca.crt https://{PRIMARY}{path}"
        ));
        assert_eq!(
            code.trim(),
            "403",
            "{path}: a local account on the worker host"
        );
    }
    primary.ok("rm /var/lib/analytics-stack/dag-bundle/leak");
    primary.trust_stack_ca();
    async_queries_run_on_worker_hosts(&primary, &w1);
    let token = airflow_token(&primary);
    wait_for_dag(&primary, &token);

    // Both workers: every task on a worker host, none on the primary.
    let (took_two, run) = run_dag(&primary, &token, |_| {});
    let hosts = task_hosts(&primary, &token, &run);
    let hostnames: std::collections::BTreeSet<&str> =
        hosts.iter().map(|(_, h, _)| h.as_str()).collect();
    assert_eq!(
        hostnames.into_iter().collect::<Vec<_>>(),
        ["as-e2e-wk-w1", "as-e2e-wk-w2"],
        "{hosts:?}"
    );

    // One worker killed mid-run (its task processes with it) and kept down: its
    // tasks are retried on the other, and the run succeeds.
    let (took_killed, run) = run_dag(&primary, &token, |t| {
        wait_until_running_on(&primary, t, "as-e2e-wk-w2");
        w2.ok("systemctl kill --signal=SIGKILL analytics-airflow-worker.service; systemctl stop analytics-airflow-worker.service");
    });
    let hosts = task_hosts(&primary, &token, &run);
    let retried: Vec<_> = hosts
        .iter()
        .filter(|(_, _, try_number)| *try_number > 1)
        .collect();
    assert!(!retried.is_empty(), "{hosts:?}");
    assert!(
        retried.iter().all(|(_, h, _)| h == "as-e2e-wk-w1"),
        "retried on the worker that is left: {hosts:?}"
    );
    eprintln!(
        "[figure] the run that lost a worker mid-run: {:.1} s ({} tasks retried)",
        took_killed.as_secs_f64(),
        retried.len()
    );

    // The benchmark: the same DAG on one worker host.
    let (took_one, run) = run_dag(&primary, &token, |_| {});
    assert!(task_hosts(&primary, &token, &run)
        .iter()
        .all(|(_, h, _)| h == "as-e2e-wk-w1"));
    eprintln!(
        "[figure] 20 tasks of {TASK_SECONDS} s: one worker host {:.1} s, two worker hosts {:.1} s ({:.2}x)",
        took_one.as_secs_f64(),
        took_two.as_secs_f64(),
        took_one.as_secs_f64() / took_two.as_secs_f64()
    );

    // The stack's own dlt sample, run on the worker host: it loads into the warehouse
    // as this worker's role acting as `warehouse`, so the table is the warehouse's.
    let sample = common::apps::run_sample_dag(&primary);
    let where_ran = airflow(
        &primary,
        &sample.token,
        "GET",
        &format!(
            "/dags/{}/dagRuns/{}/taskInstances/load_sample_readings",
            common::apps::DAG,
            sample.run_id
        ),
        None,
    );
    assert_eq!(where_ran["hostname"], "as-e2e-wk-w1", "{where_ran}");
    let psql = "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -h 127.0.0.1 -U warehouse -d warehouse -tAX";
    assert_eq!(
        primary
            .ok(&format!(
                "{psql} -c 'SELECT count(*) FROM sample_data.readings'"
            ))
            .trim(),
        "150"
    );
    assert_eq!(
        primary
            .ok(&format!("{psql} -c \"SELECT tableowner FROM pg_tables WHERE schemaname = 'sample_data' AND tablename = 'readings'\""))
            .trim(),
        "warehouse"
    );

    let outsider = Container::boot_on("as-e2e-wk-outsider", &bridge, OUTSIDER);
    refused_from_outside(&primary, &outsider);

    // Removed: the worker's own logins stop working, from its own host.
    // Each of the worker's logins, tried on its own: those that work are printed.
    let logins = |w: &Container| {
        let script = format!(
            r#"
import psycopg2, redis
pg = open("/var/lib/analytics-stack/secrets/primary-postgres").read().strip()
rb = open("/var/lib/analytics-stack/secrets/primary-broker").read().strip()
ca = "/var/lib/analytics-stack/tls/ca.crt"
cert = "/var/lib/analytics-stack/tls/client.crt"
key = "/var/lib/analytics-stack/tls/client.key"
def postgres(db, **kw):
    psycopg2.connect(host="{PRIMARY}", user="worker_w1", password=pg, dbname=db, sslmode="verify-full", sslrootcert=ca, sslcert=cert, sslkey=key, connect_timeout=5, **kw).close()
def redis_door(port):
    redis.Redis(host="{PRIMARY}", port=port, username="worker-w1", password=rb, ssl=True, ssl_ca_certs=ca, ssl_certfile=cert, ssl_keyfile=key, socket_timeout=5).ping()
for name, login in [
    ("airflow", lambda: postgres("airflow")),
    ("superset", lambda: postgres("superset", options="-c role=superset")),
    ("broker", lambda: redis_door(6390)),
    ("cache", lambda: redis_door(6391)),
]:
    try:
        login()
        print(name)
    except Exception:
        pass
"#
        );
        w.ok(&format!(
            "/opt/analytics-stack/airflow/current/bin/python - <<'EOF'\n{script}EOF"
        ))
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    assert_eq!(logins(&w1), ["airflow", "superset", "broker", "cache"]);
    primary.ok("analytics-stack worker remove w1");
    assert_eq!(
        logins(&w1),
        Vec::<String>::new(),
        "a removed worker's logins"
    );
    let prometheus = primary.ok("cat /etc/analytics-stack/prometheus/prometheus.yml");
    assert!(!prometheus.contains(W1) && prometheus.contains(W2));
    drop(outsider);
    drop(w2);
    drop(w1);
    drop(primary);
    drop(bridge);
}

/// Prometheus scrapes three node_exporters; Loki has lines from three hosts.
fn observability(primary: &Container) {
    let query = |promql: &str| -> Value {
        serde_json::from_str(&primary.ok(&format!(
            "curl -fsS --get --data-urlencode 'query={promql}' http://127.0.0.1:9090/api/v1/query"
        )))
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let up = loop {
        let up = query("up{job=\"node\"} == 1");
        let instances: Vec<String> = up["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["instance"].as_str().map(String::from))
            .collect();
        if instances.len() == 3 || Instant::now() > deadline {
            break instances;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        up.len() == 3 && up.contains(&"w1".to_string()) && up.contains(&"w2".to_string()),
        "three node targets up: {up:?}"
    );
    // The workers' daemon metrics too, through their node_exporter: the daemon
    // writes them when its apply ends, and node_exporter may have been scraped
    // before (it starts while the worker's venvs build), so until the next scrape.
    let deadline = Instant::now() + Duration::from_secs(60);
    let components = loop {
        let components = query("analytics_stack_components{instance=\"w1\"}");
        if !components["data"]["result"].as_array().unwrap().is_empty() || Instant::now() > deadline
        {
            break components;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        !components["data"]["result"].as_array().unwrap().is_empty(),
        "{components}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let hosts = loop {
        let values: Value = serde_json::from_str(
            &primary.ok(&format!("{}/loki/api/v1/label/host/values", common::LOKI)),
        )
        .unwrap();
        let hosts: Vec<String> = values["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str().map(String::from))
            .collect();
        if hosts.len() >= 3 || Instant::now() > deadline {
            break hosts;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        hosts.len() == 3 && hosts.contains(&"w1".to_string()) && hosts.contains(&"w2".to_string()),
        "journal lines from three hosts: {hosts:?}"
    );
    // What the real Promtail kept of a worker host's journal, read from the real
    // Loki by host and unit: its Celery worker's own lines (Celery names itself
    // `celery@HOST`, and logs each task it receives, `execute_workload[…]`).
    // (Waited for, up to two minutes: Celery says it is ready a while after its unit
    // started, and Promtail sends in batches.)
    let query = "{host=\"w1\",unit=\"analytics-airflow-worker.service\"}";
    let deadline = Instant::now() + Duration::from_secs(120);
    let text: Vec<String> = loop {
        let lines: Value = serde_json::from_str(&primary.ok(&format!(
            "{}/loki/api/v1/query_range -G --data-urlencode 'query={query}' --data-urlencode 'limit=1000' --data-urlencode \"start=$(( $(date +%s) - 3600 ))000000000\"",
            common::LOKI
        )))
        .unwrap();
        let text: Vec<String> = lines["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|stream| stream["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v[1].as_str().map(String::from))
            .collect();
        let found = text
            .iter()
            .any(|l| l.contains("celery@") || l.contains("execute_workload"));
        if found || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        text.iter()
            .any(|l| l.contains("celery@") || l.contains("execute_workload")),
        "no Celery worker line of w1 in Loki ({} lines): {:?}",
        text.len(),
        &text[..text.len().min(20)]
    );
    eprintln!(
        "[figure] w1's Celery worker lines in Loki, shipped by the real Promtail: {}",
        text.len()
    );
}

/// A worker pushes a line labelled as another host's: it lands in its own tenant,
/// named by the door from its certificate, and is read back as the worker's.
fn lines_are_their_senders(primary: &Container, w1: &Container) {
    let push = serde_json::json!({"streams": [{
        "stream": {"host": "w2", "unit": "analytics-forged.service"},
        "values": [[format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()), "a line w1 says is w2's"]],
    }]});
    w1.put_file("/root/push.json", &push.to_string());
    let code = w1.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /var/lib/analytics-stack/tls/ca.crt --cert /var/lib/analytics-stack/tls/client.crt --key /var/lib/analytics-stack/tls/client.key -H 'Content-Type: application/json' --data-binary @/root/push.json https://{PRIMARY}/loki/api/v1/push"
    ));
    assert_eq!(code.trim(), "204");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        let lines: Value = serde_json::from_str(&primary.ok(&format!(
            "{}/loki/api/v1/query_range -G --data-urlencode 'query={{unit=\"analytics-forged.service\"}}' --data-urlencode \"start=$(( $(date +%s) - 600 ))000000000\"",
            common::LOKI
        )))
        .unwrap();
        let stream = lines["data"]["result"][0]["stream"].clone();
        if !stream.is_null() || Instant::now() > deadline {
            break stream;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(stream["__tenant_id__"], "worker-w1", "{stream}");
    assert_eq!(
        stream["host"], "w2",
        "the label is what it claimed: {stream}"
    );
}

/// SQL Lab's asynchronous queries, with the primary's own Superset worker off: the
/// query is queued on the broker and run by a worker host's Superset worker against
/// the warehouse, and its result, left in the cache Redis through the door, is read
/// back by the primary's web process. Where it ran is seen from PostgreSQL's side
/// (Superset refuses the functions and views a query could ask itself with): a lock
/// held on the table keeps the query waiting, and the waiting session's client
/// address is a worker host's.
fn async_queries_run_on_worker_hosts(primary: &Container, w1: &Container) {
    assert!(!primary
        .sh("systemctl cat analytics-superset-worker.service")
        .status
        .success());
    let psql = "PGPASSWORD=$(cat /var/lib/analytics-stack/secrets/postgres-warehouse) psql -h 127.0.0.1 -U warehouse -d warehouse -tAX";
    primary.ok(&format!(
        "{psql} -c 'CREATE TABLE IF NOT EXISTS public.async_probe (n int); TRUNCATE public.async_probe; INSERT INTO public.async_probe VALUES (1), (2), (3)'"
    ));
    primary.ok(&format!(
        "systemd-run --unit=as-probe-lock --setenv=PGAPPNAME=as-probe-lock sh -c \"{psql} -c 'BEGIN; LOCK TABLE public.async_probe IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT;'\""
    ));
    let session = common::apps::superset_login(primary);
    let warehouse = session.warehouse_id(primary);
    let database = session.call(primary, "GET", &format!("/database/{warehouse}"), None);
    assert_eq!(database["result"]["allow_run_async"], true, "{database}");
    let execute = |sql: &str| -> u64 {
        let queued = session.call(
            primary,
            "POST",
            "/sqllab/execute/",
            Some(&format!(
                r#"{{"database_id": {warehouse}, "sql": "{sql}", "runAsync": true, "schema": "public"}}"#
            )),
        );
        assert_eq!(queued["query"]["state"], "pending", "{queued}");
        queued["query"]["queryId"]
            .as_u64()
            .unwrap_or_else(|| panic!("not queued: {queued}"))
    };
    // Waits for the query's success; returns its results key and its result, read
    // through the web.
    let result = |id: u64| -> (String, Value) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let key = loop {
            let changed = session.call(
                primary,
                "GET",
                "/query/updated_since?q=%28last_updated_ms%3A0%29",
                None,
            );
            let query = changed["result"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| q["queryId"] == id)
                .cloned()
                .unwrap_or_default();
            match query["state"].as_str() {
                Some("success") => break query["resultsKey"].as_str().unwrap().to_string(),
                Some("failed") => panic!("the query failed: {query}"),
                _ if Instant::now() > deadline => panic!(
                    "the query did not finish: {query}\n{}",
                    primary.ok("journalctl -u analytics-superset-web.service -n 40 --no-pager")
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let answer = session.call(
            primary,
            "GET",
            &format!("/sqllab/results/?q=%28key%3A%27{key}%27%29"),
            None,
        );
        (key, answer)
    };
    let id = execute("SELECT count(*) AS n FROM public.async_probe");
    // The query's session, waiting for the lock: from which host?
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = loop {
        let waiting = primary.ok(&format!(
            "{psql} -c \"SELECT host(client_addr) FROM pg_stat_activity WHERE usename = 'warehouse' AND wait_event_type = 'Lock' AND query LIKE '%async_probe%'\""
        ));
        if let Some(addr) = waiting.lines().next().filter(|l| !l.is_empty()) {
            break addr.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no session waits for the lock: {}",
            primary.ok(&format!("{psql} -c 'SELECT usename, host(client_addr), state, wait_event_type, query FROM pg_stat_activity'"))
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        client == W1 || client == W2,
        "the query ran from {client}, not a worker host"
    );
    eprintln!("[figure] the asynchronous query ran from {client}");
    primary.ok(&format!(
        "{psql} -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'as-probe-lock'\""
    ));
    let (key, results) = result(id);
    assert_eq!(results["data"][0]["n"], 3, "{results}");
    // The round trip of one more, unhindered: queue, a worker host, the cache, back.
    let started = Instant::now();
    let (_, results) = result(execute("SELECT max(n) AS top FROM public.async_probe"));
    assert_eq!(results["data"][0]["top"], 3, "{results}");
    eprintln!(
        "[figure] an asynchronous SQL Lab query through a worker host: {:.2} s (SQL Lab's API, polled every 0.2 s)",
        started.elapsed().as_secs_f64()
    );

    // A worker host's cache login overwrites the first query's result with a pickle
    // that runs a command (cachelib's format: `!` + a pickle). The primary's web
    // process, asked for that result, does not run it: a miss, an error answer, and
    // the mark absent (analytics-superset could write it there).
    let mark = "/var/lib/analytics-stack/superset/pickle-ran";
    let set = w1.ok(&format!(
        r#"/opt/analytics-stack/airflow/current/bin/python - <<'EOF'
import redis
password = open("/var/lib/analytics-stack/secrets/primary-broker").read().strip()
cache = redis.Redis(host="{PRIMARY}", port=6391, db=4, username="worker-w1", password=password, ssl=True, ssl_ca_certs="/var/lib/analytics-stack/tls/ca.crt", ssl_certfile="/var/lib/analytics-stack/tls/client.crt", ssl_keyfile="/var/lib/analytics-stack/tls/client.key", socket_timeout=5)
print(cache.set("superset_results_{key}", b"!cposix\nsystem\n(S'touch {mark}'\ntR."))
EOF"#
    ));
    assert_eq!(set.trim(), "True", "the worker's login writes the cache");
    let answer = session.call(
        primary,
        "GET",
        &format!("/sqllab/results/?q=%28key%3A%27{key}%27%29"),
        None,
    );
    assert!(answer["data"].is_null(), "{answer}");
    primary.ok(&format!("test ! -e {mark}"));
    let log = primary.ok("journalctl -u analytics-superset-web.service --no-pager -o cat | grep -c 'a cached value was not loaded: posix.system is not part of a cached value' || true");
    assert_ne!(log.trim(), "0", "the refusal is logged");
}

/// Waits until the primary's DAG processor has read the DAG (it looks every 30 s).
fn wait_for_dag(primary: &Container, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let dag = airflow(primary, token, "GET", &format!("/dags/{DAG_ID}"), None);
        if dag["dag_id"] == DAG_ID {
            return;
        }
        assert!(Instant::now() < deadline, "the DAG never appeared: {dag}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Triggers the DAG, calls `during` with the run's id once, and waits for success.
fn run_dag(primary: &Container, token: &str, during: impl FnOnce(&str)) -> (Duration, String) {
    let started = Instant::now();
    let run = airflow(
        primary,
        token,
        "POST",
        &format!("/dags/{DAG_ID}/dagRuns"),
        Some(r#"{"logical_date": null}"#),
    );
    let run_id = run["dag_run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no dag_run_id: {run}"))
        .to_string();
    during(&run_id);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = airflow(
            primary,
            token,
            "GET",
            &format!("/dags/{DAG_ID}/dagRuns/{run_id}"),
            None,
        );
        match state["state"].as_str() {
            Some("success") => return (started.elapsed(), run_id),
            Some("failed") => panic!(
                "the run failed: {state}\n{:?}\n{}",
                task_hosts(primary, token, &run_id),
                primary.ok("journalctl -u analytics-airflow-scheduler.service -n 60 --no-pager")
            ),
            _ if Instant::now() > deadline => panic!("the run did not finish: {state}"),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// (task, hostname, try number) of every task instance of a run.
fn task_hosts(primary: &Container, token: &str, run_id: &str) -> Vec<(String, String, u64)> {
    let tis = airflow(
        primary,
        token,
        "GET",
        &format!("/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100"),
        None,
    );
    tis["task_instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{tis}"))
        .iter()
        .map(|ti| {
            (
                ti["task_id"].as_str().unwrap_or("").to_string(),
                ti["hostname"].as_str().unwrap_or("").to_string(),
                ti["try_number"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn wait_until_running_on(primary: &Container, run_id: &str, host: &str) {
    let token = airflow_token(primary);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tis = airflow(
            primary,
            &token,
            "GET",
            &format!("/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100"),
            None,
        );
        let running = tis["task_instances"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|ti| ti["state"] == "running" && ti["hostname"] == host);
        if running {
            return;
        }
        assert!(Instant::now() < deadline, "nothing ran on {host}: {tis}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// From a host that is no worker: every door the workers use refuses.
fn refused_from_outside(primary: &Container, outsider: &Container) {
    outsider.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-client-15 redis-tools >/dev/null");
    let ca = primary.ok("cat /var/lib/analytics-stack/tls/ca.crt");
    outsider.ok(&format!("cat > /root/stack-ca.crt <<'EOF'\n{ca}EOF"));
    // PostgreSQL: no line of pg_hba.conf for this address, TLS or not, even with a
    // worker's own password.
    let pw = primary.ok("cat /var/lib/analytics-stack/secrets/worker-w2-postgres");
    for ssl in ["verify-full", "disable"] {
        let out = outsider.sh(&format!(
            "PGPASSWORD='{}' psql 'host={PRIMARY} user=worker_w2 dbname=airflow sslmode={ssl} sslrootcert=/root/stack-ca.crt connect_timeout=5' -XAtc 'SELECT 1'",
            pw.trim()
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("no pg_hba.conf entry"),
            "{ssl}: {err}"
        );
    }
    // The broker's and the cache's doors close at once, even with a worker's
    // password.
    let bpw = primary.ok("cat /var/lib/analytics-stack/secrets/worker-w2-redis");
    for port in [6390, 6391] {
        let out = outsider.sh(&format!(
            "REDISCLI_AUTH='{}' redis-cli -h {PRIMARY} -p {port} --user worker-w2 --tls --cacert /root/stack-ca.crt PING",
            bpw.trim()
        ));
        assert_eq!(
            common::redis_refusal(&out),
            common::RedisRefusal::Closed,
            "{port}: {out:?}"
        );
    }
    // The execution API, the log push and the DAGs: 403 at the door.
    for path in [
        "/airflow/execution/health",
        "/loki/api/v1/push",
        "/stack-dags/current",
    ] {
        let code = outsider.ok(&format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /root/stack-ca.crt https://{PRIMARY}{path}"
        ));
        assert_eq!(code.trim(), "403", "{path}");
    }
    // A worker's node_exporter answers over TLS only, and only to a certificate of
    // the stack CA (the primary's Prometheus presents one): not to plain HTTP, not
    // without a certificate, not to another CA's.
    outsider.ok("cd /root && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.crt -subj /CN=other -days 1 -addext extendedKeyUsage=clientAuth 2>/dev/null");
    for (how, args) in [
        ("plain HTTP", format!("http://{W1}:9100/metrics")),
        (
            "no certificate",
            format!("--cacert /root/stack-ca.crt https://{W1}:9100/metrics"),
        ),
        (
            "another CA's certificate",
            format!("--cacert /root/stack-ca.crt --cert /root/other.crt --key /root/other.key https://{W1}:9100/metrics"),
        ),
    ] {
        let out = outsider.sh(&format!("curl -fsS -o /dev/null --max-time 5 {args}"));
        assert!(!out.status.success(), "node_exporter with {how}: {out:?}");
    }
    // The landing page still answers: the door itself is open.
    let code = outsider.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /root/stack-ca.crt https://{PRIMARY}/"
    ));
    assert_eq!(code.trim(), "200");
}

/// `token` with one field replaced: a CA pin is what someone who intercepted the
/// token and stands between the worker and the primary would need the worker to
/// accept; another Airflow is a primary this host's package does not match.
fn forge(token: &str, field: &str, value: &str) -> String {
    let body = token.strip_prefix("asw1.").unwrap();
    let json = analytics_stack::util::base64_url_decode(body).unwrap();
    let mut t: Value = serde_json::from_slice(&json).unwrap();
    t[field] = value.into();
    format!(
        "asw1.{}",
        analytics_stack::util::base64_url(&serde_json::to_vec(&t).unwrap())
    )
}
