"""``thinktuning eval``: generate on benchmarks, score with the trainer's checker, and write one results JSON that a
person can audit item by item.

Scoring is the training reward's: the last ``\\boxed{}`` answer checked by math-verify in a killable worker
(:class:`~thinktuning.rewards.checker.AnswerChecker`), and a truncated response counts as wrong, as in training;
GPQA's letters are compared exactly.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from thinktuning.eval.benchmarks import Benchmark, extract_choice
from thinktuning.eval.generators import BACKENDS, Generation, Generator
from thinktuning.eval.metrics import avg_at_k, k_values, maj_at_k, mean, pass_at_k
from thinktuning.eval.reflection import reflection_rates
from thinktuning.eval.settings import EvalSettings
from thinktuning.outputs import check_output_file
from thinktuning.rewards.answers import extract_answer
from thinktuning.rewards.checker import AnswerChecker
from thinktuning.rewards.functions import correctness_reward
from thinktuning.secrets import scrub_tree

RESULTS_NAME = "eval_results.json"  # the full results file in a run folder; ``compare RUN_DIR`` reads it
SUMMARY_NAME = "eval.json"  # {benchmark: {metric: value}}: the table ``thinktuning report`` shows
FORMAT = 1



# --------------------------------------------------------------------------------------------------------
# Model resolution: spec, checkpoint folder, or run folder
# --------------------------------------------------------------------------------------------------------


def resolve_eval_model(spec: str):
    """``(ResolvedModel, info)`` for a model spec, a checkpoint folder, or a run folder (its last checkpoint). A run
    checkpoint whose weights are truncated is a CheckpointError here, before any model is loaded."""
    from thinktuning.errors import ModelNotFoundError
    from thinktuning.models.resolve import resolve
    from thinktuning.run.checkpoint import check_weights, latest_checkpoint

    path = Path(spec).expanduser()
    info: dict[str, Any] = {"spec": spec}
    is_model_folder = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    if path.is_dir() and not is_model_folder and ((path / "checkpoints").is_dir() or (path / "config.yaml").is_file()):
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ModelNotFoundError(f"run folder {path} has no complete checkpoint (looked in {path / 'checkpoints'} "
                                     "for step-N folders with trainer_state.json); train with save_every > 0, or pass "
                                     "a model or checkpoint folder")
        info["run_dir"] = str(path)
        path = ckpt
    if path.is_dir() and (path / "trainer_state.json").is_file():
        info["checkpoint"] = str(path)
        try:
            info["step"] = json.loads((path / "trainer_state.json").read_text()).get("step")
        except (OSError, ValueError):
            info["step"] = None
        check_weights(path)
    resolved = resolve(str(path) if "checkpoint" in info else spec)
    info.update(path=resolved.path, kind=resolved.kind)
    return resolved, info


# --------------------------------------------------------------------------------------------------------
# Scoring and metrics
# --------------------------------------------------------------------------------------------------------


def score_benchmark(bench: Benchmark, generations: list[list[Generation]], settings: EvalSettings,
                    checker: AnswerChecker) -> dict[str, Any]:
    """Verdicts, metrics and per-item records of one benchmark's generations."""
    flat = [(ex, g) for ex, gens in zip(bench.examples, generations, strict=True) for g in gens]
    texts = [g.text for _, g in flat]
    if bench.kind == "choice":
        answers = [extract_choice(t) for t in texts]
        verdicts = [g.finished and a == ex.reference for (ex, g), a in zip(flat, answers, strict=True)]
    else:
        answers = [extract_answer(t, settings.answer_fallback) for t in texts]
        rewards = correctness_reward([ex.prompt for ex, _ in flat], texts, [ex.reference for ex, _ in flat],
                                     [not g.finished for _, g in flat], answer_fallback=settings.answer_fallback,
                                     checker=checker)
        verdicts = [r == 1.0 for r in rewards]
    items, per_item = [], []
    pos = 0
    for ex, gens in zip(bench.examples, generations, strict=True):
        v, a = verdicts[pos : pos + len(gens)], answers[pos : pos + len(gens)]
        per_item.append((v, a))
        items.append({
            "id": ex.id, "question": ex.question, "prompt": ex.prompt, "reference": ex.reference,
            "samples": [{"response": g.text, "extracted": a_i, "correct": v_i, "tokens": g.num_tokens,
                         "truncated": not g.finished, **({"error": g.error} if g.error is not None else {})}
                        for g, a_i, v_i in zip(gens, a, v, strict=True)],
        })
        pos += len(gens)
    k = settings.samples
    metrics: dict[str, Any] = {"n": len(bench.examples), "accuracy": mean([avg_at_k(v) for v, _ in per_item])}
    if k > 1:
        metrics[f"avg@{k}"] = metrics["accuracy"]
        for kk in k_values(k):
            metrics[f"pass@{kk}"] = mean([pass_at_k(k, sum(v), kk) for v, _ in per_item])
        metrics[f"maj@{k}"] = mean([float(maj_at_k(a, v)) for v, a in per_item])
    metrics["mean_response_tokens"] = mean([g.num_tokens for _, g in flat])
    metrics["truncation_rate"] = mean([float(not g.finished) for _, g in flat])
    metrics["no_answer_rate"] = mean([float(a is None) for a in answers])
    failed = request_failures([g for _, g in flat])
    return {"metrics": metrics, "reflection": reflection_rates(texts), "items": items, "failed_requests": failed,
            "complete": not all_failed(failed)}


def request_failures(generations: Sequence[Generation]) -> dict[str, Any]:
    """How many of a benchmark's requests failed (a server's 401, a timeout...) and the first error, on one line:
    a failed request is scored wrong, and the results must say it was not the model's answer."""
    errors = [g.error for g in generations if g.error is not None]
    first = " ".join(errors[0].split())[:300] if errors else None
    return {"count": len(errors), "of": len(generations), "first_error": first}


def all_failed(failures: dict[str, Any]) -> bool:
    """Every request failed: the benchmark's numbers measure the server, not the model."""
    return failures["of"] > 0 and failures["count"] == failures["of"]


def failed_benchmarks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{benchmark: failed_requests}`` of the benchmarks whose every request failed."""
    return {name: b["failed_requests"] for name, b in results["benchmarks"].items()
            if "failed_requests" in b and all_failed(b["failed_requests"])}


def macro_average(per_bench: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks of every metric they all report (a small benchmark counts as much as a big
    one: the usual "average" column of reasoning papers)."""
    if not per_bench:
        return {}
    results = list(per_bench.values())
    keys = [k for k in results[0]["metrics"] if k != "n" and all(k in r["metrics"] for r in results)]
    out: dict[str, Any] = {k: mean([r["metrics"][k] for r in results]) for k in keys}
    out["reflection"] = {b: mean([r["reflection"][b] for r in results]) for b in results[0]["reflection"]}
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("thinktuning", "torch", "transformers", "datasets", "math-verify", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def evaluate(generator: Generator, benchmarks: Sequence[Benchmark], settings: EvalSettings, model_info: dict,
             log: Callable[[str], None] = lambda s: None,
             on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Generate and score every benchmark; the full results object (see the module docstring).

    ``on_partial`` gets the results so far (``"complete": false``) after each benchmark but the last, so a long
    evaluation that is stopped keeps the benchmarks it finished.
    """
    started = time.time()
    per_bench: dict[str, dict[str, Any]] = {}
    with AnswerChecker() as checker:
        for bench in benchmarks:
            t0 = time.time()
            log(f"{bench.name}: {len(bench.examples)} items x {settings.samples} "
                f"{'greedy' if settings.greedy else 'sampled'} response(s)")
            gens = generator.generate([ex.prompt for ex in bench.examples], n=settings.samples,
                                      temperature=settings.temperature, top_p=settings.top_p,
                                      max_new_tokens=settings.max_new_tokens, greedy=settings.greedy)
            scored = score_benchmark(bench, gens, settings, checker)
            scored.update(source=bench.source, version=bench.version, kind=bench.kind,
                          wall_time_s=round(time.time() - t0, 2),
                          checker={"timeouts": checker.timeouts, "errors": checker.errors})
            per_bench[bench.name] = scored
            m = scored["metrics"]
            log(f"{bench.name}: accuracy {m['accuracy']:.3f}, mean length {m['mean_response_tokens']:.0f} tokens, "
                f"truncated {m['truncation_rate']:.0%} ({scored['wall_time_s']:.0f} s)")
            failed = scored["failed_requests"]
            if failed["count"]:
                log(f"{bench.name}: {failed['count']} of {failed['of']} requests failed and were scored wrong "
                    f"(first: {failed['first_error']})")
            if on_partial is not None and len(per_bench) < len(benchmarks):
                on_partial(_results(per_bench, settings, generator.name, model_info, started, complete=False))
    return _results(per_bench, settings, generator.name, model_info, started, complete=True)


def _results(per_bench: dict[str, dict[str, Any]], settings: EvalSettings, backend: str, model_info: dict,
             started: float, complete: bool) -> dict[str, Any]:
    settings_out = asdict(settings)
    settings_out.update(greedy=settings.greedy, levels=list(settings.levels), truncated_counts_as_wrong=True,
                        accuracy_is="greedy" if settings.greedy else f"avg@{settings.samples}")
    if settings.greedy:  # not used: recording them would suggest they shaped the numbers
        settings_out.update(temperature=None, top_p=None)
    ordered = {name: {k: r[k] for k in ("source", "version", "kind", "complete", "metrics", "failed_requests",
                                         "reflection", "checker", "wall_time_s", "items")}
               for name, r in per_bench.items()}
    complete = complete and all(r["complete"] for r in per_bench.values())  # a benchmark whose requests all failed
    return {
        "format": FORMAT, "complete": complete, "model": model_info, "backend": backend, "settings": settings_out,
        "macro_average": macro_average(per_bench), "benchmarks": ordered, "versions": _versions(),
        "command": " ".join(sys.argv), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_time_s": round(time.time() - started, 2),
    }


def summary(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{benchmark: {metric: value}}`` plus ``macro_average``: the shape ``thinktuning report`` tables."""
    out = {name: {**b["metrics"], "reflection": b["reflection"]} for name, b in results["benchmarks"].items()}
    out["macro_average"] = results["macro_average"]
    return out


def write_json(path: Path, obj: Any) -> None:
    """Atomic write: a results file is complete or absent, never half-written by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class EvalRequest:
    """What the CLI asks for; :func:`run_eval` is the I/O edge that loads, evaluates and writes."""

    model: str
    benchmarks: list[str]
    settings: EvalSettings
    data_dir: str | None = None
    output: str | None = None
    written: list[str] = field(default_factory=list)


def run_eval(req: EvalRequest, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Load benchmarks first (a missing one fails before minutes of model loading), then the model; evaluate; write
    the results (and, for a run folder, its ``eval.json`` summary for ``thinktuning report``). Log lines and results
    are scrubbed of the API key and URL passwords (the results record the settings and the command line)."""
    from thinktuning.errors import ConfigError
    from thinktuning.eval.benchmarks import load_benchmark

    req.settings.check()
    scrub = req.settings.scrubber()
    unscrubbed_log, log = log, lambda s: unscrubbed_log(scrub(s))
    if req.output:  # results must never be lost after a long evaluation: the file is checked first
        check_output_file(req.output, "--output", RESULTS_NAME)
    benches = [load_benchmark(b, req.data_dir, req.settings.limit, req.settings.seed, req.settings.levels)
               for b in req.benchmarks]
    if req.settings.backend == "openai":  # the model lives on the server: --model is the name to request
        resolved, info = req.model, {"spec": req.model, "server": scrub(req.settings.base_url or "")}
    else:
        resolved, info = resolve_eval_model(req.model)
    run_dir = info.get("run_dir")
    out = Path(req.output) if req.output else (Path(run_dir) / RESULTS_NAME if run_dir else Path(RESULTS_NAME))
    if not req.output:  # the default paths, known once the model is resolved
        for path in [out] + ([Path(run_dir) / SUMMARY_NAME] if run_dir else []):
            check_output_file(path, "--output", RESULTS_NAME, default=True)
    generator = BACKENDS[req.settings.backend](resolved, req.settings, lambda s: log(f"  generated {s}"))
    try:
        limit = getattr(generator, "context", None)  # a model served elsewhere (openai) is its server's to check
        if limit is not None:
            longest = max(max(generator.prompt_lengths([ex.prompt for ex in b.examples])) for b in benches)
            if longest + req.settings.max_new_tokens > limit:
                raise ConfigError(f"the longest prompt ({longest} tokens) plus --max-new-tokens "
                                  f"{req.settings.max_new_tokens} exceeds the model's context of {limit} tokens; "
                                  "lower --max-new-tokens")
            if hasattr(generator, "reserve"):  # engines that size a cache for the longest sequence (vllm)
                generator.reserve(longest + req.settings.max_new_tokens)
        results = evaluate(generator, benches, req.settings, info, log,
                           on_partial=lambda r: write_json(out, scrub_tree(r, scrub)))
    finally:
        generator.close()
    results = scrub_tree(results, scrub)
    write_json(out, results)
    req.written.append(str(out))
    if run_dir and not req.output:
        write_json(Path(run_dir) / SUMMARY_NAME, summary(results))
        req.written.append(str(Path(run_dir) / SUMMARY_NAME))
    return results
