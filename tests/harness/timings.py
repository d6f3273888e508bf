#!/usr/bin/python3
"""Prints the suite's budget: the wall time of each phase of tests/run-all.sh and of
each test nextest ran (from its JUnit report), slowest first, end-to-end tests named.

usage: timings.py PHASES_FILE JUNIT_XML
PHASES_FILE holds one "SECONDS NAME" line per phase, in order.
"""
import sys
import xml.etree.ElementTree as ET


def main(phases_file, junit):
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
    print(f"\n== Budget: the {len(e2e)} end-to-end tests, slowest first ==")
    for seconds, binary, name, failed in sorted(e2e, reverse=True):
        mark = "  FAILED" if failed else ""
        print(f"{seconds:8.1f} s  {binary.split('::')[-1]} {name}{mark}")
    print(f"{sum(c[0] for c in e2e):8.0f} s  end-to-end, summed")
    print(f"{sum(c[0] for c in rest):8.0f} s  the other {len(rest)} tests, summed")
    failed = sum(1 for c in cases if c[3])
    print(f"{len(cases) - failed} passed, {failed} failed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
