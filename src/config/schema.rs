//! The typed configuration. Every struct denies unknown keys; values that need
//! checking are newtypes that validate while deserializing, so a bad value is
//! reported at its own line and column.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub stack: StackConfig,
    pub nginx: NginxConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub prometheus: PrometheusConfig,
    pub alertmanager: AlertmanagerConfig,
    pub node_exporter: NodeExporterConfig,
    pub postgres_exporter: PostgresExporterConfig,
    pub archives: ArchivesConfig,
    pub statsd_exporter: StatsdExporterConfig,
    pub loki: LokiConfig,
    pub grafana: GrafanaConfig,
    pub log_shipper: LogShipperConfig,
    pub python: PythonConfig,
    pub airflow: AirflowConfig,
    pub superset: SupersetConfig,
    pub dlt: DltConfig,
    pub apt: AptConfig,
    pub bundle: BundleConfig,
    pub backup: BackupConfig,
    pub workers: WorkersConfig,
    pub worker: WorkerRoleConfig,
    /// Set by the memory budget ([`crate::budget::fit`]), never read from a file:
    /// smaller allocator arenas for the Python processes, smaller query limits and
    /// caches for Prometheus and Loki, no separate health server for Airflow's
    /// scheduler.
    #[serde(skip)]
    pub memory_constrained: bool,
    /// The lock files read from `[python] lock_dir`, by application, never from a
    /// file of the configuration itself (see `Stack::config`).
    #[serde(skip)]
    pub lock_overrides: std::collections::BTreeMap<String, std::sync::Arc<str>>,
}

/// Where Debian packages come from, when not from the host's own sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptConfig {
    /// An internal Debian mirror (e.g. "http://mirror.internal/debian"): packages are
    /// installed from its CODENAME and CODENAME-updates suites only; "" = the host's
    /// sources.
    pub mirror: MirrorUrl,
}

/// An offline bundle to install from (`analytics-stack bundle create`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// Path of the bundle file; "" = none. `apply --bundle FILE` overrides it.
    pub path: OptionalPath,
}

/// Where the application venvs come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The interpreter the venvs are built on: an absolute path, or "managed" for the
    /// relocatable CPython the stack brings (a verified release archive). With the
    /// default, an application the distribution's python3 cannot run (Superset on
    /// Debian 13) gets the managed one and the others keep the distribution's.
    pub interpreter: Interpreter,
    /// A package index (PEP 503 "simple") serving the locked packages; "" = PyPI.
    pub index_url: MirrorUrl,
    /// A directory whose `APP.lock` files (airflow, superset, dlt) replace the
    /// package's lock files: an operator's own patch releases, still hash-locked.
    /// "" = the package's.
    pub lock_dir: OptionalPath,
    /// Your own relocatable CPython (python-build-standalone's `install_only` layout)
    /// instead of the catalog's build: a `[python.managed]` table with `url` (http or
    /// https: the digest decides), `sha256`, `version` (`3.MINOR.PATCH`, also its
    /// directory under `/opt/analytics-stack/python/`) and `packages` (the Debian
    /// packages of the shared libraries it links to, if any).
    #[serde(default)]
    pub managed: Option<ManagedPythonArchive>,
}

/// An absolute path, or "managed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Interpreter {
    /// The stack's own CPython, for every application.
    Managed,
    /// This interpreter (the distribution's by default).
    Path(AbsolutePath),
}

impl Interpreter {
    /// The distribution's python3.
    pub const DEBIAN: &'static str = "/usr/bin/python3";

    pub fn path(&self) -> Option<&str> {
        match self {
            Interpreter::Managed => None,
            Interpreter::Path(p) => Some(p.as_str()),
        }
    }
}

impl TryFrom<String> for Interpreter {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "managed" {
            return Ok(Interpreter::Managed);
        }
        AbsolutePath::try_from(s)
            .map(Interpreter::Path)
            .map_err(|e| format!("{e}, nor \"managed\""))
    }
}

impl From<Interpreter> for String {
    fn from(i: Interpreter) -> String {
        match i {
            Interpreter::Managed => "managed".into(),
            Interpreter::Path(p) => p.0,
        }
    }
}

/// A relocatable CPython archive in python-build-standalone's `install_only` layout
/// (one top directory holding `bin/python3`), verified by its sha256 before it is
/// unpacked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedPythonArchive {
    /// Where it is downloaded from (http or https: the digest decides).
    pub url: MirrorUrl,
    /// Its sha256.
    pub sha256: Sha256Hex,
    /// The CPython version it holds, `3.MINOR.PATCH`; also its directory under
    /// `/opt/analytics-stack/python/`.
    pub version: PythonVersion,
    /// Debian packages of the shared libraries its modules link to, installed with
    /// it (a CPython built on Debian: `libsqlite3-0`, `libssl3`, `libffi8`…;
    /// python-build-standalone's builds need none).
    #[serde(default)]
    pub packages: Vec<DebianPackageName>,
}

/// A Debian package name: lower-case letters, digits and `+-.`, starting with a
/// letter or digit, at least two characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DebianPackageName(String);

impl DebianPackageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DebianPackageName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() >= 2
            && s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if ok {
            Ok(DebianPackageName(s))
        } else {
            Err(format!(
                "{:?} is not a Debian package name",
                crate::util::printable(&s)
            ))
        }
    }
}

impl From<DebianPackageName> for String {
    fn from(n: DebianPackageName) -> String {
        n.0
    }
}

/// `3.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PythonVersion(String);

impl PythonVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn minor(&self) -> u32 {
        self.0
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

impl TryFrom<String> for PythonVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let numeric =
            |p: &&str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if parts.len() == 3 && parts[0] == "3" && parts.iter().all(numeric) {
            Ok(PythonVersion(s))
        } else {
            Err(format!(
                "{:?} is not a CPython version (3.MINOR.PATCH)",
                crate::util::printable(&s)
            ))
        }
    }
}

impl From<PythonVersion> for String {
    fn from(v: PythonVersion) -> String {
        v.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirflowConfig {
    /// Airflow: API server, scheduler, DAG processor, triggerer and Celery worker,
    /// served under `/airflow/`; needs postgres and redis. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// The API server (UI, REST API and the tasks' execution API), loopback only.
    pub port: Port,
    /// The scheduler's health check server, loopback only.
    pub scheduler_health_port: Port,
    /// Tasks the Celery worker runs at once.
    pub worker_concurrency: WorkerCount,
    /// The triggerer: runs deferred tasks (deferrable operators and sensors). Without
    /// it a task that defers never resumes.
    pub triggerer: bool,
    /// This host's own Celery worker. Off on a primary whose tasks run on worker hosts
    /// only.
    pub local_worker: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupersetConfig {
    /// Superset: gunicorn and its Celery worker, served under `/superset/`; needs
    /// postgres and redis. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// gunicorn, loopback only.
    pub port: Port,
    /// gunicorn worker processes (4 threads each).
    pub web_workers: WorkerCount,
    /// Processes of the Celery worker (async queries, reports, thumbnails).
    pub worker_concurrency: WorkerCount,
    /// The Celery worker itself. Without it SQL Lab runs every query in the web
    /// process (no asynchronous queries), and there are no scheduled reports or
    /// thumbnails.
    pub celery_worker: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DltConfig {
    /// The dlt venv, the sample pipeline and its Airflow DAG (needs airflow and
    /// postgres). false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
}

/// A count of worker processes: 1..=64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct WorkerCount(u32);

impl WorkerCount {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for WorkerCount {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (1..=64).contains(&v) {
            Ok(WorkerCount(v as u32))
        } else {
            Err(format!("must be between 1 and 64, not {v}"))
        }
    }
}

impl From<WorkerCount> for u32 {
    fn from(c: WorkerCount) -> u32 {
        c.0
    }
}

/// An absolute filesystem path without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AbsolutePath(String);

impl AbsolutePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AbsolutePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.starts_with('/')
            && !s.split('/').any(|part| part == "..")
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(AbsolutePath(s))
        } else {
            Err(format!("{s:?} is not an absolute path"))
        }
    }
}

impl From<AbsolutePath> for String {
    fn from(p: AbsolutePath) -> String {
        p.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogShipperConfig {
    /// The log shipper: every `analytics-*` unit's journal lines to Loki (from a
    /// worker host, through the primary's door). false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Which shipper: Grafana Alloy, or Promtail (end of life since March 2026).
    pub kind: LogShipperKind,
    /// The shipper's own HTTP port (its health), loopback only.
    pub port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogShipperKind {
    Alloy,
    Promtail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaConfig {
    /// Grafana, served under `/grafana/`, with the stack's dashboards over
    /// Prometheus and Loki; its admin password generated. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Grafana's HTTP port, loopback only.
    pub port: Port,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivesConfig {
    /// Base URL of an internal mirror of the release hosts, keeping upstream's paths;
    /// "" downloads from upstream. Over plain http it is trusted only on loopback,
    /// unless the archives are pinned (`sha256`).
    pub mirror: MirrorUrl,
    /// Digests the operator pins, by component, for archives the catalog does not
    /// pin (this host's architecture): such an archive is then verified against the
    /// pin, whatever a mirror's checksum file says.
    #[serde(default)]
    pub sha256: std::collections::BTreeMap<String, Sha256Hex>,
}

/// 64 hexadecimal digits, stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{:?} is not a sha256 (64 hexadecimal digits)",
                crate::util::printable(&s)
            ))
        }
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdExporterConfig {
    /// statsd_exporter: Airflow's and Superset's StatsD metrics for Prometheus
    /// (they send to it when it is on). false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Its Prometheus metrics, loopback only.
    pub port: Port,
    /// Where it takes StatsD (UDP and TCP), loopback only.
    pub statsd_port: Port,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Loki: the journal lines of every host of the stack, filesystem storage, TSDB
    /// schema v13. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Loki's HTTP port (queries, the local push), loopback only.
    pub port: Port,
    /// Loki's gRPC listener, loopback only (used by its own components).
    pub grpc_port: Port,
    /// How long log lines are kept.
    pub retention: Duration,
}

/// "" or an http(s) URL without query or fragment, parsed: a host of name
/// characters (or a bracketed IPv6 address), an optional `user:token@`, a path of
/// plain URL characters. It lands in an apt sources list, unit environments and
/// request lines, so whitespace, control characters, quotes and the like are refused
/// rather than escaped. Printed (`config show`, `plan`) with any credentials
/// replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MirrorUrl(String);

impl MirrorUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `s` is not a URL the stack will use, if it is not.
fn url_problem(s: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Some("it has no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return Some("only http and https are supported");
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let ok = !userinfo.is_empty()
                && userinfo
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:".contains(c))
                && !userinfo.contains(['\'', '$', '&', ';', '(', ')']);
            if !ok {
                return Some("its user:password part has characters that need escaping");
            }
            host
        }
        None => authority,
    };
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, port)) = v6.split_once(']') else {
            return Some("its IPv6 address is not closed by ']'");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("its IPv6 address does not parse");
        }
        if !(port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
        {
            return Some("its port is not a number");
        }
        "v6"
    } else {
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
        if !port.is_empty() && port.parse::<u16>().is_err() {
            return Some("its port is not a number");
        }
        host
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Some("its host is not a host name or address");
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~/%+@:,=".contains(c))
    {
        return Some("its path has characters other than letters, digits and -._~/%+@:,=");
    }
    None
}

/// An e-mail address: `local@domain`, printable ASCII without spaces, quotes, angle
/// brackets or commas (it lands in a mail header and in YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn email_problem(s: &str) -> Option<String> {
    let (local, domain) = s.rsplit_once('@')?;
    let plain = |c: char| c.is_ascii_graphic() && !"\"<>,;()[]\\@`".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || s.len() > 254
        || !local.chars().all(plain)
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Some(format!(
            "{s:?} is not an e-mail address like \"ops@example.com\""
        ));
    }
    None
}

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.contains('@') {
            return Err(format!(
                "{s:?} is not an e-mail address like \"ops@example.com\""
            ));
        }
        match email_problem(&s) {
            Some(problem) => Err(problem),
            None => Ok(EmailAddress(s)),
        }
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

/// "" or an [`EmailAddress`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OptionalEmailAddress(Option<EmailAddress>);

impl OptionalEmailAddress {
    pub fn get(&self) -> Option<&EmailAddress> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for OptionalEmailAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            Ok(OptionalEmailAddress(None))
        } else {
            EmailAddress::try_from(s).map(|e| OptionalEmailAddress(Some(e)))
        }
    }
}

impl From<OptionalEmailAddress> for String {
    fn from(e: OptionalEmailAddress) -> String {
        e.0.map(String::from).unwrap_or_default()
    }
}

/// "" or an SMTP relay as `host:port`: a host name or IP address (IPv6 in
/// brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SmtpRelay(String);

impl SmtpRelay {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for SmtpRelay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(SmtpRelay(s));
        }
        let bad = || format!("{s:?} is not an SMTP relay like \"smtp.example.com:587\"");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            }
        };
        if !host_ok || Port::try_from(port.parse::<i64>().map_err(|_| bad())?).is_err() {
            return Err(bad());
        }
        Ok(SmtpRelay(s))
    }
}

impl From<SmtpRelay> for String {
    fn from(r: SmtpRelay) -> String {
        r.0
    }
}

/// A login name: printable ASCII, no spaces or quotes; "" = none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlainWord(String);

impl PlainWord {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlainWord {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() <= 256
            && s.chars()
                .all(|c| c.is_ascii_graphic() && !"\"'`\\".contains(c))
        {
            Ok(PlainWord(s))
        } else {
            Err(format!(
                "{s:?} is not a login name: printable ASCII without spaces, quotes or backslashes"
            ))
        }
    }
}

impl From<PlainWord> for String {
    fn from(w: PlainWord) -> String {
        w.0
    }
}

/// An http(s) URL a notification is POSTed to: a [`MirrorUrl`]'s rules for the part
/// before `?`, and a query of plain URL characters (chat tools put their token
/// there). Printed with any credentials replaced by `***`, the query by `?***`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (base, query) = s.split_once('?').unwrap_or((&s, ""));
        if let Some(problem) = url_problem(base) {
            return Err(format!(
                "{:?} is not a webhook URL: {problem}",
                redact_url(base)
            ));
        }
        if !query
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~%+=&/:@,".contains(c))
        {
            return Err(format!(
                "{:?} is not a webhook URL: its query has characters other than letters, digits and -._~%+=&/:@,",
                redact_url(base)
            ));
        }
        Ok(WebhookUrl(s))
    }
}

impl From<WebhookUrl> for String {
    fn from(u: WebhookUrl) -> String {
        u.0
    }
}

/// `url` with the `user:password@` part, if any, replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[authority_end..]),
        None => url.to_string(),
    }
}

/// `text` with the credentials of every URL in it replaced by `***` (for error
/// messages that quote URLs).
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == ')')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl TryFrom<String> for MirrorUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(MirrorUrl(s));
        }
        match url_problem(&s) {
            None => Ok(MirrorUrl(s)),
            // The value is quoted redacted and escaped: it may hold a token and any
            // character at all.
            Some(why) => Err(format!(
                "{:?} is not a usable http(s) URL: {why}",
                redact_url(&s)
            )),
        }
    }
}

/// Serialized (only ever to print the configuration) without credentials.
impl From<MirrorUrl> for String {
    fn from(m: MirrorUrl) -> String {
        redact_url(&m.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// The name used where an absolute URL cannot be avoided (links in e-mails, the
    /// landing page, the certificate); unset = the host's FQDN (see `Stack::config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// Members of this Unix group may call the mutating D-Bus methods besides root
    /// (apply, bundles they can read themselves, start, stop, uninstall); never
    /// `credentials`, backups or restores. "" = root only.
    pub admin_group: GroupName,
    /// How long apply waits for every component to report healthy, in seconds (a
    /// first Airflow start takes about a minute).
    pub health_timeout_secs: u32,
    /// "standard", or "edge": a small VM, with a memory budget of
    /// 1.5 GiB (`EDGE_BUDGET_BYTES`) unless `memory_budget` says otherwise.
    pub profile: Profile,
    /// The memory every stack process together may use; "" = none (each component
    /// at the sizes configured, no limits written).
    pub memory_budget: MemoryBudget,
    /// "primary" (the whole stack) or "worker" (a host that joined a primary: its
    /// Celery worker, node_exporter and log shipper only; see `[worker]`).
    pub role: Role,
}

/// What a host is in the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Worker,
}

/// The budget `profile = "edge"` sets when `memory_budget` is "": 1.5 GiB.
pub const EDGE_BUDGET_BYTES: u64 = 3 << 29;

impl StackConfig {
    /// The memory budget in force: `memory_budget`, or the edge profile's.
    pub fn budget_bytes(&self) -> Option<u64> {
        self.memory_budget
            .bytes()
            .or((self.profile == Profile::Edge).then_some(EDGE_BUDGET_BYTES))
    }
}

/// What kind of host the stack is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Standard,
    Edge,
}

/// "" or an amount of memory like "1.5GiB", "800MiB" or "2G": a number (decimals
/// allowed) and a unit K, M, G or T, with or without "iB"/"B" (all binary, as
/// systemd reads them). At least 64 MiB. Stored in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemoryBudget(Option<u64>);

impl MemoryBudget {
    pub fn bytes(self) -> Option<u64> {
        self.0
    }
}

impl TryFrom<String> for MemoryBudget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(MemoryBudget(None));
        }
        let bad = || {
            format!(
                "{:?} is not an amount of memory like \"1.5GiB\" or \"800MiB\"",
                crate::util::printable(&s)
            )
        };
        let lower = s.trim().to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = lower.split_at(split);
        let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || whole.len() > 6 || fraction.len() > 3 {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let thousandths: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
        let bytes = ((whole * 1000 + thousandths) << shift) / 1000;
        if bytes < 64 << 20 {
            return Err(format!(
                "{:?} is less than 64MiB",
                crate::util::printable(&s)
            ));
        }
        Ok(MemoryBudget(Some(bytes)))
    }
}

impl From<MemoryBudget> for String {
    fn from(b: MemoryBudget) -> String {
        b.0.map_or_else(String::new, |bytes| format!("{}MiB", bytes >> 20))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    /// NGINX: the single door (`/`, `/airflow/`, `/superset/`, `/grafana/`). false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// The address the door listens on (an IP address; "0.0.0.0" = every IPv4
    /// address).
    pub listen: IpAddr,
    /// Plain HTTP: redirects to HTTPS when TLS is on (but `/healthz`).
    pub port: Port,
    /// "self-signed" (a stack CA and a certificate for the host's names and
    /// addresses), "files" (`certificate` and `key`) or "off" (plain HTTP: logins in
    /// clear text). Plain HTTP redirects to HTTPS when TLS is on (`/healthz` excepted).
    pub tls: TlsMode,
    /// The HTTPS port, when TLS is on.
    pub https_port: Port,
    /// With `tls = "files"`: the PEM certificate (chain) and its private key.
    pub certificate: OptionalPath,
    /// With `tls = "files"`: your PEM key, outside `/home` and `/root` (the daemon's
    /// sandbox hides those).
    pub key: OptionalPath,
}

/// How NGINX serves HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain HTTP only: logins cross the network in clear text.
    Off,
    /// A stack CA the daemon generates, and a server certificate it signs for the
    /// host's names and addresses.
    SelfSigned,
    /// The operator's certificate and key (`certificate`, `key`).
    Files,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// PostgreSQL: the warehouse and the applications' metadata, listening on
    /// 127.0.0.1 only (and on `[workers] address` for worker roles, TLS only). false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// PostgreSQL's port.
    pub port: Port,
    /// PostgreSQL's `max_connections`.
    pub max_connections: ConnectionCount,
    /// PostgreSQL's `shared_buffers` (lowered under a memory budget).
    pub shared_buffers: ByteSize,
    /// Memory one sort or hash of a query may use before spilling to disk.
    pub work_mem: ByteSize,
    /// The PostgreSQL major to run (Debian's `postgresql-N`); unset = the one the
    /// distribution ships (15 on bookworm, 17 on trixie). When it is newer than the
    /// stack's cluster, apply upgrades the cluster (pg_upgrade) rather than start an
    /// empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<PostgresMajor>,
    /// Continuous archiving and point-in-time recovery.
    pub archiving: ArchivingConfig,
}

/// The write-ahead log archived as it is written and base backups, by pgBackRest
/// (Debian's package), into a repository: `analytics-stack restore --to TIME|latest`
/// brings the cluster back to any second since the oldest base backup kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivingConfig {
    /// Archive the WAL and take a base backup with every backup (`[backup]
    /// schedule`, `analytics-stack backup`); the first when apply turns it on.
    /// false stops archiving on the next apply; the repository stays.
    pub enabled: bool,
    /// The pgBackRest repository (the WAL and the base backups), owned by
    /// PostgreSQL's user. Best on another disk than the cluster's
    /// (/var/lib/analytics-stack/postgres): `status` says when it shares one.
    pub repository: RepositoryPath,
    /// The longest a commit waits before its WAL is archived (PostgreSQL's
    /// `archive_timeout`), in seconds: what a lost disk can lose at most.
    pub archive_timeout: ArchiveTimeout,
    /// Full base backups kept, with the WAL to replay from each: `restore --to`
    /// reaches back to the oldest one's end.
    pub keep_full: FullBackupCount,
    /// Days between full base backups; the backups between are differential (what
    /// changed since the last full one).
    pub full_every_days: DayCount,
}

/// A directory of its own for a repository: absolute, made of letters, digits and
/// `/._-` only (it is written into unit files and pgBackRest's configuration as it
/// is), and not a directory of the system or of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepositoryPath(String);

impl RepositoryPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Directories a repository may not be, nor be inside: the system's, and those
/// the stack and its services keep their own files in.
const NOT_A_REPOSITORY: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var/lib/analytics-stack",
    "/var/log",
    "/var/tmp",
    "/var/run",
    "/var/cache",
];

impl TryFrom<String> for RepositoryPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let path = s.trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let plain = s.starts_with('/')
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != "..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if !plain || parts.len() < 2 {
            return Err(format!(
                "{s:?} is not a directory of its own like \"/var/backups/analytics-stack-pgbackrest\" (absolute, two levels at least, letters, digits and /._- only)"
            ));
        }
        if let Some(system) = NOT_A_REPOSITORY
            .iter()
            .find(|d| path == **d || path.starts_with(&format!("{d}/")))
        {
            return Err(format!(
                "{s:?} is in {system}, which the system or the stack keeps its own files in: choose a directory of its own (e.g. under /var/backups or on a disk of its own)"
            ));
        }
        Ok(RepositoryPath(path.to_string()))
    }
}

impl From<RepositoryPath> for String {
    fn from(p: RepositoryPath) -> String {
        p.0
    }
}

/// Bounded counts and durations of the archiving settings.
macro_rules! bounded_u32 {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "i64", into = "u32")]
        pub struct $name(u32);

        impl $name {
            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(v: i64) -> Result<Self, String> {
                match u32::try_from(v) {
                    Ok(n) if ($min..=$max).contains(&n) => Ok($name(n)),
                    _ => Err(format!("{v} {}: must be {} to {}", $what, $min, $max)),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v.0
            }
        }
    };
}

bounded_u32!(
    /// Seconds PostgreSQL waits at most before archiving a WAL segment: 10..=3600.
    ArchiveTimeout, 10, 3600, "seconds"
);
bounded_u32!(
    /// Full base backups kept: 1..=100.
    FullBackupCount, 1, 100, "full backups to keep"
);
bounded_u32!(
    /// Days between full base backups: 1..=366.
    DayCount, 1, 366, "days"
);

/// A PostgreSQL major version Debian or PGDG packages: 13 to 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct PostgresMajor(u32);

impl PostgresMajor {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for PostgresMajor {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(n @ 13..=30) => Ok(PostgresMajor(n)),
            _ => Err(format!("PostgreSQL {n}: a major version from 13 to 30")),
        }
    }
}

impl From<PostgresMajor> for u32 {
    fn from(m: PostgresMajor) -> u32 {
        m.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Both Redis instances, the Celery broker and the cache. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Celery's broker: never evicts, append-only.
    pub broker: RedisInstanceConfig,
    /// Superset's caches: evicts least-recently-used keys.
    pub cache: RedisInstanceConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisInstanceConfig {
    /// The instance's port, loopback only.
    pub port: Port,
    /// The instance's `maxmemory`.
    pub maxmemory: ByteSize,
}

/// Where a component's software comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftwareSource {
    /// The distribution's package.
    Debian,
    /// The upstream release archive (verified), under /opt/analytics-stack.
    Archive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Prometheus, scraping node_exporter, postgres_exporter, statsd_exporter and
    /// the workers; its alert rules loaded. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// "debian" (the distribution's package) or "archive" (the upstream release
    /// archive).
    pub source: SoftwareSource,
    /// Prometheus's HTTP port, loopback only.
    pub port: Port,
    /// How long metrics are kept.
    pub retention: Duration,
}

/// Prometheus Alertmanager: the alerts the stack's Prometheus fires, grouped and
/// delivered to the receivers below; silences in its UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Alertmanager from Debian's package, fed by the stack's Prometheus; its UI and
    /// API under /alertmanager/ at the door for user `admin` (password:
    /// `analytics-stack credentials alertmanager`). Runs only with Prometheus. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// Alertmanager's HTTP port, loopback only (NGINX's /alertmanager/ proxies it).
    pub port: Port,
    /// How long a new group of alerts waits for more before its first notification.
    pub group_wait: Duration,
    /// How long before a group that changed is notified again.
    pub group_interval: Duration,
    /// How long before a group still firing, unchanged, is notified again.
    pub repeat_interval: Duration,
    /// E-mail through an SMTP relay.
    pub email: AlertEmailConfig,
    /// Generic webhooks (Alertmanager's JSON, POSTed): chat tools' incoming hooks.
    pub webhook: AlertWebhookConfig,
}

/// Notifications by e-mail through a relay; none while `to` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEmailConfig {
    /// Addresses every alert and its resolution are sent to; [] = no e-mail.
    pub to: Vec<EmailAddress>,
    /// The sender; "" = analytics-stack@ the stack's host name.
    pub from: OptionalEmailAddress,
    /// The SMTP relay, `host:port` (e.g. "smtp.example.com:587"); needed with `to`.
    pub smarthost: SmtpRelay,
    /// The relay's login; "" = no authentication.
    pub username: PlainWord,
    /// A file holding the relay's password (root's, not readable by others; its
    /// exact contents, no trailing newline), loaded as the unit's credential; "" = none.
    pub password_file: OptionalPath,
    /// Refuse a relay that does not offer STARTTLS (turn off only for a relay on a
    /// trusted network).
    pub require_tls: bool,
}

/// Notifications POSTed as Alertmanager's webhook JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhookConfig {
    /// http(s) URLs, each sent every alert and its resolution; [] = none. A URL that
    /// carries a token belongs in a stack.d file only root can read.
    pub urls: Vec<WebhookUrl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeExporterConfig {
    /// node_exporter, with the systemd collector on `analytics-*` units and the
    /// daemon's figures in its textfile directory. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// "debian" (the distribution's package) or "archive" (the upstream release
    /// archive).
    pub source: SoftwareSource,
    /// node_exporter's port: loopback, or on a worker host its address for the
    /// primary's Prometheus.
    pub port: Port,
}

/// postgres_exporter from Debian: PostgreSQL's connections, settings and activity,
/// for the connections alert. Runs only with PostgreSQL and Prometheus
/// ([`Config::postgres_exporter_on`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresExporterConfig {
    /// postgres_exporter, as a monitoring role with `pg_monitor` only; runs only
    /// with PostgreSQL and Prometheus. false stops it and removes its units on the next apply; its data stays.
    pub enabled: bool,
    /// postgres_exporter's port, loopback only.
    pub port: Port,
}

/// Worker hosts (on the primary): where they reach it, and who they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// The primary's address the workers reach it on; "" = no workers. PostgreSQL
    /// (TLS and the workers' roles only) and a TLS door to the Celery broker listen
    /// there besides loopback.
    pub address: ListenAddress,
    /// The TLS door to the Celery broker's Redis (NGINX's stream proxy).
    pub broker_port: Port,
    /// Superset's Celery worker may run on worker hosts: the cache Redis gets a TLS
    /// door too (`cache_port`), the workers' group may act as Superset's database
    /// role, the warehouse is registered in Superset by this address (over TLS, so
    /// a query runs the same wherever it runs), and new tokens carry Superset's
    /// `SECRET_KEY`.
    pub superset: bool,
    /// The TLS door to the cache Redis (with `superset`).
    pub cache_port: Port,
    /// The workers added (`analytics-stack worker add NAME`, which writes them to
    /// `stack.d/90-workers.toml`): each has its own PostgreSQL role and Redis user.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<WorkerName, WorkerHost>,
}

/// One worker host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerHost {
    /// When it was added (seconds since the epoch).
    pub added: u64,
    /// The address the worker connects from and Prometheus scrapes it on: its
    /// logins, the execution API and the log push are allowed from there only.
    pub address: ListenAddress,
    /// Which certificate is this worker's: random, made by `worker add`, written
    /// into the client certificate the worker gets when it joins. The doors between
    /// the hosts admit the certificate of a current worker's identity only, so a
    /// worker removed (and one added again under its name) is refused with its old
    /// certificate. Absent for a worker added before certificates: it must be
    /// removed and added again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<WorkerIdentity>,
}

/// A worker's certificate identity: 32 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerIdentity(String);

impl WorkerIdentity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkerIdentity {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(WorkerIdentity(s))
        } else {
            Err(format!(
                "{:?} is not a worker identity (32 lower-case hex digits, as `worker add` writes)",
                crate::util::printable(&s)
            ))
        }
    }
}

impl From<WorkerIdentity> for String {
    fn from(n: WorkerIdentity) -> String {
        n.0
    }
}

/// A worker host's side (`[stack] role = "worker"`): which primary it joined, as
/// `analytics-stack join` wrote it (`stack.d/10-join.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRoleConfig {
    /// This worker's name on the primary (`worker add NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<WorkerName>,
    /// This host's address on the workers' network: node_exporter listens there for
    /// the primary's Prometheus.
    pub address: ListenAddress,
    /// The primary's address on that network.
    pub primary: ListenAddress,
    /// The primary's HTTPS door (execution API, log push, DAG bundle).
    pub primary_https_port: Port,
    /// The primary's PostgreSQL port (TLS only).
    pub primary_postgres_port: Port,
    /// The primary's TLS door to the Celery broker.
    pub primary_broker_port: Port,
    /// The primary's TLS door to the cache Redis (for Superset's Celery worker).
    pub primary_cache_port: Port,
}

/// "" or an IP address (v4 or v6).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddress(Option<std::net::IpAddr>);

impl ListenAddress {
    pub fn get(&self) -> Option<std::net::IpAddr> {
        self.0
    }
}

impl TryFrom<String> for ListenAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(ListenAddress(None));
        }
        match s.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() => Err(format!(
                "{s}: the address the workers reach, not loopback or every address"
            )),
            Ok(ip) => Ok(ListenAddress(Some(ip))),
            Err(_) => Err(format!(
                "{:?} is not an IP address",
                crate::util::printable(&s)
            )),
        }
    }
}

impl From<ListenAddress> for String {
    fn from(a: ListenAddress) -> String {
        a.0.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

/// A worker's name: a lower-case letter, then up to 30 lower-case letters, digits
/// and hyphens (it names a PostgreSQL role and a Redis user).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerName(String);

impl WorkerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Its PostgreSQL role (hyphens are not plain in SQL identifiers).
    pub fn postgres_role(&self) -> String {
        format!("worker_{}", self.0.replace('-', "_"))
    }
    /// Its Redis ACL user.
    pub fn redis_user(&self) -> String {
        format!("worker-{}", self.0)
    }
}

impl TryFrom<String> for WorkerName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() <= 31
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(WorkerName(s))
        } else {
            Err(format!(
                "{:?} is not a worker name (a lower-case letter, then up to 30 lower-case letters, digits and hyphens)",
                crate::util::printable(&s)
            ))
        }
    }
}

impl From<WorkerName> for String {
    fn from(n: WorkerName) -> String {
        n.0
    }
}

/// Scheduled backups (`analytics-backup.timer`) and where backups go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// systemd `OnCalendar=` expression; "" = no scheduled backups.
    pub schedule: CalendarSpec,
    /// How many backups to keep in `directory` (older ones are removed after a
    /// successful scheduled backup, never before).
    pub keep: BackupCount,
    /// Where scheduled and manual backups are written (root's alone, 0700).
    pub directory: AbsolutePath,
    /// Prometheus's metrics and Loki's logs too in scheduled backups.
    pub with_telemetry: bool,
}

/// A systemd calendar expression (`daily`, `Mon..Fri *-*-* 02:30`), or "" for none.
/// Checked here for what may appear on a unit file's line; systemd's own parser
/// (`systemd-analyze calendar`) checks the rest before apply writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CalendarSpec(String);

impl CalendarSpec {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// No schedule.
    pub fn none() -> Self {
        CalendarSpec(String::new())
    }
}

impl TryFrom<String> for CalendarSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() <= 120
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || " *-:/.,~".contains(c));
        if ok {
            Ok(CalendarSpec(s.trim().to_string()))
        } else {
            Err(format!(
                "{s:?} is not a systemd calendar expression like \"daily\" or \"*-*-* 02:30\""
            ))
        }
    }
}

impl From<CalendarSpec> for String {
    fn from(c: CalendarSpec) -> String {
        c.0
    }
}

/// How many backups retention keeps: 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct BackupCount(u32);

impl BackupCount {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for BackupCount {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(n @ 1..=1000) => Ok(BackupCount(n)),
            _ => Err(format!("{n} backups to keep: must be 1 to 1000")),
        }
    }
}

impl From<BackupCount> for u32 {
    fn from(c: BackupCount) -> u32 {
        c.0
    }
}

impl Config {
    /// A host that joined a primary (`[stack] role = "worker"`).
    pub fn is_worker_host(&self) -> bool {
        self.stack.role == Role::Worker
    }

    /// The primary's `port` as a worker host reaches it (`[v6]:port` for IPv6), or
    /// None on a primary.
    pub fn primary_at(&self, port: Port) -> Option<std::net::SocketAddr> {
        let ip = self
            .worker
            .primary
            .get()
            .filter(|_| self.is_worker_host())?;
        Some(std::net::SocketAddr::new(ip, port.get()))
    }

    /// Worker hosts run Superset's Celery worker too: `[workers] superset` on a
    /// primary that has an address for workers.
    pub fn superset_on_workers(&self) -> bool {
        self.workers.superset && self.workers.address.get().is_some()
    }

    /// pgBackRest archives the stack's own PostgreSQL cluster (a worker host has none).
    pub fn archiving_on(&self) -> bool {
        self.postgres.enabled && self.postgres.archiving.enabled
    }

    /// Alertmanager runs only where the stack's Prometheus sends it alerts.
    pub fn alertmanager_on(&self) -> bool {
        self.alertmanager.enabled && self.prometheus.enabled
    }

    /// postgres_exporter runs only beside the stack's PostgreSQL and only when
    /// Prometheus reads it.
    pub fn postgres_exporter_on(&self) -> bool {
        self.postgres_exporter.enabled && self.postgres.enabled && self.prometheus.enabled
    }
}

/// A Prometheus-style duration: a number and one of s, m, h, d, w, y.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(String);

impl Duration {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Duration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // By characters, not bytes: any text is a value to refuse, never a panic.
        let mut chars = s.chars();
        let unit = chars.next_back().unwrap_or(' ');
        let digits = chars.as_str();
        if "smhdwy".contains(unit)
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && digits != "0"
        {
            Ok(Duration(s))
        } else {
            Err(format!(
                "{s:?} is not a duration like \"15d\" (units: s, m, h, d, w, y)"
            ))
        }
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.0
    }
}

/// A TCP port a service listens on: 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u16")]
pub struct Port(u16);

impl Port {
    pub fn new(port: u16) -> Option<Self> {
        (port != 0).then_some(Port(port))
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<i64> for Port {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u16::try_from(v)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| format!("port must be between 1 and 65535, not {v}"))
    }
}

impl From<Port> for u16 {
    fn from(p: Port) -> u16 {
        p.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// PostgreSQL's max_connections: 10..=10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct ConnectionCount(u32);

impl ConnectionCount {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for ConnectionCount {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (10..=10_000).contains(&v) {
            Ok(ConnectionCount(v as u32))
        } else {
            Err(format!("must be between 10 and 10000, not {v}"))
        }
    }
}

impl From<ConnectionCount> for u32 {
    fn from(c: ConnectionCount) -> u32 {
        c.0
    }
}

/// A memory size written as `<number><unit>` with unit kB, MB or GB (case does not
/// matter), as PostgreSQL and Redis both accept it. Stored in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// Whole megabytes, rounded up: the unit both PostgreSQL and Redis take.
    pub fn megabytes(self) -> u64 {
        self.0.div_ceil(1 << 20)
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let split = lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len());
        let (digits, unit) = lower.split_at(split);
        let factor: u64 = match unit {
            "kb" => 1 << 10,
            "mb" => 1 << 20,
            "gb" => 1 << 30,
            _ => {
                return Err(format!(
                    "{s:?} is not a size like \"256MB\" (units: kB, MB, GB)"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size like \"256MB\""))?;
        n.checked_mul(factor)
            .filter(|&b| b >= 1 << 20)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} must be at least 1MB"))
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        format!("{}MB", b.megabytes())
    }
}

/// A DNS name or address used in links (no scheme, no path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl StackConfig {
    /// The configured name, or "localhost" before the host's FQDN was filled in.
    pub fn hostname(&self) -> &str {
        self.hostname.as_ref().map_or("localhost", Hostname::as_str)
    }
}

impl TryFrom<String> for Hostname {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
        if ok {
            Ok(Hostname(s))
        } else {
            Err(format!("{s:?} is not a host name"))
        }
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

/// "" or a Unix group name as `groupadd` accepts it (no `:`, `,`, spaces or control
/// characters): it is looked up in the group database and quoted in messages.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for GroupName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.is_empty()
            || (s.len() <= 32
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
        if ok {
            Ok(GroupName(s))
        } else {
            Err(format!("{s:?} is not a group name"))
        }
    }
}

impl From<GroupName> for String {
    fn from(g: GroupName) -> String {
        g.0
    }
}

/// "" or an [`AbsolutePath`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OptionalPath(String);

impl OptionalPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for OptionalPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(OptionalPath(s));
        }
        AbsolutePath::try_from(s).map(|p| OptionalPath(p.0))
    }
}

impl From<OptionalPath> for String {
    fn from(p: OptionalPath) -> String {
        p.0
    }
}
