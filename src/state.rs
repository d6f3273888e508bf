//! What the daemon has done, recorded after every step so that a killed daemon can
//! converge on its next run and `uninstall` can undo exactly what was changed.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordedState {
    /// Components the stack has installed (and so owns).
    pub components: BTreeSet<String>,
    /// Provisioning fingerprints by id: rerun only when the fingerprint changes.
    pub provisioned: BTreeMap<String, String>,
    /// Distribution units the stack masked, with what they were before.
    pub distro_units: BTreeMap<String, DistroUnitBefore>,
    /// System users the stack created.
    pub users: BTreeSet<String>,
    /// Files and units the stack wrote.
    pub files: BTreeSet<String>,
    /// Old PostgreSQL clusters upgraded into a newer major, kept until the new one
    /// is healthy: data directory → the major it went to.
    pub upgraded_postgres: BTreeMap<String, u32>,
    /// The backup taken before an upgrade (what is upgraded → the file), kept until
    /// the upgraded stack is healthy: an apply killed mid-upgrade, run again, does not
    /// need a backup of a database it has already stopped.
    pub pre_upgrade_backups: BTreeMap<String, String>,
    /// Applications upgraded by an apply that ended healthy: the version they came
    /// from (kept on disk) and the backup taken before, for `rollback`.
    pub previous_versions: BTreeMap<String, PreviousVersion>,
    /// Application upgrades an apply has started and not yet seen healthy (or rolled
    /// back): application → (from, to). A daemon killed in between finds them here.
    pub upgrades_in_progress: BTreeMap<String, (String, String)>,
    /// Units whose files an apply changed and has not yet restarted (or reloaded):
    /// a daemon killed between the write and the restart restarts them next time,
    /// though their files then match.
    pub pending_restarts: BTreeMap<String, crate::model::OnChange>,
    /// Unit files written and systemd not yet reloaded.
    pub daemon_reload_pending: bool,
    /// Each component's Debian package and the version an apply last saw healthy: a
    /// different installed version (apt upgraded it) is an upgrade of the component.
    pub package_versions: BTreeMap<String, String>,
    /// Versions rolled back from (by apply or by hand): component → that venv id or
    /// archive version. Apply does not try it again until `unhold` (a different
    /// version is a new upgrade).
    pub held: BTreeMap<String, String>,
    /// Units a backup stopped to copy their data consistently and has not started
    /// again: a daemon killed meanwhile starts them when it comes back.
    pub stopped_for_backup: BTreeSet<String>,
    /// The backup file a restore began to put back (after it verified it, before it
    /// changed anything): until a restore of it completes, apply refuses.
    pub restore_in_progress: Option<String>,
    /// The backup (its creation time and host) whose configuration an unfinished
    /// restore has already applied: a restore of the same backup run again goes
    /// straight to the data rather than start what it is about to stop.
    pub restore_applied: Option<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousVersion {
    pub id: String,
    pub backup: Option<String>,
}

impl RecordedState {
    pub fn record_component(&mut self, name: &str, installed: bool) {
        if installed {
            self.components.insert(name.to_string());
        } else {
            self.components.remove(name);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroUnitBefore {
    /// `enabled`, `disabled`, `static`, `not-found`, …
    pub unit_file_state: String,
    pub was_active: bool,
}
