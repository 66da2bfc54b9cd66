"""The encryption section of the benchmark harness (issue 33): the same disk series backed up
into an unencrypted and an encrypted store in one run, and restored from each.

  encryption  days 0..3 of one disk of the shared workload (4 GiB, --quick 1 GiB): a full
              backup (best of two, each into a fresh store), three dailies and a restore of the
              newest (best of three) for each store; the encrypted store's extra bytes per data
              chunk (its sealed chunks' nonces and tags) from the two stores' pack bytes.
"""

import os
import shutil
import subprocess

from run import best_of, dir_bytes, disk_series, log, measure, warm

SIZES = {"full": "4G", "quick": "1G", "smoke": "64M"}
PASSPHRASE = "benchmark passphrase"


def run_encryption(work, shared, cairn, res, profile):
    size = SIZES[profile]
    d = work / "encryption"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raws = disk_series(work, shared, "encryption", size, 4, 31, 3)
    key = d / "key.json"
    env = dict(os.environ, CAIRN_KEY_FILE=str(key), CAIRN_PASSPHRASE=PASSPHRASE)
    # The key file is made once, with the default Argon2id cost (what a user gets).
    subprocess.run([str(cairn), "key", "create", str(key)], check=True, env=env, stdout=subprocess.DEVNULL)
    times = [f"2026-11-0{day + 1}T02:00:00Z" for day in range(4)]
    for name, extra in (("plain", []), ("encrypted", ["--encrypt"])):
        store = d / name

        def fresh():
            shutil.rmtree(store, ignore_errors=True)
            subprocess.run([str(cairn), "init", "--timezone", "UTC", *extra, str(store)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            warm(raws[0])

        def backup_cmd(day):
            return [cairn, "backup", "--store", store, "--vm", "vm", "--time", times[day], f"xvda={raws[day]}"]

        res.add(f"encryption-full-{name}", "cairn", best_of(2, fresh, backup_cmd(0), env=env), dir_bytes(store))
        for day in range(1, 4):
            warm(raws[day])
            res.add(f"encryption-daily{day}-{name}", "cairn", measure(backup_cmd(day), env=env), dir_bytes(store))
        out = d / f"restore-{name}.raw"
        res.add(f"encryption-restore-{name}", "cairn",
                best_of(3, lambda: (out.unlink(missing_ok=True), warm(store)),
                        [cairn, "restore", "--store", store, "vm/xvda@latest", out], env=env))
        if subprocess.run(["cmp", str(out), str(raws[3])]).returncode != 0:
            raise SystemExit(f"the {name} store restored day 3 wrong")
        out.unlink()
    # What every command that needs the key pays once: opening the key file (Argon2id at its
    # default cost), as `list` with and without the passphrase tells.
    store = d / "encrypted"
    keyless = {k: v for k, v in env.items() if k != "CAIRN_PASSPHRASE"}
    with_key = best_of(3, lambda: None, [cairn, "list", "--store", store], env=env)
    without = best_of(3, lambda: None, [cairn, "list", "--store", store], env=keyless)
    res.add("encryption-key-open", "cairn", {**with_key, "seconds": with_key["seconds"] - without["seconds"],
                                             "cpu_seconds": with_key["cpu_seconds"] - without["cpu_seconds"]})
    # The bytes sealing adds: the packs of both stores hold the same chunks, compressed alike.
    chunks, plain_stored = data_frames(d / "plain" / "packs")
    sealed_chunks, sealed_stored = data_frames(d / "encrypted" / "packs")
    if sealed_chunks != chunks:
        raise SystemExit(f"the stores hold {chunks} and {sealed_chunks} data chunks")
    extra = sealed_stored - plain_stored
    res.add("encryption-overhead", "cairn", {"seconds": 0.0, "cpu_seconds": 0.0, "rss_mib": 0.0},
            extra, chunks=chunks, bytes_per_chunk=extra / max(chunks, 1))


def data_frames(packs):
    """The data frames of the pack files under `packs`: how many, and their stored bytes (the
    pack format: a 32-byte header, then frames of a 56-byte header, stored length at 44..48,
    kind at 49, 0 for data)."""
    n = stored = 0
    for root, _, files in os.walk(packs):
        for f in files:
            if not f.endswith(".pack"):
                continue
            with open(os.path.join(root, f), "rb") as fh:
                at = 32
                size = os.fstat(fh.fileno()).st_size
                while at + 56 <= size:
                    fh.seek(at)
                    h = fh.read(56)
                    length = int.from_bytes(h[44:48], "big")
                    if h[49] == 0:
                        n += 1
                        stored += length
                    at += 56 + length
    return n, stored


def targets(res):
    """(name, measured, wanted) of this section's targets: encrypted over unencrypted, same run."""
    out = []

    def ratio(step):
        a, b = res.seconds(f"{step}-encrypted"), res.seconds(f"{step}-plain")
        return None if a is None or not b else a / b

    out.append(("encrypted/plain full backup time", ratio("encryption-full"), "<= 1.10"))
    daily = [ratio(f"encryption-daily{day}") for day in range(1, 4)]
    daily = None if None in daily else sum(daily) / len(daily)
    out.append(("encrypted/plain daily backup time (mean of 3)", daily, "<= 1.10"))
    out.append(("encrypted/plain restore time", ratio("encryption-restore"), "<= 1.10"))
    key_open = res.seconds("encryption-key-open")
    out.append(("opening the key file (Argon2id, s per command)", key_open, "(fixed)"))

    def net(step):
        a, b = res.seconds(f"{step}-encrypted"), res.seconds(f"{step}-plain")
        return None if a is None or not b or key_open is None else (a - key_open) / b

    out.append(("encrypted/plain full backup time, key file opened", net("encryption-full"), "(data)"))
    out.append(("encrypted/plain restore time, key file opened", net("encryption-restore"), "(data)"))
    o = res.get("encryption-overhead", "cairn")
    out.append(("bytes sealing adds per data chunk", None if o is None else o["bytes_per_chunk"], "40 (nonce, tag)"))
    return out
