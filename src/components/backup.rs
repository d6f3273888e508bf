//! Scheduled backups: `analytics-backup.timer` starts `analytics-backup.service`,
//! which runs `analytics-stack backup --scheduled` (the CLI asks the daemon for the
//! backup, writes it into `[backup] directory` and prunes to `keep` only after it
//! succeeded). The service is root's (the backup holds every secret, and only root
//! may ask for one) with no capabilities, below a read-only system.

use crate::config::Config;
use crate::model::*;
use crate::units::ServiceUnit;

pub const TIMER: &str = "analytics-backup.timer";
pub const SERVICE: &str = "analytics-backup.service";

pub fn unit_names() -> Vec<String> {
    vec![TIMER.into(), SERVICE.into()]
}

/// The timer's unit file. `Persistent=true`: a run missed while the host was off
/// happens at the next boot; the randomized delay spreads hosts of one fleet.
fn timer(schedule: &str) -> UnitSpec {
    crate::units::timer(
        TIMER,
        "analytics-stack: scheduled backup",
        &[
            &format!("OnCalendar={schedule}"),
            "Persistent=true",
            "RandomizedDelaySec=10min",
        ],
        SERVICE,
    )
}

pub fn render(config: &Config) -> ComponentSpec {
    let backup = &config.backup;
    let mut service = ServiceUnit::new(
        SERVICE,
        "analytics-stack: scheduled backup",
        "root",
        "/usr/bin/analytics-stack backup --scheduled".into(),
    );
    service.service_type = "oneshot";
    // A backup of a large warehouse takes as long as it takes.
    service.timeout_sec = 0;
    service.read_write_paths = vec![backup.directory.as_str().to_string()];
    service.after = vec!["analytics-stackd.service".into()];
    // The CLI talks to the daemon over the system bus's socket and nothing else.
    service.unix_sockets_only = true;
    let mut service = service.render();
    service.triggered = true;
    ComponentSpec {
        name: "backup",
        description: "Scheduled backups (analytics-backup.timer)",
        dirs: vec![DirSpec {
            path: backup.directory.as_str().into(),
            mode: 0o700,
            owner: "root".into(),
            group: "root".into(),
        }],
        units: vec![timer(backup.schedule.as_str()), service],
        ..Default::default()
    }
}
