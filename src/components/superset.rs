//! Apache Superset 6 from its locked venv: gunicorn (under `/superset/`) and a Celery
//! worker, metadata in PostgreSQL, caches on the LRU Redis and Celery on the
//! non-evicting one. A oneshot unit runs the migrations, `superset init`, creates the
//! admin and registers the `warehouse` database, so loaded data can be queried at once.

use super::python::SUPERSET;
use super::redis::BrokerApp;
use super::{postgres, redis, Platform};
use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const USER: &str = "analytics-superset";
pub const INIT_UNIT: &str = "analytics-superset-init.service";
pub const WEB_UNIT: &str = "analytics-superset-web.service";
pub const WORKER_UNIT: &str = "analytics-superset-worker.service";
pub const ADMIN_SECRET: &str = "superset-admin";
pub const SECRET_KEY: &str = "superset-secret-key";
const CONF_DIR: &str = "/etc/analytics-stack/superset";
const HOME: &str = "/var/lib/analytics-stack/superset";

pub fn unit_names() -> Vec<String> {
    [INIT_UNIT, WEB_UNIT, WORKER_UNIT]
        .map(String::from)
        .to_vec()
}

fn config_path() -> String {
    format!("{CONF_DIR}/superset_config.py")
}

/// Where Superset reaches its databases and Redis from, as URLs (secrets as
/// references): this host's loopback, or on a worker host the primary's TLS doors,
/// with this worker's logins.
struct Endpoints {
    metadata_uri: String,
    /// The warehouse as Superset registers it (the init unit, on the primary only).
    warehouse_uri: String,
    /// The cache Redis without its database number; `redis_query` follows the number.
    cache_url: String,
    broker_url: String,
    redis_query: String,
    /// The CA the Celery broker's TLS is checked against, on a worker host.
    ca: Option<&'static str>,
    /// This worker's certificate and key, presented at the broker's door.
    client_cert: Option<String>,
    client_key: Option<String>,
}

fn primary_endpoints(config: &Config) -> Endpoints {
    let pg = config.postgres.port.get();
    let cache_pw = secret_ref(&redis::password_secret("cache"));
    let broker_pw = secret_ref(&BrokerApp::Superset.password_secret());
    let warehouse_pw = secret_ref(&postgres::password_secret("warehouse"));
    // With Superset's worker on worker hosts, a query on the warehouse may run on
    // any host: the registered URI is the primary's worker address, over TLS.
    let warehouse_uri = match config.workers.address.get() {
        Some(ip) if config.superset_on_workers() => format!(
            "postgresql+psycopg2://warehouse:{warehouse_pw}@{}/warehouse?sslmode=verify-full&sslrootcert={}",
            std::net::SocketAddr::new(ip, pg),
            crate::tls::CA_CERT
        ),
        _ => format!("postgresql+psycopg2://warehouse:{warehouse_pw}@127.0.0.1:{pg}/warehouse"),
    };
    Endpoints {
        metadata_uri: format!(
            "postgresql+psycopg2://superset:{}@127.0.0.1:{pg}/superset",
            secret_ref(&postgres::password_secret("superset"))
        ),
        warehouse_uri,
        cache_url: format!(
            "redis://:{cache_pw}@127.0.0.1:{}/",
            config.redis.cache.port.get()
        ),
        broker_url: format!(
            "redis://{}:{broker_pw}@127.0.0.1:{}",
            BrokerApp::Superset.user(),
            config.redis.broker.port.get()
        ),
        redis_query: String::new(),
        ca: None,
        client_cert: None,
        client_key: None,
    }
}

/// On a worker host: the metadata database as this worker's role acting as
/// `superset` (its group's grant), both Redis instances through the primary's TLS
/// doors as this worker's Redis user; every certificate checked against the CA.
fn worker_endpoints(config: &Config) -> Endpoints {
    let w = &config.worker;
    let ca = crate::tls::CA_CERT;
    let at = |port| {
        config
            .primary_at(port)
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let (role, redis_user) = w
        .name
        .as_ref()
        .map(|n| (n.postgres_role(), n.redis_user()))
        .unwrap_or_default();
    let redis_login = format!(
        "{redis_user}:{}",
        secret_ref(crate::workers::PRIMARY_BROKER_SECRET)
    );
    let client = crate::tls::client::credentials(WORKER_UNIT);
    Endpoints {
        metadata_uri: format!(
            "postgresql+psycopg2://{role}:{}@{}/superset?sslmode=verify-full&sslrootcert={ca}&options=-c%20role%3Dsuperset",
            secret_ref(crate::workers::PRIMARY_POSTGRES_SECRET),
            at(w.primary_postgres_port)
        ),
        warehouse_uri: String::new(),
        cache_url: format!("rediss://{redis_login}@{}/", at(w.primary_cache_port)),
        broker_url: format!("rediss://{redis_login}@{}", at(w.primary_broker_port)),
        redis_query: format!(
            "?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_certfile={}&ssl_keyfile={}",
            client.cert, client.key
        ),
        ca: Some(ca),
        client_cert: Some(client.cert),
        client_key: Some(client.key),
    }
}

/// `superset_config.py`; secrets as references.
pub fn render_config(config: &Config) -> String {
    let tls = super::nginx::tls_on(config);
    let statsd = &config.statsd_exporter;
    let worker_host = config.is_worker_host();
    let at = if worker_host {
        worker_endpoints(config)
    } else {
        primary_endpoints(config)
    };
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.add_filter("py", python_literal);
    env.add_template("superset_config.py", CONFIG_TEMPLATE)
        .expect("templates/superset/superset_config.py.j2 parses");
    env.add_template("cache_pickle.py", CACHE_PICKLE_PY)
        .expect("templates/superset/cache_pickle.py parses");
    let context = minijinja::context! {
        worker_host,
        secret => secret_ref(SECRET_KEY),
        metadata_uri => at.metadata_uri,
        warehouse_uri => at.warehouse_uri,
        sample => config.dlt.enabled,
        run_async => config.superset_on_workers(),
        secure => tls,
        scheme => if tls { "https" } else { "http" },
        cache_url => at.cache_url,
        broker_url => at.broker_url,
        broker_keyprefix => BrokerApp::Superset.keyprefix(),
        redis_query => at.redis_query,
        ca => at.ca,
        client_cert => at.client_cert,
        client_key => at.client_key,
        statsd_port => statsd.enabled.then(|| statsd.statsd_port.get()),
        statsd_prefix => super::superset_metrics::PREFIX,
    };
    env.get_template("superset_config.py")
        .and_then(|t| t.render(context))
        .expect("templates/superset/superset_config.py.j2 renders")
        + "\n"
}

const CONFIG_TEMPLATE: &str = include_str!("../../templates/superset/superset_config.py.j2");
/// How Superset's Redis caches read values back (included in `superset_config.py`).
pub const CACHE_PICKLE_PY: &str = include_str!("../../templates/superset/cache_pickle.py");

/// A Python literal for a template value: `True`/`False`, a number, or a string
/// (JSON's escapes are Python's), so no value can end its quotes.
fn python_literal(value: minijinja::Value) -> Result<String, minijinja::Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Bool => Ok(if value.is_true() { "True" } else { "False" }.into()),
        ValueKind::Number => Ok(value.to_string()),
        ValueKind::String => {
            Ok(serde_json::to_string(value.as_str().unwrap_or_default())
                .expect("a string serializes"))
        }
        other => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("no Python literal for a {other}"),
        )),
    }
}

/// Creates the admin once (password from the unit's credential), registers the
/// warehouse database (kept in step with the stack's password) and, with dlt, the
/// sample's dataset, charts and dashboard.
pub const INIT_PY: &str = include_str!("../../templates/superset/init_stack.py");

fn superset_unit(
    config: &Config,
    name: &str,
    description: &str,
    exec_start: String,
) -> ServiceUnit {
    let mut unit =
        super::python::app_unit(config, name, description, USER, exec_start, HOME, INIT_UNIT);
    unit.environment.extend([
        ("SUPERSET_CONFIG_PATH".into(), config_path()),
        ("SUPERSET_APP_ROOT".into(), "/superset".into()),
        ("SUPERSET_HOME".into(), HOME.into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ]);
    unit
}

/// gunicorn's own request counts, statuses and durations, to statsd_exporter.
fn gunicorn_statsd(config: &Config) -> String {
    let statsd = &config.statsd_exporter;
    if statsd.enabled {
        format!(
            " --statsd-host 127.0.0.1:{} --statsd-prefix {}",
            statsd.statsd_port.get(),
            super::superset_metrics::PREFIX
        )
    } else {
        String::new()
    }
}

fn worker_unit(config: &Config) -> ServiceUnit {
    superset_unit(
        config,
        WORKER_UNIT,
        "analytics-stack: Superset Celery worker",
        format!(
            "{} --app=superset.tasks.celery_app:app worker --pool=prefork -O fair --without-mingle --without-gossip --concurrency={}",
            SUPERSET.bin("celery"),
            config.superset.worker_concurrency.get()
        ),
    )
}

/// On a worker host: the Celery worker alone, on the primary's databases and Redis.
/// Its secrets are the ones `join` wrote (this worker's logins and the primary's
/// `SECRET_KEY`): none is generated here, as one made up would not be the primary's.
fn render_worker_host(config: &Config, platform: &Platform) -> ComponentSpec {
    let mut worker = worker_unit(config);
    worker.after.clear();
    worker.description = "analytics-stack: Superset Celery worker (worker host)".into();
    // This worker's certificate, for the primary's doors; libpq presents it to
    // PostgreSQL (the metadata database, and the warehouse a query runs on).
    let client = crate::tls::client::credentials(WORKER_UNIT);
    worker.credentials = client.credentials;
    worker.environment.extend([
        ("PGSSLCERT".to_string(), client.cert),
        ("PGSSLKEY".to_string(), client.key),
    ]);
    ComponentSpec {
        name: "superset",
        description: "Superset: the Celery worker of a worker host",
        packages: SUPERSET.packages(config, platform),
        venv: SUPERSET.venv(config, platform),
        users: vec![UserSpec::service(USER, HOME)],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(HOME, USER),
        ],
        files: vec![FileSpec::new(config_path(), render_config(config))
            .mode(0o640)
            .group(USER)
            .notify(WORKER_UNIT, OnChange::Restart)],
        units: vec![worker.render()],
        ..Default::default()
    }
}

pub fn render(config: &Config, platform: &Platform) -> ComponentSpec {
    if config.is_worker_host() {
        return render_worker_host(config, platform);
    }
    let port = config.superset.port.get();
    let superset = SUPERSET.bin("superset");
    let init = super::python::into_init(
        superset_unit(
            config,
            INIT_UNIT,
            "analytics-stack: Superset migrations, roles, admin and warehouse database",
            String::new(),
        ),
        vec![
            format!("{superset} db upgrade"),
            format!("{superset} init"),
            format!("{} {CONF_DIR}/init_stack.py", SUPERSET.bin("python")),
        ],
        ADMIN_SECRET,
        vec![postgres::UNIT.into(), redis::unit_name("cache")],
    );

    let web = superset_unit(
        config,
        WEB_UNIT,
        "analytics-stack: Superset web (gunicorn)",
        format!(
            "{} --workers {} --worker-class gthread --threads 4 --timeout 120 --bind 127.0.0.1:{port} --limit-request-line 0 --limit-request-field_size 0{} superset.app:create_app()",
            SUPERSET.bin("gunicorn"),
            config.superset.web_workers.get(),
            gunicorn_statsd(config)
        ),
    );
    let worker = worker_unit(config);
    let mut units = vec![init, web];
    if config.superset.celery_worker {
        units.push(worker);
    }
    let conf = units.iter().fold(
        FileSpec::new(config_path(), render_config(config))
            .mode(0o640)
            .group(USER),
        |file, unit| file.notify(&unit.name, OnChange::Restart),
    );
    ComponentSpec {
        name: "superset",
        description: "Superset: dashboards and SQL on the warehouse, under /superset/",
        // SQL Lab checks PostgreSQL queries as they are typed with pgsanity, which runs
        // ecpg: without it every keystroke's check answers 422.
        packages: [
            SUPERSET.packages(config, platform),
            vec!["libecpg-dev".into()],
        ]
        .concat(),
        venv: SUPERSET.venv(config, platform),
        users: vec![UserSpec::service(USER, HOME)],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(HOME, USER),
        ],
        secrets: vec![ADMIN_SECRET.into(), SECRET_KEY.into()],
        files: vec![
            conf,
            FileSpec::new(format!("{CONF_DIR}/init_stack.py"), INIT_PY)
                .mode(0o640)
                .group(USER)
                .notify(INIT_UNIT, OnChange::Restart),
        ],
        units: units.iter().map(ServiceUnit::render).collect(),
        ports: vec![PortSpec::loopback(port, WEB_UNIT)],
        probes: vec![Probe::Http {
            port,
            path: "/superset/health".into(),
        }],
        ..Default::default()
    }
}
