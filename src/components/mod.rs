//! The catalog: each component is data (packages, users, files, units, ports,
//! probes) produced by a renderer from the configuration. Adding a component means
//! adding a module here and a line in [`render_all`], not new control flow.

pub mod airflow;
pub mod airflow_metrics;
pub mod alertmanager;
pub mod alerts;
pub mod backup;
pub mod dag_bundle;
pub mod dashboards;
pub mod dlt;
pub mod grafana;
pub mod log_shipper;
pub mod loki;
pub mod nginx;
pub mod node_exporter;
pub mod pgbackrest;
pub mod postgres;
pub mod postgres_exporter;
pub mod prometheus;
pub mod python;
pub mod redis;
pub mod statsd_exporter;
pub mod superset;
pub mod superset_metrics;

use crate::config::Config;
use crate::model::{ComponentSpec, DirSpec, UserSpec};

/// Facts about the host that rendering depends on (known before anything is installed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    /// Debian codename: `bookworm`, `trixie`.
    pub codename: String,
    /// Debian architecture: `amd64`, `arm64`.
    pub arch: String,
    /// The host's names, FQDN first, then its short name (the certificate's names).
    pub names: Vec<String>,
    /// The host's addresses, loopback first (the certificate's addresses).
    pub addresses: Vec<std::net::IpAddr>,
    /// The memory the host has for the stack: its RAM, or its cgroup's limit when
    /// lower (a container or a VM slice). 0 = unknown.
    pub memory_bytes: u64,
    /// Cores the host offers.
    pub cpus: u32,
}

impl Platform {
    pub fn postgres_major(&self) -> u32 {
        match self.codename.as_str() {
            "trixie" => 17,
            _ => 15,
        }
    }
}

/// Every component the stack knows, enabled or not, in start order.
pub const KNOWN: &[(&str, &str)] = &[
    ("postgres", "PostgreSQL: warehouse and metadata store"),
    (
        "pgbackrest",
        "pgBackRest: the WAL archived as it is written, base backups, restore --to TIME",
    ),
    (
        "redis",
        "Redis: Celery broker (no eviction) and cache (LRU)",
    ),
    ("nginx", "NGINX: the single entry point"),
    (
        "node-exporter",
        "node_exporter: host metrics and unit states",
    ),
    (
        "postgres-exporter",
        "postgres_exporter: PostgreSQL's connections and settings",
    ),
    (
        "prometheus",
        "Prometheus: metrics of the host and the stack",
    ),
    (
        "alertmanager",
        "Alertmanager: the stack's alerts delivered, under /alertmanager/",
    ),
    (
        "statsd-exporter",
        "statsd_exporter: Airflow's and Superset's StatsD as Prometheus metrics",
    ),
    ("loki", "Loki: the journal of every stack unit"),
    (
        "grafana",
        "Grafana: dashboards of logs and metrics, under /grafana/",
    ),
    (
        "promtail",
        "Promtail: the journal to Loki (end of life; see alloy)",
    ),
    ("alloy", "Grafana Alloy: the journal to Loki"),
    (
        "airflow",
        "Airflow: scheduler, API server under /airflow/, Celery worker",
    ),
    (
        "superset",
        "Superset: dashboards and SQL on the warehouse, under /superset/",
    ),
    (
        "dlt",
        "dlt: ingestion pipelines, run by Airflow into the warehouse",
    ),
    (
        "dag-bundle",
        "The DAG and pipeline folders, published for the worker hosts",
    ),
    (
        "dag-sync",
        "The primary's DAG and pipeline folders, kept current here",
    ),
    ("backup", "Scheduled backups (analytics-backup.timer)"),
];

pub fn is_known(name: &str) -> bool {
    KNOWN.iter().any(|(n, _)| *n == name)
}

/// The enabled components, rendered, in start order.
/// The user venvs are built as.
pub const BUILD_USER: &str = "analytics-build";

pub fn render_all(config: &Config, platform: &Platform) -> Vec<ComponentSpec> {
    let mut specs = Vec::new();
    if config.postgres.enabled {
        specs.push(postgres::render(config, platform));
    }
    if config.archiving_on() {
        specs.push(pgbackrest::render(config, platform));
    }
    if config.redis.enabled {
        specs.push(redis::render(config));
    }
    if config.nginx.enabled {
        specs.push(nginx::render(config, platform));
    }
    if config.node_exporter.enabled {
        specs.push(node_exporter::render(config, platform));
    }
    if config.postgres_exporter_on() {
        specs.push(postgres_exporter::render(config));
    }
    if config.statsd_exporter.enabled {
        specs.push(statsd_exporter::render(config, platform));
    }
    if config.loki.enabled {
        specs.push(loki::render(config, platform));
    }
    if config.prometheus.enabled {
        specs.push(prometheus::render(config, platform));
    }
    if config.alertmanager_on() {
        specs.push(alertmanager::render(config));
    }
    if config.log_shipper.enabled {
        specs.push(log_shipper::render(config, platform));
    }
    if config.grafana.enabled {
        specs.push(grafana::render(config, platform));
    }
    if config.airflow.enabled {
        specs.push(airflow::render(config, platform));
    }
    if config.superset.enabled {
        specs.push(superset::render(config, platform));
    }
    if config.dlt.enabled {
        specs.push(dlt::render(config, platform));
    }
    if config.is_worker_host() {
        specs.push(dag_bundle::render_sync(config));
    } else if config.airflow.enabled && !config.workers.hosts.is_empty() {
        specs.push(dag_bundle::render_publisher());
    }
    if !config.backup.schedule.as_str().is_empty() {
        specs.push(backup::render(config));
    }
    pin_operator_digests(&mut specs, config);
    add_build_user(&mut specs);
    specs
}

/// `config` as one of its worker hosts would have it (names and addresses are
/// placeholders): what a worker host installs, for a bundle that serves both.
pub fn as_worker_host(config: &Config) -> Config {
    use crate::config::{ListenAddress, Role, WorkerName};
    let mut worker = config.clone();
    worker.stack.role = Role::Worker;
    worker.workers.address = ListenAddress::default();
    worker.workers.hosts.clear();
    worker.worker.name = WorkerName::try_from("bundle".to_string()).ok();
    worker.worker.address = ListenAddress::try_from("192.0.2.2".to_string()).unwrap_or_default();
    worker.worker.primary = ListenAddress::try_from("192.0.2.1".to_string()).unwrap_or_default();
    for (_, on) in crate::config::primary_only_flags(&mut worker) {
        *on = false;
    }
    worker.superset.enabled = config.superset.enabled && config.superset_on_workers();
    worker
}

/// Venvs are built by uv as an unprivileged user of their own, never as root: a
/// package's build backend (an sdist's setup.py) runs as that user, which owns only
/// uv's cache and the venv being built (handed to root once complete).
fn add_build_user(specs: &mut [ComponentSpec]) {
    for spec in specs.iter_mut().filter(|s| s.venv.is_some()) {
        spec.users
            .push(UserSpec::service(BUILD_USER, crate::exec::UV_CACHE));
        spec.dirs.push(DirSpec {
            path: crate::exec::UV_CACHE.into(),
            mode: 0o700,
            owner: BUILD_USER.into(),
            group: BUILD_USER.into(),
        });
    }
}

/// The operator's `[archives] sha256` pins replace a digest the catalog leaves to a
/// checksum file or resolver (a catalog pin stays: it is the stronger statement).
fn pin_operator_digests(specs: &mut [ComponentSpec], config: &Config) {
    use crate::artifact::catalog::DigestSource;
    let pins = &config.archives.sha256;
    let archives = specs.iter_mut().flat_map(|s| {
        s.archive.iter_mut().chain(
            s.venv
                .iter_mut()
                .flat_map(|v| std::iter::once(&mut v.uv).chain(v.python.as_mut())),
        )
    });
    for pin in archives {
        if let (Some(sha), false) = (
            pins.get(&pin.component),
            matches!(pin.digest, DigestSource::Pinned(_)),
        ) {
            pin.digest = DigestSource::Pinned(sha.as_str().to_string());
        }
    }
}

/// Where a component's program comes from: (path of the program, archive to
/// install, Debian packages to install), for `source`.
pub fn software(
    source: crate::config::SoftwareSource,
    component: &str,
    debian_binary: &str,
    debian_package: &str,
    config: &Config,
    platform: &Platform,
) -> (
    String,
    Option<crate::artifact::catalog::ArchivePin>,
    Vec<String>,
) {
    match source {
        crate::config::SoftwareSource::Debian => {
            (debian_binary.into(), None, vec![debian_package.into()])
        }
        crate::config::SoftwareSource::Archive => {
            let pin = crate::artifact::catalog::pin(
                component,
                &platform.arch,
                config.archives.mirror.as_str(),
            );
            let binary = pin
                .as_ref()
                .map_or_else(|| component.to_string(), |p| p.binary.clone());
            (
                format!("{}/{component}/current/{binary}", crate::model::paths::OPT),
                pin,
                Vec::new(),
            )
        }
    }
}

/// Names of the units a known component runs, whatever its configuration.
pub fn unit_names(component: &str) -> Vec<String> {
    match component {
        "postgres" => vec![postgres::UNIT.into()],
        "redis" => vec![redis::unit_name("broker"), redis::unit_name("cache")],
        "nginx" => vec![nginx::UNIT.into()],
        "node-exporter" => vec![node_exporter::UNIT.into()],
        "postgres-exporter" => vec![postgres_exporter::UNIT.into()],
        "prometheus" => vec![prometheus::UNIT.into()],
        "alertmanager" => vec![alertmanager::UNIT.into()],
        "statsd-exporter" => vec![statsd_exporter::UNIT.into()],
        "loki" => vec![loki::UNIT.into()],
        "grafana" => vec![grafana::UNIT.into()],
        "promtail" => vec![log_shipper::unit_name(
            crate::config::LogShipperKind::Promtail,
        )],
        "alloy" => vec![log_shipper::unit_name(crate::config::LogShipperKind::Alloy)],
        "airflow" => airflow::unit_names(),
        "superset" => superset::unit_names(),
        "backup" => backup::unit_names(),
        "dag-bundle" => vec![
            dag_bundle::PUBLISH_TIMER.into(),
            dag_bundle::PUBLISH_SERVICE.into(),
        ],
        "dag-sync" => vec![
            dag_bundle::SYNC_TIMER.into(),
            dag_bundle::SYNC_SERVICE.into(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
