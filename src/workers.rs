//! Worker hosts, on the primary: `worker add NAME` lists the worker in a file of the
//! configuration the daemon owns (`stack.d/90-workers.toml`) and applies, which
//! gives it a PostgreSQL role (a member of the workers' group, TLS only) and a Redis
//! user on the broker (through NGINX's TLS door), each with a generated password;
//! `worker remove NAME` takes it out and applies, which revokes both at once. The
//! token `worker add` returns carries what the worker needs to reach the primary:
//! its address, the ports, the two logins, and the stack CA's fingerprint to pin.

use crate::config::{WorkerName, WorkersConfig};
use crate::exec::Progress;
use crate::model::paths;
use crate::stack::{Stack, StackError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The file of the configuration `worker add` and `worker remove` write.
pub const WORKERS_FILE: &str = "stack.d/90-workers.toml";
/// What begins every token (its format's version).
pub const TOKEN_PREFIX: &str = "asw1.";

/// What a worker needs to reach the primary; printed once, as a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub primary: String,
    pub name: String,
    /// sha256 of the stack CA's certificate (DER), to pin when fetching it.
    pub ca_sha256: String,
    pub postgres_port: u16,
    pub postgres_role: String,
    pub postgres_password: String,
    pub broker_port: u16,
    pub broker_user: String,
    pub broker_password: String,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", crate::util::base64_url(&json))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerAdded {
    pub name: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerEntry {
    pub name: String,
    pub added: u64,
    pub postgres_role: String,
    pub broker_user: String,
}

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

/// The file's text for `hosts` (names → when added).
fn render_file(hosts: &std::collections::BTreeMap<WorkerName, u64>) -> String {
    let mut text = String::from(
        "# Managed by `analytics-stack worker add|remove`: this primary's worker hosts.\n",
    );
    for (name, added) in hosts {
        text.push_str(&format!(
            "\n[workers.hosts.{}]\nadded = {added}\n",
            name.as_str()
        ));
    }
    text
}

impl Stack {
    fn workers_file(&self) -> PathBuf {
        self.etc_dir.join(WORKERS_FILE)
    }

    fn write_workers(
        &self,
        hosts: &std::collections::BTreeMap<WorkerName, u64>,
    ) -> Result<(), StackError> {
        let path = self.workers_file();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(self.fs.path(dir))
                .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        }
        self.fs
            .write_atomic(&path, render_file(hosts).as_bytes(), 0o644, 0, 0)
            .map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    fn workers_config(&self) -> Result<WorkersConfig, StackError> {
        Ok(self.config()?.workers)
    }

    /// Lists `name` as a worker and applies; returns its token. On a failed apply
    /// the list is put back as it was and applied again.
    pub async fn worker_add(
        &self,
        name: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<WorkerAdded, StackError> {
        let name = WorkerName::try_from(name.to_string()).map_err(StackError::Conflict)?;
        let config = self.config()?;
        let workers = &config.workers;
        let Some(address) = workers.address.get() else {
            return Err(StackError::Conflict(
                "this host has no [workers] address: set the address worker hosts reach it on first".into(),
            ));
        };
        if workers.hosts.contains_key(&name) {
            return Err(StackError::Conflict(format!(
                "{} is a worker already (`analytics-stack worker remove {}` first, for new credentials)",
                name.as_str(),
                name.as_str()
            )));
        }
        let before: std::collections::BTreeMap<WorkerName, u64> = workers
            .hosts
            .iter()
            .map(|(n, h)| (n.clone(), h.added))
            .collect();
        let mut after = before.clone();
        after.insert(name.clone(), crate::util::now_secs());
        self.write_workers(&after)?;
        if let Err(e) = self.apply(cancel, progress, None).await {
            let _put_back = self.write_workers(&before);
            let _revoked = self.apply(cancel, progress, None).await;
            return Err(e);
        }
        let secret = |n: String| {
            crate::host::gather::read_secret(&self.fs, &n)
                .ok_or_else(|| failed(format!("secret {n} is missing after apply")))
        };
        let token = JoinToken {
            primary: address.to_string(),
            name: name.as_str().into(),
            ca_sha256: crate::tls::ca_sha256(&self.fs)
                .ok_or_else(|| failed("the stack CA is missing after apply"))?,
            postgres_port: config.postgres.port.get(),
            postgres_role: name.postgres_role(),
            postgres_password: secret(crate::components::postgres::worker_password_secret(&name))?,
            broker_port: config.workers.broker_port.get(),
            broker_user: name.redis_user(),
            broker_password: secret(crate::components::redis::worker_password_secret(&name))?,
        };
        Ok(WorkerAdded {
            name: name.as_str().into(),
            token: token.encode(),
        })
    }

    pub fn worker_list(&self) -> Result<Vec<WorkerEntry>, StackError> {
        Ok(self
            .workers_config()?
            .hosts
            .iter()
            .map(|(name, host)| WorkerEntry {
                name: name.as_str().into(),
                added: host.added,
                postgres_role: name.postgres_role(),
                broker_user: name.redis_user(),
            })
            .collect())
    }

    /// Takes `name` off the list and applies: its PostgreSQL role loses its login
    /// and sessions, its Redis user goes with the broker's restart; its passwords
    /// are deleted, so a worker added again under the name gets new ones.
    pub async fn worker_remove(
        &self,
        name: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<(), StackError> {
        let workers = self.workers_config()?;
        let Some((name, _)) = workers.hosts.iter().find(|(n, _)| n.as_str() == name) else {
            return Err(StackError::NotFound(format!(
                "{name} is not a worker of this host"
            )));
        };
        let rest: std::collections::BTreeMap<WorkerName, u64> = workers
            .hosts
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, h)| (n.clone(), h.added))
            .collect();
        self.write_workers(&rest)?;
        self.apply(cancel, progress, None).await?;
        for secret in [
            crate::components::postgres::worker_password_secret(name),
            crate::components::redis::worker_password_secret(name),
        ] {
            let path = Path::new(paths::SECRETS).join(secret);
            match std::fs::remove_file(self.fs.path(&path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(failed(format!("{}: {e}", path.display())))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_file_loads_as_the_configuration_it_lists() {
        let mut hosts = std::collections::BTreeMap::new();
        hosts.insert(
            WorkerName::try_from("w-1".to_string()).unwrap(),
            1_796_000_000,
        );
        hosts.insert(
            WorkerName::try_from("b2".to_string()).unwrap(),
            1_796_000_001,
        );
        let text = render_file(&hosts);
        let config = crate::config::load_texts(&[
            ("stack.toml", "[workers]\naddress = \"10.0.0.1\"\n"),
            ("90-workers.toml", &text),
        ])
        .unwrap();
        let names: Vec<&str> = config.workers.hosts.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["b2", "w-1"]);
        assert_eq!(
            config.workers.hosts.values().next().unwrap().added,
            1_796_000_001
        );
        let first = config.workers.hosts.keys().nth(1).unwrap();
        assert_eq!(first.postgres_role(), "worker_w_1");
        assert_eq!(first.redis_user(), "worker-w-1");
        for bad in ["", "W1", "1w", "w_1", "w;drop", &"w".repeat(32)] {
            assert!(WorkerName::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_token_is_json_behind_its_version() {
        let token = JoinToken {
            primary: "10.0.0.1".into(),
            name: "w1".into(),
            ca_sha256: "ab".repeat(32),
            postgres_port: 5432,
            postgres_role: "worker_w1".into(),
            postgres_password: "p".into(),
            broker_port: 6390,
            broker_user: "worker-w1".into(),
            broker_password: "r".into(),
        };
        let encoded = token.encode();
        assert!(encoded.starts_with(TOKEN_PREFIX));
        assert!(!encoded.contains(['+', '/', ' ', '\n']));
    }
}
