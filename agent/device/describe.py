"""What `neo-agent detect` reports: the detection, and the TVM target the agent would build here."""
from __future__ import annotations

import json
from typing import Any

from agent.device.profile import TargetError
from agent.device.detect import Detection


def describe(detection: Detection, *, check_with_llvm: bool = True) -> dict[str, Any]:
    """Detection.to_dict() plus "target": the JSON TVM is given natively, with no CompilerOptions.

    A profile that cannot build without options (TargetPlatform NVIDIA needs gpu-code) gets
    "target": null and "target_error" saying what is missing. `check_with_llvm` builds the
    tvm.target.Target too, so a CPU name LLVM does not know shows here (it imports TVM).
    """
    report = detection.to_dict()
    report["title"] = detection.profile.title if detection.profile else None
    report["choices"] = detection.choices()
    report["target"] = None
    if detection.profile is not None:
        try:
            report["target"] = detection.profile.tvm_config(None, detection)
            if check_with_llvm:
                detection.profile.tvm_target(None, detection)
        except TargetError as exc:
            report["target"], report["target_error"] = None, str(exc)
    return report


def format_description(report: dict[str, Any]) -> str:
    """The report as aligned lines for a person."""
    rows: list[tuple[str, str]] = []
    if report["profile"]:
        rows.append(("profile", f"{report['profile']}  ({report['title']})"))
    else:
        rows.append(("profile", "none: no device profile matches this device"))
    rows.append(("device", report["sentence"]))
    if report["board"] and report["board"] != report["profile"]:
        rows.append(("board", report["board"]))
    rows.append(("accepts", report["choices"]))
    rows += [("evidence", line) for line in report["evidence"]]
    rows += [("note", line) for line in report["notes"]]
    if report["target"] is not None:
        rows.append(("target", json.dumps(report["target"])))
    elif report.get("target_error"):
        rows.append(("target", report["target_error"]))
    lines, previous = [], None
    for key, value in rows:
        lines.append(f"{key if key != previous else '':<10}{value}")
        previous = key
    return "\n".join(lines)
