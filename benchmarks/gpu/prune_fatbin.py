"""Shrink a CUDA shared library's fatbins for one GPU family, in place: every cubin entry whose SM version is not in
KEEP gets, instead of its zstd-compressed ELF, a valid zstd frame of as many zero bytes (RLE blocks, a few bytes),
the rest of its slot zeroed; entry headers, slot sizes and every offset stay as they were. The CUDA driver picks
the entry for the device's SM by the headers, so on an sm_90 card nothing pruned is ever read; NVIDIA's cuobjdump
still parses the whole file. Zeros compress to nothing, so the xz archive shrinks by the pruned cubins.

With --stubs DIR, a pruned entry decodes to DIR/e<SM>.cubin (an empty module that ptxas built for that SM, e.g.
`ptxas -arch=sm_80 empty.ptx`, empty.ptx = ".version 9.0 / .target sm_80 / .address_size 64"; e120.cubin for
sm_120a) instead of zeros, so every entry is a valid ELF (cuobjdump -lelf lists them all).

Usage: prune_fatbin.py LIB [--stubs DIR] [SM ...]   (default SM: 90, the H100/H200)"""
import collections
import mmap
import struct
import sys

FLAG_ZSTD = 0x8000  # flags bit of a zstd-compressed entry in these fatbins (ONNX Runtime 1.31, CUDA 13)


def zstd_zeros(n: int) -> bytes:
    """A zstd frame (single segment, 4-byte content size, no checksum) decoding to n zero bytes."""
    frame = struct.pack("<IBI", 0xFD2FB528, 0xA0, n)
    left = n
    while True:
        size = min(left, 1 << 17)
        left -= size
        frame += struct.pack("<I", (size << 3) | (1 << 1) | (left == 0))[:3] + b"\0"
        if left == 0:
            return frame


def frame_content_size(d, at: int) -> int | None:
    """The content size a zstd frame header declares (None when it declares none)."""
    fhd = d[at + 4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    did = (0, 1, 2, 4)[fhd & 3]
    start = at + 5 + (0 if single else 1) + did
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0:
        return None
    value = int.from_bytes(d[start:start + width], "little")
    return value + 256 if width == 2 else value


def zstd_raw(content: bytes) -> bytes:
    """A zstd frame (single segment, 4-byte content size, no checksum) holding `content` as one raw block."""
    assert len(content) < 1 << 17
    return struct.pack("<IBI", 0xFD2FB528, 0xA0, len(content)) + \
        struct.pack("<I", (len(content) << 3) | 1)[:3] + content


def main() -> None:
    args = sys.argv[1:]
    stubs = None
    if "--stubs" in args:
        at = args.index("--stubs")
        stubs, args = args[at + 1], args[:at] + args[at + 2:]
    path, keep = args[0], {int(x) for x in args[1:]} or {90}
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as d:
        magic, pos = struct.pack("<I", 0xBA55ED50), 0
        kept, pruned = collections.Counter(), collections.Counter()
        while (i := d.find(magic, pos)) >= 0:
            _, version, hsize, fatsize = struct.unpack_from("<IHHQ", d, i)
            if version != 1 or hsize != 16 or i + 16 + fatsize > len(d):
                pos = i + 4
                continue
            e, end = i + 16, i + 16 + fatsize
            while e < end:
                kind, _, ehs, padded = struct.unpack_from("<HHIQ", d, e)
                assert kind in (1, 2) and 0x40 <= ehs <= 0x100, (hex(e), kind, ehs)
                size, = struct.unpack_from("<I", d, e + 16)
                sm, = struct.unpack_from("<I", d, e + 28)
                flags, = struct.unpack_from("<Q", d, e + 40)
                raw, = struct.unpack_from("<Q", d, e + 56)
                payload = e + ehs
                if sm in keep:
                    kept[sm] += padded
                else:
                    assert flags & FLAG_ZSTD and d[payload:payload + 4] == b"\x28\xb5\x2f\xfd", hex(e)
                    assert size <= padded and frame_content_size(d, payload) == raw, hex(e)
                    if stubs:
                        with open(f"{stubs}/e{sm}.cubin", "rb") as stub:
                            content = stub.read()
                        frame = zstd_raw(content)
                    else:
                        frame = zstd_zeros(raw)
                    if len(frame) > padded:  # a small entry: the stub would not fit, keep the original
                        kept[f"{sm} (small, kept)"] += padded
                        e += ehs + padded
                        continue
                    d[payload:payload + padded] = frame + bytes(padded - len(frame))
                    if stubs:
                        struct.pack_into("<Q", d, e + 56, len(content))
                    struct.pack_into("<I", d, e + 16, len(frame))
                    pruned[sm] += padded
                e += ehs + padded
            pos = end
        print("kept bytes by SM", dict(kept), "pruned bytes by SM", dict(pruned))


if __name__ == "__main__":
    main()
