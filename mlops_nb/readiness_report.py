"""The readiness report as plain text and as an HTML page (templates/readiness.html.tmpl), from a `Report`."""

from __future__ import annotations

import html
from itertools import groupby
from pathlib import Path
from string import Template

from mlops_nb.readiness import FAIL, NA, PASS, UNCHECKED, Report

__all__ = ["to_text", "to_html", "COLOURS"]

TEMPLATE = Path(__file__).resolve().parent / "templates" / "readiness.html.tmpl"
COLOURS = {PASS: "#067647", FAIL: "#b42318", NA: "#667085", UNCHECKED: "#b54708"}


def _summary(report: Report) -> tuple[str, str]:
    """The verdict and its headline in words."""
    failed = report.failed_required
    if failed:
        return "NOT READY", (f"Required item{'s' * (len(failed) > 1)} {', '.join(str(i.number) for i in failed)} "
                             f"failed: fix {'them' if len(failed) > 1 else 'it'} before this model serves production "
                             "traffic.")
    unchecked = [str(i.number) for i in report.items if i.status == UNCHECKED]
    return "READY", "Every required item passes or is not applicable" + (
        f"; items {', '.join(unchecked)} were not checked (their evidence is missing)." if unchecked else ".")


def _counts(report: Report) -> str:
    return ", ".join(f"{n} {status}" for status, n in report.counts().items())


def to_text(report: Report) -> str:
    verdict, headline = _summary(report)
    lines = [f"Production readiness of {report.model_name} champion v{report.champion or '-'} ({report.created}): "
             f"{_counts(report)}", f"{verdict}: {headline}"]
    for group, items in groupby(report.items, key=lambda i: i.group):
        lines.append(f"\n{group}")
        for item in items:
            lines.append(f"  {item.status.upper():<15}{item.number:>2}. {item.title}" +
                         (" [required]" if item.required else ""))
            lines += [f"{'':21}{line}" for line in item.evidence]
            if item.fix:
                lines.append(f"{'':21}fix: {item.fix}")
    return "\n".join(lines)


def _commands(text: str) -> str:
    """`text` escaped, each `command` in backticks as <code> (a fix naming no command in backticks: all of it)."""
    parts = html.escape(text).split("`")
    if len(parts) == 1:
        return f"<code>{parts[0]}</code>"
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def _row(item) -> str:
    evidence = "".join(f"<li>{html.escape(line)}</li>" for line in item.evidence)
    fix = f"<p>Fix: {_commands(item.fix)}</p>" if item.fix else ""
    required = '<div class="required">required</div>' if item.required else ""
    return (f'<tr class="item" data-status="{item.status}"><td class="n">{item.number}</td><td class="title">'
            f'{html.escape(item.title)}{required}</td><td><span class="badge" style="background:'
            f'{COLOURS[item.status]}">{item.status.upper()}</span></td><td><ul>{evidence}</ul>{fix}</td></tr>')


def to_html(report: Report) -> str:
    verdict, headline = _summary(report)
    groups = "".join(f"<h2>{html.escape(group)}</h2><table>{''.join(map(_row, items))}</table>"
                     for group, items in groupby(report.items, key=lambda i: i.group))
    counts = "".join(f'<span style="color:{COLOURS[s]}"><b>{n}</b> {s}</span>' for s, n in report.counts().items())
    return Template(TEMPLATE.read_text()).substitute(
        model=html.escape(report.model_name), champion=html.escape(f"v{report.champion}" if report.champion else
                                                                   "none"),
        created=report.created, verdict=verdict, headline=html.escape(headline), counts=counts, groups=groups,
        banner_colour=COLOURS[FAIL if report.failed_required else PASS])
