//! Ships the journal of every `analytics-*` unit to Loki, labelled by unit and host:
//! Grafana Alloy (`loki.source.journal`) by default, or Promtail (end of life since
//! March 2026) when the config asks for it. Both come from verified release archives
//! and run in the `systemd-journal` group, which is what lets them read the journal.

use super::Platform;
use crate::config::{Config, LogShipperKind};
use crate::model::*;
use crate::units::ServiceUnit;

pub const JOURNAL_GROUP: &str = "systemd-journal";

pub fn component_name(kind: LogShipperKind) -> &'static str {
    match kind {
        LogShipperKind::Alloy => "alloy",
        LogShipperKind::Promtail => "promtail",
    }
}

pub fn unit_name(kind: LogShipperKind) -> String {
    format!("analytics-{}.service", component_name(kind))
}

/// What a relabel rule does (Prometheus's relabelling, which Alloy and Promtail share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelabelAction {
    /// Sets `target` to the replacement when the regex matches.
    Replace { target: &'static str },
    /// Drops the line unless the regex matches.
    Keep,
}

/// One relabel rule: the source labels' values joined by `;`, matched against the
/// (fully anchored) regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelabelRule {
    pub sources: &'static [&'static str],
    pub regex: &'static str,
    pub replacement: &'static str,
    pub action: RelabelAction,
}

/// The rules both shippers apply to each journal entry, in order.
pub const RELABEL: &[RelabelRule] = &[
    // The unit a line is about: the unit that wrote it…
    RelabelRule {
        sources: &["__journal__systemd_unit"],
        regex: "(.+)",
        replacement: "$1",
        action: RelabelAction::Replace { target: "unit" },
    },
    // …or, for the lines PID 1 writes about a unit ("Main process exited",
    // "Scheduled restart job"), the unit they name in UNIT. These are the lines an
    // operator looks for after a failure.
    RelabelRule {
        sources: &["__journal__systemd_unit", "__journal_unit"],
        regex: "init\\.scope;(.+)",
        replacement: "$1",
        action: RelabelAction::Replace { target: "unit" },
    },
    RelabelRule {
        sources: &["unit"],
        regex: "analytics-.*",
        replacement: "",
        action: RelabelAction::Keep,
    },
    RelabelRule {
        sources: &["__journal_priority_keyword"],
        regex: "(.+)",
        replacement: "$1",
        action: RelabelAction::Replace { target: "level" },
    },
];

/// A string literal of Alloy's syntax (Go-like escapes).
fn alloy_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn alloy_rules() -> String {
    RELABEL
        .iter()
        .map(|r| {
            let sources: Vec<String> = r.sources.iter().map(|s| alloy_string(s)).collect();
            let mut lines = vec![
                format!("    source_labels = [{}]", sources.join(", ")),
                format!("    regex         = {}", alloy_string(r.regex)),
            ];
            match r.action {
                RelabelAction::Replace { target } => {
                    lines.push(format!("    target_label  = {}", alloy_string(target)));
                    lines.push(format!(
                        "    replacement   = {}",
                        alloy_string(r.replacement)
                    ));
                }
                RelabelAction::Keep => lines.push("    action        = \"keep\"".into()),
            }
            format!("  rule {{\n{}\n  }}\n", lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A YAML single-quoted scalar (no escapes but the doubled quote).
fn yaml_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn promtail_rules() -> String {
    RELABEL
        .iter()
        .map(|r| {
            let sources: Vec<String> = r.sources.iter().map(|s| yaml_quoted(s)).collect();
            let mut out = format!(
                "      - source_labels: [{}]\n        regex: {}\n",
                sources.join(", "),
                yaml_quoted(r.regex)
            );
            match r.action {
                RelabelAction::Replace { target } => out.push_str(&format!(
                    "        target_label: {}\n        replacement: {}\n",
                    yaml_quoted(target),
                    yaml_quoted(r.replacement)
                )),
                RelabelAction::Keep => out.push_str("        action: keep\n"),
            }
            out
        })
        .collect()
}

/// Where the journal goes: this host's Loki (through NGINX's loopback door when Loki
/// is behind it), or on a worker host the primary's, through its door (TLS to the
/// stack CA; NGINX lets the current workers' certificates push and nobody else).
fn loki_push(config: &Config) -> String {
    if config.is_worker_host() {
        return format!(
            "{}/loki/api/v1/push",
            super::dag_bundle::primary_origin(config)
        );
    }
    let scheme = if super::loki::behind_door(config) {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://127.0.0.1:{}/loki/api/v1/push",
        config.loki.port.get()
    )
}

/// The client certificate of the push: on a worker host, the worker's, to the
/// primary's door; on a primary whose Loki is behind NGINX, the primary's, to its
/// loopback door (named `localhost` in the server certificate); else none. (The
/// credentials, and the server name to check.)
fn push_client(
    config: &Config,
    kind: LogShipperKind,
) -> Option<(crate::tls::client::ClientCredentials, Option<&'static str>)> {
    let unit = unit_name(kind);
    if config.is_worker_host() {
        return Some((crate::tls::client::credentials(&unit), None));
    }
    super::loki::behind_door(config).then(|| {
        (
            crate::tls::client::primary_credentials(&unit),
            Some("localhost"),
        )
    })
}

/// The `host` label of every line: a worker host's name on the primary, or this
/// host's name.
pub fn host_label(config: &Config) -> String {
    match (&config.stack.role, &config.worker.name) {
        (crate::config::Role::Worker, Some(name)) => name.as_str().to_string(),
        _ => config.stack.hostname().to_string(),
    }
}

pub fn render_promtail(config: &Config) -> String {
    format!(
        "# Generated by analytics-stackd; edit the stack config instead.\n\
         server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: {port}\n  grpc_listen_address: 127.0.0.1\n  grpc_listen_port: 0\n\
         positions:\n  filename: {state}/promtail/positions.yaml\n\
         clients:\n  - url: {push}\n{tls}\
         scrape_configs:\n  - job_name: journal\n    journal:\n      max_age: 12h\n      labels:\n        job: systemd-journal\n        host: {host}\n\
         \x20   relabel_configs:\n{rules}",
        rules = promtail_rules(),
        port = config.log_shipper.port.get(),
        state = paths::STATE,
        push = loki_push(config),
        tls = match push_client(config, LogShipperKind::Promtail) {
            Some((client, server_name)) => format!(
                "    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n{}",
                crate::tls::CA_CERT,
                client.cert,
                client.key,
                server_name.map_or(String::new(), |n| format!("      server_name: {n}\n"))
            ),
            None => String::new(),
        },
        host = host_label(config),
    )
}

pub fn render_alloy(config: &Config) -> String {
    format!(
        "// Generated by analytics-stackd; edit the stack config instead.\n\
         loki.relabel \"journal\" {{\n  forward_to = []\n\n{rules}}}\n\n\
         loki.source.journal \"stack\" {{\n  max_age       = \"12h\"\n  relabel_rules = loki.relabel.journal.rules\n  labels        = {{job = \"systemd-journal\", host = \"{host}\"}}\n  forward_to    = [loki.write.local.receiver]\n}}\n\n\
         loki.write \"local\" {{\n  endpoint {{\n    url = \"{push}\"\n{tls}  }}\n}}\n",
        host = host_label(config),
        push = loki_push(config),
        tls = match push_client(config, LogShipperKind::Alloy) {
            Some((client, server_name)) => format!(
                "    tls_config {{\n      ca_file   = \"{}\"\n      cert_file = \"{}\"\n      key_file  = \"{}\"\n{}    }}\n",
                crate::tls::CA_CERT,
                client.cert,
                client.key,
                server_name.map_or(String::new(), |n| format!("      server_name = \"{n}\"\n"))
            ),
            None => String::new(),
        },
        rules = alloy_rules(),
    )
}

pub fn render(config: &Config, platform: &Platform) -> ComponentSpec {
    let kind = config.log_shipper.kind;
    let name = component_name(kind);
    let unit_name = unit_name(kind);
    let user = format!("analytics-{name}");
    let pin = crate::artifact::catalog::pin(name, &platform.arch, config.archives.mirror.as_str());
    let binary = format!(
        "{}/{name}/current/{}",
        paths::OPT,
        pin.as_ref().map_or(name, |p| p.binary.as_str())
    );
    let conf_dir = format!("{}/{name}", paths::ETC);
    let data = format!("{}/{name}", paths::STATE);
    let port = config.log_shipper.port.get();
    let (conf, text, exec) = match kind {
        LogShipperKind::Promtail => {
            let conf = format!("{conf_dir}/promtail.yaml");
            (
                conf.clone(),
                render_promtail(config),
                format!("{binary} -config.file={conf}"),
            )
        }
        LogShipperKind::Alloy => {
            let conf = format!("{conf_dir}/config.alloy");
            (conf.clone(), render_alloy(config), format!("{binary} run --server.http.listen-addr=127.0.0.1:{port} --storage.path={data} --disable-reporting {conf}"))
        }
    };
    let mut unit = ServiceUnit::new(
        &unit_name,
        &format!("analytics-stack: {name} (journal to Loki)"),
        &user,
        exec,
    );
    unit.read_write_paths = vec![data.clone()];
    unit.credentials = push_client(config, kind)
        .map(|(client, _)| client.credentials)
        .unwrap_or_default();
    // Stopped before Loki (systemd stops units in the reverse order of After=): at
    // shutdown the shipper sends what it still holds to a Loki that is still there,
    // instead of retrying against a stopped one until it is killed (seen: Promtail
    // held a container's halt for over a minute).
    if config.loki.enabled && !config.is_worker_host() {
        unit.after.push(super::loki::UNIT.into());
        // Behind the door it pushes through NGINX: stopped before NGINX too.
        if super::loki::behind_door(config) {
            unit.after.push(super::nginx::UNIT.into());
        }
    }
    // A stop that cannot reach Loki at all (a worker host whose primary is gone)
    // ends within 30 s, losing what was not sent, rather than holding a shutdown.
    unit.timeout_sec = 30;
    let health = match kind {
        LogShipperKind::Promtail => "/ready",
        LogShipperKind::Alloy => "/-/ready",
    };
    ComponentSpec {
        name,
        description: "ships the journal of every stack unit to Loki",
        archive: pin,
        users: vec![UserSpec {
            name: user.clone(),
            home: data.clone().into(),
            groups: vec![JOURNAL_GROUP.into()],
        }],
        dirs: vec![
            DirSpec::config(conf_dir, &user),
            DirSpec::private(data, &user),
        ],
        files: vec![FileSpec::new(conf, text)
            .mode(0o640)
            .group(&user)
            .notify(&unit_name, OnChange::Restart)],
        units: vec![unit.render()],
        ports: vec![PortSpec::loopback(port, &unit_name)],
        probes: vec![Probe::Http {
            port,
            path: health.into(),
        }],
        ..Default::default()
    }
}
