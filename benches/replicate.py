"""The replicate section of the benchmark harness (issue 15): a store of a disk series copied
into an empty store by `cairn replicate` against `cp -a` of the same store folder, and a day's
increment replicated against that day's new stored bytes.

  replicate   days 0..2 of one disk of the shared workload (4 GiB, --quick 1 GiB) backed up
              into a store; `cp -a` of its folder then `sync` (a replica is durable); `cairn
              replicate` into an empty store; a fourth day backed up, then replicated; a
              standby file brought from day 3 to day 4 against `dd` writing as many bytes.
"""

import json
import shutil
import subprocess

from run import best_of, dir_bytes, disk_series, log, measure, warm

SIZES = {"full": "4G", "quick": "1G", "smoke": "64M"}


def run_replicate(work, shared, cairn, res, profile):
    size = SIZES[profile]
    d = work / "replicate"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raws = disk_series(work, shared, "replicate", size, 4, 17, 7)
    src, dst, copy = d / "src", d / "dst", d / "copy"
    for s in (src,):
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(s)], check=True, stdout=subprocess.DEVNULL)
    for day, raw in enumerate(raws[:3]):
        subprocess.run([str(cairn), "backup", "--store", str(src), "--vm", "vm", "--time",
                        f"2026-11-0{day + 1}T02:00:00Z", f"xvda={raw}"], check=True, stdout=subprocess.DEVNULL)
    # The copy made durable, as a replica's commit makes it (this machine's disk is noisy:
    # best of two, each from the same state).
    def fresh_copy():
        shutil.rmtree(copy, ignore_errors=True)
        warm(src)

    m = best_of(2, fresh_copy, ["sh", "-c", f"cp -a '{src}' '{copy}' && sync"])
    res.add("replicate-cp-a", "limit", m, dir_bytes(copy))
    shutil.rmtree(copy)

    def fresh_dst():
        shutil.rmtree(dst, ignore_errors=True)
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(dst)], check=True, stdout=subprocess.DEVNULL)
        warm(src)

    m = best_of(2, fresh_dst, [cairn, "replicate", "--from", src, "--to", dst])
    res.add("replicate-series", "cairn", m, dir_bytes(dst))
    out = subprocess.run([str(cairn), "backup", "--store", str(src), "--vm", "vm", "--time", "2026-11-04T02:00:00Z",
                          "--json", f"xvda={raws[3]}"], check=True, capture_output=True).stdout
    new = json.loads(out)[0]["new_stored_bytes"]
    report = d / "replicate.json"
    warm(src)
    m = measure([cairn, "replicate", "--json", "--from", src, "--to", dst], stdout=report)
    sent = json.loads(report.read_text())["bytes_sent"]
    res.add("replicate-daily", "cairn", m, dir_bytes(dst), sent=sent, new_stored=new)

    # A standby file kept at day 2, then brought to day 3: against writing the same bytes.
    target = d / "standby.raw"
    subprocess.run([str(cairn), "standby", "--store", str(src), "vm/xvda@2026-11-03T02:00:00Z", "--to",
                    str(target)], check=True, stdout=subprocess.DEVNULL)
    out = d / "standby.json"
    warm(src, target)
    m = measure([cairn, "standby", "--store", src, "--json", "vm/xvda@latest", "--to", target], stdout=out)
    written = json.loads(out.read_text())["bytes_written"]
    changed = sum(1 for a, b in zip(chunks(raws[2]), chunks(raws[3])) if a != b) * (256 << 10)
    res.add("standby-daily", "cairn", m, None, written=written, changed=changed)
    scratch = d / "write-limit.raw"
    warm(raws[3])
    res.add("standby-write-limit", "limit",
            measure(["dd", f"if={raws[3]}", f"of={scratch}", "bs=256K", f"count={max(written, 1) // (256 << 10) + 1}",
                     "conv=fsync", "status=none"]))
    scratch.unlink()


def chunks(path, size=256 << 10):
    with open(path, "rb") as f:
        while True:
            b = f.read(size)
            if not b:
                return
            yield b


def targets(res):
    cp, series, daily = res.get("replicate-cp-a", "limit"), res.get("replicate-series", "cairn"), \
        res.get("replicate-daily", "cairn")
    out = []
    if cp and series:
        out.append(("replicate a series / cp -a of the store (speed)", cp["seconds"] / series["seconds"], ">= 0.8"))
    if daily and daily.get("new_stored"):
        out.append(("daily replication sent / its new stored bytes", daily["sent"] / daily["new_stored"], "<= 1.1"))
    sb, lim = res.get("standby-daily", "cairn"), res.get("standby-write-limit", "limit")
    if sb and sb.get("changed"):
        out.append(("standby update written / changed bytes", sb["written"] / sb["changed"], "<= 1.1"))
    if sb and lim:
        out.append(("standby update / writing those bytes (time)", sb["seconds"] / lim["seconds"], "<= 2"))
    return out
