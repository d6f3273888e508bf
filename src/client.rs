//! Client-side proxies for the CLI (and tests): the daemon's Manager and Job objects.

use zbus::zvariant::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.analyticsstack.Stack1.Manager",
    default_service = "org.analyticsstack.Stack1",
    default_path = "/org/analyticsstack/Stack1"
)]
pub trait Manager {
    fn plan(&self) -> zbus::Result<String>;
    fn apply(&self) -> zbus::Result<OwnedObjectPath>;
    fn apply_bundle(
        &self,
        bundle: zbus::zvariant::Fd<'_>,
        name: &str,
    ) -> zbus::Result<OwnedObjectPath>;
    fn uninstall(&self, purge_data: bool) -> zbus::Result<OwnedObjectPath>;
    fn backup(
        &self,
        output: zbus::zvariant::Fd<'_>,
        name: &str,
        with_telemetry: bool,
    ) -> zbus::Result<OwnedObjectPath>;
    fn restore(&self, backup: zbus::zvariant::Fd<'_>, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn restore_to(&self, target: &str) -> zbus::Result<OwnedObjectPath>;
    fn rollback(&self, component: &str) -> zbus::Result<OwnedObjectPath>;
    fn unhold(&self, component: &str) -> zbus::Result<String>;
    fn worker_add(&self, name: &str, address: &str) -> zbus::Result<OwnedObjectPath>;
    fn join(&self, primary: &str, token: &str) -> zbus::Result<String>;
    fn worker_remove(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn worker_list(&self) -> zbus::Result<String>;
    fn status(&self) -> zbus::Result<String>;
    fn alerts(&self) -> zbus::Result<String>;
    fn list_components(&self) -> zbus::Result<Vec<(String, String, bool, Vec<String>)>>;
    fn start(&self, component: &str) -> zbus::Result<()>;
    fn stop(&self, component: &str) -> zbus::Result<()>;
    fn restart(&self, component: &str) -> zbus::Result<()>;
    fn credentials(&self, component: &str) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn busy(&self) -> zbus::Result<bool>;
}

#[zbus::proxy(
    interface = "org.analyticsstack.Stack1.Job",
    default_service = "org.analyticsstack.Stack1"
)]
pub trait Job {
    fn cancel(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn steps_done(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn steps_total(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error_message(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn progress(&self, done: u32, total: u32, description: String) -> zbus::Result<()>;
    #[zbus(property)]
    fn bytes_done(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_total(&self) -> zbus::Result<u64>;
    #[zbus(signal)]
    fn bytes(&self, done: u64, total: u64) -> zbus::Result<()>;
    #[zbus(signal)]
    fn finished(
        &self,
        state: String,
        error_name: String,
        error_message: String,
    ) -> zbus::Result<()>;
}

/// The CLI's exit code for each typed error, documented in docs/troubleshooting.md.
pub fn exit_code(error_name: &str) -> u8 {
    match error_name.rsplit('.').next().unwrap_or("") {
        "InvalidConfig" => 3,
        "Busy" => 4,
        "AccessDenied" => 5,
        "Conflict" => 6,
        "NotFound" => 7,
        "Cancelled" => 8,
        "Integrity" => 10,
        _ => 1,
    }
}
