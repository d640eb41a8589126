#!/usr/bin/env bash
# Builds a fustian release binary that runs on glibc 2.17 (CentOS/RHEL 7) and later, checks
# the glibc symbol versions it needs, and (as root, with --lab) runs a short lab with it.
#
#   dist/glibc-2.17.sh [--lab]
#
# Needs: Rust, Python 3 with pip (for zig), network access to crates.io and PyPI, and
# protoc (the etcd client's build). Output: target/glibc-2.17/fustian.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/zig}

# zig links against glibc 2.17's symbol versions; cargo-zigbuild drives it from cargo. zig
# comes from PyPI, installed into a virtual environment of its own (a distribution's Python
# refuses packages outside one, PEP 668).
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get install -y -q python3-venv
fi
venv="$CARGO_TARGET_DIR/zig-venv"
[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
"$venv/bin/python3" -m pip install --quiet 'ziglang>=0.13'
zig_dir=$("$venv/bin/python3" -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))')
export PATH="$zig_dir:$PATH"
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --locked --quiet cargo-zigbuild

cargo zigbuild --release --locked --all-features --target x86_64-unknown-linux-gnu.2.17
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/fustian"
mkdir -p target/glibc-2.17
cp "$bin" target/glibc-2.17/fustian
bin=target/glibc-2.17/fustian

# The highest GLIBC_x.y symbol version the binary asks the dynamic linker for.
highest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -n 1)
echo "highest glibc symbol version required: $highest"
if [ "$(printf '%s\n2.17\n' "$highest" | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)" != "2.17" ]; then
  echo "error: $bin needs glibc $highest, more than 2.17" >&2
  exit 1
fi
"$bin" --version

if [ "${1:-}" = "--lab" ]; then
  "$bin" lab --scenarios fustian --backend udp,vxlan --duration 1 --pings 200 --streams 1
fi
echo "ok: $bin runs on glibc 2.17 and later"
