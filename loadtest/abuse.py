#!/usr/bin/env python3
"""Short, bounded attacks on a Switchboard binary on loopback, each run twice:
with the per-client limits and deadlines off ("off": what the broker did before
it had them) and with the defaults ("on"). Prints, per attack, what the broker
answered, its RSS, `/healthz` latency and, where it applies, another
customer's latency. See docs/security.md for the limits.

The attacker speaks from 127.0.0.2, the legitimate clients from 127.0.0.1.
Needs Python 3.9+ and the `websockets` package.

Usage: loadtest/abuse.py [--binary target/release/switchboard] [--seconds 10]
                         [--only sessions,uploads,slow_bodies,flood,sockets]
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

import websockets

ADMIN = "abuse-measure-admin-token-0123456789abcdef"
ATTACKER = "127.0.0.2"

# The limits and deadlines as good as off: the broker as it was before them.
LIMITS_OFF = {
    "SWITCHBOARD_MAX_CONNECTIONS": "1000000",
    "SWITCHBOARD_MAX_CONNECTIONS_PER_IP": "0",
    "SWITCHBOARD_SESSIONS_PER_IP_PER_MINUTE": "0",
    "SWITCHBOARD_OPEN_SESSIONS_PER_IP": "0",
    "SWITCHBOARD_SOCKETS_PER_SESSION": "0",
    "SWITCHBOARD_SOCKET_MESSAGES_PER_SECOND": "1000000",
    "SWITCHBOARD_CONVERSATION_MESSAGES_PER_SECOND": "1000000",
    "SWITCHBOARD_UPLOADS_PER_IP_PER_MINUTE": "0",
    "SWITCHBOARD_UPLOAD_BYTES_PER_IP": "0",
    "SWITCHBOARD_UPLOADS_PER_SESSION": "1000000",
    "SWITCHBOARD_UPLOAD_BYTES_PER_SESSION": "1000GiB",
    "SWITCHBOARD_REQUEST_HEADER_TIMEOUT": "30s",
    "SWITCHBOARD_REQUEST_BODY_TIMEOUT": "1h",
    "SWITCHBOARD_REQUEST_BODY_MIN_RATE": "1",
    "SWITCHBOARD_SOCKET_WRITE_TIMEOUT": "1h",
    "SWITCHBOARD_SOCKET_BACKLOG_BYTES": "1000GiB",
}


class Broker:
    def __init__(self, binary, limits_on, nofile=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ)
        env.update({"SWITCHBOARD_ADMIN_TOKEN": ADMIN, "SWITCHBOARD_WORKERS": "2"})
        if not limits_on:
            env.update(LIMITS_OFF)

        def limit_files():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [binary, "--bind", f"127.0.0.1:{self.port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=limit_files,
        )
        self.pid = self.proc.pid

    def rss_mib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    async def ready(self):
        for _ in range(100):
            try:
                status, _, _ = await http(self.port, "GET", "/healthz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("the broker did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        warnings = [
            line
            for line in self.proc.stderr.read().decode(errors="replace").splitlines()
            if "WARN" in line or "ERROR" in line
        ]
        return warnings


async def http(port, method, path, body=None, token=None, local=None, timeout=5, ctype="application/json", conn=None):
    """One HTTP/1.1 request; returns (status, headers, body). With `conn`
    (reader, writer), reuses that keep-alive connection."""

    async def go():
        if conn:
            reader, writer = conn
        else:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(local, 0) if local else None
            )
        data = body if isinstance(body, (bytes, bytearray)) else (json.dumps(body).encode() if body is not None else b"")
        head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n"
        if data:
            head += f"content-type: {ctype}\r\n"
        if token:
            head += f"authorization: Bearer {token}\r\n"
        if not conn:
            head += "connection: close\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        payload = await reader.readexactly(n) if n else b""
        if not conn:
            writer.close()
        return status, headers, payload

    return await asyncio.wait_for(go(), timeout)


SAMPLER = r"""
import socket, sys, time
port, every, timeout = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
while True:
    t = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.settimeout(timeout)
            c.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            ok = c.recv(64).startswith(b"HTTP/1.1 200")
        print(f"{(time.perf_counter() - t) * 1000:.2f}" if ok else "failed", flush=True)
    except OSError:
        print("failed", flush=True)
    time.sleep(every)
"""


class Healthz:
    """Samples `/healthz` latency from 127.0.0.1 every `every` s, a new
    connection each, from a process of its own (so the attack's event loop
    does not delay the samples)."""

    def __init__(self, port, every=0.1, timeout=2.0):
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(port), str(every), str(timeout)],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self):
        self.proc.terminate()
        out, _ = self.proc.communicate()
        lines = out.split()
        s = sorted(float(x) for x in lines if x != "failed")
        failed = sum(1 for x in lines if x == "failed")
        p = lambda q: s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")
        return (f"/healthz p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {max(s) if s else float('nan'):.1f} ms, "
                f"failed or >{self.timeout:.0f}s: {failed}")


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


# ---------------------------------------------------------------- attacks


async def sessions(b, seconds):
    counts = {}
    stop = time.monotonic() + seconds

    async def worker():
        conn = await asyncio.open_connection("127.0.0.1", b.port, local_addr=(ATTACKER, 0))
        while time.monotonic() < stop:
            try:
                status, headers, _ = await http(b.port, "POST", "/v1/webchat/sessions", {"name": "flood"}, conn=conn)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                conn = await asyncio.open_connection("127.0.0.1", b.port, local_addr=(ATTACKER, 0))
                continue
            counts[status] = counts.get(status, 0) + 1
            if headers.get("connection") == "close":
                conn = await asyncio.open_connection("127.0.0.1", b.port, local_addr=(ATTACKER, 0))

    await asyncio.gather(*(worker() for _ in range(32)))
    return f"answers {dict(sorted(counts.items()))}"


async def uploads(b, seconds, max_stored=40):
    counts = {}
    stored = [0]
    stop = time.monotonic() + seconds
    blob = b"\0" * (10 * 1024 * 1024)

    async def worker():
        _, _, body = await http(b.port, "POST", "/v1/webchat/sessions", {"name": "up"}, local=ATTACKER)
        token = json.loads(body)["token"]
        while time.monotonic() < stop and stored[0] < max_stored:
            status, _, _ = await http(b.port, "POST", "/v1/attachments?filename=x.bin", blob, token=token,
                                      local=ATTACKER, timeout=30, ctype="application/octet-stream")
            counts[status] = counts.get(status, 0) + 1
            if status == 201:
                stored[0] += 1

    await asyncio.gather(*(worker() for _ in range(4)))
    return f"10 MiB uploads: answers {dict(sorted(counts.items()))} (stopped at {max_stored} stored)"


async def slow_bodies(b, seconds, connections=3000):
    """Connections that send a body's first byte, then one byte every 5 s."""
    held, refused, closed, timed_out = [0], [0], [0], [0]
    writers = []

    async def one():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port, local_addr=(ATTACKER, 0))
        except OSError:
            refused[0] += 1
            return
        writers.append(writer)
        try:
            writer.write(b"POST /v1/webchat/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 100000\r\n\r\n{")
            await writer.drain()
            held[0] += 1
            while True:
                got = await reader.read(4096)
                if not got:
                    closed[0] += 1
                    return
                if got.startswith(b"HTTP/1.1 429") or got.startswith(b"HTTP/1.1 503"):
                    refused[0] += 1
                elif got.startswith(b"HTTP/1.1 408"):
                    timed_out[0] += 1
        except OSError:
            closed[0] += 1

    async def trickle():
        while True:
            await asyncio.sleep(5)
            for w in list(writers):
                try:
                    w.write(b" ")
                except (OSError, RuntimeError):
                    pass

    t = asyncio.ensure_future(trickle())
    tasks = [asyncio.ensure_future(one()) for _ in range(connections)]
    # Past the default body deadline (10 s), so it can be seen to act.
    await asyncio.sleep(max(seconds, 13))
    t.cancel()
    for task in tasks:
        task.cancel()
    for w in writers:
        w.close()
    return (f"{connections} slow bodies: {refused[0]} refused (429/503/connect), {timed_out[0]} cut off (408), "
            f"{closed[0]} closed by the broker")


async def agent_desk(b, capacity=20):
    status, _, body = await http(b.port, "POST", "/v1/agents", {"id": "ann", "name": "Ann", "capacity": {"webchat": capacity, "sms": 1, "whatsapp": 1, "messenger": 1}}, token=ADMIN)
    assert status == 201, body
    token = json.loads(body)["token"]
    ws = await websockets.connect(f"ws://127.0.0.1:{b.port}/v1/agents/ann/ws?token={token}", max_size=None, max_queue=None)
    await ws.send(json.dumps({"type": "activity", "activity": "available", "ref": "a"}))
    return ws


async def customer(b, local=None, name="c"):
    _, _, body = await http(b.port, "POST", "/v1/webchat/sessions", {"name": name}, local=local)
    s = json.loads(body)
    return s["token"]


async def desk_accepts(ws, seen):
    """Accepts every offer; counts frames; ends when the socket closes."""
    try:
        async for raw in ws:
            seen["frames"] += 1
            if '"task.offered"' in raw:
                v = json.loads(raw)
                await ws.send(json.dumps({"type": "accept", "task_id": v["task"]["id"]}))
    except websockets.ConnectionClosed as e:
        seen["closed"] = f"{e.rcvd.code if e.rcvd else 1006} {e.rcvd.reason if e.rcvd else ''}"


async def victim_latency(b, seconds, every=0.02):
    """Another customer: a message every 20 ms, time to its ack."""
    token = await customer(b, name="victim")
    ws = await websockets.connect(f"ws://127.0.0.1:{b.port}/v1/webchat/ws?token={token}", max_size=None)
    lat = []
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        i += 1
        t = time.perf_counter()
        await ws.send(json.dumps({"type": "message", "text": f"v{i}", "client_msg_id": f"v{i}"}))
        while True:
            v = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if v.get("type") in ("ack", "error") and (v.get("client_msg_id") == f"v{i}" or v.get("type") == "error"):
                break
        lat.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(every)
    await ws.close()
    return lat


async def flood(b, seconds):
    desk = await agent_desk(b)
    seen = {"frames": 0, "closed": None}
    desk_task = asyncio.ensure_future(desk_accepts(desk, seen))
    token = await customer(b, local=ATTACKER, name="flood")
    ws = await websockets.connect(f"ws://127.0.0.1:{b.port}/v1/webchat/ws?token={token}", max_size=None, max_queue=None)
    answers = {"ack": 0, "error": 0}

    async def drain():
        try:
            async for raw in ws:
                t = json.loads(raw).get("type")
                if t in answers:
                    answers[t] += 1
        except websockets.ConnectionClosed:
            pass

    d = asyncio.ensure_future(drain())
    stop = time.monotonic() + seconds
    sent = [0]

    async def send():
        try:
            while time.monotonic() < stop:
                for _ in range(100):
                    sent[0] += 1
                    await ws.send(json.dumps({"type": "message", "text": "x" * 100, "client_msg_id": f"f{sent[0]}"}))
                await asyncio.sleep(0)
        except websockets.ConnectionClosed:
            pass

    victim = asyncio.ensure_future(victim_latency(b, seconds))
    await send()
    lat = await victim
    await asyncio.sleep(1)
    _, _, stats = await http(b.port, "GET", "/v1/stats", token=ADMIN)
    stats = json.loads(stats)
    d.cancel()
    desk_task.cancel()
    return (f"flood: {sent[0]} sent ({sent[0] / seconds:.0f}/s), {answers['ack']} acked, {answers['error']} refused; "
            f"agent desk closed: {seen['closed'] or 'no'}, slow consumers {stats['slow_consumers']}; "
            f"other customer's ack p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms")


async def many_sockets(b, seconds, n=3000):
    desk = await agent_desk(b)
    seen = {"frames": 0, "closed": None}
    desk_task = asyncio.ensure_future(desk_accepts(desk, seen))
    token = await customer(b, local=ATTACKER, name="tabs")
    url = f"ws://127.0.0.1:{b.port}/v1/webchat/ws?token={token}"
    opened, refused = [], 0
    for _ in range(n):
        try:
            opened.append(await websockets.connect(url, max_queue=None))
        except websockets.InvalidStatus:
            refused += 1
    # One of them writes at 10 messages/s; every message goes to every socket.
    stop = time.monotonic() + seconds

    async def talk():
        i = 0
        while time.monotonic() < stop:
            i += 1
            await opened[0].send(json.dumps({"type": "message", "text": "hi", "client_msg_id": f"t{i}"}))
            await asyncio.sleep(0.1)

    victim = asyncio.ensure_future(victim_latency(b, seconds))
    await talk()
    lat = await victim
    desk_task.cancel()
    for ws in opened:
        ws.transport.close()
    return (f"{n} sockets on one session: {len(opened)} open, {refused} refused; "
            f"other customer's ack p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms")


ATTACKS = {
    "sessions": (sessions, None),
    "uploads": (uploads, None),
    "slow_bodies": (slow_bodies, 2048),
    "flood": (flood, None),
    "sockets": (many_sockets, None),
}


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/switchboard")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", default=",".join(ATTACKS))
    args = ap.parse_args()
    for name in args.only.split(","):
        attack, nofile = ATTACKS[name]
        for limits_on in (False, True):
            b = Broker(args.binary, limits_on, nofile)
            try:
                await b.ready()
                rss0 = b.rss_mib()
                health = Healthz(b.port)
                started = time.monotonic()
                result = await asyncio.wait_for(attack(b, args.seconds), args.seconds + 60)
                took = time.monotonic() - started
                rss1 = b.rss_mib()
                h = health.stop()
                label = "on " if limits_on else "off"
                print(f"{name:12} limits {label}: {result}; RSS {rss0:.0f} → {rss1:.0f} MiB; {h} ({took:.1f} s)", flush=True)
            finally:
                warnings = b.stop()
                for w in warnings[:3]:
                    print(f"{'':12}   log: {w[:200]}")


if __name__ == "__main__":
    asyncio.run(main())
