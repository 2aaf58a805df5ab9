#!/usr/bin/env python3
"""Memory of idle SMTP connections held by mxgate (issue 16).

Starts a release mxgate on 127.0.0.1 with its own configuration in a temporary directory
(one public listener, connection caps raised, reverse DNS answered NXDOMAIN at once by a stub
in this process), warms it up, then opens N connections that each read the greeting, send
EHLO (and, with --tls, STARTTLS, the handshake and EHLO again), and holds them idle. The
server's memory is read from /proc/PID/smaps_rollup before and while they are held; the
difference divided by N is the cost of one idle connection.

    bench/idle/idle.py --mxgate target/release/mxgate --connections 20000 --tls 1.3

Prints one JSON object per run (--json) or a table line. Each side needs one file descriptor
per connection (plus about 20): the script raises its soft RLIMIT_NOFILE, which the server
inherits, as far as the hard limit allows. Where the hard limit is 20 000 and cannot be raised
(no CAP_SYS_RESOURCE), 19 900 connections is the most that fits. Results: bench/idle/RESULTS.md.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

NOFILE = 65536


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (NOFILE, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def write_config(d, dns_port):
    os.makedirs(f"{d}/cfg/listeners")
    os.makedirs(f"{d}/cfg/policies")
    files = {
        "mxgate.yaml": f"""
dns:
  resolvers: ["127.0.0.1:{dns_port}"]
  timeout: 5s
shutdown_grace: 1s
metrics:
  listen: null
delivery:
  concurrency: 1
  hostname: mx.example.com
""",
        "listeners/inbound.yaml": """
name: inbound
type: public
bind: ["127.0.0.1:0"]
hostname: mx.example.com
hat: inbound
rat: inbound
max_connections: 100000
timeouts:
  command: 1h
  session: 2h
""",
        "policies/hat.yaml": """
inbound:
  sender_groups:
    - name: BLOCKLIST
      policy: BLOCKED
      match: [198.51.100.0/24]
  default_policy: ACCEPTED
""",
        "policies/mail_flow.yaml": """
policies:
  BLOCKED:
    action: reject
  ACCEPTED:
    action: accept
    tls: preferred
    max_message_size: 20M
    max_messages_per_connection: unlimited
    max_recipients_per_message: 1000
    max_concurrent_connections_per_ip: unlimited
    max_recipients_per_hour: unlimited
    pre_greet_pause: 0
""",
        "policies/rat.yaml": """
inbound:
  entries:
    - recipient: example.com
      action: accept
""",
        "policies/routes.yaml": """
routes:
  - domain: ALL
    hosts:
      - host: 127.0.0.1
        port: 9
""",
    }
    for name, text in files.items():
        with open(f"{d}/cfg/{name}", "w") as f:
            f.write(text.lstrip())


class NxDomain(asyncio.DatagramProtocol):
    """Answers every query NXDOMAIN (the client has no PTR): reverse DNS costs no timeout."""

    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        (qid, flags) = struct.unpack("!HH", data[:4])
        # QR, opcode copied, RD copied, RA, RCODE 3; the question section is echoed.
        rflags = 0x8000 | (flags & 0x7900) | 0x0080 | 3
        qd = struct.unpack("!H", data[4:6])[0]
        self.t.sendto(struct.pack("!HHHHHH", qid, rflags, qd, 0, 0, 0) + data[12:], addr)


def memory(pid):
    """RSS, PSS and private dirty bytes of the process, from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(Rss|Pss|Private_Dirty|Anonymous):\s+(\d+) kB", line)
            if m:
                out[m.group(1).lower()] = int(m.group(2)) * 1024
    return out


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def reply(reader, timeout):
    """One complete SMTP reply (its lines); raises on timeout or close."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def tls_context(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = v
    ctx.maximum_version = v
    return ctx


async def open_one(port, tls, ctx, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    r = await reply(reader, timeout)
    if not r[0].startswith(b"220"):
        raise ConnectionError(f"greeting {r[0]!r}")
    writer.write(b"EHLO client.idle.test\r\n")
    r = await reply(reader, timeout)
    if not r[0].startswith(b"250"):
        raise ConnectionError(f"ehlo {r[0]!r}")
    if tls != "off":
        writer.write(b"STARTTLS\r\n")
        r = await reply(reader, timeout)
        if not r[0].startswith(b"220"):
            raise ConnectionError(f"starttls {r[0]!r}")
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="mx.example.com"), timeout)
        writer.write(b"EHLO client.idle.test\r\n")
        r = await reply(reader, timeout)
        if not r[0].startswith(b"250"):
            raise ConnectionError(f"ehlo after tls {r[0]!r}")
    return reader, writer


async def open_many(n, port, tls, concurrency, timeout):
    ctx = tls_context(tls) if tls != "off" else None
    sem = asyncio.Semaphore(concurrency)
    held, errors = [], {}

    async def one():
        async with sem:
            try:
                held.append(await open_one(port, tls, ctx, timeout))
            except Exception as e:  # counted by kind, the run goes on
                k = type(e).__name__ + (f": {e}" if str(e) else "")
                errors[k[:80]] = errors.get(k[:80], 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    return held, errors


async def close_all(held):
    for _, w in held:
        w.transport.abort()
    await asyncio.sleep(0.1)


async def settle(pid, seconds):
    """Waits until the server's RSS stops moving (or `seconds` pass) and returns its memory."""
    end = time.monotonic() + seconds
    last = memory(pid)
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        now = memory(pid)
        if abs(now["rss"] - last["rss"]) < 64 * 1024:
            return now
        last = now
    return memory(pid)


async def run(a):
    nofile = raise_nofile()
    d = tempfile.mkdtemp(prefix="mxgate-idle-")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(NxDomain, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    write_config(d, dns_port)
    log = open(f"{d}/stderr", "w+")
    proc = subprocess.Popen(
        [a.mxgate, "serve", "--config-dir", f"{d}/cfg", "--spool-dir", f"{d}/spool",
         "--certs-dir", f"{d}/certs", "--mail-log", f"{d}/mail.log"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        env={k: v for k, v in os.environ.items() if not k.startswith("MXGATE_")},
    )
    try:
        port = None
        for _ in range(300):
            log.seek(0)
            m = re.search(r"listener inbound listening on 127\.0\.0\.1:(\d+)", log.read())
            if m:
                port = int(m.group(1))
                break
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if port is None:
            log.seek(0)
            raise SystemExit(f"mxgate did not start:\n{log.read()}")
        # Warm-up: thread pools, caches and the allocator's arenas belong to the baseline.
        for _ in range(2):
            held, errors = await open_many(a.warmup, port, a.tls, a.concurrency, a.timeout)
            if errors:
                raise SystemExit(f"warm-up errors: {errors}")
            await close_all(held)
        await asyncio.sleep(2)
        base = memory(proc.pid)
        t0 = time.monotonic()
        held, errors = await open_many(a.connections, port, a.tls, a.concurrency, a.timeout)
        setup = time.monotonic() - t0
        loaded = await settle(proc.pid, a.settle)
        n = len(held)
        per = {k: (loaded[k] - base[k]) / max(n, 1) for k in base}
        result = {
            "tls": a.tls,
            "requested": a.connections,
            "held": n,
            "errors": errors,
            "setup_s": round(setup, 1),
            "server_fds": fds(proc.pid),
            "base_rss_kib": base["rss"] // 1024,
            "loaded_rss_kib": loaded["rss"] // 1024,
            "rss_per_conn_kib": round(per["rss"] / 1024, 2),
            "pss_per_conn_kib": round(per["pss"] / 1024, 2),
            "anon_per_conn_kib": round(per.get("anonymous", 0) / 1024, 2),
            "nofile": nofile,
        }
        if a.hold:
            await asyncio.sleep(a.hold)
        await close_all(held)
        if a.json:
            print(json.dumps(result))
        else:
            print(f"tls={a.tls:3} held={n:6} setup={setup:6.1f}s "
                  f"RSS/conn={result['rss_per_conn_kib']:6.2f} KiB "
                  f"PSS/conn={result['pss_per_conn_kib']:6.2f} KiB "
                  f"(base {result['base_rss_kib']} KiB, loaded {result['loaded_rss_kib']} KiB)"
                  + (f" errors={errors}" if errors else ""))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        transport.close()
        if a.keep:
            print(f"kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mxgate", default="target/release/mxgate")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--tls", choices=["off", "1.3", "1.2"], default="off")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--settle", type=float, default=10, help="seconds to wait for RSS to settle")
    p.add_argument("--hold", type=float, default=0, help="seconds to hold after measuring")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args()
    asyncio.run(run(a))


if __name__ == "__main__":
    main()
