"""``recon encode`` / ``recon decode`` of files too long to hold: read, coded, decoded, resampled and
written window group by window group, with the same file and the same waveform as the whole-file path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

import recon.audio
import recon.codec
import recon.windows
from recon import cli, codec
from recon.backbone import FrozenAudioLDM2
from recon.container import loads
from recon.files import WavStream
from recon.inputs import InferenceFiles
from recon.lit import load_inference_codebook
from recon.resample import StreamResampler
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
SEGMENT = 163840
BATCH = 2  # windows per forward pass in these runs
# The block-wise resampler against torchaudio's whole-signal one: float rounding of the same sums.
RESAMPLE_ATOL = 1e-6
MODEL = ["--ckpt", str(DEMO_CKPT), "--device", "cpu", "--quiet", "--batch-size", str(BATCH)]


@pytest.fixture(scope="module")
def long_input(tmp_path_factory, single_thread) -> Path:
    """150 s at 16 kHz mono: 15 full overlapping windows and a short last one."""
    folder = tmp_path_factory.mktemp("long")
    write_tone(folder / "long.wav", 150.0, freq=330)
    return folder


@pytest.fixture(scope="module")
def held_and_streamed(long_input, tmp_path_factory) -> dict[str, bytes]:
    """The long input encoded whole (--stream-above past its length) and streamed (--stream-above
    below it, with the whole-file loader barred and every forward pass's windows recorded)."""
    out = tmp_path_factory.mktemp("coded")
    assert cli.main(["encode", str(long_input), "--out", str(out / "held"), "--stream-above", "1000", *MODEL]) == 0
    forwards = []
    encode = recon.windows.encode_windows

    def recording(frontend, backbone, wav):
        forwards.append(tuple(wav.shape))
        return encode(frontend, backbone, wav)

    def barred(self, index):
        raise AssertionError("a streamed file was loaded whole")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recon.windows, "encode_windows", recording)
        patch.setattr(InferenceFiles, "__getitem__", barred)
        assert cli.main(["encode", str(long_input), "--out", str(out / "streamed"), "--stream-above", "60", *MODEL]) == 0
    return {"held": (out / "held" / "long.recn").read_bytes(), "streamed": (out / "streamed" / "long.recn").read_bytes(),
            "forwards": forwards, "folder": out / "streamed"}


@pytest.fixture(scope="module")
def reference(held_and_streamed) -> np.ndarray:
    """The whole-file decode at the input's level: every window decoded, crossfaded whole
    (recon.codec.decode_segments, the path that holds the file)."""
    backbone, quantizer = load_inference_codebook(str(DEMO_CKPT))
    container = loads(held_and_streamed["held"])
    latents = [quantizer.decode_residual(c[None])[0] for c in codec.codebook_codes(container, backbone, quantizer)]
    with torch.no_grad():
        wav = codec.decode_segments(latents, codec.segments_of(container), container.header["num_samples"], backbone, BATCH,
                                    container.get("overlap"))
    return (wav * container.header["level"]).float().numpy()


def decode_streamed(folder: Path, out: Path, *extra: str) -> tuple[np.ndarray, int, list[int]]:
    """``recon decode --format float`` of ``folder`` with the whole-signal join barred: the
    output, its rate, and the length of every block handed to the writer."""
    blocks = []
    write = WavStream.write

    def recording(self, block):
        blocks.append(len(block))
        return write(self, block)

    def barred(*args, **kwargs):
        raise AssertionError("the whole output was joined")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WavStream, "write", recording)
        patch.setattr(recon.codec, "crossfade_join", barred)
        patch.setattr(recon.audio, "crossfade_join", barred)
        assert cli.main(["decode", str(folder), "--out", str(out), "--format", "float", *extra, *MODEL]) == 0
    wav, rate = sf.read(str(out / "long.wav"), dtype="float32")
    return wav, rate, blocks


def test_a_long_file_streams_to_the_same_container_in_bounded_forward_passes(held_and_streamed):
    """For a 16 kHz mono input the streamed encoder writes byte for byte the file of the whole-file
    one (same windows, same forward passes), never loading the file whole, a group at a time."""
    assert held_and_streamed["streamed"] == held_and_streamed["held"]
    header = loads(held_and_streamed["held"]).header
    assert header["num_samples"] == 150 * 16000 and header["overlap"] > 0
    forwards = held_and_streamed["forwards"]
    assert len(forwards) == 9 and all(batch <= BATCH for batch, _ in forwards)  # 15 full windows in 8 passes, the tail alone


def test_decode_streams_the_whole_file_waveform_without_holding_it(held_and_streamed, reference, tmp_path):
    """At the model's rate, the streamed decode is the whole-file decode exactly, and the writer is
    never given more than one forward pass's windows."""
    wav, rate, blocks = decode_streamed(held_and_streamed["folder"], tmp_path / "decoded")
    assert rate == 16000
    np.testing.assert_array_equal(wav, reference)
    assert len(blocks) >= 8 and max(blocks) <= BATCH * SEGMENT


def test_decode_to_44k1_equals_the_whole_signal_resampling(held_and_streamed, reference, tmp_path):
    wav, rate, blocks = decode_streamed(held_and_streamed["folder"], tmp_path / "decoded", "--sample-rate", "44100")
    whole = AF.resample(torch.from_numpy(reference), 16000, 44100).numpy()
    assert rate == 44100 and wav.shape == whole.shape
    np.testing.assert_allclose(wav, whole, rtol=0, atol=RESAMPLE_ATOL)
    assert max(blocks) <= (BATCH * SEGMENT + 16000) * 44100 // 16000


@pytest.mark.parametrize("rates", [(16000, 44100), (16000, 48000), (44100, 16000), (16000, 11025), (16000, 16000)])
def test_block_wise_resampling_equals_the_whole_signal_one(rates):
    """Any block sizes, down to single samples, give torchaudio's whole-signal output (its length
    included) within RESAMPLE_ATOL."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(160_003).astype(np.float32)) * 0.3
    whole = AF.resample(x, *rates)
    for sizes in ([40_000], [1, 7, 3000, 65_536], [len(x)]):
        resampler, outputs, start, k = StreamResampler(*rates), [], 0, 0
        while start < len(x):
            outputs.append(resampler.push(x[start : start + sizes[k % len(sizes)]]))
            start, k = start + sizes[k % len(sizes)], k + 1
        streamed = torch.cat([*outputs, resampler.finish()])
        assert streamed.shape == whole.shape
        torch.testing.assert_close(streamed, whole, rtol=0, atol=RESAMPLE_ATOL)


def test_a_decode_failing_half_way_leaves_nothing_and_the_others_finish(tmp_path, monkeypatch, capsys, single_thread):
    """The vocoder fails on the 3rd window of a.recn, after its first windows were written: no
    a.wav, no temporary file, one error line naming it, and b.recn still decodes."""
    inputs, coded, out = tmp_path / "in", tmp_path / "coded", tmp_path / "out"
    write_tone(inputs / "a.wav", 35.0)
    write_tone(inputs / "b.wav", 3.0, freq=550)
    assert cli.main(["encode", str(inputs), "--out", str(coded), *MODEL]) == 0
    calls, written = [], []
    vocode, write = FrozenAudioLDM2.vocode, WavStream.write

    def failing(self, mel, length):
        calls.append(length)
        if len(calls) == 3:
            raise RuntimeError("vocoder failed")
        return vocode(self, mel, length)

    def recording(self, block):
        written.append(self.path.name)
        return write(self, block)

    monkeypatch.setattr(FrozenAudioLDM2, "vocode", failing)
    monkeypatch.setattr(WavStream, "write", recording)
    assert cli.main(["decode", str(coded), "--out", str(out), *MODEL[:-1], "1"]) == 1
    assert written[:2] == ["a.wav", "a.wav"]  # it failed half-way, not before writing
    assert sorted(p.name for p in out.iterdir()) == ["b.wav"]
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")] == ["error: a.recn: RuntimeError: vocoder failed"]
    assert sf.info(str(out / "b.wav")).frames == 3 * 16000


def test_a_long_ddcm_file_streams_to_the_held_files_bytes_and_decodes_to_its_waveform(tmp_path, single_thread):
    """The DDCM codec on a file past --stream-above: the streamed encoder writes the held encoder's
    bytes, and the streamed decode (windows joined as they come) is the whole-file decode exactly."""
    from recon.codec import decode_container
    from recon.diffusion import load_diffusion_components

    inputs, coded = tmp_path / "in", tmp_path / "coded"
    write_tone(inputs / "long.wav", 30.0, freq=250)  # 2 full windows and a short last one
    common = ["--diffusion", "random:tiny", "--device", "cpu", "--quiet", "--batch-size", str(BATCH)]
    ddcm = ["--codec", "ddcm", "--ddcm-steps", "4", "--ddcm-k", "16", "--seed", "1", *common]
    assert cli.main(["encode", str(inputs), "--out", str(coded / "held"), "--stream-above", "1000", *ddcm]) == 0

    def barred(self, index):
        raise AssertionError("a streamed file was loaded whole")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InferenceFiles, "__getitem__", barred)
        assert cli.main(["encode", str(inputs), "--out", str(coded / "streamed"), "--stream-above", "20", *ddcm]) == 0
    streamed = (coded / "streamed" / "long.recn").read_bytes()
    assert streamed == (coded / "held" / "long.recn").read_bytes()
    container = loads(streamed)
    assert container.codec == "ddcm" and len(codec.segments_of(container)) == 3

    diffusion = load_diffusion_components("random:tiny")
    backbone = FrozenAudioLDM2(diffusion.pipe.vae, diffusion.pipe.vocoder, source="random:tiny")
    with torch.no_grad():
        reference = decode_container(container, backbone, diffusion=diffusion, batch_size=BATCH).float().numpy()

    def joined_whole(*args, **kwargs):
        raise AssertionError("the whole output was joined")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recon.codec, "crossfade_join", joined_whole)
        patch.setattr(recon.audio, "crossfade_join", joined_whole)
        assert cli.main(["decode", str(coded / "streamed"), "--out", str(tmp_path / "decoded"), "--format", "float", "--normalised", *common]) == 0
    wav, rate = sf.read(str(tmp_path / "decoded" / "long.wav"), dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(wav, reference)
