#!/usr/bin/env python3
"""Helpers for xdp/smoke.sh (standard library only).

  pkt.py ethtool IFACE tx|gro on|off          legacy ethtool ioctl (no ethtool binary needed)
  pkt.py c2p-key CLIENT CPORT LISTEN LPORT CHANNEL     -> hex bytes for bpftool
  pkt.py c2p-val RELAY RPORT PEER PPORT STATS_IDX TTL_S
  pkt.py p2c-key PEER PPORT RELAY RPORT
  pkt.py p2c-val CLIENT CPORT LISTEN LPORT CHANNEL STATS_IDX TTL_S
  pkt.py u32 N                                          -> hex bytes of a u32 key
  pkt.py send SRC SPORT DST DPORT HEXPAYLOAD [COUNT [RATE_PPS]]
  pkt.py send-lengths SRC SPORT DST DPORT CHANNEL|- L1,L2,...   one datagram per length (pattern data)
  pkt.py expect-lengths OUTFILE SRC SPORT CHANNEL|- L1,L2,...     check them at the receiver
  pkt.py sink BIND_ADDR BIND_PORT SECONDS               bound UDP socket that never reads
  pkt.py recv IFACE BIND_ADDR BIND_PORT SECONDS OUTFILE [READYFILE]
      UDP socket on BIND_ADDR:BIND_PORT plus an AF_PACKET capture on IFACE
      (UDP to BIND_PORT only); writes JSON: datagrams the socket got and the
      frames seen on the wire with IP/UDP checksums verified in software.
  pkt.py percpu-sum JSONFILE FIELD_COUNT               sum a bpftool -j lookup of a per-CPU value
  pkt.py percpu-dump JSONFILE FIELD_COUNT              the same for every entry of a bpftool -j dump
  pkt.py expect OUTFILE COUNT [SRC SPORT PAYLOAD]      check a recv result
Addresses are IPv4 or IPv6 literals; TTL_S is seconds from now (negative:
already expired) for deadline_ns (CLOCK_MONOTONIC == bpf_ktime_get_ns).
"""
import ctypes
import fcntl
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time


def addr16(a):
    ip = ipaddress.ip_address(a)
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def be16(n):
    return struct.pack("!H", int(n, 0) if isinstance(n, str) else n)


def deadline(ttl_s):
    return struct.pack("<Q", max(0, time.monotonic_ns() + int(float(ttl_s) * 1e9)))


def hexbytes(b):
    return " ".join("%02x" % x for x in b)


def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s  # ones' complement sum; a correct packet sums to 0xffff


def parse_frame(frame, port):
    """Returns a dict for an Ethernet+IPv4/IPv6+UDP frame to `port`, else None."""
    if len(frame) < 14:
        return None
    etype = struct.unpack("!H", frame[12:14])[0]
    if etype == 0x0800:
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != 17 or (ip[0] & 0x0F) != 5:
            return None
        tot = struct.unpack("!H", ip[2:4])[0]
        ip = ip[:tot]
        src, dst = str(ipaddress.ip_address(ip[12:16])), str(ipaddress.ip_address(ip[16:20]))
        udp = ip[20:]
        ip_ok = csum(ip[:20]) == 0xFFFF
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
        ttl = ip[8]
    elif etype == 0x86DD:
        ip = frame[14:]
        if len(ip) < 40 or ip[6] != 17:
            return None
        plen = struct.unpack("!H", ip[4:6])[0]
        ip = ip[: 40 + plen]
        src, dst = str(ipaddress.ip_address(ip[8:24])), str(ipaddress.ip_address(ip[24:40]))
        udp = ip[40:]
        ip_ok = True
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(udp), 17)
        ttl = ip[7]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, ulen, uck = struct.unpack("!HHHH", udp[:8])
    if dport != port:
        return None
    udp_ok = ulen == len(udp) and (uck == 0 and etype == 0x0800 or csum(pseudo + udp) == 0xFFFF)
    return {
        "src": src, "sport": sport, "dst": dst, "dport": dport, "ttl": ttl,
        "ip_csum_ok": ip_ok, "udp_csum_ok": udp_ok, "udp_csum": uck,
        "payload": udp[8:].hex(),
    }


def cmd_ethtool(iface, feature, onoff):
    SIOCETHTOOL = 0x8946
    cmd = {"tx": 0x17, "gro": 0x2C}[feature]
    cbuf = ctypes.create_string_buffer(struct.pack("II", cmd, 1 if onoff == "on" else 0), 8)
    ifr = struct.pack("16sP", iface.encode(), ctypes.addressof(cbuf))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)


def cmd_send(src, sport, dst, dport, payload_hex, count="1", rate="0"):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, int(sport)))
    payload = bytes.fromhex(payload_hex)
    count, rate = int(count), float(rate)
    t0 = time.monotonic()
    for i in range(count):
        if rate > 0:
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        try:
            s.sendto(payload, (dst, int(dport)))
        except ConnectionRefusedError:  # ICMP port unreachable from an earlier datagram
            pass


def cmd_sink(bind_addr, bind_port, seconds):
    """Binds a UDP socket and never reads it (no ICMP errors, drops silently)."""
    fam = socket.AF_INET6 if ":" in bind_addr else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((bind_addr, int(bind_port)))
    time.sleep(float(seconds))


def cmd_recv(iface, bind_addr, bind_port, seconds, outfile, readyfile=None):
    port = int(bind_port)
    fam = socket.AF_INET6 if ":" in bind_addr else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind((bind_addr, port))
    r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    r.bind((iface, 0))
    if readyfile:
        open(readyfile, "w").close()
    out = {"udp": [], "wire": []}
    end = time.monotonic() + float(seconds)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        rd, _, _ = select.select([u, r], [], [], left)
        for sock in rd:
            if sock is u:
                data, addr = u.recvfrom(65535)
                out["udp"].append({"src": addr[0], "sport": addr[1], "payload": data.hex()})
            else:
                frame, info = r.recvfrom(65535)
                if info[2] == socket.PACKET_OUTGOING:
                    continue
                p = parse_frame(frame, port)
                if p:
                    out["wire"].append(p)
    with open(outfile, "w") as f:
        json.dump(out, f, indent=1)


def cmd_percpu_sum(jsonfile, nfields):
    """Sums a `bpftool -j map lookup` result of a per-CPU map whose value is
    nfields little-endian u64s; prints them space-separated."""
    j = json.load(open(jsonfile))
    if isinstance(j, list):
        j = j[0]
    n = int(nfields)
    tot = [0] * n
    for v in j["values"]:
        raw = bytes(int(x, 16) for x in v["value"])
        for i, x in enumerate(struct.unpack("<%dQ" % n, raw)):
            tot[i] += x
    print(" ".join(map(str, tot)))


def cmd_expect(outfile, count, src="", sport="0", payload_hex=""):
    """Checks a recv result: exactly COUNT datagrams at the socket and on the
    wire, each from SRC:SPORT with PAYLOAD and correct checksums."""
    out = json.load(open(outfile))
    count = int(count)
    errs = []
    if len(out["udp"]) != count:
        errs.append("socket got %d datagrams, want %d" % (len(out["udp"]), count))
    if len(out["wire"]) != count:
        errs.append("wire saw %d frames, want %d" % (len(out["wire"]), count))
    want_src = str(ipaddress.ip_address(src)) if src else ""
    for d in out["udp"]:
        got = str(ipaddress.ip_address(d["src"].split("%")[0]))
        if got != want_src or d["sport"] != int(sport) or d["payload"] != payload_hex:
            errs.append("socket datagram differs: %s" % d)
    for w in out["wire"]:
        if w["src"] != want_src or w["sport"] != int(sport) or w["payload"] != payload_hex:
            errs.append("wire frame differs: %s" % w)
        if not (w["ip_csum_ok"] and w["udp_csum_ok"]):
            errs.append("bad checksum: %s" % w)
    if errs:
        print("\n".join(errs))
        sys.exit(1)


def cmd_percpu_dump(jsonfile, nfields):
    """Sums every entry of a `bpftool -j map dump` of a per-CPU array whose
    value is nfields u64s; prints one line per key (in key order)."""
    j = json.load(open(jsonfile))
    n = int(nfields)
    rows = {}
    for e in j:
        key = struct.unpack("<I", bytes(int(x, 16) for x in e["key"]))[0]
        tot = [0] * n
        for v in e["values"]:
            raw = bytes(int(x, 16) for x in v["value"])
            for i, x in enumerate(struct.unpack("<%dQ" % n, raw)):
                tot[i] += x
        rows[key] = tot
    for k in sorted(rows):
        print(" ".join(map(str, rows[k])))


def pattern(n):
    return bytes((i * 131 + n * 7) & 0xFF for i in range(n))


def cmd_send_lengths(src, sport, dst, dport, channel, lengths):
    """Sends one datagram per length with pattern(length) as data; as
    ChannelData on CHANNEL (hex) or plain when CHANNEL is '-'."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((src, int(sport)))
    for n in map(int, lengths.split(",")):
        data = pattern(n)
        if channel != "-":
            data = struct.pack("!HH", int(channel, 16), n) + data
        s.sendto(data, (dst, int(dport)))
        time.sleep(0.002)


def cmd_expect_lengths(outfile, src, sport, channel, lengths):
    """Checks that a recv result holds exactly one datagram per length, at the
    socket and on the wire, with the pattern as data (behind a ChannelData
    header for CHANNEL unless '-'), from SRC:SPORT, with good checksums."""
    out = json.load(open(outfile))
    want = sorted(int(n) for n in lengths.split(","))

    def expected(n):
        d = pattern(n)
        if channel != "-":
            d = struct.pack("!HH", int(channel, 16), n) + d
        return d.hex()
    errs = []
    for where in ("udp", "wire"):
        got = out[where]
        if len(got) != len(want):
            errs.append("%s: %d datagrams, want %d" % (where, len(got), len(want)))
        exp = sorted(expected(n) for n in want)
        if sorted(d["payload"] for d in got) != exp:
            errs.append("%s: payloads differ" % where)
        for d in got:
            if str(ipaddress.ip_address(d["src"].split("%")[0])) != str(ipaddress.ip_address(src)) or d["sport"] != int(sport):
                errs.append("%s: from %s:%s" % (where, d["src"], d["sport"]))
            if where == "wire" and not (d["ip_csum_ok"] and d["udp_csum_ok"]):
                errs.append("bad checksum, %d bytes" % (len(d["payload"]) // 2))
    if errs:
        print("\n".join(errs))
        sys.exit(1)


def main(argv):
    cmd, a = argv[1], argv[2:]
    if cmd == "ethtool":
        cmd_ethtool(*a)
    elif cmd == "c2p-key":
        c, cp, l, lp, ch = a
        print(hexbytes(addr16(c) + addr16(l) + be16(cp) + be16(lp) + be16(ch) + b"\0\0"))
    elif cmd == "c2p-val":
        r, rp, p, pp, idx, ttl = a
        print(hexbytes(addr16(r) + addr16(p) + be16(rp) + be16(pp) + struct.pack("<I", int(idx)) + deadline(ttl)))
    elif cmd == "p2c-key":
        p, pp, r, rp = a
        print(hexbytes(addr16(p) + addr16(r) + be16(pp) + be16(rp) + b"\0" * 4))
    elif cmd == "p2c-val":
        c, cp, l, lp, ch, idx, ttl = a
        print(hexbytes(addr16(c) + addr16(l) + be16(cp) + be16(lp) + be16(ch) + b"\0\0"
                       + struct.pack("<II", int(idx), 0) + deadline(ttl)))
    elif cmd == "u32":
        print(hexbytes(struct.pack("<I", int(a[0]))))
    elif cmd == "send":
        cmd_send(*a)
    elif cmd == "sink":
        cmd_sink(*a)
    elif cmd == "recv":
        cmd_recv(*a)
    elif cmd == "send-lengths":
        cmd_send_lengths(*a)
    elif cmd == "expect-lengths":
        cmd_expect_lengths(*a)
    elif cmd == "expect":
        cmd_expect(*a)
    elif cmd == "percpu-dump":
        cmd_percpu_dump(*a)
    elif cmd == "percpu-sum":
        cmd_percpu_sum(*a)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
