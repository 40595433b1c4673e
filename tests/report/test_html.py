"""``thinktuning report``: escaping, teacher-span marking, overlays, optional sections, and a real run rendered in
headless Chromium (screenshot and DOM)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from thinktuning.cli import main
from thinktuning.config.load import save_config
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ReportError
from thinktuning.report.html import (
    REPORT_MARKER,
    SCRIPT,
    build_report,
    choose_steps,
    render_response,
    write_report,
)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def rollout(step: int, group: int, index: int, response: str, **kw) -> dict:
    return {
        "step": step, "group": group, "index": index, "question": f"What is {group} + 1?",
        "reference": str(group + 1), "response": response, "guided": False, "teacher_span": None, "opinion": None,
        "no_feedback": False, "teacher_raw": None, "finished": True, "student_correct": 0.0, "reward": 0.0,
        "advantage": -0.5, "response_tokens": 7, **kw,
    }


def make_run(folder: Path, *, preset: str = "cpu-demo", guidance: bool = True, steps: int = 3,
             rollouts: list[dict] | None = None, reward_scale: float = 1.0) -> Path:
    """A run folder as the trainer writes it, with made-up numbers."""
    folder.mkdir(parents=True)
    cfg = ThinkTuningConfig(preset=preset)
    cfg.guidance.enabled = guidance
    save_config(cfg, folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"preset": preset, "total_steps": steps, "started": "today",
                                                 "deviations_from_paper": ["a <b>deviation</b>"]}))
    lines = []
    for s in range(1, steps + 1):
        lines.append(json.dumps({
            "step": s, "reward/mean": reward_scale * s / steps, "accuracy": 0.1 * s, "guidance/fraction": 0.25,
            "guidance/guided": 1 if guidance else 0, "guidance/no_feedback": 1 if guidance else 0,
            "guidance/teacher_token_fraction": 0.2 if guidance else 0.0, "loss/shaped_weight_mean": 0.9,
            "response_length/mean": 50.0, "loss": -0.1, "grad_norm": None, "time/step": 2.0,
        }))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 4, "cut by a cra')
    records = rollouts if rollouts is not None else [rollout(s, 0, i, f"answer {i}") for s in range(1, steps + 1)
                                                     for i in range(2)]
    (folder / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


# ----------------------------------------------------------------------------------------------- unit


def test_model_text_is_escaped_never_markup(tmp_path):
    evil = [
        rollout(1, 0, 0, "x <script>alert(1)</script> y", guided=True, teacher_span=[2, 27],
                opinion='"><script>alert(2)</script>', teacher_raw="<opinion>a</opinion><img src=x onerror=alert(3)>"),
        rollout(1, 0, 1, "</pre></div><script>alert(4)</script>"),
    ]
    evil[0]["question"] = "<iframe src=javascript:alert(5)>"
    page = build_report([make_run(tmp_path / "r<x>", rollouts=evil)])
    assert page.count("<script") == 1  # ours, at the end
    for raw in ("<script>alert", "<img src=x", "<iframe", "</pre></div><script>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;iframe src=javascript:alert(5)&gt;" in page
    assert "r&lt;x&gt;" in page and "a &lt;b&gt;deviation&lt;/b&gt;" in page


def test_teacher_span_marked_at_its_character_offsets():
    text = "I got 5.<b> Wait, 2 + 2 = 4 & not 5. The answer is \\boxed{4}."
    start = text.index(" Wait")
    html = render_response(text, [start, len(text)], "incorrect")
    assert html == ('I got 5.&lt;b&gt;<mark class="teacher" title="teacher (opinion: incorrect)"> Wait, 2 + 2 = 4 '
                    "&amp; not 5. The answer is \\boxed{4}.</mark>")
    # a teacher span in the middle (the student continued after the teacher's reason)
    assert render_response("abcXYZdef", [3, 6]) == 'abc<mark class="teacher" title="teacher">XYZ</mark>def'
    for bad in (None, [6, 3], [0, 99], [-1, 2], ["0", "2"], [1]):
        assert render_response("abcdef", bad) == "abcdef"


def test_guided_rollout_in_the_page_has_its_span_marked(tmp_path):
    resp = "9 + 1 = 11. Wait, 9 + 1 = 10. The answer is \\boxed{10}."
    run = make_run(tmp_path / "run", rollouts=[
        rollout(1, 0, 0, resp, guided=True, teacher_span=[11, len(resp)], opinion="incorrect", reward=1.0,
                advantage=1.5),
        rollout(1, 0, 1, "12", no_feedback=True, teacher_raw="<opinion>"),
    ])
    page = build_report([run])
    marked = re.findall(r'<mark class="teacher"[^>]*>(.*?)</mark>', page)
    assert resp[11:] in marked
    assert 'class="rollout guided correct"' in page and 'class="rollout unguided incorrect"' in page
    assert "teacher says: incorrect" in page and "advantage <b>+1.500</b>" in page
    assert "no usable feedback" in page


def test_several_runs_are_overlaid_with_a_legend(tmp_path):
    tt = make_run(tmp_path / "thinktuning")
    grpo = make_run(tmp_path / "grpo", preset="grpo-baseline", guidance=False, reward_scale=0.5)
    page = build_report([tt, grpo])
    svg = page[page.index("<svg"):page.index("</svg>")]
    for label in ("thinktuning (cpu-demo)", "grpo (grpo-baseline, guidance off)"):
        assert f">{label}<" in svg, label  # legend entries (text stays text in the SVG)
    colors = re.findall(r"stroke: (#[0-9a-f]{6})", svg)
    assert "#1f77b4" in colors and "#d62728" in colors  # one line colour per run
    assert "not measured" in svg  # grad_norm is null in both runs
    assert page.count('<h3>') == 2


def test_page_is_self_contained_and_only_our_script_may_run(tmp_path):
    page = build_report([make_run(tmp_path / "run")])
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page, flags=re.I)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and f"script-src &#x27;sha256-{digest}&#x27;" in csp
    assert f"<script>{SCRIPT}</script>" in page


def test_choose_steps():
    assert choose_steps([]) == []
    assert choose_steps([4]) == [4]
    assert choose_steps([1, 2]) == [1, 2]
    assert choose_steps(list(range(1, 13))) == [1, 6, 12]
    assert choose_steps([1, 2, 3], [3, 99, 3, 1]) == [3, 1]


def test_eval_and_reflection_only_when_present(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    page = build_report([a, b])
    assert "Evaluation" not in page and "Reflection rates" not in page
    (a / "eval.json").write_text(json.dumps({"gsm8k": {"accuracy": 0.41, "n": 1319}}))
    (b / "reflection.json").write_text(json.dumps({"self-critique": 0.125}))
    page = build_report([a, b])
    assert "<h2>Evaluation</h2>" in page and "gsm8k.accuracy" in page and "0.410" in page
    assert "<h2>Reflection rates</h2>" in page and "self-critique" in page and "0.125" in page


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=5)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "step 1 ·" in page and "step 3 ·" in page and "step 5 ·" in page
    out = tmp_path / "out" / "x.html"
    assert main(["report", str(run), "--output", str(out), "--steps", "2,9", "--max-groups", "1"]) == 0
    page = out.read_text()
    assert "step 2 ·" in page and "step 1 ·" not in page and "no rollouts logged for step 9" in page
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a thinktuning run folder"):
        write_report([tmp_path / "empty"])
    assert main(["report", str(run), "--steps", "one"]) == 2


# ------------------------------------------------------------------------------- a real run, in a browser


def chromium(url: str, profile: Path, *extra: str) -> str:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,2400", *extra, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


INJECTED = "I think 2 + 2 = 5. <script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """A real 3-step ThinkTuning run (tiny student, forced guidance) plus one injected hostile rollout."""
    from tests.train.test_trainer import _tiny_cfg, _tiny_student
    from thinktuning import ThinkTuningTrainer
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    root = tmp_path_factory.mktemp("report")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = _tiny_student(root / "student", load_tokenizer(resolve("smollm2-135m-instruct")))
        ThinkTuningTrainer(_tiny_cfg(student, root / "run", ["quiet=true"])).train()
    finally:
        torch.set_num_threads(threads)
    resp = INJECTED + " Wait, let me check again: 2 + 2 = 4. The answer is \\boxed{4}."
    hostile = rollout(1, 0, 99, resp, guided=True, teacher_span=[len(INJECTED), len(resp)], opinion="incorrect",
                      reward=1.0)
    with (root / "run" / "rollouts.jsonl").open("a") as fh:
        fh.write(json.dumps(hostile) + "\n")
    return write_report([root / "run"], root / "report.html")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_real_run_report_renders_in_headless_chromium(real_report, tmp_path):
    from PIL import Image

    url = real_report.resolve().as_uri()
    png = tmp_path / "report.png"
    chromium(url, tmp_path / "profile1", f"--screenshot={png}")
    dom = chromium(url, tmp_path / "profile2", "--dump-dom")

    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (2400, 1280, 3)
    non_white = (image != 255).any(axis=2).mean()
    assert non_white > 0.03, f"page looks blank ({non_white:.1%} non-white pixels)"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
    # mark.teacher's background colour: the key above the viewer spans ~20 pixel rows, rollouts' marks many more
    teacher_rows = (image == (255, 227, 184)).all(axis=2).any(axis=1).sum()
    assert teacher_rows > 80, "no marked teacher span visible in the screenshot"

    assert re.search(r'<svg[^>]*class="plot"', dom) and "reward (mean)" in dom
    assert re.search(r'<pre class="response">[^<]*<mark class="teacher"', dom), "no teacher span in a rollout"
    assert re.search(r"<title>thinktuning report: run \(cpu-demo\)</title>", dom), "a rollout's script ran"
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # shown as text
    assert re.search(r'<html[^>]*class="js"', dom), "the page's own filter script did not run"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_csp_stops_a_script_that_slipped_past_escaping(real_report, tmp_path):
    tampered = tmp_path / "tampered.html"
    tampered.write_text(real_report.read_text().replace("</body>", "<script>document.title='pwned'</script></body>"))
    dom = chromium(tampered.resolve().as_uri(), tmp_path / "profile", "--dump-dom")
    assert "<title>thinktuning report" in dom and "<title>pwned" not in dom
    assert re.search(r'<html[^>]*class="js"', dom)


# ------------------------------------------------------------------------------------ inputs and outputs


def test_metrics_that_are_not_utf8_are_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'\n{"step": 5, "note": "\xff"}\n')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # make_run writes 3 metric lines and one cut short: the bad line is line 5; '{"step": 5, "note": "' is 21 bytes
    assert err.startswith(f"error: {metrics}: line 5 is not UTF-8 text (byte 0xff at column 22: invalid start byte); "
                          "thinktuning writes its logs as ASCII JSON lines")
    assert not (run / "report.html").exists()


def test_report_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    metrics = run / "metrics.jsonl"
    before = metrics.read_bytes()
    assert main(["report", str(run), "--output", str(metrics)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {metrics} exists and is not a report written by thinktuning report; refusing to "
                   "overwrite it. Choose another --output (e.g. a new .html file), or remove that file first\n")
    assert metrics.read_bytes() == before
    # its own reports are replaced: the one it writes now, and one written before the marker existed
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert REPORT_MARKER in page[:300]
    (run / "report.html").write_text(page.replace(REPORT_MARKER, ""))
    assert main(["report", str(run)]) == 0 and REPORT_MARKER in (run / "report.html").read_text()
    (run / "report.html").write_text("<html>my notes</html>")  # the default output is guarded too
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run / 'report.html'} exists and is not a report written")
    assert (run / "report.html").read_text() == "<html>my notes</html>"


def test_report_output_that_is_a_folder_or_cannot_be_created(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: --output {tmp_path} is a folder; give a file path, e.g. --output "
                                       f"{tmp_path / 'report.html'}\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["report", str(run), "--output", str(blocker / "sub" / "r.html")]) == 2
    assert capsys.readouterr().err == (f"error: --output {blocker / 'sub' / 'r.html'} cannot be created: {blocker} is "
                                       "a file, not a folder. Choose another --output\n")


def test_teacher_accounting_totals_each_run(tmp_path):
    guided = make_run(tmp_path / "tt")  # 3 steps, 1 guided and 1 without feedback in each
    plain = make_run(tmp_path / "grpo", guidance=False)
    page = build_report([guided, plain])
    table = page.split("<h2>Teacher accounting, whole run</h2>")[1].split("</table>")[0]
    assert "<td>rollouts guided</td><td>3</td><td>0</td>" in table
    assert "<td>sent to the teacher, no usable feedback</td><td>3</td><td>0</td>" in table
    assert "Teacher accounting" not in build_report([plain])  # no guidance, no table
