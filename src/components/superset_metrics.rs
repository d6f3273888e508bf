//! Superset's StatsD metrics as data, for statsd_exporter's mapping: gunicorn's own
//! (`--statsd-host`, prefix `superset`: requests, statuses, durations, workers) and
//! Superset's `STATS_LOGGER` (its REST API calls and durations, SQL Lab's query
//! steps, Celery tasks, events), from the web process and the Celery worker alike.
//! Names read from gunicorn 27's `instrument/statsd.py` and Superset 6.1.0's calls to
//! `stats_logger` (`views/base_api.py`, `sql/execution/celery_task.py`,
//! `utils/log.py`, `tasks/scheduler.py`, …); the list of names the tests map is
//! `tests/data/superset-statsd-names.txt`.
//!
//! Timers arrive in milliseconds (gunicorn's request durations; Superset's
//! `now_as_float()` is milliseconds since the epoch) and statsd_exporter turns them
//! into seconds, so the families of timers end in `_duration`.

/// The StatsD prefix both send under: gunicorn's `--statsd-prefix` and
/// `StatsdStatsLogger(prefix=…)`.
pub const PREFIX: &str = "superset";

/// StatsD types a rule is limited to (statsd_exporter's `match_metric_type`): a
/// family must keep one type, and Superset sends counters, timers and a gauge under
/// names of the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Observer,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Observer => "observer",
        }
    }
}

/// One rule: a regular expression over the name after `superset.`, the type it is
/// limited to, the family, and its labels (`$N` are the captures).
pub struct SupersetRule {
    pub pattern: &'static str,
    pub metric_type: MetricType,
    pub family: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

/// In the order statsd_exporter tries them: specific shapes before general ones.
pub const RULES: &[SupersetRule] = &[
    // gunicorn (web process).
    SupersetRule {
        pattern: "gunicorn\\.request\\.duration",
        metric_type: MetricType::Observer,
        family: "superset_http_request_duration",
        labels: &[],
    },
    SupersetRule {
        pattern: "gunicorn\\.requests",
        metric_type: MetricType::Counter,
        family: "superset_http_requests",
        labels: &[],
    },
    SupersetRule {
        pattern: "gunicorn\\.request\\.status\\.([0-9]{3})",
        metric_type: MetricType::Counter,
        family: "superset_http_responses",
        labels: &[("status", "$1")],
    },
    SupersetRule {
        pattern: "gunicorn\\.workers",
        metric_type: MetricType::Gauge,
        family: "superset_gunicorn_workers",
        labels: &[],
    },
    SupersetRule {
        pattern: "gunicorn\\.backlog",
        metric_type: MetricType::Observer,
        family: "superset_gunicorn_backlog",
        labels: &[],
    },
    SupersetRule {
        pattern: "gunicorn\\.log\\.(critical|error|warning|exception)",
        metric_type: MetricType::Counter,
        family: "superset_gunicorn_log_messages",
        labels: &[("level", "$1")],
    },
    // SQL Lab: each step of a query (pending, executing, results backend).
    SupersetRule {
        pattern: "sqllab\\.query\\.([a-z_]+)",
        metric_type: MetricType::Observer,
        family: "superset_sqllab_query_duration",
        labels: &[("step", "$1")],
    },
    SupersetRule {
        pattern: "sqllab\\.results_backend\\.([a-z0-9_]+)",
        metric_type: MetricType::Counter,
        family: "superset_sqllab_results_backend_errors",
        labels: &[("error", "$1")],
    },
    // The global task framework and the reports' Celery tasks.
    SupersetRule {
        pattern: "gtf\\.task\\.([a-z_]+)",
        metric_type: MetricType::Counter,
        family: "superset_task_events",
        labels: &[("event", "$1")],
    },
    SupersetRule {
        pattern: "reports\\.([a-z]+)\\.send\\.(ok|warning|error)",
        metric_type: MetricType::Gauge,
        family: "superset_report_notifications",
        labels: &[("channel", "$1"), ("result", "$2")],
    },
    SupersetRule {
        pattern: "reports\\.([a-z_]+)",
        metric_type: MetricType::Counter,
        family: "superset_report_tasks",
        labels: &[("task", "$1")],
    },
    // REST API calls: `<ApiClass>.<endpoint>.time` (a timer) and
    // `<ApiClass>.<endpoint>.<result>` (success, warning, error, init, …).
    SupersetRule {
        pattern: "([A-Za-z0-9_]+)\\.([A-Za-z0-9_]+)\\.time",
        metric_type: MetricType::Observer,
        family: "superset_api_duration",
        labels: &[("api", "$1"), ("endpoint", "$2")],
    },
    SupersetRule {
        pattern: "([A-Za-z0-9_]+)\\.([A-Za-z0-9_]+)\\.([a-z_]+)",
        metric_type: MetricType::Counter,
        family: "superset_api_calls",
        labels: &[("api", "$1"), ("endpoint", "$2"), ("result", "$3")],
    },
    // Logged actions (`<Class>.<action>`, from the event logger).
    SupersetRule {
        pattern: "([A-Za-z0-9_]+)\\.([A-Za-z0-9_]+)",
        metric_type: MetricType::Counter,
        family: "superset_actions",
        labels: &[("class", "$1"), ("action", "$2")],
    },
    SupersetRule {
        pattern: "invalidated_cache",
        metric_type: MetricType::Gauge,
        family: "superset_cache_keys_invalidated",
        labels: &[],
    },
    // One-word events: health checks, cache hits, prune tasks, errors.
    SupersetRule {
        pattern: "([a-z0-9_]+)",
        metric_type: MetricType::Counter,
        family: "superset_events",
        labels: &[("event", "$1")],
    },
];

/// Every family the rules produce (for dashboard checks).
pub fn families() -> Vec<&'static str> {
    RULES.iter().map(|r| r.family).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_distinct_per_type_and_named_like_their_unit() {
        let mut seen = std::collections::BTreeMap::new();
        for r in RULES {
            if let Some(t) = seen.insert(r.family, r.metric_type) {
                assert_eq!(t, r.metric_type, "{} has one type", r.family);
            }
            assert!(r.family.starts_with("superset_"), "{}", r.family);
            assert_eq!(
                r.metric_type == MetricType::Observer && r.family != "superset_gunicorn_backlog",
                r.family.ends_with("_duration"),
                "timers, and only timers, are durations: {}",
                r.family
            );
        }
    }
}
