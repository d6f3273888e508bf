//! Loki from the verified release archive: one binary, filesystem storage, schema
//! v13 on TSDB, retention by the compactor, listening on loopback only.

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

pub fn render_config(config: &Config) -> String {
    let l = &config.loki;
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.add_template("loki.yaml", TEMPLATE)
        .expect("templates/loki/loki.yaml.j2 parses");
    let context = minijinja::context! {
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
        ports: vec![
            PortSpec::loopback(port, UNIT),
            PortSpec::loopback(config.loki.grpc_port.get(), UNIT),
        ],
        probes: vec![Probe::Http {
            port,
            path: "/ready".into(),
        }],
        ..Default::default()
    }
}
