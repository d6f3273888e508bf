//! postgres_exporter from Debian: PostgreSQL's connections by database and state and
//! its settings (`max_connections`), for the connections alert and the overview. It
//! logs in over TCP as `analytics_monitor`, a role with `pg_monitor` only (no
//! database of its own, no table rights), its password a systemd credential.

use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const UNIT: &str = "analytics-postgres-exporter.service";
pub const USER: &str = "analytics-pg-exporter";
/// The PostgreSQL role it logs in as.
pub const ROLE: &str = "analytics_monitor";
const BINARY: &str = "/usr/bin/prometheus-postgres-exporter";

pub fn render(config: &Config) -> ComponentSpec {
    let port = config.postgres_exporter.port.get();
    let mut unit = ServiceUnit::new(
        UNIT,
        "analytics-stack: postgres_exporter",
        USER,
        format!("{BINARY} --web.listen-address=127.0.0.1:{port}"),
    );
    unit.credentials = vec![(
        "password".into(),
        format!(
            "{}/{}",
            paths::SECRETS,
            super::postgres::password_secret(ROLE)
        ),
    )];
    unit.environment = vec![
        (
            "DATA_SOURCE_URI".into(),
            format!(
                "127.0.0.1:{}/postgres?sslmode=disable",
                config.postgres.port.get()
            ),
        ),
        ("DATA_SOURCE_USER".into(), ROLE.into()),
        (
            "DATA_SOURCE_PASS_FILE".into(),
            format!("/run/credentials/{UNIT}/password"),
        ),
    ];
    unit.after = vec![super::postgres::UNIT.into()];
    ComponentSpec {
        name: "postgres-exporter",
        description: "postgres_exporter: PostgreSQL's connections and settings",
        packages: vec!["prometheus-postgres-exporter".into()],
        version_package: "prometheus-postgres-exporter".into(),
        distro_units: vec!["prometheus-postgres-exporter.service".into()],
        users: vec![UserSpec::service(USER, "/nonexistent")],
        units: vec![unit.render()],
        ports: vec![PortSpec::loopback(port, UNIT)],
        probes: vec![Probe::Http {
            port,
            path: "/metrics".into(),
        }],
        ..Default::default()
    }
}
