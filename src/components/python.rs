//! What the Python applications share: the lock files (embedded, so the daemon and a
//! bundle always agree on them), the venv each one gets, and the Python versions each
//! supports.

use super::Platform;
use crate::artifact::catalog::ArchivePin;
use crate::config::{Config, Interpreter};
use crate::model::{paths, VenvSpec};

/// The build backends (hash-pinned) for the locked packages PyPI has only as source.
pub const BUILD_LOCK: &str = include_str!("../../python/build.lock");

/// One locked application environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedApp {
    pub name: &'static str,
    /// Its distribution on PyPI.
    pub package: &'static str,
    /// The application's own version (the lock pins it).
    pub version: &'static str,
    pub lock: &'static str,
    /// Supported Python 3 minor versions, inclusive.
    pub python_minors: (u32, u32),
}

pub const AIRFLOW: LockedApp = LockedApp {
    name: "airflow",
    package: "apache-airflow",
    version: "3.3.2",
    lock: include_str!("../../python/airflow.lock"),
    python_minors: (10, 14),
};

pub const SUPERSET: LockedApp = LockedApp {
    name: "superset",
    package: "apache-superset",
    version: "6.1.0",
    lock: include_str!("../../python/superset.lock"),
    python_minors: (10, 12),
};

pub const DLT: LockedApp = LockedApp {
    name: "dlt",
    package: "dlt",
    version: "1.31.0",
    lock: include_str!("../../python/dlt.lock"),
    python_minors: (9, 14),
};

pub const ALL: &[LockedApp] = &[AIRFLOW, SUPERSET, DLT];

/// The Debian package that provides `/usr/bin/python3`.
pub const DEBIAN_PYTHON: &str = "python3";

impl LockedApp {
    /// `VERSION-HASH`: a new lock file is a new venv beside the old one.
    pub fn venv_id(&self) -> String {
        let hash = crate::util::sha256_hex(self.lock.as_bytes());
        format!("{}-{}", self.version, &hash[..12])
    }

    /// The application's version a lock file pins (`apache-airflow==3.3.1`).
    pub fn version_in<'a>(&self, lock: &'a str) -> Option<&'a str> {
        lock.lines().find_map(|l| {
            let (name, rest) = l.split_once("==")?;
            (name.trim() == self.package).then(|| rest.split([' ', '\\', ';']).next())?
        })
    }

    /// `OPT/NAME/current/bin/PROGRAM`, the path units run.
    pub fn bin(&self, program: &str) -> String {
        format!("{}/{}/current/bin/{program}", paths::OPT, self.name)
    }

    pub fn supports(&self, minor: u32) -> bool {
        (self.python_minors.0..=self.python_minors.1).contains(&minor)
    }

    /// The venv `config` asks for: (its id, its lock) — the operator's lock, when
    /// `[python] lock_dir` has one (its own version and hash), else the package's.
    pub fn locked_for(&self, config: &Config) -> (String, std::sync::Arc<str>) {
        match config.lock_overrides.get(self.name) {
            Some(lock) => {
                let hash = crate::util::sha256_hex(lock.as_bytes());
                let version = self.version_in(lock).unwrap_or(self.version);
                (format!("{version}-{}", &hash[..12]), lock.clone())
            }
            None => (self.venv_id(), std::sync::Arc::from(self.lock)),
        }
    }

    pub fn venv(&self, config: &Config, platform: &Platform) -> Option<VenvSpec> {
        let uv =
            crate::artifact::catalog::pin("uv", &platform.arch, config.archives.mirror.as_str())?;
        let (id, lock) = self.locked_for(config);
        let python = self.python(config, platform);
        Some(VenvSpec {
            name: self.name.into(),
            // A venv holds its interpreter's path: another interpreter is another venv.
            id: match python.id_suffix() {
                Some(suffix) => format!("{id}-{suffix}"),
                None => id,
            },
            lock,
            interpreter: python.interpreter.into(),
            python: python.archive,
            python_why: python.why,
            index_url: config.python.index_url.as_str().into(),
            uv,
            build_packages: self.packages(config, platform),
        })
    }

    /// The interpreter this application's venv is built on, and why.
    pub fn python(&self, config: &Config, platform: &Platform) -> PythonChoice {
        let managed = |why: String| {
            let pin = managed_pin(config, platform);
            PythonChoice {
                interpreter: pin.as_ref().map_or_else(String::new, managed_interpreter),
                archive: pin,
                why,
            }
        };
        let Some(path) = config.python.interpreter.path() else {
            return managed("[python] interpreter = \"managed\"".into());
        };
        // Only the distribution's python3 is replaced, and only when the application
        // cannot run on it (Superset 6.1 on trixie's 3.13): a path of the operator's is
        // the operator's choice, refused before anything changes if it does not fit.
        let debian_minor = (path == Interpreter::DEBIAN)
            .then(|| debian_python_minor(&platform.codename))
            .flatten();
        match debian_minor {
            Some(minor) if !self.supports(minor) => managed(format!(
                "Debian {}'s python3 is 3.{minor}; {} {} supports 3.{} to 3.{}",
                platform.codename,
                self.name,
                self.version,
                self.python_minors.0,
                self.python_minors.1
            )),
            Some(minor) => PythonChoice {
                interpreter: path.into(),
                archive: None,
                why: format!("Debian {}'s python3 (3.{minor})", platform.codename),
            },
            None => PythonChoice {
                interpreter: path.into(),
                archive: None,
                why: "[python] interpreter".into(),
            },
        }
    }

    /// The Debian packages the venv needs: the interpreter, when it is Debian's; the
    /// libraries an operator's own CPython links to, when it is that.
    pub fn packages(&self, config: &Config, platform: &Platform) -> Vec<String> {
        let python = self.python(config, platform);
        match (&python.archive, &config.python.managed) {
            (Some(_), Some(own)) => own.packages.iter().map(|p| p.as_str().into()).collect(),
            (Some(_), None) => Vec::new(),
            (None, _) if python.interpreter == Interpreter::DEBIAN => vec![DEBIAN_PYTHON.into()],
            (None, _) => Vec::new(),
        }
    }
}

/// Which Python an application gets: a path, the archive that provides it when the
/// stack brings it, and the reason (shown by `plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonChoice {
    pub interpreter: String,
    pub archive: Option<ArchivePin>,
    pub why: String,
}

impl PythonChoice {
    /// What the venv's id carries besides the lock: nothing for the distribution's
    /// python3 (the ids of venvs built before there was a choice), `py3.12.14` for the
    /// stack's own, a digest of any other path.
    fn id_suffix(&self) -> Option<String> {
        match &self.archive {
            Some(pin) => Some(format!("py{}", pin.version)),
            None if self.interpreter == Interpreter::DEBIAN => None,
            None => Some(crate::util::sha256_hex(self.interpreter.as_bytes())[..8].to_string()),
        }
    }
}

/// The relocatable CPython the stack brings: the operator's `[python.managed]`, else
/// the catalog's python-build-standalone build for this architecture.
pub fn managed_pin(config: &Config, platform: &Platform) -> Option<ArchivePin> {
    let Some(own) = &config.python.managed else {
        return crate::artifact::catalog::pin(
            MANAGED_PYTHON,
            &platform.arch,
            config.archives.mirror.as_str(),
        );
    };
    let url = own.url.as_str().to_string();
    Some(ArchivePin {
        component: MANAGED_PYTHON.into(),
        version: own.version.as_str().into(),
        format: crate::artifact::ArchiveFormat::TarGz,
        file_name: url.rsplit('/').next().unwrap_or_default().to_string(),
        url,
        digest: crate::artifact::catalog::DigestSource::Pinned(own.sha256.as_str().into()),
        binary: "bin/python3".into(),
    })
}

/// The catalog's (and `/opt/analytics-stack/`'s) name for the stack's own CPython.
pub const MANAGED_PYTHON: &str = "python";

/// `OPT/python/VERSION/bin/python3`: a version's own directory, not `current`, since
/// a venv keeps the path it was built with.
pub fn managed_interpreter(pin: &ArchivePin) -> String {
    format!(
        "{}/{}/{}/{}",
        paths::OPT,
        pin.component,
        pin.version,
        pin.binary
    )
}

/// The Python 3 minor version a managed archive holds (`3.12.14` → 12).
pub fn managed_minor(pin: &ArchivePin) -> Option<u32> {
    pin.version.split('.').nth(1)?.parse().ok()
}

/// The `python3` minor version a Debian release installs as /usr/bin/python3.
pub fn debian_python_minor(codename: &str) -> Option<u32> {
    match codename {
        "bookworm" => Some(11),
        "trixie" => Some(13),
        _ => None,
    }
}

/// Why `app` cannot run on the interpreter, if it cannot. `minor` is the interpreter's
/// Python 3 minor version (known, or what Debian will install), `None` if unknown.
pub fn unsupported(app: &LockedApp, interpreter: &str, minor: Option<u32>) -> Option<String> {
    let (lo, hi) = app.python_minors;
    match minor {
        Some(m) if app.supports(m) => None,
        Some(m) => Some(format!(
            "{} {} supports Python 3.{lo} to 3.{hi}, but {interpreter} is Python 3.{m}; \
             set [python] interpreter to a supported Python (or \"managed\"), or disable {}",
            app.name, app.version, app.name
        )),
        None => Some(format!(
            "{} needs Python 3.{lo} to 3.{hi}, and {interpreter} does not exist \
             (and this distribution's python3 is not known); set [python] interpreter",
            app.name
        )),
    }
}

pub fn app(name: &str) -> Option<&'static LockedApp> {
    ALL.iter().find(|a| a.name == name)
}

/// Turns an application's unit into its init unit: a oneshot that stays active once
/// `steps` (migrations, then the admin user…) have run in order, with the admin
/// password as the credential `admin-password`, ordered after the stores it needs.
pub fn into_init(
    mut unit: crate::units::ServiceUnit,
    mut steps: Vec<String>,
    admin_secret: &str,
    after: Vec<String>,
) -> crate::units::ServiceUnit {
    unit.service_type = "oneshot";
    unit.remain_after_exit = true;
    unit.exec_start = steps.pop().unwrap_or_default();
    unit.exec_start_pre = steps;
    unit.credentials = vec![(
        "admin-password".into(),
        format!("{}/{admin_secret}", paths::SECRETS),
    )];
    // A first migration on two cores takes minutes.
    unit.timeout_sec = 900;
    unit.after = after;
    unit
}

/// A process of an application: its own user, its home writable, ordered after the
/// application's init unit. Python applications read /proc beyond their own processes
/// (psutil: memory, CPU count) and take their time to start.
pub fn app_unit(
    config: &crate::config::Config,
    name: &str,
    description: &str,
    user: &str,
    exec_start: String,
    home: &str,
    init_unit: &str,
) -> crate::units::ServiceUnit {
    let mut unit = crate::units::ServiceUnit::new(name, description, user, exec_start);
    unit.read_write_paths = vec![home.into()];
    unit.after = vec![init_unit.into()];
    unit.needs_host_proc = true;
    unit.timeout_sec = 300;
    if config.memory_constrained {
        // glibc gives each thread that allocates an arena of its own (up to 8 per
        // core); two keep a threaded Python process from holding freed memory in each.
        unit.environment
            .push(("MALLOC_ARENA_MAX".into(), "2".into()));
    }
    unit
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_backends_are_pinned_with_hashes() {
        let locked = crate::bundle::wheels::parse_lock(super::BUILD_LOCK);
        let names: Vec<&str> = locked.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["setuptools", "wheel"]);
        assert!(locked
            .iter()
            .all(|l| !l.hashes.is_empty() && !l.version.is_empty()));
    }
}
