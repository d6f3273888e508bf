//! Loki from the verified release archive: one binary, filesystem storage, schema
//! v13 on TSDB, retention by the compactor.
//!
//! Behind the door ([`behind_door`]: NGINX with the stack CA, the default), Loki is
//! unreachable but through NGINX: it runs in a network namespace of its own (its gRPC
//! port on that namespace's loopback, where nothing else is), its HTTP on a Unix
//! socket only NGINX's group reaches, and NGINX's doors require a client
//! certificate — the primary's (`tls::PRIMARY_CLIENT_CERT`, which its log shipper,
//! Prometheus and Grafana present) on loopback, a current worker's on the workers'
//! push door. Each host is a tenant, named by the door from the certificate
//! (`X-Scope-OrgID`): a worker's lines are its own whatever `host` label they carry,
//! and reading is a query across every tenant (`__tenant_id__` says whose).
//! Otherwise (NGINX off, or TLS off or the operator's certificate) Loki listens on
//! loopback, one tenant, as any local account may read.

use super::Platform;
use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const UNIT: &str = "analytics-loki.service";
pub const USER: &str = "analytics-loki";
const CONF_DIR: &str = "/etc/analytics-stack/loki";

/// The schema's start date. Never change it once data exists: Loki reads old chunks
/// by the schema that was in force when they were written.
pub const SCHEMA_FROM: &str = "2024-01-01";

const TEMPLATE: &str = include_str!("../../templates/loki/loki.yaml.j2");

/// Loki's runtime directory and the socket it listens on there (Loki appends the
/// port, 0, to the address).
pub const RUN_DIR: &str = "/run/analytics-loki";
pub const SOCKET: &str = "/run/analytics-loki/http:0";
/// The tenants: the primary's lines, and each worker's.
pub const PRIMARY_TENANT: &str = "primary";

pub fn worker_tenant(name: &crate::config::WorkerName) -> String {
    format!("worker-{}", name.as_str())
}

/// Every tenant, as a query names them (`A|B`).
pub fn all_tenants(config: &Config) -> String {
    std::iter::once(PRIMARY_TENANT.to_string())
        .chain(config.workers.hosts.keys().map(worker_tenant))
        .collect::<Vec<_>>()
        .join("|")
}

/// Loki behind NGINX's doors: on a primary whose NGINX has the stack CA (which signs
/// the client certificates the doors require).
pub fn behind_door(config: &Config) -> bool {
    config.loki.enabled
        && config.nginx.enabled
        && config.nginx.tls == crate::config::TlsMode::SelfSigned
        && !config.is_worker_host()
}

pub fn render_config(config: &Config) -> String {
    let l = &config.loki;
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.add_template("loki.yaml", TEMPLATE)
        .expect("templates/loki/loki.yaml.j2 parses");
    let context = minijinja::context! {
        door => behind_door(config),
        socket_base => SOCKET.trim_end_matches(":0"),
        http_port => l.port.get(),
        grpc_port => l.grpc_port.get(),
        data => format!("{}/loki", paths::STATE),
        schema_from => SCHEMA_FROM,
        retention => l.retention.as_str(),
        small => config.memory_constrained,
    };
    env.get_template("loki.yaml")
        .and_then(|t| t.render(context))
        .expect("templates/loki/loki.yaml.j2 renders")
        + "\n"
}

pub fn render(config: &Config, platform: &Platform) -> ComponentSpec {
    let pin =
        crate::artifact::catalog::pin("loki", &platform.arch, config.archives.mirror.as_str());
    let binary = format!(
        "{}/loki/current/{}",
        paths::OPT,
        pin.as_ref().map_or("loki", |p| p.binary.as_str())
    );
    let conf = format!("{CONF_DIR}/loki.yaml");
    let data = format!("{}/loki", paths::STATE);
    let port = config.loki.port.get();
    let mut unit = ServiceUnit::new(
        UNIT,
        "analytics-stack: Loki",
        USER,
        format!("{binary} -config.file={conf}"),
    );
    unit.read_write_paths = vec![data.clone()];
    // Every path is given in the config, and the rest Loki derives from its working
    // directory: a release after 3.7 put its delete store at `/index` otherwise, on a
    // read-only root.
    unit.working_directory = Some(data.clone());
    unit.timeout_sec = 120;
    let door = behind_door(config);
    if door {
        unit.private_network = true;
        unit.runtime_directory = Some("analytics-loki".into());
        // The socket Loki makes is its group's too (NGINX's unit joins the group);
        // its data directory stays 0700.
        unit.umask = "0007";
    }
    ComponentSpec {
        name: "loki",
        description: "Loki: the journal of every stack unit",
        archive: pin,
        users: vec![UserSpec::service(USER, data.clone())],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(data, USER),
        ],
        files: vec![FileSpec::new(conf, render_config(config))
            .mode(0o640)
            .group(USER)
            .notify(UNIT, OnChange::Restart)],
        units: vec![unit.render()],
        // Behind the door its ports are in a namespace of its own: NGINX holds
        // `loki.port` on the host's loopback.
        ports: if door {
            Vec::new()
        } else {
            vec![
                PortSpec::loopback(port, UNIT),
                PortSpec::loopback(config.loki.grpc_port.get(), UNIT),
            ]
        },
        probes: vec![if door {
            Probe::HttpUnix {
                socket: SOCKET.into(),
                path: "/ready".into(),
            }
        } else {
            Probe::Http {
                port,
                path: "/ready".into(),
            }
        }],
        ..Default::default()
    }
}
