//! Grafana dashboards, provisioned from files: host metrics, the stack's overview,
//! Airflow (from its StatsD metrics) and logs per unit. Built as JSON here so that
//! tests can check every query names a metric the exporters really produce.

use serde_json::{json, Value};

pub const PROMETHEUS_UID: &str = "analytics-prometheus";
pub const LOKI_UID: &str = "analytics-loki";

/// The daemon's own metrics (node_exporter's textfile collector).
pub const DAEMON_METRICS: &[&str] = &[
    "analytics_stack_last_apply_timestamp_seconds",
    "analytics_stack_last_apply_duration_seconds",
    "analytics_stack_last_apply_success",
    "analytics_stack_components",
    "analytics_stack_unit_memory_bytes",
    "analytics_stack_unit_memory_limit_bytes",
    "analytics_stack_unit_restarts",
];

fn panel(
    id: u32,
    title: &str,
    kind: &str,
    unit: &str,
    datasource: &str,
    exprs: &[(&str, &str)],
) -> Value {
    let ds = json!({ "type": if datasource == LOKI_UID { "loki" } else { "prometheus" }, "uid": datasource });
    let targets: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (expr, legend))| json!({ "refId": ((b'A' + i as u8) as char).to_string(), "datasource": ds, "expr": expr, "legendFormat": legend }))
        .collect();
    json!({
        "id": id, "title": title, "type": kind, "datasource": ds,
        // Two panels a row, in id order.
        "gridPos": { "h": 8, "w": 12, "x": (id - 1) % 2 * 12, "y": (id - 1) / 2 * 8 },
        "fieldConfig": { "defaults": { "unit": unit }, "overrides": [] },
        "options": {},
        "targets": targets,
    })
}

fn dashboard(uid: &str, title: &str, panels: Vec<Value>, templating: Value) -> Value {
    json!({
        "uid": uid, "title": title, "tags": ["analytics-stack"], "editable": false,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": { "from": "now-6h", "to": "now" },
        "templating": { "list": templating },
        "panels": panels,
    })
}

/// (file name, dashboard) for every dashboard, with every panel.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("host.json", host()),
        ("stack.json", stack_overview(true, true)),
        ("airflow.json", airflow()),
        ("logs.json", logs()),
    ]
}

/// The dashboards for a configuration: the logs dashboard only with Loki, the
/// Airflow dashboard only with Airflow and statsd_exporter (a dashboard whose data
/// source or metrics do not exist shows only errors), and the overview's PostgreSQL
/// and Superset panels only when their metrics reach Prometheus.
pub fn for_config(config: &crate::config::Config) -> Vec<(&'static str, Value)> {
    let statsd = config.statsd_exporter.enabled;
    let mut out = vec![
        ("host.json", host()),
        (
            "stack.json",
            stack_overview(
                config.postgres_exporter_on(),
                config.superset.enabled && statsd,
            ),
        ),
    ];
    if config.airflow.enabled && statsd {
        out.push(("airflow.json", airflow()));
    }
    if config.loki.enabled {
        out.push(("logs.json", logs()));
    }
    out
}

fn host() -> Value {
    let p = PROMETHEUS_UID;
    dashboard(
        "analytics-host",
        "Host (node_exporter)",
        vec![
            panel(1, "CPU busy", "timeseries", "percent", p, &[("100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{job=\"node\",instance=~\"$host\",mode=\"idle\"}[5m])))", "{{instance}}")]),
            panel(2, "Memory used", "timeseries", "bytes", p, &[("node_memory_MemTotal_bytes{job=\"node\",instance=~\"$host\"} - node_memory_MemAvailable_bytes{job=\"node\",instance=~\"$host\"}", "{{instance}} used"), ("node_memory_MemTotal_bytes{job=\"node\",instance=~\"$host\"}", "{{instance}} total")]),
            panel(3, "Load", "timeseries", "short", p, &[("node_load1{job=\"node\",instance=~\"$host\"}", "{{instance}} 1m"), ("node_load5{job=\"node\",instance=~\"$host\"}", "{{instance}} 5m")]),
            panel(4, "Disk space free", "timeseries", "bytes", p, &[("node_filesystem_avail_bytes{job=\"node\",instance=~\"$host\",fstype!~\"tmpfs|overlay|squashfs\"}", "{{instance}} {{mountpoint}}")]),
            panel(5, "Network traffic", "timeseries", "Bps", p, &[("rate(node_network_receive_bytes_total{job=\"node\",instance=~\"$host\"}[5m])", "{{instance}} {{device}} in"), ("rate(node_network_transmit_bytes_total{job=\"node\",instance=~\"$host\"}[5m])", "{{instance}} {{device}} out")]),
        ],
        // One host or several: the primary's and each worker host's node_exporter.
        json!([{
            "name": "host", "type": "query", "label": "host",
            "datasource": { "type": "prometheus", "uid": PROMETHEUS_UID },
            "query": { "query": "label_values(node_uname_info{job=\"node\"}, instance)", "refId": "host" },
            "definition": "label_values(node_uname_info{job=\"node\"}, instance)",
            "includeAll": true, "multi": true, "refresh": 1,
            "current": { "text": "All", "value": "$__all" }, "allValue": ".*",
        }]),
    )
}

/// The stack's overview; with PostgreSQL's and Superset's panels when their metrics
/// reach Prometheus.
fn stack_overview(postgres: bool, superset: bool) -> Value {
    let p = PROMETHEUS_UID;
    let mut panels = vec![
        panel(
            1,
            "Units active",
            "stat",
            "short",
            p,
            &[(
                "node_systemd_unit_state{job=\"node\",name=~\"analytics-.*\",state=\"active\"}",
                "{{name}}",
            )],
        ),
        panel(
            2,
            "Scrape targets up",
            "stat",
            "short",
            p,
            &[("up", "{{job}}")],
        ),
        panel(
            3,
            "Restarts per unit",
            "timeseries",
            "short",
            p,
            &[("analytics_stack_unit_restarts", "{{unit}}")],
        ),
        panel(
            4,
            "Memory per unit",
            "timeseries",
            "bytes",
            p,
            &[("analytics_stack_unit_memory_bytes", "{{unit}}")],
        ),
        panel(
            5,
            "Last apply succeeded",
            "stat",
            "short",
            p,
            &[("analytics_stack_last_apply_success", "succeeded")],
        ),
        panel(
            6,
            "Last apply duration",
            "stat",
            "s",
            p,
            &[("analytics_stack_last_apply_duration_seconds", "seconds")],
        ),
    ];
    if postgres {
        panels.push(panel(
            next_id(&panels),
            "PostgreSQL connections",
            "timeseries",
            "short",
            p,
            &[
                ("sum by (state) (pg_stat_activity_count)", "{{state}}"),
                ("max(pg_settings_max_connections)", "max_connections"),
            ],
        ));
    }
    if superset {
        let first = next_id(&panels);
        // gunicorn's and Superset's StatsD (src/components/superset_metrics.rs):
        // timers are summaries in seconds, shown by their median.
        panels.extend([
            panel(
                first,
                "Superset: responses by status",
                "timeseries",
                "reqps",
                p,
                &[(
                    "sum by (status) (rate(superset_http_responses[5m]))",
                    "{{status}}",
                )],
            ),
            panel(
                first + 1,
                "Superset: request duration (median)",
                "timeseries",
                "s",
                p,
                &[("superset_http_request_duration{quantile=\"0.5\"}", "median")],
            ),
            panel(
                first + 2,
                "Superset: API endpoint duration (median)",
                "timeseries",
                "s",
                p,
                &[(
                    "superset_api_duration{quantile=\"0.5\"}",
                    "{{api}}.{{endpoint}}",
                )],
            ),
            panel(
                first + 3,
                "Superset: SQL Lab query steps (median)",
                "timeseries",
                "s",
                p,
                &[(
                    "superset_sqllab_query_duration{quantile=\"0.5\"}",
                    "{{step}}",
                )],
            ),
        ]);
    }
    dashboard(
        "analytics-stack-overview",
        "Stack overview",
        panels,
        json!([]),
    )
}

fn next_id(panels: &[Value]) -> u32 {
    panels.len() as u32 + 1
}

fn airflow() -> Value {
    let p = PROMETHEUS_UID;
    dashboard(
        "analytics-airflow",
        "Airflow",
        vec![
            // statsd_exporter turns StatsD's millisecond timers into summaries in
            // seconds (0.5/0.9/0.99 quantiles): one series per DAG/task, the median,
            // and none of the untagged duplicates Airflow 3 also sends.
            panel(
                1,
                "Task duration (median)",
                "timeseries",
                "s",
                p,
                &[(
                    "airflow_task_duration{quantile=\"0.5\",dag_id!=\"\",task_id!=\"\"}",
                    "{{dag_id}}.{{task_id}}",
                )],
            ),
            panel(
                2,
                "DAG run duration (median)",
                "timeseries",
                "s",
                p,
                &[(
                    "airflow_dagrun_duration{quantile=\"0.5\",dag_id!=\"\"}",
                    "{{dag_id}}",
                )],
            ),
            panel(
                3,
                "Task instances finished",
                "timeseries",
                "short",
                p,
                &[(
                    "sum by (state) (increase(airflow_ti_finish{state!=\"\"}[5m]))",
                    "{{state}}",
                )],
            ),
            panel(
                4,
                "Executor",
                "timeseries",
                "short",
                p,
                &[
                    ("airflow_executor_running_tasks", "running"),
                    ("airflow_executor_queued_tasks", "queued"),
                    ("airflow_executor_open_slots", "open"),
                ],
            ),
        ],
        json!([]),
    )
}

fn logs() -> Value {
    dashboard(
        "analytics-logs",
        "Logs per unit",
        vec![
            panel(
                1,
                "Lines per unit",
                "timeseries",
                "short",
                LOKI_UID,
                &[(
                    "sum by (host, unit) (count_over_time({host=~\"$host\", unit=~\"$unit\"}[5m]))",
                    "{{host}} {{unit}}",
                )],
            ),
            json!({
                "id": 2, "title": "Journal", "type": "logs",
                "datasource": { "type": "loki", "uid": LOKI_UID },
                "gridPos": { "h": 16, "w": 24, "x": 0, "y": 8 },
                "options": { "showTime": true, "sortOrder": "Descending" },
                "targets": [{ "refId": "A", "datasource": { "type": "loki", "uid": LOKI_UID }, "expr": "{host=~\"$host\", unit=~\"$unit\"}" }],
            }),
        ],
        json!([{
            "name": "host", "type": "query", "label": "host",
            "datasource": { "type": "loki", "uid": LOKI_UID },
            "query": "label_values(host)", "includeAll": true, "multi": true, "refresh": 1,
            "current": { "text": "All", "value": "$__all" }, "allValue": ".+",
        }, {
            "name": "unit", "type": "query", "label": "unit",
            "datasource": { "type": "loki", "uid": LOKI_UID },
            "query": "label_values(unit)", "includeAll": true, "multi": true,
            // Re-read on dashboard load: units appear as components are turned on.
            "refresh": 1,
            "current": { "text": "All", "value": "$__all" }, "allValue": "analytics-.*",
        }]),
    )
}

/// Metric names a PromQL expression reads (functions, keywords, labels and
/// numbers removed).
pub fn metric_names(expr: &str) -> Vec<String> {
    const NOT_METRICS: &[&str] = &[
        "rate",
        "irate",
        "increase",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "by",
        "without",
        "on",
        "ignoring",
        "bool",
        "and",
        "or",
        "unless",
        "histogram_quantile",
        "count_over_time",
        "time",
    ];
    let mut cleaned = String::new();
    let mut depth = 0;
    for ch in expr.chars() {
        match ch {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => cleaned.push(ch),
            _ => {}
        }
    }
    // Grouping labels: `by (state)`.
    let mut names = Vec::new();
    let mut after_grouping = false;
    for token in cleaned.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if token.is_empty() {
            continue;
        }
        if after_grouping {
            after_grouping = false;
            continue;
        }
        if token == "by" || token == "without" {
            after_grouping = true;
            continue;
        }
        if NOT_METRICS.contains(&token) || token.chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            continue;
        }
        names.push(token.to_string());
    }
    names
}

/// Every Prometheus expression of every dashboard.
pub fn prometheus_exprs() -> Vec<String> {
    let mut out = Vec::new();
    for (_, d) in all() {
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if t["datasource"]["uid"] == PROMETHEUS_UID {
                    out.push(t["expr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    out
}
