"""The body of POST /avatars: a photo or a recording of the person, received as it arrives.

Raw bytes or a multipart field "image" or "video"; a video is one by its field, content type
or file suffix, else by its first bytes. Each kind has its own size limit, enforced while the
bytes arrive (whatever Content-Length claims). A photo stays in memory; a video goes straight
to a temporary folder of its own, so the server's memory stays small whatever its size.
Nothing is decoded here: the child processes (serve.preparation) find out what it really is.
"""

import hashlib
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from models.video_avatar import is_video
from serve.http import ClientError, mib, short
from serve.limits import Limits

log = logging.getLogger("server")

SNIFF_BYTES = 16               # an upload's first bytes, which tell a video from a photo


@dataclass
class Upload:
    """The body of one POST /avatars, hashed as it arrives: a photo in memory, a video in a
    temporary folder of its own (the video process reads it from there; the server's memory
    stays small whatever the video's size)."""
    kind: str                  # "photo" | "video"
    name: str
    data: bytearray = field(default_factory=bytearray)    # a photo
    folder: Path | None = None                            # a video: holds `clip`
    clip: Path | None = None
    file: io.BufferedWriter | None = None
    size: int = 0
    digest: object = field(default_factory=hashlib.sha256)

    @property
    def key(self) -> str:
        """What the server remembers prepared avatars by (the same bytes: the same avatar)."""
        return f"{self.kind}:{self.digest.hexdigest()}"

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


async def read_upload(request, limits: Limits) -> Upload:
    """The body of POST /avatars: raw bytes, or a multipart field "image" or "video".
    Photo or video: as declared (the multipart field "video"; a video/* or image/* content
    type; a file name with a video suffix), else by the first bytes (a video container's
    signature: MP4/QuickTime, Matroska/WebM, AVI). The video process then finds out whether
    it really holds a video (nothing is decoded in this process). Refused with 413 as soon
    as it runs past its kind's limit, whatever Content-Length claims."""
    biggest = max(limits.max_upload_bytes, limits.max_video_bytes)
    if not request.content_type.startswith("multipart/"):
        kind = _declared_kind(request.content_type, "")
        limit = {"photo": limits.max_upload_bytes, "video": limits.max_video_bytes}.get(
            kind, biggest)
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(kind, limit)
        upload = await receive_upload(request.content.iter_chunked(65536), kind, "upload", "",
                                      limits)
        if not upload.size:
            upload.discard()
            raise ClientError(400, "the upload is empty: send the image or video bytes as the "
                                   "body")
        return upload
    if request.content_length is not None and request.content_length > biggest + 4096:
        raise _too_large(None, biggest)
    upload = None
    try:
        async for part in await request.multipart():
            if part.name in ("image", "video") and upload is None:
                filename = part.filename or "upload"
                kind = "video" if part.name == "video" else _declared_kind(
                    part.headers.get("Content-Type", ""), filename)
                upload = await receive_upload(_chunks_of(part), kind,
                                              Path(filename).stem[:40] or "upload",
                                              Path(filename).suffix.lower(), limits)
            else:
                await _read_part(part, 65536)          # other fields: small, ignored
    except (ValueError, AssertionError, RuntimeError) as e:   # a malformed multipart body
        if upload is not None:
            upload.discard()
        raise ClientError(400, f"malformed multipart upload: {short(e)}") from None
    except BaseException:
        if upload is not None:
            upload.discard()
        raise
    if upload is None:
        raise ClientError(400, 'the multipart upload has no "image" or "video" field')
    if not upload.size:
        upload.discard()
        raise ClientError(400, f'the "{"video" if upload.kind == "video" else "image"}" field '
                               "is empty")
    return upload


def _too_large(kind: str | None, limit: int) -> ClientError:
    what = {"photo": "the image", "video": "the video"}.get(kind, "the upload")
    return ClientError(413, f"{what} is too large: at most {mib(limit)}")


def _declared_kind(content_type: str, filename: str) -> str | None:
    content_type = content_type.lower()
    if content_type.startswith("video/") or is_video(filename):
        return "video"
    if content_type.startswith("image/"):
        return "photo"
    return None


def sniff_kind(head: bytes) -> str:
    """"video" when an upload's first bytes are a video container's, else "photo" (the photo
    path says what is wrong with anything else)."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "photo" if head[8:12] in (b"avif", b"heic", b"heix", b"mif1") else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return "photo"


async def _chunks_of(part):
    while chunk := await part.read_chunk(65536):
        yield chunk


async def receive_upload(chunks, kind: str | None, name: str, suffix: str,
                         limits: Limits) -> Upload:
    """An Upload from `chunks` (bytes, as they arrive); `kind` None: told by the first
    bytes. A video goes into a new temporary folder as `clip` (+ its name's suffix)."""
    upload, head = None, b""
    try:
        async for chunk in chunks:
            if upload is None:
                head += chunk
                if kind is None and len(head) < SNIFF_BYTES:
                    continue
                upload = _start_upload(kind or sniff_kind(head), name, suffix)
                chunk, head = head, b""
            _add_to_upload(upload, chunk, limits)
        if upload is None:                             # shorter than SNIFF_BYTES
            upload = _start_upload(kind or sniff_kind(head), name, suffix)
            _add_to_upload(upload, head, limits)
        if upload.file is not None:
            upload.file.close()
        return upload
    except OSError as e:
        if upload is not None:
            upload.discard()
        if isinstance(e, ConnectionError):
            raise
        log.warning("a video upload could not be stored: %s", short(e))
        raise ClientError(507, "the server has no room for this video now (its disk is "
                               "full)") from None
    except BaseException:
        if upload is not None:
            upload.discard()
        raise


def _start_upload(kind: str, name: str, suffix: str) -> Upload:
    upload = Upload(kind, name)
    if kind == "video":
        upload.folder = Path(tempfile.mkdtemp(prefix="talking-head-upload-"))
        name = "clip" + suffix
        upload.clip = upload.folder / (name if is_video(name) else "clip")
        upload.file = open(upload.clip, "wb")
    return upload


def _add_to_upload(upload: Upload, chunk: bytes, limits: Limits) -> None:
    limit = limits.max_video_bytes if upload.kind == "video" else limits.max_upload_bytes
    upload.size += len(chunk)
    if upload.size > limit:
        raise _too_large(upload.kind, limit)
    upload.digest.update(chunk)
    if upload.file is not None:
        upload.file.write(chunk)
    else:
        upload.data += chunk


async def _read_part(part, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the upload is too large: at most {mib(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)
