"""The HTML data-quality report, built from real manifests and checked in headless Chromium.

Chromium opens a small test-only page that loads the report in a same-origin iframe
(`--allow-file-access-from-files`) and writes what it finds into its own DOM: the section
elements and their heights, every <img> (complete, naturalWidth), the page's horizontal
overflow and text. `--dump-dom` prints that DOM once the iframe (and so its images) loaded.

Run as a script to redraw the README's screenshot:  python tests/test_report.py docs/report.png
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, run_site, write
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from chorus_batch.errors import UsageError
from chorus_batch.report import SECTION_IDS, ReportInfo, summary_text, write_report
from chorus_batch.review import open_manifest, size_flags
from chorus_batch.testdata import Spec, write_snapshot
from chorus_batch.validate.rules import edition

ODD_PATH = "junk/<b>x&y \"q\" 'z'.txt"  # an unparseable path that must come out as text
EMPTY_PATH = "000001/Waveforms/000001_20200101_000100_3600_0009.dat"
COPY_PATH = "000002/Images/ST0000/SE00/copy.dcm"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: apt-get install chromium (CI installs it: see .ci/run)")


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chorus-chromium-") as profile:
        command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="report" src="%(src)s" style="width:1280px;height:3000px;border:0"></iframe>
<pre id="probe-result">pending</pre>
<script>
const ids = %(ids)s;
document.getElementById('report').addEventListener('load', () => {
  let out;
  try {
    const d = document.getElementById('report').contentDocument;
    out = {
      sections: Object.fromEntries(ids.map(id => {
        const e = d.getElementById(id); return [id, e ? e.getBoundingClientRect().height : -1]; })),
      images: [...d.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, alt: i.alt})),
      scrollWidth: d.documentElement.scrollWidth, clientWidth: d.documentElement.clientWidth,
      boldInTables: d.querySelectorAll('td b, td script').length,
      scriptsRun: d.querySelectorAll('[data-injected]').length,
      text: d.body.innerText,
    };
  } catch (e) { out = {error: String(e)}; }
  document.getElementById('probe-result').textContent = JSON.stringify(out);
});
</script></body></html>
"""


def probe(report: Path) -> dict:
    """Load the report in Chromium and return what the probe page saw."""
    page = report.with_name(f"probe-{report.stem}.html")
    page.write_text(_PROBE % {"src": report.name, "ids": json.dumps(list(SECTION_IDS))}, encoding="utf-8")
    dom = chromium("--allow-file-access-from-files", "--window-size=1280,3200", "--virtual-time-budget=10000",
                   "--dump-dom", page.as_uri()).stdout
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert "error" not in result, result
    return result


def assert_renders(report: Path, info: ReportInfo) -> dict:
    """Every section present and visible, every image decoded, no sideways scrolling."""
    seen = probe(report)
    assert {k: v > 0 for k, v in seen["sections"].items()} == dict.fromkeys(SECTION_IDS, True), seen["sections"]
    assert len(seen["images"]) == info.images
    broken = [i["alt"] for i in seen["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == []
    assert seen["scrollWidth"] <= seen["clientWidth"], "the page scrolls sideways"
    return seen


def assert_static(text: str) -> None:
    """Self-contained: nothing is fetched from anywhere."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|file:)""", text, re.IGNORECASE)
    assert not re.search(r"url\(|@import|<script|<link", text, re.IGNORECASE)
    assert "default-src 'none'" in text  # and the browser is told so


def assert_findings_shown(findings, text: str) -> None:
    """Each (severity, rule) group of the version's validation findings has its row; or the section says none."""
    if findings.height == 0:
        assert "No findings" in text
    for severity, rule in findings.select("severity", "rule").unique().iter_rows():
        assert re.search(rf"{re.escape(severity)}\s+{re.escape(rule)}\s+\d", text), (severity, rule)
    # counted as `validate` counts them: "2 errors, 1 warning, 3 notes" (the page said "2 error")
    for severity, n in findings.group_by("severity").len().iter_rows():
        word = {"error": "error", "warning": "warning", "info": "note"}[severity] + ("" if n == 1 else "s")
        assert re.search(rf"Findings:.*\b{n:,} {word}\b", text), (n, word)


def build_site(root: Path, spec: Spec, db: Path, parquet: Path | None = None, **run_options) -> Path:
    """Two versions from the project's test data: `first`, then `second` plus an empty file,
    a duplicate, a large outlier and an unparseable path with HTML characters in it."""
    site = root / "site"
    extra = {"parquet": str(parquet), **run_options} if parquet else run_options
    write_snapshot(site, spec)
    run_site(site, db, **extra)
    shutil.rmtree(site)
    write_snapshot(site, spec, second=True)
    write(site, EMPTY_PATH, b"")
    write(site, COPY_PATH, (site / "OMOP" / "person.csv").read_bytes())
    write(site, ODD_PATH, b"?")
    write(site, "000003/Waveforms/000003_20200101_000300_3600_0008.dat", b"w" * (spec.size * 5000))
    run_site(site, db, **extra)
    return site


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    db, parquet = root / "manifest.sqlite", root / "snapshots"
    build_site(root, Spec(persons=8, files_per_person=12, size=256, seed=3), db, parquet)
    return db, parquet


def test_report_in_chromium(two_versions, tmp_path):
    db, _parquet = two_versions
    out = tmp_path / "report.html"
    out.write_text("old")
    os.chmod(out, 0o644)
    info = write_report(db, out)

    assert info.path == out and info.sections == SECTION_IDS and info.images >= 5
    assert info.version == open_manifest(db).versions()["label"][-1]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # replaced by a private file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp file left
    text = out.read_text(encoding="utf-8")
    assert_static(text)
    assert str(escape(ODD_PATH)) in text and ODD_PATH not in text  # escaped as Jinja escapes: &lt;b&gt; ... &#34;q&#34;
    assert any("empty file" in f for f in info.flags) and any("more than one path" in f for f in info.flags)

    seen = assert_renders(out, info)
    assert seen["boldInTables"] == 0 and ODD_PATH in seen["text"]  # the path is text, not markup
    for words in (EMPTY_PATH, COPY_PATH, "outlying size", "removed or replaced", "persons with sessions", "unparseable"):
        assert words.lower() in seen["text"].lower(), words
    assert_findings_shown(open_manifest(db).findings(info.version), seen["text"])

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,4000", out.as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").resize((320, 1000)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 200, "the screenshot looks blank"


_PRINT_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="report" src="%(src)s" style="width:718px;height:3000px;border:0"></iframe>
<pre id="probe-result">pending</pre>
<script>
document.getElementById('report').addEventListener('load', () => {
  const d = document.getElementById('report').contentDocument;
  // the page's own print rules, applied as printing applies them (on A4: about 718 CSS px between the margins)
  for (const sheet of d.styleSheets) for (const rule of sheet.cssRules)
    if (rule.media && rule.media.mediaText.includes('print')) rule.media.mediaText = 'all';
  const cut = [];
  for (const el of d.querySelectorAll('th, dt, nav a, h2, h3')) {  // the page's words (h1 holds the site's path)
    for (const node of el.childNodes) {
      if (node.nodeType !== 3) continue;
      for (const m of node.data.matchAll(/\\S+/g)) {
        const r = d.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        if (new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1) cut.push(m[0]);
      }
    }
  }
  document.getElementById('probe-result').textContent = JSON.stringify({cut: cut,
    scrollWidth: d.documentElement.scrollWidth, clientWidth: d.documentElement.clientWidth});
});
</script></body></html>
"""


def _probed(db, tmp_path, probe: str, name: str, window: str) -> dict:
    """The report of `db` opened in Chromium (a window of `window` px) inside the page `probe`, whose script writes
    what it measured into its #probe-result as JSON."""
    out = write_report(db, tmp_path / "report.html").path
    page = tmp_path / name
    page.write_text(probe % {"src": out.name}, encoding="utf-8")
    dom = chromium("--allow-file-access-from-files", f"--window-size={window}", "--virtual-time-budget=10000",
                   "--dump-dom", page.as_uri()).stdout
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_a_printed_page_cuts_no_header_inside_a_word(two_versions, tmp_path):
    """Printed on A4 (about 718 CSS px wide), the tables' fixed layout cut their headers inside words ("person|s",
    "remov|ed", "outlier|s") and kept the screen's grey margin: the page's print rules let each column take its
    header's words, and a long path still breaks, so nothing is cut off at the side."""
    seen = _probed(two_versions[0], tmp_path, _PRINT_PROBE, "probe-print.html", "800,3200")
    assert seen["cut"] == [], seen["cut"]
    assert seen["scrollWidth"] <= seen["clientWidth"], seen


_NARROW_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="report" src="%(src)s" style="width:375px;height:3000px;border:0"></iframe>
<pre id="probe-result">pending</pre>
<script>
document.getElementById('report').addEventListener('load', () => {
  const d = document.getElementById('report').contentDocument, width = d.documentElement.clientWidth;
  const cut = [];  // words of the page (letters only: a path may break anywhere) set on more than one line
  for (const el of d.querySelectorAll('th, td:not(.path), dt, dd, nav a, h2, h3, p')) {
    for (const node of el.childNodes) {
      if (node.nodeType !== 3) continue;
      for (const m of node.data.matchAll(/[A-Za-z]{2,}/g)) {
        const r = d.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        if (new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1) cut.push(m[0]);
      }
    }
  }
  const tables = [...d.querySelectorAll('table')];
  document.getElementById('probe-result').textContent = JSON.stringify({cut: cut,
    scrollWidth: d.documentElement.scrollWidth, clientWidth: width,
    boxes: tables.map(t => Math.round(t.parentElement.getBoundingClientRect().right)),
    scrolling: tables.filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth).length});
});
</script></body></html>
"""


def test_the_report_on_a_phone_scrolls_its_tables_not_the_page(two_versions, tmp_path):
    """On a narrow screen (375 px, a phone) the tables' fixed layout squeezed every column to a letter or two
    ("mod|ality", a version label one digit a line) and the side-by-side columns of the summary a word a line. The
    page is one column there, each table at least 6em a column, as wide as its words, scrolling sideways in its box;
    the page itself does not scroll sideways."""
    seen = _probed(two_versions[0], tmp_path, _NARROW_PROBE, "probe-narrow.html", "400,3200")
    assert seen["clientWidth"] == 375 and seen["scrollWidth"] <= seen["clientWidth"], seen
    assert seen["cut"] == [], seen["cut"]
    assert seen["boxes"] and max(seen["boxes"]) <= 375 and seen["scrolling"] > 0, seen


def test_report_from_parquet_snapshots(two_versions, tmp_path):
    db, parquet = two_versions
    info = write_report(parquet, tmp_path / "report.html")
    assert info.version == open_manifest(db).versions()["label"][-1]
    text = info.path.read_text(encoding="utf-8")
    assert_static(text)
    seen = assert_renders(info.path, info)
    assert COPY_PATH in seen["text"] and "removed or replaced" in seen["text"]


def test_earlier_version_from_an_open_reader(two_versions, tmp_path):
    db, _parquet = two_versions
    reader = open_manifest(db)
    first = reader.versions()["label"][0]
    info = write_report(reader, tmp_path / "first.html", version=first)
    assert info.version == first
    text = info.path.read_text(encoding="utf-8")
    assert "(1 of 2 versions)" in text and "This is the first version" in text
    assert str(escape(ODD_PATH)) not in text  # as it was then


def test_scan_errors_by_kind_are_named_in_words(two_versions, tmp_path):
    """The "By kind" table showed bare kind names (`unparseable`, `special_file`): named as `status` names them,
    the words and the kind after them."""
    from chorus_batch.units import error_kind

    db, _parquet = two_versions
    text = write_report(db, tmp_path / "r.html").path.read_text(encoding="utf-8")
    section = text.split('<section id="scan-errors">', 1)[1].split("</section>", 1)[0]
    table = section.split("<h3>By kind</h3>", 1)[1].split("</table>", 1)[0]
    kinds = re.findall(r"<tr><td class=\"\">\s*([^<]*?)\s*</td>", table)
    assert kinds == [str(escape(error_kind("unparseable")))], table
    assert error_kind("unparseable") != "unparseable"


def test_one_version_without_waveforms_or_images(tmp_path):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "Metadata/site.json", b"{}")
    run_site(site, db)
    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text(encoding="utf-8")
    for words in ("This is the first version", "No waveform sessions", "No person folders",
                  "No content is stored at more than one path", "No scan errors"):
        assert words in text, words
    assert_static(text)
    seen = assert_renders(info.path, info)
    assert_findings_shown(open_manifest(db).findings(info.version), seen["text"])


def test_empty_version(tmp_path):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/000001_20200101_101010_60.dat", b"wave")
    run_site(site, db)
    shutil.rmtree(site)
    site.mkdir()
    run_site(site, db, max_delete="all")  # emptied on purpose
    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text(encoding="utf-8")
    assert "No files in this version" in text and "100.0%" in text
    assert any("removed or replaced 100.0%" in f for f in info.flags)
    assert_renders(info.path, info)


def test_a_manifest_in_a_folder_whose_name_is_not_utf8_is_reported(tmp_path):
    """A folder named in Latin-1 (`caf\xe9`): the manifest's path went to ADBC as text, which it takes as UTF-8 only,
    and `report` (every reading command) was an internal error (UnicodeEncodeError)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db)
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    shutil.copy(db, folder / "m.sqlite")
    done = cli("report", "--db", str(folder / "m.sqlite"), "--out", str(folder / "r.html"))
    assert done.returncode == 0, done.stderr
    # the page's path said with the byte it holds, as every message names such a path ('caf\udce9' before)
    assert done.stdout.startswith(f"wrote '{tmp_path}/caf\\xe9/r.html' (version "), done.stdout
    assert (folder / "r.html").stat().st_size > 0
    info = write_report(folder / "m.sqlite", folder / "r2.html")
    assert info.version == open_manifest(db).latest()


def test_a_version_not_validated_is_flagged_not_shown_as_clean(tmp_path):
    """`run --no-validate` stores no findings: the page said "No findings" and "Nothing flagged", as for a
    version validation found clean; it says the version was not validated, and how to check it."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "Metadata/site.json", b"{}")
    run_site(site, db, validate_site=False)
    info = write_report(db, tmp_path / "r.html")
    text = html.unescape(info.path.read_text(encoding="utf-8"))
    flag = f"Version {info.version} was not validated: its findings are unknown (chorus-batch validate --db {db} checks it)."
    assert flag in info.flags and flag in text and "Nothing flagged" not in text

    assert cli("validate", "--db", str(db)).returncode in (0, 1)
    info = write_report(db, tmp_path / "r.html")
    assert not any("not validated" in f for f in info.flags)
    assert "not validated" not in info.path.read_text(encoding="utf-8")

    # Checked by an earlier release's rules (as an upgrade leaves it): its findings were shown as this release's,
    # unsaid; the page says whose they are and what checks the version by today's rules
    assert not any("other rules" in f for f in info.flags)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE validations SET rules = '0.9.0+0123456789ab'")
    info = write_report(db, tmp_path / "r.html")
    text = " ".join(html.unescape(info.path.read_text(encoding="utf-8")).split())
    flag = next(f for f in info.flags if "other rules" in f)
    assert flag.startswith(f"Version {info.version} was validated by other rules than this release's (0.9.0+0123456789ab; ")
    assert flag.endswith(f"(chorus-batch validate --db {db} checks it).") and flag in text, flag


def test_findings_and_whether_the_version_was_validated_are_read_in_one_state_of_the_manifest(tmp_path, monkeypatch):
    """The report read a version's findings, then asked twice whether it was validated (four queries): a `validate`
    committing in between paired the findings of before (none) with the state after (checked), and the page called
    a version with an error finding clean. Both are read in one transaction."""
    from chorus_batch.store.manifest import Manifest

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    label = run_site(site, db, validate_site=False).label
    connect, committed, asked = Manifest.connect, [], []

    def validate_commits_between_the_reads(statement: str) -> None:
        if "FROM validations" in statement:
            asked.append(statement)
        if "FROM validations" in statement and not committed:  # as `validate` writes a check, in one transaction
            committed.append(True)
            with contextlib.closing(sqlite3.connect(db)) as other, other:
                other.execute("INSERT INTO findings VALUES (?, 'error', 'r1', 'OMOP/person.csv', 'bad')", (label,))
                other.execute("INSERT INTO validations VALUES (?, '2026-12-05T00:00:00Z', 1, 0, 0, 0, ?)",
                              (label, edition()))

    def traced(self):
        con = connect(self)
        con.set_trace_callback(validate_commits_between_the_reads)
        return con

    monkeypatch.setattr(Manifest, "connect", traced)
    info = write_report(db, tmp_path / "r.html")
    monkeypatch.undo()
    assert committed and len(asked) == 1, asked
    text = html.unescape(info.path.read_text(encoding="utf-8"))
    assert "not validated" in text and "Nothing flagged" not in text  # as the manifest was when the report read it
    info = write_report(db, tmp_path / "r.html")  # and after the commit: the finding
    assert "1 validation finding of severity error." in info.flags, info.flags


def test_one_file_removed_is_said_in_the_singular(tmp_path):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "Metadata/site.json", b"{}")
    run_site(site, db)
    (site / "Metadata" / "site.json").unlink()
    run_site(site, db, max_delete="all")
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", write_report(db, tmp_path / "r.html").path.read_text())).split())
    assert "(2 files): 1 file removed or replaced (50.0%)" in text


def test_the_findings_fixed_new_and_still_open_since_the_previous_version_are_said(tmp_path):
    """A version compared with the previous one: the run's summary said "since version X: fixed 1 (...); new ...", the
    page only this version's findings ("No findings" for a version that fixed the only error), so a reviewer could
    not tell a site's work from nothing done. The page says what the run said, read in Chromium; nothing where
    the previous version was not checked."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "Metadata/site.json", b"{}")
    write(site, "bad:name/x.txt", b"x")  # file.unportable_name (error) and an unparseable path
    first = run_site(site, db)
    shutil.rmtree(site / "bad:name")
    second = run_site(site, db, max_delete="all")
    line = next(x.strip() for x in summary_text(second).splitlines() if x.strip().startswith("since version"))
    assert re.fullmatch(rf"since version {first.label}: fixed [1-9].*; new 0; still open [1-9].*", line), line

    info = write_report(db, tmp_path / "r.html")
    text = " ".join(probe(info.path)["text"].split())
    assert f"S{line[1:]}." in text, (line, text)
    earlier = write_report(db, tmp_path / "first.html", version=first.label)  # the first version: nothing to compare
    assert "Since version" not in " ".join(re.sub(r"<[^>]+>", " ", earlier.path.read_text()).split())

    # the previous version not checked: no comparison (its findings are unknown, not none)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM validations WHERE version = ?", (first.label,))
    text = " ".join(re.sub(r"<[^>]+>", " ", write_report(db, tmp_path / "r.html").path.read_text()).split())
    assert "still open" not in text and "Findings:" in text


def test_the_sessions_without_a_duration_are_counted_in_words_that_agree(tmp_path):
    """The sessions line said "1 sessions have no duration in their names", and "0 sessions have no duration" when
    every session had one."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/1001/1001.hea", b"1001 1 250 2500\n1001.dat 16 200 16 0 0 0 0 II\n")
    run_site(site, db)

    def sessions_line() -> str:
        page = html.unescape(re.sub(r"<[^>]+>", " ", write_report(db, tmp_path / "r.html").path.read_text()))
        return re.search(r"duration\s+(median[^\n]*)", page).group(1).strip()

    assert sessions_line() == "median 10 s, max 10 s"
    write(site, "000001/Waveforms/Telemetry/1002/1002.hea", b"not a header\n")
    run_site(site, db)
    assert sessions_line() == "median 10 s, max 10 s; 1 session has no duration in its names"
    write(site, "000001/Waveforms/Telemetry/1003/1003.hea", b"not a header either\n")
    run_site(site, db)
    assert sessions_line() == "median 10 s, max 10 s; 2 sessions have no duration in their names"


def test_a_person_that_disappeared_is_flagged_as_the_notebook_flags_it(tmp_path):
    """A person of the previous version with no file left in the version reviewed was not said by the page (the
    notebook's checklist says CHECK "persons: none disappeared"): 1 file of 41 removed stayed under the deleted
    section's 5% and the page had nothing to look at. It is flagged in the persons section and the summary."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for i in range(40):
        write(site, f"000001/Waveforms/Telemetry/{1000 + i}/{1000 + i}.dat", f"{i}".encode())
    write(site, "000002/Waveforms/Telemetry/2001/2001.dat", b"gone")
    run_site(site, db, validate_site=False)
    info = write_report(db, tmp_path / "first.html")
    assert not [flag for flag in info.flags if "no file in this version" in flag]  # no previous version
    shutil.rmtree(site / "000002")
    run_site(site, db, validate_site=False)
    previous = open_manifest(db).versions()["label"][0]
    info = write_report(db, tmp_path / "r.html")
    said = f"1 person of the previous version {previous} has no file in this version: 000002."
    assert said in info.flags and not [flag for flag in info.flags if "more than 5%" in flag], info.flags
    page = html.unescape(info.path.read_text(encoding="utf-8"))
    persons = page[page.index('<section id="persons">'):page.index('<section id="sessions">')]
    assert f'<p class="flag">{said}</p>' in persons


def test_bad_output_path(two_versions, tmp_path):
    db, _parquet = two_versions
    for out in (tmp_path, tmp_path / "missing" / "r.html"):
        with pytest.raises(UsageError):
            write_report(db, out)
    # `--out ""` was read as "." ("is a folder"), and `--out r.html/` wrote the file r.html
    with pytest.raises(UsageError, match="an empty path names no file"):
        write_report(db, "")
    with pytest.raises(UsageError, match="ends with a separator: it names no file"):
        write_report(db, f"{tmp_path}/r.html/")
    assert not (tmp_path / "r.html").exists()


def test_out_dash_writes_the_page_to_standard_output(two_versions, tmp_path):
    # `report --out -` wrote a file named "-" in the current folder
    db, _parquet = two_versions
    out = cli("report", "--db", str(db), "--out", "-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<!DOCTYPE html>") and out.stdout.rstrip().endswith("</html>")
    assert "wrote the report to standard output" in out.stderr and not (tmp_path / "-").exists()


def test_an_out_name_with_a_line_break_is_said_on_one_line(two_versions, tmp_path):
    # "wrote /tmp/x/new" and "line.html (version …)" on two lines: a log reader took them for two messages
    db, _parquet = two_versions
    out = cli("report", "--db", str(db), "--out", "new\nline.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"wrote '{tmp_path}/new\\nline.html' (version ")
    assert (tmp_path / "new\nline.html").is_file()


def test_size_flags_rule():
    import polars as pl

    sizes = [1000 + i for i in range(30)] + [0, 1200, 50_000_000, 3]
    files = pl.DataFrame({"srcfile": [f"p/{i}" for i in range(len(sizes))], "modality": ["Waveforms"] * len(sizes),
                          "person_id": ["p"] * len(sizes), "size": sizes})
    stats, flagged = size_flags(files)
    assert dict(zip(flagged["size"], flagged["flag"])) == {0: "empty", 50_000_000: "large", 3: "small"}
    assert stats.row(0, named=True)["outliers"] == 2 and stats.row(0, named=True)["empty"] == 1
    few = files.head(5).vstack(files.filter(pl.col("size") == 50_000_000))  # too few files to judge
    assert size_flags(few)[1].height == 0


def main(target: str) -> None:
    """The README's screenshot: the top of a report of a few hundred files."""
    with tempfile.TemporaryDirectory(prefix="chorus-report-") as tmp:
        root = Path(tmp)
        db = root / "manifest.sqlite"
        spec = Spec(persons=30, files_per_person=12, size=4096, seed=7, change_fraction=0.12)
        site = build_site(root, spec, db, site_name="demo-site")
        # a third delivery: six more persons, one file of the second delivery withdrawn
        write_snapshot(site, Spec(**{**spec.__dict__, "persons": 36}), second=True)
        (site / COPY_PATH).unlink()
        run_site(site, db, site_name="demo-site")
        report = write_report(db, root / "report.html")
        chromium(f"--screenshot={Path(target).resolve()}", "--window-size=1280,1600", report.path.as_uri())
    print(f"wrote {target} from a report of {report.version} ({report.images} plots)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png")


def test_control_characters_of_a_path_are_shown_as_escapes(tmp_path):
    """A path's line break showed as a space in the browser (`OMOP/new line.csv`, a file that does not exist)
    and an escape character was invisible; the terminal writes them \\n and \\x1b, and so does the report."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/new\nline.csv", b"a")
    write(site, "OMOP/esc\x1b[31m.csv", b"b")
    run_site(site, db)
    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text()
    assert "OMOP/new\\nline.csv" in text and "OMOP/esc\\x1b[31m.csv" in text
    assert "new\nline" not in text and "\x1b" not in text


def test_a_site_folder_with_a_line_break_or_a_direction_override_is_shown_escaped(tmp_path):
    """The paths of the table were escaped, but the page's title, heading and `site` line wrote the site's folder
    raw: a right-to-left override reversed the rest of the heading (`/data/si\u202ete` read as another folder),
    and a line break showed as a space. They are shown as the tables show a name (units.shown_name)."""
    site, db = tmp_path / "si\u202ete\nx", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db)
    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text(encoding="utf-8")
    assert "\u202e" not in text and "si\u202ete\n" not in text
    shown = escape(repr(str(site)))  # '/.../si\u202ete\nx', quoted
    assert text.count(str(shown)) >= 3, text[:3000]  # the title, the heading, the site line
    seen = probe(info.path)["text"]
    assert f"Data-quality report: {repr(str(site))}\nsite\n{repr(str(site))}\n" in seen, seen[:600]


def test_an_unwritable_folder_fails_before_the_report_is_rendered(two_versions, tmp_path):
    """`report --out` into a folder this user cannot write rendered the whole report (plots and all, seconds
    to minutes on a large site) before it found out. The user is subject to permissions even as root."""
    db, _parquet = two_versions
    closed = tmp_path / "closed"
    closed.mkdir()
    script = ("import sys\nfrom chorus_batch.errors import WriteError\nfrom chorus_batch.report import html\n"
              "calls = []\nreal = html._Report.render\n"
              "html._Report.render = lambda self: calls.append(1) or real(self)  # counts, renders as ever\n"
              f"try:\n    html.write_report({str(db)!r}, {str(closed / 'r.html')!r})\n"
              "except WriteError as exc:\n    print('refused:', exc.what, 'renders:', len(calls))\n")
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
    os.chmod(closed, 0o555)
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(closed, 0o755)
    assert "refused: cannot write" in out.stdout and "renders: 0" in out.stdout, out.stdout + out.stderr
    assert list(closed.iterdir()) == []


_PEAK = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "chorus_batch", "report", "--db", sys.argv[1], "--out", sys.argv[2]],
                      capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB
"""


@pytest.mark.serial
@pytest.mark.parametrize("storage", ["sqlite", "parquet"])
def test_the_reports_memory_does_not_grow_with_the_manifest(tmp_path, storage):
    """The report held the version's whole file set as a polars frame (and the duplicates' and size rule's copies):
    its memory grew with the manifest (~0.7 KB a file, GBs at 1M files). It now asks the capped DuckDB database the
    notebook uses (`ManifestReader.duckdb`, filled in slices) for sums, per-person rows and the flagged files. A
    --parquet snapshot folder filled it with each snapshot read whole; it is read in slices of row groups too."""
    from test_notebook import manifest_of

    from chorus_batch.store import Manifest
    from chorus_batch.store.snapshots import write_snapshots

    peaks = {}
    for rows in (40_000, 160_000):
        db = manifest_of(rows, tmp_path / str(rows))
        if storage == "parquet":  # both versions' snapshots, as `run --parquet` writes them: the page's last
            manifest = Manifest(db)  # section ("deleted since") diffs them; it read both whole
            for label in manifest.versions()["label"]:
                write_snapshots(manifest, label, str(tmp_path / str(rows) / "snapshots"))
            db = tmp_path / str(rows) / "snapshots"
        out = subprocess.run([sys.executable, "-c", _PEAK, str(db), str(tmp_path / f"{rows}.html")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        page = (tmp_path / f"{rows}.html").read_text()
        assert "No files in this version" not in page and "Compared with the previous version" in page
        peaks[rows] = int(out.stdout.split()[-1]) / 1024
    growth = peaks[160_000] - peaks[40_000]
    print(f"peak RSS (MiB) by files: {peaks}")
    # Whole frames were 81 (SQLite) and 94 (Parquet) MiB more; now 25-40, most of it DuckDB's buffers filling
    # up to their cap (REVIEW_MEMORY), which a larger manifest does not pass.
    assert growth < 50, f"peak RSS {peaks} MiB: {growth:.0f} MiB more for 120k more files"


def test_a_run_that_commits_while_the_report_reads_the_version_changes_nothing_it_reads(tmp_path, monkeypatch):
    """The report (and the notebook's `duckdb`) read the latest version in slices of file ids, asking each for the
    current rows: a run that committed between two slices ended rows of the later slices, and the page showed
    part of the version (here a third). Each slice now asks for the rows valid at the version read."""
    import chorus_batch.review as review

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for i in range(30):
        write(site, f"OMOP/t{i:02}.csv", f"{i}\n".encode())
    run_site(site, db)
    reader = open_manifest(db)
    label = reader.latest()
    monkeypatch.setattr(review, "SLICE_ROWS", 10)  # three slices

    def a_run_commits_after_the_first(slices):
        yield next(slices)
        shutil.rmtree(site / "OMOP")
        run_site(site, db, max_delete="all")  # a run of the next night: every row ended
        yield from slices

    con, closing = reader.review_database({"files": a_run_commits_after_the_first(reader._file_slices(label))},
                                          version=label)
    with closing:
        assert con.execute("SELECT count(*), count(DISTINCT srcfile) FROM files").fetchall() == [(30, 30)]
    assert open_manifest(db).latest() != label  # the run did commit


def test_files_without_an_md5_are_not_duplicates_of_each_other(tmp_path):
    """Files a cloud run recorded without an MD5 (unverifiable: the storage kept none, `--cloud-md5 stored-only`)
    were grouped as one content: the report flagged "1 MD5 found at more than one path" with an empty MD5, and
    `duplicates()` listed them. Only files with the same known MD5 are twins."""
    import sqlite3

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/a.csv", b"a")
    write(site, "OMOP/b.csv", b"bb")
    run_site(site, db)
    con = sqlite3.connect(db)
    with con:  # as a stored-only cloud run records the files whose storage holds no MD5
        con.execute("UPDATE source_files SET md5 = NULL WHERE srcfile IN ('OMOP/a.csv', 'OMOP/b.csv')")
    con.close()
    assert open_manifest(db).duplicates().height == 0
    info = write_report(db, tmp_path / "r.html")
    assert not any("more than one path" in flag for flag in info.flags), info.flags
    assert "No content is stored at more than one path" in info.path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def size_db():
    """One in-memory DuckDB for the examples below (opening one per example, as size_flags(frame) does, was most of
    their time; the frame's way in is test_size_flags_rule's)."""
    from chorus_batch.diff import private_duckdb

    with private_duckdb() as con:
        yield con


@given(rows=st.lists(st.tuples(st.sampled_from(["Waveforms", "Images", None]),
                               st.one_of(st.just(0), st.integers(1, 10), st.integers(1, 10**9))), max_size=60))
@settings(max_examples=150, deadline=None)
def test_size_quartiles_are_polars_linear_quantiles_of_log10_size(size_db, rows):
    """The quartiles now come from the count of each distinct size (quantile_cont held every value of a modality:
    a report of 3M files passed the review database's cap). They must stay polars' quantile(q, "linear")."""
    import polars as pl

    files = pl.DataFrame({"srcfile": [f"f{i}" for i in range(len(rows))], "modality": [m for m, _ in rows],
                          "person_id": ["p"] * len(rows), "size": [s for _, s in rows]},
                         schema={"srcfile": pl.String, "modality": pl.String, "person_id": pl.String, "size": pl.Int64})
    size_db.register("files", files.to_arrow())  # (as size_flags(files) does)
    stats, _ = size_flags(size_db)
    log = pl.col("size").log10()
    expected = (files.with_columns(pl.col("modality").fill_null("Other")).filter(pl.col("size") > 0).group_by("modality")
                .agg(q1=log.quantile(0.25, "linear"), median=log.quantile(0.5, "linear"), q3=log.quantile(0.75, "linear")))
    got = stats.select("modality", "q1", "median", "q3")
    assert set(expected["modality"]) <= set(got["modality"])
    for row in expected.iter_rows(named=True):
        mine = got.filter(pl.col("modality") == row["modality"]).row(0, named=True)
        assert all(abs(mine[c] - row[c]) < 1e-9 for c in ("q1", "median", "q3")), (row, mine)
    assert got.filter(~pl.col("modality").is_in(expected["modality"].implode()))["q1"].is_null().all()


def test_size_statistics_of_millions_of_files_fit_the_review_databases_cap(tmp_path):
    """`report` of a 3M-file manifest failed: 'Out of Memory Error' (said as the machine's memory) in the size
    statistics, whose quantiles held every size of a modality within the cap. The cap now holds 3M files of
    distinct sizes."""
    import duckdb

    from chorus_batch.review import REVIEW_MEMORY

    con = duckdb.connect(str(tmp_path / "x.duckdb"), config={"threads": 1, "memory_limit": REVIEW_MEMORY,
                                                            "temp_directory": str(tmp_path)})
    con.execute("CREATE TABLE files AS SELECT 'p/' || i AS srcfile, 'Waveforms' AS modality, 'p' AS person_id, "
                "(hash(i) % 100000000)::BIGINT + 1 AS size FROM range(3000000) t(i)")
    stats, _ = size_flags(con)
    assert stats["nonempty"].to_list() == [3_000_000] and 7.3 < stats["median"][0] < 7.8


def test_the_sessions_of_a_million_files_fit_the_review_databases_cap(tmp_path):
    """`report` of a 1M-file manifest (335k sessions of 3 files) failed: the sessions' grouping by record in the
    review database, on 2 threads, needed more than the 64 MB cap ('Out of Memory Error', said as the machine's
    memory). The database runs on one thread, whose share of the cap spills the grouping."""
    import polars as pl

    from chorus_batch.review import FILE_SCHEMA

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    reader = open_manifest(db)
    n = 1_005_000
    i = pl.col("i")
    files = pl.DataFrame({"i": pl.int_range(0, n, eager=True)}).select(
        record_id=i // 3, srcfile=pl.format("{}/Waveforms/Telemetry/{}/{}.dat", i // 30, i // 3, i),
        person_id=(i // 30).cast(pl.String), session_id=(i // 3).cast(pl.String), size=i,
        md5=i.cast(pl.String).str.zfill(32), modality=pl.lit("Waveforms"), category=pl.lit("Telemetry"))
    frame = pl.DataFrame(schema=FILE_SCHEMA).vstack(files.select(
        pl.col(c).cast(FILE_SCHEMA[c]) if c in files.columns else pl.lit(None, FILE_SCHEMA[c]).alias(c) for c in FILE_SCHEMA))
    con, closing = reader.review_database({"files": iter([frame])}, version=reader.latest())
    with closing:
        sessions = reader.sessions(reader.latest(), con=con)
    assert sessions.height == n // 3 and sessions["files"].sum() == n


def test_duckdbs_own_cap_reached_is_not_said_as_the_machines_memory():
    """DuckDB's 'Out of Memory Error' at the cap chorus-batch sets (a review database's 64 MB) was said as 'out of
    memory ... give the job more memory', which cannot help: it says whose limit it is."""
    import duckdb

    from chorus_batch.errors import out_of_memory

    with duckdb.connect(config={"memory_limit": "2MB", "threads": 1}) as con:
        with pytest.raises(duckdb.OutOfMemoryException) as raised:
            con.execute("SELECT string_agg(i::VARCHAR, ',') FROM range(3000000) t(i)").fetchall()
    said = out_of_memory(raised.value)
    assert said is not None and "working memory chorus-batch gives DuckDB" in said.what, said
    assert "not of the machine" in said.fix and "give the job more memory" not in said.fix
    assert "give the job more memory" in out_of_memory(MemoryError()).fix  # the machine's memory: as before


def test_the_command_under_a_cut_table_lists_the_rows_that_table_counts(tmp_path, monkeypatch):
    """A long table is cut with "Showing 50 of N rows. All of them: <command>". Three commands listed other rows:
    the deleted section's `diff --csv` also the added and renamed files, the implausible sessions' command every
    session, the changes table's `versions` a line per version without its modalities. Each now writes the N rows."""
    import csv

    from chorus_batch.report import html as report_html

    site, db = tmp_path / "site", tmp_path / "manifest.sqlite"
    spec = Spec(persons=4, files_per_person=8, size=64, seed=3, change_fraction=0.5)
    write_snapshot(site, spec)
    run_site(site, db, validate_site=False)
    shutil.rmtree(site)
    write_snapshot(site, spec, second=True)
    for person in ("000001", "000002"):  # sessions named as starting in 1970: implausible
        write(site, f"{person}/Waveforms/{person}_19700101_000100_3600_0001.dat", b"w")
    run_site(site, db, validate_site=False)
    monkeypatch.setattr(report_html, "MAX_ROWS", 1)  # every table of more than one row is cut
    report_html._environment.cache_clear()
    try:
        text = write_report(db, tmp_path / "report.html").path.read_text(encoding="utf-8")
    finally:
        monkeypatch.undo()
        report_html._environment.cache_clear()
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.DOTALL))
    out = tmp_path / "out"
    out.mkdir()
    for section, key in (("changes-by-version", ("version", "modality")), ("sessions", None), ("deleted", None)):
        cut = re.search(r"Showing 1 of ([\d,]+) rows\. All of them: <code>(.*?)</code>", sections[section], re.DOTALL)
        assert cut, section
        total, command = int(cut.group(1).replace(",", "")), shlex.split(html.unescape(cut.group(2)))
        assert command[0] == "python", command
        done = subprocess.run([sys.executable, *command[1:]], cwd=out, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        written = next(out.glob("*.csv"))
        with written.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        written.unlink()
        assert len({tuple(r[k] for k in key) for r in rows} if key else rows) == total, section
    sessions_csv = re.search(r"Showing 1 of 2 rows", sections["sessions"])
    assert sessions_csv, "the two sessions of 1970 are the implausible ones"


def test_the_versions_after_a_hand_label_are_told_apart_in_the_change_plot():
    """After `run --version nightly` the versions are 'nightly-<UTC start>'; the plot cut every label of more than 16
    characters to its first 15, so each night of a month was 'nightly-2026120…', and the level labels of six versions
    ran into each other. Each is now the hand label over its date, as precise as needed, turned when crowded."""
    from chorus_batch.report.plots import _crowded, _tick_labels

    labels = ["20261130020000", "nightly", *(f"nightly-202612{d:02d}020000" for d in range(1, 5)),
              "a-very-long-hand-label-20261205020000"]
    ticks = _tick_labels(labels, one_line=True)
    assert len(set(ticks)) == len(labels), ticks
    assert ticks[:3] == ["2026-11-30", "nightly", "nightly 2026-12-01"]
    assert ticks[-1] == "a-very-long… 2026-12-05"
    same_day = _tick_labels(["nightly-20261201020000", "nightly-20261201020500"], one_line=False)
    assert same_day == ["nightly\n2026-12-01\n02:00", "nightly\n2026-12-01\n02:05"]
    assert _tick_labels(["20261201020000", "20261202020000"], one_line=False) == ["2026-12-01", "2026-12-02"]
    assert _crowded(_tick_labels(labels, one_line=False), len(labels))
    assert not _crowded(_tick_labels(["20261201020000", "20261202020000"], one_line=False), 2)


def test_a_manifest_under_the_home_folder_is_not_named_by_the_page(tmp_path, monkeypatch):
    """The page named the manifest "/home/alice/m.sqlite" (its "manifest" line, the `python -c` commands that write a
    table as CSV, the command that validates the version): a report a reviewer passes on named their home folder. It
    is written '~/m.sqlite', which open_manifest and --db read back. The site kept there (~/site) was still named in
    full by the page's title, heading and "site" line: it is written '~/site' too."""
    home = tmp_path / "alice"
    home.mkdir()
    site, db = home / "site", home / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/1001/1001.hea", b"1001 1 250 2500\n1001.dat 16 200 16 0 0 0 0 II\n")
    run_site(site, db, validate_site=False)
    monkeypatch.setenv("HOME", str(home))
    info = write_report(db, tmp_path / "r.html")
    text = " ".join(html.unescape(info.path.read_text(encoding="utf-8")).split())
    assert str(home) not in text, re.findall(f".{{80}}{re.escape(str(home))}.{{40}}", text)
    assert "chorus-batch validate --db '~/m.sqlite' checks it" in text, re.findall(r".{80}m.sqlite.{40}", text)
    assert 'open_manifest("~/m.sqlite")' in text
    assert open_manifest("~/m.sqlite").latest() == info.version  # what the page's commands open is this manifest
    assert "<h1>Data-quality report: ~/site</h1>" in text and "<dt>site</dt><dd>~/site</dd>" in text, text[:2000]


def test_person_ids_that_look_alike_are_told_apart_as_files_shows_them(tmp_path):
    """Person ids are folder names: '000001 ' (a trailing space) and '\\u200b000001' (a zero-width space) are other
    persons than 000001, and `files` and the validation messages quote them. The persons table and the implausible
    sessions table wrote them raw, so the browser showed three rows of 000001. They are shown as names now."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    persons = ["000001", "000001 ", "\u200b000001"]
    for person in persons:  # each one session of 1970: an implausible start, listed in the sessions table
        write(site, f"{person}/Waveforms/{person}_19700101_000100_3600.dat", person.encode())
    run_site(site, db)
    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text(encoding="utf-8")
    for section in ("persons", "sessions"):
        body = re.search(rf'<section id="{section}">(.*?)</section>', text, re.DOTALL).group(1)
        cells = {html.unescape(cell) for cell in re.findall(r"<td[^>]*>([^<]*)</td>", body)}
        assert {"000001", "'000001 '", "'\\u200b000001'"} <= cells, (section, sorted(cells))
    assert "\u200b" not in text


def test_only_the_unparseable_reasons_the_table_shows_are_given_examples(tmp_path, monkeypatch):
    """Each folder outside the layout is its own reason: a site with a stray copy of a million folders had a million
    reasons, and examples were built for each of them (16 s of a 50 s report) though the table shows MAX_ROWS. The
    most frequent MAX_ROWS reasons are ranked and given examples; the others are counted for "Showing N of M"."""
    from chorus_batch.report import html as report_html

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    for folder in range(1, 6):  # junk1/ holds 1 file ... junk5/ 5: five reasons, junk5/ the most frequent
        for i in range(folder):
            write(site, f"junk{folder}/f{i}.txt", b"x")
    run_site(site, db, validate_site=False)
    monkeypatch.setattr(report_html, "MAX_ROWS", 2)
    report_html._environment.cache_clear()
    try:
        with report_html._Report(open_manifest(db), open_manifest(db).latest()) as report:
            errors = report.scan_errors()
        text = write_report(db, tmp_path / "r.html").path.read_text(encoding="utf-8")
    finally:
        monkeypatch.undo()
        report_html._environment.cache_clear()
    assert [(reason.split()[1], n) for reason, n, _ in errors["by_reason"]] == [("junk5/", 5), ("junk4/", 4)]
    assert [examples.shown for _, _, examples in errors["by_reason"]] == [
        [f"junk5/f{i}.txt" for i in range(3)], [f"junk4/f{i}.txt" for i in range(3)]]
    assert [examples.more for _, _, examples in errors["by_reason"]] == [2, 1]
    section = re.search(r'<section id="scan-errors">(.*?)</section>', text, re.DOTALL).group(1)
    assert re.search(r"Unparseable paths by reason</h3>.*Showing 2 of 5 rows", section, re.DOTALL), section


# ----------------------------------------------------------------------------- the runs that committed no version


def runs_section(text: str) -> str:
    """The runs section of a rendered page, as text."""
    start = text.index('<section id="runs">')
    return html.unescape(re.sub(r"<[^>]+>", " ", text[start:text.index("</section>", start)]))


def test_nights_that_committed_nothing_are_listed_and_the_latest_failure_flagged(tmp_path):
    """A site whose nightly cron run failed every night since its last version (refused by the lock, an emptied root,
    SIGTERM, a run killed and recorded by the next one): the `runs` table held them, but the report showed only
    versions, a quiet month. They are listed, the most recent first, with what to do; the latest failure is flagged;
    no user name, no path inside the site (a person's folder), no command line is shown."""
    import getpass
    import signal

    from conftest import paused

    from chorus_batch.store.lock import manifest_lock

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for person in ("000001", "000002"):
        write(site, f"{person}/Waveforms/{person}_20200101_000100_3600_0001.dat", person.encode())
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    run_site(site, db)
    base = ["run", "--no-validate", "--site", str(site), "--db", str(db)]

    write(site, "000001/Waveforms/000001_20200101_000100_3600_0002.dat", b"new")  # something to commit each night
    with manifest_lock(db, ["chorus-batch", "run"]):  # last night's run still going: tonight's is turned away
        locked = cli(*base, "-q")
    ended = time.time()
    assert locked.returncode == 4, locked.stderr
    while int(time.time()) == int(ended):  # (times are recorded to the second: the next run starts in a later one)
        time.sleep(0.01)
    proc = paused(*base, at="hashing")  # stopped by SIGTERM (a shutdown, systemd)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    proc = paused(*base, at="hashing")  # SIGKILL: no outcome written, the next run records it
    proc.kill()
    proc.communicate(timeout=60)
    moved = tmp_path / "unmounted"
    site.rename(moved)
    site.mkdir()  # the file system is not mounted: its mount point is there, empty
    refused = cli(*base, "-q")
    assert refused.returncode == 5, refused.stderr

    reader = open_manifest(db)
    failed = reader.runs(failed=True)
    assert failed["exit_code"].to_list() == [5, 137, 143, 4], failed  # the most recent first
    assert failed["version"].null_count() == 4
    said = dict(zip(failed["exit_code"], failed.select("outcome", "message", "what_to_do").rows()))
    assert "locked by another run" in said[4][0] and "(user not shown)" in said[4][1]
    assert "runs overlap" in said[4][2]
    assert "SIGTERM" in said[143][0] and "killed" in said[137][0] and "out-of-memory" in said[137][2]
    assert "lists no files" in said[5][1] and "--max-delete all" in said[5][2]
    everything = " ".join(str(v) for row in reader.runs().rows() for v in row)
    assert f"(user {getpass.getuser()})" not in everything
    assert set(reader.runs().columns).isdisjoint({"host", "user", "pid", "argv"})
    assert reader.runs(since=reader.latest()).height == 4  # every run since the version: none committed one

    info = write_report(db, tmp_path / "r.html")
    text = info.path.read_text(encoding="utf-8")
    section = runs_section(text)
    assert section.index("lists no files") < section.index("killed") < section.index("SIGTERM") < section.index("locked")
    assert "5 runs; 1 committed a version" in section and "4 failed" in section and "No run failed" not in section
    assert f"(user {getpass.getuser()})" not in text and "000001" not in section and "000002" not in section
    assert "--no-validate" not in section  # no command line
    assert info.flags[0].startswith("The latest run, started ") and "failed: exit code 5" in info.flags[0]
    assert "4 failed runs since the first run" in info.flags[0]
    seen = assert_renders(info.path, info)  # (its probe of the page: a second Chromium start saw the same)
    assert "Needs a look" in seen["text"] and "check that the site is mounted and complete" in seen["text"]

    site.rmdir()
    moved.rename(site)  # mounted again: the next night commits, and its report raises no alarm for the last run
    assert run_site(site, db).label is not None
    info = write_report(db, tmp_path / "r2.html")
    section = runs_section(info.path.read_text(encoding="utf-8"))
    assert "4 failed" in section and not any(f.startswith("The latest run") for f in info.flags)


def test_a_manifest_whose_every_run_failed_says_what_the_latest_ended_in(tmp_path):
    """A new site whose first nightly runs all failed (here stopped by SIGTERM before their commit): the manifest holds
    their `runs` rows and no version. The report, the notebook, `files` and the review API said "the manifest has no
    versions yet", fix "run `chorus-batch run`", as if no run had been made: the reviewer was sent to do what had
    failed, not told why. They say how many runs committed none, what the latest ended in, and what to do."""
    import signal

    from conftest import paused

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    for _ in range(2):
        proc = paused("run", "--no-validate", "--site", str(site), "--db", str(db), at="commit")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 143
    assert open_manifest(db).versions().height == 0

    with pytest.raises(UsageError) as said:
        write_report(db, tmp_path / "report.html")
    assert "no versions yet: 2 runs were recorded, none committed a version" in said.value.what
    assert "stopped by SIGTERM" in said.value.what and "give the run the time it needs" in said.value.fix
    for command in (["report", "--out", str(tmp_path / "r.html")], ["files"]):
        done = cli(*command, "--db", str(db))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "2 runs were recorded, none committed a version; the latest (run 2, started " in done.stderr, done.stderr
        assert "stopped by SIGTERM" in done.stderr
    assert not (tmp_path / "r.html").exists()

    fresh = tmp_path / "fresh.sqlite"  # a manifest no run wrote to is still told to run
    shutil.copy(db, fresh)
    sqlite3.connect(fresh).execute("DELETE FROM runs").connection.commit()
    with pytest.raises(UsageError) as said:
        open_manifest(fresh).files()
    assert said.value.what == "the manifest has no versions yet" and "commit one first" in said.value.fix


def test_a_clean_month_shows_no_alarm_and_a_path_in_a_message_is_cut_at_the_root(tmp_path):
    """Nightly runs that committed a version or found nothing to commit: no failed run listed, nothing flagged. A
    message that quotes a file of the site shows the root only (the folder below it is a person's)."""
    from chorus_batch.review import run_message

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "000007/Waveforms/000007_20200101_000100_3600_0001.dat", b"w")
    run_site(site, db)
    run_site(site, db)  # nothing changed
    write(site, "OMOP/person.csv", b"person_id\n7\n")
    run_site(site, db)
    run_site(site, db)
    reader = open_manifest(db)
    assert reader.runs(failed=True).height == 0 and reader.runs().height == 4
    info = write_report(db, tmp_path / "r.html")
    section = runs_section(info.path.read_text(encoding="utf-8"))
    assert "No run failed" in section and "2 had nothing to commit, 0 failed" in section and "Failed runs" not in section
    assert not any("run" in f.lower() and "failed" in f for f in info.flags), info.flags
    first, second = reader.versions()["label"].to_list()
    info = write_report(db, tmp_path / "first.html", version=first)  # up to the next version's commit
    section = runs_section(info.path.read_text(encoding="utf-8"))
    assert f"Since the first run and before version {second}: 2 runs; 1 committed a version" in section, section
    # Times are to the second: on a fast machine the no-change night starts in the second the next version is committed
    # (it was counted after that version): the run that made the version orders the two.
    import sqlite3

    with sqlite3.connect(db) as con:
        (made,) = con.execute("SELECT finished_at FROM versions WHERE label = ?", (second,)).fetchone()
        con.execute("UPDATE runs SET started_at = ? WHERE run_id = 2", (made,))
    con.close()
    assert open_manifest(db).runs(until=second)["run_id"].to_list() == [2, 1]
    assert open_manifest(db).runs(since=second)["run_id"].to_list() == [4]

    said = run_message(f"cannot read {site}/000007/Waveforms/x.dat: Input/output error; nothing was committed",
                       reader.root_locations())
    assert said == f"cannot read {site}/…: Input/output error; nothing was committed"
    assert run_message("locked by another run: pid 9 on host h (user jdoe), started T", []) == \
        "locked by another run: pid 9 on host h (user not shown), started T"


def test_a_snapshot_folder_says_it_does_not_record_runs(two_versions, tmp_path):
    _db, parquet = two_versions
    reader = open_manifest(parquet)
    assert not reader.records_runs and reader.runs().height == 0
    info = write_report(reader, tmp_path / "r.html")
    assert "Runs are not recorded in a snapshot folder" in runs_section(info.path.read_text(encoding="utf-8"))


def test_a_versions_findings_and_scan_errors_are_read_without_a_python_tuple_per_row(tmp_path, monkeypatch):
    """`report` of a 1M-file site with 500,000 findings and 500,000 scan errors peaked at 634 MiB: each was fetched
    whole (fetchall), a Python tuple of strings per row held beside the frame built from them (1M findings: past
    1 GiB). They are fetched FETCH_ROWS at a time; here, by tracemalloc, the read's Python memory is one batch's,
    and the rows are the manifest's, in its order."""
    import tracemalloc

    from chorus_batch import frames

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    label = run_site(site, db).label
    rows = 40_000
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.executemany("INSERT INTO findings VALUES (?, 'warning', 'layout.person_file', ?, ?)",
                        ((label, f"{i}/x_{i:06d}.dat", f"a file lies directly in person folder {i}/" + "m" * 60)
                         for i in range(rows)))
        con.executemany("INSERT INTO scan_errors VALUES (?, ?, 'unparseable', ?)",
                        ((label, f"{i}/y_{i:06d}.dat", f"the path {i}/y_{i:06d}.dat follows no layout" + "e" * 60)
                         for i in range(rows)))
        expected = {"findings": con.execute("SELECT severity, rule, srcfile, message FROM findings WHERE version = ? "
                                            "ORDER BY srcfile, rule, message", (label,)).fetchall(),
                    "scan_errors": con.execute("SELECT srcfile, kind, message FROM scan_errors WHERE version = ? "
                                               "ORDER BY srcfile, kind, message", (label,)).fetchall()}
    monkeypatch.setattr(frames, "FETCH_ROWS", 1_000)
    reader = open_manifest(db)
    reader.validation(label), reader.scan_errors(label)  # (imports and first queries, outside the measure)
    for name, read in (("findings", lambda: reader.validation(label)[0]), ("scan_errors", lambda: reader.scan_errors(label))):
        tracemalloc.start()
        try:
            frame = read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert frame.rows() == expected[name]
        # fetched whole: ~20 MB of tuples and strings; a batch of 1,000 rows: ~0.5 MB
        assert peak < 4 * 2**20, (name, peak)


def test_the_pages_policy_forbids_a_base_and_form_targets_as_well(two_versions, tmp_path):
    """`default-src 'none'` does not cover `base-uri` nor `form-action` (no fallback to it): a `<base>` or a form
    smuggled into the page could still point its links or a submission anywhere. The policy names both 'none'."""
    db, _parquet = two_versions
    text = write_report(db, tmp_path / "r.html").path.read_text(encoding="utf-8")
    metas = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
    assert len(metas) == 1, metas
    policy = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in html.unescape(metas[0]).split(";")) if d}
    assert policy["default-src"] == ["'none'"]
    assert policy.get("base-uri") == ["'none'"], policy
    assert policy.get("form-action") == ["'none'"], policy


@pytest.mark.parametrize("values", [[1, 2, 3], [1, 2, 2, 3, 4], [2, 2], [0, 5, 17], [1, 40, 200], [3, 1000, 5000]])
def test_a_count_histograms_axis_has_whole_number_ticks(values):
    """Sessions per person 1 to 3: the x axis read 1.50, 1.75, ... 3.50, fractions of a count. The histograms of
    counts (files per person, sessions per person) tick at whole numbers, written as counts are (1,000)."""
    from matplotlib.figure import Figure

    from chorus_batch.report.plots import _hist

    ax = Figure().subplots()
    _hist(ax, np.array(values, dtype=float), integer=True)
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert shown and all(float(t).is_integer() for t in shown), shown
    labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", text) for text in labels), labels


def test_a_report_as_of_a_date_says_which_version_that_date_selected(two_versions, tmp_path):
    """`report --version 2099-01-01` wrote the latest version's report as if it were that date's, without a word:
    it says that no version came after the latest, which is reported; a time in another zone names the version
    in force at that instant; a label says nothing more."""
    db, _parquet = two_versions
    versions = open_manifest(db).versions()
    first, second = versions["label"].to_list()[-2:]
    done = cli("report", "--db", str(db), "--version", "2099-01-01", "--out", str(tmp_path / "r.html"))
    assert done.returncode in (0, 1), done.stderr
    assert (f"as of 2099-01-01 (a time in the future): no version was committed after {second} (committed "
            f"{versions['finished_at'][-1]}), so the latest version, {second}, is shown") in done.stdout, done.stdout
    from datetime import datetime, timedelta, timezone
    at = datetime.fromisoformat(versions["finished_at"][-2].replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=-5)))
    info = write_report(db, tmp_path / "r.html", version=at.isoformat())
    if versions["finished_at"][-2] != versions["finished_at"][-1]:
        assert info.version == first and info.as_of == (f"as of {at.isoformat()}: version {first}, committed "
                                                        f"{versions['finished_at'][-2]} (the version in force then)")
    else:  # both committed within one second (commit times are whole seconds): that instant is after the latest
        assert info.version == second and info.as_of.startswith(
            f"as of {at.isoformat()}: no version was committed after {second}"), info.as_of
    assert write_report(db, tmp_path / "r.html", version=second).as_of is None


def test_the_findings_section_counts_findings_in_the_manifest_without_reading_them(tmp_path, monkeypatch):
    """`report` of a site with 500,000 findings in each of two versions read both versions' findings into frames to
    count them and compare them (631 MB peak RSS; 312 MB counted in SQLite). The page reads counts, each rule's first
    findings and the comparison with the previous version from the manifest (findings_overview): the same as the
    frames give (ManifestReader's polars version, which a snapshot folder uses), ties and a site-level finding (no
    path) included, and no version's findings are read whole."""
    from chorus_batch.report.html import _Report
    from chorus_batch.review import ManifestReader, SQLiteReader

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    first = run_site(site, db).label
    write(site, "OMOP/visit.csv", b"visit_id\n1\n")
    second = run_site(site, db).label
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        for label, files in ((first, range(0, 6)), (second, range(3, 9))):
            con.executemany("INSERT INTO findings VALUES (?, ?, ?, ?, ?)",
                            [(label, sev, rule, f"P{i % 4}/f{i}.dat", f"m{i % 2}") for i in files
                             for sev, rule in (("error", "r.a"), ("warning", "r.b"), ("info", "r.a"))]
                            + [(label, "error", "r.a", None, "site-level"), (label, "warning", "r.b", "P0/f3.dat", "m0")])
    reader = open_manifest(db)
    assert isinstance(reader, SQLiteReader)
    got = reader.findings_overview(second, first, examples=3)
    want = ManifestReader.findings_overview(reader, second, first, examples=3)
    key = ["severity", "rule"]
    assert got.groups.sort(key).rows() == want.groups.sort(key).rows()
    assert (got.total, got.validated, got.other_rules, got.since) == (want.total, want.validated, want.other_rules, want.since)
    assert got.since["fixed"]["total"] and got.since["new"]["total"] and got.since["still_open"]["total"]

    def whole(*_a, **_k):
        raise AssertionError("a version's findings read whole")

    monkeypatch.setattr(SQLiteReader, "validation", whole)
    monkeypatch.setattr(SQLiteReader, "_findings", whole)
    with _Report(reader, second) as report:  # the section's values (the page, drawn, takes seconds of plots)
        section = report.findings()
    assert section["since"].startswith(f"Since version {first}: fixed"), section
    ours = [row for row in section["rows"] if row[1] in ("r.a", "r.b")]
    assert [(sev, rule, n) for sev, rule, n, _ex in ours] == [("error", "r.a", 7), ("warning", "r.b", 7),
                                                              ("info", "r.a", 6)], ours
    assert ours[0][3].shown[0] == (None, "site-level")  # no path sorts first, as `findings` lists them
