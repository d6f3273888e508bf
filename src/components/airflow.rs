//! Apache Airflow 3 from its locked venv: the API server (UI, REST API and the tasks'
//! execution API, under `/airflow/`), scheduler, dag-processor, triggerer and a Celery
//! worker, each its own unit. The broker is the non-evicting Redis; metadata and Celery
//! results live in PostgreSQL. A oneshot unit migrates the schema and creates the
//! admin before the processes start, so a reboot converges the same way as an apply.
//!
//! Every process reads one environment file (root's, 0600, read by systemd), so the
//! JWT secret, Fernet key and passwords are the same everywhere and in no file the
//! service user can read.

use super::python::AIRFLOW;
use super::redis::BrokerApp;
use super::{postgres, redis, Platform};
use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const USER: &str = "analytics-airflow";
pub const INIT_UNIT: &str = "analytics-airflow-init.service";
pub const API_UNIT: &str = "analytics-airflow-api-server.service";
pub const SCHEDULER_UNIT: &str = "analytics-airflow-scheduler.service";
pub const DAG_PROCESSOR_UNIT: &str = "analytics-airflow-dag-processor.service";
pub const TRIGGERER_UNIT: &str = "analytics-airflow-triggerer.service";
pub const WORKER_UNIT: &str = "analytics-airflow-worker.service";
pub const ADMIN_SECRET: &str = "airflow-admin";
pub const FERNET_SECRET: &str = "airflow-fernet-key";
pub const JWT_SECRET: &str = "airflow-jwt-secret";
pub const API_SECRET: &str = "airflow-api-secret-key";
const CONF_DIR: &str = "/etc/analytics-stack/airflow";
/// AIRFLOW_HOME: logs, dlt's pipeline state.
pub const HOME: &str = "/var/lib/analytics-stack/airflow";
/// Where users put DAG files; Airflow looks here for new ones every 30 seconds.
pub const DAGS_DIR: &str = "/var/lib/analytics-stack/dags";
/// Where users put dlt pipelines that DAGs run.
pub const PIPELINES_DIR: &str = "/var/lib/analytics-stack/pipelines";

/// Every unit, in start order (migrations first).
pub fn unit_names() -> Vec<String> {
    [
        INIT_UNIT,
        API_UNIT,
        SCHEDULER_UNIT,
        DAG_PROCESSOR_UNIT,
        TRIGGERER_UNIT,
        WORKER_UNIT,
    ]
    .map(String::from)
    .to_vec()
}

fn env_path() -> String {
    format!("{CONF_DIR}/airflow.env")
}

/// The environment every Airflow process shares; secrets as references.
pub fn render_env(config: &Config) -> String {
    let pg = config.postgres.port.get();
    let db = format!(
        "airflow:{}@127.0.0.1:{pg}/airflow",
        secret_ref(&postgres::password_secret("airflow"))
    );
    let broker = format!(
        "redis://{}:{}@127.0.0.1:{}/0",
        BrokerApp::Airflow.user(),
        secret_ref(&BrokerApp::Airflow.password_secret()),
        config.redis.broker.port.get()
    );
    let port = config.airflow.port.get();
    // Absolute links (e-mails, task log URLs) use the configured name; NGINX turns
    // redirects to it into relative ones, so browsers stay on the name they used.
    let public = format!("{}/airflow", super::nginx::public_origin(config));
    let tls = super::nginx::tls_on(config);
    let mut vars: Vec<(&str, String)> = vec![
        ("AIRFLOW_HOME", HOME.into()),
        ("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor".into()),
        ("AIRFLOW__CORE__DAGS_FOLDER", DAGS_DIR.into()),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".into()),
        ("AIRFLOW__CORE__FERNET_KEY", secret_ref(FERNET_SECRET)),
        (
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager".into(),
        ),
        // Tasks report to the API server under the prefix; the default URL has none
        // and every task would fail with "Not Found".
        (
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            format!("http://127.0.0.1:{port}/airflow/execution/"),
        ),
        (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            format!("postgresql+psycopg2://{db}"),
        ),
        ("AIRFLOW__CELERY__BROKER_URL", broker),
        (
            "AIRFLOW__CELERY__RESULT_BACKEND",
            result_backend(config, &db),
        ),
        ("AIRFLOW__API__BASE_URL", public),
        // The FAB login pages learn the browser's scheme and host from NGINX's
        // X-Forwarded-* headers (NGINX sets each one); a prefix header is never
        // trusted, since NGINX passes a client's own through.
        ("AIRFLOW__FAB__ENABLE_PROXY_FIX", "True".into()),
        ("AIRFLOW__FAB__PROXY_FIX_X_PREFIX", "0".into()),
        ("AIRFLOW__FAB__COOKIE_SECURE", python_bool(tls)),
        ("AIRFLOW__API__SECRET_KEY", secret_ref(API_SECRET)),
        // One JWT secret for every process, or workers fail signature checks.
        ("AIRFLOW__API_AUTH__JWT_SECRET", secret_ref(JWT_SECRET)),
        ("AIRFLOW__LOGGING__BASE_LOG_FOLDER", format!("{HOME}/logs")),
        // The scheduler's health server is a process of its own (83 MiB): under a
        // memory budget the scheduler's heartbeat is read from the API server instead.
        (
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
            python_bool(!config.memory_constrained),
        ),
        (
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST",
            "127.0.0.1".into(),
        ),
        (
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
            config.airflow.scheduler_health_port.get().to_string(),
        ),
        // The Celery worker would start a process (99 MiB) that removes stale
        // versions of versioned DAG bundles; the DAG folder is not versioned.
        (
            "AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL",
            "0".into(),
        ),
        // New DAG files appear within 30 s rather than Airflow's default 5 minutes.
        ("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30".into()),
        // dlt pipelines run by the DAGs load into the warehouse; no telemetry.
        (
            "DESTINATION__POSTGRES__CREDENTIALS",
            format!(
                "postgresql://warehouse:{}@127.0.0.1:{pg}/warehouse",
                secret_ref(&postgres::password_secret("warehouse"))
            ),
        ),
        ("RUNTIME__DLTHUB_TELEMETRY", "false".into()),
        ("DLT_DATA_DIR", format!("{HOME}/dlt")),
        ("ANALYTICS_STACK_PIPELINES", PIPELINES_DIR.into()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ];
    if config.workers.address.get().is_some() {
        // A worker host that dies takes its running tasks' heartbeats with it: after
        // 60 s without one (Airflow's default is 5 minutes) the scheduler fails them,
        // and their retries run on the hosts that are left.
        vars.push((
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
            "60".into(),
        ));
    }
    if config.statsd_exporter.enabled {
        vars.extend([
            ("AIRFLOW__METRICS__STATSD_ON", "True".into()),
            ("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1".into()),
            (
                "AIRFLOW__METRICS__STATSD_PORT",
                config.statsd_exporter.statsd_port.get().to_string(),
            ),
            ("AIRFLOW__METRICS__STATSD_PREFIX", "airflow".into()),
        ]);
    }
    vars.extend(broker_keyspace_vars());
    let mut text = String::from(
        "# Generated by analytics-stackd; edit the stack config instead.\n\
         # Read by systemd for every analytics-airflow-* unit.\n",
    );
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    text
}

/// Airflow's Celery settings for its broker keyspace (`redis::BrokerApp`), the same on
/// the primary and on worker hosts: its keys and channels under Airflow's prefix,
/// the only ones its logins reach, and no remote control, whose pattern subscription
/// Redis's ACL cannot grant by prefix (patterns are matched literally; systemd
/// controls the workers).
fn broker_keyspace_vars() -> [(&'static str, String); 3] {
    let prefix = BrokerApp::Airflow.keyprefix();
    [
        (
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX",
            prefix.into(),
        ),
        (
            "AIRFLOW__CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX",
            prefix.into(),
        ),
        (
            "AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL",
            "False".into(),
        ),
    ]
}

/// Celery's task results: in PostgreSQL (Airflow's recommendation) on a stack of one
/// host. With worker hosts, in the broker's Redis (database 1): the workers reach it
/// already, through the TLS door with their own users, while Celery's result tables
/// in Airflow's database would need every worker to write into that database. The
/// broker's Redis never evicts, and Celery expires each result after a day.
fn result_backend(config: &Config, db: &str) -> String {
    if config.workers.address.get().is_some() {
        format!(
            "redis://{}:{}@127.0.0.1:{}/1",
            BrokerApp::Airflow.user(),
            secret_ref(&BrokerApp::Airflow.password_secret()),
            config.redis.broker.port.get()
        )
    } else {
        format!("db+postgresql://{db}")
    }
}

/// The environment of a worker host's Celery worker: everything it reaches is the
/// primary's, over TLS to the stack CA, with this worker's own logins. It holds no
/// Fernet key, JWT secret or admin password: tasks get connections and variables
/// from the execution API, each with the token the scheduler signed for it.
pub fn render_worker_env(config: &Config) -> String {
    let w = &config.worker;
    let name = w.name.clone().unwrap_or_else(|| {
        crate::config::WorkerName::try_from("unnamed".to_string()).expect("a valid name")
    });
    let at = |port| {
        config
            .primary_at(port)
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let ca = crate::tls::CA_CERT;
    let pg_login = format!(
        "{}:{}@{}",
        name.postgres_role(),
        secret_ref(crate::workers::PRIMARY_POSTGRES_SECRET),
        at(w.primary_postgres_port)
    );
    let pg_tls = format!("sslmode=verify-full&sslrootcert={ca}");
    // This worker's certificate, at every door of the primary.
    let client = crate::tls::client::credentials(WORKER_UNIT);
    let broker_login = format!(
        "{}:{}@{}",
        name.redis_user(),
        secret_ref(crate::workers::PRIMARY_BROKER_SECRET),
        at(w.primary_broker_port)
    );
    let vars: Vec<(&str, String)> = vec![
        ("AIRFLOW_HOME", HOME.into()),
        ("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor".into()),
        (
            "AIRFLOW__CORE__DAGS_FOLDER",
            super::dag_bundle::worker_dags_dir(),
        ),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".into()),
        (
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager".into(),
        ),
        (
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            format!(
                "{}/airflow/execution/",
                super::dag_bundle::primary_origin(config)
            ),
        ),
        // The execution API's certificate is checked against the stack CA alone;
        // the worker presents its own.
        ("AIRFLOW__API__SSL_CA_FILE", ca.into()),
        ("AIRFLOW__API__CLIENT_USE_PUBLIC_CERTS", "False".into()),
        ("AIRFLOW__API__CLIENT_SSL_CERT", client.cert.clone()),
        ("AIRFLOW__API__CLIENT_SSL_KEY", client.key.clone()),
        // libpq presents it to PostgreSQL (Airflow's engine, dlt's loads).
        ("PGSSLCERT", client.cert.clone()),
        ("PGSSLKEY", client.key.clone()),
        // Airflow's CLI still builds its database engine at start (and logs the
        // command there): this worker's role may connect, and reads no table.
        (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            format!("postgresql+psycopg2://{pg_login}/airflow?{pg_tls}"),
        ),
        (
            "AIRFLOW__CELERY__BROKER_URL",
            format!("rediss://{broker_login}/0"),
        ),
        ("AIRFLOW__CELERY__SSL_ACTIVE", "True".into()),
        ("AIRFLOW__CELERY__SSL_MUTUAL_TLS", "True".into()),
        ("AIRFLOW__CELERY__SSL_CACERT", ca.into()),
        ("AIRFLOW__CELERY__SSL_CERT", client.cert.clone()),
        ("AIRFLOW__CELERY__SSL_KEY", client.key.clone()),
        (
            "AIRFLOW__CELERY__RESULT_BACKEND",
            format!(
                "rediss://{broker_login}/1?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_certfile={}&ssl_keyfile={}",
                client.cert, client.key
            ),
        ),
        ("AIRFLOW__LOGGING__BASE_LOG_FOLDER", format!("{HOME}/logs")),
        (
            "AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL",
            "0".into(),
        ),
        // dlt loads into the warehouse as this worker's role, acting as the
        // warehouse role (its member): the tables are the warehouse's, as on the
        // primary, for Superset to read.
        (
            "DESTINATION__POSTGRES__CREDENTIALS",
            format!("postgresql://{pg_login}/warehouse?{pg_tls}&options=-c%20role%3Dwarehouse"),
        ),
        ("RUNTIME__DLTHUB_TELEMETRY", "false".into()),
        ("DLT_DATA_DIR", format!("{HOME}/dlt")),
        (
            "ANALYTICS_STACK_PIPELINES",
            super::dag_bundle::worker_pipelines_dir(),
        ),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ];
    let mut text = String::from(
        "# Generated by analytics-stackd; edit the stack config instead.\n\
         # Read by systemd for this worker host's analytics-airflow-worker.service.\n",
    );
    for (k, v) in vars.into_iter().chain(broker_keyspace_vars()) {
        text.push_str(&format!("{k}={v}\n"));
    }
    text
}

/// On a worker host: the Celery worker alone, after the first DAG sync.
fn render_worker_host(config: &Config, platform: &Platform) -> ComponentSpec {
    let mut worker = super::python::app_unit(
        config,
        WORKER_UNIT,
        "analytics-stack: Airflow Celery worker (worker host)",
        USER,
        format!(
            "{} celery worker --skip-serve-logs --without-mingle --without-gossip --concurrency {}",
            AIRFLOW.bin("airflow"),
            config.airflow.worker_concurrency.get()
        ),
        HOME,
        super::dag_bundle::SYNC_SERVICE,
    );
    worker.environment_file = Some(env_path());
    worker.sees_nondumpable_children = true;
    worker.credentials = crate::tls::client::credentials(WORKER_UNIT).credentials;
    ComponentSpec {
        name: "airflow",
        description: "Airflow: the Celery worker of a worker host",
        packages: AIRFLOW.packages(config, platform),
        venv: AIRFLOW.venv(config, platform),
        users: vec![UserSpec::service(USER, HOME)],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(HOME, USER),
            DirSpec::public(crate::tls::DIR),
        ],
        files: vec![FileSpec::new(env_path(), render_worker_env(config))
            .mode(0o600)
            .notify(WORKER_UNIT, OnChange::Restart)],
        units: vec![worker.render()],
        ..Default::default()
    }
}

fn python_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

/// Creates the admin user once, with the password the stack generated (read from the
/// unit's credential, so it never appears in a command line).
pub const CREATE_ADMIN_PY: &str = r#"# Generated by analytics-stackd: creates Airflow's admin user once.
import os
import sys

from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

with open(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "admin-password")) as f:
    password = f.read().strip()

with get_application_builder() as appbuilder:
    sm = appbuilder.sm
    if sm.find_user(username="admin") is not None:
        print("the admin user exists")
        sys.exit(0)
    role = sm.find_role("Admin")
    if role is None:
        sys.exit("the Admin role does not exist: did the migration run?")
    if sm.add_user("admin", "Airflow", "Admin", "admin@localhost", role, password) is None:
        sys.exit("could not create the admin user")
    print("created the admin user")
"#;

fn airflow_unit(config: &Config, name: &str, description: &str, args: &str) -> ServiceUnit {
    let mut unit = super::python::app_unit(
        config,
        name,
        description,
        USER,
        format!("{} {args}", AIRFLOW.bin("airflow")),
        HOME,
        INIT_UNIT,
    );
    unit.environment_file = Some(env_path());
    unit
}

pub fn render(config: &Config, platform: &Platform) -> ComponentSpec {
    if config.is_worker_host() {
        return render_worker_host(config, platform);
    }
    let port = config.airflow.port.get();
    let health_port = config.airflow.scheduler_health_port.get();
    let airflow = AIRFLOW.bin("airflow");

    let init = super::python::into_init(
        airflow_unit(
            config,
            INIT_UNIT,
            "analytics-stack: Airflow database migration and admin user",
            "",
        ),
        vec![
            format!("{airflow} db migrate"),
            format!("{} {CONF_DIR}/create_admin.py", AIRFLOW.bin("python")),
        ],
        ADMIN_SECRET,
        vec![postgres::UNIT.into(), redis::unit_name("broker")],
    );

    let api = airflow_unit(
        config,
        API_UNIT,
        "analytics-stack: Airflow API server",
        &format!("api-server --host 127.0.0.1 --port {port} --workers 1 --proxy-headers"),
    );
    let mut scheduler = airflow_unit(
        config,
        SCHEDULER_UNIT,
        "analytics-stack: Airflow scheduler",
        "scheduler",
    );
    let mut dag_processor = airflow_unit(
        config,
        DAG_PROCESSOR_UNIT,
        "analytics-stack: Airflow DAG processor",
        "dag-processor",
    );
    // --skip-serve-logs: no log server on 0.0.0.0; the API server reads logs from disk.
    let mut triggerer = airflow_unit(
        config,
        TRIGGERER_UNIT,
        "analytics-stack: Airflow triggerer",
        "triggerer --skip-serve-logs",
    );
    // The concurrency is the worker's own argument, not in the shared environment
    // file: changing it restarts the worker alone. No mingle or gossip (messages
    // between workers on broadcast channels outside Airflow's broker keyspace, see
    // `redis::BrokerApp`).
    let mut worker = airflow_unit(
        config,
        WORKER_UNIT,
        "analytics-stack: Airflow Celery worker",
        &format!(
            "celery worker --skip-serve-logs --without-mingle --without-gossip --concurrency {}",
            config.airflow.worker_concurrency.get()
        ),
    );
    // These run work in supervised subprocesses that Airflow marks non-dumpable.
    for unit in [
        &mut scheduler,
        &mut dag_processor,
        &mut triggerer,
        &mut worker,
    ] {
        unit.sees_nondumpable_children = true;
    }
    let mut units = vec![init, api, scheduler, dag_processor];
    if config.airflow.triggerer {
        units.push(triggerer);
    }
    if config.airflow.local_worker {
        units.push(worker);
    }
    let env = units.iter().fold(
        FileSpec::new(env_path(), render_env(config)).mode(0o600),
        |file, unit| file.notify(&unit.name, OnChange::Restart),
    );
    // The API server's health names each process's last heartbeat: the scheduler's
    // and the DAG processor's (and the triggerer's, when it runs) must be recent.
    let mut heartbeats = vec![
        "metadatabase".to_string(),
        "scheduler".into(),
        "dag_processor".into(),
    ];
    if config.airflow.triggerer {
        heartbeats.push("triggerer".into());
    }
    let mut ports = vec![PortSpec::loopback(port, API_UNIT)];
    let mut probes = vec![Probe::AirflowHealth {
        port,
        path: "/airflow/api/v2/monitor/health".into(),
        components: heartbeats,
    }];
    if !config.memory_constrained {
        ports.push(PortSpec::loopback(health_port, SCHEDULER_UNIT));
        probes.push(Probe::Http {
            port: health_port,
            path: "/health".into(),
        });
    }
    ComponentSpec {
        name: "airflow",
        description: "Airflow: scheduler, API server under /airflow/, Celery worker",
        packages: AIRFLOW.packages(config, platform),
        venv: AIRFLOW.venv(config, platform),
        users: vec![UserSpec::service(USER, HOME)],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(HOME, USER),
            DirSpec::config(DAGS_DIR, USER),
            DirSpec::config(PIPELINES_DIR, USER),
        ],
        secrets: vec![
            ADMIN_SECRET.into(),
            FERNET_SECRET.into(),
            JWT_SECRET.into(),
            API_SECRET.into(),
        ],
        files: vec![
            env,
            FileSpec::new(format!("{CONF_DIR}/create_admin.py"), CREATE_ADMIN_PY)
                .mode(0o640)
                .group(USER)
                .notify(INIT_UNIT, OnChange::Restart),
        ],
        units: units.iter().map(ServiceUnit::render).collect(),
        ports,
        probes,
        ..Default::default()
    }
}
