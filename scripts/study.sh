#!/usr/bin/env bash
# The study behind docs/findings.md: every suite it reports, one after another, 2 runs at a
# time, then each suite's report (compare.md, compare.json, curves) and analysis copied into
# docs/findings/SUITE/. Resumable: rerunning skips finished runs and continues stopped ones.
# About 4 hours on 2 CPU cores; give a suite name (or several) to run only those.
#   bash scripts/study.sh [STUDY_DIR] [SUITE ...]      (STUDY_DIR default: runs/study)
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:-runs/study}; shift || true
suites=("$@"); [ ${#suites[@]} -gt 0 ] || suites=(default carry carry-taught carry-taught-long unseen expression entropy-long bootstrap-long
                                                 entropy-taught)
# suites whose srft and grpo runs are another suite's (same configs): "suite=source/regime"
shared=(bootstrap-long=entropy-long/strong entropy-taught=carry-taught-long/carry-taught)
for suite in "${suites[@]}"; do
  out="$study/$suite"
  for pair in "${shared[@]}"; do
    [ "${pair%%=*}" = "$suite" ] || continue
    from="$study/${pair#*=}"; regime=${pair##*/}
    [ -d "$from" ] || continue
    mkdir -p "$out/$regime"   # reuse the finished ones; compare skips them
    for m in srft grpo; do [ -e "$out/$regime/$m" ] || cp -a "$from/$m" "$out/$regime/$m"; done
  done
  python -m srft compare "$suite" --out "$out" --jobs 2
  python -m srft analyze "$out" --out "$out/analysis"
  mkdir -p "docs/findings/$suite"
  cp "$out"/compare.md "$out"/compare.json "$out"/curves-*.png "docs/findings/$suite/"
  cp "$out"/analysis/analysis.md "$out"/analysis/*.png "docs/findings/$suite/"
done
