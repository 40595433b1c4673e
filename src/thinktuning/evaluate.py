"""``thinktuning eval``: generate on benchmarks through a generation backend, score with the trainer's checker,
write one results JSON that a person can audit item by item.

Generation sits behind one small interface (:class:`Generator`) so that other engines (an OpenAI-compatible
server, vLLM) can plug in by adding an entry to :data:`BACKENDS`; the ``transformers`` backend reuses the trainer's
own sampling loop (``generation.sample``) and its chat formatting, so an evaluated prompt is token for token the
prompt the model was trained on. Scoring is the training reward's: the last ``\\boxed{}`` answer checked by
math-verify in a killable worker (``rewards.AnswerChecker``), and a truncated response counts as wrong, as in
training; GPQA's letters are compared exactly.
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
from typing import Any, Protocol

from thinktuning.answers import extract_answer
from thinktuning.checker import AnswerChecker
from thinktuning.eval_benchmarks import Benchmark, extract_choice
from thinktuning.eval_metrics import avg_at_k, k_values, maj_at_k, mean, pass_at_k
from thinktuning.reflection import reflection_rates
from thinktuning.rewards import correctness_reward

__all__ = ["BACKENDS", "EvalSettings", "Generation", "Generator", "TransformersGenerator", "evaluate",
           "resolve_eval_model", "score_benchmark", "summary"]

RESULTS_NAME = "eval_results.json"  # the full results file in a run folder; ``compare RUN_DIR`` reads it
SUMMARY_NAME = "eval.json"  # {benchmark: {metric: value}}: the table ``thinktuning report`` shows
FORMAT = 1


@dataclass(frozen=True)
class Generation:
    """One response: its text, its length in generated tokens (end-of-turn excluded), and whether it ended by
    itself (False: cut at ``max_new_tokens``)."""

    text: str
    num_tokens: int
    finished: bool


class Generator(Protocol):
    """What a generation backend provides. ``prompts`` are user-turn texts; the backend applies the chat format."""

    name: str

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool) -> list[list[Generation]]:
        """``n`` responses per prompt, in prompt order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the numbers; recorded verbatim in the results."""

    samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    answer_fallback: str = "none"
    limit: int | None = None
    levels: tuple[int, ...] = (1, 2)
    backend: str = "transformers"
    batch_size: int = 32
    dtype: str = "float32"
    base_url: str | None = None
    """``--backend openai``: the server's API root, e.g. http://127.0.0.1:8000/v1."""
    server_model: str | None = None
    """``--backend openai``: the model name to request (default: ``--model``; ``auto``: the server's first)."""
    api_key_env: str | None = None
    concurrency: int = 8
    timeout_s: float = 600.0

    @property
    def greedy(self) -> bool:
        """One sample means greedy decoding (the usual "accuracy"); several are sampled at ``temperature``."""
        return self.samples == 1

    def check(self) -> None:
        from thinktuning.errors import ConfigError

        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"need --temperature > 0 and 0 < --top-p <= 1, got {self.temperature}, {self.top_p}")
        if self.answer_fallback not in ("none", "last_number"):
            raise ConfigError(f"--answer-fallback must be none or last_number, got {self.answer_fallback!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r} is not available; available: {', '.join(BACKENDS)}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("--backend openai needs --base-url (the server's API root, e.g. http://127.0.0.1:8000/v1)")
        if self.backend != "openai" and self.base_url:
            raise ConfigError(f"--base-url is for --backend openai (the backend is {self.backend})")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise ConfigError(f"need --concurrency >= 1 and --timeout > 0, got {self.concurrency}, {self.timeout_s}")
        if not self.levels or not set(self.levels) <= {1, 2, 3, 4}:
            raise ConfigError(f"--levels must be arithmetic levels among 1,2,3,4, got {list(self.levels)}")


# --------------------------------------------------------------------------------------------------------
# The transformers backend
# --------------------------------------------------------------------------------------------------------


class TransformersGenerator:
    """Batched generation with the trainer's KV-cache loop on a ``transformers`` causal LM."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 32, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        import torch

        from thinktuning.models import end_of_turn_id

        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.eos_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.rng = torch.Generator().manual_seed(seed)  # sampling draws on the CPU (generation.sample)
        self.progress = progress

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """User turns in the chat template with the assistant header: the trainer's own encoding."""
        from thinktuning.models import encode_user_turns

        return encode_user_turns(self.tokenizer, list(texts))

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool) -> list[list[Generation]]:
        from thinktuning.generation import sample

        ids = self.encode(prompts)
        # similar lengths share a batch: less left padding to compute over
        jobs = [i for i in sorted(range(len(ids)), key=lambda i: len(ids[i])) for _ in range(n)]
        out: list[list[Generation]] = [[] for _ in ids]
        n_batches = (len(jobs) + self.batch_size - 1) // self.batch_size
        for b, start in enumerate(range(0, len(jobs), self.batch_size), start=1):
            chunk = jobs[start : start + self.batch_size]
            rollouts = sample(self.model, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, eos_id=self.eos_id,
                              pad_id=self.pad_id, temperature=temperature, top_p=top_p, greedy=greedy,
                              generator=self.rng, batch_size=len(chunk))
            for i, r in zip(chunk, rollouts, strict=True):
                body = r.response_ids[:-1] if r.finished else r.response_ids
                out[i].append(Generation(self.tokenizer.decode(body, skip_special_tokens=True), len(body), r.finished))
            if self.progress is not None:
                self.progress(f"batch {b}/{n_batches}")
        return out

    def prompt_lengths(self, prompts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.encode(prompts)]

    def close(self) -> None:
        pass


def _transformers_backend(resolved, settings: EvalSettings, progress: Callable[[str], None] | None) -> Generator:
    import torch

    from thinktuning.models import load_model, load_tokenizer

    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, settings.dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return TransformersGenerator(model, tokenizer, batch_size=settings.batch_size, seed=settings.seed,
                                 progress=progress)


def _openai_backend(model_name: str, settings: EvalSettings, progress: Callable[[str], None] | None) -> Generator:
    from thinktuning.errors import ConfigError
    from thinktuning.eval_server import OpenAIGenerator
    from thinktuning.openai_client import OpenAIClient, normalize_base_url

    name = settings.server_model or model_name
    try:
        normalize_base_url(settings.base_url or "")
    except ConfigError as e:
        raise ConfigError(f"--base-url={e}") from None
    try:
        client = OpenAIClient(settings.base_url or "", None if name == "auto" else name,
                              api_key_env=settings.api_key_env, concurrency=settings.concurrency,
                              timeout_s=settings.timeout_s)
    except ConfigError as e:
        raise ConfigError(f"eval --backend openai: {e} (--api-key-env)") from None
    return OpenAIGenerator(client, seed=settings.seed, progress=progress)


BACKENDS: dict[str, Callable[..., Generator]] = {"transformers": _transformers_backend, "openai": _openai_backend}
"""Backend name -> factory(resolved_model, settings, progress). Only backends that exist are listed."""


# --------------------------------------------------------------------------------------------------------
# Model resolution: spec, checkpoint folder, or run folder
# --------------------------------------------------------------------------------------------------------


def resolve_eval_model(spec: str):
    """``(ResolvedModel, info)`` for a model spec, a checkpoint folder, or a run folder (its last checkpoint)."""
    from thinktuning.checkpoint import latest_checkpoint
    from thinktuning.errors import ModelNotFoundError
    from thinktuning.models import resolve

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
                         "truncated": not g.finished} for g, a_i, v_i in zip(gens, a, v, strict=True)],
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
    return {"metrics": metrics, "reflection": reflection_rates(texts), "items": items}


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
    ordered = {name: {k: r[k] for k in ("source", "version", "kind", "metrics", "reflection", "checker",
                                         "wall_time_s", "items")} for name, r in per_bench.items()}
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
    the results (and, for a run folder, its ``eval.json`` summary for ``thinktuning report``)."""
    from thinktuning.errors import ConfigError
    from thinktuning.eval_benchmarks import load_benchmark
    from thinktuning.models import context_limit

    req.settings.check()
    benches = [load_benchmark(b, req.data_dir, req.settings.limit, req.settings.seed, req.settings.levels)
               for b in req.benchmarks]
    if req.settings.backend == "openai":  # the model lives on the server: --model is the name to request
        resolved, info = req.model, {"spec": req.model, "server": req.settings.base_url}
    else:
        resolved, info = resolve_eval_model(req.model)
    generator = BACKENDS[req.settings.backend](resolved, req.settings, lambda s: log(f"  generated {s}"))
    model = getattr(generator, "model", None)
    if model is not None and hasattr(generator, "prompt_lengths"):
        limit = context_limit(model.config)
        longest = max(max(generator.prompt_lengths([ex.prompt for ex in b.examples])) for b in benches)
        if limit is not None and longest + req.settings.max_new_tokens > limit:
            raise ConfigError(f"the longest prompt ({longest} tokens) plus --max-new-tokens "
                              f"{req.settings.max_new_tokens} exceeds the model's context of {limit} tokens; "
                              "lower --max-new-tokens")
    run_dir = info.get("run_dir")
    out = Path(req.output) if req.output else (Path(run_dir) / RESULTS_NAME if run_dir else Path(RESULTS_NAME))
    try:
        results = evaluate(generator, benches, req.settings, info, log, on_partial=lambda r: write_json(out, r))
    finally:
        generator.close()
    write_json(out, results)
    req.written.append(str(out))
    if run_dir and not req.output:
        write_json(Path(run_dir) / SUMMARY_NAME, summary(results))
        req.written.append(str(Path(run_dir) / SUMMARY_NAME))
    return results
