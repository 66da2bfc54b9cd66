#!/usr/bin/env python3
"""cairn's benchmark harness: cairn beside restic and borg, and beside the machine's limits,
on the same images, in one run.

    benches/run.sh [--quick] [--cairn-only] [--size 4G] [--work DIR]

Steps (VM 1 days 0..5, VM 2 day 0 cloned from the same template; differencing VHDs between
consecutive days made with `cairn vhd from-raw --parent`):
  full     day 0 (cairn from raw and from a dynamic VHD; restic; borg default; borg fixed 4 MiB),
           every tool's twice, each into a new repository, the faster kept
  daily    days 1..5 (cairn from raw, a full read, and from the differencing VHD; the peers)
  clone    VM 2 day 0
  restore  day 5 to raw (cairn also to a VHD)
  retention  prune of the oldest point, gc, verify (cairn); drop + gc on a small and a 16x store
  sparse   a 64 GiB sparse disk (dynamic VHD): backup, restore, drop one point
  scale    1000 points of one disk: list, prune --dry-run, report, prune (full run only)
  limits   page-cache read, BLAKE3 (1 and 2 threads), zstd -1 (-T1, -T2), sparse copy
  bigdisk, generations, index   the scale sections (benches/scale.py)
  nbd      backup from qemu-nbd (full, dirty-bitmap incremental) and points served over NBD
           (benches/nbd.py)
  replicate  a store's series replicated into an empty store against cp -a, and a day's
           increment (benches/replicate.py)
  serve    backups and restores through `cairn serve` (TLS on loopback) against local ones,
           four clients at once, the server's peak RSS (benches/serve.py)
  report   the report page of a made-up store of 100 VMs x 1000 points: render time, page size
           (benches/report.py)
  s3       a series backed up into a 3-node Garage cluster against a local store, restored,
           its index rebuilt from the bucket; S3 requests per GiB (benches/s3.py)
  encryption  full, daily and restore of an encrypted store against an unencrypted one on the
           same series, and the bytes sealing adds per chunk (benches/encryption.py)
  files    files read in place from a point: ls of a 10 000-file folder, cat of a 100 MiB file
           against debugfs, bytes read from the store (benches/files.py)
  fleet    stores of 1 000, 10 000 and 100 000 points made by make-fleet: list, report, prune
           --dry-run, forget, gc, verify --quick and the live page, time and RSS (benches/fleet.py)
  boot     check-boot of a point 30 generations deep against booting its raw file the same way
           (benches/boot.py)
  compression  bytes and seconds of each zstd level over a workload disk's chunks
           (benches/compression.py)
`--only SECTIONS` runs only those (comma-separated: main, limits, scaling, sparse, scale, bigdisk,
generations, index, nbd, replicate, serve, report, s3, encryption, files, boot, compression, fleet; main is the full/daily/clone/restore steps with the peers).
Each step records wall time, CPU time and peak RSS (wait4) and the repository size after it.
The table goes to stdout, everything to target/bench/results.json. Times are of a shared,
noisy machine: compare ratios within one run, not absolute times across runs.
"""

import argparse
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
DROP_CACHES = True


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def measure(cmd, stdin=None, stdout=None, cwd=None, env=None):
    """Runs cmd under GNU time; returns wall seconds, CPU seconds (user+sys) and peak RSS (MiB).

    GNU time forks the command from its own small process: a child forked straight from this
    (large) Python process would report Python's resident size as its own peak."""
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    fout = open(stdout, "wb") if stdout else subprocess.DEVNULL
    e = dict(os.environ, **(env or {}))
    tf = Path(os.environ.get("TMPDIR", "/tmp")) / f"cairn-bench-time-{os.getpid()}"
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-o", str(tf), "-f", "%U %S %M"] + [str(c) for c in cmd],
                       stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=cwd, env=e)
    wall = time.perf_counter() - t0
    for f in (fin, fout):
        if hasattr(f, "close"):
            f.close()
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr.decode(errors='replace')}")
    user, sys_, rss_kb = tf.read_text().split()[-3:]
    tf.unlink()
    return {"seconds": wall, "cpu_seconds": float(user) + float(sys_), "rss_mib": int(rss_kb) / 1024}


def best_of(n, prepare, cmd, **kw):
    """Runs a step that leaves no state behind n times (prepare() before each); keeps the
    fastest run. This machine is shared: one slow write-back can double a single run."""
    runs = []
    for _ in range(n):
        prepare()
        runs.append(measure(cmd, **kw))
    best = min(runs, key=lambda m: m["seconds"])
    best["runs_seconds"] = [round(m["seconds"], 3) for m in runs]
    return best


# Every tool's full backup is measured this many times, each into a new repository, the fastest
# kept: the first heavy step of a run was seen to take 1.7 times as long as the same step run
# again at once (the kernel's first writes after the images were made).
FULL_RUNS = 2


def disk_series(work, shared, name, size, days, seed, template):
    """Days 0..days-1 of one disk of the shared workload, `name`-SIZE-dayN.raw in work (made
    once, kept)."""
    raws = []
    for day in range(days):
        raw = work / f"{name}-{size}-day{day}.raw"
        if not raw.exists():
            log(f"generating {raw.name}")
            subprocess.run([sys.executable, shared / "workload" / "gen_disk.py", raw, "--size", size, "--seed",
                            str(seed), "--template", str(template), "--day", str(day)], check=True)
        raws.append(raw)
    return raws


def dir_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def warm(*paths):
    """Starts every step from the same state: dirty pages written back, the page cache emptied
    (when allowed: root), then the step's inputs (files, or every file of a folder) read in.
    Without this a step pays for the write-back and page reclaim of the steps before it."""
    os.sync()
    if DROP_CACHES:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1")
        except OSError:
            pass
    for p in paths:
        p = Path(p)
        files = [Path(d) / f for d, _, fs in os.walk(p) for f in fs] if p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                # Only the data of a sparse file: its holes are not in the page cache anyway.
                end = os.fstat(fh.fileno()).st_size
                at = 0
                while at < end:
                    try:
                        at = os.lseek(fh.fileno(), at, os.SEEK_DATA)
                        stop = os.lseek(fh.fileno(), at, os.SEEK_HOLE)
                    except OSError:
                        break
                    fh.seek(at)
                    while at < stop:
                        n = len(fh.read(min(8 << 20, stop - at)))
                        if n == 0:
                            break
                        at += n


class Results:
    def __init__(self):
        self.rows = []  # {step, tool, seconds, cpu_seconds, rss_mib, stored_bytes}

    def add(self, step, tool, m, stored=None, **extra):
        row = {"step": step, "tool": tool, **m, "stored_bytes": stored, **extra}
        self.rows.append(row)
        log(f"  {step:<22} {tool:<12} {m['seconds']:8.2f}s cpu {m['cpu_seconds']:7.2f}s rss {m['rss_mib']:7.1f} MiB"
            + (f" stored {stored / 1e9:.3f} GB" if stored is not None else ""))
        return row

    def seconds(self, step, tool="cairn"):
        """The wall time of a step, or None when it did not run."""
        r = self.get(step, tool)
        return r["seconds"] if r else None

    def get(self, step, tool):
        for r in self.rows:
            if r["step"] == step and r["tool"] == tool:
                return r
        return None


def workload(work, shared, size, cairn, quick):
    gen = shared / "workload" / "gen_disk.py"
    if not gen.exists():
        raise SystemExit(f"{gen} is missing: run from a checkout with ../shared beside it")
    # Names carry the size: a work folder may hold the images of several sizes.
    imgs = {}
    for d in range(6):
        imgs[f"vm1-day{d}"] = work / f"vm1-day{d}-{size}.raw"
    imgs["vm2-day0"] = work / f"vm2-day0-{size}.raw"
    for name, path in imgs.items():
        if not path.exists():
            vm, day = name.split("-day")
            seed = 1 if vm == "vm1" else 2
            log(f"generating {path.name} ({size})")
            subprocess.run([sys.executable, gen, path, "--size", size, "--seed", str(seed), "--template", "7",
                            "--day", day], check=True)
    vhds = {}
    for d in range(6):
        v = work / f"vm1-day{d}-{size}.vhd"
        if not v.exists():
            cmd = [cairn, "vhd", "from-raw"] + (["--parent", work / f"vm1-day{d - 1}-{size}.vhd"] if d else []) + [
                imgs[f"vm1-day{d}"], v]
            subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)
        vhds[d] = v
    return imgs, vhds


def run_cairn(work, cairn, imgs, vhds, res):
    log("cairn")
    a, b = work / "cairn-raw", work / "cairn-vhd"
    times = [f"2026-11-0{d + 1}T02:00:00Z" for d in range(6)]

    def fresh(store):
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([str(cairn), "init", str(store)], check=True, stdout=subprocess.DEVNULL)

    def backup_cmd(store, vm, t, src):
        return [cairn, "backup", "--store", store, "--vm", vm, "--time", t, f"xvda={src}"]

    def backup(store, vm, t, src):
        return measure(backup_cmd(store, vm, t, src))

    res.add("full", "cairn", best_of(FULL_RUNS, lambda: (fresh(a), warm(imgs["vm1-day0"])),
                                     backup_cmd(a, "vm1", times[0], imgs["vm1-day0"])), dir_bytes(a))
    res.add("full-vhd", "cairn", best_of(FULL_RUNS, lambda: (fresh(b), warm(vhds[0])),
                                         backup_cmd(b, "vm1", times[0], vhds[0])), dir_bytes(b))
    for d in range(1, 6):
        warm(imgs[f"vm1-day{d}"])
        res.add(f"daily{d}", "cairn", backup(a, "vm1", times[d], imgs[f"vm1-day{d}"]), dir_bytes(a))
        warm(vhds[d])
        res.add(f"daily{d}-vhd", "cairn", backup(b, "vm1", times[d], vhds[d]), dir_bytes(b))
    warm(imgs["vm2-day0"])
    res.add("clone", "cairn", backup(a, "vm2", times[0], imgs["vm2-day0"]), dir_bytes(a))
    res.add("clone-vhd-store", "cairn", backup(b, "vm2", times[0], imgs["vm2-day0"]), dir_bytes(b))
    out = work / "restore-cairn.raw"
    res.add("restore", "cairn", best_of(3, lambda: (out.unlink(missing_ok=True), warm(a)),
                                        [cairn, "restore", "--store", a, "vm1/xvda@latest", out]))
    if subprocess.run(["cmp", str(out), str(imgs["vm1-day5"])]).returncode != 0:
        raise SystemExit("cairn restored day 5 wrong")
    out.unlink()
    outv = work / "restore-cairn.vhd"
    res.add("restore-vhd", "cairn",
            best_of(3, lambda: (outv.unlink(missing_ok=True), warm(a)),
                    [cairn, "restore", "--store", a, "vm1/xvda@latest", outv, "--format", "vhd"]))
    outv.unlink()
    warm(a)
    res.add("prune-oldest", "cairn",
            measure([cairn, "prune", "--store", a, "--vm", "vm1", "--keep-last", "5"]), dir_bytes(a))
    res.add("gc", "cairn", measure([cairn, "gc", "--store", a]), dir_bytes(a))
    warm(a)
    res.add("verify", "cairn", measure([cairn, "verify", "--store", a]))


def run_restic(work, imgs, res):
    log("restic")
    repo = work / "restic"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo), "RESTIC_CACHE_DIR": str(work / "restic-cache")}

    def fresh():
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(work / "restic-cache", ignore_errors=True)
        subprocess.run(["restic", "init", "--repository-version", "2"], env=dict(os.environ, **env), check=True,
                       stdout=subprocess.DEVNULL)

    def backup(name, src):
        return measure(["restic", "backup", "--stdin", "--stdin-filename", name], stdin=src, env=env)

    res.add("full", "restic", best_of(FULL_RUNS, lambda: (fresh(), warm(imgs["vm1-day0"])),
                                      ["restic", "backup", "--stdin", "--stdin-filename", "vm1.raw"],
                                      stdin=imgs["vm1-day0"], env=env), dir_bytes(repo))
    for d in range(1, 6):
        warm(imgs[f"vm1-day{d}"])
        res.add(f"daily{d}", "restic", backup("vm1.raw", imgs[f"vm1-day{d}"]), dir_bytes(repo))
    warm(imgs["vm2-day0"])
    res.add("clone", "restic", backup("vm2.raw", imgs["vm2-day0"]), dir_bytes(repo))
    out = work / "restore-restic.raw"
    snaps = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=dict(os.environ, **env), check=True,
                                      capture_output=True).stdout)
    day5 = [s for s in snaps if "/vm1.raw" in s.get("paths", [])][-1]["short_id"]
    res.add("restore", "restic", best_of(3, lambda: (out.unlink(missing_ok=True), warm(repo)),
                                         ["restic", "dump", day5, "/vm1.raw"], stdout=out, env=env))
    if subprocess.run(["cmp", str(out), str(imgs["vm1-day5"])]).returncode != 0:
        raise SystemExit("restic restored day 5 wrong")
    out.unlink()


def run_borg(work, imgs, res, tool, chunker):
    log(tool)
    repo = work / tool
    env = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": str(work / f"{tool}-base")}
    extra = ["--chunker-params", chunker] if chunker else []

    def fresh():
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(work / f"{tool}-base", ignore_errors=True)
        subprocess.run(["borg", "init", "-e", "none", str(repo)], env=dict(os.environ, **env), check=True)

    def backup_cmd(arch, src):
        # Archive the image under a stable name, as a backup job of one disk would.
        return ["borg", "create", *extra, f"{repo}::{arch}", src.name]

    def backup(arch, src):
        return measure(backup_cmd(arch, src), cwd=src.parent, env=env)

    res.add("full", tool, best_of(FULL_RUNS, lambda: (fresh(), warm(imgs["vm1-day0"])),
                                  backup_cmd("vm1-day0", imgs["vm1-day0"]), cwd=imgs["vm1-day0"].parent,
                                  env=env), dir_bytes(repo))
    for d in range(1, 6):
        warm(imgs[f"vm1-day{d}"])
        res.add(f"daily{d}", tool, backup(f"vm1-day{d}", imgs[f"vm1-day{d}"]), dir_bytes(repo))
    warm(imgs["vm2-day0"])
    res.add("clone", tool, backup("vm2-day0", imgs["vm2-day0"]), dir_bytes(repo))
    out = work / f"restore-{tool}"

    def prepare():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        warm(repo)

    res.add("restore", tool, best_of(3, prepare, ["borg", "extract", "--sparse", f"{repo}::vm1-day5"], cwd=out,
                                     env=env))
    got = out / imgs["vm1-day5"].name
    if subprocess.run(["cmp", str(got), str(imgs["vm1-day5"])]).returncode != 0:
        raise SystemExit(f"{tool} restored day 5 wrong")
    shutil.rmtree(out)


def run_limits(work, img, res):
    log("limits")
    res.add("page-cache-read", "limit", best_of(3, lambda: warm(img), ["cat", img], stdout="/dev/null"))
    try:
        import blake3  # noqa: F401  (only to know it is there)
        threads = (1, 2)
    except ImportError:
        log("  python blake3 is missing: no BLAKE3 limit (benches/run.sh installs it)")
        threads = ()
    for t in threads:
        code = ("import blake3,mmap,sys\nf=open(sys.argv[1],'rb');m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\n"
                f"blake3.blake3(max_threads={t}).update(m).digest()")
        res.add(f"blake3-{t}t", "limit", best_of(3, lambda: warm(img), [sys.executable, "-c", code, img]))
    for t in (1, 2):
        res.add(f"zstd-1-T{t}", "limit", best_of(3, lambda: warm(img), ["zstd", "-1", f"-T{t}", "-q", "-c", img],
                                                stdout="/dev/null"))
    out = work / "sparse-copy.raw"
    res.add("sparse-copy", "limit", best_of(3, lambda: (out.unlink(missing_ok=True), warm(img)),
                                            ["cp", "--sparse=always", img, out]))
    out.unlink()


def ideal_stored(imgs, chunk):
    """Bytes a perfect fixed-block store would hold: each unique non-zero chunk, zstd-1."""
    import zstandard
    cctx = zstandard.ZstdCompressor(level=1)
    zero = bytes(chunk)
    seen = set()
    total = 0
    for path in imgs:
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            for off in range(0, len(m), chunk):
                c = m[off:off + chunk]
                if c == zero[:len(c)]:
                    continue
                h = hashlib.blake2b(c, digest_size=32).digest()
                if h not in seen:
                    seen.add(h)
                    total += len(cctx.compress(c))
            m.close()
    return total, len(seen)


def run_retention_scaling(work, shared, cairn, small_size, res):
    """Drop one point, then gc, in a small store and a store 16 times larger."""
    log("retention scaling (1 VM vs 16 VMs)")
    gen = shared / "workload" / "gen_disk.py"
    out = {}
    for n_vms, label in ((1, "small"), (16, "16x")):
        store = work / f"cairn-ret-{label}"
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([str(cairn), "init", str(store)], check=True, stdout=subprocess.DEVNULL)
        for vm in range(n_vms):
            for day in range(3):
                img = work / f"ret-vm{vm}-day{day}-{small_size}.raw"
                if not img.exists():
                    subprocess.run([sys.executable, gen, img, "--size", small_size, "--seed", str(100 + vm),
                                    "--template", "9", "--day", str(day)], check=True)
                subprocess.run([str(cairn), "backup", "--store", str(store), "--vm", f"vm{vm}", "--time",
                                f"2026-11-0{day + 1}T02:00:00Z", f"xvda={img}"], check=True, stdout=subprocess.DEVNULL)
        size = dir_bytes(store)
        oldest = json.loads(subprocess.run([str(cairn), "list", "--store", str(store), "--vm", "vm0", "--json"],
                                           check=True, capture_output=True).stdout)[0]["id"]
        f = res.add(f"drop-point-{label}", "cairn", measure([cairn, "forget", "--store", store, oldest]), size)
        g = res.add(f"gc-after-drop-{label}", "cairn", measure([cairn, "gc", "--store", store]), dir_bytes(store))
        out[label] = {"store_bytes": size, "drop_seconds": f["seconds"], "gc_seconds": g["seconds"]}
    return out


def run_sparse(work, cairn, imgs, res, size="64G"):
    """A 64 GiB sparse disk (dynamic VHD, 3 days): backup, restore and drop one point."""
    log("64 GiB sparse disk")
    store = work / "cairn-sparse"
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run([str(cairn), "init", str(store)], check=True, stdout=subprocess.DEVNULL)
    for d in range(3):
        raw = work / "sparse.raw"
        vhd = work / f"sparse-day{d}-{imgs['vm1-day0'].stat().st_size >> 30}G.vhd"
        if not vhd.exists():
            subprocess.run(["truncate", "-s", "0", str(raw)], check=True)
            subprocess.run(["truncate", "-s", size, str(raw)], check=True)
            # The first GiB of day d at the front and at the 40 GiB mark of an empty disk.
            for seek in (0, 40 << 10):
                subprocess.run(["dd", f"if={imgs[f'vm1-day{d}']}", f"of={raw}", "bs=1M", "count=1024",
                                f"seek={seek}", "conv=notrunc,sparse", "status=none"], check=True)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
                            str(raw), str(vhd)], check=True)
            raw.unlink()
        warm(vhd)
        res.add(f"sparse64-backup{d}", "cairn",
                measure([cairn, "backup", "--store", store, "--vm", "big", "--time", f"2026-11-0{d + 1}T02:00:00Z",
                         f"xvda={vhd}"]), dir_bytes(store))
        vhd.unlink()
    out = work / "sparse-restore.raw"
    warm(store)
    res.add("sparse64-restore", "cairn", measure([cairn, "restore", "--store", store, "big/xvda@latest", out]))
    out.unlink()
    oldest = json.loads(subprocess.run([str(cairn), "list", "--store", str(store), "--json"], check=True,
                                       capture_output=True).stdout)[0]["id"]
    res.add("drop-point-sparse64", "cairn", measure([cairn, "forget", "--store", store, oldest]), dir_bytes(store))
    res.add("gc-sparse64", "cairn", measure([cairn, "gc", "--store", store]), dir_bytes(store))


def run_scale(work, shared, cairn, res, n_points):
    """n_points points of one disk: list, prune --dry-run, report, then a real prune."""
    log(f"{n_points} points of one disk")
    store = work / "cairn-scale"
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run([str(cairn), "init", str(store)], check=True, stdout=subprocess.DEVNULL)
    img = work / "scale.raw"
    if not img.exists():
        subprocess.run([sys.executable, shared / "workload" / "gen_disk.py", img, "--size", "64M", "--seed", "50",
                        "--template", "9", "--day", "0"], check=True)
    base = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, 0))
    for i in range(n_points):
        t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i * 6 * 3600))
        subprocess.run([str(cairn), "backup", "--store", str(store), "--vm", "app", "--time", t, f"xvda={img}"],
                       check=True, stdout=subprocess.DEVNULL)
    res.add(f"list-{n_points}pts", "cairn", measure([cairn, "list", "--store", store, "--json"]))
    rules = ["--keep-last", "3", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12"]
    res.add(f"prune-dry-{n_points}pts", "cairn", measure([cairn, "prune", "--store", store, "--dry-run", *rules]))
    res.add(f"report-{n_points}pts", "cairn", measure([cairn, "report", "--store", store, "--json"]))
    res.add(f"prune-{n_points}pts", "cairn", measure([cairn, "prune", "--store", store, *rules]), dir_bytes(store))


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summarize(res, ideal, scaling, chunk):
    g = res.get
    def secs(step, tool):
        r = g(step, tool)
        return r["seconds"] if r else None
    def avg_daily(tool, vhd=False):
        rs = [r["seconds"] for r in res.rows if r["tool"] == tool and r["step"].startswith("daily")
              and r["step"].endswith("-vhd") == vhd]
        return sum(rs) / len(rs) if rs else None
    def final_stored(tool, step="clone"):
        r = g(step, tool)
        return r["stored_bytes"] if r else None
    # cairn's own peak: not a row whose process tree holds a VM (check-boot's qemu).
    peak = max((r["rss_mib"] for r in res.rows if r["tool"] == "cairn" and not r.get("rss_with_vm")), default=None)
    targets = [
        ("full backup / zstd -1 -T2", ratio(secs("full", "cairn"), secs("zstd-1-T2", "limit")), "<= 1.25"),
        ("borg fixed full / cairn full", ratio(secs("full", "borg-fixed"), secs("full", "cairn")), ">= 2"),
        ("borg fixed daily / cairn daily (raw)", ratio(avg_daily("borg-fixed"), avg_daily("cairn")), ">= 2.5"),
        ("borg fixed daily / cairn daily (VHD)", ratio(avg_daily("borg-fixed"), avg_daily("cairn", True)), ">= 8"),
        ("cairn stored / restic stored", ratio(final_stored("cairn"), final_stored("restic")), "<= 0.92"),
        (f"cairn stored / ideal {chunk // 1024}K store", ratio(final_stored("cairn"), ideal), "<= 1.05"),
        ("borg fixed restore / cairn restore", ratio(secs("restore", "borg-fixed"), secs("restore", "cairn")), ">= 3"),
        ("cairn peak RSS (MiB)", peak, "<= 128"),
    ]
    if scaling:
        targets.append(("drop+gc 16x store / small store",
                        ratio(scaling["16x"]["drop_seconds"] + scaling["16x"]["gc_seconds"],
                              scaling["small"]["drop_seconds"] + scaling["small"]["gc_seconds"]),
                        "~1 if cost follows garbage"))
    return targets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 GiB images, no 1000-point scale test (a few minutes)")
    ap.add_argument("--cairn-only", action="store_true", help="skip the peers and the ideal size (smoke test)")
    ap.add_argument("--size", help="image size (default 4G, --quick 1G)")
    ap.add_argument("--work", type=Path, help="work folder (default target/bench/work)")
    ap.add_argument("--cairn", type=Path, required=True, help="the cairn binary")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "target" / "bench" / "results.json")
    ap.add_argument("--no-drop-caches", action="store_true", help="leave the page cache alone (smoke test)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: sparse,scale,scaling,limits,...")
    ap.add_argument("--only", default="", help="comma-separated sections to run (see above)")
    ap.add_argument("--fill-index", type=Path, help="the fill-index binary (for the index section)")
    ap.add_argument("--report-page", type=Path, help="the report-page binary (for the report section)")
    ap.add_argument("--guest-disk", type=Path, help="the guest-disk binary (for the boot section)")
    ap.add_argument("--make-fleet", type=Path, help="the make-fleet binary (for the fleet section)")
    ap.add_argument("--smoke", action="store_true", help="the scale sections at a smoke test's sizes")
    a = ap.parse_args()
    global DROP_CACHES
    DROP_CACHES = not a.no_drop_caches
    size = a.size or ("1G" if a.quick else "4G")
    work = a.work or REPO / "target" / "bench" / "work"
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, a.skip.split(",")))
    started = time.time()
    res = Results()
    try:
        run_all(a, size, work, skip, res, started)
    finally:
        # Whatever ran is kept, also when a step failed.
        if res.rows:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            partial = a.out.with_suffix(".partial.json")
            partial.write_text(json.dumps({"rows": res.rows}, indent=2))


SECTIONS = ("main", "limits", "scaling", "sparse", "scale", "bigdisk", "generations", "index", "nbd", "replicate", "serve",
            "report", "s3", "encryption", "files", "boot", "compression", "fleet")


def run_all(a, size, work, skip, res, started):
    import nbd
    import replicate
    import scale
    import report
    import s3
    import serve
    import encryption
    import files
    import boot
    import compression
    import fleet
    only = set(filter(None, a.only.split(",")))
    unknown = (only | skip) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}: the sections are {', '.join(SECTIONS)}")
    if only:
        skip = set(SECTIONS) - only
    imgs, vhds = None, None
    if {"main", "limits", "sparse"} - skip:
        imgs, vhds = workload(work, a.shared, size, a.cairn, a.quick)
    if "main" not in skip:
        run_cairn(work, a.cairn, imgs, vhds, res)
    if "main" not in skip and not a.cairn_only:
        run_restic(work, imgs, res)
        run_borg(work, imgs, res, "borg", None)
        run_borg(work, imgs, res, "borg-fixed", "fixed,4194304")
    if "limits" not in skip:
        run_limits(work, imgs["vm1-day0"], res)
    # The scale sections run in a full run with the peers, or when asked for by --only.
    if a.cairn_only and not only:
        skip = skip | {"bigdisk", "generations", "index", "nbd", "replicate", "serve", "report", "s3", "encryption", "files",
                       "boot", "compression", "fleet"}
    profile = "smoke" if a.smoke else "quick" if a.quick else "full"
    if "bigdisk" not in skip:
        scale.run_bigdisk(work, a.shared, a.cairn, res, profile)
    if "generations" not in skip:
        scale.run_generations(work, a.shared, a.cairn, res, profile)
    if "index" not in skip:
        if a.fill_index is None:
            raise SystemExit("the index section needs --fill-index (run.sh passes it)")
        scale.run_index(work, a.shared, a.cairn, a.fill_index, res, profile)
    if "nbd" not in skip:
        nbd.run_nbd(work, a.shared, a.cairn, res, profile)
    if "replicate" not in skip:
        replicate.run_replicate(work, a.shared, a.cairn, res, profile)
    if "serve" not in skip:
        serve.run_serve(work, a.shared, a.cairn, res, profile)
    if "report" not in skip:
        if a.report_page is None:
            raise SystemExit("the report section needs --report-page (run.sh passes it)")
        report.run_report(work, a.report_page, res, profile)
    if "s3" not in skip:
        s3.run_s3(work, a.shared, a.cairn, res, profile)
    if "encryption" not in skip:
        encryption.run_encryption(work, a.shared, a.cairn, res, profile)
    if "files" not in skip:
        files.run_files(work, a.shared, a.cairn, res, profile)
    if "boot" not in skip:
        if a.guest_disk is None:
            raise SystemExit("the boot section needs --guest-disk (run.sh passes it)")
        boot.run_boot(work, a.cairn, a.guest_disk, res, profile)
    if "compression" not in skip:
        compression.run_compression(work, a.shared, a.cairn, res, profile)
    if "fleet" not in skip:
        if a.make_fleet is None:
            raise SystemExit("the fleet section needs --make-fleet (run.sh passes it)")
        fleet.run_fleet(work, a.cairn, a.make_fleet, res, profile)
    ideal = None
    chunk = 256 << 10
    if "main" not in skip and not a.cairn_only:
        log("ideal fixed-block store")
        ideal, _ = ideal_stored([imgs[f"vm1-day{d}"] for d in range(6)] + [imgs["vm2-day0"]], chunk)
    scaling = None
    if "scaling" not in skip:
        scaling = run_retention_scaling(work, a.shared, a.cairn, "64M" if a.quick or a.cairn_only else "256M", res)
    if "sparse" not in skip and not a.quick and not a.cairn_only:
        run_sparse(work, a.cairn, imgs, res)
    if "scale" not in skip and not a.quick and not a.cairn_only:
        run_scale(work, a.shared, a.cairn, res, 1000)
    targets = (summarize(res, ideal, scaling, chunk) + scale.targets(res) + nbd.targets(res) + replicate.targets(res)
               + serve.targets(res) + report.targets(res) + s3.targets(res) + encryption.targets(res)
               + files.targets(res) + boot.targets(res) + compression.targets(res) + fleet.targets(res))

    # The table: one row per step, one column group per tool.
    tools = [t for t in ("cairn", "restic", "borg", "borg-fixed", "limit", "helper") if any(r["tool"] == t for r in res.rows)]
    steps = []
    for r in res.rows:
        if r["step"] not in steps:
            steps.append(r["step"])
    print(f"# cairn benchmark: {size} images, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print()
    print("| step | " + " | ".join(f"{t} s / RSS MiB / stored" for t in tools) + " |")
    print("|---|" + "---|" * len(tools))
    for s in steps:
        cells = []
        for t in tools:
            r = res.get(s, t)
            if r is None:
                cells.append("")
            else:
                st = f" / {r['stored_bytes'] / 1e9:.3f} GB" if r["stored_bytes"] is not None else ""
                cells.append(f"{r['seconds']:.2f} / {r['rss_mib']:.0f}{st}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    if ideal is not None:
        print(f"\nideal fixed-block store at {chunk // 1024}K with zstd -1: {ideal / 1e9:.3f} GB")
    print("\n| target | measured | wanted |\n|---|---|---|")
    for name, v, want in targets:
        print(f"| {name} | {'n/a' if v is None else f'{v:.2f}'} | {want} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "size": size, "quick": a.quick, "cores": os.cpu_count(), "rows": res.rows, "ideal_stored_bytes": ideal,
        "ideal_chunk_size": chunk, "retention_scaling": scaling,
        "targets": [{"name": n, "value": v, "wanted": w} for n, v, w in targets],
        "seconds": time.time() - started,
    }, indent=2))
    log(f"wrote {a.out} ({time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
