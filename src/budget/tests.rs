use super::*;
use crate::config::{load_texts, Profile};

const GIB: u64 = 1 << 30;

fn config(extra: &str) -> Config {
    load_texts(&[("t.toml", extra)]).unwrap()
}

fn host(gib: u64, cpus: u32) -> Platform {
    Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        memory_bytes: gib * GIB,
        cpus,
        ..Default::default()
    }
}

fn fitted(extra: &str, host: &Platform) -> (Config, MemoryPlan) {
    fit(&config(extra), host)
        .unwrap_or_else(|e| panic!("{extra}: {e}"))
        .unwrap_or_else(|| panic!("{extra}: no budget"))
}

const NO_TELEMETRY: &str = "[statsd_exporter]\nenabled = false\n[loki]\nenabled = false\n[log_shipper]\nenabled = false\n[grafana]\nenabled = false\n";

#[test]
fn without_a_budget_the_configuration_is_used_as_it_is() {
    assert_eq!(fit(&config(""), &host(2, 2)), Ok(None));
    let specs = components::render_all(&config(""), &host(2, 2));
    assert!(specs
        .iter()
        .flat_map(|s| &s.units)
        .all(|u| !u.content.contains("MemoryMax=")));
}

#[test]
fn budgets_parse_in_binary_units_and_the_edge_profile_sets_one() {
    let at = |v: &str| {
        config(&format!("[stack]\nmemory_budget = \"{v}\"\n"))
            .stack
            .budget_bytes()
    };
    assert_eq!(at("1.5GiB"), Some(1536 << 20));
    assert_eq!(at("800MiB"), Some(800 << 20));
    assert_eq!(at("2G"), Some(2 * GIB));
    assert_eq!(at("0.25gb"), Some(256 << 20));
    let edge = config("[stack]\nprofile = \"edge\"\n");
    assert_eq!(edge.stack.profile, Profile::Edge);
    assert_eq!(edge.stack.budget_bytes(), Some(1536 << 20));
    let own = config("[stack]\nprofile = \"edge\"\nmemory_budget = \"1GiB\"\n");
    assert_eq!(own.stack.budget_bytes(), Some(GIB));
    for bad in [
        "1.5",
        "lots",
        "1.5PiB",
        "10MiB",
        "1.2345GiB",
        "-1GiB",
        "1e3MiB",
    ] {
        let err = load_texts(&[("t.toml", &format!("[stack]\nmemory_budget = \"{bad}\"\n"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stack.memory_budget"), "{bad}: {err}");
    }
}

/// Host sizes × component sets: what the planner keeps, lowers and turns off.
#[test]
fn the_budget_planner_over_host_sizes_and_component_sets() {
    struct Case {
        what: &'static str,
        extra: String,
        host: Platform,
        triggerer: bool,
        superset_worker: bool,
        airflow_workers: u32,
        web_workers: u32,
    }
    let cases = [
        Case {
            what: "a large host with a large budget keeps the defaults",
            extra: "[stack]\nmemory_budget = \"16GiB\"\n".into(),
            host: host(32, 16),
            triggerer: true,
            superset_worker: true,
            airflow_workers: 2,
            web_workers: 2,
        },
        Case {
            what: "one core caps every pool at one process",
            extra: "[stack]\nmemory_budget = \"16GiB\"\n".into(),
            host: host(32, 1),
            triggerer: true,
            superset_worker: true,
            airflow_workers: 1,
            web_workers: 1,
        },
        Case {
            what: "edge, every component: both optional processes go",
            extra: "[stack]\nprofile = \"edge\"\n".into(),
            host: host(2, 2),
            triggerer: false,
            superset_worker: false,
            airflow_workers: 1,
            web_workers: 1,
        },
        Case {
            what: "edge without the telemetry components keeps the triggerer",
            extra: format!("[stack]\nprofile = \"edge\"\n{NO_TELEMETRY}"),
            host: host(2, 2),
            triggerer: true,
            superset_worker: false,
            airflow_workers: 1,
            web_workers: 1,
        },
        Case {
            what: "edge without Superset keeps Airflow whole",
            extra: "[stack]\nprofile = \"edge\"\n[superset]\nenabled = false\n".into(),
            host: host(2, 4),
            triggerer: true,
            superset_worker: false,
            airflow_workers: 2,
            web_workers: 2,
        },
        Case {
            what: "3 GiB on a 4 GiB host: smaller pools, every process",
            extra: "[stack]\nmemory_budget = \"3GiB\"\n".into(),
            host: host(4, 4),
            triggerer: true,
            superset_worker: true,
            airflow_workers: 2,
            web_workers: 2,
        },
    ];
    for case in cases {
        let (c, plan) = fitted(&case.extra, &case.host);
        let what = case.what;
        assert!(plan.expected_mib() <= plan.budget_mib, "{what}:\n{plan}");
        assert_eq!(c.airflow.triggerer, case.triggerer, "{what}:\n{plan}");
        assert_eq!(
            c.superset.enabled && c.superset.celery_worker,
            case.superset_worker,
            "{what}:\n{plan}"
        );
        assert_eq!(
            c.airflow.worker_concurrency.get(),
            case.airflow_workers,
            "{what}:\n{plan}"
        );
        if c.superset.enabled {
            assert_eq!(
                c.superset.web_workers.get(),
                case.web_workers,
                "{what}:\n{plan}"
            );
        }
        // Every running unit has limits, and a unit's limits hold its working memory.
        let specs = components::render_all(&c, &case.host);
        for unit in specs.iter().flat_map(|s| &s.units) {
            // One-time setup, and timers (no process of their own).
            if unit.name.ends_with("-init.service") || unit.name.ends_with(".timer") {
                continue;
            }
            let b = plan
                .limit_for(&unit.name)
                .unwrap_or_else(|| panic!("{what}: no budget line for {}", unit.name));
            assert!(b.high_mib >= b.expected_mib + b.working_mib && b.max_mib > b.high_mib);
        }
        // Every choice is printed with the table.
        let table = plan.to_string();
        for choice in &plan.choices {
            assert!(table.contains(choice.as_str()));
        }
    }
}

#[test]
fn a_larger_budget_never_loses_more() {
    let mut last_lost = usize::MAX;
    for mib in (1200..=6000).step_by(100) {
        let extra = format!("[stack]\nmemory_budget = \"{mib}MiB\"\n");
        let lost = match fit(&config(&extra), &host(8, 4)) {
            Ok(Some((_, plan))) => plan.choices.len(),
            Ok(None) => unreachable!(),
            Err(BudgetError::TooSmall { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        assert!(lost <= last_lost, "{mib} MiB loses more than less did");
        last_lost = lost;
    }
    assert_eq!(last_lost, 0, "6 GiB needs nothing lowered");
}

#[test]
fn a_budget_too_small_or_above_the_host_is_refused_with_the_reason() {
    let err = fit(
        &config("[stack]\nmemory_budget = \"600MiB\"\n"),
        &host(2, 2),
    )
    .unwrap_err();
    let text = err.to_string();
    let BudgetError::TooSmall {
        budget_mib,
        needed_mib,
        smallest,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*budget_mib, 600);
    assert!(*needed_mib > 600 && *needed_mib == smallest.expected_mib());
    assert!(text.contains("600 MiB is too small"), "{text}");
    assert!(
        text.contains(crate::components::airflow::API_UNIT),
        "the table: {text}"
    );

    let err = fit(&config("[stack]\nmemory_budget = \"4GiB\"\n"), &host(2, 2)).unwrap_err();
    assert_eq!(
        err,
        BudgetError::AboveHost {
            budget_mib: 4096,
            host_mib: 2048
        }
    );
}

#[test]
fn limits_land_in_the_service_section_of_each_unit() {
    let (c, plan) = fitted("[stack]\nprofile = \"edge\"\n", &host(2, 2));
    let mut specs = components::render_all(&c, &host(2, 2));
    limit_units(&mut specs, &plan);
    let worker = specs
        .iter()
        .flat_map(|s| &s.units)
        .find(|u| u.name == crate::components::airflow::WORKER_UNIT)
        .unwrap();
    let b = plan.limit_for(&worker.name).unwrap();
    let service = worker.content.split_once("[Service]\n").unwrap().1;
    assert!(service.contains(&format!("\nMemoryHigh={}\n", b.high_mib << 20)));
    assert!(service.contains(&format!("\nMemoryMax={}\n", b.max_mib << 20)));
    assert!(service.contains("--concurrency 1"));
    assert!(service.contains("Environment=\"MALLOC_ARENA_MAX=2\""));
}

#[test]
fn host_memory_is_the_lower_of_ram_and_the_cgroup_limit() {
    use crate::host::gather::memory_available;
    assert_eq!(memory_available(8 * GIB, Some(2 * GIB)), 2 * GIB);
    assert_eq!(memory_available(8 * GIB, Some(u64::MAX / 2)), 8 * GIB);
    assert_eq!(memory_available(8 * GIB, None), 8 * GIB);
    assert_eq!(memory_available(0, Some(GIB)), GIB);
}
