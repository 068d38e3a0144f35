#!/usr/bin/env python3
"""Slow-connection attacker for turnd's TCP/TLS listeners (issue 10).

Keeps CONNECTIONS connections open to HOST:PORT, spread over the source
addresses 127.0.0.1 .. 127.0.0.SOURCES (loopback only), each sending one
byte a second of a request that never completes (a STUN Allocate header
announcing more bytes than ever come, or with --tls a TLS ClientHello
record header), never authenticating. A connection the server closes is
opened again after a second, so the attack keeps its size. Prints one line
of counters every 5 s and a summary at the end. Standard library only.

    benches/slow_clients.py --port 3478 --connections 2000 --sources 200 --duration 30
"""

import argparse
import asyncio
import resource
import time

STUN = bytes([0x00, 0x03, 0x01, 0x00, 0x21, 0x12, 0xA4, 0x42]) + bytes(range(12))
TLS = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + bytes(32)


class Counters:
    def __init__(self):
        self.open = 0
        self.opened = 0
        self.closed_by_server = 0
        self.connect_failed = 0
        self.lifetimes = []


async def slot(host, port, source, payload, stop, c):
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            c.connect_failed += 1
            await asyncio.sleep(1)
            continue
        c.open += 1
        c.opened += 1
        t0 = time.monotonic()
        i = 0
        try:
            while time.monotonic() < stop:
                writer.write(payload[i % len(payload) : i % len(payload) + 1])
                i += 1
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    break
        except OSError:
            pass
        finally:
            c.open -= 1
        if time.monotonic() < stop:
            c.closed_by_server += 1
            c.lifetimes.append(time.monotonic() - t0)
        writer.close()
        await asyncio.sleep(1)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--sources", type=int, default=1, help="127.0.0.1 .. 127.0.0.N")
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--tls", action="store_true", help="trickle a TLS ClientHello")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.connections + 1024)), hard))
    stop = time.monotonic() + a.duration
    c = Counters()
    payload = TLS if a.tls else STUN
    tasks = []
    for i in range(a.connections):
        source = f"127.0.0.{1 + i % a.sources}"
        tasks.append(asyncio.create_task(slot(a.host, a.port, source, payload, stop, c)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)

    async def report():
        while time.monotonic() < stop:
            await asyncio.sleep(5)
            print(f"slow_clients: open {c.open} opened {c.opened} closed_by_server {c.closed_by_server} connect_failed {c.connect_failed}", flush=True)

    r = asyncio.create_task(report())
    await asyncio.gather(*tasks)
    r.cancel()
    life = sorted(c.lifetimes)
    med = life[len(life) // 2] if life else float("nan")
    print(f"slow_clients: done opened {c.opened} closed_by_server {c.closed_by_server} connect_failed {c.connect_failed} median_lifetime_s {med:.1f}", flush=True)


asyncio.run(main())
