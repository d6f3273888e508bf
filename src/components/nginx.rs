//! NGINX from Debian's packages as `analytics-nginx.service`: the stack's single
//! entry point. `/` is the landing page the daemon keeps current; each application
//! has a route that proxies to it once installed and answers 503 until then.

use super::Platform;
use crate::config::{Config, TlsMode};
use crate::model::*;
use crate::tls::TlsSpec;
use crate::units::ServiceUnit;
use serde::Serialize;

pub const UNIT: &str = "analytics-nginx.service";
pub const USER: &str = "analytics-nginx";
const CONF_DIR: &str = "/etc/analytics-stack/nginx";

/// An application route under the single entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub prefix: &'static str,
    pub title: &'static str,
    pub component: &'static str,
    /// The local upstream port, once the component is installed and enabled.
    pub upstream: Option<u16>,
    /// Locations under the prefix that answer loopback clients only (NGINX syntax).
    pub loopback_only: Vec<&'static str>,
    /// Locations that answer loopback clients and the worker hosts' addresses only.
    pub workers_only: Vec<&'static str>,
    /// Answers the proxy corrects on their way out.
    pub rewrites: Vec<Rewrite>,
    /// The page `prefix` answers (503) while the component is not installed.
    pub not_installed: String,
    /// Where a browser without the application's session cookie is sent from `prefix`.
    pub login: Option<Login>,
    /// For an application with no login of its own: NGINX asks for this file's
    /// user and password (HTTP basic authentication) at the whole prefix.
    pub password_file: Option<&'static str>,
}

/// An application's entry page for a browser that has not logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Login {
    pub why: &'static str,
    /// NGINX's variable for the session cookie (`$cookie_NAME`).
    pub cookie_variable: &'static str,
    pub url: &'static str,
}

/// A text substitution in one kind of answer (NGINX's `sub_filter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    pub why: &'static str,
    pub location: &'static str,
    pub types: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub once: bool,
}

fn airflow_rewrites() -> Vec<Rewrite> {
    vec![Rewrite {
        why: "apache-airflow-providers-fab 3.10.2's pages (its login page among them) end with\n        # Airflow 2's main.js, whose moment chunk, time zones and date picker they no longer\n        # ship: it throws in every browser and does nothing these pages need. It is not run.",
        location: "^~ /airflow/auth/",
        types: "text/html",
        from: "<script src=\"/airflow/auth/static/dist/main.",
        to: "<script type=\"text/plain\" src=\"/airflow/auth/static/dist/main.",
        once: true,
    }]
}

/// A 1×1 transparent GIF; what follows `#` is a fragment, never fetched.
const BLANK_PIXEL: &str =
    "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7#";

fn superset_rewrites() -> Vec<Rewrite> {
    vec![
        Rewrite {
            why: "Superset 6.1's published frontend loads a pixel from Scarf on every page\n        # (the opt-out is a build-time setting): it becomes an inline blank image.",
            location: "~ ^/superset/static/assets/.*\\.js$",
            types: "application/javascript text/javascript",
            from: "https://apachesuperset.gateway.scarf.sh/pixel/",
            to: BLANK_PIXEL,
            once: true,
        },
        Rewrite {
            why: "Superset's web app manifest names its icons without the /superset prefix.",
            location: "= /superset/static/assets/pwa-manifest.json",
            types: "application/json application/manifest+json",
            from: "\"/static/",
            to: "\"/superset/static/",
            once: false,
        },
    ]
}

fn not_installed(title: &str, component: &str) -> String {
    format!("<!doctype html><title>{title} is not installed</title><h1>{title} is not installed</h1><p>{title} is not part of this stack yet. Enable <code>{component}</code> in /etc/analytics-stack/stack.toml and run <code>analytics-stack apply</code>.</p><p><a href=\"/\">Back to the stack</a></p>\n")
}

/// The application routes; their upstreams arrive with the tiers that install them.
pub fn routes(config: &Config) -> Vec<Route> {
    let route = |prefix, title, component, upstream: Option<u16>| Route {
        prefix,
        title,
        component,
        upstream,
        loopback_only: Vec::new(),
        workers_only: Vec::new(),
        rewrites: Vec::new(),
        not_installed: not_installed(title, component),
        login: None,
        password_file: None,
    };
    vec![
        Route {
            rewrites: superset_rewrites(),
            ..route(
                "/superset/",
                "Superset",
                "superset",
                config.superset.enabled.then(|| config.superset.port.get()),
            )
        },
        Route {
            // The task execution API is for the stack's own workers: this host's and
            // the worker hosts' (each task also carries its own signed token).
            workers_only: vec!["/airflow/execution/"],
            rewrites: airflow_rewrites(),
            login: Some(Login {
                why: "Without a session, Airflow's UI loads, its first call answers 401 and it then\n        # moves to the login page: the door sends the browser there at once.",
                cookie_variable: "$cookie__token",
                url: "/airflow/auth/login/?next=/airflow/",
            }),
            ..route(
                "/airflow/",
                "Airflow",
                "airflow",
                config.airflow.enabled.then(|| config.airflow.port.get()),
            )
        },
        Route {
            // Alertmanager has no users of its own: its UI and API (silences) are
            // the stack administrator's, behind a generated password.
            password_file: Some(super::alertmanager::HTPASSWD),
            ..route(
                super::alertmanager::PREFIX,
                "Alertmanager",
                "alertmanager",
                config
                    .alertmanager_on()
                    .then(|| config.alertmanager.port.get()),
            )
        },
        Route {
            // Prometheus scrapes Grafana directly; nobody else needs its internals.
            loopback_only: vec!["= /grafana/metrics"],
            ..route(
                "/grafana/",
                "Grafana",
                "grafana",
                config.grafana.enabled.then(|| config.grafana.port.get()),
            )
        },
    ]
}

/// The scheme and authority browsers reach the stack at under `[stack] hostname`,
/// for the few absolute URLs the applications need.
pub fn public_origin(config: &Config) -> String {
    let n = &config.nginx;
    let host = config.stack.hostname();
    let (scheme, port, default) = if tls_on(config) {
        ("https", n.https_port.get(), 443)
    } else {
        ("http", n.port.get(), 80)
    };
    if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

pub fn tls_on(config: &Config) -> bool {
    config.nginx.tls != TlsMode::Off
}

/// A string in NGINX's grammar: single-quoted, `\` and `'` escaped.
fn nginx_str(value: String) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

const TEMPLATE: &str = include_str!("../../templates/nginx.conf.j2");

pub fn render_conf(config: &Config) -> String {
    let n = &config.nginx;
    let tls = tls_on(config);
    let https_port = n.https_port.get();
    let mut env = minijinja::Environment::new();
    env.add_filter("nginx_str", nginx_str);
    env.add_template("nginx.conf", TEMPLATE)
        .expect("templates/nginx.conf.j2 parses");
    let context = minijinja::context! {
        tls,
        // HSTS only for an operator's own certificate: with the stack CA not yet
        // trusted, it would forbid the browser's "proceed anyway".
        hsts => n.tls == TlsMode::Files,
        listen => n.listen.to_string(),
        http_port => n.port.get(),
        door_port => if tls { https_port } else { n.port.get() },
        https_port_suffix => if https_port == 443 { String::new() } else { format!(":{https_port}") },
        www => paths::WWW,
        unit => UNIT,
        hostname_regex => crate::util::regex_literal(config.stack.hostname()),
        routes => routes(config),
        redis_doors => redis_doors(config),
        worker_addresses => worker_addresses(config),
        worker_doors => !config.workers.hosts.is_empty(),
        workers => worker_identities(config),
        enroll_socket => (!config.workers.hosts.is_empty()).then_some(crate::daemon::enroll::SOCKET),
        loki_push => (config.loki.enabled && !config.workers.hosts.is_empty()).then(|| config.loki.port.get()),
        dag_bundle => (!config.workers.hosts.is_empty()).then_some(super::dag_bundle::DIR),
        // Served with self-signed TLS; with workers (which need it), also what their
        // certificates are checked against.
        ca_cert => (n.tls == TlsMode::SelfSigned).then_some(crate::tls::CA_CERT),
        loki_door => super::loki::behind_door(config).then(|| minijinja::context! {
            port => config.loki.port.get(),
            socket => super::loki::SOCKET,
            tenants => super::loki::all_tenants(config),
            primary_tenant => super::loki::PRIMARY_TENANT,
            client => crate::tls::PRIMARY_CLIENT_SUBJECT,
        }),
    };
    env.get_template("nginx.conf")
        .and_then(|t| t.render(context))
        .expect("templates/nginx.conf.j2 renders")
        + "\n"
}

/// The addresses of the worker hosts (NGINX's `allow`), in name order.
fn worker_addresses(config: &Config) -> Vec<String> {
    config
        .workers
        .hosts
        .values()
        .filter_map(|h| h.address.get())
        .map(|ip| ip.to_string())
        .collect()
}

/// A worker as NGINX's maps know it.
#[derive(serde::Serialize)]
struct WorkerIdentity {
    name: String,
    address: String,
    /// Its certificate's subject, as `$ssl_client_s_dn` prints it.
    subject: String,
}

/// The workers that have an identity (one added before certificates has none, and
/// no door admits it), in name order.
fn worker_identities(config: &Config) -> Vec<WorkerIdentity> {
    config
        .workers
        .hosts
        .iter()
        .filter_map(|(name, host)| {
            Some(WorkerIdentity {
                name: name.as_str().to_string(),
                address: host.address.get()?.to_string(),
                subject: crate::tls::client::worker_subject(name, host.identity.as_ref()?),
            })
        })
        .collect()
}

/// A TLS door for worker hosts to one Redis instance: where it listens, where it
/// leads.
#[derive(serde::Serialize)]
struct RedisDoor {
    instance: &'static str,
    /// Where it listens, as `PortSpec` declares it and as the template writes it.
    #[serde(skip)]
    declared: PortSpec,
    listen: String,
    upstream: u16,
}

/// The broker's door whenever there are workers; the cache's when they run
/// Superset's worker too.
fn redis_doors(config: &Config) -> Vec<RedisDoor> {
    let Some(address) = config.workers.address.get() else {
        return Vec::new();
    };
    [
        (
            "broker",
            config.workers.broker_port.get(),
            config.redis.broker.port.get(),
        ),
        (
            "cache",
            config.workers.cache_port.get(),
            config.redis.cache.port.get(),
        ),
    ]
    .into_iter()
    .filter(|(instance, _, _)| super::redis::has_worker_users(config, instance))
    .map(|(instance, port, upstream)| RedisDoor {
        instance,
        declared: PortSpec {
            address,
            port,
            unit: UNIT.into(),
        },
        listen: std::net::SocketAddr::new(address, port).to_string(),
        upstream,
    })
    .collect()
}

/// What NGINX serves over HTTPS, or None with TLS off.
pub fn tls_spec(config: &Config, platform: &Platform) -> Option<TlsSpec> {
    match config.nginx.tls {
        TlsMode::Off => None,
        TlsMode::Files => Some(TlsSpec::Files {
            certificate: config.nginx.certificate.as_str().into(),
            key: config.nginx.key.as_str().into(),
        }),
        TlsMode::SelfSigned => {
            // The configured name, the host's names, and `localhost` for a browser on
            // the server itself; each once.
            let mut names: Vec<String> = Vec::new();
            let configured = config
                .stack
                .hostname
                .as_ref()
                .map(|h| h.as_str().to_string());
            for name in configured
                .into_iter()
                .chain(platform.names.iter().cloned())
                .chain(["localhost".to_string()])
            {
                if name.parse::<std::net::IpAddr>().is_err() && !names.contains(&name) {
                    names.push(name);
                }
            }
            Some(TlsSpec::SelfSigned {
                names,
                addresses: platform.addresses.clone(),
            })
        }
    }
}

pub fn render(config: &Config, platform: &Platform) -> ComponentSpec {
    let conf_path = format!("{CONF_DIR}/nginx.conf");
    let nginx = format!("/usr/sbin/nginx -c {conf_path} -e stderr");
    let mut unit = ServiceUnit::new(
        UNIT,
        "analytics-stack: NGINX entry point",
        USER,
        nginx.clone(),
    );
    unit.exec_start_pre = vec![format!("{nginx} -t -q")];
    unit.exec_reload = vec!["/bin/kill -HUP $MAINPID".into()];
    unit.kill_signal = Some("SIGQUIT");
    unit.kill_mode = Some("mixed");
    unit.runtime_directory = Some("analytics-nginx".into());
    unit.cache_directory = Some("analytics-nginx".into());
    unit.capabilities = vec!["CAP_NET_BIND_SERVICE"];
    let loki_door = super::loki::behind_door(config);
    if loki_door {
        // Loki's socket is its group's.
        unit.supplementary_groups = vec![super::loki::USER.into()];
    }
    let tls = tls_spec(config, platform);
    if tls.is_some() {
        unit.credentials = vec![
            ("server.crt".into(), crate::tls::SERVER_CERT.into()),
            ("server.key".into(), crate::tls::SERVER_KEY.into()),
        ];
    }
    let port = config.nginx.port.get();
    let doors = redis_doors(config);
    let mut ports = vec![PortSpec {
        address: config.nginx.listen,
        port,
        unit: UNIT.into(),
    }];
    if tls.is_some() {
        ports.push(PortSpec {
            address: config.nginx.listen,
            port: config.nginx.https_port.get(),
            unit: UNIT.into(),
        });
    }
    ports.extend(doors.iter().map(|door| door.declared.clone()));
    if loki_door {
        ports.push(PortSpec::loopback(config.loki.port.get(), UNIT));
    }
    let mut dirs = vec![DirSpec::public(CONF_DIR), DirSpec::public(paths::WWW)];
    if tls.is_some() {
        // The CA certificate is public (users fetch it to trust it); keys are 0600.
        dirs.push(DirSpec::public(crate::tls::DIR));
    }
    ComponentSpec {
        name: "nginx",
        description: "NGINX: the single entry point",
        packages: std::iter::once("nginx")
            .chain((!doors.is_empty()).then_some("libnginx-mod-stream"))
            .map(String::from)
            .collect(),
        version_package: "nginx".into(),
        distro_units: vec!["nginx.service".into()],
        users: vec![UserSpec::service(USER, "/nonexistent")],
        dirs,
        // Alertmanager's password file is NGINX's: it must be there before the
        // configuration that names it is loaded.
        secrets: config
            .alertmanager_on()
            .then(|| super::alertmanager::ADMIN_SECRET.to_string())
            .into_iter()
            .collect(),
        files: config
            .alertmanager_on()
            .then(super::alertmanager::htpasswd)
            .into_iter()
            .chain([FileSpec::new(conf_path, render_conf(config)).notify(UNIT, OnChange::Reload)])
            .collect(),
        units: vec![unit.render()],
        tls,
        ports,
        probes: vec![Probe::Http {
            port,
            path: "/healthz".into(),
        }],
        ..Default::default()
    }
}
