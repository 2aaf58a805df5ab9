#!/usr/bin/env python3
"""Summarizes bench/compare.sh's runs.jsonl: medians per scenario and server, mxgate/Postfix
ratios, and where each issue-7 target stands. Prints Markdown."""

import json
import statistics
import sys

NAMES = {
    "a": "(a) plain, 4 KiB, 1 msg/conn",
    "c": "(c) STARTTLS TLS 1.3, 4 KiB, 1 msg/conn",
    "c12": "(c') STARTTLS TLS 1.2, 4 KiB, 1 msg/conn",
    "d": "(d) plain, 4 KiB, 10 msg/conn",
    "e": "(e) plain, 1 MiB, 1 msg/conn",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main():
    runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    by = {}
    for r in runs:
        by.setdefault((r["scenario"], r["server"]), []).append(r)

    def m(sc, server, f):
        return med([f(r) for r in by.get((sc, server), [])])

    def accept(r):
        return r["load"]["msg_per_s"]

    def e2e(r):
        return r["load"]["e2e_msg_per_s"]

    def cpu_ms(r):
        ok = r["load"]["ok"]
        return None if r.get("cpu_s") is None or not ok else 1000 * r["cpu_s"] / ok

    def lat(phase, q):
        return lambda r: r["load"]["latency_ms"].get(phase, {}).get(q)

    def paired_ratios(sc, f):
        mx = {r["round"]: f(r) for r in by.get((sc, "mxgate"), [])}
        pf = {r["round"]: f(r) for r in by.get((sc, "postfix"), [])}
        return sorted(mx[k] / pf[k] for k in mx if k in pf and mx[k] is not None and pf[k])

    def paired(sc, f):
        """Per-round mxgate/Postfix ratios (each round runs both back to back)."""
        rs = paired_ratios(sc, f)
        if not rs:
            return ""
        return f"{statistics.median(rs):.2f}× ({rs[0]:.2f}–{rs[-1]:.2f})"

    def verdict(sc, f, ratio_of_medians, target, at_least):
        """yes when both the ratio of medians and the median per-round ratio meet the
        target, borderline when one does."""
        if target is None:
            return None
        rs = paired_ratios(sc, f)
        pm = statistics.median(rs) if rs else None
        ok = [x is not None and (x >= target if at_least else x <= target)
              for x in (ratio_of_medians, pm)]
        return "yes" if all(ok) else ("borderline" if any(ok) else "no")

    rounds = max((r["round"] for r in runs if r["scenario"] != "f"), default=0)
    print(f"## mxgate vs Postfix ({rounds} rounds, medians)\n")
    print("The ratio column divides the two medians; the per-round column is the median (and "
          "range) of the ratios of the two runs of each round, which ran back to back.\n")
    print("| scenario | metric | mxgate | Postfix | mxgate/Postfix | per round | target | met |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    rows = []
    for sc in ["a", "c", "c12", "d", "e"]:
        if (sc, "mxgate") not in by:
            continue
        name = NAMES[sc]
        am, ap = m(sc, "mxgate", accept), m(sc, "postfix", accept)
        em, ep = m(sc, "mxgate", e2e), m(sc, "postfix", e2e)
        cm, cp = m(sc, "mxgate", cpu_ms), m(sc, "postfix", cpu_ms)
        ra, re, rc = ratio(am, ap), ratio(em, ep), ratio(cm, cp)
        t_acc = {"a": 3.0, "c": 4.0}.get(sc)
        t_e2e = {"a": 3.0}.get(sc)
        t_cpu = {"a": 1 / 3}.get(sc)
        unit = "MiB/s" if sc == "e" else "msg/s"
        k = 1.0 if sc != "e" else 1.0  # messages are 1 MiB: msg/s = MiB/s
        rows.append((name, f"accepted {unit}", am and am * k, ap and ap * k, ra, paired(sc, accept),
                     f"≥ {t_acc:g}×" if t_acc else "", verdict(sc, accept, ra, t_acc, True)))
        rows.append(("(b) end to end" if sc == "a" else name, f"end to end {unit}", em, ep, re,
                     paired(sc, e2e),
                     f"≥ {t_e2e:g}×" if t_e2e else "", verdict(sc, e2e, re, t_e2e, True)))
        rows.append((name, "server CPU ms/msg", cm, cp, rc, paired(sc, cpu_ms),
                     "≤ 1/3" if t_cpu else "", verdict(sc, cpu_ms, rc, t_cpu, False)))
        rows.append((name, "message latency p50 / p99 ms",
                     f"{fmt(m(sc, 'mxgate', lat('message', 'p50')), 2)} / {fmt(m(sc, 'mxgate', lat('message', 'p99')), 2)}",
                     f"{fmt(m(sc, 'postfix', lat('message', 'p50')), 2)} / {fmt(m(sc, 'postfix', lat('message', 'p99')), 2)}",
                     None, "", "", None))
    for name, metric, a, b, r, pr, target, met in rows:
        a = a if isinstance(a, str) else fmt(a, 2 if "CPU" in metric else 1)
        b = b if isinstance(b, str) else fmt(b, 2 if "CPU" in metric else 1)
        rr = "" if r is None else f"{r:.2f}×"
        mm = "" if met is None else (met if met == "yes" else f"**{met}**")
        print(f"| {name} | {metric} | {a} | {b} | {rr} | {pr} | {target} | {mm} |")

    idle = {r["server"]: r for r in runs if r["scenario"] == "f"}
    if idle:
        print("\n## (f) idle connections\n")
        print("| server | connections held | RSS KiB/conn (delta) | PSS KiB/conn (delta) | PSS KiB/conn (whole tree) | processes | target |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for s in ["mxgate", "postfix"]:
            r = idle.get(s)
            if not r or not r.get("load"):
                continue
            h = max(r["load"]["held"], 1)
            b, x = r["mem_before"], r["mem_held"]
            d_pss = (x[1] - b[1]) / h
            tgt = ("≤ 64 KiB: " + ("yes" if d_pss <= 64 and h >= 10000 else "**no**")) if s == "mxgate" else ""
            print(f"| {s} | {r['load']['held']:,} of {r['load']['requested']:,} | {(x[0]-b[0])/h:,.1f} | "
                  f"{d_pss:,.1f} | {x[1]/h:,.1f} | {x[2]:,} | {tgt} |")

    sink = [r for r in runs if r["server"] == "smtp-sink"]
    if sink:
        print("\n## loadgen ceiling (straight into smtp-sink)\n")
        print("| scenario | msg/s | loadgen CPU ms/msg |")
        print("|---|---:|---:|")
        for r in sink:
            l = r["load"]
            print(f"| {NAMES[r['scenario']]} | {l['msg_per_s']:,.1f} | {1000*l['client_cpu_s']/max(l['ok'],1):.3f} |")

    print("\n## per-phase latency, ms (median over rounds of each run's p50 / p90 / p99)\n")
    print("| scenario | server | connect | ehlo | starttls | mail | rcpt | data | dot (commit) | quit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sc in ["a", "c", "c12", "d", "e"]:
        for s in ["mxgate", "postfix"]:
            if (sc, s) not in by:
                continue
            cells = []
            for ph in ["connect", "ehlo", "starttls", "mail", "rcpt", "data", "dot", "quit"]:
                v = [m(sc, s, lat(ph, q)) for q in ("p50", "p90", "p99")]
                cells.append("" if v[0] is None else " / ".join(fmt(x, 2) for x in v))
            print(f"| {sc} | {s} | " + " | ".join(cells) + " |")

    errs = [(r["server"], r["scenario"], r["round"], r["load"]["errors"]) for r in runs
            if r.get("load") and r["load"].get("errors")]
    if errs:
        print("\n## errors\n")
        for e in errs:
            print(f"- {e[0]} {e[1]} round {e[2]}: {e[3]}")


if __name__ == "__main__":
    main()
