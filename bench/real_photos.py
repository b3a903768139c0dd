"""Real photo sets for the benchmark, copied under ``.cache/real/<set>/images`` (git-ignored, never committed).

    python -m bench.real_photos prepare                 # every set, cloned from GitHub (needs git and the network)
    python -m bench.real_photos prepare sceaux --source /path/to/ImageDataset_SceauxCastle   # from a clone or bare mirror
    python -m bench.real_photos list

Each set is a folder of a public Git repository; the files are read with ``git archive`` from a
clone (``--source``: a work tree or a bare repository; otherwise a shallow clone into a temporary
folder), so nothing but the photos is kept.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_ROOT = ROOT / ".cache" / "real"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class PhotoSet:
    repo: str
    """GitHub owner/name."""
    folder: str
    """Folder of the photos inside the repository."""
    description: str


SETS = {
    "sceaux": PhotoSet("openMVG/ImageDataset_SceauxCastle", "images", "11 photos, 2832x2128, of the Sceaux castle: a building against the sky"),
    "fox": PhotoSet("NVlabs/instant-ngp", "data/nerf/fox/images", "50 video frames, 1080x1920, of a fox figure in front of a papered wall"),
}


def _git_dir(source: Path) -> Path:
    return source / ".git" if (source / ".git").exists() else source


def prepare(name: str, source: Path | None) -> Path:
    """Copy set ``name``'s photos into ``.cache/real/<name>/images``; returns that folder."""
    spec = SETS[name]
    dest = REAL_ROOT / name / "images"
    with tempfile.TemporaryDirectory(prefix=f"real-{name}-") as tmp:
        if source is None:
            clone = Path(tmp) / "repo"
            url = f"https://github.com/{spec.repo}.git"
            subprocess.run(["git", "clone", "--depth", "1", "--filter=blob:none", "--sparse", url, str(clone)], check=True)
            subprocess.run(["git", "-C", str(clone), "sparse-checkout", "set", spec.folder], check=True)
            source = clone
        archive = subprocess.run(["git", "--git-dir", str(_git_dir(source)), "archive", "--format=tar", "HEAD", spec.folder], check=True, capture_output=True).stdout
        staging = Path(tmp) / "images"
        staging.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).suffix.lower() in PHOTO_SUFFIXES:
                    data = tar.extractfile(member)
                    assert data is not None
                    (staging / Path(member.name).name).write_bytes(data.read())
        if not any(staging.iterdir()):
            raise SystemExit(f"{spec.repo}:{spec.folder} holds no photos")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    print(f"{name}: {len(list(dest.iterdir()))} photos in {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the known sets and whether they are prepared")
    prep = sub.add_parser("prepare", help="copy sets under .cache/real/")
    prep.add_argument("names", nargs="*", metavar="SET", help=f"sets to prepare: {', '.join(SETS)} (default: all)")
    prep.add_argument("--source", type=Path, help="an existing clone or bare mirror of the set's repository (one set only)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, spec in SETS.items():
            ready = (REAL_ROOT / name / "images").is_dir()
            print(f"{name:8} {'prepared' if ready else 'missing '}  {spec.repo}:{spec.folder}  {spec.description}")
        return 0
    names = args.names or list(SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"unknown set {unknown[0]!r}; known: {', '.join(SETS)}")
    if args.source is not None and len(names) != 1:
        parser.error("--source names one repository: give exactly one set")
    for name in names:
        prepare(name, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
