"""``thinktuning push``: share a trained run on the Hugging Face Hub.

Three separate steps, so each can be checked on its own: the card is pure text (:mod:`thinktuning.run.card`);
:func:`assemble` writes the upload folder (model and tokenizer of one complete checkpoint, never its optimizer,
scheduler, RNG or trainer state, plus README.md and a plot), which ``--dry-run`` stops after; :func:`upload` is
the only code that talks to the Hub. Every check a user can fail (the run folder, the checkpoint, the repo id,
the token) runs before anything is written or sent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from thinktuning.errors import CheckpointError, ConfigError, OutputPathError, PushError, RunFolderError
from thinktuning.jsonl import read_jsonl
from thinktuning.outputs import check_output_dir
from thinktuning.run import card
from thinktuning.run.checkpoint import check_weights, complete_checkpoints
from thinktuning.run.folder import is_run_folder, protected_reason, read_marker

DEFAULT_OUT = "hub-upload"
TRAINING_STATE = frozenset({"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", "training_args.bin"})
"""What a checkpoint holds only to resume training: never uploaded."""
_STATE_SUFFIXES = (".pt", ".pth")
OWN_FILES = frozenset({"README.md", card.PLOT_NAME})
"""Written by push itself; a checkpoint's own README.md (PEFT writes one) is not taken, nor written through."""
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_STEP = re.compile(r"^(?:step-)?(\d+)$")



def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the Hub spells repo ids (letters, digits, ``-_.``; no ``--`` or ``..``; name ≤ 96)."""
    parts = repo_id.split("/")
    ok = (len(parts) == 2 and all(_REPO_PART.match(p) for p in parts) and len(parts[1]) <= 96
          and "--" not in repo_id and ".." not in repo_id)
    if not ok:
        raise ConfigError(f"--repo-id {repo_id!r} is not a Hub model id: write ORG/NAME with letters, digits, '-', "
                          "'_' or '.' (no '--' or '..'), e.g. --repo-id my-org/smollm2-thinktuning")
    return repo_id


def find_run(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError(f"{run}: no such folder; pass a run folder (the --output-dir of thinktuning train)")
    if not is_run_folder(run):
        raise RunFolderError(f"{run} is not a thinktuning run folder (no run.json written by thinktuning); pass the "
                             "--output-dir of a training run")
    return run


def parse_step(name: str) -> int:
    """``step-N``, ``step-00000N`` or ``N`` -> N."""
    match = _STEP.match(name.strip())
    if not match:
        raise CheckpointError(f"--checkpoint expects step-N (e.g. step-12 or step-000012), got {name!r}")
    return int(match.group(1))


def pick_checkpoint(run: Path, name: str | None) -> Path:
    """The named checkpoint, or the last complete one; only complete ones (with trainer_state.json) qualify."""
    complete = complete_checkpoints(run)
    if not complete:
        raise CheckpointError(f"run {run} has no complete checkpoint (checkpoints/step-N with trainer_state.json); "
                              "train until one is saved (save_every, or the end of the run), then push")
    if name is None:
        return complete[-1]
    step = parse_step(name)
    found = [p for p in complete if int(p.name.removeprefix("step-")) == step]
    if not found:
        raise CheckpointError(f"run {run} has no complete checkpoint step {step}; complete ones: "
                              f"{', '.join(p.name for p in complete)}. Pass one of them to --checkpoint")
    return found[0]


def model_files(ckpt: Path) -> list[Path]:
    """The checkpoint's model and tokenizer files (full weights or a LoRA adapter), without training state."""
    files = sorted(p for p in ckpt.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name not in TRAINING_STATE | OWN_FILES and not p.name.endswith(_STATE_SUFFIXES))
    if not any(p.suffix == ".safetensors" for p in files):
        raise CheckpointError(f"checkpoint {ckpt} holds no model weights (*.safetensors); push another one with "
                              "--checkpoint step-N")
    check_weights(ckpt)  # a truncated weights file is reported now, with the checkpoint before it
    return files


def read_run(run: Path) -> tuple[dict[str, Any], str, dict[str, Any], list[dict[str, Any]]]:
    """config.yaml (parsed and as text), run.json and metrics.jsonl of a run folder."""
    path = run / "config.yaml"
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunFolderError(f"{path} cannot be read ({type(err).__name__}); the card needs the run's resolved "
                             "config: restore config.yaml from a backup of the run") from err
    if not isinstance(config, dict):
        raise RunFolderError(f"{path} is not a config mapping; restore config.yaml from a backup of the run")
    metrics_path = run / "metrics.jsonl"
    metrics = read_jsonl(metrics_path, bad_lines="skip") if metrics_path.is_file() else []
    return config, text, read_marker(run) or {}, metrics


def eval_markdown(run: Path, step: int) -> tuple[str | None, list[str]]:
    """The run's eval table (the full results through ``compare_table``, else the ``eval.json`` summary) with
    local paths cut to file names, and a note when it evaluated another step than the uploaded one."""
    from thinktuning.eval.evaluate import RESULTS_NAME, SUMMARY_NAME

    results, summary = run / RESULTS_NAME, run / SUMMARY_NAME
    if results.is_file():
        from thinktuning.eval.compare import compare_table, load_results

        table = compare_table([results])
        for local in sorted({str(results), str(results.resolve()), str(run.resolve()), str(run)}, key=len,
                            reverse=True):
            table = table.replace(local, Path(local).name)
        lines = [line for line in table.splitlines() if not line.startswith("# ")]
        evaluated = (load_results(results).get("model") or {}).get("step")
        notes = [f"the evaluation is of step {evaluated}, the upload of step {step}"] if evaluated not in (
            None, step) else []
        return "\n".join(lines).strip(), notes
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, [f"{SUMMARY_NAME} could not be read, so no evaluation is shown"]
        return (card.summary_table(data), []) if isinstance(data, dict) else (None, [])
    return None, []


def plot_png(metrics: list[dict[str, Any]], path: Path) -> bool:
    """Reward and accuracy per step as a PNG (the Hub shows images, not inline SVG); False when nothing was
    logged. Reuses the report's series (the last record of a step wins) and titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from thinktuning.report.plots import COLORS, PANELS, series

    keys = ("reward/mean", "accuracy")
    if not any(series(metrics, k)[0] for k in keys):
        return False
    titles = dict(PANELS)
    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for ax, key, color in zip(fig.subplots(1, 2), keys, COLORS, strict=False):
        steps, values = series(metrics, key)
        ax.plot(steps, values, color=color, lw=1.6, marker="o" if len(steps) <= 40 else None, ms=3)
        ax.set_title(titles[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


def is_upload_folder(folder: Path) -> bool:
    """A folder this command wrote before (its README.md is a card tagged thinktuning): the only non-empty
    ``--out`` that is replaced."""
    readme = folder / "README.md"
    try:
        return readme.is_file() and "thinktuning" in card.card_tags(readme.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


def check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputPathError(f"--out {out} is a file or a link, not a folder; choose another --out")
    reason = protected_reason(out, Path.cwd(), Path.home())
    if reason:
        raise OutputPathError(f"--out {out} is {reason}, which is never replaced; choose another --out")
    if out.exists() and any(out.iterdir()) and not is_upload_folder(out):
        raise OutputPathError(f"--out {out} already holds files that are not an upload folder written by "
                              "thinktuning push; choose another --out or empty it")
    check_output_dir(out, "--out")


def _place(src: Path, dst: Path) -> None:
    """A hard link where the disk allows it (a 3B model's weights are not copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _adapter_config(src: Path, dst: Path) -> None:
    """Copy adapter_config.json, naming the embedded alias's Hub id as the base so the adapter loads off this
    machine; a new file, so the checkpoint's own copy stays untouched."""
    config = json.loads(src.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") == card.EMBEDDED_ALIAS:
        config["base_model_name_or_path"] = card.EMBEDDED_HUB_ID
    dst.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def assemble(run: Path, out: Path, repo_id: str, checkpoint: str | None = None) -> list[str]:
    """Write the upload folder ``out`` (replacing an earlier one, atomically) and return its file names."""
    ckpt = pick_checkpoint(run, checkpoint)
    files = model_files(ckpt)
    config, config_text, run_info, metrics = read_run(run)
    check_out(out)
    step = int(ckpt.name.removeprefix("step-"))
    table, notes = eval_markdown(run, step)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            (_adapter_config if f.name == "adapter_config.json" else _place)(f, tmp / f.name)
        plotted = plot_png(metrics, tmp / card.PLOT_NAME)
        inputs = card.CardInputs(repo_id, config, config_text, run_info, metrics, step, table,
                                 card.PLOT_NAME if plotted else None, notes)
        (tmp / "README.md").write_text(card.render_card(inputs), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p.name for p in out.iterdir())


def require_token() -> None:
    """Stop before any work when no Hugging Face token is set (checked again by the Hub itself on upload)."""
    import huggingface_hub

    try:
        token = huggingface_hub.get_token()
    except (OSError, ValueError, RuntimeError) as err:  # an OIDC exchange (HF_OIDC_RESOURCE) that failed
        raise PushError(f"the Hugging Face token could not be obtained ({type(err).__name__}: {str(err)[:200]}); "
                        "run `hf auth login` or set HF_TOKEN, then push again") from err
    if not token:
        raise PushError("no Hugging Face token found: run `hf auth login` (`huggingface-cli login` in older "
                        "huggingface_hub) or set HF_TOKEN, then push again (--dry-run needs no token)")


def upload(folder: Path, repo_id: str, private: bool) -> str:
    """Create the repo if needed and upload the folder as one commit; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload model trained with thinktuning")
    except (TypeError, AttributeError, NameError):
        raise  # a bug here, not a Hub answer: keep the traceback
    except Exception as err:  # network, HTTP 401/403/5xx, rate limits: one line
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise PushError(f"upload to {repo_id} failed ({type(err).__name__}: {first}); the folder {folder} is "
                        "ready. Check the repo id, that your token can write to it, and the network; then push "
                        "again") from err
    return str(url)


def add_parser(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser("push", help="share a trained run on the Hugging Face Hub (model card, weights, plot)")
    push.add_argument("run_dir", metavar="RUN_DIR", help="run folder of thinktuning train")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub model repo to create or update")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--dry-run", action="store_true", help="write the upload folder and stop (no token needed)")
    push.add_argument("--checkpoint", default=None, metavar="step-N",
                      help="which checkpoint (default: the last complete one)")
    push.add_argument("--out", default=None, metavar="DIR",
                      help=f"where to write the upload folder (default: RUN_DIR/{DEFAULT_OUT})")


def cmd_push(args: argparse.Namespace) -> int:
    repo_id = check_repo_id(args.repo_id)
    run = find_run(args.run_dir)
    if not args.dry_run:
        require_token()
    out = Path(args.out) if args.out else run / DEFAULT_OUT
    names = assemble(run, out, repo_id, args.checkpoint)
    print(f"push: wrote {out} ({', '.join(names)})", flush=True)
    if args.dry_run:
        again = ["thinktuning", "push", str(run), "--repo-id", repo_id, *(["--private"] if args.private else []),
                 *(["--checkpoint", args.checkpoint] if args.checkpoint else []),
                 *(["--out", args.out] if args.out else [])]
        print(f"dry run: nothing uploaded; to upload: {shlex.join(again)}", flush=True)
        return 0
    url = upload(out, repo_id, args.private)
    print(f"pushed to {url}{' (private)' if args.private else ''}", flush=True)
    return 0
