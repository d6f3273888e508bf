//! The relabel rules of the Promtail config the daemon renders, applied as Promtail
//! applies them (tests/common/relabel.rs) to sample journal entries: stack units'
//! lines and PID 1's lines about them are shipped under the unit, nothing else.
//! (tests/e2e_metrics.rs replays a real systemd's journal through the same rules.)

mod common;

use common::relabel;
use std::collections::BTreeMap;

fn entry(fields: &[(&str, &str)]) -> BTreeMap<String, String> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_relabel_rules_keep_stack_lines_and_pid1s_lines_about_stack_units() {
    let rules = relabel::promtail_rules(&relabel::rendered_promtail());
    let unit_of =
        |fields: &[(&str, &str)]| relabel::apply(&rules, entry(fields)).map(|l| l["unit"].clone());
    // A stack unit's own line, with its level.
    let own = relabel::apply(
        &rules,
        entry(&[
            ("__journal__systemd_unit", "analytics-superset-web.service"),
            ("__journal_priority_keyword", "err"),
        ]),
    )
    .unwrap();
    assert_eq!(own["unit"], "analytics-superset-web.service");
    assert_eq!(own["level"], "err");
    // PID 1's "Main process exited" about a stack unit: kept, under that unit.
    assert_eq!(
        unit_of(&[
            ("__journal__systemd_unit", "init.scope"),
            ("__journal_unit", "analytics-superset-web.service"),
        ])
        .as_deref(),
        Some("analytics-superset-web.service")
    );
    // Everything else is dropped: other units, PID 1 about them, PID 1 about nothing.
    for other in [
        &[("__journal__systemd_unit", "ssh.service")][..],
        &[
            ("__journal__systemd_unit", "init.scope"),
            ("__journal_unit", "cron.service"),
        ][..],
        &[("__journal__systemd_unit", "init.scope")][..],
        &[("__journal_unit", "analytics-redis-broker.service")][..],
    ] {
        assert_eq!(unit_of(other), None, "{other:?}");
    }
}
