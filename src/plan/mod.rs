//! The planner: `(desired components, host facts, recorded state) → steps`. Pure: no
//! I/O, so `plan` can always be shown, and a second apply of an unchanged config
//! plans nothing.

use crate::facts::{HostFacts, Ownership};
use crate::model::*;
use crate::state::{DistroUnitBefore, RecordedState};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    MaskDistroUnit {
        unit: String,
        before: DistroUnitBefore,
    },
    InstallPackages {
        packages: Vec<String>,
    },
    InstallArchive {
        pin: crate::artifact::catalog::ArchivePin,
    },
    /// A component's Debian package is not the version the last healthy apply saw
    /// (apt upgraded it): its units restart onto it, health-gated like any upgrade.
    PackageChanged {
        component: String,
        package: String,
        from: String,
        to: String,
    },
    /// Build the venv from its lock file with uv (or reuse a complete build of the
    /// same lock) and point `current` at it.
    BuildVenv {
        venv: Box<VenvSpec>,
    },
    CreateUser {
        user: UserSpec,
    },
    EnsureDir {
        dir: DirSpec,
    },
    GenerateSecret {
        name: String,
    },
    /// Issue (self-signed) or install (operator's files) the certificate NGINX serves.
    InstallCertificate {
        tls: crate::tls::TlsSpec,
        why: &'static str,
    },
    WriteFile {
        file: FileSpec,
        why: &'static str,
    },
    WriteUnit {
        unit: UnitSpec,
        why: &'static str,
    },
    RemoveFile {
        path: PathBuf,
    },
    /// Records, before anything is written, which units must restart or reload and
    /// whether systemd must reload: a killed apply's successor still does them.
    RecordPending {
        units: BTreeMap<String, OnChange>,
        daemon_reload: bool,
    },
    ReloadSystemd,
    Init {
        provision: Provision,
    },
    /// The stack's cluster of an older PostgreSQL major, upgraded with `pg_upgrade`
    /// into the configured major's directory (a copy: the old cluster stays as it
    /// was until the new one is healthy). Apply takes a backup first.
    UpgradePostgres {
        from: u32,
        to: u32,
        from_data: PathBuf,
        to_data: PathBuf,
        user: String,
    },
    EnableUnits {
        units: Vec<String>,
    },
    DisableUnits {
        units: Vec<String>,
    },
    StartUnit {
        unit: String,
    },
    RestartUnit {
        unit: String,
    },
    ReloadUnit {
        unit: String,
    },
    StopUnit {
        unit: String,
    },
    Provision {
        provision: Provision,
    },
    /// Unmask a distribution unit and put it back as it was before the stack.
    RestoreDistroUnit {
        unit: String,
        before: DistroUnitBefore,
    },
    DeleteUser {
        user: String,
    },
    /// Remove a directory tree the stack created.
    RemoveTree {
        path: PathBuf,
    },
    /// Remove the state file: the stack owns nothing any more.
    ForgetState,
    RecordComponent {
        component: String,
        installed: bool,
    },
}

impl Step {
    /// The phase of an apply the step belongs to, for the timings an apply logs.
    pub fn phase(&self) -> &'static str {
        match self {
            Step::InstallPackages { .. } => "packages",
            Step::InstallArchive { .. } => "archives",
            Step::BuildVenv { .. } => "venvs",
            Step::Init { .. } | Step::Provision { .. } | Step::UpgradePostgres { .. } => {
                "initialise and provision"
            }
            Step::StartUnit { .. }
            | Step::RestartUnit { .. }
            | Step::ReloadUnit { .. }
            | Step::StopUnit { .. } => "unit jobs",
            _ => "users, directories, files, units",
        }
    }

    /// A one-line human description, safe to print (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Step::MaskDistroUnit { unit, before } => format!(
                "keep the distribution's {unit} stopped and masked (was {}{})",
                before.unit_file_state,
                if before.was_active { ", running" } else { "" }
            ),
            Step::InstallPackages { packages } => {
                format!("install Debian packages: {}", packages.join(" "))
            }
            Step::InstallArchive { pin } => format!(
                "install {} {} from {} (verified: {})",
                pin.component,
                pin.version,
                crate::config::redact_url(&pin.url),
                crate::artifact::trust::describe(pin, None)
            ),
            Step::PackageChanged {
                component,
                package,
                from,
                to,
            } => format!(
                "restart {component} on its upgraded Debian package {package} ({from} → {to})"
            ),
            Step::BuildVenv { venv } => format!(
                "build the {} venv {} from its lock file with uv (hashes required) on {} ({})",
                venv.name,
                venv.id,
                venv.interpreter.display(),
                venv.python_why
            ),
            Step::CreateUser { user } => format!("create system user {}", user.name),
            Step::EnsureDir { dir } => format!(
                "directory {} ({:o} {}:{})",
                dir.path.display(),
                dir.mode,
                dir.owner,
                dir.group
            ),
            Step::GenerateSecret { name } => format!("generate secret {name}"),
            Step::InstallCertificate { tls, why } => match tls {
                crate::tls::TlsSpec::SelfSigned { names, addresses } => format!(
                    "issue a certificate from the stack CA for {} ({why})",
                    names
                        .iter()
                        .cloned()
                        .chain(addresses.iter().map(ToString::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                crate::tls::TlsSpec::Files { certificate, key } => format!(
                    "install the certificate {} and key {} ({why})",
                    certificate.display(),
                    key.display()
                ),
            },
            Step::WriteFile { file, why } => format!("write {} ({why})", file.path.display()),
            Step::WriteUnit { unit, why } => format!("write unit {} ({why})", unit.name),
            Step::RemoveFile { path } => format!("remove {}", path.display()),
            Step::RecordPending {
                units,
                daemon_reload,
            } => {
                let mut what: Vec<String> = units
                    .iter()
                    .map(|(u, how)| match how {
                        OnChange::Restart => format!("{u} (to restart)"),
                        OnChange::Reload => format!("{u} (to reload)"),
                    })
                    .collect();
                if *daemon_reload {
                    what.insert(0, "systemd's daemon-reload".into());
                }
                format!("note as due until done: {}", what.join(", "))
            }
            Step::ReloadSystemd => "reload systemd".into(),
            Step::Init { provision } | Step::Provision { provision } => match provision {
                Provision::PostgresInitdb { data_dir, .. } => {
                    format!("initialise PostgreSQL cluster in {}", data_dir.display())
                }
                Provision::PostgresRoles { roles, .. } => format!(
                    "ensure PostgreSQL roles and databases: {}",
                    roles
                        .iter()
                        .map(|r| r.role.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Provision::PgBackRestStanza {
                    stanza, repository, ..
                } => format!(
                    "ensure pgBackRest stanza {stanza} in {} archives, with a base backup",
                    repository.display()
                ),
            },
            Step::UpgradePostgres {
                from,
                to,
                from_data,
                to_data,
                ..
            } => format!(
                "upgrade PostgreSQL {from} → {to}: pg_upgrade {} into {} (after a backup; the {from} cluster is kept until {to} is healthy)",
                from_data.display(),
                to_data.display()
            ),
            Step::EnableUnits { units } => format!("enable {}", units.join(" ")),
            Step::DisableUnits { units } => format!("disable {}", units.join(" ")),
            Step::StartUnit { unit } => format!("start {unit}"),
            Step::RestartUnit { unit } => format!("restart {unit}"),
            Step::ReloadUnit { unit } => format!("reload {unit}"),
            Step::StopUnit { unit } => format!("stop {unit}"),
            Step::RestoreDistroUnit { unit, before } => format!(
                "restore the distribution's {unit} ({}{})",
                before.unit_file_state,
                if before.was_active { ", running" } else { "" }
            ),
            Step::DeleteUser { user } => format!("delete system user {user}"),
            Step::RemoveTree { path } => format!("remove {} and everything in it", path.display()),
            Step::ForgetState => format!("remove {}", paths::STATE_FILE),
            Step::RecordComponent {
                component,
                installed,
            } => format!(
                "record {component} as {}",
                if *installed { "installed" } else { "removed" }
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The plan without starting `units` (which are not running), nor the stack's
    /// target, which would start them through its wants: they are installed,
    /// enabled and configured, and started later by whoever held them.
    pub fn without_starting(mut self, units: &BTreeSet<String>) -> Plan {
        if !units.is_empty() {
            self.steps.retain(|s| match s {
                Step::StartUnit { unit } => !units.contains(unit) && unit != paths::TARGET,
                _ => true,
            });
        }
        self
    }
}

/// A port the stack needs that another process holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortConflict {
    pub port: u16,
    pub wanted_by: String,
    pub holder: String,
}

impl std::fmt::Display for PortConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "port {} wanted by {} is held by {}",
            self.port, self.wanted_by, self.holder
        )
    }
}

fn is_stack_unit(unit: &str) -> bool {
    crate::components::KNOWN.iter().any(|(name, _)| {
        crate::components::unit_names(name)
            .iter()
            .any(|u| u == unit)
    })
}

/// Secrets a file names that the host does not have and no component generates:
/// a worker host's logins and Superset's key, which only `join` gives. Named before
/// anything is installed, rather than by a failed write halfway through an apply.
pub fn missing_secrets(desired: &[ComponentSpec], facts: &HostFacts) -> Vec<String> {
    let generated: BTreeSet<&String> = desired.iter().flat_map(|s| &s.secrets).collect();
    let mut problems = Vec::new();
    for file in desired.iter().flat_map(|s| s.all_files()) {
        let named: BTreeSet<String> = file.secret_names().into_iter().collect();
        for name in named {
            if !generated.contains(&name) && !facts.secrets.contains_key(&name) {
                problems.push(format!(
                    "{} needs the secret {name}, which this host does not have and the stack does not generate: a worker host gets its secrets from `analytics-stack join` (Superset's key only with a token from a primary with [workers] superset = true)",
                    file.path.display()
                ));
            }
        }
    }
    problems
}

/// Ports wanted by the stack that a process outside the unit meant to own them holds.
pub fn port_conflicts(desired: &[ComponentSpec], facts: &HostFacts) -> Vec<PortConflict> {
    let mut conflicts = Vec::new();
    for spec in desired {
        for want in &spec.ports {
            for l in facts.listeners.iter().filter(|l| l.port == want.port) {
                let overlaps = l.address == want.address
                    || l.address.is_unspecified()
                    || want.address.is_unspecified();
                // The stack's own units are no conflict: the wanted one is already
                // there, and the unit of a component being turned off (e.g. Alloy
                // replaced by Promtail) is stopped before anything starts.
                if !overlaps || l.unit.as_deref().is_some_and(is_stack_unit) {
                    continue;
                }
                let holder = match (&l.process, l.pid, &l.unit) {
                    (Some(p), Some(pid), Some(u)) => format!("{p} (pid {pid}, {u})"),
                    (Some(p), Some(pid), None) => format!("{p} (pid {pid})"),
                    _ => format!("another process on {}", l.address),
                };
                conflicts.push(PortConflict {
                    port: want.port,
                    wanted_by: want.unit.clone(),
                    holder,
                });
            }
        }
    }
    conflicts.dedup();
    conflicts
}

fn ownership_matches(actual: Option<&Ownership>, mode: u32, owner: &str, group: &str) -> bool {
    actual.is_some_and(|o| o.mode == mode && o.owner == owner && o.group == group)
}

/// What a file write should be, compared with what is there.
fn file_change(file: &FileSpec, facts: &HostFacts) -> Option<&'static str> {
    let Some(actual) = facts.files.get(&file.path) else {
        return Some("new");
    };
    let filled = fill_secrets(&file.template, |n| facts.secrets.get(n).cloned());
    match filled {
        None => Some("new secret"),
        Some(text) if crate::util::sha256_hex(text.as_bytes()) != actual.sha256 => Some("changed"),
        Some(_)
            if !ownership_matches(Some(&actual.ownership), file.mode, &file.owner, &file.group) =>
        {
            Some("ownership")
        }
        Some(_) => None,
    }
}

fn unit_change(unit: &UnitSpec, facts: &HostFacts) -> Option<&'static str> {
    match facts.files.get(&unit.path()) {
        None => Some("new"),
        Some(a) if a.sha256 != crate::util::sha256_hex(unit.content.as_bytes()) => Some("changed"),
        Some(a) if !ownership_matches(Some(&a.ownership), 0o644, "root", "root") => {
            Some("ownership")
        }
        Some(_) => None,
    }
}

/// Stops the active ones of `units` (last first) and disables those that have a unit
/// file; returns the latter.
pub(crate) fn stop_and_disable(
    units: &[String],
    facts: &HostFacts,
    steps: &mut Vec<Step>,
) -> Vec<String> {
    for unit in units.iter().rev() {
        if facts.units.get(unit).is_some_and(|f| f.is_active()) {
            steps.push(Step::StopUnit { unit: unit.clone() });
        }
    }
    let present: Vec<String> = units
        .iter()
        .filter(|u| {
            facts
                .files
                .contains_key(&PathBuf::from(paths::UNIT_DIR).join(u))
        })
        .cloned()
        .collect();
    if !present.is_empty() {
        steps.push(Step::DisableUnits {
            units: present.clone(),
        });
    }
    present
}

/// Components turned off since the last apply, and units an enabled component no
/// longer runs (Airflow's triggerer under a tight memory budget): stopped, disabled
/// and their unit files removed, data kept. True when a unit file is removed.
fn retire_units(
    desired: &[ComponentSpec],
    facts: &HostFacts,
    state: &RecordedState,
    steps: &mut Vec<Step>,
) -> bool {
    let wanted: BTreeSet<&str> = desired.iter().map(|s| s.name).collect();
    let mut removed_units = false;
    for gone in state
        .components
        .iter()
        .filter(|c| !wanted.contains(c.as_str()))
    {
        removed_units |= remove_units(&crate::components::unit_names(gone), facts, steps);
        steps.push(Step::RecordComponent {
            component: gone.clone(),
            installed: false,
        });
    }
    for spec in desired {
        let dropped: Vec<String> = crate::components::unit_names(spec.name)
            .into_iter()
            .filter(|u| !spec.units.iter().any(|s| &s.name == u))
            .collect();
        removed_units |= remove_units(&dropped, facts, steps);
    }
    removed_units
}

/// Stops and disables `units` and removes their files; true when a file is removed.
fn remove_units(units: &[String], facts: &HostFacts, steps: &mut Vec<Step>) -> bool {
    let present = stop_and_disable(units, facts, steps);
    for u in &present {
        steps.push(Step::RemoveFile {
            path: PathBuf::from(paths::UNIT_DIR).join(u),
        });
    }
    !present.is_empty()
}

/// What one-time setup still needs doing. A PostgreSQL cluster of the configured
/// major that does not exist yet is upgraded from the newest older cluster of the
/// stack's when there is one — never initialised empty beside it.
fn init_step(p: &Provision, facts: &HostFacts, state: &RecordedState) -> Option<Step> {
    let done = match p {
        Provision::PostgresInitdb { data_dir, user, .. } => {
            if facts.existing.contains(&data_dir.join("PG_VERSION")) {
                true
            } else {
                let to = postgres_major_of(data_dir)?;
                if let Some((from, from_data)) = facts.postgres_clusters.range(..to).next_back() {
                    return Some(Step::UpgradePostgres {
                        from: *from,
                        to,
                        from_data: from_data.clone(),
                        to_data: data_dir.clone(),
                        user: user.clone(),
                    });
                }
                false
            }
        }
        Provision::PostgresRoles { .. } | Provision::PgBackRestStanza { .. } => {
            state.provisioned.get(&p.id()) == Some(&p.fingerprint())
        }
    };
    (!done).then(|| Step::Init {
        provision: p.clone(),
    })
}

/// The major a stack cluster directory is for (`…/postgres/MAJOR`).
fn postgres_major_of(data_dir: &std::path::Path) -> Option<u32> {
    data_dir.file_name()?.to_str()?.parse().ok()
}

/// Why apply must refuse before changing anything: the stack's cluster is of a
/// newer major than the configuration runs (PostgreSQL cannot go back).
pub fn postgres_problems(desired: &[ComponentSpec], facts: &HostFacts) -> Vec<String> {
    let mut problems = Vec::new();
    for p in desired.iter().flat_map(|s| &s.init) {
        let Provision::PostgresInitdb { data_dir, .. } = p else {
            continue;
        };
        let Some(to) = postgres_major_of(data_dir) else {
            continue;
        };
        if facts.existing.contains(&data_dir.join("PG_VERSION")) {
            continue;
        }
        if let Some((newer, dir)) = facts.postgres_clusters.range(to + 1..).next() {
            problems.push(format!(
                "the stack's PostgreSQL {newer} cluster is in {}, but this configuration runs PostgreSQL {to}: PostgreSQL cannot be downgraded; set [postgres] major = {newer} (and install postgresql-{newer}), or restore a backup",
                dir.display()
            ));
        }
    }
    problems
}

/// Whether `version` of `component` was rolled back from (and a version to stay on
/// is in place): apply leaves the component as it is until `unhold`.
fn is_held(
    component: &str,
    version: &str,
    running: Option<&String>,
    state: &RecordedState,
) -> bool {
    running.is_some() && state.held.get(component).is_some_and(|h| h == version)
}

/// What apply leaves on an older version because the desired one was rolled back.
pub fn held_upgrades(
    desired: &[ComponentSpec],
    facts: &HostFacts,
    state: &RecordedState,
) -> Vec<String> {
    desired
        .iter()
        .filter_map(|spec| {
            let (wanted, running) = match (&spec.venv, &spec.archive) {
                (Some(v), _) => (&v.id, facts.venvs.get(&v.name)),
                (None, Some(pin)) => (&pin.version, facts.current_archives.get(&pin.component)),
                // PostgreSQL is rendered for the major its cluster is of while the
                // newer major is held (see Stack::desired).
                (None, None) => {
                    let held = state.held.get(spec.name)?;
                    let runs = spec.version_package.strip_prefix("postgresql-")?;
                    return (runs != held).then(|| {
                        format!(
                            "postgres stays on PostgreSQL {runs}: the upgrade to {held} was rolled back (`analytics-stack unhold postgres` to try it again)"
                        )
                    });
                }
            };
            let running = running?;
            is_held(spec.name, wanted, Some(running), state).then(|| {
                format!(
                    "{} stays on {running}: {wanted} was rolled back (`analytics-stack unhold {}` to try it again)",
                    spec.name, spec.name
                )
            })
        })
        .collect()
}

/// The component's Debian package, when its installed version differs from the one
/// the last healthy apply recorded (only components that are their package: an
/// archive's or a venv's version is its own).
pub fn package_change(
    spec: &ComponentSpec,
    facts: &HostFacts,
    state: &RecordedState,
) -> Option<Step> {
    if spec.archive.is_some() || spec.venv.is_some() || spec.version_package.is_empty() {
        return None;
    }
    let package = &spec.version_package;
    let from = state.package_versions.get(package)?;
    let to = facts.packages.get(package)?;
    (from != to).then(|| Step::PackageChanged {
        component: spec.name.to_string(),
        package: package.clone(),
        from: from.clone(),
        to: to.clone(),
    })
}

/// Plans the steps that bring the host from `facts` to `desired`.
pub fn plan(desired: &[ComponentSpec], facts: &HostFacts, state: &RecordedState) -> Plan {
    let mut steps = Vec::new();
    let unit_fact = |u: &str| facts.units.get(u).cloned().unwrap_or_default();

    let removed_units = retire_units(desired, facts, state, &mut steps);

    // The distribution's own services must not run beside the stack's.
    for spec in desired {
        for unit in &spec.distro_units {
            let f = unit_fact(unit);
            if f.unit_file_state != "masked" || f.is_active() {
                let before = state
                    .distro_units
                    .get(unit)
                    .cloned()
                    .unwrap_or(DistroUnitBefore {
                        unit_file_state: if f.unit_file_state.is_empty() {
                            "not-found".into()
                        } else {
                            f.unit_file_state.clone()
                        },
                        was_active: f.is_active(),
                    });
                steps.push(Step::MaskDistroUnit {
                    unit: unit.clone(),
                    before,
                });
            }
        }
    }

    // Users before the packages: the venvs (built as the unprivileged build user)
    // need them while apt installs, and useradd must not race dpkg's own adduser for
    // /etc/passwd's lock. They join only groups systemd or the stack make
    // (`graph::tests::stack_users_join_no_group_a_package_makes`). Several
    // components may name one user.
    let mut named = std::collections::BTreeSet::new();
    for user in desired.iter().flat_map(|s| s.users.iter()) {
        if !facts.users.contains(&user.name) && named.insert(user.name.as_str()) {
            steps.push(Step::CreateUser { user: user.clone() });
        }
    }

    // Files that shape how packages install, then the packages.
    for spec in desired {
        for file in &spec.pre_install_files {
            if let Some(why) = file_change(file, facts) {
                if let Some(parent) = file.path.parent() {
                    if !facts.dirs.contains_key(parent) {
                        steps.push(Step::EnsureDir {
                            dir: DirSpec {
                                path: parent.into(),
                                mode: 0o755,
                                owner: "root".into(),
                                group: "root".into(),
                            },
                        });
                    }
                }
                steps.push(Step::WriteFile {
                    file: file.clone(),
                    why,
                });
            }
        }
    }
    // In the order the components name them, each once (the applications share python3).
    let mut named = BTreeSet::new();
    let missing: Vec<String> = desired
        .iter()
        .flat_map(|s| s.packages.iter())
        .filter(|p| !facts.packages.contains_key(*p) && named.insert(p.as_str()))
        .cloned()
        .collect();
    // What a venv's build needs (Debian's python3) first and alone, when a venv is
    // to be built: the builds then run beside the rest of apt's work.
    let for_builds: BTreeSet<&String> = desired
        .iter()
        .filter_map(|s| s.venv.as_ref())
        .filter(|v| facts.venvs.get(&v.name) != Some(&v.id))
        .flat_map(|v| &v.build_packages)
        .collect();
    let (first, rest): (Vec<String>, Vec<String>) =
        missing.into_iter().partition(|p| for_builds.contains(p));
    for packages in [first, rest] {
        if !packages.is_empty() {
            steps.push(Step::InstallPackages { packages });
        }
    }

    // Directories once their owners exist, before anything is built into them.
    let base_dirs = [
        DirSpec {
            path: paths::STATE.into(),
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
        },
        DirSpec {
            path: paths::SECRETS.into(),
            mode: 0o700,
            owner: "root".into(),
            group: "root".into(),
        },
    ];
    let mut seen_dirs = BTreeSet::new();
    for dir in base_dirs
        .iter()
        .chain(desired.iter().flat_map(|s| s.dirs.iter()))
    {
        if !seen_dirs.insert(&dir.path) {
            continue;
        }
        if !ownership_matches(facts.dirs.get(&dir.path), dir.mode, &dir.owner, &dir.group) {
            steps.push(Step::EnsureDir { dir: dir.clone() });
        }
    }

    // Venvs: uv first (a verified artifact, fetched only when a venv must be built),
    // then each venv whose lock file is not the one in use. uv (and the managed
    // CPython) before the components' archives: archives install one at a time,
    // and the venvs wait only for these.
    let stale_venvs: Vec<(&ComponentSpec, &VenvSpec)> = desired
        .iter()
        .filter_map(|s| s.venv.as_ref().map(|v| (s, v)))
        .filter(|(_, v)| facts.venvs.get(&v.name) != Some(&v.id))
        .filter(|(s, v)| !is_held(s.name, &v.id, facts.venvs.get(&v.name), state))
        .collect();
    // Then the managed CPython of each venv built on it, once each.
    let mut tools: Vec<&crate::artifact::catalog::ArchivePin> = Vec::new();
    for pin in stale_venvs.iter().flat_map(|(_, v)| v.tool_pins()) {
        if !tools.contains(&pin) {
            tools.push(pin);
        }
    }
    for pin in tools {
        if !facts
            .archives
            .contains(&(pin.component.clone(), pin.version.clone()))
        {
            steps.push(Step::InstallArchive { pin: pin.clone() });
        }
    }
    // What a killed apply changed and did not yet restart is still due.
    let mut notified: BTreeMap<String, OnChange> = state.pending_restarts.clone();
    for spec in desired {
        if let Some(pin) = &spec.archive {
            if is_held(
                spec.name,
                &pin.version,
                facts.current_archives.get(&pin.component),
                state,
            ) {
                continue;
            }
            let installed = facts
                .archives
                .contains(&(pin.component.clone(), pin.version.clone()));
            let current = facts.current_archives.get(&pin.component) == Some(&pin.version);
            if !(installed && current) {
                steps.push(Step::InstallArchive { pin: pin.clone() });
                // A new version restarts the component's running units.
                for unit in &spec.units {
                    notified.insert(unit.name.clone(), OnChange::Restart);
                }
            }
        }
    }

    // Packages apt upgraded since the last healthy apply: the units still run the
    // old programs until they restart.
    for spec in desired {
        if let Some(step) = package_change(spec, facts, state) {
            for unit in &spec.units {
                notified.insert(unit.name.clone(), OnChange::Restart);
            }
            steps.push(step);
        }
    }

    for (spec, venv) in stale_venvs {
        steps.push(Step::BuildVenv {
            venv: Box::new(venv.clone()),
        });
        for unit in &spec.units {
            notified.insert(unit.name.clone(), OnChange::Restart);
        }
    }

    let mut new_secrets = BTreeSet::new();
    for name in desired.iter().flat_map(|s| s.secrets.iter()) {
        if !facts.secrets.contains_key(name) && new_secrets.insert(name.clone()) {
            steps.push(Step::GenerateSecret { name: name.clone() });
        }
    }

    // The certificate before NGINX's configuration names it; NGINX reads it (as a
    // credential) only when it starts.
    for spec in desired {
        if let Some(tls) = &spec.tls {
            if let Some(why) = crate::tls::change(tls, facts.tls.as_ref()) {
                steps.push(Step::InstallCertificate {
                    tls: tls.clone(),
                    why,
                });
                for unit in &spec.units {
                    notified.insert(unit.name.clone(), OnChange::Restart);
                }
                // Every unit that loads a certificate or key issued with it (the
                // primary's client certificate: the log shipper, Prometheus,
                // Grafana; the server's: PostgreSQL for workers) holds a copy made
                // at its start.
                for unit in desired.iter().flat_map(|s| s.units.iter()) {
                    let loads_one = unit.content.lines().any(|l| {
                        l.starts_with("LoadCredential=")
                            && l.contains(&format!(":{}/", crate::tls::DIR))
                    });
                    if loads_one {
                        notified.insert(unit.name.clone(), OnChange::Restart);
                    }
                }
            }
        }
    }

    // Configuration files, remembering which units must restart or reload.
    for file in desired.iter().flat_map(|s| s.files.iter()) {
        if let Some(why) = file_change(file, facts) {
            steps.push(Step::WriteFile {
                file: file.clone(),
                why,
            });
            for (unit, how) in &file.notify {
                let e = notified.entry(unit.clone()).or_insert(*how);
                if *how == OnChange::Restart {
                    *e = OnChange::Restart;
                }
            }
        }
    }

    let target = crate::units::stack_target();
    let all_units: Vec<&UnitSpec> = std::iter::once(&target)
        .chain(desired.iter().flat_map(|s| s.units.iter()))
        .collect();
    let mut wrote_units = removed_units;
    for unit in &all_units {
        if let Some(why) = unit_change(unit, facts) {
            steps.push(Step::WriteUnit {
                unit: (*unit).clone(),
                why,
            });
            wrote_units = true;
            if why != "new" {
                notified.insert(unit.name.clone(), OnChange::Restart);
            }
        }
    }
    if wrote_units || state.daemon_reload_pending {
        steps.push(Step::ReloadSystemd);
    }
    // Recorded first, so that it outlives a kill between a write and its restart.
    let running = |u: &String| facts.units.get(u).is_some_and(|f| f.is_active());
    let due: BTreeMap<String, OnChange> = notified
        .iter()
        .filter(|(u, _)| running(u))
        .filter(|(u, how)| state.pending_restarts.get(*u) != Some(how))
        .map(|(u, how)| (u.clone(), *how))
        .collect();
    let reload_due = wrote_units && !state.daemon_reload_pending;
    if !due.is_empty() || reload_due {
        steps.insert(
            0,
            Step::RecordPending {
                units: due,
                daemon_reload: reload_due,
            },
        );
    }

    for spec in desired {
        for p in &spec.init {
            if let Some(step) = init_step(p, facts, state) {
                steps.push(step);
            }
        }
    }

    let to_enable: Vec<String> = all_units
        .iter()
        .filter(|u| !u.triggered && !unit_fact(&u.name).is_enabled())
        .map(|u| u.name.clone())
        .collect();
    if !to_enable.is_empty() {
        steps.push(Step::EnableUnits { units: to_enable });
    }

    // Component by component, in start order: its units, then its provisioning, so
    // that e.g. PostgreSQL's roles exist before Airflow's migration connects.
    for spec in desired {
        for unit in spec.units.iter().filter(|u| !u.triggered) {
            let f = unit_fact(&unit.name);
            if !f.is_active() {
                steps.push(Step::StartUnit {
                    unit: unit.name.clone(),
                });
            } else {
                match notified.get(&unit.name) {
                    Some(OnChange::Restart) => steps.push(Step::RestartUnit {
                        unit: unit.name.clone(),
                    }),
                    Some(OnChange::Reload) => steps.push(Step::ReloadUnit {
                        unit: unit.name.clone(),
                    }),
                    None => {}
                }
            }
        }
        for p in &spec.provision {
            let uses_new_secret = match p {
                Provision::PostgresRoles { roles, .. } => roles
                    .iter()
                    .any(|r| new_secrets.contains(&r.password_secret)),
                Provision::PostgresInitdb { .. } | Provision::PgBackRestStanza { .. } => false,
            };
            if uses_new_secret || state.provisioned.get(&p.id()) != Some(&p.fingerprint()) {
                steps.push(Step::Provision {
                    provision: p.clone(),
                });
            }
        }
        if !state.components.contains(spec.name) {
            steps.push(Step::RecordComponent {
                component: spec.name.into(),
                installed: true,
            });
        }
    }
    if !unit_fact(&target.name).is_active() {
        steps.push(Step::StartUnit {
            unit: target.name.clone(),
        });
    }

    Plan { steps }
}

pub mod graph;
pub mod uninstall;

#[cfg(test)]
mod tests;
