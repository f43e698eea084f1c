#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/corpus/TARGET/*: a few small inputs per
target that reach past the first checks (a valid hypercall block, a batch
of each hint, a PVH ELF, a PHFS image, a queue with a request, the device
bring-up). Run from anywhere; it rewrites only the seed files it names and
must never delete what libFuzzer or anyone else added."""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def block(op, a0=0, a1=0):
    return struct.pack("<Ii7Q", op, 77, a0, a1, 0, 0, 0, 0, 0)


# hypercall_block: flags (pv, hinting, shared, reporting), then per call:
# gpa selector + address, align byte, 64-byte block, steer byte, [batch],
# width selector, offset selector.
def call(blk, steer=0, batch=b"", width=4):
    gpa = bytes([2]) + struct.pack("<I", 0x4000)
    return gpa + b"\x01" + blk + bytes([steer]) + batch + bytes([width]) + b"\x01"


put("hypercall_block", "hello", b"\x00\x01\x00\x00" + call(block(1, 1, 0)))
put("hypercall_block", "bad-version", b"\x00\x01\x00\x00" + call(block(1, 9, 0)))
batch = struct.pack("<I12x", 2) + struct.pack("<QIHh", 10, 4, 1, 0) + struct.pack("<QIHh", 10, 1, 3, 0)
put("hypercall_block", "hint-batch", b"\x00\x01\x00\x00" + call(block(2, 0x10_0000, 2), 0, batch.ljust(4096, b"\0")))
put("hypercall_block", "state-table", b"\x00\x01\x01\x00" + call(block(4, 0x20_0000, 4096)))
put("hypercall_block", "unknown-op", b"\x00\x01\x00\x00" + call(block(99)))


# hint_batch: pv, reporter, history count, gpa selector, header, asked,
# then entries (op selector, pfn selector + value, count selector + value).
def entry(op, pfn, count):
    return bytes([op]) + bytes([2]) + struct.pack("<H", pfn) + bytes([3]) + bytes([count - 1])


hist = b"\x00"
put("hint_batch", "each-hint", b"\x00\x00" + hist + b"\x01" + b"\x01\x05" + b"\x01\x05"
    + entry(1, 100, 4) + entry(3, 100, 1) + entry(2, 101, 1) + entry(3, 101, 1) + entry(4, 101, 1))
put("hint_batch", "reporting", b"\x00\x01" + hist + b"\x01\x01\x02\x01\x02" + entry(1, 512, 4) + entry(2, 512, 1))
put("hint_batch", "pv", b"\x01\x00" + hist + b"\x01\x01\x03\x01\x03" + entry(3, 7, 1) + entry(5, 7, 1) + entry(4, 7, 1))

# state_table: 4 bytes to decode, pv, history count, place selector +
# page, entries selector, 64 junk bytes, then steps.
steps = bytes([2, 0, 2, 3]) + bytes([2, 1, 3, 1, 1, 0]) + bytes([2, 2, 1]) + bytes([2, 3, 2, 1, 0]) + bytes([2, 8])
put("state_table", "shared", bytes([0, 0x41, 0x82, 0xe3]) + b"\x00\x00" + b"\x01" + struct.pack("<H", 0x200)
    + b"\x01" + bytes(64) + steps)
put("state_table", "own", bytes([1, 2, 3, 4]) + b"\x01\x00" + b"\x01" + struct.pack("<H", 0x200)
    + b"\x00" + struct.pack("<Q", 5) + bytes(64) + steps)


# elf_loader: a mode byte, then the image.
def elf(entry=0x10_0000):
    ehdr = bytearray(64)
    ehdr[0:4] = b"\x7fELF"
    ehdr[4], ehdr[5], ehdr[6] = 2, 1, 1
    struct.pack_into("<HHIQQQIHHHHHH", ehdr, 16, 2, 62, 1, entry, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)
    code = b"\xf4" * 16
    data_off = 64 + 2 * 56
    load = struct.pack("<IIQQQQQQ", 1, 5, data_off, 0x10_0000, 0x10_0000, len(code), 0x1000, 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, data_off + len(code), 0, 0, len(note), len(note), 4)
    return bytes(ehdr) + load + pnote + code + note


put("elf_loader", "pvh", b"\x01" + elf())
put("elf_loader", "pvh-bad-entry", b"\x01" + elf(0x8000))
put("elf_loader", "cmdline", b"\x00" + b"console=ttyS0\xffhints=shared\xffworkload=mmap")

# disk_image: mode byte (2: fix the superblock), then the image.
sb = b"PHFS0001" + struct.pack("<IIQQ", 1, 4096, 3, 1)
d = b"hello".ljust(40, b"\0") + struct.pack("<QQII", 5, 2, 7, 0)
put("disk_image", "one-file", b"\x00" + sb.ljust(4096, b"\0") + d.ljust(4096, b"\0") + b"world".ljust(4096, b"\0"))
put("disk_image", "fixed-superblock", b"\x02" + bytes(32) + d.ljust(4064, b"\0") + b"x".ljust(4096, b"\0"))

# virtio_chain: writable, queue size selector, then per descriptor: addr
# selector + value, len selector + value, flags, next, header?, head.
def desc(addr, length, flags, nxt, header=None):
    b = bytes([2]) + struct.pack("<I", addr - 0x3000) + bytes([3]) + struct.pack("<H", length) + bytes([flags, nxt])
    if header is None:
        return b + b"\x00" + b"\x00"
    return b + b"\x01" + bytes([header[0]]) + bytes([header[1]]) + b"\x00"


put("virtio_chain", "read", b"\x00" + b"\x02"
    + desc(0x4000, 16, 1, 1, (0, 2)) + desc(0x5000, 512, 3, 2) + desc(0x6000, 1, 2, 0) + desc(0x7000, 1, 2, 0)
    + b"\x01\x01")
put("virtio_chain", "write", b"\x01" + b"\x02"
    + desc(0x4000, 16, 1, 1, (1, 1)) + desc(0x5000, 512, 1, 2) + desc(0x6000, 1, 2, 0) + desc(0x7000, 1, 2, 0)
    + b"\x01\x01")


# mmio_registers: read-only selector, then ops (width, op, ...).
put("mmio_registers", "bring-up", b"\x00" + bytes([4, 5, 4]) + struct.pack("<I", 0x100)
    + struct.pack("<I", 0x200) + struct.pack("<I", 0x300) + bytes([4, 7]) + struct.pack("<I", 0x1000)
    + bytes([16]) + bytes(17) + bytes([4, 6]) + bytes([4, 9, 1, 0, 0, 0, 0]))
put("mmio_registers", "registers", b"\x01" + bytes([4, 4]) + struct.pack("<H", 0x70) + bytes([4, 0, 1, 0x1c, 1, 3])
    + bytes([1, 8, 1]) + struct.pack("<H", 0x7ff))

# api_request: what a client sends on the API socket.
put("api_request", "get-memory", b"GET /memory HTTP/1.1\r\nHost: localhost\r\n\r\n")
put("api_request", "patch-budget",
    b"PATCH /memory HTTP/1.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 25\r\n\r\n{\"budget_bytes\": 8388608}")
put("api_request", "stop",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 17\r\n\r\n{\"action\":\"stop\"}")

