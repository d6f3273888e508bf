//! What the end-to-end tests of the applications share: Airflow's API (token, the
//! sample DAG's run), Superset's SQL Lab, the units' main PIDs.

use super::Container;
use serde_json::Value;
use std::time::{Duration, Instant};

pub const DAG: &str = "analytics_stack_sample";

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn secret(c: &Container, name: &str) -> String {
    c.ok(&format!("cat /var/lib/analytics-stack/secrets/{name}"))
        .trim()
        .to_string()
}

/// A bearer token from Airflow's API (FAB auth manager), through NGINX.
pub fn airflow_token(c: &Container) -> String {
    let body = format!(
        r#"{{"username": "admin", "password": "{}"}}"#,
        secret(c, "airflow-admin")
    );
    let out = c.ok(&format!(
        "curl -fsS -X POST -H 'Content-Type: application/json' -d '{body}' https://127.0.0.1/airflow/auth/token"
    ));
    json(&out)["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

pub fn airflow(c: &Container, token: &str, method: &str, path: &str, body: Option<&str>) -> Value {
    let data = body.map_or(String::new(), |b| {
        format!("-H 'Content-Type: application/json' -d '{b}'")
    });
    json(&c.ok(&format!(
        "curl -sS -X {method} -H 'Authorization: Bearer {token}' {data} https://127.0.0.1/airflow/api/v2{path}"
    )))
}

pub struct SampleRun {
    pub took: Duration,
    pub run_id: String,
    pub token: String,
}

/// Seconds since the epoch of one of Airflow's ISO 8601 timestamps.
pub fn epoch_seconds(c: &Container, iso: &Value) -> f64 {
    let iso = iso
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {iso}"));
    c.ok(&format!("date -d '{iso}' +%s.%N"))
        .trim()
        .parse()
        .unwrap()
}

/// Triggers the sample DAG and waits for the run to succeed (panics with the task's
/// log when it fails).
pub fn run_sample_dag(c: &Container) -> SampleRun {
    let token = airflow_token(c);
    let started = Instant::now();
    let run = airflow(
        c,
        &token,
        "POST",
        &format!("/dags/{DAG}/dagRuns"),
        Some(r#"{"logical_date": null}"#),
    );
    let run_id = run["dag_run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no dag_run_id: {run}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = airflow(
            c,
            &token,
            "GET",
            &format!("/dags/{DAG}/dagRuns/{run_id}"),
            None,
        );
        match state["state"].as_str() {
            Some("success") => {
                return SampleRun {
                    took: started.elapsed(),
                    run_id,
                    token,
                }
            }
            Some("failed") => {
                let log = c.sh(&format!(
                    "cat /var/lib/analytics-stack/airflow/logs/dag_id={DAG}/run_id={run_id}/task_id=*/attempt=*.log"
                ));
                panic!(
                    "the DAG run failed: {state}\n{}\n{}",
                    String::from_utf8_lossy(&log.stdout),
                    c.ok("journalctl -u 'analytics-airflow-*' -n 80 --no-pager")
                );
            }
            _ if Instant::now() > deadline => panic!(
                "the DAG run did not finish: {state}\n{}",
                c.ok("journalctl -u 'analytics-airflow-*' -n 80 --no-pager")
            ),
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

pub fn main_pids(c: &Container) -> Vec<(String, String)> {
    let units =
        c.ok("systemctl list-units --plain --no-legend 'analytics-*.service' | awk '{print $1}'");
    units
        .lines()
        .map(|u| {
            (
                u.to_string(),
                c.ok(&format!("systemctl show -p MainPID --value {u}"))
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

/// Superset's API as its admin: a bearer token and a CSRF token (cookies in
/// /tmp/ss.jar inside the container).
pub struct SupersetSession {
    auth: String,
    csrf: String,
}

pub fn superset_login(c: &Container) -> SupersetSession {
    let login = json(&c.ok(&format!(
        "curl -fsS -c /tmp/ss.jar -X POST -H 'Content-Type: application/json' -d '{{\"username\": \"admin\", \"password\": \"{}\", \"provider\": \"db\", \"refresh\": true}}' https://127.0.0.1/superset/api/v1/security/login",
        secret(c, "superset-admin")
    )));
    let token = login["access_token"].as_str().expect("access_token");
    let auth = format!("-H 'Authorization: Bearer {token}'");
    let csrf = json(&c.ok(&format!(
        "curl -fsS -b /tmp/ss.jar -c /tmp/ss.jar {auth} https://127.0.0.1/superset/api/v1/security/csrf_token/"
    )))["result"]
        .as_str()
        .expect("csrf token")
        .to_string();
    SupersetSession { auth, csrf }
}

impl SupersetSession {
    /// `METHOD /superset/api/v1PATH` with an optional JSON body (no single quotes).
    pub fn call(&self, c: &Container, method: &str, path: &str, body: Option<&str>) -> Value {
        let data = body.map_or(String::new(), |b| {
            format!("-H 'Content-Type: application/json' -d '{b}'")
        });
        json(&c.ok(&format!(
            "curl -sS -X {method} -b /tmp/ss.jar {} -H 'X-CSRFToken: {}' -H 'Referer: https://127.0.0.1/superset/' {data} https://127.0.0.1/superset/api/v1{path}",
            self.auth, self.csrf
        )))
    }

    /// The id of the registered `warehouse` database.
    pub fn warehouse_id(&self, c: &Container) -> u64 {
        let databases = self.call(c, "GET", "/database/", None);
        databases["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["database_name"] == "warehouse")
            .unwrap_or_else(|| panic!("warehouse is not registered: {databases}"))["id"]
            .as_u64()
            .unwrap()
    }
}

/// Logs in to Superset's API and runs `sql` in SQL Lab on the registered warehouse
/// (synchronously, in the web process); returns SQL Lab's answer.
pub fn superset_sql(c: &Container, sql: &str) -> Value {
    let session = superset_login(c);
    let warehouse_id = session.warehouse_id(c);
    session.call(
        c,
        "POST",
        "/sqllab/execute/",
        Some(&format!(
            r#"{{"database_id": {warehouse_id}, "sql": "{sql}", "runAsync": false, "schema": "sample_data"}}"#
        )),
    )
}
