"""OVA uploads: streamed straight to VMPORTAL_UPLOAD_DIR with a size limit, never into memory.

Django's default handlers keep small files in memory and big ones in a temporary file that
is gone when the request ends; a deploy job runs later (maybe on another host), so the
file must outlive the request in a known place. The job deletes it when it is done.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


class StoredUpload(UploadedFile):
    """An uploaded file already in its final place; ``path`` is handed to the deploy job."""

    def __init__(self, path: Path, name: str, size: int, content_type: str | None):
        super().__init__(file=open(path, "rb"), name=name, content_type=content_type, size=size)  # noqa: SIM115
        self.path = path

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def upload_dir() -> Path:
    path = Path(settings.VMPORTAL_UPLOAD_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


class LimitedDiskUploadHandler(FileUploadHandler):
    """Writes each file chunk by chunk to the upload directory; stops past the limit."""

    def __init__(self, request=None, *, limit: int | None = None):
        super().__init__(request)
        self.limit = limit if limit is not None else settings.VMPORTAL_OVF_MAX_BYTES
        self.error = ""
        self.path: Path | None = None
        self.out = None
        self.written = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):  # noqa: N803
        # A request that announces more than the limit is refused before a byte is stored.
        if content_length and content_length > self.limit + 64 * 1024:
            self.error = self._too_big(content_length)

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if self.error:
            raise StopUpload(connection_reset=False)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file_name or "upload").name)[-80:]
        self.path = upload_dir() / f"{uuid.uuid4().hex}-{safe}"
        self.out = open(self.path, "wb")  # noqa: SIM115 - closed in file_complete/upload_interrupted
        self.written = 0

    def receive_data_chunk(self, raw_data, start):
        self.written += len(raw_data)
        if self.written > self.limit:
            self.error = self._too_big(self.written, at_least=True)
            self._drop()
            raise StopUpload(connection_reset=False)
        self.out.write(raw_data)
        return None

    def file_complete(self, file_size):
        if self.out is None:
            return None
        self.out.close()
        self.out = None
        return StoredUpload(self.path, self.file_name, file_size, self.content_type)

    def upload_interrupted(self):
        self._drop()

    def _drop(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _too_big(self, size: int, *, at_least: bool = False) -> str:
        mib = 1024 * 1024
        return (f"The file is {'over ' if at_least else ''}{size / mib:.1f} MiB; the limit is "
                f"{self.limit / mib:.1f} MiB (VMPORTAL_OVF_MAX_BYTES).")
