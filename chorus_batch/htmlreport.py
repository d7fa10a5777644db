"""A self-contained HTML data-quality report of one manifest version.

    from chorus_batch.htmlreport import write_report
    info = write_report("site_manifest.sqlite", "report.html")        # the latest version
    info.sections, info.images

One file, no external CSS, scripts, fonts or images: the plots are matplotlib PNGs (Agg, no
pyplot state) embedded as `data:` URIs, and a Content-Security-Policy forbids loading anything
else. Every value is HTML-escaped. Long tables are cut after `MAX_ROWS` rows with the command
that lists them all. The page holds person identifiers, so it is written owner-only.

Speed: the version's file set is read once (the reader's other per-version views reuse it), and
plots are drawn from aggregates (histogram counts, quartiles), never from one point per file.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from . import __version__
from .errors import UsageError
from .frames import SEVERITY_ORDER
from .review import (CHANGE_KINDS, OUTLIER_IQR, OUTLIER_MIN_DECADES, OUTLIER_MIN_FILES, PLAUSIBLE_FROM, ManifestReader,
                     open_manifest, size_flags)
from .store import create_private, iso

# Stable element ids of the sections, in page order.
SECTION_IDS = (
    "summary", "changes-by-version", "persons", "sessions", "sizes",
    "duplicates", "scan-errors", "findings", "deleted",
)
MAX_ROWS = 50  # rows shown of a long table
EXAMPLES = 3  # example paths per group
DELETED_SHARE_FLAG = 0.05  # removed + replaced over the previous version's files
PLOT_VERSIONS = 60  # versions drawn in the change plot (the latest ones)

_KIND_COLORS = {"added": "#2f9e44", "removed": "#e03131", "replaced": "#f08c00", "renamed": "#1c7ed6"}
_DPI = 100


@dataclass(frozen=True)
class ReportInfo:
    path: Path  # the HTML file written
    version: str  # the version label reported
    sections: tuple[str, ...]  # element ids of the sections, in page order
    images: int  # embedded PNG plots
    flags: tuple[str, ...] = field(default=())  # the "needs a look" lines of the summary
    elapsed_s: float = 0.0


def write_report(manifest: str | Path | ManifestReader, out: str | Path, *, version: str | None = None) -> ReportInfo:
    """Write the report of `version` (label or ISO time; default: the latest) to `out`, atomically and
    readable by its owner only. `manifest` is a SQLite manifest, a Parquet snapshot folder or an open reader."""
    started = time.perf_counter()
    out = Path(out)
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"cannot write the report to {out}: " + ("it is a folder" if out.is_dir() else "no such folder"),
                         where=str(out), fix="pass a file path in an existing folder, e.g. --out report.html")
    reader = manifest if isinstance(manifest, ManifestReader) else open_manifest(manifest)
    page = _Report(reader, reader.resolve(version))
    text = page.render()
    _write_private(out, text.encode("utf-8"))
    return ReportInfo(path=out, version=page.label, sections=SECTION_IDS, images=page.images,
                      flags=tuple(page.flags), elapsed_s=round(time.perf_counter() - started, 3))


def _write_private(out: Path, data: bytes) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = create_private(tmp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ----------------------------------------------------------------------------- formatting helpers


class _Html(str):
    """Markup already escaped."""


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.1f}"
    return f"{int(n):,}"


def _bytes(n: float | None) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{round(n):,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def _n(count: int, noun: str, plural: str | None = None) -> str:
    """'1 file', '2 files'."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _tick_labels(labels: Sequence[str], one_line: bool) -> list[str]:
    """Version labels (UTC stamps YYYYMMDDhhmmss) as dates, with the time only as precise as
    needed to tell them apart; other labels as they are (shortened)."""
    if not all(len(v) == 14 and v.isdigit() for v in labels):
        return [v if len(v) <= 16 else v[:15] + "…" for v in labels]
    sep = " " if one_line else "\n"
    for cut in (8, 12, 14):
        if len({v[:cut] for v in labels}) == len(labels):
            break
    out = []
    for v in labels:
        text = f"{v[:4]}-{v[4:6]}-{v[6:8]}"
        if cut > 8:
            text += f"{sep}{v[8:10]}:{v[10:12]}" + (f":{v[12:14]}" if cut > 12 else "")
        out.append(text)
    return out


def _cell(value: object) -> str:
    if isinstance(value, _Html):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _num(value)
    return _esc(value)


def _paths(paths: Sequence[str], total: int | None = None) -> _Html:
    shown = "<br>".join(_esc(p) for p in paths)
    left = (total if total is not None else len(paths)) - len(paths)
    return _Html(shown + (f'<br><span class="more">… and {left:,} more</span>' if left > 0 else ""))


def _examples(paths: Sequence[str | None], messages: Sequence[str | None], total: int) -> _Html:
    """'path: message' lines (the path in monospace, broken anywhere; the message wrapped at words)."""
    lines = [f'<div class="ex"><span class="p">{_esc(p)}</span>: {_esc(m)}</div>' for p, m in zip(paths, messages)]
    if total > len(lines):
        lines.append(f'<div class="more">… and {total - len(lines):,} more</div>')
    return _Html("".join(lines))


def _table(columns: Sequence[tuple[str, str, int]], rows: Iterable[Sequence[object]], *, total: int | None = None,
           command: str | None = None, empty: str = "None.") -> str:
    """columns: (header, css class: ''/num/path, width in %). Shows at most MAX_ROWS rows."""
    rows = list(rows)
    if not rows:
        return f'<p class="none">{_esc(empty)}</p>'
    shown = rows[:MAX_ROWS]
    total = len(rows) if total is None else total
    cols = "".join(f'<col style="width:{w}%">' for _h, _c, w in columns)
    head = "".join(f'<th class="{c}">{_esc(h)}</th>' for h, c, _w in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{c}">{_cell(v)}</td>' for (_h, c, _w), v in zip(columns, row)) + "</tr>"
        for row in shown)
    more = ""
    if total > len(shown):
        more = f'<p class="more">Showing {len(shown):,} of {total:,} rows.'
        if command:
            more += f" All of them: <code>{_esc(command)}</code>"
        more += "</p>"
    return f"<table><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _kv(pairs: Sequence[tuple[str, object]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_cell(v)}</dd>" for k, v in pairs) + "</dl>"


def _note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{_esc(text)}</p>'


# ----------------------------------------------------------------------------- plots


def _figure(width_px: int, height_px: int):
    # Agg through savefig: no pyplot, so no global backend or figure state is touched
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    return fig


def _style(ax) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, written out: 1,000,000 rather than 1e6
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e9ee", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _hist(ax, values: np.ndarray, *, log: bool = False, integer: bool = False, color: str = "#4263eb") -> None:
    """Histogram from counts (np.histogram), drawn as bars."""
    values = values[np.isfinite(values)]
    if log:
        values = values[values > 0]
    if values.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = float(values.min()), float(values.max())
    if log and hi / lo > 20:
        edges = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 41)
        ax.set_xscale("log")
    elif integer and hi - lo <= 60:
        edges = np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.5)
    elif hi == lo:
        edges = np.array([lo - 0.5, hi + 0.5]) if not log else np.array([lo / 1.2, hi * 1.2])
    else:
        edges = np.linspace(lo, hi, 41)
    counts, edges = np.histogram(values, bins=edges)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=color, alpha=0.85, edgecolor="white",
           linewidth=0.6)
    ax.set_ylabel("count", fontsize=9)
    _style(ax)


def _bytes_tick(value: float, _pos=None) -> str:
    if value <= 0:
        return "0"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return ""


def _bytes_axis(ax, lo: float, hi: float, axis: str = "x") -> None:
    """Byte-unit tick labels; on a log axis, ticks at powers of 2 (1 KiB, 32 KiB, 1 MiB, ...)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(_bytes_tick))
    scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
    if scale != "log" or lo <= 0:
        return
    a, b = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = next((s for s in (1, 2, 5, 10) if (b - a) / s <= 9), 10)
    ticks = [2.0 ** e for e in range((a // step) * step, b + step, step)]
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo / 1.3, hi * 1.3)


_MODALITY_COLORS = {"Waveforms": "#1098ad", "Images": "#7048e8", "OMOP": "#f59f00", "Metadata": "#868e96", "Other": "#e64980"}


def _modality_color(name: str, i: int) -> str:
    return _MODALITY_COLORS.get(name, f"C{i % 10}")


_DURATION_TICKS = [(1, "1 s"), (10, "10 s"), (60, "1 min"), (600, "10 min"), (3600, "1 h"), (6 * 3600, "6 h"),
                   (86400, "1 d"), (7 * 86400, "1 wk")]


class _Report:
    def __init__(self, reader: ManifestReader, label: str):
        self.reader = reader  # it keeps the version's file set after the first read
        self.label = label
        self.images = 0
        self.flags: list[str] = []
        versions = reader.versions()
        self.versions = versions.filter(pl.col("label") <= label)
        labels = self.versions["label"].to_list()
        self.previous = labels[-2] if len(labels) > 1 else None
        self.row = self.versions.row(len(labels) - 1, named=True)
        self.db = str(Path(reader.path).absolute())  # also in the commands the page suggests
        # Queries run one after the other: concurrent ADBC connections can meet SQLITE_BUSY while
        # one of them recovers the WAL index, and the gain on two cores was small.
        self.files = self.reader.files(label)

    # -- helpers
    def img(self, fig, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
        width, height = (round(float(v)) for v in fig.get_size_inches() * _DPI)
        self.images += 1
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{_esc(alt)}">'

    def cli(self, *args: str) -> str:
        return shlex.join(["chorus-batch", *args])

    def py(self, expression: str, out_csv: str) -> str:
        code = (f"from chorus_batch.review import open_manifest; "
                f"m = open_manifest({json.dumps(self.db)}); {expression}.write_csv({json.dumps(out_csv)})")
        return shlex.join(["python", "-c", code])

    def flag(self, text: str) -> str:
        self.flags.append(text)
        return _note(text, "flag")

    # -- the page
    def render(self) -> str:
        sections = [
            self.changes_by_version(), self.persons(), self.sessions(), self.sizes(),
            self.duplicates(), self.scan_errors(), self.findings(), self.deleted(),
        ]
        body = self.summary() + "".join(sections)
        title = f"chorus-batch report — {self.row.get('site') or self.db} — version {self.label}"
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>{body}"
            f"<footer>Written by chorus-batch {_esc(__version__)} at {_esc(iso(datetime.now(UTC)))}. "
            "This page lists person identifiers: keep it where the manifest is kept.</footer></main></body></html>\n"
        )

    def section(self, sid: str, title: str, content: str) -> str:
        return f'<section id="{sid}"><h2>{_esc(title)}</h2>{content}</section>'

    # 1
    def summary(self) -> str:
        files, row = self.files, self.row
        persons = files["person_id"].drop_nulls().n_unique()
        total_bytes = int(files["size"].sum() or 0)
        labels = self.versions["label"].to_list()
        pairs: list[tuple[str, object]] = [
            ("site", row.get("site") or "unknown"),
            ("manifest", self.db),
            ("version", _Html(f"<b>{_esc(self.label)}</b> ({len(labels)} of {self.reader.versions().height} versions)")),
            ("committed", row.get("finished_at") or "unknown"),
            ("mode", row.get("mode") or "unknown"),
            ("previous version", self.previous or "none (first version)"),
            ("files", files.height),
            ("bytes", _Html(f"{_esc(_bytes(total_bytes))} ({total_bytes:,})")),
            ("persons", persons),
        ]
        by_modality = (files.group_by(pl.col("modality").fill_null("Other")).agg(
            files=pl.len(), bytes=pl.col("size").sum(), persons=pl.col("person_id").drop_nulls().n_unique())
            .sort("modality"))
        table = _table([("modality", "", 34), ("files", "num", 22), ("bytes", "num", 22), ("persons", "num", 22)],
                       [(m, n, _bytes(b), p) for m, n, b, p in by_modality.iter_rows()], empty="No files in this version.")
        toc = "".join(f'<li><a href="#{sid}">{_esc(_TITLES[sid])}</a></li>' for sid in SECTION_IDS[1:])
        flags = ("<h3>Needs a look</h3><ul class=\"flags\">" + "".join(f"<li>{_esc(f)}</li>" for f in self.flags) + "</ul>"
                 if self.flags else '<p class="ok">Nothing flagged.</p>')
        head = (f"<h1>Data-quality report: {_esc(row.get('site') or Path(self.db).name)}</h1>"
                f'<div class="cols"><div>{_kv(pairs)}</div><div>{table}</div></div>{flags}'
                f'<nav><ol>{toc}</ol></nav>')
        return f'<header id="summary">{head}</header>'

    # 2
    def changes_by_version(self) -> str:
        counts = self.reader.change_counts().filter(pl.col("version") <= self.label)
        parts = []
        if counts.height == 0:
            return self.section("changes-by-version", _TITLES["changes-by-version"], _note("No changes recorded."))
        kinds = list(CHANGE_KINDS)
        wide = counts.pivot(on="change", index=["version", "modality"], values="n", aggregate_function="sum")
        for k in kinds:
            if k not in wide.columns:
                wide = wide.with_columns(pl.lit(0, pl.Int64).alias(k))
        wide = wide.with_columns([pl.col(k).fill_null(0) for k in kinds]).with_columns(
            total=pl.sum_horizontal(kinds)).sort(["version", "modality"], descending=[True, False])
        # the plot: one bar per version, stacked by change kind; and by modality
        per_version = (counts.group_by("version", "change").agg(pl.col("n").sum())
                       .pivot(on="change", index="version", values="n").sort("version"))
        per_modality = (counts.group_by("version", "modality").agg(pl.col("n").sum())
                        .pivot(on="modality", index="version", values="n").sort("version"))
        all_versions = self.versions.select("label").rename({"label": "version"})
        per_version = all_versions.join(per_version, on="version", how="left").fill_null(0).tail(PLOT_VERSIONS)
        per_modality = all_versions.join(per_modality, on="version", how="left").fill_null(0).tail(PLOT_VERSIONS)
        n = per_version.height
        fig = _figure(1100, 340 if n <= 12 else 400)
        axes = fig.subplots(1, 2)
        x = np.arange(n)
        rotate = n > 6
        ticks = _tick_labels(per_version["version"].to_list(), one_line=rotate)
        step = max(1, math.ceil(n / 14))
        for ax, frame, keys, colors, name in (
            (axes[0], per_version, kinds, [_KIND_COLORS[k] for k in kinds], "by change kind"),
            (axes[1], per_modality, sorted(c for c in per_modality.columns if c != "version"), None, "by modality"),
        ):
            bottom = np.zeros(n)
            for i, key in enumerate(keys):
                vals = frame[key].to_numpy().astype(float) if key in frame.columns else np.zeros(n)
                if not vals.any():
                    continue
                color = colors[i] if colors else _modality_color(key, i)
                ax.bar(x, vals, bottom=bottom, color=color, label=key, width=0.6)
                bottom += vals
            ax.set_ylim(0, max(1.0, float(bottom.max())) * 1.15)
            pad = max(0.0, (4 - n) / 2)
            ax.set_xlim(-0.6 - pad, n - 0.4 + pad)
            if n <= 20:
                for xi, total in zip(x, bottom):
                    ax.text(xi, total, f"{int(total):,}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(x[::step], ticks[::step], fontsize=8, rotation=35 if rotate else 0,
                          ha="right" if rotate else "center", rotation_mode="anchor")
            ax.set_title(f"changes per version, {name}", fontsize=10)
            handles, names = ax.get_legend_handles_labels()
            ax.legend(handles[::-1], names[::-1], fontsize=8, frameon=False,  # in stacking order, beside the bars
                      loc="upper left", bbox_to_anchor=(1.0, 1.0))
            _style(ax)
        parts.append(self.img(fig, "changes per version, stacked by change kind and by modality"))
        if self.versions.height > PLOT_VERSIONS:
            parts.append(_note(f"The plot shows the latest {PLOT_VERSIONS} of {self.versions.height} versions."))
        parts.append(_note("The table lists the latest versions first."))
        parts.append(_table(
            [("version", "", 22), ("modality", "", 18), *((k, "num", 12) for k in kinds), ("total", "num", 12)],
            [(r["version"], r["modality"], *(r[k] for k in kinds), r["total"]) for r in wide.iter_rows(named=True)],
            command=self.cli("versions", "--db", self.db)))
        return self.section("changes-by-version", _TITLES["changes-by-version"], "".join(parts))

    # 3
    def persons(self) -> str:
        fpp = self.reader.files_per_person(self.label)
        no_person = self.files.filter(pl.col("person_id").is_null()).height
        if fpp.height == 0:
            return self.section("persons", _TITLES["persons"], _note("No person folders in this version."))
        files_n, bytes_n = fpp["files"].to_numpy(), fpp["bytes"].to_numpy().astype(float)
        parts = [_kv([
            ("persons", fpp.height),
            ("files per person", f"median {np.median(files_n):,.0f}, min {files_n.min():,}, max {files_n.max():,}"),
            ("bytes per person", f"median {_bytes(np.median(bytes_n))}, min {_bytes(bytes_n.min())}, max {_bytes(bytes_n.max())}"),
            ("files without a person", f"{no_person:,} (OMOP/, Metadata/ and paths outside person folders)"),
        ])]
        fig = _figure(1100, 300)
        axes = fig.subplots(1, 2)
        _hist(axes[0], files_n.astype(float), integer=True)
        axes[0].set_xlabel("files per person", fontsize=9)
        _hist(axes[1], bytes_n, log=True, color="#7048e8")
        _bytes_axis(axes[1], float(bytes_n.min()), float(bytes_n.max()))
        axes[1].set_xlabel("bytes per person", fontsize=9)
        parts.append(self.img(fig, "histograms of files and bytes per person"))
        k = 5
        ranked = fpp.sort(["files", "bytes", "person_id"], descending=[True, True, False])
        cols = [("", "", 10), ("person", "", 18), ("files", "num", 14), ("bytes", "num", 18), ("modalities", "", 40)]
        rows = [("most files", *r) for r in ranked.head(k).iter_rows()]
        if fpp.height > k:
            rows += [("fewest files", *r) for r in ranked.tail(min(k, fpp.height - k)).reverse().iter_rows()]
        parts.append(_table(cols, [(t, p, f, _bytes(b), m) for t, p, f, b, m in rows]))
        parts.append(f'<p class="more">Every person: <code>{_esc(self.py(f"m.files_per_person({json.dumps(self.label)})", "persons.csv"))}</code></p>')
        return self.section("persons", _TITLES["persons"], "".join(parts))

    # 4
    def sessions(self) -> str:
        sessions = self.reader.sessions(self.label)
        if sessions.height == 0:
            return self.section("sessions", _TITLES["sessions"], _note("No waveform sessions in this version."))
        committed = datetime.now(UTC).replace(tzinfo=None)  # starts are naive date-times
        with contextlib.suppress(TypeError, ValueError):
            committed = datetime.fromisoformat(str(self.row.get("finished_at"))).astimezone(UTC).replace(tzinfo=None)
        start = sessions["start"]
        no_start = int(start.is_null().sum())
        implausible = sessions.filter(pl.col("start").is_not_null()
                                      & ((pl.col("start") < PLAUSIBLE_FROM) | (pl.col("start") > committed)))
        good = sessions.filter(pl.col("start").is_not_null() & (pl.col("start") >= PLAUSIBLE_FROM)
                               & (pl.col("start") <= committed))
        durations = sessions["duration_s"].drop_nulls()
        per_person = sessions.group_by("person_id").len("sessions")
        parts = [_kv([
            ("sessions", sessions.height),
            ("persons with sessions", per_person.height),
            ("first start", good["start"].min() if good.height else ""),
            ("last start", good["start"].max() if good.height else ""),
            ("duration", f"median {_duration(durations.median())}, max {_duration(durations.max())}; "
                         f"{sessions.height - durations.len():,} sessions have no duration in their names"
             if durations.len() else "no session has a duration in its names"),
            ("files, bytes", f"{int(sessions['files'].sum()):,} files, {_bytes(sessions['bytes'].sum())}"),
        ])]
        if no_start:
            parts.append(_note(f"{_n(no_start, 'session')} without a parseable start date-time."))
        if implausible.height:
            parts.append(self.flag(f"{_n(implausible.height, 'waveform session')} start before {PLAUSIBLE_FROM:%Y} "
                                   "or after the version was committed (left out of the timeline)."))
        fig = _figure(1100, 280)
        ax = fig.subplots()
        if good.height:
            from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

            first, last = good["start"].min(), good["start"].max()
            span_days = (last - first).days
            every, unit, width = next(e for e in (("1d", "day", 0.8), ("1w", "week", 5.6), ("1mo", "month", 25),
                                                   ("1q", "quarter", 80), ("1y", "year", 330))
                                       if span_days <= {"1d": 92, "1w": 730, "1mo": 3650, "1q": 9000}.get(e[0], math.inf))
            timeline = good.group_by(pl.col("start").dt.truncate(every).alias("bucket")).len("n").sort("bucket")
            buckets = pl.datetime_range(timeline["bucket"].min(), timeline["bucket"].max(), every, eager=True)
            timeline = pl.DataFrame({"bucket": buckets}).cast({"bucket": timeline["bucket"].dtype}).join(
                timeline, on="bucket", how="left").fill_null(0)
            ax.bar(timeline["bucket"].to_list(), timeline["n"].to_numpy(), width=width, color="#1098ad", align="edge")
            locator = AutoDateLocator(maxticks=14)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            ax.set_title(f"waveform sessions per {unit} of their start", fontsize=10)
            ax.set_ylabel("sessions", fontsize=9)
            _style(ax)
        else:
            ax.text(0.5, 0.5, "no session has a plausible start date", ha="center", va="center", transform=ax.transAxes)
        parts.append(self.img(fig, "waveform sessions over time, by their start"))
        fig = _figure(1100, 280)
        axes = fig.subplots(1, 2)
        values = durations.to_numpy().astype(float)
        _hist(axes[0], values, log=True, color="#1098ad")
        positive = values[values > 0]
        if positive.size and positive.max() / positive.min() > 20:
            lo, hi = positive.min(), positive.max()
            ticks = [(v, t) for v, t in _DURATION_TICKS if lo / 1.5 <= v <= hi * 1.5]
            if ticks:
                axes[0].set_xticks([v for v, _ in ticks], [t for _, t in ticks])
                axes[0].minorticks_off()
        axes[0].set_xlabel("session duration (s, from the file names)", fontsize=9)
        _hist(axes[1], per_person["sessions"].to_numpy().astype(float), integer=True, color="#5c940d")
        axes[1].set_xlabel("sessions per person", fontsize=9)
        parts.append(self.img(fig, "histograms of session durations and of sessions per person"))
        if implausible.height:
            parts.append(_table(
                [("person", "", 14), ("session", "path", 46), ("start", "", 24), ("files", "num", 16)],
                [(r["person_id"], r["session_id"], r["start"], r["files"]) for r in implausible.head(MAX_ROWS).iter_rows(named=True)],
                total=implausible.height,
                command=self.py(f"m.sessions({json.dumps(self.label)})", "sessions.csv")))
        return self.section("sessions", _TITLES["sessions"], "".join(parts))

    # 5
    def sizes(self) -> str:
        if self.files.height == 0:
            return self.section("sizes", _TITLES["sizes"], _note("No files in this version."))
        stats, flagged = size_flags(self.files)
        rule = (f"Empty: size 0. Outlier: a non-empty file whose log₁₀(size) lies more than {OUTLIER_IQR:g} interquartile "
                f"ranges (and at least a factor {10 ** OUTLIER_MIN_DECADES:g} in size) beyond the lower or upper quartile "
                f"of its modality; modalities with fewer than {OUTLIER_MIN_FILES} non-empty files are not checked.")
        parts = [_note(rule)]
        fig = _figure(1100, 70 + 48 * stats.height)
        ax = fig.subplots()
        boxes, labels = [], []
        for r in stats.iter_rows(named=True):
            labels.append(f"{r['modality']}\n{_n(r['files'], 'file')}, {r['empty']:,} empty, {_n(r['outliers'], 'outlier')}")
            if not r["nonempty"]:
                boxes.append({"med": np.nan, "q1": np.nan, "q3": np.nan, "whislo": np.nan, "whishi": np.nan, "fliers": []})
                continue
            sub = flagged.filter((pl.col("modality") == r["modality"]) & (pl.col("flag") != "empty"))["size"]
            boxes.append({"med": 10 ** r["median"], "q1": 10 ** r["q1"], "q3": 10 ** r["q3"],
                          "whislo": r["low"] or r["min"], "whishi": r["high"] or r["max"],
                          "fliers": sub.head(500).to_numpy()})
        ax.bxp(boxes, orientation="horizontal", widths=0.5, patch_artist=True,
               boxprops={"facecolor": "#d0ebff", "edgecolor": "#1c7ed6"}, medianprops={"color": "#e8590c"},
               flierprops={"marker": "o", "markersize": 4, "markerfacecolor": "#e03131", "markeredgecolor": "none", "alpha": 0.6})
        ax.set_yticks(np.arange(1, len(labels) + 1), labels, fontsize=8.5)
        ax.set_xscale("log")
        positive = self.files.filter(pl.col("size") > 0)["size"]
        if positive.len():
            _bytes_axis(ax, float(positive.min()), float(positive.max()))
        ax.invert_yaxis()
        ax.set_xlabel("file size (log scale); boxes: quartiles, whiskers: range within the outlier fences, dots: outliers", fontsize=9)
        ax.set_title("size per modality (non-empty files)", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="x", color="#e6e9ee", linewidth=0.8)
        ax.tick_params(labelsize=8.5)
        parts.append(self.img(fig, "file sizes per modality, log scale"))
        parts.append(_table(
            [("modality", "", 16), ("files", "num", 11), ("empty", "num", 10), ("min", "num", 13), ("median", "num", 13),
             ("max", "num", 13), ("outliers", "num", 10), ("checked", "", 14)],
            [(r["modality"], r["files"], r["empty"], _bytes(r["min"]),
              _bytes(10 ** r["median"]) if r["median"] is not None else "", _bytes(r["max"]), r["outliers"],
              "yes" if r["checked"] else f"no (< {OUTLIER_MIN_FILES})") for r in stats.iter_rows(named=True)]))
        empty_n = int((flagged["flag"] == "empty").sum())
        if empty_n:
            self.flags.append(f"{_n(empty_n, 'empty file')} (size 0).")
        if flagged.height - empty_n:
            self.flags.append(f"{_n(flagged.height - empty_n, 'file')} with an outlying size for its modality.")
        parts.append("<h3>Flagged files</h3>")
        parts.append(_table(
            [("flag", "", 9), ("path", "path", 55), ("modality", "", 12), ("size", "num", 12), ("modality median", "num", 12)],
            [(r["flag"], r["srcfile"], r["modality"], _bytes(r["size"]), _bytes(r["modality_median"]))
             for r in flagged.head(MAX_ROWS).iter_rows(named=True)],
            total=flagged.height, empty="No empty or outlying files.",
            command=shlex.join(["python", "-c", ("from chorus_batch.review import open_manifest; "
                                f"from chorus_batch.review import size_flags; m = open_manifest({json.dumps(self.db)}); "
                                f"size_flags(m.files({json.dumps(self.label)}))[1].write_csv('flagged_sizes.csv')")])))
        return self.section("sizes", _TITLES["sizes"], "".join(parts))

    # 6
    def duplicates(self) -> str:
        dups = self.reader.duplicates(self.label)
        if dups.height == 0:
            return self.section("duplicates", _TITLES["duplicates"], _note("No content is stored at more than one path."))
        extra = int(dups["paths"].sum()) - dups.height
        wasted = int((dups["size"] * (dups["paths"] - 1)).sum())
        cross = int((dups["persons"] > 1).sum())
        parts = [_note(f"{_n(dups.height, 'content')} (same MD5) found at more than one path: {_n(extra, 'extra copy', 'extra copies')}, "
                       f"{_bytes(wasted)} redundant. Empty files are not counted here (see the sizes section).")]
        self.flags.append(f"Duplicate contents: {_n(dups.height, 'MD5')} found at more than one path "
                          f"({_n(extra, 'extra copy', 'extra copies')}).")
        if cross:
            parts.append(self.flag(f"{_n(cross, 'duplicated content')} found in the folders of more than one person: "
                                   "a file filed under the wrong person?"))
        parts.append(_table(
            [("MD5", "path", 25), ("paths", "num", 7), ("size", "num", 10), ("persons", "num", 8), ("where", "path", 50)],
            [(r["md5"], r["paths"], _bytes(r["size"]), r["persons"], _paths(r["srcfiles"][:EXAMPLES], r["paths"]))
             for r in dups.head(MAX_ROWS).iter_rows(named=True)],
            total=dups.height,
            command=self.py(f"m.duplicates({json.dumps(self.label)}).explode('srcfiles')", "duplicates.csv")))
        return self.section("duplicates", _TITLES["duplicates"], "".join(parts))

    # 7
    def scan_errors(self) -> str:
        errors = self.reader.scan_errors(self.label)
        if errors.height == 0:
            return self.section("scan-errors", _TITLES["scan-errors"], _note("No scan errors or unparseable paths."))
        self.flags.append(f"{_n(errors.height, 'scan error or unparseable path', 'scan errors or unparseable paths')}.")
        by_kind = (errors.group_by("kind").agg(n=pl.len(), ex=pl.col("srcfile").head(EXAMPLES),
                                                msg=pl.col("message").head(EXAMPLES))
                   .sort(["n", "kind"], descending=[True, False]))
        command = self.py(f"m.scan_errors({json.dumps(self.label)})", "scan_errors.csv")
        parts = ["<h3>By kind</h3>", _table(
            [("kind", "", 16), ("count", "num", 9), ("examples (path: message)", "", 75)],
            [(r["kind"], r["n"], _examples(r["ex"], r["msg"], r["n"]))
             for r in by_kind.iter_rows(named=True)], command=command)]
        unparseable = errors.filter(pl.col("kind") == "unparseable")
        if unparseable.height:
            by_reason = (unparseable.group_by("message").agg(n=pl.len(), ex=pl.col("srcfile").head(EXAMPLES))
                         .sort(["n", "message"], descending=[True, False]))
            parts += ["<h3>Unparseable paths by reason</h3>", _table(
                [("reason", "", 45), ("count", "num", 9), ("examples", "path", 46)],
                [(r["message"], r["n"], _paths(r["ex"], r["n"])) for r in by_reason.iter_rows(named=True)],
                command=command)]
        return self.section("scan-errors", _TITLES["scan-errors"], "".join(parts))

    # 8
    def findings(self) -> str:
        findings = self.reader.findings(self.label)
        if findings.height == 0:
            return self.section("findings", _TITLES["findings"], _note(
                "No findings (the version has no recorded validation findings; `chorus-batch validate` records them)."))
        grouped = (findings.with_columns(severity=pl.col("severity").fill_null("unknown"), rule=pl.col("rule").fill_null(""))
                   .group_by("severity", "rule").agg(n=pl.len(), ex=pl.col("srcfile").head(EXAMPLES),
                                                     msg=pl.col("message").head(EXAMPLES))
                   .with_columns(_rank=pl.col("severity").str.to_lowercase()
                                 .replace_strict(SEVERITY_ORDER, default=3, return_dtype=pl.Int64))
                   .sort(["_rank", "n", "rule"], descending=[False, True, False]))
        by_severity = grouped.group_by("severity", "_rank").agg(pl.col("n").sum()).sort("_rank", "severity")
        parts = [_note("Findings: " + ", ".join(f"{n:,} {s}" for s, _r, n in by_severity.iter_rows()) + ".")]
        n_errors = int(grouped.filter(pl.col("_rank") == 0)["n"].sum())
        if n_errors:
            self.flags.append(f"{_n(n_errors, 'validation finding')} of severity error.")
        parts.append(_table(
            [("severity", "", 11), ("rule", "", 20), ("count", "num", 9), ("examples (path: message)", "", 60)],
            [(r["severity"], r["rule"], r["n"],
              _examples(r["ex"], r["msg"], r["n"]))
             for r in grouped.iter_rows(named=True)],
            command=self.py(f"m.findings({json.dumps(self.label)})", "findings.csv")))
        return self.section("findings", _TITLES["findings"], "".join(parts))

    # 9
    def deleted(self) -> str:
        sid, title = "deleted", _TITLES["deleted"]
        if self.previous is None:
            return self.section(sid, title, _note("This is the first version: nothing was deleted or replaced."))
        diff = self.reader.diff(self.previous, self.label)
        prev_row = self.versions.row(self.versions.height - 2, named=True)
        prev_files = prev_row.get("n_files")
        if prev_files is None:
            prev_files = self.reader.files(self.previous).height
        kinds = list(CHANGE_KINDS)
        counts = diff.group_by(pl.col("modality").fill_null("Other"), "change").len("n")
        rows = []
        for modality in sorted(counts["modality"].unique().to_list()):
            sub = dict(counts.filter(pl.col("modality") == modality).select("change", "n").iter_rows())
            rows.append((modality, *(sub.get(k, 0) for k in kinds)))
        lost = diff.filter(pl.col("change").is_in(["removed", "replaced"])).sort("change", "srcfile")
        parts = [_note(f"Compared with the previous version {self.previous} ({prev_files:,} files): "
                       f"{lost.height:,} files removed or replaced ({_pct(lost.height, prev_files)}).")]
        if prev_files and lost.height / prev_files > DELETED_SHARE_FLAG:
            parts.append(self.flag(f"This version removed or replaced {_pct(lost.height, prev_files)} of the previous "
                                   f"version's files (more than {DELETED_SHARE_FLAG:.0%}): check that the deliveries "
                                   "were meant to go."))
        parts.append(_table([("modality", "", 20), *((k, "num", 16) for k in kinds)], rows,
                            empty="Nothing changed."))
        parts.append("<h3>Removed and replaced files</h3>")
        parts.append(_table(
            [("change", "", 9), ("path", "path", 47), ("modality", "", 11), ("size", "num", 9), ("MD5 (before → now)", "path", 24)],
            [(r["change"], r["srcfile"], r["modality"], _bytes(r["size"]),
              r["old_md5"] if r["change"] == "removed" else _Html(f"{_esc(r['old_md5'])}<br>→ {_esc(r['md5'])}"))
             for r in lost.head(MAX_ROWS).iter_rows(named=True)],
            total=lost.height, empty="Nothing was removed or replaced.",
            command=self.cli("diff", "--db", self.db, "--from", self.previous, "--to", self.label, "--csv")))
        return self.section(sid, title, "".join(parts))


_TITLES = {
    "summary": "Summary",
    "changes-by-version": "Changes per version, modality and change kind",
    "persons": "Files and bytes per person",
    "sessions": "Waveform sessions",
    "sizes": "File sizes per modality: empty files and outliers",
    "duplicates": "Duplicate contents",
    "scan-errors": "Scan errors and unparseable paths",
    "findings": "Validation findings",
    "deleted": "Deleted and replaced since the previous version",
}


_CSS = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:#1d2430;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 32px 40px;background:#fff;min-height:100vh}
h1{font-size:23px;margin:0 0 12px}
h2{font-size:18px;margin:0 0 8px}
h3{font-size:15px;margin:14px 0 4px}
section{margin-top:26px;padding-top:10px;border-top:2px solid #dee2e6}
table{width:100%;table-layout:fixed;border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #e9ecef;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f1f3f5;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
td.path,.p{word-break:break-all;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;background:#f1f3f5;padding:1px 3px;word-break:break-all}
.ex{margin-bottom:3px}
.more{color:#495057;font-size:12.5px;overflow-wrap:anywhere}
.note{margin:6px 0}
.flag{margin:8px 0;padding:6px 10px;background:#fff4e6;border-left:4px solid #e8590c}
.ok{color:#2b8a3e}
ul.flags{margin:4px 0 8px;padding:6px 10px 6px 30px;background:#fff4e6;border-left:4px solid #e8590c}
img{display:block;max-width:100%;height:auto;margin:8px 0}
dl.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px;margin:4px 0 8px}
dt{color:#495057}
dd{margin:0;overflow-wrap:anywhere}
.cols{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:24px;align-items:start}
nav ol{columns:3;margin:6px 0 0;padding-left:22px;font-size:13px}
a{color:#1864ab}
footer{margin-top:30px;color:#868e96;font-size:12px}
"""
