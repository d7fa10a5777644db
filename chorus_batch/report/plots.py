"""The HTML report's figures: matplotlib (Agg through `Figure.savefig`, no pyplot state) drawn from
aggregates, each returned as an `Image` whose `src` is a PNG `data:` URI to embed in the page."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from ..units import human_bytes

DPI = 100
WIDTH = 1100  # pixels of every figure
KIND_COLORS = {"added": "#2f9e44", "removed": "#e03131", "replaced": "#f08c00", "renamed": "#1c7ed6"}
MODALITY_COLORS = {"Waveforms": "#1098ad", "Images": "#7048e8", "OMOP": "#f59f00", "Metadata": "#868e96", "Other": "#e64980"}
DURATION_TICKS = [(1, "1 s"), (10, "10 s"), (60, "1 min"), (600, "10 min"), (3600, "1 h"), (6 * 3600, "6 h"),
                  (86400, "1 d"), (7 * 86400, "1 wk")]


@dataclass(frozen=True)
class Image:
    src: str  # data:image/png;base64,...
    width: int
    height: int
    alt: str


def _image(fig: Figure, alt: str) -> Image:
    """The figure as a PNG data URI (no 'Software' tag, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(float(v)) for v in fig.get_size_inches() * DPI)
    return Image(src="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                 width=width, height=height, alt=alt)


def _figure(width_px: int, height_px: int) -> Figure:
    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")


def _style(ax) -> None:
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, written out: 1,000,000 rather than 1e6
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e9ee", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _hist(ax, values: np.ndarray, *, log: bool = False, integer: bool = False, color: str = "#4263eb") -> None:
    """Histogram from counts (np.histogram), drawn as bars; `integer`: the values are counts, so are its x ticks."""
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
    if integer:  # a count per bar: whole-number ticks (not 1.50, 1.75, ...), written out as the y axis is
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one bar: its one whole number
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))


def _bytes_tick(value: float, _pos=None) -> str:
    return human_bytes(value, significant=3) if value > 0 else "0"


def _bytes_axis(ax, lo: float, hi: float, axis: str = "x") -> None:
    """Byte-unit tick labels; on a log axis, ticks at powers of 2 (1 KiB, 32 KiB, 1 MiB, ...)."""
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


_STAMPED = re.compile(r"^(?:(.*)-)?(\d{14})$")  # a label's UTC start: the label, or '<hand label>-<UTC start>'
TICK_PREFIX = 12  # characters shown of a hand label before its stamp


def _tick_labels(labels: Sequence[str], one_line: bool) -> list[str]:
    """Version labels (UTC stamps YYYYMMDDhhmmss) as dates, with the time only as precise as needed to tell them
    apart; the versions after a hand label ('nightly-20261201020000') as the label, shortened, over that date;
    other labels as they are (shortened). Cut to their first 15 characters, every 'nightly-2026120…' of a month
    read the same."""
    parts = [(m.group(1) or "", m.group(2)) if (m := _STAMPED.match(v)) else (v, "") for v in labels]
    stamps = [(prefix, stamp) for prefix, stamp in parts if stamp]
    sep = " " if one_line else "\n"
    for cut in (8, 12, 14):
        if len({(prefix, stamp[:cut]) for prefix, stamp in stamps}) == len(set(stamps)):
            break
    out = []
    for prefix, stamp in parts:
        shown = prefix if len(prefix) <= TICK_PREFIX else prefix[:TICK_PREFIX - 1] + "…"
        if not stamp:
            out.append(prefix if len(prefix) <= 16 else prefix[:15] + "…")
            continue
        text = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"
        if cut > 8:
            text += f"{sep}{stamp[8:10]}:{stamp[10:12]}" + (f":{stamp[12:14]}" if cut > 12 else "")
        out.append(f"{shown}{sep}{text}" if shown else text)
    return out


def _crowded(ticks: Sequence[str], n: int) -> bool:
    """Whether level tick labels would run into each other: about 50 characters fit across a panel."""
    return n * max((len(line) for tick in ticks for line in tick.split("\n")), default=0) > 50


def _modality_color(name: str, i: int) -> str:
    return MODALITY_COLORS.get(name, f"C{i % 10}")


# ----------------------------------------------------------------------------- the report's figures


def changes(per_version: pl.DataFrame, per_modality: pl.DataFrame, kinds: Sequence[str]) -> Image:
    """Bars per version (column `version`), stacked by change kind (columns `kinds`) and, beside them,
    by modality (the other columns of `per_modality`)."""
    n = per_version.height
    fig = _figure(WIDTH, 340 if n <= 12 else 400)
    axes = fig.subplots(1, 2)
    x = np.arange(n)
    labels = per_version["version"].to_list()
    rotate = n > 6 or _crowded(_tick_labels(labels, one_line=False), n)
    ticks = _tick_labels(labels, one_line=rotate)
    step = max(1, math.ceil(n / 14))
    for ax, frame, keys, colors, name in (
        (axes[0], per_version, list(kinds), [KIND_COLORS[k] for k in kinds], "by change kind"),
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
    return _image(fig, "changes per version, stacked by change kind and by modality")


def persons(files: np.ndarray, sizes: np.ndarray) -> Image:
    """Histograms of the files and of the bytes per person."""
    fig = _figure(WIDTH, 300)
    axes = fig.subplots(1, 2)
    _hist(axes[0], files.astype(float), integer=True)
    axes[0].set_xlabel("files per person", fontsize=9)
    _hist(axes[1], sizes, log=True, color="#7048e8")
    _bytes_axis(axes[1], float(sizes.min()), float(sizes.max()))
    axes[1].set_xlabel("bytes per person", fontsize=9)
    return _image(fig, "histograms of files and bytes per person")


def session_timeline(starts: pl.Series) -> Image:
    """Sessions per day, week, month, quarter or year (whichever fits the span) of their plausible starts."""
    fig = _figure(WIDTH, 280)
    ax = fig.subplots()
    if starts.len():
        first, last = starts.min(), starts.max()
        span_days = (last - first).days
        every, unit, width = next(e for e in (("1d", "day", 0.8), ("1w", "week", 5.6), ("1mo", "month", 25),
                                               ("1q", "quarter", 80), ("1y", "year", 330))
                                   if span_days <= {"1d": 92, "1w": 730, "1mo": 3650, "1q": 9000}.get(e[0], math.inf))
        timeline = starts.to_frame("start").group_by(pl.col("start").dt.truncate(every).alias("bucket")).len("n").sort("bucket")
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
    return _image(fig, "waveform sessions over time, by their start")


def session_histograms(durations: np.ndarray, per_person: np.ndarray) -> Image:
    """Histograms of the session durations (seconds) and of the sessions per person."""
    fig = _figure(WIDTH, 280)
    axes = fig.subplots(1, 2)
    _hist(axes[0], durations, log=True, color="#1098ad")
    positive = durations[durations > 0]
    if positive.size and positive.max() / positive.min() > 20:
        lo, hi = positive.min(), positive.max()
        ticks = [(v, t) for v, t in DURATION_TICKS if lo / 1.5 <= v <= hi * 1.5]
        if ticks:
            axes[0].set_xticks([v for v, _ in ticks], [t for _, t in ticks])
            axes[0].minorticks_off()
    axes[0].set_xlabel("session duration (s, from the file names)", fontsize=9)
    _hist(axes[1], per_person.astype(float), integer=True, color="#5c940d")
    axes[1].set_xlabel("sessions per person", fontsize=9)
    return _image(fig, "histograms of session durations and of sessions per person")


def sizes(stats: pl.DataFrame, flagged: pl.DataFrame, labels: Sequence[str], lo: float | None, hi: float | None) -> Image:
    """One horizontal box per modality (a row of `review.size_flags`' stats, labelled with `labels`), its
    outliers (`flagged`) as dots, on a log size axis from `lo` to `hi` bytes (None: no non-empty file)."""
    boxes = []
    for r in stats.iter_rows(named=True):
        if not r["nonempty"]:
            boxes.append({"med": np.nan, "q1": np.nan, "q3": np.nan, "whislo": np.nan, "whishi": np.nan, "fliers": []})
            continue
        sub = flagged.filter((pl.col("modality") == r["modality"]) & (pl.col("flag") != "empty"))["size"]
        boxes.append({"med": 10 ** r["median"], "q1": 10 ** r["q1"], "q3": 10 ** r["q3"],
                      "whislo": r["low"] or r["min"], "whishi": r["high"] or r["max"],
                      "fliers": sub.head(500).to_numpy()})
    fig = _figure(WIDTH, 70 + 48 * len(boxes))
    ax = fig.subplots()
    ax.bxp(boxes, orientation="horizontal", widths=0.5, patch_artist=True,
           boxprops={"facecolor": "#d0ebff", "edgecolor": "#1c7ed6"}, medianprops={"color": "#e8590c"},
           flierprops={"marker": "o", "markersize": 4, "markerfacecolor": "#e03131", "markeredgecolor": "none", "alpha": 0.6})
    ax.set_yticks(np.arange(1, len(labels) + 1), labels, fontsize=8.5)
    ax.set_xscale("log")
    if lo is not None and hi is not None:
        _bytes_axis(ax, lo, hi)
    ax.invert_yaxis()
    ax.set_xlabel("file size (log scale); boxes: quartiles, whiskers: range within the outlier fences, dots: outliers", fontsize=9)
    ax.set_title("size per modality (non-empty files)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e6e9ee", linewidth=0.8)
    ax.tick_params(labelsize=8.5)
    return _image(fig, "file sizes per modality, log scale")
