//! The memory budget, pure: from the configuration and the host's memory and cores,
//! the sizes the stack runs at and each unit's memory limits.
//!
//! Without a budget nothing changes: every component runs at the sizes configured and
//! no unit gets a limit. Under one (`[stack] memory_budget`, or `profile = "edge"`),
//! [`fit`] first caps worker counts at the host's cores, then applies [`REDUCTIONS`] in
//! order — cheapest loss first — until the expected idle memory of every unit fits;
//! each reduction is reported as a choice. Working memory (a task, a query) comes on
//! top of the budget, bounded per unit by its `MemoryMax=`. A budget the enabled
//! components cannot fit even at their smallest is refused with the table, before
//! anything changes.
//!
//! The expected figures are idle PSS measured on this stack (`cargo bench --bench
//! memory`; docs/benchmarks.md has the run). Loki, Promtail and statsd_exporter are measured
//! by `tests/e2e_edge.rs` with their real release builds under the edge budget (78, 65
//! and 21 MiB), which also holds each to what is reserved here. Grafana and Alloy,
//! whose real binaries cannot run on the test machines, are estimates, named in
//! docs/edge.md.

use crate::components::{self, Platform};
use crate::config::{ByteSize, Config, WorkerCount};
use serde::Serialize;
use std::fmt;

const MIB: u64 = 1 << 20;

/// What one unit is expected to hold, and the limits written into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitBudget {
    pub component: &'static str,
    pub unit: String,
    /// Expected PSS at idle.
    pub expected_mib: u64,
    /// What it adds while working (a task, a query, a scrape), at its configured size.
    pub working_mib: u64,
    /// `MemoryHigh=`: where the kernel starts reclaiming from it (see [`unit`]).
    pub high_mib: u64,
    /// `MemoryMax=`: the hard ceiling.
    pub max_mib: u64,
}

/// What the budget decided: the table `plan` prints and the limits units get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    pub budget_mib: u64,
    pub host_mib: u64,
    pub cpus: u32,
    pub units: Vec<UnitBudget>,
    /// Each setting the budget lowered or turned off: "airflow.worker_concurrency 2 → 1".
    pub choices: Vec<String>,
}

impl MemoryPlan {
    pub fn expected_mib(&self) -> u64 {
        self.units.iter().map(|u| u.expected_mib).sum()
    }
    /// The memory the busiest unit adds while working: what the host needs free
    /// beyond the budget.
    pub fn working_mib(&self) -> u64 {
        self.units.iter().map(|u| u.working_mib).max().unwrap_or(0)
    }
    pub fn limit_for(&self, unit: &str) -> Option<&UnitBudget> {
        self.units.iter().find(|u| u.unit == unit)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory budget {} MiB (host: {} MiB, {} cores)",
            self.budget_mib, self.host_mib, self.cpus
        )?;
        writeln!(
            f,
            "  {:<17} {:<40} {:>9} {:>8} {:>11} {:>10}",
            "component", "unit", "expected", "working", "MemoryHigh", "MemoryMax"
        )?;
        for u in &self.units {
            writeln!(
                f,
                "  {:<17} {:<40} {:>5} MiB {:>4} MiB {:>7} MiB {:>6} MiB",
                u.component, u.unit, u.expected_mib, u.working_mib, u.high_mib, u.max_mib
            )?;
        }
        write!(
            f,
            "  expected at idle {} MiB of {} MiB; while working, the busiest unit adds up to {} MiB",
            self.expected_mib(),
            self.budget_mib,
            self.working_mib(),
        )?;
        for c in &self.choices {
            write!(f, "\n  chosen for the budget: {c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("[stack] memory budget {budget_mib} MiB is more than this host has ({host_mib} MiB)")]
    AboveHost { budget_mib: u64, host_mib: u64 },
    #[error(
        "[stack] memory budget {budget_mib} MiB is too small for the enabled components: \
         at their smallest they need {needed_mib} MiB. Raise the budget or turn components \
         off (e.g. [grafana] enabled = false).\n{smallest}"
    )]
    TooSmall {
        budget_mib: u64,
        needed_mib: u64,
        /// The table at the smallest sizes, to show where the memory goes.
        smallest: Box<MemoryPlan>,
    },
}

/// The configuration to render under the budget, and the plan of limits; `None`
/// when there is no budget (the configuration is used as it is).
pub fn fit(
    config: &Config,
    platform: &Platform,
) -> Result<Option<(Config, MemoryPlan)>, BudgetError> {
    let Some(budget) = config.stack.budget_bytes() else {
        return Ok(None);
    };
    let budget_mib = budget / MIB;
    let host_mib = platform.memory_bytes / MIB;
    if platform.memory_bytes > 0 && budget_mib > host_mib {
        return Err(BudgetError::AboveHost {
            budget_mib,
            host_mib,
        });
    }
    let cpus = platform.cpus.max(1);
    let mut fitted = config.clone();
    let mut choices = cap_at_cores(&mut fitted, cpus);
    let plan_of = |c: &Config, choices: &[String]| MemoryPlan {
        budget_mib,
        host_mib,
        cpus,
        units: estimate(c),
        choices: choices.to_vec(),
    };
    let fits = |p: &MemoryPlan| p.expected_mib() <= budget_mib;
    let mut plan = plan_of(&fitted, &choices);
    for reduce in REDUCTIONS {
        if fits(&plan) {
            break;
        }
        choices.extend(reduce(&mut fitted));
        plan = plan_of(&fitted, &choices);
    }
    if !fits(&plan) {
        return Err(BudgetError::TooSmall {
            budget_mib,
            needed_mib: plan.expected_mib(),
            smallest: Box::new(plan),
        });
    }
    Ok(Some((fitted, plan)))
}

/// The worker pools a budget may shrink, by their configuration keys.
fn pools(c: &mut Config) -> [(&'static str, &mut WorkerCount); 3] {
    [
        ("superset.web_workers", &mut c.superset.web_workers),
        (
            "airflow.worker_concurrency",
            &mut c.airflow.worker_concurrency,
        ),
        (
            "superset.worker_concurrency",
            &mut c.superset.worker_concurrency,
        ),
    ]
}

/// Lowers every pool above `to` to it; `why` ends each choice's line.
fn lower_pools(c: &mut Config, to: u32, why: &str) -> Vec<String> {
    let to = WorkerCount::try_from(i64::from(to.clamp(1, 64))).expect("1..=64");
    let mut choices = Vec::new();
    for (name, count) in pools(c) {
        if count.get() > to.get() {
            choices.push(format!("{name} {} → {}{why}", count.get(), to.get()));
            *count = to;
        }
    }
    choices
}

/// Under a budget no pool has more processes than the host has cores.
fn cap_at_cores(c: &mut Config, cpus: u32) -> Vec<String> {
    lower_pools(c, cpus, " (cores)")
}

type Reduction = fn(&mut Config) -> Vec<String>;

/// In order: what is cheapest to lose first. Each returns what it changed.
pub const REDUCTIONS: &[Reduction] = &[
    // Smaller caches and buffers, smaller allocator arenas, no side processes: nothing
    // a user sees but speed on large data.
    |c| {
        let mut out = vec![];
        if !c.memory_constrained {
            c.memory_constrained = true;
            out.push(
                "small allocator arenas for the Python processes (MALLOC_ARENA_MAX=2), \
                 Prometheus and Loki query limits and caches reduced, the Airflow \
                 scheduler's health server off (its health is read from the API server)"
                    .to_string(),
            );
        }
        out.extend(lower_size(
            "postgres.shared_buffers",
            &mut c.postgres.shared_buffers,
            32,
        ));
        out.extend(lower_size("postgres.work_mem", &mut c.postgres.work_mem, 2));
        if c.postgres.max_connections.get() > 60 {
            out.push(format!(
                "postgres.max_connections {} → 60",
                c.postgres.max_connections.get()
            ));
            c.postgres.max_connections = 60.try_into().expect("in range");
        }
        out.extend(lower_size(
            "redis.broker.maxmemory",
            &mut c.redis.broker.maxmemory,
            64,
        ));
        out.extend(lower_size(
            "redis.cache.maxmemory",
            &mut c.redis.cache.maxmemory,
            64,
        ));
        out
    },
    // One process per pool: fewer requests and tasks at once.
    |c| lower_pools(c, 1, ""),
    // An Alertmanager with nowhere to send: Prometheus's alerts page still shows
    // what fires. One with receivers stays (its notifications are the point).
    |c| {
        let a = &c.alertmanager;
        if c.alertmanager_on() && a.email.to.is_empty() && a.webhook.urls.is_empty() {
            c.alertmanager.enabled = false;
            vec![
                "alertmanager off: no receivers are configured, so it would deliver \
                  nothing; firing alerts stay on Prometheus's /alerts"
                    .to_string(),
            ]
        } else {
            vec![]
        }
    },
    |c| {
        if c.superset.enabled && c.superset.celery_worker {
            c.superset.celery_worker = false;
            vec![
                "superset.celery_worker off: SQL Lab runs queries in the web process, \
                  no scheduled reports or thumbnails"
                    .to_string(),
            ]
        } else {
            vec![]
        }
    },
    |c| {
        if c.airflow.enabled && c.airflow.triggerer {
            c.airflow.triggerer = false;
            vec![
                "airflow.triggerer off: a task that defers (deferrable operators, \
                  async sensors) never resumes"
                    .to_string(),
            ]
        } else {
            vec![]
        }
    },
];

fn lower_size(name: &str, size: &mut ByteSize, mib: u64) -> Option<String> {
    (size.megabytes() > mib).then(|| {
        let before = size.megabytes();
        *size = ByteSize::try_from(format!("{mib}MB")).expect("a valid size");
        format!("{name} {before}MB → {mib}MB")
    })
}

/// One unit's figures: idle PSS and what working adds, in MiB. The limits are wider
/// than the figures because a cgroup is charged for more than its PSS: each page of
/// a shared library or of the page cache counts whole, to the unit that touched it
/// first (the venv's files, read by every Airflow process, land on one of them).
/// `MemoryHigh=` is half again the working size (where reclaim starts, on cgroup
/// v2); `MemoryMax=` twice it plus 128 MiB, the ceiling a runaway meets.
fn unit(
    component: &'static str,
    unit: impl Into<String>,
    expected: u64,
    working: u64,
) -> UnitBudget {
    let size = expected + working;
    UnitBudget {
        component,
        unit: unit.into(),
        expected_mib: expected,
        working_mib: working,
        high_mib: round_up(size + size / 2, 16),
        max_mib: round_up(2 * size + 128, 16),
    }
}

fn round_up(mib: u64, to: u64) -> u64 {
    mib.div_ceil(to) * to
}

/// The expected memory of every unit the configuration runs, from measured figures.
pub fn estimate(c: &Config) -> Vec<UnitBudget> {
    use components::*;
    let mut units = Vec::new();
    if c.postgres.enabled {
        let buffers = c.postgres.shared_buffers.megabytes();
        // Idle: the postmaster, its background processes and the buffers they touched
        // (measured 52–73 MiB at 32MB, 71 MiB at 128MB). Working: the buffers
        // filling, and a tenth of the connections sorting at work_mem each.
        let connections = u64::from(c.postgres.max_connections.get());
        units.push(unit(
            "postgres",
            postgres::UNIT,
            70 + buffers / 32,
            buffers + connections / 10 * (c.postgres.work_mem.megabytes() + 2),
        ));
    }
    if c.redis.enabled {
        // 4 MiB empty; the data up to maxmemory (the broker's queues stay small).
        for (name, instance) in [("broker", &c.redis.broker), ("cache", &c.redis.cache)] {
            units.push(unit(
                "redis",
                redis::unit_name(name),
                8,
                instance.maxmemory.megabytes(),
            ));
        }
    }
    if c.nginx.enabled {
        units.push(unit("nginx", nginx::UNIT, 8, 24));
    }
    if c.node_exporter.enabled {
        units.push(unit("node-exporter", node_exporter::UNIT, 20, 16));
    }
    if c.postgres_exporter_on() {
        units.push(unit("postgres-exporter", postgres_exporter::UNIT, 16, 16));
    }
    if c.statsd_exporter.enabled {
        // Measured (e2e_edge, the real 0.30.0): 21 MiB idle.
        units.push(unit("statsd-exporter", statsd_exporter::UNIT, 24, 16));
    }
    if c.loki.enabled {
        // The single binary with the in-memory ring, small caches: 78 MiB idle
        // measured (e2e_edge, the real 3.7.0, a host's journal; the estimate before
        // was 110); more as streams grow, which its working memory covers.
        let cache = if c.memory_constrained { 16 } else { 100 };
        units.push(unit("loki", loki::UNIT, 90, 64 + cache));
    }
    if c.prometheus.enabled {
        // 53 MiB measured with the stack's few thousand series.
        let queries = if c.memory_constrained { 32 } else { 128 };
        units.push(unit("prometheus", prometheus::UNIT, 60, queries));
    }
    if c.alertmanager_on() {
        // Estimate: a Go server holding the stack's few dozen alerts and silences.
        units.push(unit("alertmanager", alertmanager::UNIT, 24, 16));
    }
    if c.log_shipper.enabled {
        // Alloy: an estimate (its sizing guide gives 120 MiB per MiB/s of logs; a host
        // of this stack writes well under that). Promtail: 65 MiB idle measured
        // (e2e_edge, the real 3.5.1).
        let (expected, working) = match c.log_shipper.kind {
            crate::config::LogShipperKind::Alloy => (100, 48),
            crate::config::LogShipperKind::Promtail => (70, 32),
        };
        units.push(unit(
            "log-shipper",
            log_shipper::unit_name(c.log_shipper.kind),
            expected,
            working,
        ));
    }
    if c.grafana.enabled {
        // Estimate: Grafana's server with SQLite and two data sources.
        units.push(unit("grafana", grafana::UNIT, 120, 64));
    }
    if c.airflow.enabled {
        let workers = u64::from(c.airflow.worker_concurrency.get());
        // Measured (`cargo bench --bench memory`): the API server 228 MiB, the
        // scheduler 147 and its health server 29 more, the DAG processor 172, the
        // triggerer 168, the Celery worker 154 and 17 per idle pool process. Each
        // running task is a supervisor and a task process (the sample's dlt load
        // peaked the worker's cgroup at 314 MiB).
        units.push(unit("airflow", airflow::API_UNIT, 228, 96));
        let health_server = if c.memory_constrained { 0 } else { 29 };
        units.push(unit(
            "airflow",
            airflow::SCHEDULER_UNIT,
            147 + health_server,
            64,
        ));
        units.push(unit("airflow", airflow::DAG_PROCESSOR_UNIT, 172, 96));
        if c.airflow.triggerer {
            units.push(unit("airflow", airflow::TRIGGERER_UNIT, 168, 64));
        }
        units.push(unit(
            "airflow",
            airflow::WORKER_UNIT,
            154 + 17 * workers,
            300 * workers,
        ));
    }
    if c.superset.enabled {
        let web = u64::from(c.superset.web_workers.get());
        // gunicorn's master and what its workers share, 106 MiB, and 169 MiB per
        // worker (measured: 275 MiB with one, 444 with two); a SQL Lab query or a
        // chart adds its result set.
        units.push(unit(
            "superset",
            superset::WEB_UNIT,
            106 + 169 * web,
            128 * web,
        ));
        if c.superset.celery_worker {
            let workers = u64::from(c.superset.worker_concurrency.get());
            units.push(unit(
                "superset",
                superset::WORKER_UNIT,
                159 + 99 * workers,
                128 * workers,
            ));
        }
    }
    if !c.backup.schedule.as_str().is_empty() {
        // The CLI a timer starts now and then (the daemon does the work): nothing
        // while idle, its own few MiB while it runs.
        units.push(unit("backup", components::backup::SERVICE, 0, 16));
    }
    units
}

/// Writes each unit's limits into its file, for the units the plan names.
pub fn limit_units(specs: &mut [crate::model::ComponentSpec], plan: &MemoryPlan) {
    for unit in specs.iter_mut().flat_map(|s| s.units.iter_mut()) {
        if let Some(b) = plan.limit_for(&unit.name) {
            unit.content =
                crate::units::with_memory_limits(&unit.content, b.high_mib * MIB, b.max_mib * MIB);
        }
    }
}

#[cfg(test)]
mod tests;
