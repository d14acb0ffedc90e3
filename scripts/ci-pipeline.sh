#!/usr/bin/env bash
# Run the pipeline for one target and gather what CI publishes: the report files and the bundle,
# with the bundle's checksums verified. Used by .github/workflows/pipeline.yml; runs the same locally:
#   scripts/ci-pipeline.sh raspberry-pi-4 out [more pipeline options]
set -euo pipefail
target="${1:?usage: ci-pipeline.sh TARGET [OUT] [pipeline options...]}"
out="${2:-out}"
shift $(( $# >= 2 ? 2 : 1 ))
python="${PYTHON:-python3}"

"$python" -m pipeline.cli run --target "$target" --out "$out" "$@"
"$python" "$out/$target/bundle/run_model.py" verify

publish="$out/publish/$target"
rm -rf "$publish"
mkdir -p "$publish"
cp "$out/$target"/report.* "$out/$target"/*.png "$out/$target/bench/bench.json" "$publish/"
cp -r "$out/$target/bundle" "$publish/bundle"
echo "published $publish"
