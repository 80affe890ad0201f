"""A pydicom decoding plugin on imagecodecs: multi-threaded JPEG 2000 and a faster JPEG lossless.

pylibjpeg-openjpeg decodes JPEG 2000 on one thread; imagecodecs wraps the same OpenJPEG and lets
it use several, which halves the decode of a large CR on two cores (the worker's CPU is otherwise
idle while it decodes). For JPEG lossless, libjpeg-turbo 3 (every predictor, 2 to 16 bits) is about
twice as fast as GDCM. Both are exact decoders of lossless data, and for lossy JPEG 2000 this is the
same OpenJPEG as before: the tests check the pixels equal the other plugins' on every file.

pydicom calls ``_decode_frame`` with one frame's encoded bytes and does the rest itself (sign,
bits stored, the photometric interpretation); ``inference.decoding`` lists this plugin first and
keeps the others behind it, so a frame this plugin cannot read still decodes.
"""

from __future__ import annotations

import os

from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.pixels.decoders.base import DecodeRunner

try:
    import imagecodecs
except ImportError:  # optional: decoding falls back to the other plugins
    imagecodecs = None

PLUGIN_NAME = "imagecodecs"

_JPEG2000_SYNTAXES = (uid.JPEG2000Lossless, uid.JPEG2000)
_JPEG_LOSSLESS_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1)

DECODER_DEPENDENCIES = {
    syntax: ("imagecodecs>=2024.1.1",) for syntax in (*_JPEG2000_SYNTAXES, *_JPEG_LOSSLESS_SYNTAXES)
}


def decode_threads() -> int:
    """Threads for one JPEG 2000 decode: ``MSKDETECT_DECODE_THREADS``, else the CPUs (at most 4)."""
    configured = os.environ.get("MSKDETECT_DECODE_THREADS", "")
    if configured.strip():
        return max(1, int(configured))
    return max(1, min(os.cpu_count() or 1, 4))


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: True when this plugin can decode the transfer syntax here."""
    if imagecodecs is None or transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    if transfer_syntax in _JPEG2000_SYNTAXES:
        return bool(imagecodecs.JPEG2K.available)
    return bool(imagecodecs.JPEG8.available)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's pixels as bytes, in the layout pydicom expects (samples interleaved)."""
    if runner.transfer_syntax in _JPEG2000_SYNTAXES:
        pixels = imagecodecs.jpeg2k_decode(src, numthreads=decode_threads())
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            # OpenJPEG undoes the multi-component transform itself: the samples come back as RGB.
            runner.set_option("photometric_interpretation", PI.RGB)
    else:
        pixels = imagecodecs.jpeg8_decode(src)
    # The container follows the codestream's precision (8 or 16 bits), not Bits Allocated.
    runner.set_option("bits_allocated", pixels.dtype.itemsize * 8)
    runner.set_option("planar_configuration", 0)
    return pixels.tobytes()
