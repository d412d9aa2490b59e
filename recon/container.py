"""The one file format of every recon codec: a header that says how to decode, the payload, a CRC.

Layout (little-endian)::

    magic b"RECN" | version u16 | header length u32 | header (raw-deflated UTF-8 JSON) |
    payload length u64 | payload | CRC-32 of everything before it (u32)

The header is a JSON object with at least ``codec`` (``codebook``, ``rvq``, ``ddcm``),
``sample_rate``, ``num_samples`` (the decoded length), ``layout`` (``[segment, quantum]``: the
file is coded in segments of ``segment`` samples, the last one zero-padded to a multiple of
``quantum``; see ``recon.audio.segment_lengths``), ``level`` (the gain back to the input's
loudness) and ``model`` (fingerprints of the weights decoding needs, compared before anything is
decoded); codecs add their own parameters. JSON keeps the header readable (``recon info FILE``)
and extensible, as EnCodec's is; deflated, it is 150 to 230 bytes, counted in the measured bitrate
like everything else in the file (at DDCM's tens of bits per second it is most of a short file).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"RECN"
VERSION = 1
SUFFIX = ".recn"
_PREFIX = struct.Struct("<4sHI")
_PAYLOAD_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
REQUIRED = ("codec", "sample_rate", "num_samples", "layout", "level", "model")


class ContainerError(ValueError):
    """A file that is not a readable recon container; the message is one line saying why."""


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


def _deflate(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush()


def dumps(container: Container) -> bytes:
    missing = [key for key in REQUIRED if key not in container.header]
    if missing:
        raise ValueError(f"container header lacks {', '.join(missing)}")
    header = _deflate(json.dumps(container.header, sort_keys=True, separators=(",", ":")).encode())
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + _PAYLOAD_LENGTH.pack(len(container.payload)) + container.payload
    return body + _CRC.pack(zlib.crc32(body))


def loads(data: bytes) -> Container:
    """Parse and check a container; :class:`ContainerError` for foreign, truncated or corrupt data."""
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
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + header_length], wbits=-15))
    except (ValueError, zlib.error) as err:  # the CRC matched, so the writer wrote this
        raise ContainerError(f"recon file header is not JSON: {err}") from err
    missing = [key for key in REQUIRED if key not in header] if isinstance(header, dict) else list(REQUIRED)
    if missing:
        raise ContainerError(f"recon file header lacks {', '.join(missing)}")
    return Container(header, data[payload_at:end])
