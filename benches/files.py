"""The files section of the benchmark harness (issue 34): files read in place from a point.

  files   a GPT disk with an ext4 partition (mkfs.ext4 -d) holding a folder of 10 000 files and
          a 100 MiB file (--smoke: 1 000 files and 16 MiB), backed up; `cairn ls` of the folder,
          `cairn cat` of the file against `debugfs -R cat` of the same file in the image (a
          reader of the restored image), the bytes `cairn extract` read from the store for it;
          `cat` of the file through `cairn mount` (the page cache dropped before each run) and
          the mount process's peak memory.
"""

import json
import os
import shutil
import subprocess
import time

from run import best_of, log, measure, warm

SIZES = {"full": (10_000, 100), "quick": (10_000, 100), "smoke": (1_000, 16)}


def run_files(work, shared, cairn, res, profile):
    files, mib = SIZES[profile]
    d = work / "files"
    shutil.rmtree(d, ignore_errors=True)
    root = d / "root"
    (root / "many").mkdir(parents=True)
    for i in range(files):
        (root / "many" / f"f{i:05}").write_text(f"{i}\n")
    with open(root / "big.bin", "wb") as f:
        f.write(os.urandom(mib << 20))
    part = d / "part.img"
    log("making the ext4 image")
    subprocess.run(["mkfs.ext4", "-q", "-N", str(files + 4096), "-d", root, part, f"{mib + 96}M"], check=True)
    disk = d / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate((mib + 112) << 20)
    sectors = ((mib + 96) << 20) // 512
    subprocess.run(["sfdisk", "-q", disk], input=f"label: gpt\nstart=2048, size={sectors}\n".encode(), check=True)
    subprocess.run(["dd", f"if={part}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True)
    store = d / "store"
    subprocess.run([str(cairn), "init", "--timezone", "UTC", str(store)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(cairn), "backup", "--store", str(store), "--vm", "vm", f"xvda={disk}"], check=True,
                   stdout=subprocess.DEVNULL)
    point = "vm/xvda@latest"
    res.add("files-ls-folder", "cairn",
            best_of(3, lambda: warm(store), [cairn, "ls", "--store", store, f"{point}:p1/many"]), files=files)
    out = d / "cat.out"
    res.add("files-cat", "cairn", best_of(3, lambda: warm(store), [cairn, "cat", "--store", store,
                                                                  f"{point}:p1/big.bin"], stdout=out), mib=mib)
    if out.read_bytes() != (root / "big.bin").read_bytes():
        raise SystemExit("cairn cat read the file wrong")
    res.add("files-cat", "limit", best_of(3, lambda: warm(part), ["debugfs", "-R", "cat /big.bin", part],
                                          stdout=out), mib=mib)
    report = d / "extract.json"
    dest = d / "extracted.bin"
    m = measure([cairn, "extract", "--json", "--store", store, f"{point}:p1/big.bin", dest], stdout=report)
    read = json.loads(report.read_text())["bytes_read_from_store"]
    res.add("files-extract", "cairn", m, read_from_store=read, file_bytes=mib << 20)
    run_mount(d, cairn, store, point, root, res, mib)


def run_mount(d, cairn, store, point, root, res, mib):
    """`cat` of the big file through `cairn mount`, and the mount process's peak RSS."""
    mnt = d / "mnt"
    mnt.mkdir()
    mount = subprocess.Popen([str(cairn), "mount", "--store", str(store), point, str(mnt)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (mnt / "disk.raw").exists() or mount.poll() is not None:
                break
            time.sleep(0.05)
        if not (mnt / "disk.raw").exists():
            raise SystemExit("cairn mount did not mount")
        out = d / "mount-cat.out"
        m = best_of(3, lambda: warm(store), ["cat", mnt / "p1" / "big.bin"], stdout=out)
        if out.read_bytes() != (root / "big.bin").read_bytes():
            raise SystemExit("cat through cairn mount read the file wrong")
        hwm = 0
        for line in open(f"/proc/{mount.pid}/status"):
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        res.add("files-mount-cat", "cairn", m, mib=mib, mount_rss_mib=round(hwm, 1))
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False, stderr=subprocess.DEVNULL)
        try:
            mount.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mount.kill()


def targets(res):
    """(name, measured, wanted) of this section's targets."""
    ls = res.get("files-ls-folder", "cairn")
    cat, limit = res.get("files-cat", "cairn"), res.get("files-cat", "limit")
    ex = res.get("files-extract", "cairn")
    mnt = res.get("files-mount-cat", "cairn")
    return [
        ("ls of a 10 000-file folder (s)", None if ls is None else ls["seconds"], "< 1"),
        ("cairn cat / debugfs cat of the same 100 MiB file", None if not (cat and limit) else
         cat["seconds"] / limit["seconds"], "<= 1.5"),
        ("bytes read from the store / file size (extract)", None if ex is None else
         ex["read_from_store"] / ex["file_bytes"], "<= 1.25"),
        ("peak RSS of cat (MiB)", None if cat is None else cat["rss_mib"], "< 128"),
        ("cat through cairn mount / debugfs cat of the same file", None if not (mnt and limit) else
         mnt["seconds"] / limit["seconds"], "<= 1.5"),
        ("peak RSS of cairn mount (MiB)", None if mnt is None else mnt["mount_rss_mib"], "< 128"),
    ]
