"""Discriminators and GAN losses for the small stand-in vocoder's adversarial round.

The choice: HiFi-GAN's **multi-period discriminator** (periods 2, 3, 5, 7, 11) next to the
**multi-resolution STFT discriminator** of UniVNet/Vocos (magnitude spectrograms at three
resolutions), in place of HiFi-GAN's multi-scale waveform discriminator. Why:

- the periods see the waveform's fine periodic structure (pitch, phase coherence), which is what
  the spectral losses cannot judge and what makes the spectral-loss-only vocoder sound rough;
- the STFT discriminator judges the spectrum at several time/frequency trade-offs, which is what
  the multi-scale discriminator approximates with average-pooled waveforms, at a fraction of its
  cost: its 2-D convolutions stride over frequency on a few hundred frames, where the multi-scale
  one runs 1-D grouped convolutions over every sample three times;
- both are small here (channel widths 16..128 for the periods, 16 for the resolutions, against
  HiFi-GAN's 32..1024 and UniVNet's 32) so that a step costs about what a generator step does on
  2 CPU cores.

Losses (LSGAN, as HiFi-GAN), over every sub-discriminator ``k`` with output map ``D_k``::

    L_D   = sum_k mean((1 - D_k(x))^2) + mean(D_k(G(s))^2)
    L_adv = sum_k mean((1 - D_k(G(s)))^2)
    L_fm  = sum_k sum_l mean |F_kl(x) - F_kl(G(s))|       (feature maps F_kl of layer l, real detached)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

LEAKY_SLOPE = 0.1  # HiFi-GAN's
PERIODS = (2, 3, 5, 7, 11)
PERIOD_CHANNELS = (16, 32, 64, 128, 128)
# (FFT size, hop): 64, 32 and 16 ms Hann windows at 16 kHz, hop = FFT size / 4.
RESOLUTIONS = ((1024, 256), (512, 128), (256, 64))
RESOLUTION_CHANNELS = 16

# Each sub-discriminator returns its output map and the feature maps before it.
Judgement = tuple[Tensor, list[Tensor]]


def _judge(convs: nn.ModuleList, out: nn.Module, x: Tensor) -> Judgement:
    """A convolution stack's score and every layer's activations (for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAKY_SLOPE)
        features.append(x)
    x = out(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """The waveform folded into ``[T/p, p]`` columns, judged by 2-D convolutions along time only."""

    def __init__(self, period: int, channels: tuple[int, ...] = PERIOD_CHANNELS):
        super().__init__()
        self.period = period
        widths = (1, *channels)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(a, b, (5, 1), stride=(3 if i < len(channels) - 1 else 1, 1), padding=(2, 0)))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.out = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: Tensor) -> Judgement:
        x = wav[:, None]
        if x.shape[-1] % self.period:
            x = F.pad(x, (0, self.period - x.shape[-1] % self.period), mode="reflect")
        x = x.view(x.shape[0], 1, -1, self.period)
        return _judge(self.convs, self.out, x)


class ResolutionDiscriminator(nn.Module):
    """The magnitude STFT ``[frames, bins]`` judged by 2-D convolutions striding over frequency."""

    def __init__(self, n_fft: int, hop: int, channels: int = RESOLUTION_CHANNELS):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList(
            [weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4)))]
            + [weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)]
            + [weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))]
        )
        self.out = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: Tensor) -> Judgement:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, return_complex=True).abs()
        x = spec.transpose(1, 2)[:, None]  # [B, 1, frames, bins]
        return _judge(self.convs, self.out, x)


class VocoderDiscriminator(nn.Module):
    """The five period discriminators and the three resolution discriminators, judging ``[B, T]`` waveforms."""

    def __init__(self, periods: tuple[int, ...] = PERIODS, resolutions: tuple[tuple[int, int], ...] = RESOLUTIONS):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p) for p in periods] + [ResolutionDiscriminator(n, h) for n, h in resolutions]
        )

    def forward(self, wav: Tensor) -> list[Judgement]:
        return [d(wav) for d in self.discriminators]


def discriminator_loss(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """``L_D``: real outputs pushed to 1, generated ones to 0 (least squares)."""
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for (r, _), (f, _) in zip(real, fake))


def adversarial_loss(fake: list[Judgement]) -> Tensor:
    """``L_adv``: the generator's outputs pushed to 1 (least squares)."""
    return sum(((1 - f) ** 2).mean() for f, _ in fake)


def feature_matching_loss(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """``L_fm``: L1 between the discriminators' feature maps of real and generated audio."""
    return sum((rf.detach() - ff).abs().mean() for (_, real_maps), (_, fake_maps) in zip(real, fake) for rf, ff in zip(real_maps, fake_maps))
