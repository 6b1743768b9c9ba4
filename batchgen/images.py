"""The images a request sends: an https URL goes as it is; a local file is checked, named by its content and
uploaded once.

A manifest may write a local path (relative to the manifest) wherever a model takes an image URL (a field whose
schema, or whose items' schema, says ``x-image``). Before anything is spent the file is read and checked: it exists,
it is a PNG, JPEG or WebP by its first bytes (not its name), and it is within the model's size limit. In a job's
payload it then stands as ``image:sha256:<hex>`` — its content, not its path — so the job id changes when the image
changes and not when it moves. At submit time each such reference is replaced by the URL the provider's storage
gave for that content (uploaded once, kept in the state).
"""

from __future__ import annotations

import base64
import hashlib
import io
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.models import Model, image_limit

REF_PREFIX = "image:sha256:"
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" and the size
)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MAX_IMAGE_BYTES = 64 << 20  # above every model's own limit (50 MB at most): a bigger file is refused unread


class ImageProblem(ValueError):
    """A local image that cannot be sent: the message says why and what to do."""


@dataclass(frozen=True)
class LocalImage:
    """A checked local image: its content's sha256, where it was read, its size and its type."""

    sha256: str
    path: str
    size: int
    mime: str
    width: int = 0
    height: int = 0

    @property
    def ref(self) -> str:
        """How a payload names it."""
        return REF_PREFIX + self.sha256


def sniff(head: bytes) -> str | None:
    """The image type of a file by its first bytes (PNG, JPEG or WebP), ``None`` for anything else."""
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (mime != "image/webp" or head.startswith(b"RIFF")):
            return mime
    return None


def read_image(path: Path, max_bytes: int) -> tuple[LocalImage, bytes]:
    """Read and check the image at ``path``: :class:`ImageProblem` when it is missing, not a plain file, not an
    image (by its first bytes, and decoded: a picture with a width and a height), or bigger than ``max_bytes``."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageProblem(f"{path} is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageProblem(f"{path} is not a plain file (a device, a pipe…): give an image file")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1) if max_bytes else file.read()
    except FileNotFoundError:
        raise ImageProblem(f"there is no file {path}: give a path relative to the manifest, or an https URL") from None
    except OSError as exc:
        raise ImageProblem(f"{path} cannot be read ({exc.strerror or exc})") from None
    if max_bytes and len(data) > max_bytes:
        raise ImageProblem(f"{path} is more than {_mb(max_bytes)}: make it smaller")
    mime = sniff(data[:16])
    if mime is None:
        raise ImageProblem(f"{path} is not a PNG, JPEG or WebP image (by its first bytes): convert it to one")
    size = picture_size(data)
    if size is None:
        raise ImageProblem(f"{path} starts as {EXTENSIONS[mime].upper()} but holds no picture that can be read")
    return LocalImage(hashlib.sha256(data).hexdigest(), str(path), len(data), mime, *size), data


def picture_size(data: bytes) -> tuple[int, int] | None:
    """The width and height of an image file's first picture (decoded with PyAV), ``None`` when it has none."""
    import av  # here: validating a manifest without local images never loads PyAV (see test_cli_plan)

    try:
        with av.open(io.BytesIO(data), "r") as container:
            frame = next(container.decode(video=0), None)
    except (av.FFmpegError, ValueError, IndexError):
        return None
    if frame is None or frame.width <= 0 or frame.height <= 0:
        return None
    return frame.width, frame.height


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def first_frame(payload: Mapping[str, Any], model: Model) -> str | None:
    """What a payload names as its first-frame image (a URL, or a local image's reference), if anything."""
    value = payload.get(model.clip.image) if model.clip.image else None
    return value if isinstance(value, str) else None


def ref_sha(value: Any) -> str | None:
    """The sha256 a payload value names when it is a local image's reference."""
    if isinstance(value, str) and value.startswith(REF_PREFIX):
        return value[len(REF_PREFIX) :]
    return None


def data_url(data: bytes, mime: str) -> str:
    """The image as a ``data:`` URL, as the provider's upload takes it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


Slot = tuple[str | int, ...]


def image_slots(value: Any, schema: Mapping[str, Any], at: Slot = ()) -> Iterator[tuple[Slot, str]]:
    """Every image string in ``value`` where ``schema`` marks an image, with its path inside ``value``."""
    if image_limit(schema) is not None and isinstance(value, str):
        yield at, value
    elif isinstance(value, Mapping) and isinstance(schema.get("properties"), Mapping):
        for name, sub in value.items():
            if name in schema["properties"]:
                yield from image_slots(sub, schema["properties"][name], (*at, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from image_slots(item, schema["items"], (*at, index))


def slot_limit(schema: Mapping[str, Any], slot: Slot) -> int:
    """The size limit of the image field at ``slot`` of a value of ``schema``."""
    for step in slot:
        schema = schema["items"] if isinstance(step, int) else schema["properties"][step]
    return image_limit(schema) or 0


def replace_images(value: Any, schema: Mapping[str, Any], change: Callable[[str], str]) -> Any:
    """``value`` with every image string passed through ``change`` (a new value; ``value`` is left as it is)."""
    if image_limit(schema) is not None and isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping) and isinstance(schema.get("properties"), Mapping):
        props = schema["properties"]
        return {k: replace_images(v, props[k], change) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [replace_images(item, schema["items"], change) for item in value]
    return value


def refs_in(payload: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """The sha256 of every local image a payload names, in order, each once."""
    found = (ref_sha(value) for _, value in image_slots(payload, schema))
    return list(dict.fromkeys(sha for sha in found if sha))


def with_urls(payload: Mapping[str, Any], schema: Mapping[str, Any], url_of: Callable[[str], str | None]) -> Any:
    """The payload as the provider receives it: each local image's reference replaced by the URL ``url_of(sha256)``
    gives (one it has none for stays a reference: no request was sent with it)."""
    if not refs_in(payload, schema):
        return payload
    return replace_images(payload, schema, lambda value: url_of(ref_sha(value) or "") or value)
