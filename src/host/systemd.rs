//! systemd over D-Bus (org.freedesktop.systemd1): one connection, jobs awaited through
//! the `JobRemoved` signal so a start is done only when systemd says so.

use crate::facts::UnitFact;
use futures_util::StreamExt;
use std::time::Duration;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait SystemdManager {
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn mask_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn unmask_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub trait SystemdUnit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub trait SystemdService {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn memory_high(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn memory_max(&self) -> zbus::Result<u64>;
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd D-Bus call failed: {0}")]
    Bus(#[from] zbus::Error),
    #[error("{unit}: job {verb} finished with result '{result}'")]
    JobFailed {
        unit: String,
        verb: &'static str,
        result: String,
    },
    #[error("{unit}: job {verb} did not finish within {secs} s")]
    JobTimeout {
        unit: String,
        verb: &'static str,
        secs: u64,
    },
}

/// A unit's live status, for `status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UnitStatus {
    pub name: String,
    #[serde(flatten)]
    pub fact: UnitFact,
    /// Bytes, when the kernel accounts memory for the unit.
    pub memory_bytes: Option<u64>,
    /// The lower of `MemoryHigh=` (throttled above it) and `MemoryMax=` (killed),
    /// when either is set.
    pub memory_limit_bytes: Option<u64>,
    pub restarts: u32,
}

#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    manager: SystemdManagerProxy<'static>,
}

impl Systemd {
    pub async fn connect(conn: zbus::Connection) -> Result<Self, SystemdError> {
        let manager = SystemdManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // Without Subscribe systemd may not send JobRemoved to us.
        manager.subscribe().await?;
        Ok(Systemd { conn, manager })
    }

    pub async fn reload(&self) -> Result<(), SystemdError> {
        Ok(self.manager.reload().await?)
    }

    pub async fn enable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager.enable_unit_files(&names, false, true).await?;
        Ok(())
    }

    pub async fn disable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager.disable_unit_files(&names, false).await?;
        Ok(())
    }

    pub async fn mask(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager.mask_unit_files(&[unit], false, true).await?;
        Ok(())
    }

    pub async fn unmask(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager.unmask_unit_files(&[unit], false).await?;
        Ok(())
    }

    /// Forgets a unit's failure and its recent starts (`systemctl reset-failed`):
    /// starts the daemon makes on purpose do not count toward the start limit that
    /// stops a crash loop.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        match self.manager.reset_failed_unit(unit).await {
            // Not loaded (never started): nothing to forget.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            r => Ok(r?),
        }
    }

    /// Runs a job (`start`, `stop`, `restart`, `reload`) and waits for its result.
    pub async fn run_job(
        &self,
        verb: &'static str,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        let mut removed = self.manager.receive_job_removed().await?;
        let job = match verb {
            "start" => self.manager.start_unit(unit, "replace").await?,
            "stop" => self.manager.stop_unit(unit, "replace").await?,
            "restart" => self.manager.restart_unit(unit, "replace").await?,
            _ => self.manager.reload_unit(unit, "replace").await?,
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args()?;
                if args.job == job {
                    return Ok(args.result.clone());
                }
            }
            Err(zbus::Error::Failure("systemd closed the connection".into()))
        };
        let result =
            tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| SystemdError::JobTimeout {
                    unit: unit.into(),
                    verb,
                    secs: timeout.as_secs(),
                })??;
        if result == "done" {
            Ok(())
        } else {
            Err(SystemdError::JobFailed {
                unit: unit.into(),
                verb,
                result,
            })
        }
    }

    pub async fn unit_fact(&self, unit: &str) -> Result<UnitFact, SystemdError> {
        let path = self.manager.load_unit(unit).await?;
        let u = SystemdUnitProxy::builder(&self.conn)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let mut fact = UnitFact {
            load_state: u.load_state().await?,
            active_state: u.active_state().await?,
            sub_state: u.sub_state().await?,
            unit_file_state: u.unit_file_state().await.unwrap_or_default(),
            main_pid: 0,
        };
        if unit.ends_with(".service") && fact.load_state == "loaded" {
            let s = SystemdServiceProxy::builder(&self.conn)
                .path(path)?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            fact.main_pid = s.main_pid().await.unwrap_or(0);
        }
        Ok(fact)
    }

    pub async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let fact = self.unit_fact(unit).await?;
        let path = self.manager.load_unit(unit).await?;
        let s = SystemdServiceProxy::builder(&self.conn)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // u64::MAX means "not accounted" (e.g. cgroup v1 without the memory controller).
        let memory_bytes = s.memory_current().await.ok().filter(|&m| m != u64::MAX);
        let restarts = s.n_restarts().await.unwrap_or(0);
        // u64::MAX is "infinity": no limit.
        let memory_limit_bytes = [s.memory_high().await.ok(), s.memory_max().await.ok()]
            .into_iter()
            .flatten()
            .filter(|&m| m != u64::MAX)
            .min();
        Ok(UnitStatus {
            name: unit.into(),
            fact,
            memory_bytes,
            memory_limit_bytes,
            restarts,
        })
    }
}
