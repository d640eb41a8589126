#!/usr/bin/env python3
"""Sorts `perf report --no-children --sort comm,dso,sym --stdio` lines of fustian's worker
threads (fustian-wN) into cost categories; prints each category's share of their samples.

The first matching rule wins, so the order matters: fustian's own code first, then copies, then
the kernel's bookkeeping, and everything else in the kernel as the network stack."""
import collections
import re
import sys

RULES = [
    ("checksum (fustian)", lambda d, s: "fustian" in d
     and re.search(r"ones_sum|lane_sum|avx2|checksum|pseudo_sum|fold", s)),
    ("merge and cut (fustian)", lambda d, s: "fustian" in d
     and re.search(r"coalesce|cut|split|segment", s, re.I)),
    ("other fustian code", lambda d, s: "fustian" in d),
    ("copies (kernel and libc)", lambda d, s: re.search(
        r"copy_user|copy_to_iter|copy_from_iter|memcpy|memmove|rep_mov|copy_page|skb_copy|_copy_", s)),
    ("kernel checksum", lambda d, s: "csum" in s),
    ("allocation", lambda d, s: re.search(
        r"kmem_cache|kmalloc|alloc_skb|__alloc|page_frag|kfree|slab|skb_release|free_unref"
        r"|alloc_pages|__free|page_pool|build_skb|napi_alloc|malloc|free", s)),
    ("wakeups and scheduling", lambda d, s: re.search(
        r"schedule|wake_up|ttwu|switch|enqueue_|dequeue_|pick_next|update_curr|idle"
        r"|select_task|sched|raw_spin|native_queued|futex|ep_poll|io_cqring_wait|do_epoll", s)),
    ("system call entry and exit", lambda d, s: re.search(
        r"entry_SYSCALL|syscall_exit|do_syscall|syscall_return|__x64_sys|exit_to_user|fpregs"
        r"|fpu|clear_bhb|sysret|srso|retbleed|fdget|fget|fput|rw_verify|security_", s)),
    ("io_uring machinery", lambda d, s: re.search(r"io_uring|\bio_|__io", s)),
    ("kernel network stack and the rest", lambda d, s: True),
]

shares = collections.Counter()
total = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
    if not m or not m.group(2).startswith("fustian-w"):
        continue
    pct, dso, sym = float(m.group(1)), m.group(3), m.group(4).strip()
    total += pct
    for name, rule in RULES:
        if rule(dso, sym):
            shares[name] += pct
            break
if total == 0:
    sys.exit("no samples of fustian-w* threads")
for name, _ in RULES:
    print(f"{name:36s} {100 * shares[name] / total:5.1f} %")
print(f"{'(worker threads: share of all samples)':36s} {total:5.1f} %")
