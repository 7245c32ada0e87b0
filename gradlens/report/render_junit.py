"""JUnit XML: one test case per rule, failing when it found something at the fail level."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gradlens.report.build import Report
from gradlens.report.findings import severity_rank
from gradlens.report.sampling import sampling_note

__all__ = ["junit_suite", "render_junit"]


def junit_suite(report: Report) -> ET.Element:
    level = severity_rank(report.fail_on)
    name = report.run["name"]
    suite = ET.Element("testsuite", name=f"gradlens.{name}", tests=str(len(report.rules)))
    note = sampling_note(report.sampling)
    if note:  # the metrics read every few steps, which the rules' evidence is about
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="sampled", value=note)
    failures = skipped = 0
    for result in report.rules:
        case = ET.SubElement(suite, "testcase", classname=f"gradlens.{name}", name=result.rule)
        failing = [f for f in result.findings if severity_rank(f.severity) >= level]
        if result.status == "skipped":
            skipped += 1
            ET.SubElement(case, "skipped", message="the tables this rule needs are absent")
        elif failing:
            failures += 1
            worst = max(failing, key=lambda f: severity_rank(f.severity))
            failure = ET.SubElement(
                case,
                "failure",
                type=worst.severity,
                message=f"{worst.message} (steps {worst.steps})",
            )
            failure.text = "\n".join(
                f"[{f.severity}] steps {f.steps}: {f.message}: {f.evidence}" for f in failing
            )
        if result.findings and not failing:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(
                f"[{f.severity}] {f.message}: {f.evidence}" for f in result.findings
            )
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")
    return suite


def render_junit(report: Report) -> str:
    root = ET.Element("testsuites", name="gradlens")
    root.append(junit_suite(report))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
