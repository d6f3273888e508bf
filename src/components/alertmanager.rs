//! Prometheus Alertmanager from Debian's package as `analytics-alertmanager.service`:
//! the stack's Prometheus sends it the alerts its rules fire (`alerts.rs`), it groups
//! them and notifies the receivers of `[alertmanager]` — e-mail through an SMTP relay,
//! webhooks — and keeps silences. It listens on loopback under `/alertmanager/`;
//! NGINX's `/alertmanager/` proxies its UI and API for the user `admin` alone (HTTP
//! basic authentication, the password generated). Clustering (gossip on every
//! address, port 9094, by default) is off: one host, one Alertmanager.
//!
//! Its configuration is typed structs serialized as JSON, which is YAML: every value
//! is escaped by the serializer, never by hand.

use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;
use serde::Serialize;

pub const UNIT: &str = "analytics-alertmanager.service";
pub const USER: &str = "analytics-alertmanager";
const CONF_DIR: &str = "/etc/analytics-stack/alertmanager";
const CONF: &str = "/etc/analytics-stack/alertmanager/alertmanager.yml";
const BINARY: &str = "/usr/bin/prometheus-alertmanager";
/// Where it serves its UI and API, on loopback and at the door alike.
pub const PREFIX: &str = "/alertmanager/";
/// Its data: silences and the notification log.
pub const DATA: &str = "/var/lib/analytics-stack/alertmanager";
/// The door's login for it, and the secret holding that login's password.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_SECRET: &str = "alertmanager-admin";
/// NGINX's password file for `/alertmanager/` (NGINX's `{PLAIN}` scheme, readable by
/// root and NGINX only, like the secret it carries).
pub const HTPASSWD: &str = "/etc/analytics-stack/nginx/alertmanager.htpasswd";
/// The unit's credential holding the SMTP relay's password, when one is configured.
const SMTP_PASSWORD_CREDENTIAL: &str = "smtp-password";
/// The one receiver every alert goes to (with no addresses or URLs configured, a
/// receiver that sends nothing: the alerts are still seen in the UI and `alerts`).
const RECEIVER: &str = "stack";

#[derive(Serialize)]
struct File {
    global: Global,
    route: Route,
    receivers: Vec<Receiver>,
}

#[derive(Serialize)]
struct Global {
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_smarthost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_auth_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_auth_password_file: Option<String>,
    smtp_require_tls: bool,
}

#[derive(Serialize)]
struct Route {
    receiver: &'static str,
    /// One notification per alert name and host (the workers' alerts carry their
    /// own `instance`; `stack_host` is the primary's external label).
    group_by: [&'static str; 3],
    group_wait: String,
    group_interval: String,
    repeat_interval: String,
}

#[derive(Serialize)]
struct Receiver {
    name: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    email_configs: Vec<EmailConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    webhook_configs: Vec<WebhookConfig>,
}

#[derive(Serialize)]
struct EmailConfig {
    to: String,
    send_resolved: bool,
}

#[derive(Serialize)]
struct WebhookConfig {
    url: String,
    send_resolved: bool,
}

/// alertmanager.yml for `config`.
pub fn render_config(config: &Config) -> String {
    let a = &config.alertmanager;
    let email = &a.email;
    let sends_email = !email.to.is_empty();
    let file = File {
        global: Global {
            smtp_from: sends_email.then(|| match email.from.get() {
                Some(from) => from.as_str().to_string(),
                None => format!("analytics-stack@{}", config.stack.hostname()),
            }),
            smtp_smarthost: sends_email.then(|| email.smarthost.as_str().to_string()),
            smtp_auth_username: (sends_email && !email.username.as_str().is_empty())
                .then(|| email.username.as_str().to_string()),
            smtp_auth_password_file: (sends_email && !email.password_file.is_empty())
                .then(|| format!("/run/credentials/{UNIT}/{SMTP_PASSWORD_CREDENTIAL}")),
            smtp_require_tls: email.require_tls,
        },
        route: Route {
            receiver: RECEIVER,
            group_by: ["alertname", "stack_host", "instance"],
            group_wait: a.group_wait.as_str().to_string(),
            group_interval: a.group_interval.as_str().to_string(),
            repeat_interval: a.repeat_interval.as_str().to_string(),
        },
        receivers: vec![Receiver {
            name: RECEIVER,
            email_configs: email
                .to
                .iter()
                .map(|to| EmailConfig {
                    to: to.as_str().to_string(),
                    send_resolved: true,
                })
                .collect(),
            webhook_configs: a
                .webhook
                .urls
                .iter()
                .map(|url| WebhookConfig {
                    url: url.as_str().to_string(),
                    send_resolved: true,
                })
                .collect(),
        }],
    };
    let json = serde_json::to_string_pretty(&file).expect("alertmanager.yml serializes");
    format!(
        "# Generated by analytics-stackd; edit the stack config instead. (JSON is YAML.)\n{json}\n"
    )
}

/// The password file NGINX checks `/alertmanager/` against: one login, its password
/// the generated secret (written in when the file is, never in a plan).
pub fn htpasswd() -> FileSpec {
    FileSpec::new(
        HTPASSWD,
        format!(
            "{ADMIN_USER}:{{PLAIN}}{}\n",
            crate::model::secret_ref(ADMIN_SECRET)
        ),
    )
    .mode(0o640)
    .group(super::nginx::USER)
    .notify(super::nginx::UNIT, OnChange::Reload)
}

/// Checks the operator's SMTP password file before anything changes: it must be a
/// regular file that only root can read or write (it is a password) and hold the
/// password alone (Debian 12's Alertmanager 0.25 sends a trailing newline as part
/// of it).
pub fn preflight(fs: &crate::host::fsroot::FsRoot, config: &Config) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = config.alertmanager.email.password_file.as_str();
    if !config.alertmanager_on() || path.is_empty() {
        return Ok(());
    }
    let culprit = format!("[alertmanager.email] password_file = {path:?}");
    let meta = std::fs::symlink_metadata(fs.path(std::path::Path::new(path)))
        .map_err(|e| format!("{culprit}: cannot read it ({})", e.kind()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{culprit}: not a regular file"));
    }
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{culprit}: it must be root's and readable by root alone (chown root: and chmod 600 it)"
        ));
    }
    let text = fs
        .read(std::path::Path::new(path))
        .map_err(|e| format!("{culprit}: cannot read it ({})", e.kind()))?;
    if text.is_empty() || text.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(format!(
            "{culprit}: it must hold the password alone, with no spaces or newline (printf '%s' PASSWORD > FILE)"
        ));
    }
    Ok(())
}

pub fn render(config: &Config) -> ComponentSpec {
    let a = &config.alertmanager;
    let port = a.port.get();
    let mut unit = ServiceUnit::new(
        UNIT,
        "analytics-stack: Alertmanager",
        USER,
        format!(
            "{BINARY} --config.file={CONF} --storage.path={DATA} --web.listen-address=127.0.0.1:{port} --web.external-url={origin}{PREFIX} --web.route-prefix={PREFIX} --cluster.listen-address=",
            origin = super::nginx::public_origin(config),
        ),
    );
    unit.exec_reload = vec!["/bin/kill -HUP $MAINPID".into()];
    unit.read_write_paths = vec![DATA.into()];
    if !a.email.password_file.is_empty() && !a.email.to.is_empty() {
        unit.credentials = vec![(
            SMTP_PASSWORD_CREDENTIAL.into(),
            a.email.password_file.as_str().into(),
        )];
    }
    ComponentSpec {
        name: "alertmanager",
        description: "Alertmanager: the stack's alerts delivered, under /alertmanager/",
        packages: vec!["prometheus-alertmanager".into()],
        version_package: "prometheus-alertmanager".into(),
        distro_units: vec!["prometheus-alertmanager.service".into()],
        users: vec![UserSpec::service(USER, DATA)],
        dirs: vec![
            DirSpec::config(CONF_DIR, USER),
            DirSpec::private(DATA, USER),
        ],
        files: vec![FileSpec::new(CONF, render_config(config))
            .mode(0o640)
            .group(USER)
            .notify(UNIT, OnChange::Reload)],
        units: vec![unit.render()],
        ports: vec![PortSpec::loopback(port, UNIT)],
        probes: vec![Probe::Http {
            port,
            path: format!("{PREFIX}-/ready"),
        }],
        ..Default::default()
    }
}

/// An alert Alertmanager holds, as `analytics-stack alerts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub name: String,
    pub severity: String,
    /// The host it is about (`instance`, else the stack's `stack_host`).
    pub host: String,
    pub summary: String,
    /// When it started firing (RFC 3339, as Alertmanager says it).
    pub since: String,
    /// "active", or "suppressed" (silenced or inhibited).
    pub state: String,
    /// The silences that hold it.
    pub silenced_by: Vec<String>,
}

/// Reads Alertmanager's `GET /api/v2/alerts` answer, by name then host.
pub fn parse_alerts(body: &str) -> Result<Vec<Alert>, String> {
    let list: Vec<serde_json::Value> = serde_json::from_str(body)
        .map_err(|e| format!("Alertmanager's answer is not its list of alerts: {e}"))?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut alerts: Vec<Alert> = list
        .iter()
        .map(|a| {
            let labels = &a["labels"];
            let host = labels["instance"]
                .as_str()
                .or_else(|| labels["stack_host"].as_str())
                .unwrap_or_default()
                .to_string();
            Alert {
                name: text(&labels["alertname"]),
                severity: text(&labels["severity"]),
                host,
                summary: text(&a["annotations"]["summary"]),
                since: text(&a["startsAt"]),
                state: text(&a["status"]["state"]),
                silenced_by: a["status"]["silencedBy"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect(),
            }
        })
        .collect();
    alerts.sort_by(|a, b| (&a.name, &a.host).cmp(&(&b.name, &b.host)));
    Ok(alerts)
}

/// The alerts the Alertmanager on `port` holds now (active, silenced and inhibited).
pub async fn alerts(port: u16) -> Result<Vec<Alert>, String> {
    let url = format!("http://127.0.0.1:{port}{PREFIX}api/v2/alerts");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("Alertmanager on 127.0.0.1:{port} does not answer: {e}"))?;
    let status = answer.status();
    let body = answer.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("Alertmanager answered {status}"));
    }
    parse_alerts(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::load_texts(&[("t.toml", extra)]).expect("the configuration loads")
    }

    #[test]
    fn the_configuration_carries_every_receiver_escaped_and_clustering_is_off() {
        let c = config(
            "[alertmanager.email]\nto = [\"ops@example.com\", \"o'hara@example.com\"]\nsmarthost = \"smtp.example.com:587\"\nusername = \"relay\"\npassword_file = \"/etc/analytics-stack/smtp-password\"\n[alertmanager.webhook]\nurls = [\"https://chat.example.com/hooks/abc?token=x&y=z\"]\n",
        );
        let text = render_config(&c);
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).expect("alertmanager.yml is YAML");
        assert_eq!(yaml["global"]["smtp_smarthost"], "smtp.example.com:587");
        assert_eq!(yaml["global"]["smtp_require_tls"], true);
        assert_eq!(
            yaml["global"]["smtp_auth_password_file"],
            "/run/credentials/analytics-alertmanager.service/smtp-password"
        );
        assert!(yaml["global"]["smtp_from"]
            .as_str()
            .is_some_and(|f| f.starts_with("analytics-stack@")));
        let receiver = &yaml["receivers"][0];
        assert_eq!(receiver["email_configs"][1]["to"], "o'hara@example.com");
        assert_eq!(receiver["email_configs"][1]["send_resolved"], true);
        assert_eq!(
            receiver["webhook_configs"][0]["url"],
            "https://chat.example.com/hooks/abc?token=x&y=z"
        );
        assert_eq!(yaml["route"]["receiver"], receiver["name"]);
        assert_eq!(yaml["route"]["group_wait"], "30s");
        let spec = render(&c);
        let unit = &spec.units[0].content;
        assert!(unit.contains("--cluster.listen-address=\n"), "{unit}");
        assert!(
            unit.contains("--web.listen-address=127.0.0.1:9093 "),
            "{unit}"
        );
        assert!(unit.contains("LoadCredential=smtp-password:/etc/analytics-stack/smtp-password\n"));
    }

    #[test]
    fn with_no_receivers_nothing_is_sent_and_no_relay_is_named() {
        let text = render_config(&config(""));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert!(yaml["global"].get("smtp_smarthost").is_none(), "{text}");
        assert!(
            yaml["receivers"][0].get("email_configs").is_none(),
            "{text}"
        );
        assert!(
            yaml["receivers"][0].get("webhook_configs").is_none(),
            "{text}"
        );
    }

    #[test]
    fn receivers_that_would_break_the_file_or_a_header_are_refused_at_their_key() {
        for (toml, key) in [
            ("[alertmanager.email]\nto = [\"ops@example.com\\nBcc: x@evil\"]\n", "to"),
            ("[alertmanager.email]\nto = [\"a@b.c, d@e.f\"]\n", "to"),
            ("[alertmanager.email]\nto = [\"not-an-address\"]\n", "to"),
            (
                "[alertmanager.email]\nto = [\"a@b.c\"]\nsmarthost = \"smtp.example.com\"\n",
                "smarthost",
            ),
            (
                "[alertmanager.email]\nto = [\"a@b.c\"]\nsmarthost = \"evil host:25\"\n",
                "smarthost",
            ),
            ("[alertmanager.email]\nto = [\"a@b.c\"]\n", "smarthost"),
            ("[alertmanager.email]\nsmarthost = \"smtp.example.com:25\"\n", "smarthost"),
            (
                "[alertmanager.email]\nto = [\"a@b.c\"]\nsmarthost = \"s.example.com:25\"\npassword_file = \"/root/pw\"\n",
                "password_file",
            ),
            ("[alertmanager.email]\nusername = \"a b\"\n", "username"),
            ("[alertmanager.webhook]\nurls = [\"ftp://chat.example.com/x\"]\n", "urls"),
            ("[alertmanager.webhook]\nurls = [\"https://chat.example.com/x?a=<b>\"]\n", "urls"),
            ("[alertmanager]\nport = 9090\n", "port"),
        ] {
            let err = crate::config::load_texts(&[("t.toml", toml)])
                .expect_err(toml)
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
            assert!(!err.contains("evil host:25\n"), "{err}");
        }
    }

    #[test]
    fn prometheus_sends_its_alerts_and_nginx_keeps_the_door_shut_without_the_password() {
        let c = config("");
        let prometheus = super::super::prometheus::render_config(&c);
        let yaml: serde_yaml::Value = serde_yaml::from_str(&prometheus).expect("YAML");
        let am = &yaml["alerting"]["alertmanagers"][0];
        assert_eq!(am["path_prefix"], "/alertmanager");
        assert_eq!(am["static_configs"][0]["targets"][0], "127.0.0.1:9093");
        let nginx = super::super::nginx::render_conf(&c);
        let at = nginx
            .find("location /alertmanager/ {")
            .expect("a location for Alertmanager");
        let block = &nginx[at..at + nginx[at..].find("\n        }").expect("closed")];
        assert!(block.contains("auth_basic 'Alertmanager';"), "{block}");
        assert!(
            block.contains(&format!("auth_basic_user_file {HTPASSWD};")),
            "{block}"
        );
        assert!(
            block.contains("proxy_set_header Authorization \"\";"),
            "{block}"
        );
        let file = htpasswd();
        assert_eq!(file.mode, 0o640);
        assert_eq!(file.group, super::super::nginx::USER);
        assert!(!file.template.contains("{PLAIN}\n"), "{}", file.template);
        // Off: no route to it, no password file.
        let off = config("[alertmanager]\nenabled = false\n");
        assert!(!super::super::nginx::render_conf(&off).contains("auth_basic"));
        assert!(super::super::prometheus::render_config(&off)
            .find("alerting:")
            .is_none());
    }

    #[test]
    fn alertmanagers_answer_is_read_by_name_and_host() {
        let body = r#"[
          {"labels": {"alertname": "AnalyticsUnitFailed", "severity": "critical", "instance": "w1", "name": "analytics-airflow-worker.service"},
           "annotations": {"summary": "analytics-airflow-worker.service has failed"},
           "startsAt": "2026-12-07T08:00:00.000Z",
           "status": {"state": "suppressed", "silencedBy": ["8d1c"], "inhibitedBy": []}},
          {"labels": {"alertname": "AnalyticsDiskFilling", "severity": "warning", "stack_host": "primary"},
           "annotations": {"summary": "/ is more than 85 % full"},
           "startsAt": "2026-12-07T07:00:00.000Z",
           "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}}
        ]"#;
        let alerts = parse_alerts(body).expect("parses");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].name, "AnalyticsDiskFilling");
        assert_eq!(alerts[0].host, "primary");
        assert_eq!(alerts[1].state, "suppressed");
        assert_eq!(alerts[1].silenced_by, vec!["8d1c".to_string()]);
        assert!(parse_alerts("<html>").is_err());
    }
}
