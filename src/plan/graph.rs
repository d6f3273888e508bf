//! What each step of a plan waits for: the plan as a graph, so that the executor runs
//! every step whose needs are met at once. Pure, like the planner.
//!
//! The plan's order stays the order of truth (`plan` prints it, a serial run is
//! still correct); the graph only says which earlier steps a step may *not* wait
//! for. Everything waits for everything before it except where a rule below says
//! otherwise, so a step kind nobody thought about stays serial:
//!
//! - **Installs** (apt, release archives, venvs) are long and touch their own files:
//!   a venv waits for uv (and the managed CPython) and, when its build needs Debian
//!   packages apt is installing (Debian's interpreter), for apt; an archive waits
//!   for nothing long.
//!   Both wait for the short steps before them that apt does not have to finish
//!   first (users, the stack's own directories).
//!   Archives go one at a time (a refused one stops those after it), venvs too
//!   (the executor's limit).
//! - **Preparation** (users, directories, secrets, files, units, systemd's reload)
//!   is short and stays in order; it waits for apt only where it names a user apt
//!   creates or a path outside the stack's own directories. It waits for every
//!   archive and venv before it: nothing of the stack's files and units is written
//!   before its software is verified, so a refused archive or wheel leaves no unit
//!   behind (`tests/e2e_attacks.rs`).
//! - **Starting** goes component by component as before (PostgreSQL's roles exist
//!   before Airflow migrates), except that nothing waits for an *application* (a
//!   component with a venv) to start but its own steps and the stack's target —
//!   nothing in the stack needs Airflow up for Superset to start, so their first
//!   migrations run at the same time.

use super::{Plan, Step};
use crate::model::{paths, ComponentSpec, Provision};
use std::path::Path;

/// The stack's own directories: a file or directory below them needs nothing a
/// Debian package brings.
const STACK_PREFIXES: [&str; 6] = [
    paths::ETC,
    paths::STATE,
    paths::OPT,
    "/var/cache/analytics-stack",
    "/var/log/analytics-stack",
    paths::UNIT_DIR,
];

/// For each step of a plan, the earlier steps it waits for (indices, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub needs: Vec<Vec<usize>>,
}

impl Graph {
    /// Every step after the one before it: today's executor, for plans that are not
    /// an apply's (uninstalls, rollbacks).
    pub fn serial(len: usize) -> Graph {
        Graph {
            needs: (0..len)
                .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                .collect(),
        }
    }

    /// Whether `step` waits, directly or not, for `earlier`.
    pub fn waits_for(&self, step: usize, earlier: usize) -> bool {
        let mut seen = vec![false; self.needs.len()];
        let mut todo = vec![step];
        while let Some(s) = todo.pop() {
            for &n in &self.needs[s] {
                if n == earlier {
                    return true;
                }
                if !seen[n] {
                    seen[n] = true;
                    todo.push(n);
                }
            }
        }
        false
    }
}

/// Who a start-phase step belongs to, for the starting rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner<'a> {
    Component(&'a str),
    /// No one component's (systemd's enable of all units, the stack's target): after
    /// every start-phase step before it.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    /// apt, a release archive or a venv.
    Install,
    Prepare,
    Start(Owner<'a>),
}

struct Ctx<'a> {
    desired: &'a [ComponentSpec],
}

impl<'a> Ctx<'a> {
    fn owner_of_unit(&self, unit: &str) -> Owner<'a> {
        self.desired
            .iter()
            .find(|s| s.units.iter().any(|u| u.name == unit))
            .map_or(Owner::All, |s| Owner::Component(s.name))
    }

    fn owner_of_provision(&self, p: &Provision) -> Owner<'a> {
        let id = p.id();
        self.desired
            .iter()
            .find(|s| s.init.iter().chain(&s.provision).any(|q| q.id() == id))
            .map_or(Owner::All, |s| Owner::Component(s.name))
    }

    fn component(&self, name: &str) -> Option<&'a ComponentSpec> {
        self.desired.iter().find(|s| s.name == name)
    }

    fn is_application(&self, name: &str) -> bool {
        self.component(name).is_some_and(|s| s.venv.is_some())
    }

    fn kind(&self, step: &'a Step) -> Kind<'a> {
        match step {
            Step::InstallPackages { .. } | Step::InstallArchive { .. } | Step::BuildVenv { .. } => {
                Kind::Install
            }
            Step::EnableUnits { .. } => Kind::Start(Owner::All),
            Step::StartUnit { unit } | Step::RestartUnit { unit } | Step::ReloadUnit { unit } => {
                Kind::Start(self.owner_of_unit(unit))
            }
            Step::Init { provision } | Step::Provision { provision } => {
                Kind::Start(self.owner_of_provision(provision))
            }
            Step::UpgradePostgres { .. } => Kind::Start(Owner::Component("postgres")),
            Step::RecordComponent { component, .. } => Kind::Start(
                self.component(component)
                    .map_or(Owner::All, |s| Owner::Component(s.name)),
            ),
            _ => Kind::Prepare,
        }
    }

    /// Whether a preparation step must wait for apt: it names a user or group that is
    /// neither root nor the stack's, or a path outside the stack's directories.
    fn needs_apt(&self, step: &Step) -> bool {
        let stack_user = |name: &str| {
            name == "root"
                || self
                    .desired
                    .iter()
                    .flat_map(|s| &s.users)
                    .any(|u| u.name == name)
        };
        let stack_path = |p: &Path| STACK_PREFIXES.iter().any(|pre| p.starts_with(pre));
        match step {
            Step::EnsureDir { dir } => {
                !(stack_user(&dir.owner) && stack_user(&dir.group) && stack_path(&dir.path))
            }
            Step::WriteFile { file, .. } => {
                !(stack_user(&file.owner) && stack_user(&file.group) && stack_path(&file.path))
            }
            // Users join only groups systemd or the stack make
            // (`stack_users_join_no_group_a_package_makes`).
            Step::CreateUser { .. }
            | Step::GenerateSecret { .. }
            | Step::InstallCertificate { .. }
            | Step::WriteUnit { .. }
            | Step::ReloadSystemd
            | Step::RecordPending { .. } => false,
            _ => true,
        }
    }

    fn writes_below(step: &Step, root: &Path) -> bool {
        match step {
            Step::EnsureDir { dir } => dir.path.starts_with(root),
            Step::WriteFile { file, .. } => file.path.starts_with(root),
            Step::RemoveFile { path } => path.starts_with(root),
            _ => false,
        }
    }

    /// Whether step `j` waits for the earlier step `i` (directly).
    fn waits(&self, steps: &'a [Step], apt: Option<usize>, i: usize, j: usize) -> bool {
        let (earlier, later) = (&steps[i], &steps[j]);
        let apt_before = |k: usize| apt.is_some_and(|a| a < k);
        match (self.kind(earlier), self.kind(later)) {
            (Kind::Install, Kind::Install) => match (earlier, later) {
                // One dpkg at a time. Archives one at a time too: a refused one stops
                // those after it as before (downloads share the link anyway).
                (Step::InstallPackages { .. }, Step::InstallPackages { .. })
                | (Step::InstallArchive { .. }, Step::InstallArchive { .. }) => true,
                (Step::InstallArchive { pin }, Step::BuildVenv { venv }) => {
                    venv.tool_pins().any(|t| t == pin)
                }
                (Step::InstallPackages { packages }, Step::BuildVenv { venv }) => {
                    venv.build_packages.iter().any(|p| packages.contains(p))
                }
                _ => false,
            },
            // Nothing of the stack's files and units is written before every archive
            // and venv verified and installed: a refused one leaves no unit behind.
            (Kind::Install, Kind::Prepare) => match earlier {
                Step::InstallPackages { .. } => self.needs_apt(later),
                _ => true,
            },
            // Starts wait for every install already (through the files and units).
            (Kind::Install, Kind::Start(_)) => true,
            // Short steps apt must finish first are not the installs' business, nor
            // that of the short steps after them that apt does not concern.
            (Kind::Prepare, Kind::Install) => !(apt_before(i) && self.needs_apt(earlier)),
            (Kind::Prepare, Kind::Prepare) => {
                !(apt_before(i) && self.needs_apt(earlier))
                    || self.needs_apt(later)
                    || matches!(earlier, Step::EnsureDir { dir } if Self::writes_below(later, &dir.path))
            }
            (Kind::Prepare, Kind::Start(_)) => true,
            (Kind::Start(_), Kind::Install | Kind::Prepare) => true,
            (Kind::Start(a), Kind::Start(b)) => match (a, b) {
                (Owner::Component(a), Owner::Component(b)) => a == b || !self.is_application(a),
                _ => true,
            },
        }
    }
}

/// The graph of an apply's plan for the components `desired`.
pub fn graph(plan: &Plan, desired: &[ComponentSpec]) -> Graph {
    let ctx = Ctx { desired };
    let steps = &plan.steps;
    let apt = steps
        .iter()
        .position(|s| matches!(s, Step::InstallPackages { .. }));
    let needs = (0..steps.len())
        .map(|j| (0..j).filter(|&i| ctx.waits(steps, apt, i, j)).collect())
        .collect();
    Graph { needs }
}
