use super::*;
use crate::components::{render_all, Platform};
use crate::config::Config;
use crate::facts::{FileFact, Listener, UnitFact};
use crate::plan::graph;

/// Most tests here are about the data and metrics tiers; the applications have their
/// own tests below (`with_apps`).
const NO_APPS: &str =
    "[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n";

fn config(extra: &str) -> Config {
    crate::config::load_texts(&[("00-no-apps.toml", NO_APPS), ("t.toml", extra)]).unwrap()
}

fn bookworm() -> Platform {
    Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        ..Default::default()
    }
}

fn desired(extra: &str) -> Vec<ComponentSpec> {
    render_all(&config(extra), &bookworm())
}

fn host_at(addresses: &[&str]) -> Platform {
    Platform {
        names: vec!["stack.example.org".into(), "stack".into()],
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ..bookworm()
    }
}

fn with_apps(extra: &str) -> Vec<ComponentSpec> {
    render_all(
        &crate::config::load_texts(&[("t.toml", extra)]).unwrap(),
        &bookworm(),
    )
}

fn fresh_host() -> HostFacts {
    HostFacts {
        codename: "bookworm".into(),
        ..Default::default()
    }
}

/// A simulated host: applies each step to the facts the way the executor would.
fn simulate(plan: &Plan, facts: &mut HostFacts, state: &mut RecordedState) {
    for step in &plan.steps {
        simulate_step(step, facts, state);
    }
}

fn simulate_step(step: &Step, facts: &mut HostFacts, state: &mut RecordedState) {
    let active = |facts: &mut HostFacts, unit: &str, on: bool| {
        let f = facts.units.entry(unit.to_string()).or_default();
        f.active_state = if on {
            "active".into()
        } else {
            "inactive".into()
        };
    };
    match step {
        Step::MaskDistroUnit { unit, before } => {
            state
                .distro_units
                .entry(unit.clone())
                .or_insert(before.clone());
            let f = facts.units.entry(unit.clone()).or_default();
            f.unit_file_state = "masked".into();
            f.active_state = "inactive".into();
        }
        Step::InstallPackages { packages } => {
            for p in packages {
                facts.packages.insert(p.clone(), "1.0".into());
            }
        }
        Step::InstallArchive { pin } => {
            facts
                .archives
                .insert((pin.component.clone(), pin.version.clone()));
            facts
                .current_archives
                .insert(pin.component.clone(), pin.version.clone());
        }
        Step::PackageChanged { .. } => {}
        Step::BuildVenv { venv } => {
            for tool in venv.tool_pins() {
                assert!(
                    facts
                        .archives
                        .contains(&(tool.component.clone(), tool.version.clone())),
                    "{} is installed before the {} venv is built",
                    tool.component,
                    venv.name
                );
            }
            facts.venvs.insert(venv.name.clone(), venv.id.clone());
        }
        Step::CreateUser { user } => {
            facts.users.insert(user.name.clone());
        }
        Step::EnsureDir { dir } => {
            facts.dirs.insert(
                dir.path.clone(),
                Ownership {
                    mode: dir.mode,
                    owner: dir.owner.clone(),
                    group: dir.group.clone(),
                },
            );
        }
        Step::GenerateSecret { name } => {
            facts
                .secrets
                .insert(name.clone(), format!("secret-of-{name}"));
        }
        Step::InstallCertificate { tls, .. } => {
            let source_sha256 = facts.tls.as_ref().and_then(|t| t.source_sha256.clone());
            facts.tls = Some(crate::tls::TlsFact {
                issued: Some(crate::tls::Issued {
                    spec: tls.clone(),
                    certificate_sha256: "installed".into(),
                    source_sha256: source_sha256.clone(),
                    not_after: u64::MAX,
                }),
                intact: true,
                renew_due: false,
                source_sha256,
            });
        }
        Step::WriteFile { file, .. } => {
            let text = fill_secrets(&file.template, |n| facts.secrets.get(n).cloned())
                .expect("secrets exist before files");
            facts.files.insert(
                file.path.clone(),
                FileFact {
                    sha256: crate::util::sha256_hex(text.as_bytes()),
                    ownership: Ownership {
                        mode: file.mode,
                        owner: file.owner.clone(),
                        group: file.group.clone(),
                    },
                },
            );
        }
        Step::WriteUnit { unit, .. } => {
            facts.files.insert(
                unit.path(),
                FileFact {
                    sha256: crate::util::sha256_hex(unit.content.as_bytes()),
                    ownership: Ownership {
                        mode: 0o644,
                        owner: "root".into(),
                        group: "root".into(),
                    },
                },
            );
        }
        Step::RemoveFile { path } => {
            facts.files.remove(path);
        }
        Step::ReloadSystemd => state.daemon_reload_pending = false,
        Step::ReloadUnit { unit } | Step::RestartUnit { unit } => {
            state.pending_restarts.remove(unit);
        }
        Step::RecordPending {
            units,
            daemon_reload,
        } => {
            state.pending_restarts.extend(units.clone());
            state.daemon_reload_pending |= daemon_reload;
        }
        Step::Init { provision } => {
            if let Provision::PostgresInitdb { data_dir, .. } = provision {
                facts.existing.insert(data_dir.join("PG_VERSION"));
                let major = postgres_major_of(data_dir).unwrap();
                facts.postgres_clusters.insert(major, data_dir.clone());
            }
        }
        Step::UpgradePostgres {
            from_data,
            to_data,
            to,
            ..
        } => {
            facts.existing.insert(to_data.join("PG_VERSION"));
            facts.postgres_clusters.insert(*to, to_data.clone());
            state
                .upgraded_postgres
                .insert(from_data.display().to_string(), *to);
        }
        Step::EnableUnits { units } => {
            for u in units {
                facts.units.entry(u.clone()).or_default().unit_file_state = "enabled".into();
            }
        }
        Step::DisableUnits { units } => {
            for u in units {
                facts.units.entry(u.clone()).or_default().unit_file_state = "disabled".into();
            }
        }
        Step::StartUnit { unit } => {
            active(facts, unit, true);
            state.pending_restarts.remove(unit);
        }
        Step::StopUnit { unit } => active(facts, unit, false),
        Step::Provision { provision } => {
            state
                .provisioned
                .insert(provision.id(), provision.fingerprint());
        }
        Step::RestoreDistroUnit { .. }
        | Step::DeleteUser { .. }
        | Step::RemoveTree { .. }
        | Step::ForgetState => {
            panic!("an apply plan never holds uninstall steps: {step:?}")
        }
        Step::RecordComponent {
            component,
            installed,
        } => state.record_component(component, *installed),
    }
}

/// What a plan does to the host, without its bookkeeping (`RecordPending`, which
/// `an_apply_killed_after_any_step_still_restarts_what_it_changed` tests).
fn names(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| !matches!(s, Step::RecordPending { .. }))
        .map(|s| s.describe())
        .collect()
}

fn converged(extra: &str) -> (HostFacts, RecordedState) {
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    let p = plan(&desired(extra), &facts, &state);
    simulate(&p, &mut facts, &mut state);
    (facts, state)
}

#[test]
fn a_fresh_host_gets_everything_in_dependency_order() {
    let p = plan(&desired(""), &fresh_host(), &RecordedState::default());
    let steps = names(&p);
    let pos = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no step {needle}: {steps:#?}"))
    };
    assert!(pos("keep the distribution's postgresql.service") < pos("install Debian packages"));
    assert!(
        pos("createcluster.d") < pos("install Debian packages"),
        "no default cluster may be created"
    );
    // Users first: venvs are built as one while apt installs, and useradd must not
    // race dpkg's adduser.
    assert!(
        pos("create system user analytics-postgres")
            < pos("install Debian packages: postgresql-15 pgbackrest redis-server nginx")
    );
    assert!(
        pos("generate secret postgres-warehouse")
            < pos("write /etc/analytics-stack/redis/broker-auth.conf")
    );
    assert!(pos("write unit analytics-postgres.service") < pos("reload systemd"));
    assert!(pos("reload systemd") < pos("initialise PostgreSQL"));
    assert!(pos("initialise PostgreSQL") < pos("start analytics-postgres.service"));
    assert!(pos("start analytics-postgres.service") < pos("start analytics-redis-broker.service"));
    assert!(pos("start analytics-redis-cache.service") < pos("start analytics-nginx.service"));
    // Roles exist before any later component (an application) could connect.
    assert!(pos("start analytics-postgres.service") < pos("ensure PostgreSQL roles"));
    assert!(pos("ensure PostgreSQL roles") < pos("start analytics-redis-broker.service"));
    // Archiving works, with a base backup, before anything writes to the databases.
    assert!(pos("ensure PostgreSQL roles") < pos("ensure pgBackRest stanza analytics"));
    assert!(pos("ensure pgBackRest stanza") < pos("start analytics-redis-broker.service"));
    assert!(steps.iter().any(|s| s == "start analytics-stack.target"));
}

#[test]
fn held_units_are_installed_but_not_started_nor_the_target() {
    let desired = with_apps("");
    let full = plan(&desired, &fresh_host(), &RecordedState::default());
    let airflow: BTreeSet<String> = desired
        .iter()
        .filter(|s| s.name == "airflow")
        .flat_map(|s| s.units.iter().map(|u| u.name.clone()))
        .collect();
    assert!(!airflow.is_empty());
    let held = full.clone().without_starting(&airflow);
    let (all, kept) = (names(&full), names(&held));
    for unit in &airflow {
        assert!(all.contains(&format!("start {unit}")), "{all:#?}");
        assert!(!kept.contains(&format!("start {unit}")), "{kept:#?}");
        // Still written, so that the restore can start them.
        let written = format!("write unit {unit} ");
        assert!(kept.iter().any(|s| s.starts_with(&written)), "{kept:#?}");
    }
    assert!(!kept.contains(&"start analytics-stack.target".to_string()));
    // Everything else is as in the full plan.
    let others: Vec<&String> = all
        .iter()
        .filter(|s| {
            !s.starts_with("start ") || !(airflow.contains(&s[6..]) || s.ends_with(".target"))
        })
        .collect();
    assert_eq!(kept.iter().collect::<Vec<_>>(), others);
    // Nothing held: the same plan.
    assert_eq!(names(&full.clone().without_starting(&BTreeSet::new())), all);
}

#[test]
fn a_second_apply_of_the_same_config_plans_nothing() {
    let (facts, state) = converged("");
    let p = plan(&desired(""), &facts, &state);
    assert!(p.is_empty(), "{:#?}", names(&p));
}

#[test]
fn a_changed_port_rewrites_one_file_and_restarts_one_unit() {
    let (facts, state) = converged("");
    let p = plan(&desired("[redis.cache]\nport = 6390\n"), &facts, &state);
    assert_eq!(
        names(&p),
        [
            "write /etc/analytics-stack/redis/cache.conf (changed)",
            "restart analytics-redis-cache.service"
        ]
    );
}

#[test]
fn config_changes_reload_the_services_that_can_reload() {
    // Without TLS: with it, a new name is a new certificate, which NGINX reads only
    // when it starts.
    let plain = "[nginx]\ntls = \"off\"\n";
    let (facts, state) = converged(plain);
    let p = plan(
        &desired(&format!("{plain}[stack]\nhostname = \"stack.example\"\n")),
        &facts,
        &state,
    );
    assert_eq!(
        names(&p),
        [
            "write /etc/analytics-stack/nginx/nginx.conf (changed)",
            "write /etc/analytics-stack/prometheus/prometheus.yml (changed)",
            "write /etc/analytics-stack/alloy/config.alloy (changed)",
            "write /etc/analytics-stack/grafana/grafana.ini (changed)",
            // Alertmanager's external URL (its notifications' links) is a flag.
            "write unit analytics-alertmanager.service (changed)",
            "reload systemd",
            "reload analytics-nginx.service",
            "reload analytics-prometheus.service",
            "restart analytics-alertmanager.service",
            "restart analytics-alloy.service",
            "restart analytics-grafana.service"
        ]
    );
    let (facts, state) = converged("");
    let p = names(&plan(
        &desired("[stack]\nhostname = \"stack.example\"\n"),
        &facts,
        &state,
    ));
    assert!(p.contains(&"issue a certificate from the stack CA for stack.example, localhost (names or addresses changed)".to_string()), "{p:#?}");
    assert!(
        p.contains(&"restart analytics-nginx.service".to_string()),
        "{p:#?}"
    );
}

#[test]
fn a_stopped_unit_is_started_and_nothing_else_happens() {
    let (mut facts, state) = converged("");
    facts
        .units
        .get_mut("analytics-redis-broker.service")
        .unwrap()
        .active_state = "failed".into();
    let p = plan(&desired(""), &facts, &state);
    assert_eq!(names(&p), ["start analytics-redis-broker.service"]);
}

#[test]
fn a_file_edited_by_hand_is_put_back() {
    let (mut facts, state) = converged("");
    facts
        .files
        .get_mut(&PathBuf::from("/etc/analytics-stack/postgres/pg_hba.conf"))
        .unwrap()
        .sha256 = "edited".into();
    let p = plan(&desired(""), &facts, &state);
    assert_eq!(
        names(&p),
        [
            "write /etc/analytics-stack/postgres/pg_hba.conf (changed)",
            "reload analytics-postgres.service"
        ]
    );
}

#[test]
fn disabling_a_component_stops_it_and_keeps_its_data() {
    let (facts, state) = converged("");
    let p = plan(&desired("[redis]\nenabled = false\n"), &facts, &state);
    let steps = names(&p);
    assert_eq!(
        steps,
        [
            "stop analytics-redis-cache.service",
            "stop analytics-redis-broker.service",
            "disable analytics-redis-broker.service analytics-redis-cache.service",
            "remove /etc/systemd/system/analytics-redis-broker.service",
            "remove /etc/systemd/system/analytics-redis-cache.service",
            "record redis as removed",
            "reload systemd",
        ]
    );
    assert!(!steps.iter().any(|s| s.contains("/var/lib")));
}

#[test]
fn a_lost_secret_is_regenerated_and_its_users_updated() {
    let (mut facts, state) = converged("");
    facts.secrets.remove("postgres-airflow");
    let p = plan(&desired(""), &facts, &state);
    assert_eq!(
        names(&p),
        [
            "generate secret postgres-airflow",
            "ensure PostgreSQL roles and databases: superset, airflow, warehouse, analytics_monitor"
        ]
    );
}

#[test]
fn the_distro_state_before_masking_is_kept_from_the_first_time() {
    let mut facts = fresh_host();
    facts.units.insert(
        "nginx.service".into(),
        UnitFact {
            unit_file_state: "enabled".into(),
            active_state: "active".into(),
            ..Default::default()
        },
    );
    let p = plan(&desired(""), &facts, &RecordedState::default());
    let before = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::MaskDistroUnit { unit, before } if unit == "nginx.service" => {
                Some(before.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        before,
        DistroUnitBefore {
            unit_file_state: "enabled".into(),
            was_active: true
        }
    );
}

#[test]
fn a_foreign_listener_on_a_wanted_port_is_named() {
    let mut facts = fresh_host();
    facts.listeners.push(Listener {
        address: "0.0.0.0".parse().unwrap(),
        port: 80,
        pid: Some(42),
        process: Some("apache2".into()),
        unit: Some("apache2.service".into()),
    });
    facts.listeners.push(Listener {
        address: "127.0.0.1".parse().unwrap(),
        port: 5432,
        pid: Some(7),
        process: Some("postgres".into()),
        unit: Some(crate::components::postgres::UNIT.into()),
    });
    let conflicts = port_conflicts(&desired(""), &facts);
    assert_eq!(
        conflicts.len(),
        1,
        "the stack's own postgres is no conflict: {conflicts:?}"
    );
    assert_eq!(
        conflicts[0].to_string(),
        "port 80 wanted by analytics-nginx.service is held by apache2 (pid 42, apache2.service)"
    );
}

#[test]
fn plans_never_carry_secret_values() {
    let (facts, state) = converged("");
    let mut f = facts.clone();
    f.files.clear();
    let p = plan(&desired(""), &f, &state);
    let json = serde_json::to_string(&p).unwrap();
    for secret in facts.secrets.values() {
        assert!(!json.contains(secret.as_str()));
    }
    assert!(json.contains("broker-auth.conf"));
}

#[test]
fn an_archive_component_is_installed_once_and_a_new_version_restarts_it() {
    let on = "[statsd_exporter]\nenabled = true\n";
    let p = plan(&desired(on), &fresh_host(), &RecordedState::default());
    let steps = names(&p);
    let install = steps
        .iter()
        .position(|s| s.starts_with("install statsd-exporter "))
        .expect("archive step");
    assert!(
        steps[install]
            .ends_with("(verified: digest from the checksum file, recorded on first use)"),
        "{}",
        steps[install]
    );
    assert!(
        install
            < steps
                .iter()
                .position(|s| s == "start analytics-statsd-exporter.service")
                .unwrap()
    );
    let (mut facts, state) = converged(on);
    assert!(plan(&desired(on), &facts, &state).is_empty());
    // Another version is current (e.g. the catalog moved on): install and restart.
    facts
        .current_archives
        .insert("statsd-exporter".into(), "0.0.1".into());
    let again = names(&plan(&desired(on), &facts, &state));
    assert_eq!(again.len(), 2, "{again:#?}");
    assert!(again[0].starts_with("install statsd-exporter"));
    assert_eq!(again[1], "restart analytics-statsd-exporter.service");
    // It is an upgrade of the component (health-gated), from what `current` named.
    let ups = crate::upgrade::upgrades(&desired(on), &plan(&desired(on), &facts, &state), &facts);
    assert_eq!(ups.len(), 1, "{ups:#?}");
    assert_eq!(ups[0].component, "statsd-exporter");
    assert_eq!(ups[0].kind, crate::upgrade::UpgradeKind::Archive);
    assert_eq!(ups[0].from, "0.0.1");
}

#[test]
fn a_version_rolled_back_from_is_left_alone_until_unheld() {
    let on = "[statsd_exporter]\nenabled = true\n";
    let (mut facts, mut state) = converged(on);
    facts
        .current_archives
        .insert("statsd-exporter".into(), "0.29.0".into());
    state.held.insert("statsd-exporter".into(), "0.30.0".into());
    assert!(plan(&desired(on), &facts, &state).is_empty());
    assert_eq!(
        held_upgrades(&desired(on), &facts, &state),
        ["statsd-exporter stays on 0.29.0: 0.30.0 was rolled back (`analytics-stack unhold statsd-exporter` to try it again)"]
    );
    // Another version than the one rolled back from is a new upgrade.
    state.held.insert("statsd-exporter".into(), "0.29.5".into());
    assert!(
        names(&plan(&desired(on), &facts, &state))[0].starts_with("install statsd-exporter 0.30.0")
    );
    assert!(held_upgrades(&desired(on), &facts, &state).is_empty());
    // A held venv: no build, no restart.
    let apps = with_apps(APPS_ONLY);
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    simulate(&plan(&apps, &facts, &state), &mut facts, &mut state);
    let wanted = apps
        .iter()
        .find_map(|s| s.venv.clone().filter(|v| v.name == "superset"))
        .unwrap();
    facts
        .venvs
        .insert("superset".into(), "6.0.0-000000000000".into());
    state.held.insert("superset".into(), wanted.id.clone());
    assert!(plan(&apps, &facts, &state).is_empty());
}

#[test]
fn a_debian_package_apt_upgraded_restarts_its_units_alone_as_an_upgrade() {
    let (mut facts, mut state) = converged("");
    let desired = desired("");
    // What the last healthy apply saw: nothing to do while it is what is installed.
    for spec in &desired {
        if let Some(v) = facts.packages.get(&spec.version_package) {
            state
                .package_versions
                .insert(spec.version_package.clone(), v.clone());
        }
    }
    assert!(plan(&desired, &facts, &state).is_empty());
    facts
        .packages
        .insert("redis-server".into(), "5:7.0.16-1".into());
    let p = plan(&desired, &facts, &state);
    let steps = names(&p);
    assert_eq!(
        steps,
        [
            "restart redis on its upgraded Debian package redis-server (1.0 → 5:7.0.16-1)",
            "restart analytics-redis-broker.service",
            "restart analytics-redis-cache.service",
        ],
        "{steps:#?}"
    );
    let ups = crate::upgrade::upgrades(&desired, &p, &facts);
    assert_eq!(
        ups,
        [crate::upgrade::Upgrade {
            component: "redis".into(),
            kind: crate::upgrade::UpgradeKind::DebianPackage,
            from: "1.0".into(),
            to: "5:7.0.16-1".into(),
        }]
    );
    // A package never recorded (a host from before the stack recorded them) is not one.
    state.package_versions.clear();
    assert!(plan(&desired, &facts, &state).is_empty());
}

#[test]
fn a_port_held_by_a_stack_unit_being_replaced_is_no_conflict() {
    let mut facts = fresh_host();
    facts.listeners.push(Listener {
        address: "127.0.0.1".parse().unwrap(),
        port: 9080,
        pid: Some(9),
        process: Some("alloy".into()),
        unit: Some("analytics-alloy.service".into()),
    });
    let promtail = desired("[log_shipper]\nkind = \"promtail\"\n");
    assert!(port_conflicts(&promtail, &facts).is_empty());
    facts.listeners[0].unit = Some("someone-else.service".into());
    assert_eq!(port_conflicts(&promtail, &facts).len(), 1);
}

const APPS_ONLY: &str = "[statsd_exporter]\nenabled = false\n[loki]\nenabled = false\n[log_shipper]\nenabled = false\n[grafana]\nenabled = false\n[prometheus]\nenabled = false\n[node_exporter]\nenabled = false\n";

#[test]
fn venvs_are_built_once_after_uv_and_a_second_plan_is_empty() {
    let desired = with_apps(APPS_ONLY);
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    let first = plan(&desired, &facts, &state);
    let steps = names(&first);
    let uv = steps
        .iter()
        .position(|s| s.starts_with("install uv "))
        .expect("uv installed");
    let builds: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with("build the "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        builds.len(),
        3,
        "airflow, superset and dlt venvs: {steps:#?}"
    );
    assert!(builds.iter().all(|b| *b > uv));
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.starts_with("install uv "))
            .count(),
        1
    );
    // Migrations run (the init unit starts) before any Airflow process.
    let start = |u: &str| {
        steps
            .iter()
            .position(|s| s == &format!("start {u}"))
            .unwrap()
    };
    assert!(
        start(crate::components::airflow::INIT_UNIT) < start(crate::components::airflow::API_UNIT)
    );
    assert!(
        start(crate::components::airflow::INIT_UNIT)
            < start(crate::components::airflow::WORKER_UNIT)
    );
    assert!(
        start(crate::components::superset::INIT_UNIT)
            < start(crate::components::superset::WEB_UNIT)
    );
    simulate(&first, &mut facts, &mut state);
    let second = plan(&desired, &facts, &state);
    assert!(second.is_empty(), "{:#?}", names(&second));
}

#[test]
fn a_new_lock_file_rebuilds_that_venv_and_restarts_only_its_units() {
    let desired = with_apps(APPS_ONLY);
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    simulate(&plan(&desired, &facts, &state), &mut facts, &mut state);
    // The host has an older Superset venv in use.
    facts
        .venvs
        .insert("superset".into(), "6.0.0-000000000000".into());
    let steps = names(&plan(&desired, &facts, &state));
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("build the superset venv")),
        "{steps:#?}"
    );
    assert!(
        !steps.iter().any(|s| s.starts_with("install uv")),
        "uv is kept: {steps:#?}"
    );
    assert!(!steps.iter().any(|s| s.contains("airflow")), "{steps:#?}");
    for unit in crate::components::superset::unit_names() {
        assert!(
            steps.contains(&format!("restart {unit}")),
            "{unit}: {steps:#?}"
        );
    }
}

fn trixie() -> Platform {
    Platform {
        codename: "trixie".into(),
        arch: "amd64".into(),
        ..Default::default()
    }
}

#[test]
fn on_trixie_superset_gets_the_stacks_python_and_the_others_keep_debians() {
    let desired = render_all(
        &crate::config::load_texts(&[("t.toml", APPS_ONLY)]).unwrap(),
        &trixie(),
    );
    let venv = |name: &str| {
        desired
            .iter()
            .find_map(|s| s.venv.clone().filter(|v| v.name == name))
            .unwrap()
    };
    let superset = venv("superset");
    let pin = superset
        .python
        .clone()
        .expect("superset on the managed CPython");
    assert_eq!(pin.component, "python");
    assert!(matches!(
        pin.digest,
        crate::artifact::catalog::DigestSource::Pinned(_)
    ));
    assert_eq!(
        superset.interpreter,
        std::path::PathBuf::from(format!(
            "/opt/analytics-stack/python/{}/bin/python3",
            pin.version
        ))
    );
    assert!(
        superset.id.ends_with(&format!("-py{}", pin.version)),
        "{}",
        superset.id
    );
    assert!(
        superset.python_why.contains("trixie's python3 is 3.13")
            && superset.python_why.contains("supports 3.10 to 3.12"),
        "{}",
        superset.python_why
    );
    for other in ["airflow", "dlt"] {
        let v = venv(other);
        assert!(v.python.is_none(), "{other}");
        assert_eq!(v.interpreter, std::path::PathBuf::from("/usr/bin/python3"));
        assert_eq!(v.python_why, "Debian trixie's python3 (3.13)");
        assert!(!v.id.contains("-py"), "{}", v.id);
    }
    // Superset's component no longer asks for Debian's python3; the others do.
    let spec = |n: &str| desired.iter().find(|s| s.name == n).unwrap();
    assert!(!spec("superset").packages.contains(&"python3".into()));
    assert!(spec("airflow").packages.contains(&"python3".into()));

    let facts = HostFacts {
        codename: "trixie".into(),
        ..Default::default()
    };
    assert!(crate::stack::python_problems(&desired, &facts).is_empty());
    // The archive is installed once, after uv, before the venv built on it, and the
    // plan says why each application gets its Python.
    let mut facts = facts;
    let mut state = RecordedState::default();
    let first = plan(&desired, &facts, &state);
    let steps = names(&first);
    let python = steps
        .iter()
        .position(|s| s.starts_with("install python "))
        .unwrap_or_else(|| panic!("{steps:#?}"));
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.starts_with("install python "))
            .count(),
        1
    );
    let build = steps
        .iter()
        .position(|s| s.starts_with("build the superset venv"))
        .unwrap();
    assert!(python < build, "{steps:#?}");
    assert!(
        steps[build].contains("on /opt/analytics-stack/python/")
            && steps[build].contains("trixie's python3 is 3.13"),
        "{}",
        steps[build]
    );
    simulate(&first, &mut facts, &mut state);
    assert!(plan(&desired, &facts, &state).steps.is_empty());
}

#[test]
fn managed_builds_every_venv_on_the_stacks_python_and_an_interpreter_change_rebuilds_them() {
    let bookworm_venvs = |extra: &str| -> Vec<crate::model::VenvSpec> {
        with_apps(&format!("{APPS_ONLY}{extra}"))
            .into_iter()
            .filter_map(|s| s.venv)
            .collect()
    };
    let debian = bookworm_venvs("");
    let managed = bookworm_venvs("[python]\ninterpreter = \"managed\"\n");
    assert_eq!(managed.len(), 3);
    for (d, m) in debian.iter().zip(&managed) {
        assert!(m.python.is_some(), "{}", m.name);
        assert_eq!(m.python_why, "[python] interpreter = \"managed\"");
        // Another interpreter is another venv (a venv keeps its interpreter's path).
        assert_ne!(d.id, m.id);
        assert!(m.id.starts_with(&d.id), "{} {}", d.id, m.id);
    }
    // No Debian python3 is needed then.
    let specs = with_apps(&format!("{APPS_ONLY}[python]\ninterpreter = \"managed\"\n"));
    assert!(specs
        .iter()
        .all(|s| !s.packages.contains(&"python3".into())));
    // The operator's own archive replaces the catalog's, pinned by its digest.
    let own = bookworm_venvs(&format!(
        "[python]\ninterpreter = \"managed\"\n[python.managed]\nurl = \"http://10.0.0.9/cpython-3.12.14.tar.gz\"\nsha256 = \"{}\"\nversion = \"3.12.14\"\n",
        "ab".repeat(32)
    ));
    let own_specs = with_apps(&format!(
        "{APPS_ONLY}[python]\ninterpreter = \"managed\"\n[python.managed]\nurl = \"http://10.0.0.9/p.tar.gz\"\nsha256 = \"{}\"\nversion = \"3.12.14\"\npackages = [\"libsqlite3-0\", \"libssl3\"]\n",
        "ab".repeat(32)
    ));
    let superset = own_specs.iter().find(|s| s.name == "superset").unwrap();
    assert!(superset.packages.contains(&"libsqlite3-0".into()));
    assert!(!superset.packages.contains(&"python3".into()));
    let err = crate::config::load_texts(&[(
        "t.toml",
        &format!("[python.managed]\nurl = \"http://10.0.0.9/p.tar.gz\"\nsha256 = \"{}\"\nversion = \"3.12.1\"\npackages = [\"x; rm -rf /\"]\n", "ab".repeat(32)),
    )])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"x; rm -rf /\" is not a Debian package name"),
        "{err}"
    );
    let pin = own[0].python.as_ref().unwrap();
    assert_eq!(pin.url, "http://10.0.0.9/cpython-3.12.14.tar.gz");
    assert_eq!(pin.file_name, "cpython-3.12.14.tar.gz");
    assert_eq!(
        pin.digest,
        crate::artifact::catalog::DigestSource::Pinned("ab".repeat(32))
    );
    // A path of the operator's other than Debian's gets a venv of its own too.
    let custom = bookworm_venvs("[python]\ninterpreter = \"/opt/py/bin/python3\"\n");
    assert_ne!(custom[0].id, debian[0].id);
    assert!(custom[0].python.is_none());
    // Not a path, not "managed": refused with both named.
    let err = crate::config::load_texts(&[("t.toml", "[python]\ninterpreter = \"python3\"\n")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not an absolute path, nor \"managed\""),
        "{err}"
    );
    for bad in ["3.12", "2.7.18", "3.12.x", "3.12.14\n"] {
        let text = format!(
            "[python.managed]\nurl = \"http://10.0.0.9/p.tar.gz\"\nsha256 = \"{}\"\nversion = {bad:?}\n",
            "ab".repeat(32)
        );
        let err = crate::config::load_texts(&[("t.toml", &text)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a CPython version"), "{bad}: {err}");
    }
}

#[test]
fn a_python_the_application_does_not_support_is_refused_before_anything_installs() {
    let facts = HostFacts {
        codename: "trixie".into(),
        ..Default::default()
    };
    // The operator's own managed CPython of a minor Superset does not support.
    let own_313 = render_all(
        &crate::config::load_texts(&[(
            "t.toml",
            &format!(
                "{APPS_ONLY}[python]\ninterpreter = \"managed\"\n[python.managed]\nurl = \"http://10.0.0.9/p.tar.gz\"\nsha256 = \"{}\"\nversion = \"3.13.1\"\n",
                "ab".repeat(32)
            ),
        )])
        .unwrap(),
        &trixie(),
    );
    let problems = crate::stack::python_problems(&own_313, &facts);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("superset 6.1.0 supports Python 3.10 to 3.12"));
    assert!(problems[0].contains("/opt/analytics-stack/python/3.13.1/bin/python3 is Python 3.13"));
    // A path of the operator's is the operator's choice: never replaced, refused.
    let trixie_custom = render_all(
        &crate::config::load_texts(&[(
            "t.toml",
            &format!("{APPS_ONLY}[python]\ninterpreter = \"/usr/local/bin/python3\"\n"),
        )])
        .unwrap(),
        &trixie(),
    );
    let with_minor = HostFacts {
        codename: "trixie".into(),
        python_minor: Some(13),
        ..Default::default()
    };
    let problems = crate::stack::python_problems(&trixie_custom, &with_minor);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("/usr/local/bin/python3 is Python 3.13"));
    // Bookworm's python3 is 3.11: fine for all three.
    assert!(crate::stack::python_problems(&with_apps(APPS_ONLY), &fresh_host()).is_empty());
    // A custom interpreter that is missing is named.
    let custom = with_apps(&format!(
        "{APPS_ONLY}[python]\ninterpreter = \"/opt/py/bin/python3\"\n"
    ));
    let problems = crate::stack::python_problems(&custom, &fresh_host());
    assert!(
        problems
            .iter()
            .all(|p| p.contains("/opt/py/bin/python3 does not exist")),
        "{problems:#?}"
    );
}

#[test]
fn the_certificate_is_issued_once_and_again_only_when_the_host_or_its_end_changes() {
    let at = |a: &[&str]| render_all(&config(""), &host_at(a));
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    let first = plan(&at(&["127.0.0.1", "192.0.2.10"]), &facts, &state);
    let steps = names(&first);
    let pos = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {steps:#?}"))
    };
    assert!(steps.iter().any(|s| s == "issue a certificate from the stack CA for stack.example.org, stack, localhost, 127.0.0.1, 192.0.2.10 (new)"), "{steps:#?}");
    assert!(pos("directory /var/lib/analytics-stack/tls") < pos("issue a certificate"));
    assert!(pos("issue a certificate") < pos("start analytics-nginx.service"));
    simulate(&first, &mut facts, &mut state);
    assert!(plan(&at(&["127.0.0.1", "192.0.2.10"]), &facts, &state).is_empty());

    // NGINX runs: a new address re-issues and restarts NGINX and the units that
    // load the primary's client certificate issued with it (their copies are made
    // at start), nothing else.
    facts
        .units
        .get_mut("analytics-nginx.service")
        .unwrap()
        .active_state = "active".into();
    let moved = plan(&at(&["127.0.0.1", "192.0.2.11"]), &facts, &state);
    assert_eq!(
        names(&moved),
        [
            "issue a certificate from the stack CA for stack.example.org, stack, localhost, 127.0.0.1, 192.0.2.11 (names or addresses changed)",
            "restart analytics-nginx.service",
            "restart analytics-prometheus.service",
            "restart analytics-alloy.service",
            "restart analytics-grafana.service"
        ]
    );
    simulate(&moved, &mut facts, &mut state);
    facts.tls.as_mut().unwrap().renew_due = true;
    assert_eq!(
        names(&plan(&at(&["127.0.0.1", "192.0.2.11"]), &facts, &state))[0],
        "issue a certificate from the stack CA for stack.example.org, stack, localhost, 127.0.0.1, 192.0.2.11 (due for renewal)"
    );
    facts.tls.as_mut().unwrap().renew_due = false;
    facts.tls.as_mut().unwrap().intact = false;
    assert_eq!(
        names(&plan(&at(&["127.0.0.1", "192.0.2.11"]), &facts, &state))[0],
        "issue a certificate from the stack CA for stack.example.org, stack, localhost, 127.0.0.1, 192.0.2.11 (missing or changed on disk)"
    );
}

#[test]
fn operator_files_are_installed_again_when_they_change_and_tls_off_issues_nothing() {
    let files = "[nginx]\ntls = \"files\"\ncertificate = \"/etc/ssl/stack.pem\"\nkey = \"/etc/ssl/stack.key\"\n";
    let (mut facts, state) = converged(files);
    facts
        .units
        .get_mut("analytics-nginx.service")
        .unwrap()
        .active_state = "active".into();
    assert!(plan(&desired(files), &facts, &state).is_empty());
    facts.tls.as_mut().unwrap().source_sha256 = Some("renewed".into());
    assert_eq!(
        names(&plan(&desired(files), &facts, &state)),
        [
            "install the certificate /etc/ssl/stack.pem and key /etc/ssl/stack.key (certificate files changed)",
            "restart analytics-nginx.service"
        ]
    );
    let off = plan(
        &desired("[nginx]\ntls = \"off\"\n"),
        &fresh_host(),
        &RecordedState::default(),
    );
    assert!(
        !names(&off).iter().any(|s| s.contains("certificate")),
        "{:#?}",
        names(&off)
    );
}

/// Converges a host on `APPS_ONLY` plus `extra`; returns it and its recorded state.
fn converged_with_apps(extra: &str) -> (HostFacts, RecordedState) {
    let mut facts = fresh_host();
    let mut state = RecordedState::default();
    let first = plan(&with_apps(&format!("{APPS_ONLY}{extra}")), &facts, &state);
    simulate(&first, &mut facts, &mut state);
    (facts, state)
}

#[test]
fn a_worker_setting_restarts_that_worker_alone() {
    let (facts, state) = converged_with_apps("");
    for (setting, unit) in [
        (
            "[airflow]\nworker_concurrency = 3\n",
            crate::components::airflow::WORKER_UNIT,
        ),
        (
            "[superset]\nweb_workers = 3\n",
            crate::components::superset::WEB_UNIT,
        ),
        (
            "[superset]\nworker_concurrency = 3\n",
            crate::components::superset::WORKER_UNIT,
        ),
    ] {
        let p = plan(&with_apps(&format!("{APPS_ONLY}{setting}")), &facts, &state);
        assert_eq!(
            names(&p),
            [
                format!("write unit {unit} (changed)"),
                "reload systemd".into(),
                format!("restart {unit}"),
            ],
            "{setting}"
        );
    }
}

#[test]
fn a_process_turned_off_is_stopped_and_its_unit_removed_alone() {
    let (mut facts, mut state) = converged_with_apps("");
    let desired = with_apps(&format!(
        "{APPS_ONLY}[airflow]\ntriggerer = false\n[superset]\ncelery_worker = false\n"
    ));
    let p = plan(&desired, &facts, &state);
    let triggerer = crate::components::airflow::TRIGGERER_UNIT;
    let superset_worker = crate::components::superset::WORKER_UNIT;
    // The API server's health probe no longer asks for the triggerer's heartbeat; no
    // file or unit of any other process changes.
    assert_eq!(
        names(&p),
        [
            format!("stop {triggerer}"),
            format!("disable {triggerer}"),
            format!("remove /etc/systemd/system/{triggerer}"),
            format!("stop {superset_worker}"),
            format!("disable {superset_worker}"),
            format!("remove /etc/systemd/system/{superset_worker}"),
            "reload systemd".into(),
        ]
    );
    simulate(&p, &mut facts, &mut state);
    assert!(plan(&desired, &facts, &state).is_empty());
    // Turned on again: written and started, nothing else restarted.
    let back = plan(&with_apps(APPS_ONLY), &facts, &state);
    let steps = names(&back);
    assert!(steps.contains(&format!("start {triggerer}")), "{steps:#?}");
    assert!(
        !steps.iter().any(|s| s.starts_with("restart")),
        "{steps:#?}"
    );
}

/// A new PostgreSQL major (Debian's next release, or `[postgres] major`) upgrades the
/// stack's cluster — never an empty cluster beside the full one — after the new
/// packages and before the server starts again; then nothing is left to do.
#[test]
fn a_new_postgres_major_upgrades_the_cluster_and_never_starts_an_empty_one() {
    let (mut facts, mut state) = converged("");
    assert_eq!(
        facts.postgres_clusters.keys().copied().collect::<Vec<_>>(),
        vec![15]
    );
    let trixie = Platform {
        codename: "trixie".into(),
        ..bookworm()
    };
    for desired in [
        desired("[postgres]\nmajor = 17\n"),
        render_all(&config(""), &trixie),
    ] {
        let p = plan(&desired, &facts, &state);
        let steps = names(&p);
        assert!(
            !steps.iter().any(|s| s.starts_with("initialise PostgreSQL")),
            "{steps:#?}"
        );
        let upgrade = steps
            .iter()
            .position(|s| s.starts_with("upgrade PostgreSQL 15 → 17: pg_upgrade /var/lib/analytics-stack/postgres/15 into /var/lib/analytics-stack/postgres/17"))
            .unwrap_or_else(|| panic!("{steps:#?}"));
        let packages = steps
            .iter()
            .position(|s| s.contains("install Debian packages: postgresql-17"))
            .unwrap();
        let restart = steps
            .iter()
            .position(|s| s == "restart analytics-postgres.service")
            .unwrap();
        assert!(packages < upgrade && upgrade < restart, "{steps:#?}");
        assert!(postgres_problems(&desired, &facts).is_empty());
    }
    let desired = desired("[postgres]\nmajor = 17\n");
    let p = plan(&desired, &facts, &state);
    simulate(&p, &mut facts, &mut state);
    assert_eq!(
        state
            .upgraded_postgres
            .get("/var/lib/analytics-stack/postgres/15"),
        Some(&17)
    );
    assert!(plan(&desired, &facts, &state).is_empty());
}

#[test]
fn a_cluster_newer_than_the_configured_major_is_refused_before_anything() {
    let (facts, state) = converged("[postgres]\nmajor = 17\n");
    let back = desired("");
    let problems = postgres_problems(&back, &facts);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("PostgreSQL 17 cluster is in /var/lib/analytics-stack/postgres/17")
            && problems[0].contains("cannot be downgraded"),
        "{problems:?}"
    );
    // The planner itself would initialise 15 beside it: apply refuses first.
    let steps = names(&plan(&back, &facts, &state));
    assert!(steps
        .iter()
        .any(|s| s
            .starts_with("initialise PostgreSQL cluster in /var/lib/analytics-stack/postgres/15")));
}

/// The backup timer is written and started; its service is written but neither
/// enabled nor started by apply (the timer starts it).
#[test]
fn the_backup_timer_runs_and_its_service_waits_for_it() {
    let steps = names(&plan(
        &desired(""),
        &fresh_host(),
        &RecordedState::default(),
    ));
    assert!(steps.contains(&"write unit analytics-backup.timer (new)".to_string()));
    assert!(steps.contains(&"write unit analytics-backup.service (new)".to_string()));
    assert!(steps.contains(&"start analytics-backup.timer".to_string()));
    assert!(!steps.iter().any(|s| s == "start analytics-backup.service"));
    let enable = steps.iter().find(|s| s.starts_with("enable ")).unwrap();
    assert!(
        enable.contains("analytics-backup.timer") && !enable.contains("analytics-backup.service"),
        "{enable}"
    );
    // No schedule, no backup units.
    let off = names(&plan(
        &desired("[backup]\nschedule = \"\"\n"),
        &fresh_host(),
        &RecordedState::default(),
    ));
    assert!(
        !off.iter().any(|s| s.contains("analytics-backup")),
        "{off:#?}"
    );
}

/// A daemon killed after any step of a change converges: the next plans, each
/// killed after one more step, still restart what a written file notified and
/// reload systemd after a written unit, though the files then match.
#[test]
fn an_apply_killed_after_any_step_still_restarts_what_it_changed() {
    let (facts0, state0) = converged("");
    let changed = desired("[postgres]\nmax_connections = 150\n[nginx]\nport = 8080\n");
    let full = plan(&changed, &facts0, &state0);
    let wanted: Vec<String> = names(&full)
        .into_iter()
        .filter(|s| s.starts_with("restart ") || s == "reload systemd")
        .collect();
    assert!(
        wanted.contains(&"restart analytics-postgres.service".to_string()),
        "{wanted:?}"
    );
    for k in 1..full.steps.len() {
        let (mut facts, mut state) = (facts0.clone(), state0.clone());
        // The first k steps, then a kill; the rest replanned and done.
        let first = Plan {
            steps: full.steps[..k].to_vec(),
        };
        simulate(&first, &mut facts, &mut state);
        let rest = plan(&changed, &facts, &state);
        let done: Vec<String> = names(&first).into_iter().chain(names(&rest)).collect();
        for w in &wanted {
            assert!(
                done.contains(w),
                "killed after {k} steps, {w} never happens: {done:#?}"
            );
        }
        simulate(&rest, &mut facts, &mut state);
        assert!(
            plan(&changed, &facts, &state).is_empty(),
            "killed after {k}"
        );
        assert!(state.pending_restarts.is_empty() && !state.daemon_reload_pending);
    }
}

// The plan as a graph (graph.rs): what may run at once, and that any order the graph
// allows, killed anywhere, converges as the serial order does.

/// Steps' positions by the start of their description (the first match).
fn position_of(p: &Plan, start: &str) -> usize {
    p.steps
        .iter()
        .position(|s| s.describe().starts_with(start))
        .unwrap_or_else(|| panic!("no step '{start}…' in {:#?}", names(p)))
}

fn cold_plan(desired: &[ComponentSpec]) -> (Plan, graph::Graph) {
    let p = plan(desired, &fresh_host(), &RecordedState::default());
    let g = graph::graph(&p, desired);
    (p, g)
}

#[test]
fn archives_and_venvs_run_beside_apt() {
    let desired = with_apps("");
    let (p, g) = cold_plan(&desired);
    let apt = position_of(&p, "install Debian packages");
    let loki = position_of(&p, "install loki ");
    let airflow = position_of(&p, "build the airflow venv");
    let superset = position_of(&p, "build the superset venv");
    let uv = position_of(&p, "install uv ");
    let builder = position_of(&p, "create system user analytics-build");
    assert!(
        !g.waits_for(loki, apt),
        "a download needs nothing apt brings"
    );
    // uv first; archives one at a time; the venvs wait for uv, not for Loki.
    assert!(uv < loki && g.waits_for(loki, uv));
    assert!(!g.waits_for(airflow, loki) && !g.waits_for(superset, loki));
    assert!(!g.waits_for(superset, airflow) && !g.waits_for(airflow, superset));
    assert!(g.waits_for(airflow, uv) && g.waits_for(airflow, builder));
    // On Debian's Python the venvs wait for apt to install the interpreter, which
    // it does first and alone, and not for the rest of apt's work…
    assert_eq!(
        p.steps[apt],
        Step::InstallPackages {
            packages: vec!["python3".into()]
        }
    );
    let rest = apt + 1;
    assert!(p.steps[rest]
        .describe()
        .starts_with("install Debian packages: postgresql-15"));
    assert!(g.waits_for(rest, apt), "one dpkg at a time");
    assert!(g.waits_for(airflow, apt) && !g.waits_for(airflow, rest));
    // …on the stack's own they do not.
    let desired = with_apps("[python]\ninterpreter = \"managed\"\n");
    let (p, g) = cold_plan(&desired);
    let apt = position_of(&p, "install Debian packages");
    let cpython = position_of(&p, "install python ");
    for venv in ["airflow", "superset", "dlt"] {
        let build = position_of(&p, &format!("build the {venv} venv"));
        assert!(!g.waits_for(build, apt), "{venv}: {:?}", g.needs[build]);
        assert!(g.waits_for(build, cpython), "{venv}");
    }
}

#[test]
fn applications_start_together_once_the_data_tier_is_up() {
    let desired = with_apps("");
    let (p, g) = cold_plan(&desired);
    let roles = position_of(&p, "ensure PostgreSQL roles");
    let broker = position_of(&p, "start analytics-redis-broker.service");
    let postgres = position_of(&p, "start analytics-postgres.service");
    let apt = position_of(&p, "install Debian packages");
    let reload = position_of(&p, "reload systemd");
    let target = position_of(&p, "start analytics-stack.target");
    let units = |c: &str| -> Vec<usize> {
        let spec = desired.iter().find(|s| s.name == c).unwrap();
        spec.units
            .iter()
            .filter(|u| !u.triggered)
            .map(|u| position_of(&p, &format!("start {}", u.name)))
            .collect()
    };
    let venv = |c: &str| position_of(&p, &format!("build the {c} venv"));
    for (app, other) in [("airflow", "superset"), ("superset", "airflow")] {
        for &start in &units(app) {
            assert!(g.waits_for(start, roles) && g.waits_for(start, broker));
            assert!(g.waits_for(start, venv(app)) && g.waits_for(start, reload));
            for &theirs in &units(other) {
                assert!(!g.waits_for(start, theirs), "{}", p.steps[start].describe());
            }
        }
    }
    // Nothing of the stack's files and units before every venv and archive is
    // verified and installed: a refused one leaves no unit behind.
    assert!(g.waits_for(postgres, apt));
    let unit_file = position_of(&p, "write unit analytics-postgres.service");
    for install in (0..p.steps.len()).filter(|&i| {
        matches!(
            p.steps[i],
            Step::InstallArchive { .. } | Step::BuildVenv { .. }
        )
    }) {
        assert!(install > unit_file || g.waits_for(unit_file, install));
    }
    // The target waits for every step.
    assert!((0..target).all(|i| g.waits_for(target, i)));
    // Needs point backwards only: the plan's order is one the graph allows.
    for (j, needs) in g.needs.iter().enumerate() {
        assert!(needs.iter().all(|&i| i < j));
    }
}

#[test]
fn stack_users_join_no_group_a_package_makes() {
    // Users are created before apt runs (graph.rs relies on it).
    let desired = with_apps("[python]\ninterpreter = \"managed\"\n");
    let stack_users: BTreeSet<&str> = desired
        .iter()
        .flat_map(|s| &s.users)
        .map(|u| u.name.as_str())
        .collect();
    for user in desired.iter().flat_map(|s| &s.users) {
        for group in &user.groups {
            assert!(
                group == crate::components::log_shipper::JOURNAL_GROUP
                    || stack_users.contains(group.as_str()),
                "{} joins {group}, which a package may make: create it after apt",
                user.name
            );
        }
    }
}

/// A random order the graph allows (the lowest ready index after a random skip).
fn some_order(g: &graph::Graph, seed: u64) -> Vec<usize> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = g.needs.len();
    let mut done = vec![false; n];
    let mut order = Vec::new();
    while order.len() < n {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| !done[i] && g.needs[i].iter().all(|&d| done[d]))
            .collect();
        assert!(!ready.is_empty(), "the graph has a cycle");
        let pick = ready[(next() % ready.len() as u64) as usize];
        done[pick] = true;
        order.push(pick);
    }
    order
}

/// What must be true on the host before `step` runs, beyond what `simulate_step`
/// asserts: what a unit's start needs is there.
fn check_ready(desired: &[ComponentSpec], step: &Step, facts: &HostFacts, state: &RecordedState) {
    let Step::StartUnit { unit } = step else {
        return;
    };
    let Some(spec) = desired
        .iter()
        .find(|s| s.units.iter().any(|u| &u.name == unit))
    else {
        return;
    };
    let what = format!("before {unit} starts");
    for p in &spec.packages {
        assert!(facts.packages.contains_key(p), "{what}: package {p}");
    }
    if let Some(v) = &spec.venv {
        assert_eq!(facts.venvs.get(&v.name), Some(&v.id), "{what}: its venv");
    }
    if let Some(pin) = &spec.archive {
        assert_eq!(
            facts.current_archives.get(&pin.component),
            Some(&pin.version),
            "{what}: its archive"
        );
    }
    for f in &spec.files {
        assert!(
            facts.files.contains_key(&f.path),
            "{what}: {}",
            f.path.display()
        );
    }
    for u in &spec.units {
        assert!(
            facts.files.contains_key(&u.path()),
            "{what}: unit {}",
            u.name
        );
        assert!(facts.units.get(&u.name).is_some_and(|f| f.is_enabled()) || u.triggered);
    }
    if spec.venv.is_some() {
        let roles = desired
            .iter()
            .flat_map(|s| &s.provision)
            .find(|p| matches!(p, Provision::PostgresRoles { .. }))
            .unwrap();
        assert!(state.provisioned.contains_key(&roles.id()), "{what}: roles");
    }
}

#[test]
fn any_order_the_graph_allows_killed_anywhere_converges() {
    let desired = with_apps("");
    let changed = with_apps("[postgres]\nmax_connections = 150\n[nginx]\nport = 8480\n");
    // A cold apply, and a change to a converged host.
    let (facts_cold, state_cold) = (fresh_host(), RecordedState::default());
    let mut facts_warm = fresh_host();
    let mut state_warm = RecordedState::default();
    simulate(
        &plan(&desired, &facts_warm, &state_warm),
        &mut facts_warm,
        &mut state_warm,
    );
    for (want, facts0, state0) in [
        (&desired, &facts_cold, &state_cold),
        (&changed, &facts_warm, &state_warm),
    ] {
        let full = plan(want, facts0, state0);
        let g = graph::graph(&full, want);
        for seed in 1..=12 {
            let order = some_order(&g, seed);
            for k in (0..=order.len()).step_by(7).chain([order.len()]) {
                let (mut facts, mut state) = (facts0.clone(), state0.clone());
                for &i in &order[..k] {
                    check_ready(want, &full.steps[i], &facts, &state);
                    simulate_step(&full.steps[i], &mut facts, &mut state);
                }
                // Killed after k steps of this order: the rest replanned, in order.
                let rest = plan(want, &facts, &state);
                simulate(&rest, &mut facts, &mut state);
                assert!(
                    plan(want, &facts, &state).is_empty(),
                    "seed {seed}, killed after {k}"
                );
                assert!(state.pending_restarts.is_empty() && !state.daemon_reload_pending);
            }
        }
    }
}
