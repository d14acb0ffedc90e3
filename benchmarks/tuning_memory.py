"""Peak memory and time of the int8 weights' tuning: its batch whole or in micro-batches (the gradients summed), the
freed memory kept or handed back after each step, on a finished run's files.

Each setting (the micro-batch; with ``+release``, the allocator's freed memory handed back after every step, as the
pipeline's tuning step does) runs ``tune_weights`` in its own child process on the run's export, its GPTQ weights, its ranges and its
calibration samples, for ``--steps`` steps (the peak comes at the first; the time per step is the median), and the
child's peak RSS (``ru_maxrss``) is read by this process. The held-out SQNR each reached is printed beside, so that a
change of micro-batch is seen to change nothing but memory and time.

    pipeline run --model 320n.onnx --data photos --target coral-edgetpu --out out-yolo   # NudeNet's YOLOv8n
    python benchmarks/tuning_memory.py out-yolo --steps 20 --settings 16 16+release 4+release [--allocator system]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = """
import json, resource, sys, time
import numpy as np
from pathlib import Path
from calibration import CalibrationRanges
from pipeline.allocator import release
from calibration.tuning import tune_weights
from pipeline.formats.onnx_int8 import quantize_int8
from pipeline.profile import Int8Granularity, Int8Scheme, IODtype
run, steps, micro, released = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[5] == "released"
shared = run / "shared"
export = next(shared.glob("export-opset*/model.onnx"))
gptq = sorted(shared.glob("weights-*-gptq-*/model_int8_grid.onnx"))[0]  # per-channel before per-channel-conv
ranges = CalibrationRanges.load(sorted(shared.glob("calibrate-*-gptq-*/ranges.json"))[0])
inputs = np.load(shared / "calibration-samples" / "inputs.npy", mmap_mode="r")
rounding = Path(sys.argv[4])
quantize_int8(gptq, ranges, rounding, Int8Scheme(Int8Granularity.PER_CHANNEL, IODtype.FLOAT32, False))
started = time.perf_counter()
result = tune_weights(export, gptq, rounding, inputs, steps, Int8Granularity.PER_CHANNEL, micro_batch=micro,
                      after_step=release if released else None)
print(json.dumps({"seconds": time.perf_counter() - started, "start_db": result.start_sqnr_db,
                  "best_db": result.best_sqnr_db,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--settings", nargs="+", default=["16", "16+release", "4+release"],
                        help="micro-batch size, '+release' to hand freed memory back after every step")
    parser.add_argument("--allocator", choices=["jemalloc", "system"], default="jemalloc",
                        help="the child's: jemalloc as the pipeline command runs it (purging off until a step ends), or "
                             "the system's malloc")
    args = parser.parse_args()
    from pipeline.allocator import jemalloc_environment

    environment = dict(os.environ, PIPELINE_ALLOCATOR=args.allocator)
    environment = jemalloc_environment(environment) or environment
    rows = []
    for setting in args.settings:
        micro, _, released = setting.partition("+")
        rounding = args.run / f".tuning_memory_{micro}.onnx"
        done = subprocess.run([sys.executable, "-c", CHILD, str(args.run), str(args.steps), micro, str(rounding),
                               "released" if released else "kept"], capture_output=True, text=True, env=environment)
        rounding.unlink(missing_ok=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append({"setting": setting, **json.loads(done.stdout.strip().splitlines()[-1])})
    whole = rows[0]
    print(f"{args.steps} steps, {args.allocator}")
    print("| micro-batch | peak RSS (MB) | vs the first | seconds | vs the first | held-out SQNR start -> best (dB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / whole['peak_rss_mb']:.2f}x | "
              f"{r['seconds']:.1f} | {r['seconds'] / whole['seconds']:.2f}x | {r['start_db']:.2f} -> {r['best_db']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
