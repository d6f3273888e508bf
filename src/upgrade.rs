//! Health-gated upgrades of the applications. A new lock file is a new venv built
//! beside the old one (`/opt/analytics-stack/APP/VERSION-LOCKHASH`); apply backs up
//! first, switches `current`, lets the new version migrate and start, and waits for
//! health. When it does not come up healthy, [`Stack::roll_back`] switches `current`
//! back, restores the application's own database from the pre-upgrade backup and
//! starts the old version. `analytics-stack rollback APP` does the same by hand while
//! the previous version is kept.

use crate::backup::archive::unpack_verified;
use crate::backup::{Target, STAGING};
use crate::model::{paths, ComponentSpec};
use crate::plan::{Plan, Step};
use crate::stack::{Stack, StackError};
use crate::state::{PreviousVersion, RecordedState};
use serde::Serialize;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An application whose venv a plan replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    pub component: String,
    pub from: String,
    pub to: String,
}

/// The applications `plan` upgrades: a venv build replacing a complete one.
pub fn upgrades(plan: &Plan, facts: &crate::facts::HostFacts) -> Vec<Upgrade> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::BuildVenv { venv } => facts.venvs.get(&venv.name).map(|from| Upgrade {
                component: venv.name.clone(),
                from: from.clone(),
                to: venv.id.clone(),
            }),
            _ => None,
        })
        .filter(|u| u.from != u.to)
        .collect()
}

/// The databases an application migrates (its metadata; never the warehouse).
pub fn databases_of(component: &str) -> &'static [&'static str] {
    match component {
        "airflow" => &["airflow"],
        "superset" => &["superset"],
        _ => &[],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub component: String,
    pub from: String,
    pub to: String,
    pub databases_restored: Vec<String>,
    pub backup: Option<String>,
    pub seconds: f64,
}

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

impl Stack {
    /// Puts `component` back on its venv `to`: its units stopped, `current` switched
    /// back, its databases restored from `backup` (the pre-upgrade one), its units
    /// started again (its one-time setup first) and healthy.
    pub async fn roll_back(
        &self,
        spec: &ComponentSpec,
        from: &str,
        to: &str,
        backup: Option<&Path>,
        timeout: Duration,
    ) -> Result<RollbackReport, StackError> {
        let started = std::time::Instant::now();
        let root = PathBuf::from(paths::OPT).join(spec.name);
        let marker = root.join(to).join(crate::model::VENV_COMPLETE);
        if !self.fs.exists(&marker) {
            return Err(StackError::NotFound(format!(
                "{} {to} is no longer in {}: nothing to roll back to",
                spec.name,
                root.display()
            )));
        }
        for unit in spec.units.iter().rev() {
            self.systemd
                .run_job("stop", &unit.name, Duration::from_secs(300))
                .await?;
        }
        crate::artifact::switch_current(&self.fs.path(&root), to).map_err(failed)?;
        let databases: Vec<String> = databases_of(spec.name)
            .iter()
            .map(|d| d.to_string())
            .collect();
        let mut restored = Vec::new();
        if let (Some(file), false) = (backup, databases.is_empty()) {
            restored = self.restore_databases_from(file, &databases).await?;
        }
        for unit in spec.units.iter().filter(|u| !u.triggered) {
            self.systemd
                .run_job("restart", &unit.name, Duration::from_secs(900))
                .await
                .map_err(|e| failed(format!("{}: {e}", unit.name)))?;
        }
        self.wait_healthy(std::slice::from_ref(spec), timeout)
            .await?;
        tracing::info!("{} rolled back from {from} to {to}", spec.name);
        Ok(RollbackReport {
            component: spec.name.into(),
            from: from.into(),
            to: to.into(),
            databases_restored: restored,
            backup: backup.map(|b| b.display().to_string()),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Restores `databases` (and only those) from a backup file of the stack's.
    async fn restore_databases_from(
        &self,
        file: &Path,
        databases: &[String],
    ) -> Result<Vec<String>, StackError> {
        let staging = self.fresh_private_dir(STAGING)?;
        let result = async {
            let input = std::fs::File::open(self.fs.path(file))
                .map_err(|e| failed(format!("{}: {e}", file.display())))?;
            let name = file.display().to_string();
            let unpacked = tokio::task::block_in_place(|| {
                unpack_verified(BufReader::new(input), &staging, &name, &|_| {})
            })?;
            let port = self.config()?.postgres.port.get();
            let mut restored = Vec::new();
            for db in databases {
                let Some((_, _, staged)) = unpacked.staged(&Target::Database(db.clone())) else {
                    continue;
                };
                self.replace_database(db, staged, port).await?;
                restored.push(db.clone());
            }
            Ok(restored)
        }
        .await;
        let _staging_gone = std::fs::remove_dir_all(&staging);
        result
    }

    /// By hand: `component` back to the version it was upgraded from, while that
    /// version is kept; its database from the backup taken before the upgrade.
    pub async fn rollback(&self, component: &str) -> Result<RollbackReport, StackError> {
        let (config, desired) = self.desired()?;
        let spec = desired
            .iter()
            .find(|s| s.name == component)
            .ok_or_else(|| {
                StackError::NotFound(format!(
                    "{component} is not an enabled application of the stack"
                ))
            })?;
        let mut state = crate::exec::load_state(&self.fs);
        let Some(previous) = state.previous_versions.get(component).cloned() else {
            return Err(StackError::NotFound(format!(
                "{component} keeps no previous version: it has not been upgraded since it was installed (or was rolled back already)"
            )));
        };
        let current = std::fs::read_link(
            self.fs
                .path(&PathBuf::from(paths::OPT).join(component).join("current")),
        )
        .map(|p| p.display().to_string())
        .unwrap_or_default();
        let report = self
            .roll_back(
                spec,
                &current,
                &previous.id,
                previous.backup.as_deref().map(Path::new),
                Duration::from_secs(config.stack.health_timeout_secs.into()),
            )
            .await?;
        state.previous_versions.remove(component);
        for unit in &spec.units {
            state.pending_restarts.remove(&unit.name);
        }
        crate::exec::save_state(&self.fs, &state).map_err(failed)?;
        Ok(report)
    }

    /// After an apply whose upgrades did not come up healthy (`error`): every
    /// application it upgraded is put back, whatever else happened, and the error
    /// says both what failed (with the new version's journal lines) and what was
    /// done about it.
    pub(crate) async fn roll_back_upgrades(
        &self,
        desired: &[ComponentSpec],
        upgrades: &[Upgrade],
        backup: Option<&str>,
        timeout: Duration,
        error: StackError,
        state: &mut RecordedState,
    ) -> StackError {
        let mut said = format!("{error}\n");
        for u in upgrades {
            let Some(spec) = desired.iter().find(|s| s.name == u.component) else {
                continue;
            };
            let rolled = self
                .roll_back(spec, &u.to, &u.from, backup.map(Path::new), timeout)
                .await;
            if rolled.is_ok() {
                // Its units were all restarted by the rollback.
                for unit in &spec.units {
                    state.pending_restarts.remove(&unit.name);
                }
            }
            match rolled {
                Ok(r) => said.push_str(&format!(
                    "\n{} {} did not become healthy: rolled back to {}{} ({:.0} s)",
                    u.component,
                    u.to,
                    u.from,
                    if r.databases_restored.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", database {} restored from {}",
                            r.databases_restored.join(", "),
                            backup.unwrap_or("")
                        )
                    },
                    r.seconds
                )),
                Err(e) => said.push_str(&format!(
                    "\n{} {} did not become healthy, and rolling back to {} failed too: {e}",
                    u.component, u.to, u.from
                )),
            }
        }
        // The next attempt is a new upgrade: it takes a new backup first.
        state.upgrades_in_progress.clear();
        state.pre_upgrade_backups.clear();
        if let Err(e) = crate::exec::save_state(&self.fs, state) {
            said.push_str(&format!("\ncannot record state: {e}"));
        }
        StackError::Failed(said.trim_end().to_string())
    }

    /// After a healthy apply: the clusters a major upgrade left behind go.
    pub fn retire_upgraded_clusters(
        &self,
        state: &mut crate::state::RecordedState,
    ) -> Result<(), StackError> {
        if state.upgraded_postgres.is_empty() && state.pre_upgrade_backups.is_empty() {
            return Ok(());
        }
        // The upgrade is done; its backup file stays in the backup directory.
        state.pre_upgrade_backups.clear();
        for (dir, to) in std::mem::take(&mut state.upgraded_postgres) {
            tracing::info!("PostgreSQL {to} is healthy: removing the old cluster {dir}");
            match std::fs::remove_dir_all(self.fs.path(Path::new(&dir))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    state.upgraded_postgres.insert(dir.clone(), to);
                    crate::exec::save_state(&self.fs, state).map_err(failed)?;
                    return Err(failed(format!("{dir}: {e}")));
                }
                _ => {}
            }
        }
        crate::exec::save_state(&self.fs, state).map_err(failed)
    }

    /// After a healthy apply: each upgraded application keeps its previous version
    /// (and the backup taken before) for `rollback`.
    pub fn record_upgrades(
        &self,
        state: &mut RecordedState,
        upgrades: &[Upgrade],
        backup: Option<&str>,
    ) -> Result<(), StackError> {
        if upgrades.is_empty() {
            return Ok(());
        }
        for u in upgrades {
            state.previous_versions.insert(
                u.component.clone(),
                PreviousVersion {
                    id: u.from.clone(),
                    backup: backup.map(str::to_string),
                },
            );
        }
        crate::exec::save_state(&self.fs, state).map_err(failed)
    }
}
