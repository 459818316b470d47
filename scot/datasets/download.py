"""Downloading a benchmark: progress bar, integrity check, never a half-extracted folder.

The archives are the ones the HPF/SCOT code downloads (Google Drive copies prepared by the
HPF authors; SPair-71k also from its project page).  No checksums are published for them,
so integrity is checked by what can be checked: the byte count against the server's
``Content-Length``, the gzip CRC and tar structure (verified by reading the whole archive
while extracting), and the expected layout of the extracted folder.  The archive's SHA-256
is recorded in ``<dataset>/.scot-download.json`` for provenance.

Extraction goes to a hidden temporary folder that is renamed into place only after the
checks pass; on any failure or interruption the temporary files are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScotError


def google_drive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class Source:
    folder: str  # the dataset's folder name inside --datapath
    urls: tuple[str, ...]
    marker: str  # a file that must exist in the extracted folder
    approx_size: str


SOURCES = {
    "pfwillow": Source("PF-WILLOW", (google_drive("1tDP0y8RO5s45L-vqnortRaieiWENQco_"),
                                     google_drive("1Moes_nP-1AGxuG6TkuEl100NaHGWhRfv")),
                       "test_pairs.csv", "about 10 MB"),
    "pfpascal": Source("PF-PASCAL", (google_drive("1OOwpGzJnTsFXYh-YffMQ9XKM_Kl_zdzg"),
                                     google_drive("1r54YXfCWGHe523w3ZQnCP0Y1TDToKx8n")),
                       "test_pairs.csv", "about 60 MB"),
    "spair": Source("SPair-71k", ("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
                                  google_drive("1KSvB0k2zXA06ojWNvFjBv0Ake426Y76k")),
                    "Layout/large/test.txt", "about 220 MB"),
}

ProgressFn = Callable[[int, int | None], None]  # (bytes so far, total or None)


class _DownloadFailed(Exception):
    pass


def _fetch(url: str, dest: Path, progress: ProgressFn | None, timeout: float) -> tuple[int, str]:
    """Stream ``url`` to ``dest``; return (bytes, sha256).  Raises _DownloadFailed."""
    request = urllib.request.Request(url, headers={"User-Agent": "scot-dataset-downloader"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _DownloadFailed(str(getattr(exc, "reason", exc))) from None
    with response:
        ctype = response.headers.get("Content-Type", "")
        if "text/html" in ctype:
            raise _DownloadFailed("the server answered with a web page instead of the archive")
        total = response.headers.get("Content-Length")
        total_n = int(total) if total and total.isdigit() else None
        digest = hashlib.sha256()
        done = 0
        with open(dest, "wb") as fh:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, TimeoutError) as exc:
                    raise _DownloadFailed(f"connection lost after {done} bytes ({exc})") from None
                if not chunk:
                    break
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total_n)
    if total_n is not None and done != total_n:
        raise _DownloadFailed(f"incomplete download: {done} of {total_n} bytes")
    if done == 0:
        raise _DownloadFailed("empty download")
    return done, digest.hexdigest()


def _extract_checked(archive: Path, work: Path, source: Source) -> Path:
    """Extract into ``work`` and return the dataset folder inside it (checked)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole archive: CRC and truncation checks
            if hasattr(tarfile, "data_filter"):
                tar.extractall(work, members=members, filter="data")
            else:
                tar.extractall(work, members=members)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _DownloadFailed(f"the archive is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    candidates = [work / source.folder, work]
    candidates += [d / source.folder for d in work.iterdir() if d.is_dir()]
    for cand in candidates:
        if (cand / source.marker).is_file():
            return cand
    raise _DownloadFailed(f"the archive does not contain {source.folder}/{source.marker}")


def download_dataset(
    name: str,
    datapath: str | Path,
    progress: ProgressFn | None = None,
    urls: tuple[str, ...] | None = None,
    timeout: float | None = None,
) -> Path:
    """Download and install benchmark ``name`` into ``datapath``; return its folder.

    Tries each source URL in turn.  Raises :class:`ScotError` naming where to put the
    files by hand when every source fails.
    """
    source = SOURCES[name]
    if timeout is None:
        timeout = float(os.environ.get("SCOT_DOWNLOAD_TIMEOUT", "30"))
    datapath = Path(datapath)
    target = datapath / source.folder
    if (target / source.marker).is_file():
        return target
    if target.exists():
        raise ScotError(f"{target} exists but has no {source.marker}; remove or complete it, then retry")
    datapath.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls or source.urls:
        tmp = Path(tempfile.mkdtemp(prefix=f".{source.folder}.partial-", dir=datapath))
        try:
            archive = tmp / "archive.tar.gz"
            nbytes, sha = _fetch(url, archive, progress, timeout)
            work = tmp / "extract"
            work.mkdir()
            folder = _extract_checked(archive, work, source)
            (folder / ".scot-download.json").write_text(json.dumps(
                {"url": url, "bytes": nbytes, "sha256": sha, "downloaded": time.strftime("%Y-%m-%dT%H:%M:%S")},
                indent=2))
            os.replace(folder, target)
            return target
        except _DownloadFailed as exc:
            errors.append(f"{url.split('?')[0]}: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise ScotError(
        f"could not download {source.folder} ({'; '.join(errors)}); put the {source.folder} folder "
        f"(with {source.marker}) in {datapath} by hand, from {source.urls[0]}"
    )
