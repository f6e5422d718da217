"""Deterministic benchmark datasets (the issue's three), generated once into a cache directory.

(a) ~2 GiB mixed tree: one 1 GiB half-compressible file and 40,000 small files in 400 directories;
(b) a 4 GiB sparse block image with 10% data; (c) = (a) after rewriting 1% of its files.
The same seed always yields the same bytes, so runs on different days compare.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

MIB = 1024 * 1024
GENERATOR_VERSION = "1"
_WORDS = (b"barge velero snapshot volume backup restore chunk index pack tree node agent "
          b"coordinator kubernetes storage object repository encrypt compress dedup").split()  # fmt: skip


def _text_blocks(rng: random.Random, count: int, size: int) -> list[bytes]:
    blocks = []
    for _ in range(count):
        out = bytearray()
        while len(out) < size:
            out += b" ".join(rng.choice(_WORDS) for _ in range(12)) + b"\n"
        blocks.append(bytes(out[:size]))
    return blocks


def _half_compressible(rng: random.Random, text: list[bytes], size: int) -> bytes:
    """Alternating random and text halves: compresses to roughly half."""
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(16 * 1024) + rng.choice(text)[: 16 * 1024]
    return bytes(out[:size])


def mixed_tree(root: Path, *, big_file: int = 1024 * MIB, files: int = 40_000, dirs: int = 400) -> Path:
    rng = random.Random(20261124)
    text = _text_blocks(rng, 64, 16 * 1024)
    (root / "big").mkdir(parents=True)
    with (root / "big" / "half-compressible.bin").open("wb") as out:
        for _ in range(big_file // (64 * MIB)):
            out.write(_half_compressible(rng, text, 64 * MIB))
    per_dir = files // dirs
    for d in range(dirs):
        directory = root / "small" / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(per_dir):
            size = rng.randrange(0, 52 * 1024)
            (directory / f"f{f:03d}.dat").write_bytes(_half_compressible(rng, text, size))
    return root


def changed_files(root: Path, fraction: float = 0.01) -> list[Path]:
    """The files the 1%-change step rewrites (deterministic)."""
    small = sorted((root / "small").rglob("*.dat"))
    rng = random.Random(7)
    return rng.sample(small, int(len(small) * fraction))


def apply_change(root: Path, *, changed: bool) -> None:
    """Rewrite 1% of the small files (changed=True) or put their original bytes back (False)."""
    rng = random.Random(99)
    text = _text_blocks(rng, 8, 16 * 1024)
    for path in changed_files(root):
        original = root.parent / "originals" / path.relative_to(root)
        if changed:
            if not original.exists():
                original.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, original)
            size = path.stat().st_size
            path.write_bytes(_half_compressible(rng, text, max(size, 1024)))
        elif original.exists():
            shutil.copy2(original, path)


def sparse_image(path: Path, *, size: int = 4096 * MIB, data_fraction: float = 0.10) -> Path:
    rng = random.Random(42)
    text = _text_blocks(rng, 16, 16 * 1024)
    regions = size // MIB
    with path.open("wb") as out:
        out.truncate(size)
        for region in sorted(rng.sample(range(regions), int(regions * data_fraction))):
            out.seek(region * MIB)
            out.write(_half_compressible(rng, text, MIB))
    return path


def ensure(cache: Path, *, scale: float = 1.0) -> tuple[Path, Path]:
    """The mixed tree and sparse image under ``cache``, generated unless already there."""
    tag = f"v{GENERATOR_VERSION}-scale{scale:g}"
    stamp = cache / f"datasets-{tag}.ok"
    tree, image = cache / tag / "mixed", cache / tag / "sparse.img"
    if not stamp.exists():
        shutil.rmtree(cache / tag, ignore_errors=True)
        print(f"generating benchmark datasets in {cache / tag} (once)...", flush=True)
        mixed_tree(
            tree,
            big_file=max(64 * MIB, int(1024 * MIB * scale) // (64 * MIB) * 64 * MIB),
            files=max(400, int(40_000 * scale) // 400 * 400),
        )
        sparse_image(image, size=max(64 * MIB, int(4096 * MIB * scale) // MIB * MIB))
        stamp.write_text(tag)
    apply_change(tree, changed=False)
    return tree, image


def tree_bytes(root: Path) -> int:
    return sum(entry.stat().st_size for entry in root.rglob("*") if entry.is_file())


def disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


if __name__ == "__main__":
    import sys

    ensure(Path(sys.argv[1]), scale=float(sys.argv[2]))
