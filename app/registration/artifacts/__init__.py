"""What an uploaded model file is, and safe inspection and unpacking of MLflow model archives.

- `names`: the file-name rules and the format a name's extension claims;
- `sniffing`: whether the bytes are what the extension claims, one check per format;
- `zipdir`: a zip's entry names straight from its central directory, in constant memory;
- `archives`: zip and tar.gz archives from an untrusted source, vetted entry by entry and
  unpacked safely (they know nothing of MLflow);
- `mlmodel`: an MLflow model archive: its MLmodel found, read and parsed, then unpacked.

Nothing received is unpickled, imported or executed: every check reads bytes and nothing more.
"""

from app.registration.artifacts.mlmodel import ArchiveInfo, extract_archive, inspect_archive
from app.registration.artifacts.names import (
    ALLOWED_EXTENSIONS,
    ARCHIVE_FORMATS,
    ModelFormat,
    format_for_filename,
)
from app.registration.artifacts.sniffing import HEAD_BYTES, check_content

__all__ = [
    "ALLOWED_EXTENSIONS",
    "ARCHIVE_FORMATS",
    "HEAD_BYTES",
    "ArchiveInfo",
    "ModelFormat",
    "check_content",
    "extract_archive",
    "format_for_filename",
    "inspect_archive",
]
