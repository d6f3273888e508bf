//! The operations the daemon offers, independent of D-Bus: plan, apply, status,
//! start/stop/restart of a component. Flow: config → render → facts → plan →
//! execute → health.

use crate::budget;
use crate::components::{self, Platform};
use crate::config::{self, Config, ConfigErrors};
use crate::exec::{self, ExecError, Executor};
use crate::health::{self, ProbeResult};
use crate::host::{fsroot::FsRoot, gather, systemd::Systemd, systemd::UnitStatus};
use crate::model::{paths, ComponentSpec};
use crate::plan::{self, Plan, PortConflict};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid configuration:\n{0}")]
    InvalidConfig(#[from] ConfigErrors),
    #[error("{0}")]
    Conflict(String),
    /// A memory budget the enabled components cannot fit, or more than the host has.
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Cancelled(String),
    /// A download that does not verify, or an archive that would write outside its
    /// directory.
    #[error("{0}")]
    Integrity(String),
}

impl From<crate::host::systemd::SystemdError> for StackError {
    fn from(e: crate::host::systemd::SystemdError) -> Self {
        StackError::Failed(e.to_string())
    }
}

impl From<ExecError> for StackError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Cancelled(_) => StackError::Cancelled(e.to_string()),
            ExecError::Step { .. } => StackError::Failed(e.to_string()),
            ExecError::Integrity { .. } => StackError::Integrity(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The memory budget's table and choices, when there is a budget.
    pub memory: Option<budget::MemoryPlan>,
    pub memory_table: Option<String>,
    pub steps: Vec<String>,
    /// Why apply would refuse before installing anything (e.g. an unsupported Python).
    pub problems: Vec<String>,
    pub conflicts: Vec<PortConflict>,
    /// Upgrades apply leaves alone because they were rolled back.
    pub held: Vec<String>,
    pub plan: Plan,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub changed: bool,
    pub steps: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub description: String,
    pub healthy: bool,
    pub version: String,
    /// The version an upgrade replaced, kept for `analytics-stack rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// A version rolled back from, which apply does not try again until `unhold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_version: Option<String>,
    pub units: Vec<UnitStatusJson>,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitStatusJson {
    pub name: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub memory_bytes: Option<u64>,
    /// `MemoryHigh=`/`MemoryMax=`, the lower, when the unit has one.
    pub memory_limit_bytes: Option<u64>,
    pub restarts: u32,
}

impl From<UnitStatus> for UnitStatusJson {
    fn from(u: UnitStatus) -> Self {
        UnitStatusJson {
            name: u.name,
            active_state: u.fact.active_state,
            sub_state: u.fact.sub_state,
            main_pid: u.fact.main_pid,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            restarts: u.restarts,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub components: Vec<ComponentStatus>,
    /// pgBackRest's archiving, when it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiving: Option<crate::backup::pitr::ArchivingStatus>,
}

pub struct Stack {
    pub fs: FsRoot,
    pub systemd: Systemd,
    pub etc_dir: PathBuf,
}

impl Stack {
    /// The configuration, with `[stack] hostname` defaulted to the host's FQDN.
    pub fn config(&self) -> Result<Config, StackError> {
        self.config_for(&gather::host_names(&self.fs))
    }

    /// The configuration, `[stack] hostname` defaulted to the first of `names` (the
    /// host's, FQDN first).
    fn config_for(&self, names: &[String]) -> Result<Config, StackError> {
        let mut config = config::load_dir(&self.etc_dir)?;
        config::read_lock_overrides(&mut config).map_err(StackError::Conflict)?;
        if config.stack.hostname.is_none() {
            config.stack.hostname = names
                .iter()
                .find_map(|n| config::Hostname::try_from(n.clone()).ok());
        }
        Ok(config)
    }

    pub fn platform(&self) -> Platform {
        Platform {
            codename: gather::os_codename(&self.fs),
            arch: crate::artifact::catalog::debian_arch().into(),
            names: gather::host_names(&self.fs),
            addresses: gather::host_addresses(),
            memory_bytes: gather::host_memory_bytes(),
            cpus: gather::host_cpus(),
        }
    }

    /// The configuration (sized by the memory budget, if any) and what it renders to.
    pub fn desired(&self) -> Result<(Config, Vec<ComponentSpec>), StackError> {
        self.desired_with_budget()
            .map(|(config, specs, _)| (config, specs))
    }

    /// Like [`Stack::desired`], with the memory plan when there is a budget. A budget
    /// that cannot be met is refused here, before anything is gathered or changed.
    pub fn desired_with_budget(
        &self,
    ) -> Result<(Config, Vec<ComponentSpec>, Option<budget::MemoryPlan>), StackError> {
        let platform = self.platform();
        let mut config = self.config_for(&platform.names)?;
        self.hold_postgres_major(&mut config, &platform);
        let fitted =
            budget::fit(&config, &platform).map_err(|e| StackError::Budget(e.to_string()))?;
        let (config, memory) = match fitted {
            Some((fitted, memory)) => (fitted, Some(memory)),
            None => (config, None),
        };
        let mut specs = components::render_all(&config, &platform);
        if let Some(memory) = &memory {
            budget::limit_units(&mut specs, memory);
        }
        Ok((config, specs, memory))
    }

    /// A PostgreSQL major upgrade that was rolled back: the cluster stays on the
    /// major it is of until `unhold postgres` (or a configuration asking for another).
    fn hold_postgres_major(&self, config: &mut Config, platform: &Platform) {
        let state = exec::load_state(&self.fs);
        let Some(held) = state
            .held
            .get("postgres")
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return;
        };
        if components::postgres::major(config, platform) != held {
            return;
        }
        let dir = PathBuf::from(paths::STATE).join("postgres");
        if let Some((&older, _)) = gather::postgres_clusters(&self.fs, &dir)
            .range(..held)
            .next_back()
        {
            config.postgres.major = config::PostgresMajor::try_from(i64::from(older)).ok();
        }
    }

    pub async fn plan(&self) -> Result<PlanReport, StackError> {
        let (_, desired, memory) = self.desired_with_budget()?;
        let state = exec::load_state(&self.fs);
        let facts = gather::gather(&self.fs, &self.systemd, &desired, &state).await?;
        let plan = plan::plan(&desired, &facts, &state);
        Ok(PlanReport {
            memory_table: memory.as_ref().map(|m| m.to_string()),
            memory,
            steps: plan.steps.iter().map(|s| s.describe()).collect(),
            problems: preflight_problems(&desired, &facts),
            conflicts: plan::port_conflicts(&desired, &facts),
            held: plan::held_upgrades(&desired, &facts, &state),
            plan,
        })
    }

    pub async fn apply(
        &self,
        cancel: &AtomicBool,
        progress: &dyn exec::Progress,
        bundle: Option<BundleSource>,
    ) -> Result<ApplyReport, StackError> {
        // Half the backup's data and half the host's would look healthy.
        if let Some(file) = exec::load_state(&self.fs).restore_in_progress {
            return Err(StackError::Conflict(format!(
                "a restore of {file} did not complete (the daemon stopped during it): run `analytics-stack restore {file}` again"
            )));
        }
        self.apply_unchecked(cancel, progress, bundle, &[]).await
    }

    /// Apply within a restore, which brings the host to the backup's state. The
    /// components in `hold` that are not running are installed but not started
    /// (nor health-checked): the restore starts them once its databases are back,
    /// rather than running their first migrations on empty databases only to stop
    /// them again.
    pub(crate) async fn apply_restoring(
        &self,
        cancel: &AtomicBool,
        progress: &dyn exec::Progress,
        hold: &[&str],
    ) -> Result<ApplyReport, StackError> {
        self.apply_unchecked(cancel, progress, None, hold).await
    }

    async fn apply_unchecked(
        &self,
        cancel: &AtomicBool,
        progress: &dyn exec::Progress,
        bundle: Option<BundleSource>,
        hold: &[&str],
    ) -> Result<ApplyReport, StackError> {
        let started = Instant::now();
        let (config, desired) = self.desired()?;
        // A bundle is verified whole before anything else happens.
        let bundle = match bundle.or_else(|| {
            (!config.bundle.path.is_empty())
                .then(|| BundleSource::Path(PathBuf::from(config.bundle.path.as_str())))
        }) {
            Some(source) => {
                let by_root = source.chosen_by_root();
                Some((self.open_bundle(source)?, by_root))
            }
            None => None,
        };
        if let Some((b, by_root)) = &bundle {
            let recorded = exec::recorded_digests(&self.fs);
            check_bundle_fits(b, &desired, &recorded, *by_root).inspect_err(|e| {
                // A bundle refused for what it holds does not stay extracted.
                if matches!(e, StackError::Integrity(_)) {
                    let _best_effort = std::fs::remove_dir_all(&b.root);
                }
            })?;
        }
        let bundle = bundle.map(|(b, _)| b);
        if let Some(b) = &bundle {
            self.record_suite_dates(b)?;
        }
        let apt = apt_sources(&config, &gather::os_codename(&self.fs), bundle.as_ref());
        let mut state = exec::load_state(&self.fs);
        let gathering = Instant::now();
        let facts = gather::gather(&self.fs, &self.systemd, &desired, &state).await?;
        tracing::info!(
            "apply: configuration read and rendered in {:.3} s, facts gathered in {:.3} s",
            (gathering - started).as_secs_f64(),
            gathering.elapsed().as_secs_f64()
        );
        // Before anything is installed: every venv needs a Python its application
        // supports, and PostgreSQL cannot go back a major.
        let problems = preflight_problems(&desired, &facts);
        if !problems.is_empty() {
            return Err(StackError::Conflict(problems.join("\n")));
        }
        // The operator's certificate and key are checked before anything changes.
        for tls in desired.iter().filter_map(|s| s.tls.as_ref()) {
            crate::tls::preflight(&self.fs, tls)
                .map_err(|e| StackError::Conflict(format!("[nginx] tls = \"files\": {e}")))?;
        }
        // So is the SMTP relay's password file (systemd would refuse to start the unit).
        components::alertmanager::preflight(&self.fs, &config).map_err(StackError::Conflict)?;
        // And pgBackRest's support of the PostgreSQL major (archive_command would fail).
        components::pgbackrest::preflight(
            &config,
            &self.platform(),
            facts.packages.get("pgbackrest").map(String::as_str),
        )
        .map_err(StackError::Conflict)?;
        // A schedule systemd cannot read is refused before the timer is written.
        let backup_interval = match config.backup.schedule.as_str() {
            "" => None,
            spec => Some(
                crate::backup::run::calendar_interval(spec)
                    .await
                    .map_err(StackError::Conflict)?,
            ),
        };
        let conflicts = plan::port_conflicts(&desired, &facts);
        if !conflicts.is_empty() {
            let lines: Vec<String> = conflicts.iter().map(|c| c.to_string()).collect();
            return Err(StackError::Conflict(format!(
                "ports in use:\n{}",
                lines.join("\n")
            )));
        }
        let plan = plan::plan(&desired, &facts, &state);
        let mut upgrades = crate::upgrade::upgrades(&desired, &plan, &facts);
        let held = held_components(&desired, hold, &upgrades, &facts);
        let held_units: BTreeSet<String> = held
            .iter()
            .flat_map(|s| s.units.iter().map(|u| u.name.clone()))
            .collect();
        let plan = plan.without_starting(&held_units);
        let steps: Vec<String> = plan.steps.iter().map(|s| s.describe()).collect();
        // Service users an uninstall kept with their data are the stack's again: an
        // uninstall --purge-data must find them.
        let before = state.users.len();
        state.users.extend(
            desired
                .iter()
                .flat_map(|s| s.users.iter())
                .filter(|u| facts.users.contains(&u.name))
                .map(|u| u.name.clone()),
        );
        if state.users.len() != before {
            exec::save_state(&self.fs, &state)
                .map_err(|e| StackError::Failed(format!("cannot record state: {e}")))?;
        }
        // Before a migration or a major upgrade touches the data: a backup of it.
        if let Some(why) = upgrade_reason(&upgrades, &plan) {
            let taken = state
                .pre_upgrade_backups
                .get(&why)
                .is_some_and(|f| self.fs.exists(Path::new(f)));
            if !taken {
                progress.step(0, plan.steps.len(), &format!("back up before {why}"));
                let file = self
                    .backup_to_directory(&config, "pre-upgrade")
                    .await
                    .map_err(|e| {
                        StackError::Failed(format!(
                            "cannot take the backup before {why}, so nothing was changed: {e}"
                        ))
                    })?;
                tracing::info!("backed up to {} before {why}", file.display());
                state
                    .pre_upgrade_backups
                    .insert(why, file.display().to_string());
                exec::save_state(&self.fs, &state)
                    .map_err(|e| StackError::Failed(format!("cannot record state: {e}")))?;
                crate::util::failpoint_step_recorded();
            }
        }
        // Application upgrades, with those a killed apply left unfinished.
        for (component, (from, to)) in &state.upgrades_in_progress {
            let Some(spec) = desired.iter().find(|s| s.name == component) else {
                continue;
            };
            if !upgrades.iter().any(|u| &u.component == component) {
                upgrades.push(crate::upgrade::Upgrade {
                    component: component.clone(),
                    kind: crate::upgrade::kind_of(spec),
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        if !upgrades.is_empty() {
            state.upgrades_in_progress = upgrades
                .iter()
                .map(|u| (u.component.clone(), (u.from.clone(), u.to.clone())))
                .collect();
            exec::save_state(&self.fs, &state)
                .map_err(|e| StackError::Failed(format!("cannot record state: {e}")))?;
        }
        let backup_before = state.pre_upgrade_backups.values().next().cloned();
        let timeout = Duration::from_secs(config.stack.health_timeout_secs.into());
        let executor = Executor {
            fs: &self.fs,
            mirror: config.archives.mirror.as_str().to_string(),
            systemd: &self.systemd,
            cancel,
            apt,
            bundle,
        };
        let outcome = async {
            if !plan.is_empty() {
                let graph = plan::graph::graph(&plan, &desired);
                executor
                    .run_graph(
                        &plan,
                        &graph,
                        exec::Concurrency::for_host(),
                        &mut state,
                        progress,
                    )
                    .await?;
            }
            let started: Vec<ComponentSpec> = desired
                .iter()
                .filter(|s| !held.iter().any(|h| h.name == s.name))
                .cloned()
                .collect();
            let waiting = Instant::now();
            let healthy = self.wait_healthy(&started, timeout).await;
            tracing::info!("health wait: {:.1} s", waiting.elapsed().as_secs_f64());
            healthy
        }
        .await;
        // What an upgrade made unhealthy goes back to what it was: PostgreSQL first
        // (the applications' rollbacks restore into it).
        let outcome = match outcome {
            Err(e) => {
                // Only when PostgreSQL itself is not healthy: another component's
                // failure is no reason to leave the new major.
                let postgres = desired.iter().find(|s| s.name == "postgres");
                let postgres_sick = match postgres {
                    Some(spec) => self
                        .wait_healthy(std::slice::from_ref(spec), Duration::ZERO)
                        .await
                        .is_err(),
                    None => false,
                };
                let upgrade =
                    crate::upgrade::postgres_upgrade_of(&plan, &state).filter(|_| postgres_sick);
                let e = match upgrade {
                    Some(up) => {
                        self.roll_back_postgres(&up, e, &mut state, &executor, progress, timeout)
                            .await
                    }
                    None => e,
                };
                match upgrades.is_empty() {
                    true => Err(e),
                    false => Err(self
                        .roll_back_upgrades(
                            &desired,
                            &upgrades,
                            backup_before.as_deref(),
                            timeout,
                            e,
                            &mut state,
                        )
                        .await),
                }
            }
            ok => ok,
        };
        if !plan.is_empty() || outcome.is_err() {
            self.publish_apply_metrics(&config, &desired, started.elapsed(), outcome.is_ok());
        }
        // An apply that changed nothing writes nothing; the daemon's refresher keeps
        // the page's health current otherwise. One that failed writes it too: that is
        // when an operator needs to see what is unhealthy and why.
        if !plan.is_empty() || outcome.is_err() {
            if let Err(e) = self.write_landing_page().await {
                tracing::warn!("cannot write the landing page: {e}");
            }
        }
        outcome?;
        self.retire_upgraded_clusters(&mut state)?;
        if config.node_exporter.enabled {
            self.update_backup_metrics(|m| {
                m.interval_seconds = backup_interval;
                m.scheduled_since = backup_interval
                    .map(|_| m.scheduled_since.unwrap_or_else(crate::util::now_secs));
            });
        }
        state.upgrades_in_progress.clear();
        self.record_upgrades(&mut state, &desired, &upgrades, backup_before.as_deref())?;
        if backup_before.is_some() {
            self.prune_pre_upgrade_backups(&state);
        }
        let installed = match plan.is_empty() {
            true => facts.packages.clone(),
            false => {
                let packages: Vec<String> =
                    desired.iter().map(|s| s.version_package.clone()).collect();
                crate::host::apt::installed_versions(&packages).await
            }
        };
        self.record_package_versions(&mut state, &desired, &installed)?;
        Ok(ApplyReport {
            changed: !plan.is_empty(),
            steps,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The daemon's own figures, through node_exporter's textfile collector.
    fn publish_apply_metrics(
        &self,
        config: &Config,
        desired: &[ComponentSpec],
        took: Duration,
        ok: bool,
    ) {
        if !config.node_exporter.enabled {
            return;
        }
        let now = crate::util::now_secs();
        let text = format!(
            "# HELP analytics_stack_last_apply_timestamp_seconds When the last apply that changed something (or failed) ended.\n\
             # TYPE analytics_stack_last_apply_timestamp_seconds gauge\n\
             analytics_stack_last_apply_timestamp_seconds {now}\n\
             # HELP analytics_stack_last_apply_duration_seconds How long it took.\n\
             # TYPE analytics_stack_last_apply_duration_seconds gauge\n\
             analytics_stack_last_apply_duration_seconds {:.3}\n\
             # HELP analytics_stack_last_apply_success 1 if it succeeded.\n\
             # TYPE analytics_stack_last_apply_success gauge\n\
             analytics_stack_last_apply_success {}\n\
             # HELP analytics_stack_components Components enabled in the configuration.\n\
             # TYPE analytics_stack_components gauge\n\
             analytics_stack_components {}\n",
            took.as_secs_f64(),
            u8::from(ok),
            desired.len()
        ) + &certificate_metrics(&crate::tls::certificate_ends(&self.fs));
        let path =
            Path::new(crate::components::node_exporter::TEXTFILE_DIR).join("analytics_stack.prom");
        if self.fs.exists(path.parent().unwrap_or(Path::new("/"))) {
            if let Err(e) = self.fs.write_atomic(&path, text.as_bytes(), 0o644, 0, 0) {
                tracing::warn!("cannot publish metrics to {}: {e}", path.display());
            }
        }
    }

    pub(crate) async fn wait_healthy(
        &self,
        desired: &[ComponentSpec],
        timeout: Duration,
    ) -> Result<(), StackError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Every probe at once: each waits on its component, not on the others.
            let probes = desired
                .iter()
                .flat_map(|spec| spec.probes.iter().map(move |probe| (spec, probe)));
            let results = futures_util::future::join_all(probes.map(|(spec, probe)| async move {
                (
                    spec,
                    health::run(probe, |n| gather::read_secret(&self.fs, n)).await,
                )
            }))
            .await;
            let sick: Vec<_> = results.into_iter().filter(|(_, r)| !r.healthy).collect();
            if sick.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = String::new();
                for (spec, r) in sick {
                    msg.push_str(&format!(
                        "{} is not healthy: {} ({})\n",
                        spec.name, r.probe, r.detail
                    ));
                    for u in &spec.units {
                        msg.push_str(&format!(
                            "--- last journal lines of {} ---\n{}\n",
                            u.name,
                            crate::host::journal_tail(&u.name, 15).await
                        ));
                    }
                }
                return Err(StackError::Failed(msg.trim_end().to_string()));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn status(&self) -> Result<StatusReport, StackError> {
        let (config, desired) = self.desired()?;
        let versions = crate::host::apt::installed_versions(
            &desired
                .iter()
                .map(|s| s.version_package.clone())
                .collect::<Vec<_>>(),
        )
        .await;
        let state = exec::load_state(&self.fs);
        let mut components = Vec::new();
        for spec in &desired {
            let mut units = Vec::new();
            let mut units_ok = true;
            for u in &spec.units {
                let status = UnitStatusJson::from(self.systemd.unit_status(&u.name).await?);
                // A unit a timer starts is idle between runs: only a failure counts.
                units_ok &= if u.triggered {
                    status.active_state != "failed"
                } else {
                    status.active_state == "active"
                };
                units.push(status);
            }
            let mut probes = Vec::new();
            for p in &spec.probes {
                probes.push(health::run(p, |n| gather::read_secret(&self.fs, n)).await);
            }
            let healthy = units_ok && probes.iter().all(|p| p.healthy);
            components.push(ComponentStatus {
                name: spec.name.into(),
                description: spec.description.into(),
                healthy,
                // An archive's version is the catalog's; a package's, dpkg's.
                version: match (&spec.archive, &spec.venv) {
                    (Some(pin), _) => pin.version.clone(),
                    (None, Some(venv)) => venv.id.clone(),
                    // Nothing installed of its own (the backup timer): the daemon's.
                    (None, None) if spec.version_package.is_empty() => {
                        env!("CARGO_PKG_VERSION").to_string()
                    }
                    (None, None) => versions
                        .get(&spec.version_package)
                        .cloned()
                        .unwrap_or_else(|| "not installed".into()),
                },
                previous_version: state.previous_versions.get(spec.name).map(|p| p.id.clone()),
                held_version: state.held.get(spec.name).cloned(),
                units,
                probes,
            });
        }
        Ok(StatusReport {
            components,
            archiving: self.archiving_status(&config).await,
        })
    }

    /// Units of a component, or NotFound for a name the stack does not know or run.
    pub fn component_units(&self, name: &str) -> Result<Vec<String>, StackError> {
        if !components::is_known(name) {
            let known: Vec<&str> = components::KNOWN.iter().map(|(n, _)| *n).collect();
            return Err(StackError::NotFound(format!(
                "unknown component '{name}' (known: {})",
                known.join(", ")
            )));
        }
        let (_, desired) = self.desired()?;
        desired
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.units.iter().map(|u| u.name.clone()).collect())
            .ok_or_else(|| {
                StackError::NotFound(format!(
                    "component '{name}' is disabled in the configuration"
                ))
            })
    }

    pub async fn control(&self, name: &str, verb: &'static str) -> Result<(), StackError> {
        let mut units = self.component_units(name)?;
        if verb == "stop" {
            units.reverse();
        }
        for u in units {
            if let Err(e) = self
                .systemd
                .run_job(verb, &u, Duration::from_secs(300))
                .await
            {
                return Err(StackError::Failed(format!(
                    "{e}\n--- last journal lines of {u} ---\n{}",
                    crate::host::journal_tail(&u, 15).await
                )));
            }
        }
        Ok(())
    }

    /// Secrets a root user may read back: connection details per component.
    /// Verifies and extracts an offline bundle for this host.
    pub fn open_bundle(&self, source: BundleSource) -> Result<crate::bundle::Bundle, StackError> {
        let (codename, arch) = (
            gather::os_codename(&self.fs),
            crate::artifact::catalog::debian_arch(),
        );
        let root = self.fs.path(Path::new(crate::bundle::EXTRACT_ROOT));
        let opened = match source {
            BundleSource::Path(path) => crate::bundle::open(&path, &root, &codename, arch),
            BundleSource::File { file, name, .. } => {
                crate::bundle::open_file(file, &name, &root, &codename, arch)
            }
        };
        // Debian's signatures are checked before apt sees anything; a bundle that
        // fails them does not stay extracted.
        let opened = opened.and_then(|b| {
            let name = b.root.display().to_string();
            let verified = crate::bundle::debian::verify(
                &b.root,
                &b.manifest,
                Path::new(crate::bundle::debian::KEYRING),
                &name,
            )
            .and_then(|dates| {
                // Not older than what this host installed from before.
                crate::bundle::debian::check_not_older(&name, &dates, &self.suite_dates())
                    .map(|()| dates)
            });
            if verified.is_err() {
                let _best_effort = std::fs::remove_dir_all(&b.root);
            }
            verified.map(|suite_dates| crate::bundle::Bundle { suite_dates, ..b })
        });
        opened.map_err(|e| {
            let text = e.to_string();
            if e.is_integrity() {
                StackError::Integrity(text)
            } else {
                StackError::Failed(text)
            }
        })
    }

    /// The newest date of each Debian suite this host installed from a bundle.
    fn suite_dates(&self) -> std::collections::BTreeMap<String, u64> {
        self.fs
            .read_json_or_default(Path::new(crate::bundle::debian::SUITE_DATES_FILE))
    }

    /// Records the bundle's suite dates (each suite at its newest) before apt
    /// installs from it.
    fn record_suite_dates(&self, bundle: &crate::bundle::Bundle) -> Result<(), StackError> {
        let seen = self.suite_dates();
        let merged = crate::bundle::debian::newest_dates(&seen, &bundle.suite_dates);
        if merged == seen {
            return Ok(());
        }
        let path = Path::new(crate::bundle::debian::SUITE_DATES_FILE);
        let json =
            serde_json::to_vec_pretty(&merged).map_err(|e| StackError::Failed(e.to_string()))?;
        self.fs
            .write_atomic(path, &json, 0o644, 0, 0)
            .map_err(|e| StackError::Failed(format!("{}: {e}", path.display())))
    }

    /// What Alertmanager holds now: the alerts firing, silenced ones among them.
    pub async fn alerts(&self) -> Result<Vec<components::alertmanager::Alert>, StackError> {
        let (config, _) = self.desired()?;
        if !config.alertmanager_on() {
            return Err(StackError::NotFound(
                "alertmanager is not enabled ([alertmanager] enabled, with [prometheus]); \
                 Prometheus's own alerts page is on 127.0.0.1"
                    .into(),
            ));
        }
        components::alertmanager::alerts(config.alertmanager.port.get())
            .await
            .map_err(StackError::Failed)
    }

    pub fn credentials(&self, name: Option<&str>) -> Result<serde_json::Value, StackError> {
        let (config, desired) = self.desired()?;
        let mut out = serde_json::Map::new();
        // Alertmanager's login is kept with NGINX, which checks it.
        let keeper = |spec: &str| match name {
            Some("alertmanager") => spec == "nginx",
            Some(n) => n == spec,
            None => true,
        };
        for spec in desired.iter().filter(|s| keeper(s.name)) {
            let mut entries = serde_json::Map::new();
            for secret in &spec.secrets {
                let value = gather::read_secret(&self.fs, secret).unwrap_or_default();
                if secret == components::alertmanager::ADMIN_SECRET {
                    // NGINX keeps it (it checks it); it is Alertmanager's login.
                    if name.is_none_or(|n| n == "alertmanager") {
                        let login = format!(
                            "user {}, password {value}, at {}{}",
                            components::alertmanager::ADMIN_USER,
                            components::nginx::public_origin(&config),
                            components::alertmanager::PREFIX
                        );
                        out.insert("alertmanager".into(), serde_json::json!({ "admin": login }));
                    }
                    continue;
                }
                let (key, shown) = match spec.name {
                    "postgres" => {
                        let role = secret.trim_start_matches("postgres-");
                        (
                            role.to_string(),
                            format!(
                                "postgresql://{role}:{value}@127.0.0.1:{}/{role}",
                                config.postgres.port
                            ),
                        )
                    }
                    "redis" => {
                        let inst = secret.trim_start_matches("redis-");
                        let port = if inst == "broker" {
                            config.redis.broker.port
                        } else {
                            config.redis.cache.port
                        };
                        (
                            inst.to_string(),
                            format!("redis://:{value}@127.0.0.1:{port}/0"),
                        )
                    }
                    "grafana" | "airflow" | "superset" => {
                        // Keys and other internal secrets stay internal.
                        if !secret.ends_with("-admin") {
                            continue;
                        }
                        (
                            "admin".to_string(),
                            format!(
                                "user admin, password {value}, at {}/{}/",
                                components::nginx::public_origin(&config),
                                spec.name
                            ),
                        )
                    }
                    _ => (secret.clone(), value),
                };
                entries.insert(key, serde_json::Value::String(shown));
            }
            // What a user needs to trust the door's certificate; nothing secret.
            if let Some(tls) = &spec.tls {
                let (ca, how) = match tls {
                    crate::tls::TlsSpec::SelfSigned { .. } => (
                        crate::tls::CA_CERT.to_string(),
                        "the stack CA: import it as a trusted authority in browsers (compare the fingerprint)",
                    ),
                    crate::tls::TlsSpec::Files { certificate, .. } => (
                        certificate.display().to_string(),
                        "the operator's certificate",
                    ),
                };
                entries.insert("tls_certificate".into(), serde_json::Value::String(ca));
                entries.insert("tls_note".into(), serde_json::Value::String(how.into()));
                if let crate::tls::TlsSpec::SelfSigned { .. } = tls {
                    if let Some(fp) = crate::tls::ca_fingerprint(&self.fs) {
                        entries.insert("tls_ca_sha256".into(), serde_json::Value::String(fp));
                    }
                }
            }
            if name != Some("alertmanager") {
                out.insert(spec.name.into(), serde_json::Value::Object(entries));
            }
        }
        if let Some(n) = name {
            if !out.contains_key(n) {
                self.component_units(n)?;
            }
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Removes everything the stack created; data too when `purge_data`.
    pub async fn uninstall(
        &self,
        purge_data: bool,
        cancel: &AtomicBool,
        progress: &dyn exec::Progress,
    ) -> Result<UninstallReport, StackError> {
        let started = Instant::now();
        let mut state = exec::load_state(&self.fs);
        let facts = gather::gather_uninstall(&self.fs, &self.systemd, &state).await?;
        let plan = crate::plan::uninstall::plan_uninstall(&facts, &state, purge_data);
        let removed: Vec<String> = plan.steps.iter().map(|s| s.describe()).collect();
        let mirror = self
            .config()
            .map(|c| c.archives.mirror.as_str().to_string())
            .unwrap_or_default();
        Executor {
            fs: &self.fs,
            mirror,
            systemd: &self.systemd,
            cancel,
            apt: crate::host::apt::AptSources::Host,
            bundle: None,
        }
        .run(&plan, &mut state, progress)
        .await?;
        Ok(UninstallReport {
            removed,
            kept: crate::plan::uninstall::kept(purge_data),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// What the daemon keeps current between applies: the landing page's health and,
    /// for Prometheus, each unit's memory and restarts.
    pub async fn refresh(&self) -> Result<(), StackError> {
        let config = self.config()?;
        let wants_page = config.nginx.enabled && self.fs.exists(Path::new(paths::WWW));
        if !config.node_exporter.enabled && !wants_page {
            return Ok(());
        }
        // One round of probes serves both outputs.
        let status = self.status().await?;
        if config.node_exporter.enabled {
            let text = unit_metrics(&status);
            let path = Path::new(crate::components::node_exporter::TEXTFILE_DIR)
                .join("analytics_stack_units.prom");
            if self.fs.exists(path.parent().unwrap_or(Path::new("/"))) {
                self.fs
                    .write_atomic(&path, text.as_bytes(), 0o644, 0, 0)
                    .map_err(|e| StackError::Failed(format!("{}: {e}", path.display())))?;
                let archiving = path.with_file_name("analytics_stack_archiving.prom");
                match &status.archiving {
                    Some(a) => self
                        .fs
                        .write_atomic(&archiving, a.metrics().as_bytes(), 0o644, 0, 0)
                        .map_err(|e| StackError::Failed(format!("{}: {e}", archiving.display())))?,
                    None => self
                        .fs
                        .remove_file(&archiving)
                        .map_err(|e| StackError::Failed(format!("{}: {e}", archiving.display())))?,
                }
            }
        }
        self.write_landing_page_from(&config, &status)
    }

    /// Writes `/`'s landing page and `status.json` when NGINX is part of the stack.
    pub async fn write_landing_page(&self) -> Result<(), StackError> {
        let config = self.config()?;
        if !config.nginx.enabled || !self.fs.exists(Path::new(paths::WWW)) {
            return Ok(());
        }
        let status = self.status().await?;
        self.write_landing_page_from(&config, &status)
    }

    fn write_landing_page_from(
        &self,
        config: &Config,
        status: &StatusReport,
    ) -> Result<(), StackError> {
        if !config.nginx.enabled || !self.fs.exists(Path::new(paths::WWW)) {
            return Ok(());
        }
        use crate::landing::View;
        let html = crate::landing::render(config, status, View::Operator);
        let public_html = crate::landing::render(config, status, View::Public);
        // The operator's view (clients on this host): health, versions and units, no PIDs
        // or memory figures, so the file changes only when health does. Everyone else
        // sees health alone: versions tell an attacker which advisories apply.
        let json = |detail: bool| {
            let components: Vec<serde_json::Value> = status
                .components
                .iter()
                .map(|c| {
                    if detail {
                        serde_json::json!({
                            "name": c.name,
                            "healthy": c.healthy,
                            "version": c.version,
                            "units": c.units.iter().map(|u| serde_json::json!({"name": u.name, "active_state": u.active_state})).collect::<Vec<_>>(),
                        })
                    } else {
                        serde_json::json!({ "name": c.name, "healthy": c.healthy })
                    }
                })
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({ "components": components }))
                .unwrap_or_default()
        };
        let pages = [
            ("index.html", html),
            ("status.json", json(true)),
            ("public.html", public_html),
            ("public-status.json", json(false)),
        ];
        for (name, body) in pages {
            let path = PathBuf::from(paths::WWW).join(name);
            if self.fs.read(&path).ok().as_deref() != Some(body.as_bytes()) {
                self.fs
                    .write_atomic(&path, body.as_bytes(), 0o644, 0, 0)
                    .map_err(|e| StackError::Failed(format!("{}: {e}", path.display())))?;
            }
        }
        Ok(())
    }
}

/// Applications whose venv cannot be built on the configured interpreter: it is too
/// old or too new, or it does not exist and the distribution's python3 would not fit.
/// Why apply must refuse before changing anything.
/// The certificates' ends, for the alert that says one ends soon.
fn certificate_metrics(ends: &[(&str, u64)]) -> String {
    if ends.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "# HELP analytics_stack_certificate_not_after_seconds When a certificate of the stack on this host ends.\n\
         # TYPE analytics_stack_certificate_not_after_seconds gauge\n",
    );
    for (what, end) in ends {
        text.push_str(&format!(
            "analytics_stack_certificate_not_after_seconds{{certificate=\"{what}\"}} {end}\n"
        ));
    }
    text
}

pub fn preflight_problems(
    desired: &[ComponentSpec],
    facts: &crate::facts::HostFacts,
) -> Vec<String> {
    let mut problems = python_problems(desired, facts);
    problems.extend(plan::postgres_problems(desired, facts));
    problems.extend(plan::missing_secrets(desired, facts));
    problems
}

/// What in `plan` changes data in a way a backup should precede: a PostgreSQL major
/// upgrade, or an application's new version (its migrations run when it starts).
fn upgrade_reason(upgrades: &[crate::upgrade::Upgrade], plan: &Plan) -> Option<String> {
    // Venvs are built before the PostgreSQL step in a plan: the first upgrade names it.
    upgrades
        .first()
        .map(|u| format!("upgrading {} ({} → {})", u.component, u.from, u.to))
        .or_else(|| {
            plan.steps.iter().find_map(|s| match s {
                plan::Step::UpgradePostgres { from, to, .. } => {
                    Some(format!("upgrading PostgreSQL {from} → {to}"))
                }
                _ => None,
            })
        })
}

pub fn python_problems(desired: &[ComponentSpec], facts: &crate::facts::HostFacts) -> Vec<String> {
    let mut problems = Vec::new();
    for venv in desired.iter().filter_map(|s| s.venv.as_ref()) {
        let Some(app) = components::python::app(&venv.name) else {
            continue;
        };
        let interpreter = venv.interpreter.display().to_string();
        let minor = match &venv.python {
            // The stack's own CPython: its version is the pin's.
            Some(pin) => components::python::managed_minor(pin),
            None if interpreter.is_empty() => {
                problems.push(format!(
                    "{} needs the stack's own Python, and the catalog has none for this \
                     architecture; set [python.managed] or [python] interpreter",
                    app.name
                ));
                continue;
            }
            // Not there yet: Debian's python3 will be installed, if that is the interpreter.
            None => facts.python_minor.or_else(|| {
                (interpreter == crate::config::Interpreter::DEBIAN)
                    .then(|| components::python::debian_python_minor(&facts.codename))
                    .flatten()
            }),
        };
        if let Some(problem) = components::python::unsupported(app, &interpreter, minor) {
            problems.push(problem);
        }
    }
    problems
}

/// A bundle must hold everything this host's configuration asks for, and its
/// archives must be ones this host trusts (or root's choice); both are checked
/// before any change.
fn check_bundle_fits(
    bundle: &crate::bundle::Bundle,
    desired: &[ComponentSpec],
    recorded: &crate::artifact::trust::RecordedDigests,
    chosen_by_root: bool,
) -> Result<(), StackError> {
    bundle
        .check_trusted(desired, recorded, chosen_by_root)
        .map_err(|e| StackError::Integrity(e.to_string()))?;
    let missing = bundle.missing_for(desired);
    if missing.is_empty() {
        return Ok(());
    }
    let made_for = if bundle.manifest.components.is_empty() {
        String::new()
    } else {
        format!(
            " (it was made for: {})",
            bundle.manifest.components.join(", ")
        )
    };
    Err(StackError::Conflict(format!(
        "the bundle lacks what this host's configuration asks for{made_for}:\n  {}\n\
         Nothing was changed. Either turn those components off in \
         /etc/analytics-stack/stack.toml (`enabled = false`), or create a bundle with \
         them: `analytics-stack bundle create` on a connected machine with this \
         configuration.",
        missing.join("\n  ")
    )))
}

/// Where an offline bundle is read from.
pub enum BundleSource {
    /// `[bundle] path` of the configuration, which only root writes: the daemon opens it.
    Path(PathBuf),
    /// A file the caller opened with its own permissions and passed over the bus,
    /// named in messages as the caller named it; `caller_uid` decides whether it may
    /// bring release archives this host does not trust yet (root only).
    File {
        file: std::fs::File,
        name: String,
        caller_uid: u32,
    },
}

impl BundleSource {
    /// Whether root chose this bundle: root's own configuration names it, or root
    /// passed it. Only then may it bring an archive whose digest the host does not
    /// know yet (see [`crate::bundle::Bundle::check_trusted`]).
    pub fn chosen_by_root(&self) -> bool {
        match self {
            BundleSource::Path(_) => true,
            BundleSource::File { caller_uid, .. } => *caller_uid == 0,
        }
    }
}

/// Where Debian packages come from: the bundle's repository, else the configured
/// mirror's suites for this release, else the host's own sources.
pub fn apt_sources(
    config: &Config,
    codename: &str,
    bundle: Option<&crate::bundle::Bundle>,
) -> crate::host::apt::AptSources {
    use crate::host::apt::AptSources;
    match (bundle, config.apt.mirror.as_str()) {
        (Some(b), _) => AptSources::Only(b.apt_sources()),
        (None, "") => AptSources::Host,
        (None, mirror) => AptSources::Only(format!(
            "deb {mirror} {codename} main\ndeb {mirror} {codename}-updates main\n"
        )),
    }
}

/// Each unit's memory, its limit and its restarts, in Prometheus's text format (for
/// node_exporter's textfile collector).
pub fn unit_metrics(status: &StatusReport) -> String {
    let mut text = String::new();
    let mut family = |name: &str, help: &str, value: &dyn Fn(&UnitStatusJson) -> Option<u64>| {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for c in &status.components {
            for u in &c.units {
                if let Some(v) = value(u) {
                    text.push_str(&format!(
                        "{name}{{component=\"{}\",unit=\"{}\"}} {v}\n",
                        c.name, u.name
                    ));
                }
            }
        }
    };
    family(
        "analytics_stack_unit_memory_bytes",
        "Memory of each stack unit (cgroup accounting).",
        &|u| u.memory_bytes,
    );
    family(
        "analytics_stack_unit_memory_limit_bytes",
        "The lower of each stack unit's MemoryHigh= and MemoryMax=, where it has one.",
        &|u| u.memory_limit_bytes,
    );
    family(
        "analytics_stack_unit_restarts",
        "Automatic restarts of each stack unit since it was started.",
        &|u| Some(u.restarts.into()),
    );
    text
}

/// The components of `hold` an apply installs but does not start: those that run no
/// unit yet and that this plan does not upgrade (an upgrade is health-gated by the
/// same apply, never deferred).
fn held_components<'a>(
    desired: &'a [ComponentSpec],
    hold: &[&str],
    upgrades: &[crate::upgrade::Upgrade],
    facts: &crate::facts::HostFacts,
) -> Vec<&'a ComponentSpec> {
    let running = |unit: &str| {
        facts
            .units
            .get(unit)
            .is_some_and(crate::facts::UnitFact::is_active)
    };
    desired
        .iter()
        .filter(|s| hold.contains(&s.name))
        .filter(|s| !upgrades.iter().any(|u| u.component == s.name))
        .filter(|s| !s.units.iter().any(|u| running(&u.name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::apt::AptSources;

    #[test]
    fn unit_metrics_give_each_unit_its_memory_and_a_limit_only_where_it_has_one() {
        let unit = |name: &str, limit: Option<u64>| UnitStatusJson {
            name: name.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 7,
            memory_bytes: Some(100),
            memory_limit_bytes: limit,
            restarts: 2,
        };
        let status = StatusReport {
            components: vec![ComponentStatus {
                name: "superset".into(),
                description: String::new(),
                healthy: true,
                version: String::new(),
                previous_version: None,
                held_version: None,
                units: vec![
                    unit("analytics-superset-web.service", Some(1 << 30)),
                    unit("analytics-superset-worker.service", None),
                ],
                probes: Vec::new(),
            }],
            archiving: None,
        };
        let text = unit_metrics(&status);
        assert!(text.contains("analytics_stack_unit_memory_limit_bytes{component=\"superset\",unit=\"analytics-superset-web.service\"} 1073741824\n"), "{text}");
        assert!(!text.contains("analytics_stack_unit_memory_limit_bytes{component=\"superset\",unit=\"analytics-superset-worker.service\"}"), "{text}");
        assert_eq!(
            text.matches("analytics_stack_unit_memory_bytes{").count(),
            2
        );
        assert_eq!(text.matches("analytics_stack_unit_restarts{").count(), 2);
        assert_eq!(text.matches("# TYPE ").count(), 3);
    }

    #[test]
    fn packages_come_from_the_bundle_else_the_mirror_else_the_host() {
        let plain = config::load_texts(&[]).unwrap();
        assert_eq!(apt_sources(&plain, "bookworm", None), AptSources::Host);
        let mirrored = config::load_texts(&[(
            "m.toml",
            "[apt]\nmirror = \"http://mirror.internal/debian\"\n",
        )])
        .unwrap();
        assert_eq!(
            apt_sources(&mirrored, "bookworm", None),
            AptSources::Only(
                "deb http://mirror.internal/debian bookworm main\ndeb http://mirror.internal/debian bookworm-updates main\n".into()
            )
        );
        let bundle = crate::bundle::Bundle {
            root: "/var/cache/analytics-stack/bundles/abc".into(),
            manifest: crate::bundle::Manifest {
                format: 1,
                distro: "bookworm".into(),
                arch: "amd64".into(),
                created_by: String::new(),
                debian_packages: vec![],
                archives: vec![],
                venvs: vec![],
                apt_suites: vec![crate::bundle::debian::AptSuite {
                    root: "debian".into(),
                    suite: "bookworm".into(),
                }],
                components: vec![],
                files: vec![],
            },
            suite_dates: Default::default(),
        };
        assert_eq!(
            apt_sources(&mirrored, "bookworm", Some(&bundle)),
            AptSources::Only(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg check-valid-until=no] file:/var/cache/analytics-stack/bundles/abc/debs/debian bookworm main\n".into()
            )
        );
        let bad = config::load_texts(&[("m.toml", "[apt]\nmirror = \"ftp://x\"\n")]);
        assert!(bad.is_err());
    }
}
