#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/seeds/TARGET/ (standard library only).

Text formats come from the repository's own files (graphs/, partitioning/, targets/,
graphs/examples/, the interop fixtures); binary ones are made here, small and deterministic:
safetensors files, tar shards (plain and gzip) holding PNG, JPEG and WebP images, coordinator
frames, tokenizer files. The input layout of each target is the one fuzz/harness.rs reads.
Usage: python3 fuzz/make_seeds.py   (from anywhere; rewrites fuzz/seeds/)
"""

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import sys
import tarfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*path):
    with open(os.path.join(ROOT, *path), "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------ images

def png(w, h, channels, pixels):
    """An 8-bit PNG of grey (1), grey+alpha (2), RGB (3) or RGBA (4) samples."""
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, body):
        c = kind + body
        return struct.pack(">I", len(body)) + c + struct.pack(">I", zlib.crc32(c))

    rows = b"".join(b"\0" + bytes(pixels[y * w * channels:(y + 1) * w * channels]) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class Bits:
    """MSB-first bits with JPEG's byte stuffing."""

    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, n):
        for i in reversed(range(n)):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def done(self):
        while self.n:
            self.put(1, 1)
        return bytes(self.out)


def jpeg(w, h, blocks):
    """A baseline JPEG (4:4:4, quantisation 1) whose 8×8 blocks are flat: `blocks[c][i]` is the
    DC level (-1024..1016, a multiple of 8) of component c in block i, row-major."""
    comps = len(blocks)
    bw, bh = (w + 7) // 8, (h + 7) // 8
    # DC table: categories 0..11, each a 4-bit code; AC table: only EOB (symbol 0), code `0`.
    dc_codes = {cat: (cat, 4) for cat in range(12)}
    out = b"\xff\xd8"
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + b"\x01" * 64
    frame = struct.pack(">BHHB", 8, h, w, comps)
    for c in range(comps):
        frame += bytes([c + 1, 0x11, 0])
    out += b"\xff\xc0" + struct.pack(">H", 2 + len(frame)) + frame
    dc_counts = [0, 0, 0, 12] + [0] * 12
    dht = bytes([0x00]) + bytes(dc_counts) + bytes(range(12))
    dht += bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0])
    out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
    scan = bytes([comps]) + b"".join(bytes([c + 1, 0x00]) for c in range(comps)) + b"\x00\x3f\x00"
    out += b"\xff\xda" + struct.pack(">H", 2 + len(scan)) + scan
    bits, prev = Bits(), [0] * comps
    for i in range(bw * bh):
        for c in range(comps):
            dc = blocks[c][i] // 8  # the DCT's DC of a flat block is 8 × its level
            diff, prev[c] = dc - prev[c], dc
            cat = abs(diff).bit_length()
            code, n = dc_codes[cat]
            bits.put(code, n)
            if cat:
                bits.put(diff if diff > 0 else diff + (1 << cat) - 1, cat)
            bits.put(0, 1)  # EOB
    return out + bits.done() + b"\xff\xd9"


class LsbBits:
    def __init__(self):
        self.v, self.n = 0, 0

    def put(self, value, n):
        self.v |= value << self.n
        self.n += n

    def done(self):
        return self.v.to_bytes((self.n + 7) // 8, "little")


def webp_flat(w, h, argb):
    """A lossless WebP (VP8L) of one colour: five prefix codes of one symbol each, so that every
    pixel costs no bits."""
    a, r, g, b = argb
    bits = LsbBits()
    bits.put(0x2F, 8)
    bits.put(w - 1, 14)
    bits.put(h - 1, 14)
    bits.put(1 if a != 255 else 0, 1)
    bits.put(0, 3)
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for sym in (g, r, b, a, 0):
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # of 8 bits
        bits.put(sym, 8)
    body = bits.done()
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def images():
    grad = [(x * 37 + y * 11) % 256 for y in range(6) for x in range(5)]
    yield "grey.png", png(5, 6, 1, grad)
    yield "grey-alpha.png", png(3, 2, 2, list(range(12)))
    yield "rgb.png", png(4, 3, 3, [(i * 29) % 256 for i in range(36)])
    yield "rgba.png", png(2, 2, 4, [255, 0, 0, 128] * 4)
    yield "grey.jpg", jpeg(16, 8, [[-512, 400]])
    yield "rgb.jpg", jpeg(9, 9, [[0, 8, 16, 24], [-64, 64, 0, 0], [800, -800, 8, -8]])
    yield "flat.webp", webp_flat(3, 2, (255, 10, 200, 30))
    yield "alpha.webp", webp_flat(4, 4, (100, 1, 2, 3))


# ------------------------------------------------------------------------------ safetensors

def safetensors(tensors, metadata=None):
    header, body = {}, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def tar_of(members, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def frame(body):
    return struct.pack(">I", len(body)) + body


def text(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    imgs = dict(images())

    # safetensors: 0x00 + a file; 0x01 + bytes the harness builds a file from.
    f32 = struct.pack("<6f", *[0.5 * i for i in range(6)])
    put("safetensors", "f32-bf16", b"\0" + safetensors(
        [("a", "F32", [2, 3], f32), ("b", "BF16", [2], b"\x80\x3f\x00\x40")], {"format": "pt"}))
    put("safetensors", "ints", b"\0" + safetensors(
        [("i", "I64", [1], struct.pack("<q", -7)), ("u", "U8", [3], b"\1\2\3"), ("m", "BOOL", [2], b"\0\1"),
         ("e", "F64", [0, 4], b"")]))
    put("safetensors", "empty", b"\0" + safetensors([]))
    put("safetensors", "tiny-param", b"\0" + safetensors(
        [("temperature", "F32", [], struct.pack("<f", 0.07))]))
    for i, s in enumerate([b"\x01\x03\x00\x02\x01\x02\x03\x04\x05\x06\x07\x08",
                           b"\x01\x02\x05\x01\x04" + bytes(range(40)),
                           b"\x03\x04\x00\x03\x02\x02\x02" + bytes(80)]):
        put("safetensors", f"built-{i}", s)

    for f in sorted(os.listdir(os.path.join(ROOT, "graphs"))):
        if f.endswith(".toml"):
            put("model_config", f, read("graphs", f))

    fx = ("tests", "fixtures", "clip")
    put("interop", "hf-clip", b"\0" + read(*fx, "hf-clip", "config.json") + b"\n===\n"
        + read(*fx, "hf-clip", "preprocessor_config.json"))
    put("interop", "hf-siglip", b"\0" + read(*fx, "hf-siglip", "config.json") + b"\n===\n"
        + read(*fx, "hf-siglip", "preprocessor_config.json"))
    put("interop", "open-clip", b"\1" + read(*fx, "open-clip", "open_clip_config.json"))

    for f in sorted(os.listdir(os.path.join(ROOT, "partitioning"))):
        put("rules", f, read("partitioning", f))

    topo = {"tpu-v4": "2x2x1", "tpu-v5e": "2x2", "tpu-v5p": "2x2x1", "tpu-v6e": "4x4",
            "a100": "8", "h100": "16", "h200": "4"}
    for f in sorted(os.listdir(os.path.join(ROOT, "targets"))):
        name = f[:-5]
        put("target", f, f"{name}:{topo[name]}\n".encode() + read("targets", f))

    for f in sorted(os.listdir(os.path.join(ROOT, "graphs", "examples"))):
        put("stablehlo", f, read("graphs", "examples", f))
    for f in ["all_gather_gspmd.mlir", "all_gather_shardy.mlir", "axis_index_shardy.mlir"]:
        put("stablehlo", f, read("graphs", "golden", f))

    manifest = {
        "format": 1, "target": "cpu:1", "platform": "cpu", "device_kind": "cpu", "devices": 1,
        "plugin_version": "x 1", "model": "tiny", "config_sha256": "00", "config": "name = \"tiny\"\n",
        "batch": 8, "microbatches": 1, "remat": "none", "dtype": "f32", "mesh": "data=1",
        "partitioning": "data_parallel", "partitioner": "shardy", "donate": False,
        "program_sha256": "@SHA@", "arguments": ["tensor<2xf32>"], "results": ["tensor<2xf32>"],
        "device_assignment": [0], "executable_sha256": "@XSHA@",
    }
    program = read("graphs", "examples", "dense.mlir").decode()
    put("executable", "built", b"\1" + json.dumps(manifest, indent=1).encode() + b"\n===\n"
        + program.encode() + b"\n===\n" + b"\x08\x01\x12\x04exec")
    put("executable", "not-basic", b"\0BASICEXE" + b"\x02" + b"\0" * 7 + b"{}")

    sample = [("s0.png", imgs["grey.png"]), ("s0.txt", b"a grey picture."), ("s0.cls", b"3"),
              ("s1.jpg", imgs["rgb.jpg"]), ("s1.txt", b"a photo."),
              ("s2.webp", imgs["flat.webp"]), ("s2.txt", b"flat"), ("s2.json", b"{}"),
              ("s3.txt", b"no image"), ("s4.png", imgs["rgba.png"]), ("s4.txt", b"x"), ("s4.cls", b"x")]
    put("webdataset", "plain.tar", b"\0" + tar_of(sample))
    put("webdataset", "gzip.tar.gz", b"\0" + tar_of(sample[:5], gz=True))
    put("webdataset", "long-names.tar", b"\0" + tar_of([("d/" + "k" * 120 + ".txt", b"long"),
                                                        ("d/" + "k" * 120 + ".png", imgs["grey.png"])]))
    for i, s in enumerate([b"\x01\x04\x00\x00\x03\x05\x00hello\x00\x00\x00",
                           b"\x01\x03\x01\x01\x00\x10\x00" + bytes(range(16)) + b"\x01\x03\x00\x20\x00",
                           b"\x03\x02\x02\x05\x07" + bytes(30) + b"\x01\x01"]):
        put("webdataset", f"built-{i}", s)

    for name, data in imgs.items():
        put("image", name, data)

    for kind, model in [("wordlevel", {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "a": 2,
                                                                       "photo": 3, "of": 4, "cat": 5},
                                       "unk_token": "[UNK]"}),
                        ("bpe", {"type": "BPE", "dropout": None, "unk_token": "[UNK]",
                                 "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                 "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                                 "vocab": {"[UNK]": 0, "a": 1, "b": 2, "ab": 3}, "merges": [["a", "b"]]}),
                        ("wordpiece", {"type": "WordPiece", "unk_token": "[UNK]",
                                       "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                                       "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "cat": 4,
                                                 "##s": 5}})]:
        tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
               "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
               "post_processor": None, "decoder": None, "model": model}
        if kind == "wordpiece":
            tok["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}
        put("tokenizer", f"{kind}.json", json.dumps(tok, indent=1))

    for i, spec in enumerate(["data/train-{000..009}.tar", "pipe:cat shard-{0..3}.tar",
                              "gs://bucket/train-{00..99}.tar::s3://b/x-{a,b}.tar\n1,2",
                              "a-{1..2}-{x,y}.tar", "folder::other-folder\n0.5,0.5", "{0..99999999999}"]):
        put("shard_spec", f"spec-{i}", spec)

    hello = b"\x01BASICCO\x01" + struct.pack(">II", 1, 4) + text("token") + struct.pack(">QQQ", 60000, 1000, 10000)
    put_ = b"\x02" + struct.pack(">Q", 7) + b"\x01" + text("key") + text("value")
    barrier = b"\x02" + struct.pack(">Q", 8) + b"\x04" + text("ready") + struct.pack(">QQ", 5000, 3)
    heartbeat = b"\x03\x01" + struct.pack(">Q", 12)
    reply = b"\x03" + struct.pack(">Q", 7) + b"\x03\x02" + text("not found")
    for i, (mode, stream) in enumerate([(b"\x10\x00", frame(hello) + frame(put_)),
                                        (b"\x03\x01", frame(barrier) + frame(heartbeat)),
                                        (b"\x00\x02", frame(reply) + frame(b"\x01") + frame(b"\x07" + struct.pack(">Q", 9))),
                                        (b"\x01\x00", frame(b"\x05" + struct.pack(">I", 2) + text("SIGTERM")))]):
        put("coord_wire", f"stream-{i}", mode + stream)

    envs = {
        "basic": "BASIC_COORDINATOR=10.0.0.1:1234\nBASIC_NUM_PROCESSES=4\nBASIC_PROCESS_ID=2\nBASIC_JOB_TOKEN=t",
        "slurm": "SLURM_PROCID=3\nSLURM_NTASKS=8\nSLURM_STEP_NODELIST=node[001-004,010],other\nSLURM_JOB_ID=12345",
        "gke": "TPU_WORKER_ID=1\nTPU_WORKER_HOSTNAMES=a,b,c,d\nMEGASCALE_NUM_SLICES=1",
        "k8s": "JOB_COMPLETION_INDEX=2\nBASIC_NUM_PROCESSES=4\nJOBSET_NAME=js\nHOSTNAME=job-2",
        "metadata": "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: text/plain\r\n\r\n"
                    "w-0:8470:10.0.0.2,w-1:8470:10.0.0.3",
    }
    for name, env in envs.items():
        put("discovery", name, env)

    # checkpoint: manifests over the harness's four data files (256 bytes each, byte i of process
    # p is (31p + i) % 251), unsigned (the harness signs what parses).
    def data_file(p):
        return bytes((31 * p + i) % 251 for i in range(256))

    def piece(p, offset, start, shape):
        n = 4 * math.prod(shape)
        return {"file": f"process-{p:05}.bin", "offset": offset, "bytes": n, "start": start,
                "shape": shape, "sha256": hashlib.sha256(data_file(p)[offset:offset + n]).hexdigest()}

    def manifest(tensors):
        return json.dumps({"format": 1, "step": 100, "seed": 7, "processes": 4, "mesh": "data=4",
                           "tensors": tensors, "data_position": {"epoch": 1, "streams": [3, 4]},
                           "sha256": ""}, indent=2).encode()

    rows = {"w": {"dtype": "f32", "shape": [8, 4],
                  "pieces": [piece(p, 0, [2 * p, 0], [2, 4]) for p in range(4)]}}
    put("checkpoint", "rows", manifest(rows))
    mixed = {"a": {"dtype": "f32", "shape": [4, 6],
                   "pieces": [piece(0, 0, [0, 0], [4, 3]), piece(1, 16, [0, 3], [4, 3])]},
             "t": {"dtype": "f32", "shape": [], "pieces": [piece(2, 8, [], [])]}}
    put("checkpoint", "columns-and-scalar", manifest(mixed))


if __name__ == "__main__":
    sys.exit(main())
