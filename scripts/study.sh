#!/usr/bin/env bash
# The study behind docs/findings.md: every suite it reports, one after another, 2 runs at a
# time, then each suite's report (compare.md, compare.json, curves) and analysis copied into
# docs/findings/SUITE/. Resumable: rerunning skips finished runs and continues stopped ones.
# About 4 hours on 2 CPU cores; give a suite name (or several) to run only those.
#   bash scripts/study.sh [STUDY_DIR] [SUITE ...]      (STUDY_DIR default: runs/study)
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:-runs/study}; shift || true
suites=("$@"); [ ${#suites[@]} -gt 0 ] || suites=(default carry carry-taught carry-taught-long unseen expression entropy-long bootstrap-long)
for suite in "${suites[@]}"; do
  out="$study/$suite"
  if [ "$suite" = bootstrap-long ] && [ -d "$study/entropy-long/strong" ]; then
    # its srft and grpo runs are entropy-long's (same configs): reuse the finished ones
    mkdir -p "$out/strong"
    for m in srft grpo; do [ -e "$out/strong/$m" ] || cp -a "$study/entropy-long/strong/$m" "$out/strong/$m"; done
  fi
  python -m srft compare "$suite" --out "$out" --jobs 2
  python -m srft analyze "$out" --out "$out/analysis"
  mkdir -p "docs/findings/$suite"
  cp "$out"/compare.md "$out"/compare.json "$out"/curves-*.png "docs/findings/$suite/"
  cp "$out"/analysis/analysis.md "$out"/analysis/*.png "docs/findings/$suite/"
done
