//! node_exporter: host metrics, the state of every `analytics-*` unit (systemd
//! collector, over D-Bus), and a textfile directory where the daemon can publish
//! its own figures.

use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const UNIT: &str = "analytics-node-exporter.service";
pub const USER: &str = "analytics-node-exporter";
pub const TEXTFILE_DIR: &str = "/var/lib/analytics-stack/node-exporter/textfile";

pub fn render(config: &Config, platform: &super::Platform) -> ComponentSpec {
    let port = config.node_exporter.port.get();
    // On a worker host the primary's Prometheus scrapes it, on the worker's address
    // (and nowhere else: not every address).
    let worker_address = config
        .worker
        .address
        .get()
        .filter(|_| config.is_worker_host());
    let listen = match worker_address {
        Some(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        None => format!("127.0.0.1:{port}"),
    };
    let (binary, archive, packages) = super::software(
        config.node_exporter.source,
        "node-exporter",
        "/usr/bin/prometheus-node-exporter",
        "prometheus-node-exporter",
        config,
        platform,
    );
    let mut unit = ServiceUnit::new(
        UNIT,
        "analytics-stack: node_exporter",
        USER,
        format!(
            "{binary} --web.listen-address={listen} --collector.systemd --collector.systemd.unit-include=analytics-.+\\.(service|target) --collector.textfile.directory={TEXTFILE_DIR}"
        ),
    );
    unit.needs_host_proc = true;
    ComponentSpec {
        name: "node-exporter",
        description: "node_exporter: host metrics and unit states",
        archive,
        packages,
        version_package: "prometheus-node-exporter".into(),
        distro_units: vec!["prometheus-node-exporter.service".into()],
        users: vec![UserSpec::service(USER, "/nonexistent")],
        dirs: vec![
            DirSpec {
                path: format!("{}/node-exporter", paths::STATE).into(),
                mode: 0o755,
                owner: "root".into(),
                group: "root".into(),
            },
            // The daemon (root) writes here; the exporter only reads.
            DirSpec::public(TEXTFILE_DIR),
        ],
        units: vec![unit.render()],
        ports: vec![match worker_address {
            Some(address) => PortSpec {
                address,
                port,
                unit: UNIT.into(),
            },
            None => PortSpec::loopback(port, UNIT),
        }],
        probes: vec![match worker_address {
            Some(address) => Probe::HttpAt {
                address,
                port,
                path: "/metrics".into(),
            },
            None => Probe::Http {
                port,
                path: "/metrics".into(),
            },
        }],
        ..Default::default()
    }
}
