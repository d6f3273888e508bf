//! Airflow's StatsD metrics as data, for statsd_exporter's mapping. From airflow-core
//! 3.3's metric registry (`airflow/_shared/observability/metrics/metrics_template.yaml`).
//!
//! Plain StatsD cannot carry tags, so Airflow 3 sends each metric twice: under its
//! legacy name, with the DAG, task, pool… inside the name (one metric family per DAG
//! and task if left alone), and under its new name with the tags dropped (no labels at
//! all). The mapping turns each legacy name into one family with labels, drops the
//! untagged duplicates, keeps the metrics that never had variables under their own
//! names, and drops everything else — so the number of families is fixed, whatever
//! the DAGs are called.

/// A legacy name with variables (`{dag_id}`…) and the family it becomes. Variables
/// become labels ([`label_of`]); `{job_id}` is matched but not kept (one per task run).
pub const PER_ENTITY: &[(&str, &str)] = &[
    ("dag.{dag_id}.{task_id}.duration", "airflow_task_duration"),
    (
        "dag.{dag_id}.{task_id}.scheduled_duration",
        "airflow_task_scheduled_duration",
    ),
    (
        "dag.{dag_id}.{task_id}.queued_duration",
        "airflow_task_queued_duration",
    ),
    (
        "dagrun.duration.success.{dag_id}",
        "airflow_dagrun_duration",
    ),
    ("dagrun.duration.failed.{dag_id}", "airflow_dagrun_failed"),
    (
        "dagrun.schedule_delay.{dag_id}",
        "airflow_dagrun_schedule_delay",
    ),
    (
        "dagrun.{dag_id}.first_task_scheduling_delay",
        "airflow_dagrun_first_task_scheduling_delay",
    ),
    (
        "dagrun.dependency-check.{dag_id}",
        "airflow_dagrun_dependency_check",
    ),
    ("ti.start.{dag_id}.{task_id}", "airflow_ti_start"),
    ("ti.finish.{dag_id}.{task_id}.{state}", "airflow_ti_finish"),
    (
        "ti.scheduled.{queue}.{dag_id}.{task_id}",
        "airflow_ti_scheduled",
    ),
    ("ti.queued.{queue}.{dag_id}.{task_id}", "airflow_ti_queued"),
    (
        "ti.running.{queue}.{dag_id}.{task_id}",
        "airflow_ti_running",
    ),
    (
        "ti.deferred.{queue}.{dag_id}.{task_id}",
        "airflow_ti_deferred",
    ),
    (
        "local_task_job.task_exit.{job_id}.{dag_id}.{task_id}.{return_code}",
        "airflow_local_task_job_task_exit",
    ),
    (
        "task_removed_from_dag.{dag_id}",
        "airflow_task_removed_from_dag",
    ),
    (
        "task_restored_to_dag.{dag_id}",
        "airflow_task_restored_to_dag",
    ),
    (
        "operator_failures_{operator_name}",
        "airflow_operator_failures",
    ),
    (
        "operator_successes_{operator_name}",
        "airflow_operator_successes",
    ),
    (
        "task_instance_created_{task_type}",
        "airflow_task_instance_created",
    ),
    (
        "dag_processing.last_run.seconds_ago.{file_name}",
        "airflow_dag_processing_last_run_seconds_ago",
    ),
    (
        "dag_processing.last_duration.{bundle_name}.{file_name}",
        "airflow_dag_processing_last_duration",
    ),
    (
        "dag_processing.last_num_of_db_queries.{dag_file}",
        "airflow_dag_processing_last_num_of_db_queries",
    ),
    (
        "executor.open_slots.{executor_class_name}",
        "airflow_executor_open_slots",
    ),
    (
        "executor.queued_tasks.{executor_class_name}",
        "airflow_executor_queued_tasks",
    ),
    (
        "executor.running_tasks.{executor_class_name}",
        "airflow_executor_running_tasks",
    ),
    ("pool.open_slots.{pool_name}", "airflow_pool_open_slots"),
    ("pool.queued_slots.{pool_name}", "airflow_pool_queued_slots"),
    (
        "pool.running_slots.{pool_name}",
        "airflow_pool_running_slots",
    ),
    (
        "pool.deferred_slots.{pool_name}",
        "airflow_pool_deferred_slots",
    ),
    (
        "pool.scheduled_slots.{pool_name}",
        "airflow_pool_scheduled_slots",
    ),
    (
        "pool.starving_tasks.{pool_name}",
        "airflow_pool_starving_tasks",
    ),
    ("triggers.running.{hostname}", "airflow_triggers_running"),
    (
        "triggerer.capacity_left.{hostname}",
        "airflow_triggerer_capacity_left",
    ),
    (
        "ol.event.size.{event_type}.{operator_name}",
        "airflow_ol_event_size",
    ),
    (
        "ol.emit.attempts.{event_type}.{transport_type}",
        "airflow_ol_emit_attempts",
    ),
    (
        "ol.extract.{event_type}.{operator_name}",
        "airflow_ol_extract",
    ),
];

/// New names whose variables were tags: sent without them, they would be one
/// unlabelled series beside the labelled family, so they are dropped. Executor
/// metrics are not among them: with one executor Airflow sends only these names.
pub const UNTAGGED_DUPLICATES: &[&str] = &[
    "task.duration",
    "task.scheduled_duration",
    "task.queued_duration",
    "dagrun.duration.success",
    "dagrun.duration.failed",
    "dagrun.schedule_delay",
    "dagrun.first_task_scheduling_delay",
    "dagrun.dependency-check",
    "ti.start",
    "ti.finish",
    "ti.scheduled",
    "ti.queued",
    "ti.running",
    "ti.deferred",
    "local_task_job.task_exit",
    "task_removed_from_dag",
    "task_restored_to_dag",
    "operator_failures",
    "operator_successes",
    "task_instance_created",
    "dag_processing.last_run.seconds_ago",
    "dag_processing.last_duration",
    "pool.open_slots",
    "pool.queued_slots",
    "pool.running_slots",
    "pool.deferred_slots",
    "pool.scheduled_slots",
    "pool.starving_tasks",
    "triggers.running",
    "triggerer.capacity_left",
    "ol.event.size",
    "ol.emit.attempts",
    "ol.extract",
];

/// Names with no variables at all: each keeps its name (dots as underscores); the
/// executor's three get an empty `executor` label, like their per-executor names.
pub const PLAIN: &[&str] = &[
    "resumable_job.fresh_submit",
    "resumable_job.already_succeeded",
    "resumable_job.terminal_resubmit",
    "resumable_job.reconnect_attempt",
    "resumable_job.reconnect_success",
    "ti_failures",
    "ti_successes",
    "previously_succeeded",
    "task_instances_without_heartbeats_killed",
    "scheduler_heartbeat",
    "dag_processor_heartbeat",
    "triggerer_heartbeat",
    "dag_processing.processes",
    "dag_processing.processor_timeouts",
    "dag_processing.other_callback_count",
    "dag_processing.callback_only_count",
    "dag_processing.file_path_queue_update_count",
    "dag_processing.manager_stalls",
    "dag_processing.import_errors",
    "dag_processing.total_parse_time",
    "dag_processing.file_path_queue_size",
    "dag_file_processor_timeouts",
    "dag_file_refresh_error",
    "dagbag_size",
    "scheduler.tasks.killed_externally",
    "scheduler.tasks.starving",
    "scheduler.tasks.executable",
    "scheduler.dagruns.running",
    "scheduler.orphaned_tasks.cleared",
    "scheduler.orphaned_tasks.adopted",
    "scheduler.critical_section_busy",
    "scheduler.critical_section_duration",
    "scheduler.critical_section_query_duration",
    "scheduler.scheduler_loop_duration",
    "scheduler.executor_heartbeat_duration",
    "scheduler.dag_bag.cache_hit",
    "scheduler.dag_bag.cache_miss",
    "scheduler.dag_bag.cache_clear",
    "scheduler.dag_bag.cache_size",
    "api_server.dag_bag.cache_hit",
    "api_server.dag_bag.cache_miss",
    "api_server.dag_bag.cache_clear",
    "api_server.dag_bag.cache_size",
    "dag.callback_exceptions",
    "dagrun.first_task_start_delay",
    "celery.task_timeout_error",
    "celery.execute_command.failure",
    "triggers.blocked_main_thread",
    "triggers.failed",
    "triggers.succeeded",
    "asset.updates",
    "asset.orphaned",
    "asset.triggered_dagruns",
    "deadline_alerts.deadline_created",
    "deadline_alerts.deadline_missed",
    "deadline_alerts.deadline_not_missed",
    "connection_test.success",
    "connection_test.failed",
    "connection_test.reaped",
    "connection_test.active",
    "connection_test.pending",
    "connection_test.dispatch_duration",
    "connection_test.hook_duration",
    "collect_db_dags",
    "ol.emit.failed",
    "serde.load_serializers",
    "airflow.io.load_filesystems",
    "executor.open_slots",
    "executor.queued_tasks",
    "executor.running_tasks",
];

/// The label a legacy variable becomes; None for one that is matched but not kept.
pub fn label_of(variable: &str) -> Option<&'static str> {
    Some(match variable {
        "dag_id" => "dag_id",
        "task_id" => "task_id",
        "state" => "state",
        "queue" => "queue",
        "return_code" => "return_code",
        "operator_name" => "operator",
        "task_type" => "task_type",
        "file_name" | "dag_file" => "file",
        "bundle_name" => "bundle",
        "executor_class_name" => "executor",
        "pool_name" => "pool",
        "hostname" => "hostname",
        "event_type" => "event_type",
        "transport_type" => "transport_type",
        "job_id" => return None,
        other => panic!("no label for Airflow's variable {other}"),
    })
}

/// Variables whose values may hold dots: a task in a TaskGroup is `group.task`, a DAG
/// file may be `sales.v2`. At most one per name, so the match stays unambiguous;
/// DAG ids are taken to hold none.
pub fn may_hold_dots(variable: &str) -> bool {
    matches!(variable, "task_id" | "file_name" | "dag_file")
}
