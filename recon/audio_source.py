# TEMPORARY naive stand-in (not committed)
from pathlib import Path
import torch
from .audio import AudioSpec, load_audio, normalise, normalisation_gain
class AudioSource:
    def __init__(self, path, spec=AudioSpec(), *, mixdown="mean", block_seconds=30.0):
        self.path = Path(path)
        wav = load_audio(path, spec, mixdown=mixdown)
        self._wav = normalise(wav); self.level = normalisation_gain(wav); self.num_samples = wav.numel()
    def read(self, start, stop):
        return self._wav[start:min(stop, self.num_samples)].clone()
