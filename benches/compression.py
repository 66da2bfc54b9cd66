"""The compression section of the benchmark harness (issue 37): what each zstd level would
store and cost on the shared workload, to decide whether compression as a policy (a faster
level at backup time, a stronger one when gc rewrites cold packs) pays.

  compression   day 0 of one disk of the shared workload (1 GiB, --quick 512 MiB) cut into
                cairn's 256 KiB chunks, zeros left out as cairn leaves them out; each chunk
                compressed on its own (as cairn stores it: kept plain when zstd does not make it
                smaller) at zstd levels -5 to 19, one thread (the same C library cairn links):
                bytes stored and seconds, against level 1 (cairn's level today).
"""

import time

from run import disk_series, log

SIZES = {"full": "1G", "quick": "512M", "smoke": "64M"}
LEVELS = (-5, -1, 1, 3, 6, 9, 15, 19)
CHUNK = 256 << 10


def run_compression(work, shared, cairn, res, profile):
    import zstandard
    raw = disk_series(work, shared, "compression", SIZES[profile], 1, 23, 3)[0]
    chunks = []
    with open(raw, "rb") as f:
        while b := f.read(CHUNK):
            if b.count(0) != len(b):
                chunks.append(b)
    plain = sum(len(b) for b in chunks)
    for level in LEVELS:
        log(f"compression: zstd level {level}")
        z = zstandard.ZstdCompressor(level=level)
        cpu0, t0 = time.process_time(), time.perf_counter()
        stored = sum(min(len(z.compress(b)), len(b)) for b in chunks)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        res.add(f"compression-zstd{level}", "limit", {"seconds": wall, "cpu_seconds": cpu, "rss_mib": 0.0}, stored,
                plain=plain, level=level)


def targets(res):
    base = res.get("compression-zstd1", "limit")
    if not base:
        return []
    out = []
    for level in LEVELS:
        r = res.get(f"compression-zstd{level}", "limit")
        if r and level != 1:
            out.append((f"zstd level {level}: stored / level 1's (time / level 1's {r['seconds'] / base['seconds']:.2f})",
                        r["stored_bytes"] / base["stored_bytes"], "(data)"))
    return out
