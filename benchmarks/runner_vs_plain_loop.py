#!/usr/bin/env python3
"""Does the bundle runner time what the runtime does? Runner vs an independent plain loop, side by side.

    python benchmarks/runner_vs_plain_loop.py out/raspberry-pi-4/bundle --rounds 5 --threads 1

For every TFLite and ONNX artifact of a bundle, each round runs (in an alternating order, each in its
own fresh process) the bundle's ``run_model.py bench`` and a plain loop written directly against the
runtime's API (no runner code: load, warm up, then one clock read around N back-to-back inferences).
It prints the median over rounds of the runner's mean latency and of the loop's, and their ratio;
"agree" means within the tolerance (default 15%).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The independent measurement: total time of N inferences / N, timed around the whole loop.
PLAIN_LOOP = r"""
import sys, time
import numpy as np
path, fmt, threads, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = np.zeros(detail["shape"], detail["dtype"])
    def infer():
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    x = np.zeros(first.shape, np.float16 if "float16" in first.type else np.float32)
    def infer():
        session.run(None, {first.name: x})
for _ in range(warmup):
    infer()
started = time.perf_counter()
for _ in range(runs):
    infer()
print((time.perf_counter() - started) / runs * 1e3)
"""


def runner_mean(bundle: Path, kind: str, threads: int, runs: int, warmup: int, out: Path) -> float:
    subprocess.run([sys.executable, str(bundle / "run_model.py"), "bench", "--artifact", kind, "--threads",
                    str(threads), "--runs", str(runs), "--warmup", str(warmup), "--max-seconds", "60",
                    "--json", str(out)], check=True, capture_output=True)
    return json.loads(out.read_text())["latency_ms"]["mean"]


def loop_mean(path: Path, fmt: str, threads: int, runs: int, warmup: int) -> float:
    done = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(path), fmt, str(threads), str(runs), str(warmup)],
                          check=True, capture_output=True, text=True)
    return float(done.stdout.strip())


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a bundle directory, e.g. out/raspberry-pi-4/bundle")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    artifacts = [a for a in manifest["artifacts"] if a["session"] in ("tflite", "onnx")]  # what the plain loop runs
    runner: dict[str, list[float]] = {a["kind"]: [] for a in artifacts}
    loop: dict[str, list[float]] = {a["kind"]: [] for a in artifacts}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for a in artifacts:
                fmt = a["format"]
                measure = [lambda: runner[a["kind"]].append(runner_mean(args.bundle, a["kind"], args.threads, args.runs,
                                                                        args.warmup, Path(tmp) / "r.json")),
                           lambda: loop[a["kind"]].append(loop_mean(args.bundle / a["path"], fmt, args.threads,
                                                                    args.runs, args.warmup))]
                for step in (measure if round_index % 2 == 0 else measure[::-1]):
                    step()
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    # The rounds' spread, (max - min) / median, shows when the processes themselves disagree (e.g. a thread
    # pool that lands in a fast or a slow mode per process), which no choice of timer can fix.
    print(f"{'artifact':12s} {'runner mean (ms)':>17s} {'spread':>7s} {'plain loop (ms)':>16s} {'spread':>7s}"
          f" {'ratio':>6s}  verdict")
    for kind in runner:
        r, p = statistics.median(runner[kind]), statistics.median(loop[kind])
        agree = abs(r / p - 1) <= args.tolerance
        rows.append({"artifact": kind, "runner_mean_ms": r, "loop_mean_ms": p, "ratio": r / p, "agree": agree,
                     "runner_rounds": runner[kind], "loop_rounds": loop[kind]})
        verdict = f"agree (within {args.tolerance:.0%})" if agree else f"DISAGREE (beyond {args.tolerance:.0%})"
        print(f"{kind:12s} {r:17.4f} {spread(runner[kind]):7.1%} {p:16.4f} {spread(loop[kind]):7.1%}"
              f" {r / p:6.2f}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "runs": args.runs,
                                         "rows": rows}, indent=2))
    return 0 if all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
