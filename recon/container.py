"""The one file format of every recon codec: a header that says how to decode, the payload, a CRC.

Layout (little-endian)::

    magic b"RECN" | version u16 | header length u32 | header (raw-deflated UTF-8 JSON) |
    payload length u64 | payload | CRC-32 of everything before it (u32)

The header is a JSON object with ``codec`` (``codebook`` or ``ddcm``; residual-VQ files are
``codebook`` files with ``stages`` > 1), ``sample_rate`` (the decoded rate), ``num_samples`` (the
decoded length), ``layout`` (``[segment, quantum]``: the file is coded in segments of ``segment``
samples, the last one zero-padded to a multiple of ``quantum``; see
``recon.audio.segment_lengths``), ``overlap`` (samples shared by consecutive segments, crossfaded
when decoding; absent in older files: 0), ``level`` (the gain back to the input's loudness), ``model``
(fingerprints of the weights decoding needs, compared before anything is decoded) and, since they
exist, ``input_sample_rate`` / ``input_channels`` (the encoded file's own format; absent in older
files: 16000 Hz, mono); codecs add their own parameters. JSON keeps the header readable (``recon
info FILE``) and extensible, as EnCodec's is; deflated, it is 150 to 250 bytes, counted in the
measured bitrate like everything else in the file.

A CRC only proves that some writer wrote the bytes. :func:`loads` therefore checks the header
against :data:`COMMON_FIELDS` and :data:`CODEC_FIELDS` (types, ranges, required and unknown keys)
and the payload's length against what the header declares, before any work is sized by them; the
inflated header is capped at :data:`MAX_HEADER_BYTES`. What needs the model (the layout and code
count it was coded with, the range coder's prior) is checked by ``recon.codec`` before decoding.
This module imports no torch, so ``recon info`` starts in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAGIC = b"RECN"
VERSION = 1
SUFFIX = ".recn"
_PREFIX = struct.Struct("<4sHI")
_PAYLOAD_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")

# recon's own headers are a few hundred bytes; a header that inflates past this is not recon's.
MAX_HEADER_BYTES = 64 * 1024
MAX_SECONDS = 24 * 3600  # the longest file a header may declare
SAMPLE_RATES = (1000, 768_000)  # the rates a header may name, in Hz
DEFAULT_INPUT_RATE, DEFAULT_INPUT_CHANNELS = 16000, 1  # what files written before those fields were


class ContainerError(ValueError):
    """A file that is not a readable recon container; the message is one line saying why."""


# ---------------------------------------------------------------------- the header schema
# A check takes (value, header so far) and returns why the value is wrong, or None. Fields are
# checked in table order, so a bound may use a field checked before it (num_samples: sample_rate).
Check = Callable[[Any, dict], "str | None"]
REQUIRED = object()  # a Field's default: no default, the key must be present


@dataclass(frozen=True)
class Field:
    check: Check
    default: Any = REQUIRED


def _is_int(value) -> bool:
    return type(value) is int  # bool is an int subclass: refused


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def integer(lo: int, hi: int | Callable[[dict], int]) -> Check:
    def check(value, header):
        top = hi(header) if callable(hi) else hi
        return None if _is_int(value) and lo <= value <= top else f"must be an integer in [{lo}, {top}]"

    return check


def number(lo: float, hi: float, *, positive: bool = False) -> Check:
    """A finite JSON number in [lo, hi] (in (0, hi] when ``positive``)."""

    def check(value, header):
        if _is_number(value) and lo <= value <= hi and (value > 0 or not positive):
            return None
        return f"must be a finite number in {'(0' if positive else f'[{lo}'}, {hi}]"

    return check


def power_of_two(lo: int, hi: int) -> Check:
    def check(value, header):
        ok = _is_int(value) and lo <= value <= hi and value & (value - 1) == 0
        return None if ok else f"must be a power of two in [{lo}, {hi}]"

    return check


def one_of(*choices: str) -> Check:
    def check(value, header):
        return None if value in choices and isinstance(value, str) else f"must be one of {', '.join(choices)}"

    return check


def text(max_chars: int) -> Check:
    def check(value, header):
        return None if isinstance(value, str) and len(value) <= max_chars else f"must be a string of at most {max_chars} characters"

    return check


def _fingerprints(value, header):
    ok = isinstance(value, dict) and len(value) <= 16 and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 128 for k, v in value.items())
    return None if ok else "must map weight names to fingerprint strings"


def _layout(value, header):
    top = 3600 * header["sample_rate"]
    ok = isinstance(value, list) and len(value) == 2 and all(_is_int(v) and 1 <= v <= top for v in value)
    if not ok or value[0] % value[1]:
        return f"must be [segment, quantum]: integers in [1, {top}], the quantum dividing the segment"
    return None


def _ddcm_options(value, header):
    from .ddcm_options import DDCMOptions

    try:
        DDCMOptions.from_header(value)
    except (TypeError, ValueError) as err:
        return f"must be valid DDCM options ({' '.join(str(err).split())[:200]})"
    return None


COMMON_FIELDS: dict[str, Field] = {
    "sample_rate": Field(integer(*SAMPLE_RATES)),
    "num_samples": Field(integer(1, lambda header: MAX_SECONDS * header["sample_rate"])),
    "layout": Field(_layout),
    # Samples shared by consecutive windows, crossfaded on decoding (recon.audio.segment_lengths,
    # crossfade_join); files written before windows overlapped have none: butted segments.
    "overlap": Field(integer(0, lambda header: header["layout"][0] // 2), 0),
    "level": Field(number(0, 1e6, positive=True)),
    "model": Field(_fingerprints),
    "input_sample_rate": Field(integer(*SAMPLE_RATES), DEFAULT_INPUT_RATE),
    "input_channels": Field(integer(1, 1024), DEFAULT_INPUT_CHANNELS),
}
# Each codec's own fields. A new field goes here (with a default if files without it must still
# decode); a header with a key in neither table is refused, since its writer meant something this
# reader would ignore.
CODEC_FIELDS: dict[str, dict[str, Field]] = {
    "codebook": {
        "codes": Field(integer(2, 1 << 16)),
        "coding": Field(one_of("fixed", "categorical")),
        "stages": Field(integer(1, 64)),
    },
    "ddcm": {
        "steps": Field(integer(2, 1000)),
        "K": Field(power_of_two(2, 1 << 20)),
        "seed": Field(integer(-(1 << 63), (1 << 63) - 1)),
        "prompt": Field(text(4096)),
        "guidance_scale": Field(number(-1000, 1000)),
        "scaling_factor": Field(number(0, 1000, positive=True)),
        "noise": Field(text(64)),
        "ddcm": Field(_ddcm_options, None),  # the sampler's options (recon.ddcm_options); absent: plain DDCM
    },
}


def segment_count(num_samples: int, segment: int, overlap: int = 0) -> int:
    """Segments of a file (``len(recon.audio.segment_lengths(...))``, without building the list):
    windows start every ``segment - overlap`` samples until one reaches the end."""
    if num_samples <= segment:
        return 1
    return 1 + -(-(num_samples - segment) // (segment - overlap))


def _ddcm_payload(header: dict, payload: bytes) -> str | None:
    segments = segment_count(header["num_samples"], header["layout"][0], header.get("overlap", 0))
    bits = header["K"].bit_length() - 1
    if header.get("ddcm") is not None:
        # Variable-length codes: which steps are coded follows from the model's schedule (checked
        # exactly when decoding); here, the most any item can take when every step is coded at K.
        from .ddcm_options import DDCMOptions, max_bits_per_item

        options = DDCMOptions.from_header(header["ddcm"])
        most = -(-segments * max_bits_per_item([header["K"]] * (header["steps"] - 1), options) // 8)
        if len(payload) > most:
            return f"ddcm payload of {len(payload)} bytes; {segments} segment(s) of {header['steps']} steps take at most {most}"
        return None
    needed = -(-segments * (header["steps"] - 1) * bits // 8)
    if len(payload) != needed:
        return f"ddcm payload of {len(payload)} bytes; {segments} segment(s) x {header['steps'] - 1} indices of {bits} bits need {needed}"
    return None


def _codebook_payload(header: dict, payload: bytes) -> str | None:
    # The exact length follows from the model's latent grid (recon.codec checks it); here, what the
    # header alone says: a range-coded payload is whole 32-bit words.
    if header["coding"] == "categorical" and len(payload) % 4:
        return f"range-coded payload of {len(payload)} bytes is not whole 32-bit words"
    return None


PAYLOAD_CHECKS: dict[str, Callable[[dict, bytes], "str | None"]] = {"codebook": _codebook_payload, "ddcm": _ddcm_payload}


def check_header(header, payload: bytes) -> None:
    """Refuse a header that breaks the schema, or a payload of another length than it declares."""
    if not isinstance(header, dict):
        raise ContainerError("recon file header is not a JSON object")
    codec = header.get("codec")
    if not isinstance(codec, str) or codec not in CODEC_FIELDS:
        raise ContainerError(f"recon file of codec {json.dumps(codec)[:40]}; this recon reads {', '.join(CODEC_FIELDS)}")
    fields = {**COMMON_FIELDS, **CODEC_FIELDS[codec]}
    unknown = sorted(set(header) - set(fields) - {"codec"})
    if unknown:
        raise ContainerError(f"recon file header has unknown field(s) {', '.join(unknown)[:200]} (written by another recon?)")
    missing = [key for key, f in fields.items() if f.default is REQUIRED and key not in header]
    if missing:
        raise ContainerError(f"recon file header lacks {', '.join(missing)}")
    for key, f in fields.items():
        if key in header:
            reason = f.check(header[key], header)
            if reason:
                raise ContainerError(f"recon file header: {key} {json.dumps(header[key])[:40]} {reason}")
    reason = PAYLOAD_CHECKS[codec](header, payload)
    if reason:
        raise ContainerError(reason)


@dataclass
class Container:
    header: dict
    payload: bytes

    @property
    def codec(self) -> str:
        return self.header["codec"]

    @property
    def duration(self) -> float:
        return self.header["num_samples"] / self.header["sample_rate"]

    def get(self, key: str):
        """A header field, or its schema default when the file predates it."""
        fields = {**COMMON_FIELDS, **CODEC_FIELDS.get(self.codec, {})}
        return self.header[key] if key in self.header else fields[key].default


def _deflate(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush()


def _inflate_header(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=-15)
    try:
        raw = inflater.decompress(compressed, MAX_HEADER_BYTES)
    except zlib.error as err:  # the CRC matched, so the writer wrote this
        raise ContainerError(f"recon file header is not deflate data: {err}") from err
    if inflater.unconsumed_tail:
        raise ContainerError(f"recon file header inflates past {MAX_HEADER_BYTES // 1024} KiB")
    if not inflater.eof or inflater.unused_data:
        raise ContainerError("recon file header is not one complete deflate stream")
    return raw


def dumps(container: Container) -> bytes:
    try:
        check_header(container.header, container.payload)  # a writer never writes what a reader refuses
    except ContainerError as err:
        raise ValueError(f"cannot write this container: {err}") from None
    header = _deflate(json.dumps(container.header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + _PAYLOAD_LENGTH.pack(len(container.payload)) + container.payload
    return body + _CRC.pack(zlib.crc32(body))


def loads(data: bytes) -> Container:
    """Parse and check a container; :class:`ContainerError` for foreign, truncated, corrupt or
    out-of-schema data (one line, before anything is sized by the header)."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ContainerError("not a recon file (no RECN magic)")
    if len(data) < _PREFIX.size:
        raise ContainerError("truncated recon file (header cut short)")
    _, version, header_length = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise ContainerError(f"recon file format version {version}; this recon reads version {VERSION}")
    payload_at = _PREFIX.size + header_length + _PAYLOAD_LENGTH.size
    if len(data) < payload_at:
        raise ContainerError("truncated recon file (header cut short)")
    (payload_length,) = _PAYLOAD_LENGTH.unpack_from(data, payload_at - _PAYLOAD_LENGTH.size)
    end = payload_at + payload_length
    if len(data) < end + _CRC.size:
        raise ContainerError(f"truncated recon file ({len(data)} of {end + _CRC.size} bytes)")
    if len(data) > end + _CRC.size:
        raise ContainerError(f"recon file has {len(data) - end - _CRC.size} unexpected trailing bytes")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise ContainerError("corrupt recon file (CRC mismatch)")
    raw = _inflate_header(data[_PREFIX.size : _PREFIX.size + header_length])
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ContainerError(f"recon file header is not JSON: {' '.join(str(err).split())[:120]}") from None
    payload = data[payload_at:end]
    check_header(header, payload)
    return Container(header, payload)
