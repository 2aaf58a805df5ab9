#!/usr/bin/env python3
"""CPU time and memory of a whole process tree, from /proc (bench/compare.sh).

  proctree.py cpu PID   -> seconds of CPU (user+system) used by PID and every descendant,
                           including children that already exited and were reaped inside
                           the tree (their time is in the reaper's cutime/cstime)
  proctree.py mem PID   -> "RSS_KIB PSS_KIB PROCESSES" summed over the tree (smaps_rollup)
  proctree.py ctxt PID  -> context switches (voluntary + involuntary) of every thread of the
                           tree now alive (a thread that exits takes its count with it: take
                           the difference over a load during which the threads persist)
  proctree.py pids PID  -> the PIDs of the tree, comma-separated (for perf stat -p)
"""

import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm may contain spaces and parentheses: split after the last ')'.
    return s[s.rindex(")") + 2:].split()


def tree(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(stat_fields(d)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu(root):
    total = 0
    for p in tree(root):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14-17 of stat(5), 0-based 11-14 here).
        total += sum(int(x) for x in f[11:15])
    return total / TICK


def mem(root):
    rss = pss = n = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return rss, pss, n


def ctxt(root):
    total = 0
    for p in tree(root):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            total += int(line.split()[1])
            except OSError:
                continue
    return total


def main():
    what, pid = sys.argv[1], int(sys.argv[2])
    if what == "cpu":
        print(f"{cpu(pid):.2f}")
    elif what == "mem":
        print(*mem(pid))
    elif what == "ctxt":
        print(ctxt(pid))
    elif what == "pids":
        print(",".join(str(p) for p in tree(pid)))
    else:
        sys.exit(f"usage: {sys.argv[0]} cpu|mem|ctxt|pids PID")


if __name__ == "__main__":
    main()
