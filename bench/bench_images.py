"""Layer encryption of a 1 GiB layer: ``stockade image encrypt/decrypt`` vs ``skopeo copy``.

The anchor is Debian's skopeo on the same layout in the same run (``--encryption-key jwe:`` and
``--decryption-key``). Both are whole processes timed end to end; the ratio is skopeo's time over
ours (>= 1.0x means we are at least as fast). Memory is the peak RSS of our process minus the
peak RSS of the same command on a one-byte layer, i.e. what the layer's size adds (goal < 64 MB).
Each side runs a few rounds, alternating; the best round counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import record

SIZE = int(os.environ.get("STOCKADE_BENCH_IMAGES_BYTES", str(1 << 30)))
ROUNDS = 2
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
STOCKADE = str(Path(sys.executable).parent / "stockade")


def _layout(root: Path, size: int) -> None:
    """A one-layer layout whose layer is ``size`` bytes (written in 8 MiB chunks)."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    tmp = root / "blobs" / "layer.tmp"
    digest = hashlib.sha256()
    chunk = os.urandom(8 << 20)
    with tmp.open("wb") as out:
        left = size
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            digest.update(piece)
            out.write(piece)
            left -= len(piece)
    layer = f"sha256:{digest.hexdigest()}"
    tmp.rename(root / "blobs" / "sha256" / digest.hexdigest())

    def put(doc: dict[str, object]) -> dict[str, object]:
        raw = json.dumps(doc).encode()
        h = hashlib.sha256(raw).hexdigest()
        (root / "blobs" / "sha256" / h).write_bytes(raw)
        return {"digest": f"sha256:{h}", "size": len(raw)}

    config = put({"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [layer]}, "config": {}})  # fmt: skip
    manifest = put({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": LAYER_TAR, "digest": layer, "size": size}],
    })  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def _timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {err.strip()[-300:]}")
    return elapsed, usage.ru_maxrss * 1024


def _keys(d: Path) -> tuple[Path, Path]:
    priv, pub = d / "k.pem", d / "k.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(priv)], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)],
                   check=True, capture_output=True)  # fmt: skip
    return priv, pub


def main() -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        record("image layer encryption", value="skopeo missing", goal=">= 1.0x skopeo", met=False)
        return
    with tempfile.TemporaryDirectory(prefix="bench-images-", dir=os.environ.get("TMPDIR")) as tmp:
        d = Path(tmp)
        priv, pub = _keys(d)
        _layout(d / "src", SIZE)
        _layout(d / "tiny", 1)
        best: dict[str, float] = {}
        rss: dict[str, int] = {}

        def clean(*names: str) -> None:
            for name in names:
                shutil.rmtree(d / name, ignore_errors=True)

        started = time.monotonic()
        for n in range(ROUNDS):
            if n and time.monotonic() - started > 200:
                break  # the first round was slow (loaded machine): stay inside the time limit
            for who in ("stockade", "skopeo"):
                clean(f"{who}-enc", f"{who}-dec")
                src, enc_dir, dec_dir = (
                    f"oci:{d}/src:v1",
                    f"oci:{d}/{who}-enc:v1",
                    f"oci:{d}/{who}-dec:v1",
                )
                if who == "stockade":
                    enc = [
                        STOCKADE,
                        "image",
                        "encrypt",
                        "-q",
                        src,
                        enc_dir,
                        "--encryption-key",
                        f"jwe:{pub}",
                    ]
                    dec = [
                        STOCKADE,
                        "image",
                        "decrypt",
                        "-q",
                        enc_dir,
                        dec_dir,
                        "--decryption-key",
                        str(priv),
                    ]
                else:
                    base = [skopeo, "--insecure-policy", "copy", "-q"]
                    enc = [*base, "--encryption-key", f"jwe:{pub}", src, enc_dir]
                    dec = [*base, "--decryption-key", str(priv), enc_dir, dec_dir]
                for op, argv in (("encrypt", enc), ("decrypt", dec)):
                    seconds, peak = _timed(argv)
                    key = f"{who}-{op}"
                    best[key] = min(best.get(key, float("inf")), seconds)
                    rss[key] = max(rss.get(key, 0), peak)
            clean("stockade-enc", "skopeo-enc", "stockade-dec", "skopeo-dec")
        # the floor: the same commands on a one-byte layer
        clean("tiny-enc", "tiny-dec")
        tiny, tiny_enc, tiny_dec = (
            f"oci:{d}/tiny:v1",
            f"oci:{d}/tiny-enc:v1",
            f"oci:{d}/tiny-dec:v1",
        )
        _, floor_enc = _timed(
            [STOCKADE, "image", "encrypt", "-q", tiny, tiny_enc, "--encryption-key", f"jwe:{pub}"]
        )
        _, floor_dec = _timed(
            [STOCKADE, "image", "decrypt", "-q", tiny_enc, tiny_dec, "--decryption-key", str(priv)]
        )
        mib = SIZE / (1 << 20)
        for op, floor in (("encrypt", floor_enc), ("decrypt", floor_dec)):
            ours, theirs = best[f"stockade-{op}"], best[f"skopeo-{op}"]
            ratio = theirs / ours
            record(
                f"{op} {mib:.0f} MiB layer",
                value=f"{mib / ours:.0f} MiB/s ({ours:.2f} s)",
                anchor=f"skopeo copy {mib / theirs:.0f} MiB/s ({theirs:.2f} s)",
                ratio=ratio,
                goal=">= 1.0x skopeo",
                met=ratio >= 1.0,
            )
            growth = (rss[f"stockade-{op}"] - floor) / (1 << 20)
            record(
                f"{op} RSS growth",
                value=f"{growth:.1f} MB (peak {rss[f'stockade-{op}'] / (1 << 20):.0f} MB)",
                anchor=f"same command on a 1-byte layer {floor / (1 << 20):.0f} MB;"
                f" skopeo peak {rss[f'skopeo-{op}'] / (1 << 20):.0f} MB",
                goal="< 64 MB",
                met=growth < 64,
            )


if __name__ == "__main__":
    main()
