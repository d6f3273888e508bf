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
