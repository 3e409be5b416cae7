"""An MLflow model packed as an archive: where its MLmodel is, what it says, and unpacking it.

The archive is judged from its headers before anything is unpacked (`inspect_archive`), then
unpacked into a fresh folder (`extract_archive`), which must hold what inspection found. The
MLmodel is read with a safe YAML loader into plain data; its signature becomes the registration's
`api_schema`. Nothing in the archive is imported or run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.errors import InvalidModelFile
from app.registration.artifacts.archives import (
    ArchiveKind,
    Member,
    Tree,
    extract,
    members,
    safe_parts,
)
from app.registration.artifacts.names import ModelFormat

__all__ = ["ArchiveInfo", "extract_archive", "inspect_archive"]

_KINDS: dict[ModelFormat, ArchiveKind] = {
    ModelFormat.MLFLOW_ZIP: ArchiveKind.ZIP,
    ModelFormat.MLFLOW_TAR: ArchiveKind.TAR_GZ,
}
_MAX_MLMODEL_BYTES = 1024 * 1024
# Finder's "Compress" puts these beside the folder; they are not part of the model.
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX", ".DS_Store"})


@dataclass(frozen=True)
class ArchiveInfo:
    """What an MLflow model archive holds, judged from its headers before anything is unpacked."""

    file_count: int
    unpacked_bytes: int
    root: str
    mlmodel: dict[str, Any]
    api_schema: dict[str, Any] | None
    # Files and folders together; lets extraction allow what inspection allowed.
    entry_count: int = 0


def _kind(fmt: ModelFormat) -> ArchiveKind:
    kind = _KINDS.get(fmt)
    if kind is None:
        raise ValueError(f"{fmt} is not an archive format")
    return kind


# Inspection ------------------------------------------------------------------------------------


def inspect_archive(
    fmt: ModelFormat, path: Path, *, max_unpacked_bytes: int, max_files: int
) -> ArchiveInfo:
    """Judge an MLflow model archive from its headers alone, and read its MLmodel."""
    kind = _kind(fmt)
    tree = Tree(max_unpacked_bytes=max_unpacked_bytes, max_files=max_files)
    if kind is ArchiveKind.ZIP:
        root, mlmodel_bytes = _inspect_zip(path, tree)
    else:
        root, mlmodel_bytes = _inspect_tar(path, tree)
    mlmodel = _parse_mlmodel(mlmodel_bytes)
    return ArchiveInfo(
        file_count=len(tree.files),
        unpacked_bytes=tree.declared_bytes,
        root=root,
        mlmodel=mlmodel,
        api_schema=_api_schema(mlmodel),
        entry_count=tree.entries,
    )


def _inspect_zip(path: Path, tree: Tree) -> tuple[str, bytes]:
    # The whole central directory first; then only the root's MLmodel is read.
    with members(ArchiveKind.ZIP, path, tree) as entries:
        candidates: dict[tuple[str, ...], Member] = {}
        for member in entries:
            entry = member.entry
            if not entry.is_dir and _is_mlmodel_candidate(entry.parts):
                candidates[entry.parts] = member
        root = _model_root(tree)
        return root, _read_mlmodel(candidates[(root, "MLmodel") if root else ("MLmodel",)])


def _inspect_tar(path: Path, tree: Tree) -> tuple[str, bytes]:
    # One pass through the gzip stream: the MLmodel candidates are read as they go by.
    candidates: dict[tuple[str, ...], bytes] = {}
    with members(ArchiveKind.TAR_GZ, path, tree) as entries:
        for member in entries:
            entry = member.entry
            # Two candidates in different top-level folders can never both be the root's MLmodel.
            if (
                not entry.is_dir
                and _is_mlmodel_candidate(entry.parts)
                and not (len(entry.parts) == 2 and any(len(key) == 2 for key in candidates))
            ):
                candidates[entry.parts] = _read_mlmodel(member)
    root = _model_root(tree)
    key = (root, "MLmodel") if root else ("MLmodel",)
    if key not in candidates:
        raise InvalidModelFile("The archive's MLmodel could not be read.")
    return root, candidates[key]


def _model_root(tree: Tree) -> str:
    if ("MLmodel",) in tree.files:
        return ""
    tops = {parts[0] for parts in tree.files | tree.dirs} - _IGNORED_TOP_LEVEL
    if len(tops) == 1:
        (top,) = tops
        if (top, "MLmodel") in tree.files:
            return top
    raise InvalidModelFile(
        "The archive has no MLmodel file at its root or inside a single top-level folder; pack "
        "the MLflow model directory (the one holding MLmodel)."
    )


def _is_mlmodel_candidate(parts: tuple[str, ...]) -> bool:
    return parts == ("MLmodel",) or (
        len(parts) == 2 and parts[1] == "MLmodel" and parts[0] not in _IGNORED_TOP_LEVEL
    )


def _read_mlmodel(member: Member) -> bytes:
    if member.entry.size > _MAX_MLMODEL_BYTES:
        raise InvalidModelFile(
            f"The MLmodel file is larger than {_MAX_MLMODEL_BYTES:,} bytes; it should be a short "
            "YAML document."
        )
    source = member.open()
    if source is None:
        raise InvalidModelFile("The MLmodel entry is not a regular file.")
    with source:
        data = source.read(_MAX_MLMODEL_BYTES + 1)
    if len(data) > _MAX_MLMODEL_BYTES:
        raise InvalidModelFile(f"The MLmodel file is larger than {_MAX_MLMODEL_BYTES:,} bytes.")
    return data


# Extraction ------------------------------------------------------------------------------------


def extract_archive(
    fmt: ModelFormat,
    path: Path,
    dest: Path,
    info: ArchiveInfo,
    *,
    max_unpacked_bytes: int,
    max_files: int,
) -> Path:
    """Unpack an inspected archive into the empty folder `dest`; return the MLmodel folder."""
    root_parts = safe_parts(info.root) if info.root else ()
    if len(root_parts) > 1:
        raise ValueError(f"the archive root {info.root!r} is not a single folder")
    kind = _kind(fmt)
    # Inspection may have been allowed more entries than the default; the same archive must pass.
    tree = Tree(max_unpacked_bytes=max_unpacked_bytes, max_files=max(max_files, info.entry_count))
    extract(kind, path, dest, tree)
    if len(tree.files) != info.file_count:
        raise InvalidModelFile("The archive changed between its inspection and its extraction.")
    model_dir = dest.joinpath(*root_parts)
    if not (model_dir / "MLmodel").is_file():
        raise InvalidModelFile("The unpacked archive has no MLmodel where inspection found it.")
    return model_dir


# The MLmodel document --------------------------------------------------------------------------

# libyaml's loader refuses deep nesting instead of recursing into it; the pure one would raise
# RecursionError, which is handled too.
_BaseSafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _MLmodelLoader(_BaseSafeLoader):
    """The safe YAML loader, keeping timestamps as the strings they are written as."""


# An unquoted date would otherwise become a datetime, which no JSON response can carry.
_MLmodelLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

# Without aliases a 1 MiB document cannot hold more values than this; with them it can hold
# billions ("billion laughs"), which a later json.dumps would expand.
_MAX_MLMODEL_VALUES = _MAX_MLMODEL_BYTES
_PLAIN_SCALARS = (str, int, float, bool)


def _parse_mlmodel(data: bytes) -> dict[str, Any]:
    try:
        loader = _MLmodelLoader(data.decode("utf-8"))
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        raise InvalidModelFile("The MLmodel file is not UTF-8 text.") from e
    except (yaml.YAMLError, RecursionError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise InvalidModelFile(f"The MLmodel file is not valid YAML: {why}.") from e
    if not isinstance(document, dict) or not all(isinstance(key, str) for key in document):
        raise InvalidModelFile("The MLmodel file is not a YAML mapping of names to values.")
    _check_plain_data(document)
    return document


def _check_plain_data(document: dict[str, Any]) -> None:
    budget = _MAX_MLMODEL_VALUES
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            children: list[Any] = list(value.values())
            if not all(key is None or isinstance(key, _PLAIN_SCALARS) for key in value):
                raise InvalidModelFile("The MLmodel file has a mapping key that is not a scalar.")
        elif isinstance(value, list):
            children = value
        elif value is None or isinstance(value, _PLAIN_SCALARS):
            continue
        else:
            raise InvalidModelFile(
                f"The MLmodel file holds a YAML {type(value).__name__}; only plain data "
                "(mappings, lists, strings, numbers, booleans, null) is accepted."
            )
        budget -= len(children)
        if budget < 0:
            raise InvalidModelFile(
                "The MLmodel file expands to too many values (YAML aliases are not for MLmodel)."
            )
        stack.extend(children)


def _api_schema(mlmodel: dict[str, Any]) -> dict[str, Any] | None:
    signature = mlmodel.get("signature")
    if signature is None:
        return None
    if not isinstance(signature, dict):
        raise InvalidModelFile("The MLmodel signature is not a mapping.")
    schema: dict[str, Any] = {
        "inputs": _signature_part(signature, "inputs"),
        "outputs": _signature_part(signature, "outputs"),
    }
    if signature.get("params") is not None:
        schema["params"] = _signature_part(signature, "params")
    return schema


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _signature_part(signature: dict[str, Any], key: str) -> list[Any] | None:
    value = signature.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # MLflow writes each part as a JSON string inside the YAML
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:
            raise InvalidModelFile(f"The MLmodel signature's {key} is not valid JSON: {e}.") from e
    if not isinstance(value, list):
        raise InvalidModelFile(f"The MLmodel signature's {key} is not a list of specs.")
    return value
