"""File names a client sends: which model format a name claims, and what no name may hold.

A name is data, never a path. These rules decide whether a client's name is kept (as metadata
only) and which format its extension claims; the service stores every file under a name of its
own choosing.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

from app.errors import InvalidModelFile

__all__ = [
    "ALLOWED_EXTENSIONS",
    "ARCHIVE_FORMATS",
    "MAX_NAME_BYTES",
    "SINGLE_FILE_EXTENSIONS",
    "ModelFormat",
    "forbidden_char",
    "format_for_filename",
    "shown",
]


class ModelFormat(StrEnum):
    """The kind of model file, as returned in a registration's `artifact.format`."""

    PICKLE = "pickle"
    JOBLIB = "joblib"
    ONNX = "onnx"
    TORCH = "torch"
    SAFETENSORS = "safetensors"
    HDF5 = "hdf5"
    KERAS = "keras"
    JSON = "json"
    UBJSON = "ubjson"
    TEXT = "text"
    BINARY = "binary"
    MLFLOW_ZIP = "mlflow_zip"
    MLFLOW_TAR = "mlflow_tar_gz"


_EXTENSIONS: dict[str, ModelFormat] = {
    ".pkl": ModelFormat.PICKLE,
    ".joblib": ModelFormat.JOBLIB,
    ".onnx": ModelFormat.ONNX,
    ".pt": ModelFormat.TORCH,
    ".pth": ModelFormat.TORCH,
    ".safetensors": ModelFormat.SAFETENSORS,
    ".h5": ModelFormat.HDF5,
    ".keras": ModelFormat.KERAS,
    ".json": ModelFormat.JSON,
    ".ubj": ModelFormat.UBJSON,
    ".txt": ModelFormat.TEXT,
    ".bin": ModelFormat.BINARY,
    ".zip": ModelFormat.MLFLOW_ZIP,
    ".tar.gz": ModelFormat.MLFLOW_TAR,
    ".tgz": ModelFormat.MLFLOW_TAR,
}

ALLOWED_EXTENSIONS: tuple[str, ...] = tuple(_EXTENSIONS)
# The formats that are MLflow model directories packed as an archive (inspected, then unpacked).
ARCHIVE_FORMATS = frozenset({ModelFormat.MLFLOW_ZIP, ModelFormat.MLFLOW_TAR})
# The extensions of a model sent as one file, not as a packed MLflow model folder.
SINGLE_FILE_EXTENSIONS: tuple[str, ...] = tuple(
    extension for extension, fmt in _EXTENSIONS.items() if fmt not in ARCHIVE_FORMATS
)

MAX_NAME_BYTES = 255  # one path component, as most filesystems allow

# Unicode categories that have no place in a file name: controls, invisible format characters
# (bidirectional overrides can disguise an extension), surrogates, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def shown(name: str) -> str:
    """A name fit for an error message: escaped, and cut if long."""
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def forbidden_char(name: str) -> str | None:
    """The first control or invisible character in `name`, if it holds one."""
    for char in name:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return char
    return None


def format_for_filename(filename: str) -> ModelFormat:
    """The format an upload's file name claims, refusing unsafe names and unknown extensions."""
    if not filename:
        raise InvalidModelFile("The model file has no name.")
    if "/" in filename or "\\" in filename:
        raise InvalidModelFile(
            f"The model file name {shown(filename)} contains a path separator; send the bare "
            "file name."
        )
    if len(filename) > MAX_NAME_BYTES or len(filename.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise InvalidModelFile(f"The model file name is longer than {MAX_NAME_BYTES} bytes.")
    if (char := forbidden_char(filename)) is not None:
        raise InvalidModelFile(
            f"The model file name {shown(filename)} contains the control or invisible character "
            f"U+{ord(char):04X}."
        )
    lowered = filename.lower()
    for extension, fmt in _EXTENSIONS.items():
        if lowered.endswith(extension):
            if lowered == extension:
                raise InvalidModelFile(
                    f"The model file name {shown(filename)} has nothing before its extension."
                )
            return fmt
    raise InvalidModelFile(
        f"The model file {shown(filename)} has an unsupported extension; allowed: "
        f"{', '.join(ALLOWED_EXTENSIONS)}."
    )
