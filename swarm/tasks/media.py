"""Task inputs and file outputs as bytes: what a file is (by its first bytes, never by its name or a declared type),
decoding it with Pillow or soundfile, and encoding images and sounds to send back.

A file comes from the network, so its type is read from its content, its size is capped before decoding, and an
image's pixel count before its pixels are read (a small PNG can declare a huge canvas).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarm.errors import SwarmError
from swarm.tasks.catalog import MAX_INPUT_BYTES, MAX_TEXT_CHARS, Media

TEXT = "text/plain"
WAV = "audio/wav"
PNG = "image/png"
# Most pixels of an input image (Pillow's own decompression-bomb limit is about 89 M).
MAX_PIXELS = 40_000_000
# Most seconds of an input sound.
MAX_AUDIO_SECONDS = 30 * 60

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
)


@dataclass(frozen=True)
class Audio:
    """Mono samples in [-1, 1] and their rate, as transformers' audio pipelines take them."""

    samples: np.ndarray
    sampling_rate: int


def media_type(data: bytes, *, as_text: bool = False) -> str:
    """The media type of `data` from its first bytes; text/plain for UTF-8 text when `as_text` (text travels as
    bytes too); a clear error for anything else."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"WEBP"):
        return WAV if head[8:12] == b"WAVE" else "image/webp"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if as_text:
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise SwarmError("the input is neither an image, a sound nor UTF-8 text") from None
        return TEXT
    raise SwarmError("the input is not an image (PNG, JPEG, GIF, BMP, WebP) or a sound (WAV, FLAC, Ogg)")


def media_kind(name: str) -> Media:
    return "text" if name == TEXT else "audio" if name.startswith("audio/") else "image"


def decode_input(data: bytes, wanted: Media, task: str) -> Any:
    """`data` as the task's pipeline takes it: str, an `Audio` (as the pipeline's dict) or a PIL image."""
    if len(data) > MAX_INPUT_BYTES:
        raise SwarmError(f"the input has {len(data)} bytes; {task} takes at most {MAX_INPUT_BYTES}")
    found = media_type(data, as_text=wanted == "text")
    if media_kind(found) != wanted:
        raise SwarmError(f"{task} takes {wanted}, the input is {found}")
    if wanted == "text":
        text = bytes(data).decode("utf-8")
        if not text.strip() or len(text) > MAX_TEXT_CHARS:
            raise SwarmError(f"{task} takes 1 to {MAX_TEXT_CHARS} characters of text")
        return text
    if wanted == "audio":
        audio = read_audio(data)
        return {"raw": audio.samples, "sampling_rate": audio.sampling_rate}
    return read_image(data)


def read_audio(data: bytes) -> Audio:
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            if sound.frames > MAX_AUDIO_SECONDS * sound.samplerate:
                raise SwarmError(
                    f"the sound lasts {sound.frames / sound.samplerate:.0f} s, more than {MAX_AUDIO_SECONDS}"
                )
            samples = sound.read(dtype="float32", always_2d=True)
            rate = int(sound.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise SwarmError(f"the input is not a readable sound file: {error}") from None
    if samples.size == 0:
        raise SwarmError("the sound holds no samples")
    # Channels are averaged: speech models take one.
    return Audio(np.ascontiguousarray(samples.mean(axis=1)), rate)


def read_image(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise SwarmError(f"the image has {width}x{height} pixels, more than {MAX_PIXELS}")
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise SwarmError(f"the input is not a readable image: {error}") from None


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """A 16-bit PCM WAV file of samples in [-1, 1] (clipped: libsndfile would wrap them). Not 32-bit float: for
    float files libsndfile writes a PEAK chunk holding the time of writing, so equal sounds would differ in bytes."""
    import soundfile

    buffer = io.BytesIO()
    clipped = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    soundfile.write(buffer, clipped, int(sampling_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# libsndfile's container and codec for each speech format OpenAI's API names (pcm: raw 16-bit little-endian).
_AUDIO_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
    "pcm": ("RAW", "PCM_16"),
}


def encode_audio(samples: np.ndarray, sampling_rate: int, audio_format: str) -> bytes:
    """`samples` as a file of `audio_format` (wav, flac, mp3, opus or pcm), encoded by libsndfile."""
    import soundfile

    if audio_format == "wav":
        return wav_bytes(samples, sampling_rate)
    container, subtype = _AUDIO_FORMATS[audio_format]
    buffer = io.BytesIO()
    clipped = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    options = {"endian": "LITTLE"} if container == "RAW" else {}
    soundfile.write(buffer, clipped, int(sampling_rate), format=container, subtype=subtype, **options)
    return buffer.getvalue()
