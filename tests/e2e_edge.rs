//! End-to-end: the edge profile. The whole stack in a container limited to 2 GiB of
//! memory, like a small VM: real PostgreSQL, Redis, NGINX, Prometheus, node_exporter
//! and postgres_exporter from Debian; real Airflow, Superset and dlt from PyPI. The
//! REAL Loki 3.7.0, Promtail 3.5.1 (the log shipper here) and statsd_exporter 0.30.0
//! (shared/fixtures/release-archives/, served from a local mirror in upstream's
//! layout): their idle memory is measured and held to what the budget reserves for
//! them. Grafana is a STAND-IN (tests/standins/): its memory here is not its own, and
//! the budget counts the real program by estimate (src/budget/mod.rs).

mod common;

use common::apps::{json, run_sample_dag, superset_sql};
use common::egress::OwnNetwork;
use common::Container;

const GIB: u64 = 1 << 30;

/// The running stack units (not the daemon), each with its `MemoryMax=` in bytes.
fn unit_limits(c: &Container) -> Vec<(String, u64)> {
    c.ok("systemctl list-units --plain --no-legend 'analytics-*.service' | awk '{print $1}'")
        .lines()
        .filter(|u| *u != "analytics-stackd.service")
        .map(|u| {
            let max = c.ok(&format!("systemctl show -p MemoryMax --value {u}"));
            (u.to_string(), max.trim().parse().unwrap_or(u64::MAX))
        })
        .collect()
}

#[test]
#[ignore = "needs root, systemd-nspawn and PyPI: run through tests/run-all.sh"]
fn the_edge_profile_runs_the_whole_stack_in_two_gib() {
    // On a bridge of its own (so that it runs beside other tests), Debian and PyPI
    // through the host's egress proxy.
    let network = OwnNetwork::new("as-test-br10");
    let mirror = &network.mirror;
    mirror.put_release_archives();
    mirror.put_real_loki_promtail_statsd();
    let uv = analytics_stack::artifact::catalog::pin("uv", "amd64", "").unwrap();
    mirror.put_from(&uv.url);

    let c = network.boot_with_memory("as-e2e-edge", "10.241.0.1", 2 * GIB);
    c.start_daemon();
    // The container's root memory cgroup is the 2 GiB the daemon sizes for.
    assert_eq!(
        c.ok("cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
            .trim(),
        (2 * GIB).to_string()
    );
    c.ok(&format!(
        "mkdir -p /etc/analytics-stack/stack.d && printf '[stack]\\nprofile = \"edge\"\\n[log_shipper]\\nkind = \"promtail\"\\n[archives]\\nmirror = \"{}\"\\n' > /etc/analytics-stack/stack.toml",
        mirror.url
    ));

    // A budget the enabled components cannot fit, and one above the host's memory:
    // refused by plan and by apply with the reason, before anything changes.
    for (budget, reason) in [
        ("700MiB", "700 MiB is too small for the enabled components"),
        ("4GiB", "4096 MiB is more than this host has (2048 MiB)"),
    ] {
        c.ok(&format!(
            "printf '[stack]\\nmemory_budget = \"{budget}\"\\n' > /etc/analytics-stack/stack.d/50-budget.toml"
        ));
        for verb in ["plan", "apply"] {
            let out = c.sh(&format!("analytics-stack {verb}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{verb} {budget}: {stderr}");
            assert!(stderr.contains(reason), "{verb} {budget}: {stderr}");
        }
    }
    let untouched = c.sh(
        "ls /etc/systemd/system/ | grep '^analytics-' | grep -v '^analytics-stackd.service$'; ls /var/lib/analytics-stack/state.json 2>/dev/null; dpkg-query -W postgresql-15 2>/dev/null",
    );
    assert!(
        untouched.stdout.is_empty(),
        "a refused budget changed the host: {}",
        String::from_utf8_lossy(&untouched.stdout)
    );
    c.ok("rm /etc/analytics-stack/stack.d/50-budget.toml");

    // The plan shows the budget's table and what it chose.
    let plan = c.ok("analytics-stack plan");
    eprintln!("{}", plan.split("\n\n").next().unwrap_or(""));
    assert!(
        plan.contains("memory budget 1536 MiB (host: 2048 MiB"),
        "{plan}"
    );
    assert!(plan.contains("airflow.triggerer off"), "{plan}");
    let memory: serde_json::Value = json(&c.ok("analytics-stack plan --json"))["memory"].clone();
    assert!(
        memory["units"].as_array().is_some_and(|u| u.len() >= 15),
        "{memory}"
    );

    let started = std::time::Instant::now();
    c.ok("analytics-stack apply");
    eprintln!(
        "[figure] cold apply of the edge stack in 2 GiB: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status = json(&c.ok("analytics-stack status --json"));
    let components = status["components"].as_array().unwrap();
    // Fourteen components (pgBackRest among them, with no process of its own: the
    // budget has nothing to count) and the backup timer.
    assert_eq!(components.len(), 15, "{status}");
    assert!(components.iter().all(|c| c["healthy"] == true), "{status}");
    // The processes the budget turned off do not run; every other unit has the limit
    // the plan gave it, in its file and in its cgroup.
    let limits = unit_limits(&c);
    let names: Vec<&str> = limits.iter().map(|(u, _)| u.as_str()).collect();
    assert!(
        !names.contains(&"analytics-airflow-triggerer.service"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"analytics-superset-worker.service"),
        "{names:?}"
    );
    for (unit, max) in &limits {
        if unit.ends_with("-init.service") {
            continue;
        }
        let planned = memory["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == unit.as_str())
            .unwrap_or_else(|| panic!("{unit} is not in the budget: {memory}"));
        assert_eq!(
            *max,
            planned["max_mib"].as_u64().unwrap() << 20,
            "{unit}'s MemoryMax"
        );
        let cgroup = c.ok(&format!(
            "cat /sys/fs/cgroup/memory/system.slice/{unit}/memory.limit_in_bytes"
        ));
        assert_eq!(cgroup.trim(), max.to_string(), "{unit}'s cgroup limit");
    }
    // An unchanged second apply changes nothing.
    let again = c.ok("analytics-stack apply");
    assert!(again.contains("nothing to do"), "{again}");

    // Working: the sample DAG loads the warehouse, SQL Lab answers from it.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_sample_dag(&c)))
        .unwrap_or_else(|_| {
            panic!(
                "the sample DAG did not run; OOM kills in the container's cgroup: {}\n{}",
                c.oom_kills(),
                c.ok("cat /sys/fs/cgroup/memory/memory.failcnt /sys/fs/cgroup/memory/memory.max_usage_in_bytes; grep -E '^total_(rss|cache|shmem|mapped_file) ' /sys/fs/cgroup/memory/memory.stat; journalctl --no-pager -o short | grep -E 'KILL|killed|Failed' | tail; for u in /sys/fs/cgroup/memory/system.slice/analytics-*; do echo \"${u##*/} $(cat $u/memory.failcnt) $(( $(cat $u/memory.max_usage_in_bytes) >> 20 ))\"; done")
            )
        });
    eprintln!(
        "[figure] sample DAG run under the edge budget: {:.1} s",
        run.took.as_secs_f64()
    );
    let query = superset_sql(&c, "SELECT count(*) AS n FROM sample_data.readings");
    assert_eq!(
        query["data"][0]["n"].as_u64(),
        Some(analytics_stack::components::dlt::SAMPLE_ROWS as u64),
        "{query}"
    );
    // No OOM kill: none in the container's own cgroup, no unit's process killed (the
    // kernel's kills inside a unit's cgroup are counted in that cgroup, which systemd
    // removes with the process: its SIGKILL is what remains, in the journal), and no
    // unit restarted.
    eprintln!(
        "[figure] each unit's peak memory during the run (cgroup, page cache included; MiB):\n{}",
        c.ok("for u in /sys/fs/cgroup/memory/system.slice/analytics-*; do echo \"${u##*/} $(( $(cat $u/memory.max_usage_in_bytes) >> 20 ))\"; done")
    );
    assert_eq!(c.oom_kills(), 0, "the kernel killed a process for memory");
    let killed = c.ok("journalctl --no-pager -o cat | grep -c 'status=9/KILL' || true");
    assert_eq!(
        killed.trim(),
        "0",
        "{}",
        c.ok("journalctl --no-pager -o cat | grep -B3 'status=9/KILL'")
    );
    let status = json(&c.ok("analytics-stack status --json"));
    for unit in status["components"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["units"].as_array().unwrap())
    {
        assert_eq!(unit["restarts"], 0, "{unit}");
    }
    // The kernel's messages do not reach the container's journal: each unit's own
    // memory cgroup counts the kills made under its limit (`oom_kill`, cgroup v1's
    // memory.oom_control or v2's memory.events), read for every unit still there.
    let per_unit = c.ok(
        "for u in /sys/fs/cgroup/memory/system.slice/analytics-*.service /sys/fs/cgroup/system.slice/analytics-*.service; do \
           [ -d \"$u\" ] || continue; \
           n=$(cat \"$u/memory.oom_control\" \"$u/memory.events\" 2>/dev/null | awk '$1 == \"oom_kill\" {print $2; exit}'); \
           echo \"${u##*/} ${n:-none}\"; \
         done",
    );
    let counts: Vec<(&str, &str)> = per_unit.lines().filter_map(|l| l.split_once(' ')).collect();
    assert!(
        counts.len() >= 10,
        "the units' memory cgroups were not found: {per_unit}"
    );
    for (unit, kills) in counts {
        assert_eq!(kills, "0", "OOM kills under {unit}'s limit: {per_unit}");
    }
    // The three real release programs, idle after the run: their memory (PSS of the
    // unit's processes) within what the budget expects of them at idle plus what it
    // reserves for their work — a budget that guessed low fails here.
    let mut measured = Vec::new();
    for unit in [
        "analytics-loki.service",
        "analytics-promtail.service",
        "analytics-statsd-exporter.service",
    ] {
        let pss_kib: u64 = c
            .ok(&format!(
                "for p in $(cat /sys/fs/cgroup/memory/system.slice/{unit}/cgroup.procs); do awk '/^Pss:/ {{print $2}}' /proc/$p/smaps_rollup; done | awk '{{s += $1}} END {{print s + 0}}'"
            ))
            .trim()
            .parse()
            .unwrap();
        let planned = memory["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == unit)
            .unwrap_or_else(|| panic!("{unit} is not in the budget: {memory}"));
        let expected = planned["expected_mib"].as_u64().unwrap();
        let reserved = expected + planned["working_mib"].as_u64().unwrap();
        let pss_mib = pss_kib.div_ceil(1024);
        assert!(pss_kib > 0, "{unit} runs no process");
        assert!(
            pss_mib <= reserved,
            "{unit}: {pss_mib} MiB at idle, the budget reserves {reserved} MiB"
        );
        measured.push(format!(
            "{unit} {pss_mib} MiB (budget: {expected} expected, {reserved} reserved)"
        ));
    }
    eprintln!(
        "[figure] the real release programs' idle PSS under the edge budget: {}",
        measured.join("; ")
    );
    let started = std::time::Instant::now();
    c.ok("for i in $(seq 100); do analytics-stack status >/dev/null; done");
    eprintln!(
        "[figure] a status call (every probe) under the edge budget: {:.0} ms",
        started.elapsed().as_secs_f64() * 10.0
    );
    eprintln!(
        "[figure] analytics-stackd after a cold apply, a no-op apply and 102 status calls: {}",
        c.ok("grep VmRSS /proc/$(systemctl show -p MainPID --value analytics-stackd)/status")
            .trim()
    );
    let stat = c.ok("grep -E '^total_(rss|shmem) ' /sys/fs/cgroup/memory/memory.stat");
    let field = |name: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
            >> 20
    };
    eprintln!(
        "[figure] the container after the run: {} MiB anonymous memory, {} MiB tmpfs, of 2048",
        field("total_rss "),
        field("total_shmem ")
    );
    // It halts promptly: the log shipper stops before NGINX and Loki and sends what
    // it holds. (31 s when Loki's namespace had no loopback: every push failed and
    // Promtail retried until systemd killed it.)
    let mut c = c;
    let took = c.halt_seconds();
    eprintln!("[figure] the edge container halted in {took:.1} s");
    assert!(took < 20.0, "the container took {took:.1} s to halt");
}
