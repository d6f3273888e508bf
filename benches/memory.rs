//! Idle memory (PSS) of every unit of the whole stack, with the default sizes and
//! under the edge profile, side by side; and the daemon's VmRSS after 300 status
//! calls. Each stack runs in its own real-systemd container (the edge one limited to
//! 2 GiB); statsd_exporter, Loki, Grafana and Alloy are the tests' STAND-INS (their
//! releases cannot be downloaded here), so their measured PSS is replaced by the
//! budget's estimate of the real programs in the "estimated" total.
//! Run as root: `cargo bench --bench memory` (about six minutes).

#[path = "../tests/common/mod.rs"]
mod common;

use analytics_stack::budget;
use common::{mirror::Mirror, Container};
use std::collections::BTreeMap;

/// PSS in MiB of each running analytics-* unit (the sum over its cgroup's processes).
fn pss(c: &Container) -> BTreeMap<String, u64> {
    std::fs::copy(
        common::repo().join("bench/pss.sh"),
        format!("/proc/{}/root/tmp/pss.sh", c.leader),
    )
    .unwrap();
    c.ok("sh /tmp/pss.sh")
        .lines()
        .filter(|l| l.starts_with("analytics-"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

fn daemon_rss_kib(c: &Container) -> u64 {
    c.ok("for i in $(seq 300); do analytics-stack status >/dev/null; done");
    // Idle: past the next 15-second refresh.
    std::thread::sleep(std::time::Duration::from_secs(20));
    c.ok("awk '/^VmRSS/ {print $2}' /proc/$(systemctl show -p MainPID --value analytics-stackd)/status")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn stack(
    mirror: &Mirror,
    name: &str,
    edge: bool,
) -> (BTreeMap<String, u64>, u64, budget::MemoryPlan) {
    let c = if edge {
        Container::boot_with_memory(name, 2 << 30)
    } else {
        Container::boot(name)
    };
    c.start_daemon();
    c.ok(&format!(
        "mkdir -p /etc/analytics-stack && printf '[stack]\\nprofile = \"{}\"\\n[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.toml",
        if edge { "edge" } else { "standard" },
        mirror.url
    ));
    c.ok("analytics-stack apply");
    // The budget's figures for the same configuration (the default stack has no
    // budget: its estimate is computed for the default sizes).
    let profile = if edge {
        "[stack]\nprofile = \"edge\"\n"
    } else {
        ""
    };
    let config = analytics_stack::config::load_texts(&[("bench.toml", profile)]).unwrap();
    let platform = analytics_stack::components::Platform {
        memory_bytes: 2 << 30,
        cpus: analytics_stack::host::gather::host_cpus(),
        ..Default::default()
    };
    let plan = match budget::fit(&config, &platform).unwrap() {
        Some((_, plan)) => plan,
        None => budget::MemoryPlan {
            budget_mib: 0,
            host_mib: 0,
            cpus: 0,
            units: budget::estimate(&config),
            choices: vec![],
        },
    };
    // Idle: a minute after the apply, past start-up and the first scrapes.
    std::thread::sleep(std::time::Duration::from_secs(60));
    let figures = pss(&c);
    let rss = daemon_rss_kib(&c);
    (figures, rss, plan)
}

const STAND_INS: &[&str] = &[
    "analytics-statsd-exporter.service",
    "analytics-loki.service",
    "analytics-grafana.service",
    "analytics-alloy.service",
];

fn main() {
    let mirror = Mirror::start();
    mirror.put_release_archives();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);

    let (default, default_rss, default_plan) = stack(&mirror, "as-bench-default", false);
    let (edge, edge_rss, edge_plan) = stack(&mirror, "as-bench-edge", true);

    let units: std::collections::BTreeSet<&String> = default.keys().chain(edge.keys()).collect();
    println!("{:<42} {:>12} {:>12}", "idle PSS (MiB)", "default", "edge");
    let show = |m: &BTreeMap<String, u64>, u: &str| m.get(u).map_or("-".into(), |v| v.to_string());
    for u in units
        .iter()
        .filter(|u| u.as_str() != "analytics-stackd.service")
    {
        let mark = if STAND_INS.contains(&u.as_str()) {
            " (stand-in)"
        } else {
            ""
        };
        println!(
            "{:<42} {:>12} {:>12}",
            format!("{u}{mark}"),
            show(&default, u),
            show(&edge, u)
        );
    }
    let total = |m: &BTreeMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(u, _)| u.as_str() != "analytics-stackd.service")
            .map(|(_, v)| v)
            .sum()
    };
    // Stand-ins' measured PSS replaced by the budget's figure for the real program.
    let estimated = |m: &BTreeMap<String, u64>, plan: &budget::MemoryPlan| -> u64 {
        total(m) - STAND_INS.iter().filter_map(|u| m.get(*u)).sum::<u64>()
            + STAND_INS
                .iter()
                .filter(|u| m.contains_key(**u))
                .filter_map(|u| plan.limit_for(u).map(|b| b.expected_mib))
                .sum::<u64>()
    };
    println!(
        "{:<42} {:>12} {:>12}",
        "total, measured",
        total(&default),
        total(&edge)
    );
    println!(
        "{:<42} {:>12} {:>12}",
        "total, stand-ins counted as the real ones",
        estimated(&default, &default_plan),
        estimated(&edge, &edge_plan)
    );
    println!(
        "{:<42} {:>12} {:>12}",
        "budget's expected idle total",
        default_plan.expected_mib(),
        edge_plan.expected_mib()
    );
    println!(
        "{:<42} {:>12.1} {:>12.1}",
        "analytics-stackd VmRSS idle after 300 status (MiB)",
        default_rss as f64 / 1024.0,
        edge_rss as f64 / 1024.0
    );
}
