//! Health-gated upgrades. A component's version changes three ways: a new lock file
//! is a new venv built beside the old one (`/opt/analytics-stack/APP/VERSION-LOCKHASH`),
//! a new archive pin unpacks beside the old one (`/opt/analytics-stack/NAME/VERSION`),
//! and apt upgrades a Debian package (the stack keeps a copy of each version's `.deb`
//! it saw healthy). Apply backs up first, switches to the new version, lets it
//! migrate and start, and waits for health. When it does not come up healthy,
//! [`Stack::roll_back`] puts the old version back (`current` switched back, or the
//! kept `.deb` reinstalled), restores what the new version migrated from the
//! pre-upgrade backup and starts the old version. `analytics-stack rollback NAME`
//! does the same by hand while the previous version is kept.

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

/// Copies of the Debian packages the stack saw healthy, for rollbacks.
pub const KEPT_PACKAGES: &str = "/var/lib/analytics-stack/packages";
/// Where apt keeps the packages it downloaded.
const APT_CACHE: &str = "/var/cache/apt/archives";

/// How a component's version is put in place, and so how it goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeKind {
    Venv,
    Archive,
    DebianPackage,
}

pub fn kind_of(spec: &ComponentSpec) -> UpgradeKind {
    if spec.venv.is_some() {
        UpgradeKind::Venv
    } else if spec.archive.is_some() {
        UpgradeKind::Archive
    } else {
        UpgradeKind::DebianPackage
    }
}

/// A component whose version a plan changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    pub component: String,
    pub kind: UpgradeKind,
    pub from: String,
    pub to: String,
}

/// The components `plan` upgrades: a venv build replacing a complete one, an
/// archive replacing the version `current` names, a Debian package apt upgraded.
pub fn upgrades(
    desired: &[ComponentSpec],
    plan: &Plan,
    facts: &crate::facts::HostFacts,
) -> Vec<Upgrade> {
    let upgrade = |component: &str, kind, from: &String, to: &String| Upgrade {
        component: component.to_string(),
        kind,
        from: from.clone(),
        to: to.clone(),
    };
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::BuildVenv { venv } => facts
                .venvs
                .get(&venv.name)
                .map(|from| upgrade(&venv.name, UpgradeKind::Venv, from, &venv.id)),
            // uv's pin is a tool of the venv builds, not a component that runs.
            Step::InstallArchive { pin } => desired
                .iter()
                .find(|d| {
                    d.archive
                        .as_ref()
                        .is_some_and(|a| a.component == pin.component)
                })
                .zip(facts.current_archives.get(&pin.component))
                .map(|(spec, from)| upgrade(spec.name, UpgradeKind::Archive, from, &pin.version)),
            Step::PackageChanged {
                component,
                from,
                to,
                ..
            } => Some(upgrade(component, UpgradeKind::DebianPackage, from, to)),
            _ => None,
        })
        .filter(|u| u.from != u.to)
        .collect()
}

/// A PostgreSQL major upgrade an apply did (or was doing): its plan's step, or the
/// one a killed apply recorded and no apply has seen healthy since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUpgrade {
    pub from: u32,
    pub to: u32,
    pub from_data: PathBuf,
    pub to_data: PathBuf,
}

pub fn postgres_upgrade_of(plan: &Plan, state: &RecordedState) -> Option<PostgresUpgrade> {
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::UpgradePostgres {
                from,
                to,
                from_data,
                to_data,
                ..
            } => Some(PostgresUpgrade {
                from: *from,
                to: *to,
                from_data: from_data.clone(),
                to_data: to_data.clone(),
            }),
            _ => None,
        })
        .or_else(|| {
            let (dir, to) = state.upgraded_postgres.iter().next()?;
            let from_data = PathBuf::from(dir);
            Some(PostgresUpgrade {
                from: from_data.file_name()?.to_str()?.parse().ok()?,
                to: *to,
                to_data: crate::components::postgres::data_dir(*to),
                from_data,
            })
        })
}

/// The databases an application migrates (its metadata; never the warehouse).
pub fn databases_of(component: &str) -> &'static [&'static str] {
    match component {
        "airflow" => &["airflow"],
        "superset" => &["superset"],
        _ => &[],
    }
}

/// The data files an archive's program migrates (Grafana its SQLite database).
pub fn data_files_of(component: &str) -> &'static [&'static str] {
    match component {
        "grafana" => &["/var/lib/analytics-stack/grafana/grafana.db"],
        _ => &[],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub component: String,
    pub from: String,
    pub to: String,
    /// Databases and data files put back as they were before the upgrade.
    pub databases_restored: Vec<String>,
    pub backup: Option<String>,
    pub seconds: f64,
}

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

/// `PACKAGE_VERSION_` as apt and the kept copies name a `.deb` (the epoch's colon
/// escaped).
fn deb_prefix(package: &str, version: &str) -> String {
    format!("{package}_{}_", version.replace(':', "%3a"))
}

fn find_deb(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = deb_prefix(package, version);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

/// Copies `package` at `version` from apt's `cache` into `kept` (atomically), and
/// drops the kept copies of its other versions but `also` (the one a rollback would
/// go back to).
pub fn keep_deb(
    kept: &Path,
    cache: &Path,
    package: &str,
    version: &str,
    also: Option<&str>,
) -> Result<(), String> {
    if find_deb(kept, package, version).is_none() {
        let cached = find_deb(cache, package, version).ok_or_else(|| {
            format!(
                "{package} {version} is not in {} (installed from a file, or the cache was cleaned)",
                cache.display()
            )
        })?;
        std::fs::create_dir_all(kept).map_err(|e| format!("{}: {e}", kept.display()))?;
        let name = cached.file_name().unwrap_or_default();
        let tmp = kept.join(format!(".{}.partial", name.to_string_lossy()));
        std::fs::copy(&cached, &tmp)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, kept.join(name)))
            .map_err(|e| {
                let _partial_gone = std::fs::remove_file(&tmp);
                format!("{}: {e}", cached.display())
            })?;
    }
    let keep: Vec<String> = std::iter::once(version)
        .chain(also)
        .map(|v| deb_prefix(package, v))
        .collect();
    let own = format!("{package}_");
    for entry in std::fs::read_dir(kept).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&own) && !keep.iter().any(|k| name.starts_with(k)) {
            let _old_copy_gone = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

impl Stack {
    /// The kept copy of `package` at `version`, if there is one.
    pub fn kept_package(&self, package: &str, version: &str) -> Option<PathBuf> {
        find_deb(&self.fs.path(Path::new(KEPT_PACKAGES)), package, version)
    }

    /// Keeps a copy of `package` at `version` from apt's cache (see [`keep_deb`]).
    pub fn keep_package(
        &self,
        package: &str,
        version: &str,
        also: Option<&str>,
    ) -> Result<(), String> {
        keep_deb(
            &self.fs.path(Path::new(KEPT_PACKAGES)),
            &self.fs.path(Path::new(APT_CACHE)),
            package,
            version,
            also,
        )
    }

    /// Puts `spec` back on its version `to`: its units stopped, the old version put
    /// back (`current` switched back, or the kept `.deb` reinstalled), what the new
    /// version migrated restored from `backup` (the pre-upgrade one), its units
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
        let kind = kind_of(spec);
        let root = match (&spec.venv, &spec.archive) {
            (Some(venv), _) => venv.root(),
            (None, Some(pin)) => PathBuf::from(paths::OPT).join(&pin.component),
            (None, None) => PathBuf::from(KEPT_PACKAGES),
        };
        let kept_deb = (kind == UpgradeKind::DebianPackage)
            .then(|| self.kept_package(&spec.version_package, to))
            .flatten();
        let there = match kind {
            UpgradeKind::Venv => self
                .fs
                .exists(&root.join(to).join(crate::model::VENV_COMPLETE)),
            UpgradeKind::Archive => self.fs.path(&root.join(to)).is_dir(),
            UpgradeKind::DebianPackage => kept_deb.is_some(),
        };
        if !there {
            return Err(StackError::NotFound(match kind {
                UpgradeKind::DebianPackage => format!(
                    "no copy of {} {to} is kept in {KEPT_PACKAGES}: nothing to roll back to (apt-get install {}={to} may still find it)",
                    spec.version_package, spec.version_package
                ),
                _ => format!(
                    "{} {to} is no longer in {}: nothing to roll back to",
                    spec.name,
                    root.display()
                ),
            }));
        }
        for unit in spec.units.iter().rev() {
            self.systemd
                .run_job("stop", &unit.name, Duration::from_secs(300))
                .await?;
        }
        match kept_deb {
            Some(deb) => {
                crate::host::apt::install_file(&self.fs.path(&deb))
                    .await
                    .map_err(failed)?;
            }
            _ => crate::artifact::switch_current(&self.fs.path(&root), to).map_err(failed)?,
        }
        let mut restored = Vec::new();
        if let Some(file) = backup {
            restored = self
                .restore_from_backup(file, databases_of(spec.name), data_files_of(spec.name))
                .await?;
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

    /// Restores `databases` and `files` (and only those) from a backup file of the
    /// stack's; returns what it restored.
    async fn restore_from_backup(
        &self,
        file: &Path,
        databases: &[&str],
        files: &[&str],
    ) -> Result<Vec<String>, StackError> {
        if databases.is_empty() && files.is_empty() {
            return Ok(Vec::new());
        }
        let staging = self.fresh_private_dir(STAGING)?;
        let result = async {
            let input = std::fs::File::open(self.fs.path(file))
                .map_err(|e| failed(format!("{}: {e}", file.display())))?;
            let name = file.display().to_string();
            let unpacked = tokio::task::block_in_place(|| {
                unpack_verified(BufReader::new(input), &staging, &name, &|_| {})
            })?;
            let mut restored = Vec::new();
            if !databases.is_empty() {
                let port = self.config()?.postgres.port.get();
                for db in databases {
                    let target = Target::Database(db.to_string());
                    if let Some((_, _, staged)) = unpacked.staged(&target) {
                        self.replace_database(db, staged, port).await?;
                        restored.push(db.to_string());
                    }
                }
            }
            for (entry, target, staged) in &unpacked.entries {
                if let Target::File { path, .. } = target {
                    if files.iter().any(|f| Path::new(f) == path) {
                        self.install_file(staged, path, entry)?;
                        restored.push(path.display().to_string());
                    }
                }
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
                    "{component} is not an enabled component of the stack"
                ))
            })?;
        let mut state = crate::exec::load_state(&self.fs);
        let Some(previous) = state.previous_versions.get(component).cloned() else {
            return Err(StackError::NotFound(format!(
                "{component} keeps no previous version: it has not been upgraded since it was installed (or was rolled back already)"
            )));
        };
        let current = match (&spec.venv, &spec.archive) {
            (None, None) => {
                crate::host::apt::installed_versions(std::slice::from_ref(&spec.version_package))
                    .await
                    .remove(&spec.version_package)
            }
            (Some(venv), _) => std::fs::read_link(self.fs.path(&venv.root().join("current")))
                .ok()
                .map(|p| p.display().to_string()),
            (None, Some(pin)) => std::fs::read_link(
                self.fs.path(
                    &PathBuf::from(paths::OPT)
                        .join(&pin.component)
                        .join("current"),
                ),
            )
            .ok()
            .map(|p| p.display().to_string()),
        }
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
        if kind_of(spec) == UpgradeKind::DebianPackage {
            // The version it runs now is the one apply compares with.
            state
                .package_versions
                .insert(spec.version_package.clone(), previous.id.clone());
        } else {
            // The next apply leaves it here rather than upgrade it again.
            state.held.insert(component.to_string(), current.clone());
        }
        crate::exec::save_state(&self.fs, &state).map_err(failed)?;
        Ok(report)
    }

    /// After an apply with a PostgreSQL major upgrade that did not come up healthy
    /// (`error`): the new major's server stopped and its cluster removed (pg_upgrade
    /// copied, so the old cluster is as it was before), the old major held, and the
    /// stack applied again for it.
    pub(crate) async fn roll_back_postgres(
        &self,
        up: &PostgresUpgrade,
        error: StackError,
        state: &mut RecordedState,
        executor: &crate::exec::Executor<'_>,
        progress: &dyn crate::exec::Progress,
        timeout: Duration,
    ) -> StackError {
        let (from, to) = (up.from, up.to);
        let result = async {
            self.systemd
                .run_job(
                    "stop",
                    crate::components::postgres::UNIT,
                    Duration::from_secs(300),
                )
                .await?;
            let upgrading = up.to_data.with_extension("upgrading");
            for dir in [&up.to_data, &upgrading] {
                match std::fs::remove_dir_all(self.fs.path(dir)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(failed(format!("{}: {e}", dir.display())))
                    }
                    _ => {}
                }
            }
            state
                .upgraded_postgres
                .remove(&up.from_data.display().to_string());
            state.held.insert("postgres".into(), to.to_string());
            crate::exec::save_state(&self.fs, state).map_err(failed)?;
            // Rendered again: the hold makes it the old major's.
            let (_, desired) = self.desired()?;
            let facts =
                crate::host::gather::gather(&self.fs, &self.systemd, &desired, state).await?;
            let plan = crate::plan::plan(&desired, &facts, state);
            executor.run(&plan, state, progress).await?;
            self.wait_healthy(&desired, timeout).await
        }
        .await;
        // The next attempt (after unhold) is a new upgrade: a new backup first.
        state.pre_upgrade_backups.clear();
        let said = match result {
            Ok(()) => format!(
                "{error}\n\nPostgreSQL {to} did not become healthy: rolled back to PostgreSQL {from}, whose cluster {} pg_upgrade left as it was; the {to} cluster was removed. Apply stays on {from} until `analytics-stack unhold postgres`.",
                up.from_data.display()
            ),
            Err(e) => format!(
                "{error}\n\nPostgreSQL {to} did not become healthy, and rolling back to PostgreSQL {from} failed too: {e}"
            ),
        };
        if let Err(e) = crate::exec::save_state(&self.fs, state) {
            return failed(format!("{said}\ncannot record state: {e}"));
        }
        StackError::Failed(said)
    }

    /// Lets apply try a version rolled back from again. Returns the version held.
    pub fn unhold(&self, component: &str) -> Result<String, StackError> {
        let mut state = crate::exec::load_state(&self.fs);
        let held = state.held.remove(component).ok_or_else(|| {
            StackError::NotFound(format!("{component} holds no version rolled back from"))
        })?;
        crate::exec::save_state(&self.fs, &state).map_err(failed)?;
        Ok(held)
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
                // Not tried again by every apply (a package is held with apt-mark).
                if u.kind != UpgradeKind::DebianPackage {
                    state.held.insert(u.component.clone(), u.to.clone());
                }
            }
            match rolled {
                Ok(r) => said.push_str(&format!(
                    "\n{} {} did not become healthy: rolled back to {}{} ({:.0} s){}",
                    u.component,
                    u.to,
                    u.from,
                    if r.databases_restored.is_empty() {
                        String::new()
                    } else {
                        let what: Vec<String> = r
                            .databases_restored
                            .iter()
                            .map(|d| match d.starts_with('/') {
                                true => d.clone(),
                                false => format!("database {d}"),
                            })
                            .collect();
                        format!(
                            ", {} restored from {}",
                            what.join(", "),
                            backup.unwrap_or("")
                        )
                    },
                    r.seconds,
                    match u.kind {
                        UpgradeKind::DebianPackage => format!(
                            "; apt will offer {} again: `apt-mark hold` it until a fixed version",
                            u.to
                        ),
                        _ => String::new(),
                    }
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

    /// After a healthy upgrade: the backups taken before upgrades, but the newest
    /// `[backup] keep` and any a rollback may still restore from, are removed.
    pub fn prune_pre_upgrade_backups(&self, state: &RecordedState) {
        let Ok(config) = self.config() else {
            return;
        };
        let dir = self.fs.path(Path::new(config.backup.directory.as_str()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let needed: Vec<&str> = state
            .previous_versions
            .values()
            .filter_map(|p| p.backup.as_deref())
            .chain(state.pre_upgrade_backups.values().map(String::as_str))
            .collect();
        let keep = config.backup.keep.get() as usize;
        for old in crate::backup::to_prune_named(&names, crate::backup::PRE_UPGRADE_PREFIX, keep) {
            let path = Path::new(config.backup.directory.as_str()).join(&old);
            if needed.iter().any(|n| Path::new(n) == path) {
                continue;
            }
            match std::fs::remove_file(self.fs.path(&path)) {
                Ok(()) => tracing::info!("removed {}, an older pre-upgrade backup", path.display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
        }
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

    /// After a healthy apply: the version of each component's Debian package, the
    /// one a later change is compared with, and a copy of its `.deb` for a rollback.
    pub fn record_package_versions(
        &self,
        state: &mut RecordedState,
        desired: &[ComponentSpec],
        installed: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StackError> {
        let mut changed = false;
        for spec in desired
            .iter()
            .filter(|s| kind_of(s) == UpgradeKind::DebianPackage)
        {
            let package = &spec.version_package;
            let Some(version) = installed.get(package) else {
                continue;
            };
            if state.package_versions.get(package) == Some(version) {
                continue;
            }
            let previous = state
                .previous_versions
                .get(spec.name)
                .map(|p| p.id.as_str());
            if let Err(e) = self.keep_package(package, version, previous) {
                tracing::warn!("no copy of {package} {version} is kept for a rollback: {e}");
            }
            state
                .package_versions
                .insert(package.clone(), version.clone());
            changed = true;
        }
        if changed {
            crate::exec::save_state(&self.fs, state).map_err(failed)?;
        }
        Ok(())
    }

    /// After a healthy apply: each upgraded application keeps its previous version
    /// (and the backup taken before) for `rollback`.
    pub fn record_upgrades(
        &self,
        state: &mut RecordedState,
        desired: &[ComponentSpec],
        upgrades: &[Upgrade],
        backup: Option<&str>,
    ) -> Result<(), StackError> {
        // A venv's or an archive's hold ends once the version it names is no longer
        // the one wanted (PostgreSQL's lasts until unhold: its major is configured).
        let before = state.held.len();
        state.held.retain(|component, version| {
            match desired.iter().find(|s| s.name == component) {
                Some(s) if s.venv.is_some() || s.archive.is_some() => {
                    s.venv.as_ref().is_some_and(|v| &v.id == version)
                        || s.archive.as_ref().is_some_and(|a| &a.version == version)
                }
                _ => true,
            }
        });
        if upgrades.is_empty() {
            if state.held.len() != before {
                crate::exec::save_state(&self.fs, state).map_err(failed)?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_upgrade_is_the_plans_or_the_one_a_killed_apply_recorded() {
        let mut state = RecordedState::default();
        let step = Step::UpgradePostgres {
            from: 15,
            to: 17,
            from_data: "/var/lib/analytics-stack/postgres/15".into(),
            to_data: "/var/lib/analytics-stack/postgres/17".into(),
            user: "analytics-postgres".into(),
        };
        let expected = PostgresUpgrade {
            from: 15,
            to: 17,
            from_data: "/var/lib/analytics-stack/postgres/15".into(),
            to_data: "/var/lib/analytics-stack/postgres/17".into(),
        };
        let planned = Plan { steps: vec![step] };
        assert_eq!(
            postgres_upgrade_of(&planned, &state),
            Some(expected.clone())
        );
        let empty = Plan::default();
        assert_eq!(postgres_upgrade_of(&empty, &state), None);
        // Killed after pg_upgrade: the plan no longer has the step; the state has it.
        state
            .upgraded_postgres
            .insert("/var/lib/analytics-stack/postgres/15".into(), 17);
        assert_eq!(postgres_upgrade_of(&empty, &state), Some(expected));
    }

    #[test]
    fn a_kept_package_is_copied_from_apt_once_and_only_two_versions_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, cache) = (dir.path().join("kept"), dir.path().join("cache"));
        std::fs::create_dir_all(&cache).unwrap();
        for v in ["5%3a7.0.15-1", "5%3a7.0.16-1", "5%3a7.0.17-1"] {
            std::fs::write(cache.join(format!("redis-server_{v}_amd64.deb")), v).unwrap();
        }
        // A package whose name begins like another's is not one of its versions.
        std::fs::write(cache.join("redis-server-extra_1_amd64.deb"), "x").unwrap();
        keep_deb(&kept, &cache, "redis-server-extra", "1", None).unwrap();
        keep_deb(&kept, &cache, "redis-server", "5:7.0.15-1", None).unwrap();
        keep_deb(
            &kept,
            &cache,
            "redis-server",
            "5:7.0.16-1",
            Some("5:7.0.15-1"),
        )
        .unwrap();
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&kept),
            [
                "redis-server-extra_1_amd64.deb",
                "redis-server_5%3a7.0.15-1_amd64.deb",
                "redis-server_5%3a7.0.16-1_amd64.deb"
            ]
        );
        keep_deb(
            &kept,
            &cache,
            "redis-server",
            "5:7.0.17-1",
            Some("5:7.0.16-1"),
        )
        .unwrap();
        assert_eq!(
            names(&kept),
            [
                "redis-server-extra_1_amd64.deb",
                "redis-server_5%3a7.0.16-1_amd64.deb",
                "redis-server_5%3a7.0.17-1_amd64.deb"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(find_deb(&kept, "redis-server", "5:7.0.17-1").unwrap())
                .unwrap(),
            "5%3a7.0.17-1"
        );
        let missing = keep_deb(&kept, &cache, "nginx", "1.22", None).unwrap_err();
        assert!(missing.contains("nginx 1.22 is not in"), "{missing}");
    }
}
