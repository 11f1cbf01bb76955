"""Videos with their settings: MP4 through imageio-ffmpeg's encoder, else an animated WebP (or GIF) through Pillow.

Metadata follows ComfyUI's own video and animation writers, so ComfyUI and this app can read the workflow back:
MP4 container tags ``prompt`` and ``workflow`` (ffmpeg ``-movflags use_metadata_tags``), animated WebP EXIF tags
0x0110 ``prompt:<json>`` and 0x010F ``workflow:<json>``; both also carry ``parameters`` (the app's settings JSON).
A GIF carries ``parameters`` only, as its comment.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".webp", ".gif")
EXIF_TAGS = {"prompt": 0x0110, "workflow": 0x010F, "parameters": 0x010E}


def mp4_encoder() -> str | None:
    """The ffmpeg executable of imageio-ffmpeg (``pip install imageio-ffmpeg``), or None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def default_video_suffix() -> str:
    """.mp4 where an encoder is installed, else an animated .webp (Pillow), else .gif."""
    from PIL import features

    if mp4_encoder():
        return ".mp4"
    return ".webp" if features.check("webp") else ".gif"


def write_mp4(frames: list[Image.Image], path: Path, fps: float, metadata: dict[str, str]) -> None:
    import imageio_ffmpeg
    import numpy as np

    tags = [arg for key, value in metadata.items() for arg in ("-metadata", f"{key}={value}")]
    writer = imageio_ffmpeg.write_frames(str(path), frames[0].size, fps=fps, codec="libx264", quality=8,
                                         macro_block_size=2, output_params=["-movflags", "+use_metadata_tags", *tags])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
    writer.close()


def save_video(frames: list[Image.Image], path: str | Path, fps: float, metadata: dict[str, str]) -> Path:
    """Frames as ``path`` (.mp4, .webp or .gif by its suffix) with ``metadata`` (JSON strings by key)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"a video is written as {', '.join(VIDEO_SUFFIXES)}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        if mp4_encoder() is None:
            raise ValueError("writing MP4 needs an encoder: pip install imageio-ffmpeg (or save as .webp or .gif)")
        write_mp4(frames, path, fps, metadata)
        return path
    duration = max(1, round(1000 / fps))
    if suffix == ".gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0,
                       comment=metadata.get("parameters", "").encode())
        return path
    exif = Image.Exif()
    for key, tag in EXIF_TAGS.items():
        if key in metadata:
            exif[tag] = f"{key}:{metadata[key]}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0, quality=90,
                   exif=exif.tobytes())
    return path


def unescape_ffmetadata(value: str) -> str:
    out, escaped = [], False
    for ch in value:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def read_video_metadata(path: str | Path) -> dict[str, str]:
    """The metadata written by ``save_video`` (or ComfyUI): key -> JSON string; {} when there is none."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        exe = mp4_encoder()
        if exe is None:
            raise ValueError("reading MP4 metadata needs imageio-ffmpeg (pip install imageio-ffmpeg)")
        done = subprocess.run([exe, "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"], capture_output=True,
                              text=True, timeout=60)
        if done.returncode:
            raise ValueError(f"cannot read {path.name}: {done.stderr.strip()[:300]}")
        out = {}
        for line in done.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in EXIF_TAGS:
                out[key] = unescape_ffmetadata(value)
        return out
    with Image.open(path) as image:
        if suffix == ".gif":
            comment = image.info.get("comment", b"")
            return {"parameters": comment.decode()} if comment else {}
        exif = image.getexif()
    out = {}
    for key, tag in EXIF_TAGS.items():
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str) and value.startswith(f"{key}:"):
            out[key] = value[len(key) + 1:]
    return out


def metadata_json(metadata: dict[str, str], key: str) -> dict | None:
    """``metadata[key]`` parsed, or None."""
    try:
        value = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
