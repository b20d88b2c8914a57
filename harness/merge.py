"""`throughline report merge DIR...`: one release report and one JUnit from many shards or runs.

Each input is a run folder (what `--reports` writes: results.json, junit.xml, report.html) or a
folder holding several. Everything is checked before anything is written: one target, one
commit, every test run once, a JUnit beside every results file. Then OUT gets report.html
(harness/report.py `results_html`: the same release summary as a single run's), junit.xml (every
input's test cases, each with the shard that ran it) and results.json. Runs measured with
--platform-coverage have their coverage data combined again into OUT/coverage/.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness import platform_coverage, report
from harness.results import RESULTS_FILE, ResultsError, RunResults, find_results, merge
from harness.target import TargetError, load_target

JUNIT_FILE = "junit.xml"


@dataclass
class Merged:
    results: RunResults
    report: Path
    junit: Path
    results_file: Path


def _junit_cases(path: Path, shard: str | None) -> list[ET.Element]:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing (every results.json needs its junit.xml beside it)") from None
    except ET.ParseError as exc:
        raise ResultsError(f"{path}: not a JUnit XML file ({exc})") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    cases = [case for suite in suites for case in suite.findall("testcase")]
    for case in cases:
        props = case.find("properties")
        if props is None:
            props = ET.Element("properties")
            case.insert(0, props)
        if shard:
            ET.SubElement(props, "property", name="shard", value=shard)
        ET.SubElement(props, "property", name="source", value=str(path.parent))
    return cases


def merged_junit(cases: list[ET.Element], name: str) -> ET.ElementTree:
    """One <testsuite> holding every case, its counts recomputed from the cases."""
    suite = ET.Element("testsuite", name=name)
    for case in cases:
        suite.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    seconds = sum(float(c.get("time") or 0) for c in cases)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    suite.set("time", f"{seconds:.3f}")
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.ElementTree(root)


def merge_runs(inputs: list[Path], out: Path) -> Merged:
    """Check every input, then write OUT/report.html, junit.xml and results.json (ResultsError first)."""
    files = find_results(inputs)
    runs = [(path, RunResults.load(path)) for path in files]
    if out.resolve() in {p.parent.resolve() for p in files}:
        raise ResultsError(f"{out}: the output folder is one of the inputs")
    results = merge(runs)
    cases = [case for path, run in runs for case in _junit_cases(path.parent / JUNIT_FILE, run.shard)]
    try:
        target = load_target(results.target)
    except TargetError:
        target = None  # merged elsewhere than the checkout that ran it: the summary still stands
    measured = [path.parent / "coverage" for path, run in runs if run.platform_coverage]
    if measured:
        # Each shard's per-service data, combined again: the figures of the whole suite, not an average.
        results.platform_coverage = platform_coverage.merge_dirs(
            [d for d in measured if d.is_dir()], out / "coverage"
        )
    document = report.results_html(results, target)
    tree = merged_junit(cases, f"throughline {results.target}")
    out.mkdir(parents=True, exist_ok=True)
    paths = Merged(results, out / "report.html", out / JUNIT_FILE, out / RESULTS_FILE)
    tmp_report, tmp_junit = out / ".report.html.tmp", out / ".junit.xml.tmp"
    tmp_report.write_text(document)  # every text in it went through report.esc (redacted)
    tree.write(tmp_junit, encoding="utf-8", xml_declaration=True)
    results.write(paths.results_file)
    tmp_report.replace(paths.report)
    tmp_junit.replace(paths.junit)
    return paths
