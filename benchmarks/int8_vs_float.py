#!/usr/bin/env python3
"""Is int8 faster than float here? Re-times a run's artifacts side by side and prints ratios.

    python benchmarks/int8_vs_float.py out/raspberry-pi-4 --rounds 5 --threads 2

Each round benchmarks every artifact once, each in a fresh process, in one interleaved order, so that
machine noise hits all artifacts alike. It prints the median over rounds of each artifact's median
latency and, per runtime, the int8 and fp16 latencies as ratios of the fp32 one (< 1: faster than fp32).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

def time_once(manifest: Path, kind: str, threads: int, runs: int, out: Path) -> float:
    """One artifact's median latency, timed by the on-board runtime (``python -m board_runtime``) in a fresh process."""
    subprocess.run([sys.executable, "-m", "board_runtime", "--manifest", str(manifest), "bench", "--artifact", kind,
                    "--threads", str(threads), "--runs", str(runs), "--warmup", "50", "--json", str(out)],
                   check=True, capture_output=True)
    return json.loads(out.read_text())["latency_ms"]["p50"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target_dir", type=Path, help="a run's target directory, e.g. out/raspberry-pi-4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    manifest = args.target_dir / "artifacts.json"
    artifacts = json.loads(manifest.read_text())["artifacts"]
    kinds = [a["kind"] for a in artifacts]
    fp32 = {a["format"]: a["kind"] for a in artifacts if a["precision"] == "fp32"}
    medians: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            order = kinds if round_index % 2 == 0 else kinds[::-1]
            for kind in order:
                medians[kind].append(time_once(manifest, kind, args.threads, args.runs, Path(tmp) / "r.json"))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    result = {k: statistics.median(v) for k, v in medians.items()}
    print(f"{'artifact':12s} {'median p50 (ms)':>16s} {'spread (ms)':>12s} {'vs fp32':>8s}")
    for kind in kinds:
        base = result.get(fp32.get(next(a["format"] for a in artifacts if a["kind"] == kind)))
        ratio = f"{result[kind] / base:.2f}x" if base else "-"
        spread = max(medians[kind]) - min(medians[kind])
        print(f"{kind:12s} {result[kind]:16.4f} {spread:12.4f} {ratio:>8s}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "p50_ms": result,
                                         "per_round": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
