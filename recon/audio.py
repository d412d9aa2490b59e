"""The AudioLDM2 audio front-end: loading, normalisation and the log-mel the VAE was trained on.

Everything in recon that turns audio into model input goes through this module, so training,
inference and metrics all see exactly the same features. The values follow the ``audioldm2``
package (``utilities/audio/stft.py``, ``utilities/audio/tools.py``, ``utils.read_wav_file``):

* 16 kHz mono; waveform normalised as ``0.5 * (x - mean) / max|x - mean|``, padded or cropped to
  10.24 s, then peak-normalised to 0.5 again;
* magnitude STFT, n_fft 1024, hop 160, periodic Hann window of 1024, centred with reflect
  padding; 163 840 samples give 1025 frames and the last one is dropped (1024 frames);
* librosa's slaney mel filterbank (64 bins, 0-8000 Hz) applied to the magnitude;
* ``log(clamp(mel, min=1e-5))``, laid out ``[B, 1, time, mel]``.

Two deliberate differences from the ``audioldm2`` loader, both documented in the README:
long files are cropped *before* the first normalisation (AudioLDM2 takes its statistics from the
whole file), and both normalisations carry an epsilon so silence gives the log floor, not NaN.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import librosa
import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T
from torch import Tensor, nn

from .precision import fp32_island

Mixdown = Literal["mean", "first"]

# Guards the two peak normalisations against division by zero on silent input.
NORMALISE_EPS = 1e-8
# AudioLDM2's log floor: log(clamp(mel, min=1e-5)).
LOG_MEL_FLOOR = 1e-5


@dataclass(frozen=True)
class AudioSpec:
    """Signal parameters of the AudioLDM2 VAE and vocoder; change them only for another backbone.

    Args:
        sample_rate: audio rate in Hz (AudioLDM2: 16000).
        duration: seconds per segment (AudioLDM2: 10.24).
        n_fft: STFT size.
        hop_length: STFT hop in samples (10 ms).
        win_length: STFT window in samples.
        n_mels: mel bins.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz.
    """

    sample_rate: int = 16000
    duration: float = 10.24
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0

    @property
    def num_samples(self) -> int:
        """Samples in one segment (163 840 for 10.24 s)."""
        return int(round(self.duration * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Log-mel frames of one segment (1024 for 10.24 s)."""
        return self.num_samples // self.hop_length


class AudioLoadError(ValueError):
    """An input file that cannot be turned into model input; the message names file and reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _soundfile_info(path: Path):
    """soundfile's header info, or None when soundfile does not know the container (librosa may)."""
    if not path.is_file():
        raise AudioLoadError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioLoadError(path, "empty file")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None


def undecodable(path: Path, err: Exception) -> AudioLoadError:
    """The error for a file no decoder could read (soundfile failed, then librosa's audioread)."""
    return AudioLoadError(path, f"not a readable audio file ({type(err).__name__}: {err})")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header, decoding (librosa) only when soundfile cannot read it."""
    path = Path(path)
    info = _soundfile_info(path)
    if info is not None:
        return info.frames / info.samplerate
    try:
        return float(librosa.get_duration(path=str(path)))
    except Exception as err:  # librosa surfaces many backend-specific error types
        raise undecodable(path, err) from err


def _read_file(path: Path, start_seconds: float = 0.0, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read ``[channels, samples]`` float32 from a file, with soundfile, else librosa (mp3/m4a/...)."""
    info = _soundfile_info(path)
    if info is not None:
        start = int(round(start_seconds * info.samplerate))
        stop = None if seconds is None else start + int(math.ceil(seconds * info.samplerate))
        try:
            data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioLoadError(path, f"unreadable audio ({err})") from err
        return data.T, sr
    # soundfile does not know the container: librosa (audioread/ffmpeg) may.
    try:
        data, sr = librosa.load(str(path), sr=None, mono=False, offset=start_seconds, duration=seconds)
    except Exception as err:  # librosa surfaces many backend-specific error types
        raise undecodable(path, err) from err
    data = np.atleast_2d(data).astype(np.float32)
    return data, int(sr)


# AudioLDM2 resamples with torchaudio's defaults (windowed sinc, width 6, rolloff 0.99); other
# resamplers measurably move the empty top band of the log-mel. Set here only: whole files and
# recon.audio_source's block-wise reading use the same resampler.
RESAMPLE_LOWPASS_WIDTH = 6
RESAMPLE_ROLLOFF = 0.99


@functools.lru_cache(maxsize=4)
def resampler(orig_freq: int, new_freq: int) -> T.Resample:
    """The resampler ``orig_freq -> new_freq`` Hz: ``torchaudio.functional.resample`` with the
    parameters above, its float32 kernel computed once (the same values and output on float32
    input). Its ``width`` is the kernel's half-support in input samples beyond one period."""
    return T.Resample(orig_freq, new_freq, lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH, rolloff=RESAMPLE_ROLLOFF, dtype=torch.float32)


def require_samples(count: int, path: Path) -> None:
    if count == 0:
        raise AudioLoadError(path, "no audio samples")


def require_finite(data: np.ndarray, path: Path) -> None:
    if not np.isfinite(data).all():
        raise AudioLoadError(path, "contains NaN or infinite samples")


def mix_down(data: np.ndarray, mixdown: Mixdown) -> Tensor:
    """``[channels, samples]`` -> mono float32 ``[samples]``: the channel mean, or channel 0."""
    mono = data.mean(axis=0) if mixdown == "mean" else data[0]
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def _to_mono_16k(data: np.ndarray, sr: int, spec: AudioSpec, mixdown: Mixdown, path: Path) -> Tensor:
    require_samples(data.size, path)
    require_finite(data, path)
    wav = mix_down(data, mixdown)
    if sr != spec.sample_rate:
        wav = resampler(sr, spec.sample_rate)(wav)
    return wav


def normalisation_terms(total: Tensor, count: int, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """The two terms of :func:`normalise` from a signal's float64 sum ``total`` over ``count``
    samples, its minimum ``low`` and maximum ``high``: ``mean = total / count`` and
    ``peak = max(high - mean, mean - low)`` (= ``max|x - mean|``) in float64, returned as float32
    ``(mean, peak + NORMALISE_EPS)``. Whole signals and :class:`recon.audio_source.AudioSource`
    (which sums block by block) both normalise through it, so their terms agree."""
    mean = total / count
    peak = torch.maximum(high.double() - mean, mean - low.double())
    return mean.float(), (peak + NORMALISE_EPS).float()


def _whole_terms(wav: Tensor) -> tuple[Tensor, Tensor]:
    return normalisation_terms(wav.double().sum(dim=-1, keepdim=True), wav.shape[-1], wav.amin(dim=-1, keepdim=True), wav.amax(dim=-1, keepdim=True))


def normalise(wav: Tensor) -> Tensor:
    """AudioLDM2's ``normalize_wav``: remove the mean, peak-normalise to 0.5 (epsilon: no NaN on
    silence): ``0.5 * (x - mean) / (max|x - mean| + eps)``, terms by :func:`normalisation_terms`."""
    mean, denominator = _whole_terms(wav)
    return 0.5 * (wav - mean) / denominator


def normalisation_gain(wav: Tensor) -> float:
    """The factor that takes ``normalise(wav)`` back to ``wav``'s own level (DC aside)."""
    return float(_whole_terms(wav)[1]) / 0.5


def fit_length(wav: Tensor, num_samples: int) -> Tensor:
    """Crop or zero-pad the last axis to ``num_samples``."""
    if wav.shape[-1] >= num_samples:
        return wav[..., :num_samples]
    return nn.functional.pad(wav, (0, num_samples - wav.shape[-1]))


def prepare_segment(wav: Tensor, spec: AudioSpec = AudioSpec()) -> Tensor:
    """Raw 16 kHz mono ``[..., samples]`` -> model-ready segment of exactly ``spec.num_samples``.

    Crop first (statistics from the segment, not the whole file), normalise, pad, peak-normalise.
    """
    wav = normalise(wav[..., : spec.num_samples])
    wav = fit_length(wav, spec.num_samples)
    return 0.5 * wav / (wav.abs().amax(dim=-1, keepdim=True) + NORMALISE_EPS)


def load_audio(
    path: str | Path,
    spec: AudioSpec = AudioSpec(),
    *,
    mixdown: Mixdown = "mean",
    offset: float = 0.0,
    duration: float | None = None,
) -> Tensor:
    """Read a file as raw (not normalised) 16 kHz mono ``[samples]``, without cropping by default.

    ``mixdown="mean"`` averages the channels; ``"first"`` keeps channel 0 as AudioLDM2 does.
    Raises :class:`AudioLoadError` naming the file for empty, unreadable or non-finite input.
    """
    path = Path(path)
    data, sr = _read_file(path, offset, duration)
    return _to_mono_16k(data, sr, spec, mixdown, path)


def source_format(path: str | Path) -> dict[str, int]:
    """The file's own sample rate and channel count as codec headers record them
    (``input_sample_rate``, ``input_channels``), read from its header without decoding the audio;
    empty when neither soundfile nor audioread (librosa's fallback, for m4a and the like) can say."""
    try:
        info = sf.info(str(path))
        rate, channels = info.samplerate, info.channels
    except Exception:  # a container soundfile does not know
        try:
            import audioread

            with audioread.audio_open(str(path)) as f:
                rate, channels = f.samplerate, f.channels
        except Exception:
            return {}
    return {"input_sample_rate": int(rate), "input_channels": int(channels)}


def load_waveform(path: str | Path, spec: AudioSpec = AudioSpec(), *, mixdown: Mixdown = "mean", offset: float = 0.0) -> Tensor:
    """Load one model-ready segment ``[1, spec.num_samples]`` starting at ``offset`` seconds."""
    raw = load_audio(path, spec, mixdown=mixdown, offset=offset, duration=spec.duration)
    return prepare_segment(raw, spec).unsqueeze(0)


TAIL_FRAMES = 128  # 1.28 s: a multiple of every downsampling in the VAE (4) and the diffusion UNet (8 x 4)


# Consecutive windows may overlap by a multiple of 4 frames (640 samples, the VAE's time
# downsampling): every window then starts on the same STFT and latent grid as the first.
OVERLAP_QUANTUM_FRAMES = 4


# The default overlap of infer.py and ``recon encode``: measured in bench/seams.py (README,
# "Long files and seams").
DEFAULT_OVERLAP_SECONDS = 0.32


# Files longer than this many seconds are streamed (read by offset, processed and written window
# group by window group) by infer.py and ``recon encode``; shorter ones are loaded whole.
STREAM_ABOVE_SECONDS = 60.0


def overlap_samples(seconds: float, spec: AudioSpec = AudioSpec()) -> int:
    """``seconds`` of window overlap in samples; a ValueError unless it is a multiple of
    ``OVERLAP_QUANTUM_FRAMES`` frames (0.04 s) shorter than half a segment."""
    quantum = OVERLAP_QUANTUM_FRAMES * spec.hop_length
    if not math.isfinite(seconds):
        raise ValueError(f"overlap {seconds} s is not a number of seconds")
    samples = round(seconds * spec.sample_rate)
    if abs(seconds * spec.sample_rate - samples) > 1e-6 * spec.sample_rate or samples % quantum:
        raise ValueError(f"overlap {seconds} s is not a multiple of {quantum / spec.sample_rate} s ({quantum} samples)")
    if not 0 <= samples <= spec.num_samples // 2:
        raise ValueError(f"overlap {seconds} s must lie in [0, {spec.duration / 2}] s")
    return samples


def segment_lengths(num_samples: int, segment: int, quantum: int, overlap: int = 0) -> list[int]:
    """Samples spanned by each window of a ``num_samples`` file. Window ``k`` starts at
    ``k * (segment - overlap)``; full ``segment``s while they fit, then one last window over the
    rest (when the full ones do not reach the end), zero-padded up to a multiple of ``quantum``
    (at least one window). With ``overlap`` 0 the windows are butted segments. Codec files store
    only ``segment``, ``quantum`` and ``overlap``: the layout follows from the length."""
    if segment % quantum:
        raise ValueError(f"a tail quantum of {quantum} samples must divide the {segment}-sample segment")
    if not 0 <= overlap < segment:
        raise ValueError(f"an overlap of {overlap} samples must lie in [0, {segment})")
    hop = segment - overlap
    full = (num_samples - segment) // hop + 1 if num_samples >= segment else 0
    reached = (full - 1) * hop + segment if full else 0
    if full and reached >= num_samples:
        return [segment] * full
    rest = num_samples - full * hop
    return [segment] * full + [max(1, math.ceil(rest / quantum)) * quantum]


def split_file(wav: Tensor, spec: AudioSpec = AudioSpec(), tail_frames: int | None = TAIL_FRAMES, overlap: int = 0) -> list[Tensor]:
    """Cut a ``[samples]`` waveform into full segments and a shorter last one, consecutive ones
    sharing ``overlap`` samples (:func:`segment_lengths`; :func:`crossfade_join` undoes it).

    The last segment is zero-padded only up to a multiple of ``tail_frames`` frames, not to a full
    10.24 s: a 1 s file costs one eighth of a segment's forwards instead of a whole one. The
    networks are convolutional, so they take any such length. ``tail_frames=None`` pads the last
    segment to full length (what :func:`split_segments` does).
    """
    step = spec.num_samples
    quantum = step if tail_frames is None else tail_frames * spec.hop_length
    lengths = segment_lengths(wav.shape[-1], step, quantum, overlap)
    hop = step - overlap
    return [fit_length(wav[..., i * hop : i * hop + step], length) for i, length in enumerate(lengths)]


def crossfade_weights(overlap: int, device=None) -> Tensor:
    """The incoming window's weight over an overlap: ``w[t] = (t + 1/2) / overlap``, a linear ramp
    (triangular overlap-add, as EnCodec joins its chunks); the outgoing one's is ``1 - w[t]``."""
    return (torch.arange(overlap, dtype=torch.float32, device=device) + 0.5) / overlap


def crossfade_join(parts: list[Tensor], overlap: int, length: int) -> Tensor:
    """The waveform ``[length]`` of window outputs ``parts`` cut by :func:`split_file` with
    ``overlap``: each window laid at ``k * (segment - overlap)``, and over each overlap
    ``y = a + w * (b - a)`` (``torch.lerp``), ``a`` the outgoing window, ``b`` the incoming one,
    ``w`` :func:`crossfade_weights`. The weights sum to one, and windows that agree give exactly
    their common samples. ``overlap`` 0 is concatenation."""
    if overlap == 0 or len(parts) == 1:
        return torch.cat(parts)[:length]
    segment = parts[0].shape[-1]
    hop = segment - overlap
    out = parts[0].new_empty((len(parts) - 1) * hop + parts[-1].shape[-1])
    weights = crossfade_weights(overlap, out.device).to(out.dtype)
    for k, part in enumerate(parts):
        start = k * hop
        out[start : start + part.shape[-1]] = part
        if k:
            out[start : start + overlap] = torch.lerp(parts[k - 1][segment - overlap :], part[:overlap], weights)
    return out[:length]


class CrossfadeStream:
    """:func:`crossfade_join` one window at a time, for outputs too long to hold: :meth:`push`
    takes the windows in order and returns the samples that are final so far (all but the last
    ``overlap``, which the next window fades into); :meth:`finish` returns the rest, up to
    ``length`` samples in all. The concatenated returns equal ``crossfade_join(windows, overlap,
    length)`` exactly (the same ``torch.lerp`` on the same values)."""

    def __init__(self, overlap: int, length: int):
        self.overlap, self.length = overlap, length
        self._tail: Tensor | None = None  # the last window's outgoing overlap, not yet final
        self._emitted = 0

    def _emit(self, samples: Tensor) -> Tensor:
        samples = samples[: max(self.length - self._emitted, 0)]
        self._emitted += samples.shape[-1]
        return samples

    def push(self, window: Tensor) -> Tensor:
        if self._tail is not None:
            if self._tail.shape[-1] < self.overlap or window.shape[-1] <= self.overlap:
                raise ValueError(f"windows of {self._tail.shape[-1]} and {window.shape[-1]} samples cannot share an overlap of {self.overlap}")
            head = torch.lerp(self._tail, window[: self.overlap], crossfade_weights(self.overlap, window.device).to(window.dtype))
            window = torch.cat([head, window[self.overlap :]])
        keep = max(window.shape[-1] - self.overlap, 0)  # a lone short window is all tail
        self._tail = window[keep:] if self.overlap else window[:0]
        return self._emit(window[:keep])

    def finish(self) -> Tensor:
        if self._tail is None:
            raise ValueError("no window was pushed")
        tail, self._tail = self._tail, None
        return self._emit(tail)


def length_chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of segments grouped into forward passes: equal lengths only, at most ``batch_size``
    each, longest first, in input order within a length."""
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_length.setdefault(length, []).append(i)
    return [members[i : i + batch_size] for _, members in sorted(by_length.items(), reverse=True) for i in range(0, len(members), batch_size)]


def split_segments(wav: Tensor, spec: AudioSpec = AudioSpec()) -> Tensor:
    """Cut a long ``[samples]`` waveform into ``[n, spec.num_samples]`` segments, zero-padding the last."""
    n = max(1, math.ceil(wav.shape[-1] / spec.num_samples))
    return fit_length(wav, n * spec.num_samples).reshape(n, spec.num_samples)


class MelFrontEnd(nn.Module):
    """Batched AudioLDM2 log-mel: ``wav [B, samples] -> logmel [B, 1, frames, n_mels]``.

    ``frames = samples // hop`` (1024 for 10.24 s): the centred STFT yields one frame more and
    AudioLDM2 drops it. The window and filterbank are buffers, so ``.to(device)`` moves them.
    """

    def __init__(self, spec: AudioSpec = AudioSpec()):
        super().__init__()
        self.spec = spec
        mel = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax)
        self._float32 = {"mel_basis": torch.from_numpy(mel).float(), "window": torch.hann_window(spec.win_length, periodic=True)}
        for name, value in self._float32.items():
            self.register_buffer(name, value.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        # Buffers follow the module to any device but stay float32 with their exact values: a
        # module-wide cast to half precision (``.half()``, a ``*-true`` precision) would round them.
        super()._apply(fn, recurse)
        for name, value in self._float32.items():
            setattr(self, name, value.to(getattr(self, name).device))
        return self

    def magnitude(self, wav: Tensor) -> Tensor:
        """Magnitude STFT ``[B, n_fft // 2 + 1, frames]`` with the trailing frame dropped."""
        stft = torch.stft(
            wav.float(),
            n_fft=self.spec.n_fft,
            hop_length=self.spec.hop_length,
            win_length=self.spec.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return stft.abs()[..., : wav.shape[-1] // self.spec.hop_length]

    def log_mel(self, magnitude: Tensor) -> Tensor:
        """``ln(max(M |S|, 1e-5))`` of magnitude frames ``[B, n_fft // 2 + 1, frames]`` -> ``[B, n_mels, frames]``."""
        # float32 whatever the run's precision: autocast would compute the matmul in half precision.
        with fp32_island(magnitude.device):
            return torch.log(torch.clamp(self.mel_basis @ magnitude.float(), min=LOG_MEL_FLOOR))

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"MelFrontEnd expects [batch, samples], got shape {tuple(wav.shape)}")
        with fp32_island(wav.device):
            magnitude = self.magnitude(wav)
        return self.log_mel(magnitude).transpose(1, 2).unsqueeze(1)
