"""Result records: what the model hands the writer for each file, and the run they belong to.

``predict_step`` returns :class:`FileResult` records holding host data only (numpy arrays, bytes,
numbers): Lightning moves the whole batch to the accelerator, so anything passed through
unconverted would be a device tensor, and the writer never touches a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import metrics as M
from .files import WavStream
from .outputs import INPUT_FOLDER, RESULT_NAMES
from .variants import Variant, VariantSettings

METRIC_COLUMNS = (*M.WAVEFORM_METRICS, *M.PERCEPTUAL_METRICS, "latent_snr_db")
# bitrate_bps: the variant's nominal rate; measured_bps: its written file's bytes x 8 / duration.
ROW_COLUMNS = ("file", "variant", "duration_s", "seconds", *METRIC_COLUMNS, "bitrate_bps", "measured_bps", "notes")
ERROR_COLUMNS = ("file", "variant", "reason")


def _require_host(name: str, value) -> None:
    if value is not None and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array on the host, got {type(value).__name__}: predict_step converts device tensors")


@dataclass
class VariantResult:
    """One variant's output for one file, on the host. ``error`` set: nothing else is meaningful."""

    variant: str
    wav: np.ndarray | None = None  # float32 [samples], the input's length
    stream: WavStream | None = None  # or, for a streamed file, its output already written under a temporary name
    metrics: dict[str, float] = field(default_factory=dict)  # the torch metrics, computed on the device
    latent_snr_db: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # this file's share of the variant's compute (and of the shared encode)
    bitstream: bytes | None = None
    error: str | None = None

    def check_host(self) -> None:
        _require_host(f"{self.variant} output", self.wav)


@dataclass
class FileResult:
    """Everything the writer needs for one input file, as host data (numpy, bytes, floats)."""

    index: int  # global dataset index
    relpath: str
    input_wav: np.ndarray | None = None  # the normalised reference, float32 [samples]
    input_stream: WavStream | None = None  # or, for a streamed file, the reference already written under a temporary name
    num_samples: int | None = None  # the reference's length (set when there is no input_wav)
    error: str | None = None  # the file as a whole failed (unreadable, or its encode failed)
    variants: list[VariantResult] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.input_wav.size if self.input_wav is not None else int(self.num_samples or 0)

    @property
    def streams(self) -> list[WavStream]:
        """Every output written ahead under a temporary name (a streamed file's)."""
        return [s for s in (self.input_stream, *(v.stream for v in self.variants)) if s is not None]

    def check_host(self) -> None:
        """Raise unless every array is a host (numpy) array: the writer's one precondition."""
        _require_host(f"{self.relpath} input", self.input_wav)
        for entry in self.variants:
            entry.check_host()


@dataclass
class RunInfo:
    """What a run computes (its variants and settings), for the writer and the summary."""


    variants: list[Variant]
    settings: dict  # free-form run settings, shown in summary.json and the report
    variant_settings: VariantSettings = field(default_factory=VariantSettings)
    started_at: float | None = None  # time.perf_counter() at process start, for the start-up time in summary.json
    extra_outputs: tuple[str, ...] = ()  # other top-level names the caller writes into OUT (e.g. "wandb/")
    # What must be equal for a run to resume another: the settings that change results and the
    # weights' fingerprint (recon.journal); recorded in OUT/.recon-journal/run.json.
    identity: dict = field(default_factory=dict)

    def outputs(self) -> list[str]:
        """Every top-level name of OUT this run writes; folders end in "/"."""
        return [f"{INPUT_FOLDER}/", *(f"{v.name}/" for v in self.variants), *RESULT_NAMES, *self.extra_outputs]

