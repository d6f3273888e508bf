#!/usr/bin/python3
"""Prints the suite's budget: the wall time of each phase of tests/run-all.sh and of
each test nextest ran (from its JUnit report), slowest first, end-to-end tests named
with the CPU time their containers used; and how busy the machine's cores were while
the tests ran.

usage: timings.py PHASES_FILE JUNIT_XML [CPU_TSV [PROC_STAT_BEFORE PROC_STAT_AFTER]]
PHASES_FILE holds one "SECONDS NAME" line per phase, in order. CPU_TSV holds one
"BINARY TEST CONTAINER SECONDS" line (tab-separated) per container a test booted
(tests/common/mod.rs writes them). The /proc/stat copies bracket the tests' phase.
"""
import os
import sys
import xml.etree.ElementTree as ET


def container_cpu(cpu_tsv):
    """CPU seconds of the containers of each (binary, test)."""
    cpu = {}
    if not cpu_tsv or not os.path.exists(cpu_tsv):
        return cpu
    with open(cpu_tsv) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 4:
                key = (fields[0], fields[1])
                cpu[key] = cpu.get(key, 0.0) + float(fields[3])
    return cpu


def busy_share(before, after):
    """The share of all cores' time spent not idle between two /proc/stat copies."""
    def totals(path):
        with open(path) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle
    (t0, i0), (t1, i1) = totals(before), totals(after)
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def main(phases_file, junit, cpu_tsv=None, stat_before=None, stat_after=None):
    phases = []
    with open(phases_file) as f:
        for line in f:
            seconds, _, name = line.strip().partition(" ")
            phases.append((float(seconds), name))
    total = sum(s for s, _ in phases)
    print("\n== Budget: phases of tests/run-all.sh ==")
    for seconds, name in sorted(phases, reverse=True):
        print(f"{seconds:8.0f} s  {name}")
    print(f"{total:8.0f} s  total ({total / 60:.1f} min)")
    try:
        suites = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"(no test timings: {e})")
        return
    cases = []
    for case in suites.iter("testcase"):
        binary = case.get("classname", "")
        name = case.get("name", "")
        failed = case.find("failure") is not None or case.find("error") is not None
        cases.append((float(case.get("time", 0)), binary, name, failed))
    e2e = [c for c in cases if "e2e_" in c[1]]
    rest = [c for c in cases if "e2e_" not in c[1]]
    cpu = container_cpu(cpu_tsv)
    print(f"\n== Budget: the {len(e2e)} end-to-end tests, slowest first ==")
    print("    wall   containers' CPU")
    for seconds, binary, name, failed in sorted(e2e, reverse=True):
        mark = "  FAILED" if failed else ""
        used = cpu.get((binary.split("::")[-1], name))
        used = f"{used:8.0f} s" if used is not None else "       ? "
        print(f"{seconds:8.1f} s {used}  {binary.split('::')[-1]} {name}{mark}")
    print(f"{sum(c[0] for c in e2e):8.0f} s {sum(cpu.values()):8.0f} s  end-to-end, summed")
    print(f"{sum(c[0] for c in rest):8.0f} s  the other {len(rest)} tests, summed")
    if stat_before and stat_after:
        share = busy_share(stat_before, stat_after)
        if share is not None:
            print(f"the {os.cpu_count()} cores were {share:.0%} busy while the tests ran")
    failed = sum(1 for c in cases if c[3])
    print(f"{len(cases) - failed} passed, {failed} failed")


if __name__ == "__main__":
    main(*sys.argv[1:])
