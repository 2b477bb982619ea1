"""Text forms of a round: the report (table, csv, json, nagios) and the event lines. Pure functions: no I/O."""
from __future__ import annotations

import csv
import io
import json
import math

from .monitor import RECORD_FIELDS, Event, Round, exit_status
from .state import STATES

FORMATS = ("table", "json", "csv", "nagios")
NAGIOS_WORDS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def counts(round_: Round) -> dict[str, int]:
    """Cameras per state, every state present (0 when none)."""
    out = {s.lower(): 0 for s in STATES}
    for check in round_.checks:
        out[check.state.lower()] += 1
    return out


def summary(round_: Round) -> str:
    """``3 cameras at 2024-05-01T12:00:03Z: 2 clear, 1 unreachable``."""
    n = len(round_.checks)
    parts = [f"{v} {k}" for k, v in counts(round_).items() if v] or ["none checked"]
    return f"{n} camera{'' if n == 1 else 's'} at {round_.started_at}: {', '.join(parts)}"


def render(round_: Round, fmt: str, stream: bool = False) -> str:
    """The report of one round in ``fmt`` (one of FORMATS), ending with a newline.

    ``stream``: the report is one of many on the same stream (``--watch`` to stdout): json is then written on one
    line (JSON Lines: one object per round), and a table ends with an empty line that separates it from the next.
    """
    if fmt == "json":
        return _json(round_, indent=None if stream else 2)
    text = {"table": _table, "csv": _csv, "nagios": _nagios}[fmt](round_)
    return text + "\n" if stream and fmt == "table" else text


def _clean(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _table(round_: Round) -> str:
    rows = [("CAMERA", "STATE", "BLUR", "FOCUS", "BASELINE", "CHANGE", "REASON")]
    for check in round_.checks:
        r = check.record()
        rows.append((
            r["camera"], r["state"],
            "-" if r["blur_probability"] is None else f"{100 * r['blur_probability']:.1f}%",
            "-" if r["focus"] is None else f"{r['focus']:.3g}",
            "-" if r["baseline"] is None else f"{r['baseline']:.3g}",
            "-" if r["change"] is None else f"{round(100 * r['change']) or 0:+d}%",  # never "-0%"
            r["reason"] or "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:6], widths[2:6])]
        lines.append("  ".join(cells + [row[6]]).rstrip())
    lines.append(summary(round_))
    return "\n".join(lines) + "\n"


def _json(round_: Round, indent: int | None = 2) -> str:
    status = exit_status(round_.checks)
    return json.dumps({
        "time": round_.started_at,
        "status": NAGIOS_WORDS[status],
        "exit_status": status,
        "counts": counts(round_),
        "cameras": [_clean(c.record()) for c in round_.checks],
    }, indent=indent) + "\n"


def _csv(round_: Round) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for check in round_.checks:
        writer.writerow({k: ("" if v is None else v) for k, v in _clean(check.record()).items()})
    return buf.getvalue()


def _nagios(round_: Round) -> str:
    """One status line with performance data, as Nagios, Icinga and compatible agents expect."""
    status = exit_status(round_.checks)
    problems = []
    for state in ("UNREACHABLE", "BLURRY", "DEGRADED", "INVALID"):
        bad = [c for c in round_.checks if c.state == state]
        if bad:
            names = ", ".join(f"{c.camera.name} ({c.reason})" if state != "BLURRY" else c.camera.name for c in bad)
            problems.append(f"{len(bad)} {state.lower()}: {names}")
    c = counts(round_)
    text = "; ".join(problems) if problems else f"all {len(round_.checks)} cameras clear"
    perf = " ".join(f"{k}={v}" for k, v in (("cameras", len(round_.checks)), *c.items()))
    return f"CAMERAS {NAGIOS_WORDS[status]} - {text} | {perf}\n"


def event_line(event: Event) -> str:
    """``2024-05-01T12:00:03Z gate: CLEAR -> DEGRADED: focus 0.41 is 69% below the baseline 1.33 (limit 50%)``."""
    before = event.previous or "(new)"
    tail = f": {event.reason}" if event.reason else ""
    return f"{event.time} {event.camera}: {before} -> {event.state}{tail}"


def event_json(event: Event) -> str:
    """One JSON line for the --events file."""
    return json.dumps(_clean(event.to_dict()), ensure_ascii=False)


__all__ = ["FORMATS", "counts", "event_json", "event_line", "render", "summary"]
