#!/usr/bin/env bash
# Where a fustian node's CPU goes per payload byte during one TCP stream (root; needs perf).
#
#   scripts/perf-breakdown.sh [FUSTIAN] [lab flags...]
#
# Runs `fustian lab` for one stream through vxlan/uring (override with --backend/--io), samples
# every CPU with perf for 5 s in the middle of the a->b transfer, and sorts the samples of
# fustian's worker threads (named fustian-wN) into cost categories (scripts/perf-categories.py).
# Multiply a category's share by the lab's `node ns/B x1` for its cost per byte.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-target/release/fustian}
shift || true
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$bin" lab --scenarios fustian --backend vxlan --io uring --streams 1 --duration 8 --pings 10 "$@" \
  > "$out/lab.txt" 2>&1 &
lab=$!
for _ in $(seq 1 600); do
  grep -q "TCP x1 a->b" "$out/lab.txt" && break
  sleep 0.1
done
sleep 1.5
perf record -a -F 1999 -o "$out/perf.data" -- sleep 5 2>/dev/null
wait "$lab"
grep -v '^lab:\|node a:\|node b:' "$out/lab.txt"
perf report -i "$out/perf.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
  | python3 "$here/perf-categories.py"
