#!/usr/bin/env python3
"""Summarizes bench/compare.sh's runs.jsonl: medians per scenario and server, the machine's
limit, mxgate's ratios to each peer and to the limit, per-round ratios, CPU, context switches
and syscalls per message, and where each issue-16 target stands. Prints Markdown."""

import json
import statistics
import sys

NAMES = {
    "a": "(a) plain, 4 KiB, 1 msg/conn",
    "c": "(c) STARTTLS 1.3 ECDSA P-256, full handshakes",
    "crsa": "(c-rsa) STARTTLS 1.3 RSA-2048, full handshakes",
    "cr": "(c-res) STARTTLS 1.3 ECDSA, resuming client",
    "c12": "(c') STARTTLS 1.2 ECDSA",
    "d": "(d) plain, 4 KiB, 10 msg/conn",
    "e": "(e) plain, 1 MiB, 1 msg/conn",
}
ORDER = ["a", "c", "crsa", "cr", "c12", "d", "e"]
SERVERS = ["mxgate", "postfix", "opensmtpd"]
LABEL = {"mxgate": "mxgate", "postfix": "Postfix", "opensmtpd": "OpenSMTPD"}
TLS = {"c", "crsa", "cr", "c12"}
# Issue 16's targets: minimum mxgate/Postfix ratio of the accept rate (and end to end for a).
TARGET_VS_POSTFIX = {"a": 4.0, "c": 4.0, "crsa": 4.0, "d": 5.0}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def rng(xs):
    """median (min–max) of a list of ratios, or ''."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return ""
    return f"{statistics.median(xs):.2f} ({xs[0]:.2f}–{xs[-1]:.2f})"


def main():
    runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    by = {}  # (scenario, server) -> {round: run}
    perf = {}  # (scenario, server) -> run
    unsupported = {}
    for r in runs:
        if "unsupported" in r:
            unsupported[(r["scenario"], r["server"])] = r["unsupported"]
        elif r.get("round") == "perf":
            perf[(r["scenario"], r["server"])] = r
        elif r["scenario"] != "f":
            by.setdefault((r["scenario"], r["server"]), {})[r["round"]] = r
    scenarios = [sc for sc in ORDER if (sc, "mxgate") in by]
    servers = [s for s in SERVERS if any((sc, s) in by or (sc, s) in unsupported for sc in scenarios)]

    def accept(r):
        return r["load"]["msg_per_s"]

    def e2e(r):
        return r["load"]["e2e_msg_per_s"]

    def cpu_ms(r):
        ok = r["load"]["ok"]
        return None if r.get("cpu_s") is None or not ok else 1000 * r["cpu_s"] / ok

    def ctxt(r):
        ok = r["load"]["ok"]
        return None if r.get("ctxt") is None or not ok else r["ctxt"] / ok

    def m(sc, s, f):
        return med([f(r) for r in by.get((sc, s), {}).values()])

    def limit_of(sc, rnd):
        """(sink msg/s, spool files/s, the lower) of one round."""
        sink = by.get((sc, "limit-sink"), {}).get(rnd)
        spool = by.get((sc, "limit-spool"), {}).get(rnd)
        a = sink and sink["load"]["msg_per_s"]
        b = spool and spool["spool"]["files_per_s"]
        lo = min(x for x in (a, b) if x) if (a or b) else None
        return a, b, lo

    def rounds(sc):
        return sorted(by.get((sc, "mxgate"), {}))

    def per_round(sc, s, f, vs):
        """Per-round ratios of server s to vs (a server name or 'limit')."""
        out = []
        for rnd in rounds(sc):
            r = by.get((sc, s), {}).get(rnd)
            if not r or f(r) is None:
                continue
            if vs == "limit":
                d = limit_of(sc, rnd)[2]
            else:
                o = by.get((sc, vs), {}).get(rnd)
                d = o and f(o)
            if d:
                out.append(f(r) / d)
        return out

    def cell(sc, s, f, digits=1):
        if (sc, s) in unsupported:
            return "unsupported¹"
        return fmt(m(sc, s, f), digits)

    nrounds = max((max(v) for v in by.values() if v), default=0)
    peers = [s for s in servers if s != "mxgate"]
    print(f"## mxgate, {', '.join(LABEL[s] for s in peers)} and this machine's limit "
          f"({nrounds} rounds, medians)\n")
    print("Rates are medians over the rounds. The limit is, per round, the lower of the load "
          "generator straight into smtp-sink (no gateway) and the spool ceiling (write + "
          "fdatasync + rename + group-commit directory fsync of one file per message, 20 at a "
          "time; `loadgen spool-ceiling`); x/limit and mxgate/peer are medians of the per-round "
          "ratios (each round runs every server back to back). For STARTTLS scenarios the sink "
          "limit is without TLS (smtp-sink has none): an upper bound.\n")
    for title, f in (("accepted msg/s (MiB/s for e)", accept), ("end to end msg/s (until the sink has every message)", e2e)):
        print(f"### {title}\n")
        head = ["scenario"] + [LABEL[s] for s in servers] + ["limit (sink / spool)"]
        head += [f"{LABEL[s]}/limit" for s in servers]
        head += [f"mxgate/{LABEL[s]}" for s in peers]
        head += ["CPU ms/msg " + LABEL[s] for s in servers]
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for sc in scenarios:
            lims = [limit_of(sc, rnd) for rnd in rounds(sc)]
            lim = (f"{fmt(med([l[2] for l in lims]))} ({fmt(med([l[0] for l in lims]))} / "
                   f"{fmt(med([l[1] for l in lims]))})") if any(l[2] for l in lims) else "n/a"
            row = [NAMES[sc]] + [cell(sc, s, f) for s in servers] + [lim]
            row += [rng(per_round(sc, s, f, "limit")) for s in servers]
            row += [rng(per_round(sc, "mxgate", f, p)) for p in peers]
            row += [cell(sc, s, cpu_ms, 2) for s in servers]
            print("| " + " | ".join(row) + " |")
        print()
    serial = {sc: med([r["spool"]["files_per_s"] for r in by.get((sc, "limit-spool-serial"), {}).values()])
              for sc in scenarios}
    if any(serial.values()):
        print("Spool ceiling one commit at a time (the bound of a queue that commits serially, "
              "like OpenSMTPD's single queue process): " + ", ".join(
                  f"{sc} {fmt(v)}/s" for sc, v in serial.items() if v) + ".\n")
    if "e" in scenarios:
        print("(e): a gateway accepts faster than the sink receives (it queues), so its accept "
              "rate can exceed the sink limit; the end-to-end rate is the one bounded by it.\n")
    if unsupported:
        print("¹ " + "; ".join(sorted({f"{LABEL.get(s, s)}: {why}" for (sc, s), why in unsupported.items()})) + "\n")

    print("### per-round ratios (accepted msg/s)\n")
    print("| scenario | round | " + " | ".join([f"mxgate/{LABEL[p]}" for p in peers] + [f"{LABEL[s]}/limit" for s in servers]) + " |")
    print("|---|---:|" + "---:|" * (len(peers) + len(servers)))
    for sc in scenarios:
        for rnd in rounds(sc):
            cells = []
            for vs in peers:
                r, o = by[(sc, "mxgate")][rnd], by.get((sc, vs), {}).get(rnd)
                cells.append(f"{accept(r) / accept(o):.2f}" if o and accept(o) else "")
            lim = limit_of(sc, rnd)[2]
            for s in servers:
                r = by.get((sc, s), {}).get(rnd)
                cells.append(f"{accept(r) / lim:.2f}" if r and lim else "")
            print(f"| {sc} | {rnd} | " + " | ".join(cells) + " |")
    print()

    print("### per message: CPU, context switches, syscalls\n")
    print("mxgate's context switches from /proc (every thread, over each round's run until the "
          "queue is empty; medians; the peers' processes come and go and take their counts with "
          "them). perf columns: one extra run per scenario under `perf stat -e "
          "context-switches,raw_syscalls:sys_enter` attached to the process tree, children "
          "included (not in the medians above).\n")
    head = ["scenario"] + [f"CPU ms {LABEL[s]}" for s in servers] + ["ctx sw mxgate (/proc)"]
    for s in servers:
        head += [f"perf ctx sw {LABEL[s]}", f"perf syscalls {LABEL[s]}"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for sc in scenarios:
        row = [sc] + [cell(sc, s, cpu_ms, 2) for s in servers] + [cell(sc, "mxgate", ctxt, 1)]
        for s in servers:
            p = perf.get((sc, s))
            if not p:
                row += ["", ""]
                continue
            ok = max(p["load"]["ok"], 1)
            pc = p["perf"]
            row += [fmt(pc["context_switches"] and pc["context_switches"] / ok),
                    fmt(pc["syscalls"] and pc["syscalls"] / ok)]
        print("| " + " | ".join(row) + " |")
    print()

    print("### issue 16 targets\n")
    print("| target | measured (median of per-round ratios) | met |")
    print("|---|---|---|")

    def verdict(xs, target, at_least=True):
        if not xs:
            return "n/a"
        x = statistics.median(xs)
        return "yes" if (x >= target if at_least else x <= target) else "**no**"

    for sc, t in TARGET_VS_POSTFIX.items():
        if sc not in scenarios or (sc, "postfix") not in by:
            continue
        xs = per_round(sc, "mxgate", accept, "postfix")
        print(f"| {sc}: accepted ≥ {t:g}× Postfix | {rng(xs)} | {verdict(xs, t)} |")
        if sc == "a":
            xs = per_round(sc, "mxgate", e2e, "postfix")
            print(f"| a: end to end ≥ {t:g}× Postfix | {rng(xs)} | {verdict(xs, t)} |")
    if "a" in scenarios:
        c = m("a", "mxgate", cpu_ms)
        print(f"| a: mxgate CPU ≤ 0.30 ms/msg | {fmt(c, 2)} ms | {verdict([c] if c else [], 0.30, False)} |")
    if "e" in scenarios:
        xs = []
        for rnd in rounds("e"):
            r, s = by[("e", "mxgate")][rnd], by.get(("e", "limit-sink"), {}).get(rnd)
            if s and e2e(r) and s["load"]["msg_per_s"]:
                xs.append(e2e(r) / s["load"]["msg_per_s"])
        print(f"| e: bound only by the sink (end to end / sink limit) | {rng(xs)} | "
              f"{'yes' if xs and statistics.median(xs) >= 0.9 else '**no**'} |")
    print()

    idle = {r["server"]: r for r in runs if r["scenario"] == "f"}
    if idle:
        print("## (f) idle connections\n")
        print("| server | connections held | RSS KiB/conn (delta) | PSS KiB/conn (delta) | PSS KiB/conn (whole tree) | processes |")
        print("|---|---:|---:|---:|---:|---:|")
        for s in SERVERS:
            r = idle.get(s)
            if not r or not r.get("load"):
                continue
            h = max(r["load"]["held"], 1)
            b, x = r["mem_before"], r["mem_held"]
            print(f"| {LABEL[s]} | {r['load']['held']:,} of {r['load']['requested']:,} | {(x[0]-b[0])/h:,.1f} | "
                  f"{(x[1]-b[1])/h:,.1f} | {x[1]/h:,.1f} | {x[2]:,} |")
        print()

    print("## message latency and TLS resumption\n")
    print("| scenario | server | message p50 / p99 ms | starttls p50 / p99 ms | handshakes resumed |")
    print("|---|---|---|---|---|")

    def lat(phase, q):
        return lambda r: r["load"]["latency_ms"].get(phase, {}).get(q)

    for sc in scenarios:
        for s in servers:
            if (sc, s) not in by:
                continue
            msg = f"{fmt(m(sc, s, lat('message', 'p50')), 2)} / {fmt(m(sc, s, lat('message', 'p99')), 2)}"
            tls = (f"{fmt(m(sc, s, lat('starttls', 'p50')), 2)} / {fmt(m(sc, s, lat('starttls', 'p99')), 2)}"
                   if sc in TLS else "")
            res = ""
            if sc == "cr":
                rs = list(by[(sc, s)].values())
                res = f"{sum(r['load'].get('tls_resumed', 0) for r in rs):,} of {sum(r['load'].get('tls_handshakes', 0) for r in rs):,}"
            print(f"| {sc} | {LABEL[s]} | {msg} | {tls} | {res} |")
    print()

    bad = [(r["server"], r["scenario"], r["round"], r["check"]) for r in runs
           if r.get("check") not in (None, "ok")]
    if bad:
        print("## failed checks\n")
        for b in bad:
            print(f"- {b[0]} {b[1]} round {b[2]}: {b[3]}")
    else:
        print("Every run passed its check: every message accepted, none failed, the sink received all.")


if __name__ == "__main__":
    main()
