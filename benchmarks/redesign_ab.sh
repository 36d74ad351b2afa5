#!/usr/bin/env bash
# Speed before and after the issue-16 restructuring, on one machine: the last commit before it (a6712e1) and
# this checkout, each through its own `convnext benchmark` (ours and timm's ConvNeXt-T, batch 32 at 224,
# inference and training step, fp32 and bf16, 2 threads), alternating processes for two rounds so that drift
# on a shared machine falls on both. Writes benchmarks/results/redesign_ab/{before,after}_{1,2}.json;
# benchmarks/redesign_ab.md reads them.
#     bash benchmarks/redesign_ab.sh            # about 9 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
py=${PYTHON:-$here/.venv/bin/python}
out=$here/benchmarks/results/redesign_ab
before=$(mktemp -d)/before
git worktree add -q --detach "$before" a6712e1
trap 'git worktree remove --force "$before"' EXIT
mkdir -p "$out"
for round in 1 2; do
  for side in before after; do
    root=$here; [ $side = before ] && root=$before
    echo "== $side round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd "$root" && PYTHONPATH=$root/src $py -m convnext benchmark ours:convnext_tiny timm:convnext_tiny \
      --mode infer train --precision fp32 bf16 --threads 2 --reps 3 --json "$out/${side}_$round.json")
  done
done
