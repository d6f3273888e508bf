//! Planning an uninstall: every unit, user, directory and file the stack created goes;
//! the distribution's units it masked come back as they were; data under
//! /var/lib/analytics-stack stays unless purged. Pure, like the apply planner, so a
//! second uninstall plans nothing.

use super::{Plan, Step};
use crate::facts::HostFacts;
use crate::model::paths;
use crate::state::RecordedState;
use std::path::PathBuf;

/// Directories the stack creates and an uninstall removes whole. The user's own
/// configuration (stack.toml, stack.d/) is the package's to keep or purge.
pub fn generated_trees() -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = [
        "postgres",
        "pgbackrest",
        "redis",
        "nginx",
        "prometheus",
        "alertmanager",
        "statsd-exporter",
        "loki",
        "alloy",
        "promtail",
        "grafana",
        "airflow",
        "superset",
        "node-exporter",
        "dag-bundle",
    ]
    .iter()
    .map(|c| PathBuf::from(paths::ETC).join(c))
    .collect();
    trees.push(paths::OPT.into());
    trees.push("/var/cache/analytics-stack".into());
    trees
}

/// What an uninstall keeps, for the report.
pub fn kept(purge_data: bool) -> Vec<String> {
    let mut kept = vec![
        format!("{}/stack.toml and stack.d/ (your configuration; `apt purge` removes them)", paths::ETC),
        "the Debian packages the stack installed (postgresql, redis-server, nginx, prometheus, …): `apt autoremove` is yours to run".to_string(),
        "the backups in [backup] directory (/var/backups/analytics-stack by default): yours to keep or remove".to_string(),
        "pgBackRest's repository ([postgres.archiving] repository, /var/backups/analytics-stack-pgbackrest by default): the archived WAL and base backups, yours to keep or remove".to_string(),
    ];
    if !purge_data {
        kept.insert(
            0,
            format!(
                "{} (databases, metrics, logs and secrets; remove with --purge-data)",
                paths::STATE
            ),
        );
        kept.insert(
            1,
            "the stack's system users (analytics-*), which own that data; --purge-data removes them too".to_string(),
        );
    }
    kept
}

/// The units every known component may have, and the target.
pub fn all_stack_units() -> Vec<String> {
    let mut units: Vec<String> = crate::components::KNOWN
        .iter()
        .flat_map(|(name, _)| crate::components::unit_names(name))
        .collect();
    units.push(paths::TARGET.into());
    units
}

pub fn plan_uninstall(facts: &HostFacts, state: &RecordedState, purge_data: bool) -> Plan {
    let mut steps = Vec::new();
    super::stop_and_disable(&all_stack_units(), facts, &mut steps);
    let mut removed_unit = false;
    for f in &state.files {
        let path = PathBuf::from(f);
        if facts.files.contains_key(&path) {
            removed_unit |= path.starts_with(paths::UNIT_DIR);
            steps.push(Step::RemoveFile { path });
        }
    }
    if removed_unit {
        steps.push(Step::ReloadSystemd);
    }
    for (unit, before) in &state.distro_units {
        steps.push(Step::RestoreDistroUnit {
            unit: unit.clone(),
            before: before.clone(),
        });
    }
    // The service users own the data: while it stays, so do they (as Debian's
    // packages keep theirs), so that no other account can be given their uids and
    // with them the warehouse.
    if purge_data {
        for user in &state.users {
            if facts.users.contains(user) {
                steps.push(Step::DeleteUser { user: user.clone() });
            }
        }
    }
    for tree in generated_trees() {
        if facts.dirs.contains_key(&tree) {
            steps.push(Step::RemoveTree { path: tree });
        }
    }
    if purge_data && facts.dirs.contains_key(&PathBuf::from(paths::STATE)) {
        steps.push(Step::RemoveTree {
            path: paths::STATE.into(),
        });
    } else if facts.existing.contains(&PathBuf::from(paths::STATE_FILE)) {
        steps.push(Step::ForgetState);
    }
    Plan { steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{FileFact, Ownership, UnitFact};
    use crate::state::DistroUnitBefore;

    fn installed() -> (HostFacts, RecordedState) {
        let mut facts = HostFacts::default();
        let mut state = RecordedState::default();
        let own = Ownership {
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
        };
        for f in [
            "/etc/systemd/system/analytics-postgres.service",
            "/etc/analytics-stack/postgres/postgresql.conf",
        ] {
            state.files.insert(f.into());
            facts.files.insert(
                f.into(),
                FileFact {
                    sha256: String::new(),
                    ownership: own.clone(),
                },
            );
        }
        facts.units.insert(
            "analytics-postgres.service".into(),
            UnitFact {
                active_state: "active".into(),
                ..Default::default()
            },
        );
        state.distro_units.insert(
            "postgresql.service".into(),
            DistroUnitBefore {
                unit_file_state: "enabled".into(),
                was_active: false,
            },
        );
        state.users.insert("analytics-postgres".into());
        facts.users.insert("analytics-postgres".into());
        for d in [
            "/etc/analytics-stack/postgres",
            "/opt/analytics-stack",
            paths::STATE,
        ] {
            facts.dirs.insert(d.into(), own.clone());
        }
        facts.existing.insert(paths::STATE_FILE.into());
        (facts, state)
    }

    #[test]
    fn everything_the_stack_made_goes_and_data_stays_unless_purged() {
        let (facts, state) = installed();
        let steps: Vec<String> = plan_uninstall(&facts, &state, false)
            .steps
            .iter()
            .map(|s| s.describe())
            .collect();
        assert_eq!(
            steps,
            [
                "stop analytics-postgres.service",
                "disable analytics-postgres.service",
                "remove /etc/analytics-stack/postgres/postgresql.conf",
                "remove /etc/systemd/system/analytics-postgres.service",
                "reload systemd",
                "restore the distribution's postgresql.service (enabled)",
                "remove /etc/analytics-stack/postgres and everything in it",
                "remove /opt/analytics-stack and everything in it",
                "remove /var/lib/analytics-stack/state.json",
            ]
        );
        let purge: Vec<String> = plan_uninstall(&facts, &state, true)
            .steps
            .iter()
            .map(|s| s.describe())
            .collect();
        assert_eq!(
            purge.last().unwrap(),
            "remove /var/lib/analytics-stack and everything in it"
        );
        assert!(purge.contains(&"delete system user analytics-postgres".to_string()));
        assert!(kept(false)[0].starts_with("/var/lib/analytics-stack"));
        assert!(!kept(true).iter().any(|k| k.starts_with("/var/lib")));
    }

    #[test]
    fn a_host_without_the_stack_plans_nothing() {
        // What an uninstall leaves: nothing of the stack and no state. (That a second
        // uninstall finds exactly this is checked end to end in e2e_data_tier.)
        assert!(plan_uninstall(&HostFacts::default(), &RecordedState::default(), true).is_empty());
    }
}
