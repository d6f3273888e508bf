//! Airflow's StatsD names through the stack's statsd_exporter mapping, as
//! statsd_exporter applies it (tests/common/statsd.rs): labelled families, dotted task
//! ids kept whole, untagged duplicates and unknown names dropped.

mod common;

use analytics_stack::components::statsd_exporter;
use common::statsd::{Mapping, Outcome};

fn family(mapping: &Mapping, statsd: &str, name: &str, labels: &[(&str, &str)]) {
    let want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        mapping.map(statsd),
        Outcome::Family(name.to_string(), want),
        "{statsd}"
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
