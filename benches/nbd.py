"""The NBD section of the benchmark harness (issue 13): backup from qemu-nbd against nbdcopy
reading the same server, a dirty-bitmap incremental against the full, and points served by
`cairn serve-nbd` against `cairn restore`; the first read of a big exported disk.

  nbd   one disk of the shared workload (4 GiB, --quick 1 GiB) as a qcow2 served by qemu-nbd
        (8 clients, read-only): nbdcopy to null: and a full cairn backup, both with 4
        connections; then 1 % of the disk written with a dirty bitmap recording it, and the
        incremental that reads only it; then nbdcopy from cairn serve-nbd to a file against
        cairn restore to a file; a backup from nbdkit's delay filter (20 ms a read) with 1 and
        4 connections; and the time from connecting to the first 4 KiB read of a point of a
        64 GiB disk (libnbd's Python bindings, Debian's /usr/bin/python3).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from run import ratio, MiB, dir_bytes, log, measure, warm

SIZES = {"full": "4G", "quick": "1G", "smoke": "64M"}


def size_bytes(s):
    return int(s[:-1]) << {"M": 20, "G": 30}[s[-1]]


def wait_socket(sock, proc=None):
    import socket
    t0 = time.time()
    while time.time() - t0 < 30:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before listening on {sock}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            s.close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {sock}")


def qemu_nbd(image, sock, bitmap=None):
    sock.unlink(missing_ok=True)
    cmd = ["qemu-nbd", "-r", "-t", "-e", "8", "-f", "qcow2", "-x", "disk", "-k", str(sock)]
    if bitmap:
        cmd += ["-B", bitmap]
    p = subprocess.Popen(cmd + [str(image)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_socket(sock, p)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def serve_latest(cairn, store, sock, vm):
    """`cairn serve-nbd` of VM `vm`'s latest xvda point on `sock`: the server and the point's id."""
    sock.unlink(missing_ok=True)
    srv = subprocess.Popen([str(cairn), "serve-nbd", "--store", str(store), "--socket", str(sock), f"{vm}/xvda@latest"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_socket(sock, srv)
    listed = subprocess.run([str(cairn), "list", "--store", str(store), "--vm", vm, "--json"], check=True,
                            capture_output=True).stdout
    return srv, json.loads(listed)[-1]["id"]


def run_nbd(work, shared, cairn, res, profile):
    size = SIZES[profile]
    n = size_bytes(size)
    d = work / "nbd"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raw = work / f"nbd-{size}.raw"
    if not raw.exists():
        log(f"generating {raw.name}")
        subprocess.run([sys.executable, shared / "workload" / "gen_disk.py", raw, "--size", size, "--seed", "13",
                        "--template", "7", "--day", "0"], check=True)
    qcow = d / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    sock = d / "qemu.sock"
    uri = f"nbd+unix:///disk?socket={sock}"
    store = d / "store"
    subprocess.run([str(cairn), "init", "--timezone", "UTC", str(store)], check=True, stdout=subprocess.DEVNULL)

    p = qemu_nbd(qcow, sock)
    warm(qcow)
    res.add("nbd-nbdcopy-null", "limit", measure(["nbdcopy", "--connections=4", uri, "null:"]))
    warm(qcow)
    m = measure([cairn, "backup", "--store", store, "--vm", "vm", "--time", "2026-11-01T00:00:00Z",
                 "--nbd-connections", "4", "--json", f"xvda={uri}"])
    res.add("nbd-full", "cairn", m, dir_bytes(store))
    stop(p)
    # The wall a full backup meets on this machine: compressing the image's bytes.
    if shutil.which("zstd"):
        warm(raw)
        res.add("nbd-zstd-T2", "limit", measure(["zstd", "-1", "-T2", "-q", "-c", raw], stdout="/dev/null"))

    # 1 % of the disk written, recorded by a dirty bitmap added before the writes.
    subprocess.run(["qemu-img", "bitmap", "--add", str(qcow), "inc1"], check=True)
    rng = random.Random(5)
    cmds = []
    written = 0
    while written < n // 100:
        ln = rng.choice([64 << 10, 256 << 10, 1 << 20])
        off = rng.randrange(0, n - ln) // 4096 * 4096
        cmds += ["-c", f"write -P 0x{rng.randrange(1, 256):02x} {off} {ln}"]
        written += ln
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(qcow)], check=True, stdout=subprocess.DEVNULL)
    p = qemu_nbd(qcow, sock, "inc1")
    warm(qcow)
    m = measure([cairn, "backup", "--store", store, "--vm", "vm", "--time", "2026-11-02T00:00:00Z",
                 "--nbd-connections", "4", "--dirty-bitmap", "inc1", f"xvda={uri}"])
    res.add("nbd-incremental-1pct", "cairn", m, dir_bytes(store), written=written)
    stop(p)

    # Served points against a restore to a file.
    out = d / "out.raw"
    warm(store)
    res.add("nbd-restore-file", "cairn", measure([cairn, "restore", "--store", store, "--force", "vm/xvda@latest",
                                                 out]))
    out.unlink()
    csock = d / "cairn.sock"
    srv, pid = serve_latest(cairn, store, csock, "vm")
    warm(store)
    res.add("nbd-export-nbdcopy-file", "cairn",
            measure(["nbdcopy", "--connections=4", f"nbd+unix:///{pid}?socket={csock}", out]))
    res.add("nbd-serve-peak", "cairn", {"seconds": 0.0, "cpu_seconds": 0.0, "rss_mib": peak_rss_mib(srv.pid) or 0})
    stop(srv)

    # A server 20 ms away per read (nbdkit's delay filter): what more connections buy.
    ksock = d / "kit.sock"
    ksock.unlink(missing_ok=True)
    kit_size = "32M" if profile == "smoke" else "256M"
    kit = subprocess.Popen(["nbdkit", "-f", "-U", str(ksock), "--filter=delay", "pattern", f"size={kit_size}",
                            "rdelay=20ms"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_socket(ksock, kit)
    for n in (1, 4):
        kstore = d / f"kit-store-{n}"
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(kstore)], check=True, stdout=subprocess.DEVNULL)
        res.add(f"nbd-delay-{n}conn", "cairn", measure([cairn, "backup", "--store", kstore, "--vm", "kit",
                                                          "--nbd-connections", str(n), f"xvda=nbd+unix:///?socket={ksock}"]))
    stop(kit)

    # The first read of a point of a 64 GiB disk, from connecting.
    big = d / "big.raw"
    with open(big, "wb") as f:
        f.truncate(64 << 30)
    subprocess.run(["dd", f"if={raw}", f"of={big}", "bs=1M", "count=64", "seek=32768", "conv=notrunc,sparse",
                    "status=none"], check=True)
    subprocess.run([str(cairn), "backup", "--store", str(store), "--vm", "big", f"xvda={big}"], check=True,
                   stdout=subprocess.DEVNULL)
    srv, bid = serve_latest(cairn, store, csock, "big")
    probe = ("import nbd, sys, time\n"
             "t = time.perf_counter(); h = nbd.NBD(); h.connect_uri(sys.argv[1])\n"
             "b = h.pread(4096, 32 << 30); print(time.perf_counter() - t)\n")
    warm(store)
    r = subprocess.run(["/usr/bin/python3", "-c", probe, f"nbd+unix:///{bid}?socket={csock}"],
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise SystemExit(f"the first-read probe failed: {r.stderr}")
    first = float(r.stdout)
    res.add("nbd-first-read-64g", "cairn", {"seconds": first, "cpu_seconds": 0.0, "rss_mib": 0.0})
    stop(srv)
    big.unlink()


def targets(res):
    secs = res.seconds

    out = [
        ("backup from qemu-nbd / nbdcopy to null: (speed, >= 0.8)",
         ratio(secs("nbd-nbdcopy-null", "limit"), secs("nbd-full")), ">= 0.8"),
        ("backup from qemu-nbd / zstd -1 -T2 over the image (time)", ratio(secs("nbd-full"), secs("nbd-zstd-T2", "limit")),
         "(for comparison)"),
        ("dirty-bitmap incremental (1 %) / full", ratio(secs("nbd-incremental-1pct"), secs("nbd-full")), "<= 0.05"),
        ("nbdcopy from serve-nbd / cairn restore (speed)",
         ratio(secs("nbd-restore-file"), secs("nbd-export-nbdcopy-file")), ">= 0.8"),
        ("first read of a 64 GiB point, from connecting (s)", secs("nbd-first-read-64g"), "<= 0.1"),
        ("20 ms server: 4 connections' speed / 1 connection's", ratio(secs("nbd-delay-1conn"), secs("nbd-delay-4conn")),
         "(for comparison)"),
    ]
    rows = [r for r in res.rows if r["tool"] == "cairn" and r["step"].startswith("nbd-")]
    if rows:
        out.append(("NBD steps peak RSS (MiB)", max(r["rss_mib"] for r in rows), "<= 128"))
    return [t for t in out if t[1] is not None]
