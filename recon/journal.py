"""The run's journal: what a run has finished, so that a stopped run resumes where it stopped.

Layout, in ``OUT/.recon-journal/``:

* ``run.json``: the identity of the run, written when it first starts: ``{"format", "settings",
  "weights"}``, the settings that change results and a fingerprint of every weight. A run resumes
  (``--resume``) only with an equal identity.
* ``<attempt>-rank<r>.jsonl``: one JSON line per finished input file, ``{"file", "rows",
  "errors"}``, appended and fsynced after every output of the file has been renamed into place. A
  file is finished exactly when its line is complete; a torn last line (the process was killed while
  writing it) is ignored and its file done again.
* ``<attempt>-rank<r>.alive``: touched every few seconds while the rank runs (its heartbeat).
* ``<attempt>-rank<r>.done``: ``{"failure": str | null}``, written when the rank has finished its share.

Every rank writes its own files, so no collective waits for the slowest rank: global rank 0 waits
on the ``.done`` files (giving up on a rank whose heartbeat stopped) and merges the lines.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import files
from .outputs import JOURNAL, UsageError

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1
HEARTBEAT_SECONDS = 5.0


def weights_fingerprint(models) -> str:
    """SHA-256 (first 16 hex digits) of every weight a run uses: VAE, vocoder, codebook, UNet."""
    from .codec import tensors_fingerprint

    modules = {"vae": models.backbone.vae, "vocoder": models.backbone.vocoder, "quantizer": models.quantizer,
               "unet": models.diffusion.unet if models.diffusion is not None else None}
    return tensors_fingerprint((f"{name}.{k}", v) for name, module in modules.items() if module is not None
                               for k, v in module.state_dict().items())


def _differences(recorded: dict, given: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(recorded) | set(given)):
        a, b = recorded.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} then, {b!r} now")
    return out


class Journal:
    """The journal folder of one output folder (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.dir = Path(out) / JOURNAL

    # -------------------------------------------------------------- identity
    def exists(self) -> bool:
        """A run has started in this output folder (and recorded its identity)."""
        return (self.dir / "run.json").is_file()

    def start(self, identity: dict) -> None:
        """A fresh run: forget any earlier journal, record this run's identity."""
        if self.dir.exists():
            for path in self.dir.iterdir():
                path.unlink()
        files.write_text(self.dir / "run.json", json.dumps({"format": JOURNAL_FORMAT, **identity}, indent=2, sort_keys=True) + "\n")

    def check(self, identity: dict) -> None:
        """Refuse, in one line, to resume a run whose identity differs from ``identity``."""
        path = self.dir / "run.json"
        if not path.is_file():
            raise UsageError(f"--resume: {self.dir.parent} holds no run to resume ({JOURNAL}/run.json is missing); run without --resume")
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"--resume: cannot read {path} ({err}); run again without --resume (and with --overwrite)") from err
        recorded.pop("format", None)
        # Through JSON, so tuples and lists compare alike.
        differences = _differences(recorded, json.loads(json.dumps(identity)))
        if differences:
            raise UsageError(f"--resume: {self.dir.parent} was started with other settings or weights ({'; '.join(differences)}); "
                             "resume with the same ones, or start again with --overwrite")

    # -------------------------------------------------------------- finished files
    def records(self) -> Iterator[dict]:
        """Every finished file's record, once each (the first seen), from every attempt and rank."""
        seen: set[str] = set()
        for path in sorted(self.dir.glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.endswith("\n"):
                        break  # torn by a kill: that file was not finished
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break
                    if record["file"] not in seen:
                        seen.add(record["file"])
                        yield record

    def finished(self) -> set[str]:
        """The input files (relative names) whose outputs and rows are all committed."""
        return {record["file"] for record in self.records()}

    # -------------------------------------------------------------- ranks
    def _path(self, attempt: str, rank: int, suffix: str) -> Path:
        return self.dir / f"{attempt}-rank{rank}.{suffix}"

    def wait_for_ranks(self, attempt: str, ranks: list[int], timeout: float, poll: float = 0.2) -> dict[int, str | None]:
        """Each rank's failure (None when it finished cleanly), once every rank in ``ranks`` is done.

        A file-based wait: a rank may take as long as it needs while its heartbeat goes on; one whose
        heartbeat is older than ``timeout`` seconds (killed, or its node lost) is reported as lost.
        """
        waiting = set(ranks)
        results: dict[int, str | None] = {}
        since = time.time()
        while waiting:
            for rank in sorted(waiting):
                done = self._path(attempt, rank, "done")
                if done.is_file():
                    results[rank] = json.loads(done.read_text())["failure"]
                    waiting.discard(rank)
                    continue
                alive = self._path(attempt, rank, "alive")
                last = alive.stat().st_mtime if alive.exists() else since
                if time.time() - last > timeout:
                    results[rank] = f"stopped answering (no heartbeat in {timeout:.0f} s): its files are not all done; rerun with --resume"
                    waiting.discard(rank)
            if waiting:
                time.sleep(poll)
        return results


class RankJournal:
    """One rank's journal of one attempt: appends finished files, beats, and says when it is done."""

    def __init__(self, journal: Journal, attempt: str, rank: int, heartbeat: float = HEARTBEAT_SECONDS):
        self.journal, self.attempt, self.rank = journal, attempt, rank
        journal.dir.mkdir(parents=True, exist_ok=True)
        self._file = open(journal._path(attempt, rank, "jsonl"), "a", encoding="utf-8")
        self._alive = journal._path(attempt, rank, "alive")
        self._alive.touch()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._beating, args=(heartbeat,), name="recon-heartbeat", daemon=True)
        self._beat.start()

    def _beating(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                os.utime(self._alive)
            except OSError as err:  # a passing file-system hiccup; the next beat tries again
                log.warning("heartbeat %s: %s", self._alive, err)

    def append(self, record: dict) -> None:
        """Commit one finished file: its line is on disk when this returns."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def done(self, failure: str | None) -> None:
        self.close()
        files.write_text(self.journal._path(self.attempt, self.rank, "done"), json.dumps({"failure": failure}) + "\n")

    def close(self) -> None:
        self._stop.set()
        self._beat.join()
        if not self._file.closed:
            self._file.close()
