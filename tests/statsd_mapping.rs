//! Airflow's StatsD names through the stack's statsd_exporter mapping, as
//! statsd_exporter applies it (tests/common/statsd.rs): labelled families, dotted task
//! ids kept whole, untagged duplicates and unknown names dropped.

mod common;

use analytics_stack::components::statsd_exporter;
use common::statsd::{sent_lines, Mapping, Outcome, Sent};

fn family_outcome(name: &str, labels: &[(&str, &str)]) -> Outcome {
    Outcome::Family(
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn family(mapping: &Mapping, statsd: &str, name: &str, labels: &[(&str, &str)]) {
    assert_eq!(
        mapping.map(statsd),
        family_outcome(name, labels),
        "{statsd}"
    );
}

fn family_as(mapping: &Mapping, statsd: &str, kind: &str, name: &str, labels: &[(&str, &str)]) {
    assert_eq!(
        mapping.map_as(statsd, kind),
        family_outcome(name, labels),
        "{statsd} ({kind})"
    );
}

#[test]
fn airflow_metrics_become_a_fixed_set_of_labelled_families() {
    let m = Mapping::parse(&statsd_exporter::render_mapping());
    assert_eq!(m.len(), statsd_exporter::rules().len());
    family(
        &m,
        "airflow.dag.sales.load.duration",
        "airflow_task_duration",
        &[("dag_id", "sales"), ("task_id", "load")],
    );
    // A task in a TaskGroup has a dotted id: it stays whole.
    family(
        &m,
        "airflow.dag.sales.extract.load.duration",
        "airflow_task_duration",
        &[("dag_id", "sales"), ("task_id", "extract.load")],
    );
    family(
        &m,
        "airflow.ti.finish.sales.extract.load.success",
        "airflow_ti_finish",
        &[
            ("dag_id", "sales"),
            ("task_id", "extract.load"),
            ("state", "success"),
        ],
    );
    family(
        &m,
        "airflow.ti.running.default.sales.extract.load",
        "airflow_ti_running",
        &[
            ("queue", "default"),
            ("dag_id", "sales"),
            ("task_id", "extract.load"),
        ],
    );
    family(
        &m,
        "airflow.dag.sales.load.scheduled_duration",
        "airflow_task_scheduled_duration",
        &[("dag_id", "sales"), ("task_id", "load")],
    );
    family(
        &m,
        "airflow.dagrun.dependency-check.sales",
        "airflow_dagrun_dependency_check",
        &[("dag_id", "sales")],
    );
    family(
        &m,
        "airflow.dagrun.duration.failed.sales",
        "airflow_dagrun_failed",
        &[("dag_id", "sales")],
    );
    family(
        &m,
        "airflow.dag_processing.last_run.seconds_ago.sales_v2",
        "airflow_dag_processing_last_run_seconds_ago",
        &[("file", "sales_v2")],
    );
    family(
        &m,
        "airflow.dag_processing.last_duration.dags-folder.sales.v2",
        "airflow_dag_processing_last_duration",
        &[("bundle", "dags-folder"), ("file", "sales.v2")],
    );
    // A task run's job id is not kept: it would be a new series per run.
    family(
        &m,
        "airflow.local_task_job.task_exit.4711.sales.load.0",
        "airflow_local_task_job_task_exit",
        &[
            ("dag_id", "sales"),
            ("task_id", "load"),
            ("return_code", "0"),
        ],
    );
    // One executor: the plain name; several: the executor's class in the name.
    family(
        &m,
        "airflow.executor.open_slots",
        "airflow_executor_open_slots",
        &[("executor", "")],
    );
    family(
        &m,
        "airflow.executor.open_slots.CeleryExecutor",
        "airflow_executor_open_slots",
        &[("executor", "CeleryExecutor")],
    );
    family(
        &m,
        "airflow.scheduler_heartbeat",
        "airflow_scheduler_heartbeat",
        &[],
    );
    family(
        &m,
        "airflow.dag_processing.total_parse_time",
        "airflow_dag_processing_total_parse_time",
        &[],
    );
    // Seen from Airflow 3.3 itself (its Job class, lower case).
    family(
        &m,
        "airflow.job_start",
        "airflow_job_start",
        &[("job", "job")],
    );
    family(
        &m,
        "airflow.scheduler_job_heartbeat_failure",
        "airflow_job_heartbeat_failure",
        &[("job", "scheduler_job")],
    );
    family(
        &m,
        "airflow.operator_failures_BashOperator",
        "airflow_operator_failures",
        &[("operator", "BashOperator")],
    );
    // Untagged duplicates of labelled families: dropped by name.
    for dropped in [
        "airflow.task.duration",
        "airflow.ti.finish",
        "airflow.pool.open_slots",
        "airflow.dagrun.duration.success",
    ] {
        assert_eq!(m.map(dropped), Outcome::Dropped, "{dropped}");
    }
    // Names nobody mapped: dropped by the last rule, never a family of their own.
    for unknown in [
        "airflow.edge_worker.status.w1",
        "airflow.some.future.metric.sales",
        "other.app.metric",
    ] {
        assert_eq!(m.map(unknown), Outcome::CaughtByTheLastRule, "{unknown}");
    }
}

fn superset_names() -> Vec<(String, String)> {
    include_str!("data/superset-statsd-names.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, kind) = l.split_once('|').expect("name|type");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

#[test]
fn every_superset_and_gunicorn_name_lands_in_a_superset_family() {
    let m = Mapping::parse(&statsd_exporter::render_mapping());
    let names = superset_names();
    assert!(names.len() > 60, "{}", names.len());
    let mut families = std::collections::BTreeSet::new();
    for (name, kind) in &names {
        match m.map_as(name, kind) {
            Outcome::Family(f, labels) => {
                assert!(f.starts_with("superset_"), "{name} -> {f}");
                assert!(
                    labels.iter().all(|(_, v)| !v.is_empty()),
                    "{name}: {labels:?}"
                );
                families.insert(f);
            }
            other => panic!("{name} ({kind}): {other:?}"),
        }
    }
    // Every rule is used by some name, so none is dead.
    assert_eq!(
        families.len(),
        analytics_stack::components::superset_metrics::families().len(),
        "{families:?}"
    );
    family_as(
        &m,
        "superset.ChartRestApi.data.time",
        "ms",
        "superset_api_duration",
        &[("api", "ChartRestApi"), ("endpoint", "data")],
    );
    family_as(
        &m,
        "superset.ChartRestApi.data.success",
        "c",
        "superset_api_calls",
        &[
            ("api", "ChartRestApi"),
            ("endpoint", "data"),
            ("result", "success"),
        ],
    );
    family_as(
        &m,
        "superset.gunicorn.request.status.502",
        "c",
        "superset_http_responses",
        &[("status", "502")],
    );
    family_as(
        &m,
        "superset.sqllab.query.time_executing_query",
        "ms",
        "superset_sqllab_query_duration",
        &[("step", "time_executing_query")],
    );
    // A gauge of a counter's shape keeps out of the counters' family.
    family_as(
        &m,
        "superset.invalidated_cache",
        "g",
        "superset_cache_keys_invalidated",
        &[],
    );
    family_as(
        &m,
        "superset.health",
        "c",
        "superset_events",
        &[("event", "health")],
    );
    // Names of no known shape add no family.
    for (name, kind) in [
        ("superset.a.b.c.d.e", "c"),
        ("superset.Some-Thing", "c"),
        ("superset.gunicorn.request.status.2000", "c"),
    ] {
        assert_eq!(m.map_as(name, kind), Outcome::CaughtByTheLastRule, "{name}");
    }
    // Airflow's names are untouched by Superset's rules.
    family(
        &m,
        "airflow.dag.sales.load.duration",
        "airflow_task_duration",
        &[("dag_id", "sales"), ("task_id", "load")],
    );
}

/// The tap e2e_apps reads what Airflow and Superset sent with: the real exporter's
/// debug log of each line received.
#[test]
fn the_exporters_debug_lines_give_name_value_and_type() {
    let journal = "time=2026-12-06T20:30:00.117Z level=DEBUG source=listener.go:96 msg=\"Incoming line\" proto=udp line=airflow.dag.sample.load.duration:933.2|ms\n\
                   time=2026-12-06T20:30:00.118Z level=DEBUG source=listener.go:96 msg=\"Incoming line\" proto=udp line=\"superset.welcome:1|c\"\n\
                   time=2026-12-06T20:30:00.119Z level=INFO source=main.go:347 msg=\"Accepting StatsD Traffic\"\n\
                   time=2026-12-06T20:30:00.120Z level=DEBUG source=listener.go:96 msg=\"Incoming line\" proto=udp line=garbage\n";
    assert_eq!(
        sent_lines(journal),
        [
            Sent {
                name: "airflow.dag.sample.load.duration".into(),
                value: 933.2,
                kind: "ms".into()
            },
            Sent {
                name: "superset.welcome".into(),
                value: 1.0,
                kind: "c".into()
            },
        ]
    );
}
