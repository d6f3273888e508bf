//! Layered configuration: the embedded default, then `/etc/analytics-stack/stack.toml`,
//! then `/etc/analytics-stack/stack.d/*.toml` in name order, merged key by key.
//!
//! Every problem in every file is reported at once, each with its file, line and
//! column. Parsing is kept apart from I/O: [`load`] takes the texts, [`read_sources`]
//! reads them.

mod schema;

pub use schema::*;

/// Reads `[python] lock_dir`'s lock files into `config.lock_overrides`. A missing
/// file keeps the package's lock for that application; an unreadable one is an
/// error, never a silent fallback.
pub fn read_lock_overrides(config: &mut Config) -> Result<(), String> {
    let dir = config.python.lock_dir.as_str();
    if dir.is_empty() {
        return Ok(());
    }
    for app in crate::components::python::ALL {
        let path = std::path::Path::new(dir).join(format!("{}.lock", app.name));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                config
                    .lock_overrides
                    .insert(app.name.to_string(), std::sync::Arc::from(text));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("[python] lock_dir: {}: {e}", path.display())),
        }
    }
    Ok(())
}

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// One configuration text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub origin: String,
    pub text: String,
}

/// One problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All problems found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The files a configuration directory contributes, in merge order.
pub fn source_paths(etc_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let main = etc_dir.join("stack.toml");
    if main.exists() {
        paths.push(main);
    }
    let dropins = etc_dir.join("stack.d");
    if dropins.is_dir() {
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&dropins)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        extra.sort();
        paths.extend(extra);
    }
    Ok(paths)
}

/// Reads the embedded default and every file under `etc_dir`.
pub fn read_sources(etc_dir: &Path) -> std::io::Result<Vec<Source>> {
    let mut sources = vec![Source {
        origin: EMBEDDED_ORIGIN.into(),
        text: EMBEDDED_DEFAULT.into(),
    }];
    for path in source_paths(etc_dir)? {
        let text = std::fs::read_to_string(&path)?;
        sources.push(Source {
            origin: path.display().to_string(),
            text,
        });
    }
    Ok(sources)
}

/// Reads and validates the configuration under `etc_dir`.
pub fn load_dir(etc_dir: &Path) -> Result<Config, ConfigErrors> {
    let sources = read_sources(etc_dir).map_err(|e| {
        ConfigErrors(vec![Diagnostic {
            file: etc_dir.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read configuration: {e}"),
        }])
    })?;
    load(&sources)
}

/// The embedded default with `files` (origin, text) merged over it, in order.
pub fn load_texts(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut sources = vec![Source {
        origin: EMBEDDED_ORIGIN.into(),
        text: EMBEDDED_DEFAULT.into(),
    }];
    sources.extend(files.iter().map(|(origin, text)| Source {
        origin: origin.to_string(),
        text: text.to_string(),
    }));
    load(&sources)
}

/// A key path such as `["redis", "broker", "port"]`.
type KeyPath = Vec<String>;

/// Merges `sources` (the first one is the complete default) and validates the result.
pub fn load(sources: &[Source]) -> Result<Config, ConfigErrors> {
    let mut diagnostics = Vec::new();
    let mut parsed: Vec<(usize, Table)> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        match toml::from_str::<Table>(&source.text) {
            Ok(table) => parsed.push((i, table)),
            Err(e) => diagnostics.push(locate(
                source,
                e.span().map(|s| s.start).unwrap_or(0),
                e.message().trim().to_string(),
            )),
        }
    }
    let Some((0, default)) = parsed.first().cloned() else {
        return Err(ConfigErrors(diagnostics));
    };

    // Merge, remembering which source set each key last.
    let mut merged = Table::new();
    let mut origin_of: BTreeMap<KeyPath, usize> = BTreeMap::new();
    for (i, table) in &parsed {
        merge_into(&mut merged, table, &mut Vec::new(), *i, &mut origin_of);
    }

    // Deserialize; on each error, record it, put the default's value back (or drop an
    // unknown key) and try again, so that every bad key is reported in one pass.
    let mut seen = std::collections::BTreeSet::new();
    let config = loop {
        match serde_path_to_error::deserialize::<_, Config>(Value::Table(merged.clone())) {
            Ok(config) => break Some(config),
            Err(err) => {
                let path: KeyPath = path_segments(&err.path().to_string());
                let message = err.inner().message().trim().to_string();
                if !seen.insert(path.clone()) {
                    diagnostics.push(Diagnostic {
                        file: EMBEDDED_ORIGIN.into(),
                        line: 0,
                        column: 0,
                        message,
                    });
                    break None;
                }
                diagnostics.push(diagnostic_at(sources, &origin_of, &path, &message));
                match lookup(&default, &path) {
                    Some(v) => set_path(&mut merged, &path, v.clone()),
                    None => remove_path(&mut merged, &path),
                }
            }
        }
    };

    let mut config = config;
    if let Some(config) = config.as_mut().filter(|c| c.is_worker_host()) {
        for (path, message) in take_worker_role(config, &origin_of) {
            diagnostics.push(diagnostic_at(sources, &origin_of, &path, &message));
        }
    }
    if let Some(config) = &config {
        for (path, message) in cross_checks(config) {
            diagnostics.push(diagnostic_at(sources, &origin_of, &path, &message));
        }
    }
    match config {
        Some(config) if diagnostics.is_empty() => Ok(config),
        _ => Err(ConfigErrors(diagnostics)),
    }
}

/// What a worker host does not run: the primary's components, by the key that
/// turns each on.
pub fn primary_only_flags(config: &mut Config) -> [(&'static str, &mut bool); 9] {
    [
        ("nginx", &mut config.nginx.enabled),
        ("postgres", &mut config.postgres.enabled),
        ("redis", &mut config.redis.enabled),
        ("prometheus", &mut config.prometheus.enabled),
        ("alertmanager", &mut config.alertmanager.enabled),
        ("postgres_exporter", &mut config.postgres_exporter.enabled),
        ("statsd_exporter", &mut config.statsd_exporter.enabled),
        ("loki", &mut config.loki.enabled),
        ("grafana", &mut config.grafana.enabled),
    ]
}

/// A worker host runs the Airflow Celery worker, node_exporter and the log shipper:
/// the primary's components are turned off here, and one that a file of the user's
/// turns on is an error at that line (a silently ignored setting would mislead).
/// Superset is off unless a file turns it on (`join` does, when the primary grants
/// it): then this host runs Superset's Celery worker alone, no web, no migrations.
/// Scheduled backups are off too: a worker holds nothing `join` cannot give it again.
fn take_worker_role(
    config: &mut Config,
    origin_of: &BTreeMap<KeyPath, usize>,
) -> Vec<(KeyPath, String)> {
    let mut problems = Vec::new();
    let set_by_user = |path: &KeyPath| origin_of.get(path).is_some_and(|&origin| origin > 0);
    for (name, flag) in primary_only_flags(config) {
        let path = key_path(&format!("{name}.enabled"));
        if *flag && set_by_user(&path) {
            problems.push((
                path,
                format!(
                    "a worker host (stack.role = \"worker\") runs no {name}: it is the primary's"
                ),
            ));
        }
        *flag = false;
    }
    config.superset.enabled &= set_by_user(&key_path("superset.enabled"));
    config.backup.schedule = CalendarSpec::none();
    let w = &config.worker;
    for (key, missing) in [
        ("worker.name", w.name.is_none()),
        ("worker.address", w.address.get().is_none()),
        ("worker.primary", w.primary.get().is_none()),
    ] {
        if missing {
            problems.push((
                key_path(key),
                "a worker host needs it: run `analytics-stack join PRIMARY --token-file FILE`"
                    .into(),
            ));
        }
    }
    if !config.airflow.enabled {
        problems.push((
            key_path("airflow.enabled"),
            "a worker host runs Airflow's Celery worker: it cannot be off".into(),
        ));
    }
    if config.workers.address.get().is_some() {
        problems.push((
            key_path("workers.address"),
            "a worker host has no workers of its own".into(),
        ));
    }
    problems
}

/// Checks that span several keys.
fn cross_checks(config: &Config) -> Vec<(KeyPath, String)> {
    let mut problems = Vec::new();
    let mut ports: Vec<(KeyPath, u16)> = Vec::new();
    if config.nginx.enabled {
        ports.push((key_path("nginx.port"), config.nginx.port.get()));
        if config.nginx.tls != TlsMode::Off {
            ports.push((key_path("nginx.https_port"), config.nginx.https_port.get()));
        }
    }
    let n = &config.nginx;
    for (key, path) in [("nginx.certificate", &n.certificate), ("nginx.key", &n.key)] {
        match (n.tls, path.is_empty()) {
            (TlsMode::Files, true) => problems.push((
                key_path(key),
                "tls = \"files\" needs both a certificate and a key".to_string(),
            )),
            (TlsMode::Off | TlsMode::SelfSigned, false) => problems.push((
                key_path(key),
                "is used only with tls = \"files\"".to_string(),
            )),
            _ => {}
        }
    }
    if config.postgres.enabled {
        ports.push((key_path("postgres.port"), config.postgres.port.get()));
    }
    if config.redis.enabled {
        ports.push((
            key_path("redis.broker.port"),
            config.redis.broker.port.get(),
        ));
        ports.push((key_path("redis.cache.port"), config.redis.cache.port.get()));
    }
    if config.prometheus.enabled {
        ports.push((key_path("prometheus.port"), config.prometheus.port.get()));
    }
    if config.alertmanager_on() {
        ports.push((
            key_path("alertmanager.port"),
            config.alertmanager.port.get(),
        ));
    }
    problems.extend(alert_receiver_checks(config));
    if config.node_exporter.enabled {
        ports.push((
            key_path("node_exporter.port"),
            config.node_exporter.port.get(),
        ));
    }
    if config.postgres_exporter_on() {
        ports.push((
            key_path("postgres_exporter.port"),
            config.postgres_exporter.port.get(),
        ));
    }
    if config.statsd_exporter.enabled {
        ports.push((
            key_path("statsd_exporter.port"),
            config.statsd_exporter.port.get(),
        ));
        ports.push((
            key_path("statsd_exporter.statsd_port"),
            config.statsd_exporter.statsd_port.get(),
        ));
    }
    if config.loki.enabled {
        ports.push((key_path("loki.port"), config.loki.port.get()));
        ports.push((key_path("loki.grpc_port"), config.loki.grpc_port.get()));
    }
    if config.grafana.enabled {
        ports.push((key_path("grafana.port"), config.grafana.port.get()));
    }
    if config.log_shipper.enabled {
        ports.push((key_path("log_shipper.port"), config.log_shipper.port.get()));
    }
    if config.airflow.enabled {
        ports.push((key_path("airflow.port"), config.airflow.port.get()));
        ports.push((
            key_path("airflow.scheduler_health_port"),
            config.airflow.scheduler_health_port.get(),
        ));
    }
    if config.superset.enabled {
        ports.push((key_path("superset.port"), config.superset.port.get()));
    }
    // Workers reach PostgreSQL and, through NGINX's TLS door, the broker; both
    // present the stack CA's certificate, which the workers are given.
    if config.workers.address.get().is_some() {
        ports.push((
            key_path("workers.broker_port"),
            config.workers.broker_port.get(),
        ));
        if config.workers.superset {
            ports.push((
                key_path("workers.cache_port"),
                config.workers.cache_port.get(),
            ));
            if !config.superset.enabled {
                problems.push((
                    key_path("workers.superset"),
                    "Superset's worker on worker hosts needs Superset here: enable it, or set superset = false".into(),
                ));
            }
        }
        for (needed, on) in [
            ("postgres", config.postgres.enabled),
            ("redis", config.redis.enabled),
            ("nginx", config.nginx.enabled),
        ] {
            if !on {
                problems.push((
                    key_path("workers.address"),
                    format!("worker hosts need {needed} here: enable it, or set address = \"\""),
                ));
            }
        }
        if config.nginx.tls != TlsMode::SelfSigned {
            problems.push((
                key_path("workers.address"),
                "worker hosts need the stack CA's certificates: nginx.tls = \"self-signed\""
                    .to_string(),
            ));
        }
        for (name, host) in &config.workers.hosts {
            if host.address.get().is_none() {
                problems.push((
                    key_path(&format!("workers.hosts.{}.address", name.as_str())),
                    "a worker needs the address it connects from".to_string(),
                ));
            }
        }
    } else if !config.workers.hosts.is_empty() {
        problems.push((
            key_path("workers.hosts"),
            "workers are listed but workers.address is \"\": they could not reach this host"
                .to_string(),
        ));
    }
    // The applications keep their metadata in PostgreSQL and queue work on Redis.
    // Reported where the needed component was turned off: that is the user's line.
    // On a worker host PostgreSQL and Redis are the primary's.
    let worker = config.is_worker_host();
    let enabled = |name: &str| match name {
        "postgres" => config.postgres.enabled || worker,
        "redis" => config.redis.enabled || worker,
        "airflow" => config.airflow.enabled,
        "superset" => config.superset.enabled,
        "dlt" => config.dlt.enabled,
        _ => true,
    };
    const NEEDS: &[(&str, &[&str])] = &[
        ("airflow", &["postgres", "redis"]),
        ("superset", &["postgres", "redis"]),
        ("dlt", &["postgres", "airflow"]),
    ];
    for (app, needed) in NEEDS {
        for needed in needed.iter().filter(|n| enabled(app) && !enabled(n)) {
            problems.push((
                key_path(&format!("{needed}.enabled")),
                format!("{needed} is needed by {app}: disable {app} too, or keep {needed}"),
            ));
        }
    }
    for (i, (path, port)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            problems.push((
                path.clone(),
                format!("port {port} is already used by {}", other.join(".")),
            ));
        }
    }
    problems
}

/// An e-mail receiver needs its relay, and a relay or login without addresses to
/// send to would be ignored: both are said at their keys.
fn alert_receiver_checks(config: &Config) -> Vec<(KeyPath, String)> {
    let email = &config.alertmanager.email;
    let mut problems = Vec::new();
    if !email.to.is_empty() && email.smarthost.is_empty() {
        problems.push((
            key_path("alertmanager.email.smarthost"),
            "e-mail to send needs the SMTP relay (\"host:port\")".to_string(),
        ));
    }
    if email.to.is_empty() {
        for (key, set) in [
            ("alertmanager.email.smarthost", !email.smarthost.is_empty()),
            (
                "alertmanager.email.username",
                !email.username.as_str().is_empty(),
            ),
            (
                "alertmanager.email.password_file",
                !email.password_file.is_empty(),
            ),
        ] {
            if set {
                problems.push((
                    key_path(key),
                    "is used only with alertmanager.email.to".to_string(),
                ));
            }
        }
    }
    if !email.password_file.is_empty() && email.username.as_str().is_empty() {
        problems.push((
            key_path("alertmanager.email.password_file"),
            "a password needs its login: set alertmanager.email.username".to_string(),
        ));
    }
    problems
}

fn key_path(dotted: &str) -> KeyPath {
    dotted.split('.').map(String::from).collect()
}

fn path_segments(path: &str) -> KeyPath {
    if path == "." {
        return Vec::new();
    }
    path.split('.').map(String::from).collect()
}

fn merge_into(
    dst: &mut Table,
    src: &Table,
    prefix: &mut KeyPath,
    origin: usize,
    origin_of: &mut BTreeMap<KeyPath, usize>,
) {
    for (key, value) in src {
        prefix.push(key.clone());
        origin_of.insert(prefix.clone(), origin);
        match (dst.get_mut(key), value) {
            (Some(Value::Table(d)), Value::Table(s)) => merge_into(d, s, prefix, origin, origin_of),
            _ => {
                dst.insert(key.clone(), value.clone());
                if let Value::Table(s) = value {
                    // Every key below now comes from this source too.
                    let mut scratch = Table::new();
                    merge_into(&mut scratch, s, prefix, origin, origin_of);
                }
            }
        }
        prefix.pop();
    }
}

fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(t) = entry {
        set_path(t, rest, value);
    }
}

fn remove_path(table: &mut Table, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            table.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Table(t)) = table.get_mut(first) {
                remove_path(t, rest);
            }
        }
    }
}

/// Locates `path` in the source that set it last: at the value for a bad value, at
/// the key for an unknown key.
fn diagnostic_at(
    sources: &[Source],
    origin_of: &BTreeMap<KeyPath, usize>,
    path: &KeyPath,
    message: &str,
) -> Diagnostic {
    // The longest prefix of the path some source set.
    let origin = (0..=path.len())
        .rev()
        .find_map(|n| origin_of.get(&path[..n]))
        .copied()
        .unwrap_or(0);
    let source = &sources[origin];
    let offset = span_of(&source.text, path, message.starts_with("unknown field")).unwrap_or(0);
    let message = if path.is_empty() {
        message.to_string()
    } else {
        format!("{}: {message}", path.join("."))
    };
    locate(source, offset, message)
}

/// The byte offset of `path` in `text` (its key when `at_key`, else its value).
fn span_of(text: &str, path: &[String], at_key: bool) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut best = None;
    for (i, segment) in path.iter().enumerate() {
        let (key, item) = table.get_key_value(segment)?;
        let last = i + 1 == path.len();
        best = if last && !at_key {
            item.span().or(key.span()).map(|s| s.start)
        } else {
            key.span().or(item.span()).map(|s| s.start)
        }
        .or(best);
        if last {
            break;
        }
        table = item.as_table_like()?;
    }
    best
}

fn locate(source: &Source, offset: usize, message: String) -> Diagnostic {
    let offset = offset.min(source.text.len());
    let before = &source.text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Diagnostic {
        file: source.origin.clone(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests;
