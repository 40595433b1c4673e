"""Peak memory of a short cpu-demo run: full fine-tuning with a separate frozen teacher copy vs LoRA whose teacher is
the same model with its adapters off.

    python benchmarks/memory_lora.py [--steps 2] [--set key=value ...]

Each setup runs in its own fresh process (peak RSS is per process and never goes down), which reports
``ru_maxrss`` (the kernel's exact high-water mark of resident memory) and its RSS right after the imports, before
any model is loaded: the difference is what the run itself needed. Times are printed too, but on a shared machine
only the memory is meaningful.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {
    "full": ("full fine-tuning", "separate frozen copy", []),
    "lora": ("LoRA r=16, all-linear", "same model, adapters off", ["lora.enabled=true"]),
}


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(setup: str, steps: int, sets: list[str]) -> dict:
    """Run one setup in this process and measure it."""
    import torch

    from thinktuning import ThinkTuningTrainer, load_config

    after_imports = rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("cpu-demo", [*SETUPS[setup][2], *sets], output_dir=str(Path(tmp) / "run"),
                          max_steps=steps, quiet=True)
        t0 = time.perf_counter()
        trainer = ThinkTuningTrainer(cfg)
        model = trainer.accelerator.unwrap_model(trainer.model)
        held = {id(p): p for p in model.parameters()}
        for extra in (getattr(trainer.teacher, "model", None), trainer.ref_model):
            if extra is not None:
                held.update({id(p): p for p in extra.parameters()})
        history = trainer.train()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "setup": setup,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "param_mib_held": sum(p.numel() * p.element_size() for p in held.values()) / 2**20,
        "rss_after_imports_mib": after_imports,
        "peak_rss_mib": peak,
        "guided": sum(m["guidance/guided"] for m in history),
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra config override (both setups)")
    parser.add_argument("--only", choices=sorted(SETUPS), help="measure one setup")
    parser.add_argument("--parallel", action="store_true",
                        help="run the setups at the same time (each still in its own process: peak RSS is per process)")
    parser.add_argument("--child", choices=sorted(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.set)), flush=True)
        return
    rows, setups = [], [args.only] if args.only else list(SETUPS)
    procs = []
    for setup in setups:
        argv = [sys.executable, __file__, "--child", setup, "--steps", str(args.steps)]
        for item in args.set:
            argv += ["--set", item]
        procs.append((setup, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if not args.parallel:
            procs[-1] = (setup, procs[-1][1], procs[-1][1].communicate())
    for setup, proc, *done in procs:
        out, err = done[0] if done else proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"setup {setup} failed (rc {proc.returncode}):\n{err[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"cpu-demo, {args.steps} steps, one fresh process per setup")
    print(f"| {'setup':<22} | {'teacher':<26} | {'trainable':>11} | {'weights held':>12} | {'RSS after imports':>17} "
          f"| {'peak RSS':>9} | {'peak - imports':>14} | {'guided':>6} | {'time':>6} |")
    print("|" + "|".join("-" * w for w in (24, 28, 13, 14, 19, 11, 16, 8, 8)) + "|")
    for r in rows:
        label, teacher, _ = SETUPS[r["setup"]]
        print(f"| {label:<22} | {teacher:<26} | {r['trainable_params']:>11,} | {r['param_mib_held']:>8.0f} MiB "
              f"| {r['rss_after_imports_mib']:>13.0f} MiB | {r['peak_rss_mib']:>5.0f} MiB "
              f"| {r['peak_rss_mib'] - r['rss_after_imports_mib']:>10.0f} MiB | {r['guided']:>6} "
              f"| {r['seconds']:>5.0f}s |")


if __name__ == "__main__":
    main()
