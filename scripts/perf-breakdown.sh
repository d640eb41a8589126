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
# The defaults apply only where the caller did not name the flag (clap refuses a repeated one).
defaults=()
case " $* " in *" --backend"*) ;; *) defaults+=(--backend vxlan) ;; esac
case " $* " in *" --io"*) ;; *) defaults+=(--io uring) ;; esac
"$bin" lab --scenarios fustian --streams 1 --duration 8 --pings 10 "${defaults[@]}" "$@" \
  > "$out/lab.txt" 2>&1 &
lab=$!
for _ in $(seq 1 600); do
  grep -q "TCP x1 a->b" "$out/lab.txt" && break
  if ! kill -0 "$lab" 2>/dev/null; then
    cat "$out/lab.txt" >&2
    echo "perf-breakdown: the lab ended before its transfer started" >&2
    exit 1
  fi
  sleep 0.1
done
sleep 1.5
perf record -a -F 1999 -o "$out/perf.data" -- sleep 5 2>/dev/null
if ! wait "$lab"; then
  cat "$out/lab.txt" >&2
  echo "perf-breakdown: the lab failed" >&2
  exit 1
fi
grep -v '^lab:\|node a:\|node b:' "$out/lab.txt"
perf report -i "$out/perf.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
  | python3 "$here/perf-categories.py"
