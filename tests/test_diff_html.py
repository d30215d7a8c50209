"""The HTML report in a real headless Chromium: it loads offline, draws, has no console errors.

Chromium is required (Debian: `apt-get install -y chromium`); without it these tests fail,
they never skip. The screenshot is kept in test-artifacts/ (gitignored) for CI to upload.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tensortap as tt
from conftest import ROOT
from tensortap.report.diff_html import render_html
from diff_helpers import PLANTED_MODULE, runs  # noqa: F401  (fixture)

ARTIFACTS = ROOT / "test-artifacts"
HOSTILE = '</script><img src=x onerror="document.title=\'pwned\'"><b>bold</b>'


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and Path("/usr/bin/chromium").exists():
        exe = "/usr/bin/chromium"
    assert exe, "headless Chromium is required for the HTML report tests: apt-get install -y chromium"
    return exe


def run_chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def console_messages(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (errors, uncaught exceptions, logs)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.fixture(scope="module")
def report_html(runs, tmp_path_factory) -> Path:
    # A hostile module name (via a rename rule) must show up as text, never as markup.
    rep = tt.diff(runs.a, runs.bug, mapping={r"^model\.layers\.0\.mlp$": HOSTILE})
    assert any(r.module == HOSTILE for r in rep.rows)
    return rep.to_html(tmp_path_factory.mktemp("html") / "report.html")


def test_html_is_self_contained(report_html):
    text = report_html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "no external resources"
    assert "<link" not in text and "@import" not in text
    assert HOSTILE not in text  # escaped in the embedded JSON


def test_html_renders_in_chromium(report_html, tmp_path):
    r = run_chromium(tmp_path, report_html.as_uri(), "--dump-dom")
    dom = r.stdout
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-plot-rendered="3"' in html_tag, html_tag  # one plot per step
    assert "data-js-error" not in html_tag
    assert console_messages(r.stderr) == [], console_messages(r.stderr)
    rows = int(re.search(r'data-table-rows="(\d+)"', html_tag).group(1))
    assert rows > 100
    assert dom.count("<circle") > 100  # the points of the plots
    # The first divergence is highlighted in the table and named in the verdict.
    assert re.search(r'<tr id="row-\d+" class="first">', dom)
    assert f"DIVERGED at {PLANTED_MODULE}" in dom
    # The hostile name is text: escaped, no injected element, title untouched.
    assert "&lt;/script&gt;&lt;img src=x" in dom
    assert "<img" not in dom and "<b>bold</b>" not in dom
    assert "<title>pwned" not in dom


def test_filter_and_sort_from_url(report_html, tmp_path):
    r = run_chromium(tmp_path, report_html.as_uri() + "#filter=down_proj&status=bad&sort=-rel_l2", "--dump-dom")
    dom = r.stdout
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-table-rows="1"' in html_tag  # down_proj introduced it at step 0; later steps carry it
    body = dom.split('<tbody id="body">')[1].split("</tbody>")[0]
    values = [float(x) for x in re.findall(r'<td class="num">([0-9.e+-]+)</td>', body)]
    assert values, body[:500]
    assert console_messages(r.stderr) == []


def test_screenshot_artifact(report_html, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "diff-report.png"
    shot.unlink(missing_ok=True)
    run_chromium(tmp_path, report_html.as_uri(), f"--screenshot={shot}", "--window-size=1400,1600",
                 "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_a_script_error_would_be_caught(report_html, tmp_path):
    """Negative control: the checks above do see a broken page."""
    broken = tmp_path / "broken.html"
    broken.write_text(report_html.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    r = run_chromium(tmp_path, broken.as_uri(), "--dump-dom")
    assert "data-js-error" in re.search(r"<html[^>]*>", r.stdout).group(0)
    assert any("undefinedFunction" in ln for ln in console_messages(r.stderr))


def test_empty_report_renders(tmp_path):
    doc = {"run_a": "<a>", "run_b": "b&", "floor": None, "verdict": "agree", "exit_code": 0,
           "summary": "AGREE", "first_divergence": None, "counts": {"pairs": 0}, "warnings": ["<i>w</i>"],
           "rows": [], "unmatched": []}
    page = tmp_path / "empty.html"
    page.write_text(render_html(doc))
    r = run_chromium(tmp_path, page.as_uri(), "--dump-dom")
    html_tag = re.search(r"<html[^>]*>", r.stdout).group(0)
    assert 'data-plot-rendered="0"' in html_tag and "data-js-error" not in html_tag
    assert "&lt;i&gt;w&lt;/i&gt;" in r.stdout and console_messages(r.stderr) == []
