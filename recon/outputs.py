"""What a run owns in its output folder, and the errors that stop a run as a whole.

Every run records the top-level names it writes into ``OUT/.recon-manifest.json`` before it writes
any of them; ``--overwrite`` removes exactly the previous record's names, so a user's own files in
``OUT`` stay and a different variant set leaves no stale folders.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from . import files

log = logging.getLogger(__name__)

RESULT_NAMES = ("metrics.csv", "summary.json", "errors.csv", "report.html", "report_files/")
INPUT_FOLDER = "input"
# The top-level names of OUT that the last run writes, recorded before it writes any of them:
# --overwrite removes exactly these, so a user's own files in OUT and stale variants are told apart.
MANIFEST = ".recon-manifest.json"
# The journal of committed files that --resume continues from (recon.journal).
JOURNAL = ".recon-journal"
MANIFEST_FORMAT = 1


class UsageError(ValueError):
    """A problem with the command line or the run as a whole (exit status 2), one line."""


def describe_error(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:500]


def _is_plain_name(entry: str) -> bool:
    name = entry.removesuffix("/")
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def read_manifest(out: Path) -> list[str] | None:
    """The top-level names the previous run in ``out`` wrote, or None where no run left a record.

    A folder written before recon kept manifests is read from its summary.json (its variants, the
    input folder, the result files, and wandb/ when that run logged to W&B).
    """
    path = out / MANIFEST
    if path.is_file():
        try:
            entries = json.loads(path.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"cannot read {path} ({describe_error(err)}); remove it or choose another --output") from err
        bad = [e for e in entries if not isinstance(e, str) or not _is_plain_name(e)]
        if bad:
            # Never follow a damaged record outside OUT.
            raise UsageError(f"{path} names {bad}, which are not names inside {out}; remove it or choose another --output")
        return entries
    summary = out / "summary.json"
    if not summary.is_file():
        return None
    try:
        data = json.loads(summary.read_text())
        variants = list(data["variants"])
        wandb = (data.get("run") or {}).get("wandb", "off") != "off"
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{out} holds a summary.json recon cannot read ({describe_error(err)}); choose another --output") from err
    return [f"{INPUT_FOLDER}/", *(f"{v}/" for v in variants if _is_plain_name(v)), *RESULT_NAMES, *(["wandb/"] if wandb else [])]


def _occupied(path: Path) -> bool:
    """Holds something to lose: a file, a link, or a folder that is not empty."""
    return path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_output(out: Path, overwrite: bool, outputs: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Refuse an output folder that already holds results, unless ``overwrite``; returns the previous
    run's entries that exist, which an overwriting run removes (:func:`remove_previous`).

    Under any setting, ``outputs`` (this run's top-level names) must not name something in ``out``
    that no recorded run wrote: recon would mix its files into it and a later ``--overwrite`` would
    remove it.
    """
    if not out.is_dir():
        return []
    previous = read_manifest(out)
    if previous is None:
        # No record: anything that looks like results (an interrupted run's wav folders) stops it.
        stale = []
        existing = [name for name in RESULT_NAMES if (out / name).exists()]
        existing += [p.name + "/" for p in out.iterdir() if p.is_dir() and any(p.rglob("*.wav"))]
    else:
        stale = [e for e in previous if (out / e.removesuffix("/")).exists() or (out / e.removesuffix("/")).is_symlink()]
        existing = stale
    if existing and not overwrite:
        resumable = ", or --resume to continue the run that stopped there" if (out / JOURNAL / "run.json").is_file() else ""
        raise UsageError(f"{out} already holds results ({', '.join(sorted(existing))}); pass --overwrite or choose another --output{resumable}")
    foreign = [e for e in outputs if e not in (previous or []) and _occupied(out / e.removesuffix("/"))]
    if foreign:
        raise UsageError(
            f"{out} holds {', '.join(foreign)}, which no recorded recon run wrote there ({MANIFEST}); "
            "move it away or choose another --output (--overwrite removes only what recon wrote)"
        )
    return stale


def remove_previous(out: Path, entries: list[str]) -> None:
    """Delete the previous run's entries (names checked by :func:`read_manifest`); nothing else in ``out``."""
    for entry in entries:
        path = out / entry.removesuffix("/")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if entries:
        log.info("--overwrite: removed the previous run's %s from %s", ", ".join(entries), out)


def write_manifest(out: Path, outputs: list[str]) -> None:
    text = json.dumps({"format": MANIFEST_FORMAT, "written_by": "recon", "entries": outputs}, indent=2)
    files.write_text(out / MANIFEST, text + "\n")
