//! Alert rules Prometheus evaluates (shown on its /alerts page and in Grafana's
//! alert list): Prometheus rules rather than Grafana-managed alerts, because
//! Prometheus is on whenever there are metrics to alert on, its rules are files a
//! reader can see, and Debian's `promtool` checks and unit-tests them
//! (`tests/data/alerts.test.yml`, run in tests/e2e_metrics.rs).

/// One alerting rule.
pub struct AlertRule {
    pub name: &'static str,
    pub expr: &'static str,
    /// How long the condition must hold before the alert fires.
    pub for_: &'static str,
    pub severity: &'static str,
    pub summary: &'static str,
}

pub const RULES: &[AlertRule] = &[
    AlertRule {
        name: "AnalyticsUnitFailed",
        expr: "node_systemd_unit_state{name=~\"analytics-.*\",state=\"failed\"} == 1",
        for_: "1m",
        severity: "critical",
        summary: "{{ $labels.name }} has failed",
    },
    AlertRule {
        name: "AnalyticsUnitRestarting",
        expr: "increase(analytics_stack_unit_restarts[15m]) >= 3",
        for_: "0m",
        severity: "warning",
        summary: "{{ $labels.unit }} restarted 3 or more times in 15 minutes",
    },
    AlertRule {
        name: "AnalyticsDiskFilling",
        expr: "1 - node_filesystem_avail_bytes{fstype!~\"tmpfs|overlay|squashfs\"} / node_filesystem_size_bytes{fstype!~\"tmpfs|overlay|squashfs\"} > 0.85",
        for_: "10m",
        severity: "warning",
        summary: "{{ $labels.mountpoint }} is more than 85 % full",
    },
    AlertRule {
        name: "AnalyticsUnitMemoryNearLimit",
        expr: "analytics_stack_unit_memory_bytes / on(component, unit) analytics_stack_unit_memory_limit_bytes > 0.9",
        for_: "5m",
        severity: "warning",
        summary: "{{ $labels.unit }} uses more than 90 % of its memory limit",
    },
    AlertRule {
        name: "AnalyticsPostgresConnectionsNearLimit",
        // Connections of every database and state (postgres_exporter's
        // pg_stat_activity), against max_connections less the superuser's reserve.
        expr: "sum by (instance) (pg_stat_activity_count) / on(instance) (max by (instance) (pg_settings_max_connections) - max by (instance) (pg_settings_superuser_reserved_connections)) > 0.8",
        for_: "5m",
        severity: "warning",
        summary: "PostgreSQL uses more than 80 % of the connections it allows",
    },
    AlertRule {
        name: "AnalyticsScrapeTargetDown",
        expr: "up == 0",
        for_: "5m",
        severity: "warning",
        summary: "Prometheus cannot scrape {{ $labels.job }}",
    },
    AlertRule {
        name: "AnalyticsDagRunFailed",
        expr: "increase(airflow_dagrun_failed_count[1h]) > 0",
        for_: "0m",
        severity: "warning",
        summary: "a run of DAG {{ $labels.dag_id }} failed in the last hour",
    },
    AlertRule {
        name: "AnalyticsLastApplyFailed",
        expr: "analytics_stack_last_apply_success == 0",
        for_: "0m",
        severity: "warning",
        summary: "the last analytics-stack apply failed",
    },
    AlertRule {
        name: "AnalyticsCertificateExpiring",
        // The door's own certificate is renewed by an apply 30 days before its end;
        // 14 days left means no apply renewed it, or it is the operator's.
        expr: "analytics_stack_certificate_not_after_seconds - time() < 14 * 86400",
        for_: "1h",
        severity: "warning",
        summary: "the stack's {{ $labels.certificate }} certificate on {{ $labels.instance }} ends in less than 14 days",
    },
    AlertRule {
        name: "AnalyticsBackupNotRun",
        // The last successful backup (or, before the first, the time backups were
        // scheduled) is older than one and a half intervals of the schedule and an
        // hour (the timer's randomized delay, a slow backup).
        expr: "time() - (analytics_stack_backup_last_success_timestamp_seconds or analytics_stack_backup_scheduled_since_timestamp_seconds) > 1.5 * analytics_stack_backup_interval_seconds + 3600",
        for_: "0m",
        severity: "warning",
        summary: "no backup has succeeded for longer than its schedule allows",
    },
    AlertRule {
        name: "AnalyticsWalArchivingFailing",
        // PostgreSQL's last attempt to archive a segment failed (it retries every
        // minute, keeping the segment): what is written is not in the repository.
        expr: "analytics_stack_wal_last_failed_timestamp_seconds > analytics_stack_wal_last_archived_timestamp_seconds",
        for_: "5m",
        severity: "critical",
        summary: "PostgreSQL on {{ $labels.instance }} cannot archive its WAL into pgBackRest's repository: a lost disk would lose what was written since",
    },
    AlertRule {
        name: "AnalyticsWalArchivingBehind",
        // Segments complete but not archived: archiving is slower than writing.
        expr: "analytics_stack_wal_segments_waiting > 2",
        for_: "10m",
        severity: "warning",
        summary: "{{ $value }} WAL segments on {{ $labels.instance }} wait to be archived",
    },
    AlertRule {
        name: "AnalyticsBaseBackupTooOld",
        // Each backup takes a base backup; the newest is older than the schedule
        // allows (as for the backup file, an interval and a half and an hour).
        expr: "time() - analytics_stack_base_backup_newest_timestamp_seconds > 1.5 * analytics_stack_backup_interval_seconds + 3600",
        for_: "0m",
        severity: "warning",
        summary: "the newest base backup in pgBackRest's repository on {{ $labels.instance }} is older than the backup schedule allows",
    },
];

/// A YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The rules file (`rule_files` of prometheus.yml).
pub fn render() -> String {
    let mut y = String::from(
        "# Generated by analytics-stackd; edit the stack config instead.\ngroups:\n  - name: analytics-stack\n    rules:\n",
    );
    for r in RULES {
        y.push_str(&format!(
            "      - alert: {}\n        expr: {}\n        for: {}\n        labels:\n          severity: {}\n        annotations:\n          summary: {}\n",
            r.name,
            quoted(r.expr),
            r.for_,
            r.severity,
            quoted(r.summary)
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_rendered_with_its_labels_and_annotations() {
        let y = render();
        for r in RULES {
            assert!(
                y.contains(&format!("      - alert: {}\n", r.name)),
                "{}",
                r.name
            );
            assert!(y.contains(&format!("        for: {}\n", r.for_)));
        }
        assert!(y.contains("expr: \"node_systemd_unit_state{name=~\\\"analytics-.*\\\",state=\\\"failed\\\"} == 1\""), "{y}");
        if std::env::var_os("ANALYTICS_STACK_PRINT_ALERTS").is_some() {
            print!("{y}");
        }
    }
}
