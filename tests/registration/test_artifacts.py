"""Content checks, archive inspection and safe extraction, on real files built in tmp_path."""

from __future__ import annotations

import ast
import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import stat
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from app.errors import InvalidModelFile, PayloadTooLarge
from app.registration import artifacts
from app.registration.artifacts import (
    ALLOWED_EXTENSIONS,
    HEAD_BYTES,
    ArchiveInfo,
    ModelFormat,
    check_content,
    extract_archive,
    format_for_filename,
    inspect_archive,
)

LIMIT = 10 * 1024 * 1024
FILES = 100  # the entry cap these tests pass; the service passes its setting

MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
    python_version: 3.11.7
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: 1.5.2
mlflow_version: 2.17.0
model_uuid: 6f1c2b0e5a7d4c3e9b8a1f2d3c4b5a69
utc_time_created: '2024-10-01 12:00:00.000000'
signature:
  inputs: '[{"type": "double", "name": "x", "required": true}, {"type": "string", "name":
    "city", "required": false}]'
  outputs: '[{"type": "long", "required": true}]'
  params: null
"""

SCHEMA = {
    "inputs": [
        {"type": "double", "name": "x", "required": True},
        {"type": "string", "name": "city", "required": False},
    ],
    "outputs": [{"type": "long", "required": True}],
}


# Builders ------------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def check(tmp_path: Path, fmt: ModelFormat, data: bytes, name: str = "upload") -> None:
    path = write(tmp_path / name, data)
    check_content(fmt, data[:HEAD_BYTES], path, len(data))


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def pb_bytes(field: int, value: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(value)) + value


def onnx_bytes(*, initializer_bytes: int = 16) -> bytes:
    tensor = pb_bytes(8, b"weight") + pb_bytes(9, b"\x00" * initializer_bytes)  # name, raw_data
    graph = pb_bytes(2, b"main_graph") + pb_bytes(5, tensor)  # name, initializer
    opset = pb_varint(2, 17)
    return (
        pb_varint(1, 9)  # ir_version
        + pb_bytes(2, b"pytorch")
        + pb_bytes(3, b"2.3.0")
        + pb_bytes(7, graph)
        + pb_bytes(8, opset)
    )


def safetensors_bytes(header: dict[str, object] | None = None, data: bytes = b"\x00" * 16) -> bytes:
    if header is None:
        header = {
            "__metadata__": {"format": "pt"},
            "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


HDF5 = b"\x89HDF\r\n\x1a\n" + b"\x00" * 248


def zip_bytes(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def torch_zip() -> bytes:
    return zip_bytes(
        {
            "model/data.pkl": pickle.dumps({"weight": 0}, protocol=2),
            "model/version": b"3\n",
            "model/data/0": b"\x00" * 16,
        },
        compression=zipfile.ZIP_STORED,
    )


def model_entries(prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}MLmodel": MLMODEL.encode(),
        f"{prefix}model.pkl": pickle.dumps({"coef": [1.0, 2.0]}),
        f"{prefix}requirements.txt": b"scikit-learn==1.5.2\n",
        f"{prefix}conda.yaml": b"name: mlflow-env\n",
    }


def tar_member(
    name: str, data: bytes | None = b"", *, kind: bytes = tarfile.REGTYPE, **attrs: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE and data is not None:
        info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def tar_gz_bytes(
    members: Iterable[tuple[tarfile.TarInfo, bytes | None]],
    *,
    tar_format: int = tarfile.PAX_FORMAT,
) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None and info.isreg() else None)
    return gzip.compress(raw.getvalue(), compresslevel=6)


def tar_of(entries: dict[str, bytes]) -> bytes:
    return tar_gz_bytes(tar_member(name, data) for name, data in entries.items())


def central_record_offset(data: bytes, name: bytes) -> int:
    """Where the central directory record of `name` starts."""
    offset = data.rfind(b"PK\x01\x02", 0, data.rindex(name))
    assert offset >= 0
    return offset


def files_outside(tmp_path: Path, dest: Path, before: set[Path]) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if dest not in p.parents and p != dest} - before


def snapshot(tmp_path: Path) -> set[Path]:
    return set(tmp_path.rglob("*"))


def total_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# Filenames -----------------------------------------------------------------------------------


class TestFormatForFilename:
    @pytest.mark.parametrize(
        ("filename", "expected"),
        [
            ("model.pkl", ModelFormat.PICKLE),
            ("model.joblib", ModelFormat.JOBLIB),
            ("model.onnx", ModelFormat.ONNX),
            ("model.pt", ModelFormat.TORCH),
            ("model.pth", ModelFormat.TORCH),
            ("model.safetensors", ModelFormat.SAFETENSORS),
            ("model.h5", ModelFormat.HDF5),
            ("model.keras", ModelFormat.KERAS),
            ("xgb.json", ModelFormat.JSON),
            ("xgb.ubj", ModelFormat.UBJSON),
            ("lgbm.txt", ModelFormat.TEXT),
            ("weights.bin", ModelFormat.BINARY),
            ("model.zip", ModelFormat.MLFLOW_ZIP),
            ("model.tar.gz", ModelFormat.MLFLOW_TAR),
            ("model.tgz", ModelFormat.MLFLOW_TAR),
            ("MODEL.TAR.GZ", ModelFormat.MLFLOW_TAR),
            ("Model.PKL", ModelFormat.PICKLE),
            ("my model v2 (final).onnx", ModelFormat.ONNX),
            ("modèle.pkl", ModelFormat.PICKLE),
        ],
    )
    def test_maps_extension_to_format(self, filename: str, expected: ModelFormat) -> None:
        assert format_for_filename(filename) is expected

    def test_allowed_extensions_are_the_contract_list(self) -> None:
        assert ALLOWED_EXTENSIONS == (
            ".pkl", ".joblib", ".onnx", ".pt", ".pth", ".safetensors", ".h5", ".keras",
            ".json", ".ubj", ".txt", ".bin", ".zip", ".tar.gz", ".tgz",
        )  # fmt: skip

    def test_rejects_unknown_extension_listing_the_allowed_ones(self) -> None:
        with pytest.raises(InvalidModelFile) as caught:
            format_for_filename("model.exe")
        assert ".pkl" in caught.value.detail
        assert ".tar.gz" in caught.value.detail

    @pytest.mark.parametrize(
        "filename",
        [
            "",
            "model",
            "model.gz",
            "model.tar",
            ".pkl",
            "../model.pkl",
            "dir/model.pkl",
            "C:\\models\\model.pkl",
            "model\x00.pkl",
            "model\n.pkl",
            "model\x7f.pkl",
            "model\u202egnp.pkl",  # right-to-left override disguising the extension
            "a" * 252 + ".pkl",
            "é" * 127 + ".pkl",  # 254 bytes of name plus the extension
            "model.pkl ",
        ],
    )
    def test_rejects_odd_filename(self, filename: str) -> None:
        with pytest.raises(InvalidModelFile):
            format_for_filename(filename)

    def test_accepts_name_of_exactly_255_bytes(self) -> None:
        assert format_for_filename("a" * 251 + ".pkl") is ModelFormat.PICKLE


# Content: valid files ------------------------------------------------------------------------


def _lzma_alone(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


VALID: list[tuple[str, ModelFormat, bytes]] = [
    *(
        (f"pickle protocol {p}", ModelFormat.PICKLE, pickle.dumps({"a": [1, 2.5, "x"]}, protocol=p))
        for p in range(6)
    ),
    ("joblib plain pickle", ModelFormat.JOBLIB, pickle.dumps({"a": 1}, protocol=4)),
    ("joblib zlib", ModelFormat.JOBLIB, zlib.compress(pickle.dumps({"a": 1}))),
    ("joblib gzip", ModelFormat.JOBLIB, gzip.compress(pickle.dumps({"a": 1}))),
    ("joblib bz2", ModelFormat.JOBLIB, bz2.compress(pickle.dumps({"a": 1}))),
    ("joblib xz", ModelFormat.JOBLIB, lzma.compress(pickle.dumps({"a": 1}))),
    ("joblib lzma", ModelFormat.JOBLIB, _lzma_alone(pickle.dumps({"a": 1}))),
    ("joblib lz4", ModelFormat.JOBLIB, b"\x04\x22\x4d\x18" + b"\x64\x40\xa7" + b"\x00" * 8),
    ("joblib legacy ZF", ModelFormat.JOBLIB, b"ZF0x1c" + b" " * 13 + zlib.compress(b"x" * 28)),
    ("onnx", ModelFormat.ONNX, onnx_bytes()),
    ("onnx larger than the head", ModelFormat.ONNX, onnx_bytes(initializer_bytes=200_000)),
    ("torch zip", ModelFormat.TORCH, torch_zip()),
    ("torch legacy pickle", ModelFormat.TORCH, pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)),
    ("safetensors", ModelFormat.SAFETENSORS, safetensors_bytes()),
    (
        "safetensors header larger than the head",
        ModelFormat.SAFETENSORS,
        safetensors_bytes(
            {
                "__metadata__": {"note": "n" * 100_000},
                "w": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]},
            },
            data=b"",
        ),
    ),
    ("hdf5", ModelFormat.HDF5, HDF5),
    ("hdf5 after a 512-byte user block", ModelFormat.HDF5, b"\x00" * 512 + HDF5),
    (
        "keras 3 zip",
        ModelFormat.KERAS,
        zip_bytes({"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": HDF5}),
    ),
    ("keras legacy hdf5", ModelFormat.KERAS, HDF5),
    ("xgboost json", ModelFormat.JSON, b'\xef\xbb\xbf \n\t{"learner": {"attributes": {}}}'),
    ("xgboost ubj", ModelFormat.UBJSON, b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner{}}"),
    ("lightgbm text", ModelFormat.TEXT, "tree\nversion=v4\nnum_class=1\n# façade\n".encode()),
    ("text cut inside a character", ModelFormat.TEXT, b"a" * (HEAD_BYTES - 1) + "é".encode() * 10),
    ("binary", ModelFormat.BINARY, b"\x00\xff\x10"),
    ("mlflow zip", ModelFormat.MLFLOW_ZIP, zip_bytes(model_entries())),
    ("mlflow tar.gz", ModelFormat.MLFLOW_TAR, tar_of(model_entries())),
]


class TestCheckContentAcceptsEveryFormat:
    @pytest.mark.parametrize(("fmt", "data"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
    def test_accepts_valid_file(self, tmp_path: Path, fmt: ModelFormat, data: bytes) -> None:
        check(tmp_path, fmt, data)

    def test_accepts_large_protocol_0_pickle_cut_by_the_head(self, tmp_path: Path) -> None:
        # The head ends inside the argument of the second opcode.
        data = pickle.dumps(["v" * 100_000], protocol=0)
        assert len(data) > HEAD_BYTES
        check(tmp_path, ModelFormat.PICKLE, data)


# Content: wrong files ------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
TEXT = b"This is a README, not a model.\nIt explains things.\n"

INVALID: list[tuple[str, ModelFormat, bytes]] = [
    ("text renamed .pkl", ModelFormat.PICKLE, TEXT),
    ("text starting with a pickle-like letter", ModelFormat.PICKLE, b"I am not a pickle\n"),
    ("json renamed .pkl", ModelFormat.PICKLE, b'{"a": 1}'),
    ("png renamed .pkl", ModelFormat.PICKLE, PNG),
    ("unknown pickle protocol", ModelFormat.PICKLE, b"\x80\x09garbage"),
    ("protocol 0 pickle cut short", ModelFormat.PICKLE, pickle.dumps({"a": 1}, protocol=0)[:-4]),
    ("text renamed .joblib", ModelFormat.JOBLIB, TEXT),
    ("png renamed .onnx", ModelFormat.ONNX, PNG),
    ("text renamed .onnx", ModelFormat.ONNX, TEXT),
    ("json renamed .onnx", ModelFormat.ONNX, b'{"ir_version": 9}'),
    ("onnx cut in a field", ModelFormat.ONNX, onnx_bytes()[:-3]),
    ("onnx with a length past the end", ModelFormat.ONNX, pb_varint(1, 9) + b"\x3a\xff\x7f"),
    ("onnx without ir_version", ModelFormat.ONNX, pb_bytes(2, b"pytorch")),
    ("onnx with absurd ir_version", ModelFormat.ONNX, pb_varint(1, 10**9)),
    ("onnx field with wrong wire type", ModelFormat.ONNX, pb_varint(1, 9) + pb_varint(7, 1)),
    ("text renamed .pt", ModelFormat.TORCH, TEXT),
    ("zip without data.pkl renamed .pt", ModelFormat.TORCH, zip_bytes({"weights": b"1"})),
    ("text renamed .safetensors", ModelFormat.SAFETENSORS, TEXT),
    ("safetensors too short", ModelFormat.SAFETENSORS, b"\x10\x00\x00"),
    ("safetensors header past the end", ModelFormat.SAFETENSORS, struct.pack("<Q", 64) + b"{}"),
    (
        "safetensors header over 100 MB",
        ModelFormat.SAFETENSORS,
        struct.pack("<Q", 200_000_000) + b"{}",
    ),
    ("safetensors header not json", ModelFormat.SAFETENSORS, struct.pack("<Q", 4) + b"{abc"),
    ("safetensors header a list", ModelFormat.SAFETENSORS, struct.pack("<Q", 2) + b"[]"),
    (
        "safetensors offsets past the data",
        ModelFormat.SAFETENSORS,
        safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}),
    ),
    ("text renamed .h5", ModelFormat.HDF5, TEXT),
    ("png renamed .h5", ModelFormat.HDF5, PNG),
    ("zip without config renamed .keras", ModelFormat.KERAS, zip_bytes({"weights.h5": HDF5})),
    ("text renamed .keras", ModelFormat.KERAS, TEXT),
    ("text renamed .json", ModelFormat.JSON, TEXT),
    ("json array", ModelFormat.JSON, b"[1, 2, 3]"),
    ("binary renamed .json", ModelFormat.JSON, PNG),
    ("whitespace only json", ModelFormat.JSON, b"   \n  "),
    ("json text renamed .ubj", ModelFormat.UBJSON, b'{"learner": {}}'),
    ("text renamed .ubj", ModelFormat.UBJSON, TEXT),
    ("lone brace renamed .ubj", ModelFormat.UBJSON, b"{"),
    ("binary renamed .txt", ModelFormat.TEXT, PNG),
    ("text with nul renamed .txt", ModelFormat.TEXT, b"tree\x00version"),
    ("latin-1 text renamed .txt", ModelFormat.TEXT, "façade".encode("latin-1")),
    ("text renamed .zip", ModelFormat.MLFLOW_ZIP, TEXT),
    ("gzip renamed .zip", ModelFormat.MLFLOW_ZIP, gzip.compress(b"x")),
    ("zip renamed .tar.gz", ModelFormat.MLFLOW_TAR, zip_bytes({"MLmodel": b"a: 1"})),
    ("text renamed .tar.gz", ModelFormat.MLFLOW_TAR, TEXT),
]


class TestCheckContentRejectsWrongContent:
    @pytest.mark.parametrize(("fmt", "data"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
    def test_rejects_content_not_matching_extension(
        self, tmp_path: Path, fmt: ModelFormat, data: bytes
    ) -> None:
        with pytest.raises(InvalidModelFile) as caught:
            check(tmp_path, fmt, data)
        assert caught.value.detail.startswith("The file is not a valid")

    @pytest.mark.parametrize("fmt", list(ModelFormat))
    def test_rejects_empty_file(self, tmp_path: Path, fmt: ModelFormat) -> None:
        with pytest.raises(InvalidModelFile, match="empty"):
            check(tmp_path, fmt, b"")

    def test_rejects_corrupt_zip_renamed_pt(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="zip"):
            check(tmp_path, ModelFormat.TORCH, b"PK\x03\x04" + b"\x00" * 100)


# Archives: inspection ------------------------------------------------------------------------


def inspect(
    tmp_path: Path, fmt: ModelFormat, data: bytes, *, limit: int = LIMIT, max_files: int = FILES
) -> ArchiveInfo:
    path = write(tmp_path / "upload.archive", data)
    return inspect_archive(fmt, path, max_unpacked_bytes=limit, max_files=max_files)


ARCHIVE_BUILDERS = {
    ModelFormat.MLFLOW_ZIP: zip_bytes,
    ModelFormat.MLFLOW_TAR: tar_of,
}
BOTH = pytest.mark.parametrize("fmt", list(ARCHIVE_BUILDERS))


class TestInspectsValidArchives:
    @BOTH
    def test_reads_mlmodel_and_signature_at_the_root(
        self, tmp_path: Path, fmt: ModelFormat
    ) -> None:
        entries = model_entries()
        info = inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries))
        assert info.root == ""
        assert info.file_count == 4
        assert info.unpacked_bytes == sum(len(v) for v in entries.values())
        assert info.mlmodel["flavors"]["sklearn"]["sklearn_version"] == "1.5.2"
        assert info.api_schema == SCHEMA

    @BOTH
    def test_accepts_a_single_top_level_folder(self, tmp_path: Path, fmt: ModelFormat) -> None:
        info = inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](model_entries("my_model/")))
        assert info.root == "my_model"
        assert info.api_schema == SCHEMA

    def test_accepts_tar_made_with_dot_prefixes(self, tmp_path: Path) -> None:
        members = [tar_member(".", None, kind=tarfile.DIRTYPE)]
        members += [tar_member(f"./{n}", d) for n, d in model_entries().items()]
        info = inspect(tmp_path, ModelFormat.MLFLOW_TAR, tar_gz_bytes(members))
        assert info.root == ""
        assert info.file_count == 4

    def test_ignores_macos_metadata_beside_the_folder(self, tmp_path: Path) -> None:
        entries = model_entries("model/") | {"__MACOSX/model/._MLmodel": b"\x00\x05"}
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, zip_bytes(entries))
        assert info.root == "model"

    def test_returns_params_when_the_signature_has_them(self, tmp_path: Path) -> None:
        mlmodel = MLMODEL.replace(
            "params: null",
            """params: '[{"name": "k", "type": "long", "default": 3, "shape": null}]'""",
        )
        entries = model_entries() | {"MLmodel": mlmodel.encode()}
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, zip_bytes(entries))
        assert info.api_schema == SCHEMA | {
            "params": [{"name": "k", "type": "long", "default": 3, "shape": None}]
        }

    def test_api_schema_is_none_without_signature(self, tmp_path: Path) -> None:
        mlmodel = MLMODEL.split("signature:")[0]
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, zip_bytes({"MLmodel": mlmodel.encode()}))
        assert info.api_schema is None
        assert info.mlmodel["artifact_path"] == "model"

    def test_reads_zip_with_an_archive_comment(self, tmp_path: Path) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in model_entries().items():
                zf.writestr(name, data)
            zf.comment = b"packed by hand for the registry"
        assert inspect(tmp_path, ModelFormat.MLFLOW_ZIP, buffer.getvalue()).file_count == 4

    def test_reads_zip64_end_of_central_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # zipfile writes the zip64 end records past 65,535 entries; lower that bar to get them.
        monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
        data = zip_bytes(model_entries())
        assert b"PK\x06\x06" in data
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data, max_files=4)
        assert info.file_count == 4
        with pytest.raises(PayloadTooLarge):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data, max_files=3)

    def test_keeps_unquoted_timestamps_as_strings(self, tmp_path: Path) -> None:
        data = zip_bytes({"MLmodel": b"utc_time_created: 2024-10-01 12:00:00\nflavors: {}\n"})
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)
        assert info.mlmodel["utc_time_created"] == "2024-10-01 12:00:00"


UNSAFE_NAMES = ["../x", "/etc/x", "a/../../x", "..\\x", "a\\b", "C:/x", "c:x", "./../x", "a/\x01b"]


class TestRejectsUnsafeEntryNames:
    @BOTH
    @pytest.mark.parametrize("name", UNSAFE_NAMES)
    def test_rejects_entry_with_unsafe_name(
        self, tmp_path: Path, fmt: ModelFormat, name: str
    ) -> None:
        data = ARCHIVE_BUILDERS[fmt](model_entries() | {name: b"evil"})
        with pytest.raises(InvalidModelFile, match="archive entry"):
            inspect(tmp_path, fmt, data)

    def test_rejects_zip_with_parent_traversal(self, tmp_path: Path) -> None:
        data = zip_bytes(model_entries() | {"../../escaped": b"evil"})
        with pytest.raises(InvalidModelFile, match=r"'\.\.'"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    def test_rejects_zip_entry_with_nul_in_name(self, tmp_path: Path) -> None:
        data = zip_bytes(model_entries() | {"evilXname": b"evil"}).replace(b"evilX", b"evil\x00")
        with pytest.raises(InvalidModelFile, match="NUL"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    def test_rejects_tar_entry_with_absolute_path(self, tmp_path: Path) -> None:
        data = tar_of(model_entries() | {str(tmp_path / "escaped"): b"evil"})
        with pytest.raises(InvalidModelFile, match="absolute"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, data)


def zip_with_mode(name: str, mode: int, data: bytes = b"target") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for entry, content in model_entries().items():
            zf.writestr(entry, content)
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return buffer.getvalue()


class TestRejectsLinksAndSpecialFiles:
    def test_rejects_zip_symlink_entry(self, tmp_path: Path) -> None:
        data = zip_with_mode("link", stat.S_IFLNK | 0o777, b"/etc/passwd")
        with pytest.raises(InvalidModelFile, match="symbolic link"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    def test_rejects_zip_fifo_entry(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="FIFO"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, zip_with_mode("pipe", stat.S_IFIFO | 0o644))

    def test_accepts_zip_regular_file_with_unix_mode(self, tmp_path: Path) -> None:
        data = zip_with_mode("extra.bin", stat.S_IFREG | 0o755)
        assert inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data).file_count == 5

    def test_rejects_encrypted_zip_entry(self, tmp_path: Path) -> None:
        data = bytearray(zip_bytes(model_entries()))
        record = central_record_offset(bytes(data), b"model.pkl")
        flags = struct.unpack_from("<H", data, record + 8)[0]
        struct.pack_into("<H", data, record + 8, flags | 0x1)
        with pytest.raises(InvalidModelFile, match="encrypted"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, bytes(data))

    @pytest.mark.parametrize(
        ("kind", "attrs", "match"),
        [
            (tarfile.SYMTYPE, {"linkname": "/etc/passwd"}, "symbolic link"),
            (tarfile.SYMTYPE, {"linkname": "MLmodel"}, "symbolic link"),
            (tarfile.LNKTYPE, {"linkname": "MLmodel"}, "hard link"),
            (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}, "device"),
            (tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}, "device"),
            (tarfile.FIFOTYPE, {}, "FIFO"),
        ],
    )
    def test_rejects_tar_link_device_or_fifo(
        self, tmp_path: Path, kind: bytes, attrs: dict[str, object], match: str
    ) -> None:
        members = [tar_member(n, d) for n, d in model_entries().items()]
        members.append(tar_member("special", None, kind=kind, **attrs))
        with pytest.raises(InvalidModelFile, match=match):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, tar_gz_bytes(members))


class TestRejectsDuplicateEntries:
    def test_rejects_zip_with_duplicate_names(self, tmp_path: Path) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in model_entries().items():
                zf.writestr(name, data)
            with pytest.warns(UserWarning, match="Duplicate"):
                zf.writestr("MLmodel", b"flavors: {}\n")
        with pytest.raises(InvalidModelFile, match="more than once"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, buffer.getvalue())

    def test_rejects_tar_with_names_equal_after_normalising(self, tmp_path: Path) -> None:
        members = [tar_member(n, d) for n, d in model_entries().items()]
        members.append(tar_member("./model.pkl", b"other"))
        with pytest.raises(InvalidModelFile, match="more than once"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, tar_gz_bytes(members))

    @BOTH
    def test_rejects_entry_inside_a_file(self, tmp_path: Path, fmt: ModelFormat) -> None:
        data = ARCHIVE_BUILDERS[fmt](model_entries() | {"model.pkl/inner": b"x"})
        with pytest.raises(InvalidModelFile, match="is a file"):
            inspect(tmp_path, fmt, data)


class TestRefusesArchivesOverTheLimits:
    @BOTH
    def test_rejects_too_many_files(self, tmp_path: Path, fmt: ModelFormat) -> None:
        entries = model_entries() | {f"extra/{i}.txt": b"x" for i in range(20)}
        with pytest.raises(PayloadTooLarge, match="more than 10 entries"):
            inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries), max_files=10)

    @BOTH
    def test_rejects_declared_size_over_the_limit(self, tmp_path: Path, fmt: ModelFormat) -> None:
        entries = model_entries() | {"weights.bin": b"\x00" * 5000}
        with pytest.raises(PayloadTooLarge, match="4,000 bytes"):
            inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries), limit=4000)

    @BOTH
    def test_accepts_archive_exactly_at_the_limit(self, tmp_path: Path, fmt: ModelFormat) -> None:
        entries = model_entries()
        exact = sum(len(v) for v in entries.values())
        info = inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries), limit=exact, max_files=4)
        assert info.unpacked_bytes == exact

    def test_counts_zip_entries_before_zipfile_loads_them(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # zipfile builds an object per entry up front; a million empty entries must not get there.
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("zipfile.ZipFile was opened before the entries were counted")

        data = zip_bytes({f"{i}": b"" for i in range(50)})
        monkeypatch.setattr(zipfile, "ZipFile", refuse)
        with pytest.raises(PayloadTooLarge):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data, max_files=10)

    def test_rejects_tar_long_name_header_bomb(self, tmp_path: Path) -> None:
        # A GNU long-name header is read into memory whole; 3 MB of "a" gzips to a few KB.
        members = [tar_member(n, d) for n, d in model_entries().items()]
        members.append(tar_member("a" * 3_000_000, b"x"))
        data = tar_gz_bytes(members, tar_format=tarfile.GNU_FORMAT)
        with pytest.raises(InvalidModelFile, match="extended header"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, data)


class TestRequiresAnMLmodel:
    @BOTH
    def test_rejects_archive_without_mlmodel(self, tmp_path: Path, fmt: ModelFormat) -> None:
        entries = {"model.pkl": pickle.dumps(1), "conda.yaml": b"name: x\n"}
        with pytest.raises(InvalidModelFile, match="no MLmodel"):
            inspect(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries))

    @BOTH
    def test_rejects_mlmodel_two_folders_deep(self, tmp_path: Path, fmt: ModelFormat) -> None:
        data = ARCHIVE_BUILDERS[fmt](model_entries("a/b/"))
        with pytest.raises(InvalidModelFile, match="no MLmodel"):
            inspect(tmp_path, fmt, data)

    def test_rejects_mlmodel_in_one_of_two_top_level_folders(self, tmp_path: Path) -> None:
        data = zip_bytes(model_entries("a/") | {"b/notes.txt": b"x"})
        with pytest.raises(InvalidModelFile, match="no MLmodel"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    @BOTH
    @pytest.mark.parametrize(
        "content",
        [b"- just\n- a list\n", b"plain string\n", b"", b"flavors: [unclosed\n", b"\xff\xfe\x00"],
    )
    def test_rejects_mlmodel_that_is_not_a_mapping(
        self, tmp_path: Path, fmt: ModelFormat, content: bytes
    ) -> None:
        data = ARCHIVE_BUILDERS[fmt](model_entries() | {"MLmodel": content})
        with pytest.raises(InvalidModelFile, match="MLmodel"):
            inspect(tmp_path, fmt, data)

    def test_rejects_mlmodel_over_one_mebibyte(self, tmp_path: Path) -> None:
        big = b"flavors: {}\nnote: '" + b"x" * (1024 * 1024) + b"'\n"
        data = tar_of(model_entries() | {"MLmodel": big})
        with pytest.raises(InvalidModelFile, match="larger than"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, data)

    def test_rejects_mlmodel_alias_bomb(self, tmp_path: Path) -> None:
        lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        for i in range(1, 9):
            lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
        data = zip_bytes({"MLmodel": "\n".join(lines).encode()})
        with pytest.raises(InvalidModelFile, match="too many values"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    def test_rejects_mlmodel_with_python_tag(self, tmp_path: Path) -> None:
        data = zip_bytes({"MLmodel": b"x: !!python/object/apply:os.system ['echo pwned']\n"})
        with pytest.raises(InvalidModelFile, match="not valid YAML"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)

    @pytest.mark.parametrize(
        "signature",
        [
            "signature: [1, 2]",
            "signature:\n  inputs: '[{\"type\": '",
            'signature:\n  inputs: \'{"type": "double"}\'',
            "signature:\n  inputs: '[NaN]'",
        ],
    )
    def test_rejects_malformed_signature(self, tmp_path: Path, signature: str) -> None:
        mlmodel = MLMODEL.split("signature:")[0] + signature + "\n"
        data = zip_bytes({"MLmodel": mlmodel.encode()})
        with pytest.raises(InvalidModelFile, match="signature"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data)


class TestRejectsCorruptArchives:
    def test_rejects_corrupt_zip(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="zip"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, b"PK\x03\x04" + os.urandom(500))

    def test_rejects_zip_cut_short(self, tmp_path: Path) -> None:
        data = zip_bytes(model_entries())
        with pytest.raises(InvalidModelFile, match="zip"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, data[: len(data) // 2])

    def test_rejects_zip_with_damaged_central_directory(self, tmp_path: Path) -> None:
        data = bytearray(zip_bytes(model_entries()))
        record = central_record_offset(bytes(data), b"model.pkl")
        data[record : record + 4] = b"XXXX"
        with pytest.raises(InvalidModelFile, match="corrupt"):
            inspect(tmp_path, ModelFormat.MLFLOW_ZIP, bytes(data))

    def test_rejects_truncated_tar_gz(self, tmp_path: Path) -> None:
        data = tar_of(model_entries() | {"weights.bin": os.urandom(200_000)})
        with pytest.raises(InvalidModelFile, match="corrupt"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, data[: len(data) // 2])

    def test_rejects_gzip_that_is_not_a_tar(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="corrupt"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, gzip.compress(b"MLmodel " * 200))

    def test_rejects_bad_gzip_stream(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="corrupt"):
            inspect(tmp_path, ModelFormat.MLFLOW_TAR, b"\x1f\x8b\x08" + os.urandom(300))

    def test_refuses_a_single_file_format(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="not an archive"):
            inspect(tmp_path, ModelFormat.PICKLE, pickle.dumps(1))


# Archives: extraction ------------------------------------------------------------------------


def unpack(
    tmp_path: Path, fmt: ModelFormat, data: bytes, *, limit: int = LIMIT
) -> tuple[Path, Path]:
    path = write(tmp_path / "upload.archive", data)
    info = inspect_archive(fmt, path, max_unpacked_bytes=limit, max_files=FILES)
    dest = tmp_path / "dest"
    dest.mkdir()
    extracted = extract_archive(fmt, path, dest, info, max_unpacked_bytes=limit, max_files=FILES)
    return extracted, dest


def forged_info(*, file_count: int = 5) -> ArchiveInfo:
    """What a caller might pass for an archive that was never inspected."""
    return ArchiveInfo(
        file_count=file_count,
        unpacked_bytes=10,
        root="",
        mlmodel={"flavors": {}},
        api_schema=None,
    )


class TestExtractsArchives:
    @BOTH
    def test_unpacks_every_file_at_the_root(self, tmp_path: Path, fmt: ModelFormat) -> None:
        entries = model_entries() | {"code/helpers/util.py": b"x = 1\n"}
        model_dir, dest = unpack(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](entries))
        assert model_dir == dest
        for name, data in entries.items():
            assert (dest / name).read_bytes() == data

    @BOTH
    def test_returns_the_single_top_level_folder(self, tmp_path: Path, fmt: ModelFormat) -> None:
        model_dir, dest = unpack(tmp_path, fmt, ARCHIVE_BUILDERS[fmt](model_entries("m/")))
        assert model_dir == dest / "m"
        assert (model_dir / "MLmodel").read_text() == MLMODEL

    def test_allows_as_many_entries_as_inspection_did(self, tmp_path: Path) -> None:
        entries = model_entries() | {f"extra/{i}.txt": b"x" for i in range(20)}
        path = write(tmp_path / "upload.archive", zip_bytes(entries))
        info = inspect_archive(ModelFormat.MLFLOW_ZIP, path, max_unpacked_bytes=LIMIT, max_files=30)
        assert info.entry_count == 24
        dest = tmp_path / "dest"
        dest.mkdir()
        extract_archive(
            ModelFormat.MLFLOW_ZIP, path, dest, info, max_unpacked_bytes=LIMIT, max_files=5
        )
        assert len(list((dest / "extra").iterdir())) == 20

    def test_unpacks_tar_with_directories_and_dot_prefixes(self, tmp_path: Path) -> None:
        members = [tar_member(".", None, kind=tarfile.DIRTYPE)]
        members.append(tar_member("./empty", None, kind=tarfile.DIRTYPE))
        members += [tar_member(f"./{n}", d) for n, d in model_entries().items()]
        model_dir, dest = unpack(tmp_path, ModelFormat.MLFLOW_TAR, tar_gz_bytes(members))
        assert (dest / "empty").is_dir()
        assert (model_dir / "MLmodel").is_file()

    def test_unpacks_stored_bzip2_and_lzma_zip_members(self, tmp_path: Path) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("MLmodel", MLMODEL, compress_type=zipfile.ZIP_STORED)
            zf.writestr("a.bin", b"a" * 5000, compress_type=zipfile.ZIP_BZIP2)
            zf.writestr("b.bin", b"b" * 5000, compress_type=zipfile.ZIP_LZMA)
        _, dest = unpack(tmp_path, ModelFormat.MLFLOW_ZIP, buffer.getvalue())
        assert (dest / "a.bin").read_bytes() == b"a" * 5000
        assert (dest / "b.bin").read_bytes() == b"b" * 5000


def lying_zip(real: int, declared: int) -> bytes:
    """A zip whose weights.bin holds `real` zero bytes; its central directory says `declared`."""
    data = bytearray(zip_bytes(model_entries() | {"weights.bin": b"\x00" * real}))
    record = central_record_offset(bytes(data), b"weights.bin")
    struct.pack_into("<L", data, record + 24, declared)  # uncompressed size
    return bytes(data)


class TestStopsZipBombsDuringExtraction:
    def test_stops_zip_whose_central_directory_understates_sizes(self, tmp_path: Path) -> None:
        limit = 1024 * 1024
        data = lying_zip(real=8 * limit, declared=100)
        before = snapshot(tmp_path)
        with pytest.raises(PayloadTooLarge, match="1,048,576 bytes"):
            unpack(tmp_path, ModelFormat.MLFLOW_ZIP, data, limit=limit)
        dest = tmp_path / "dest"
        assert total_size(dest) <= limit
        assert files_outside(tmp_path, dest, before) == {tmp_path / "upload.archive"}

    def test_inspection_trusts_the_understated_size(self, tmp_path: Path) -> None:
        info = inspect(tmp_path, ModelFormat.MLFLOW_ZIP, lying_zip(real=100_000, declared=100))
        assert info.unpacked_bytes < 1000

    def test_rejects_size_mismatch_within_the_limit(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidModelFile, match="header declares"):
            unpack(tmp_path, ModelFormat.MLFLOW_ZIP, lying_zip(real=5000, declared=100))

    def test_rejects_member_with_damaged_data(self, tmp_path: Path) -> None:
        data = bytearray(zip_bytes(model_entries() | {"weights.bin": os.urandom(4000)}))
        start = data.index(b"weights.bin") + len(b"weights.bin") + 100
        data[start : start + 50] = b"\x00" * 50
        with pytest.raises(InvalidModelFile, match="corrupt"):
            unpack(tmp_path, ModelFormat.MLFLOW_ZIP, bytes(data))


class TestExtractionRechecksEveryMember:
    """extract_archive must hold even when handed an archive that was never inspected."""

    @BOTH
    @pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/tmp/escaped-abs"])
    def test_never_writes_outside_dest(self, tmp_path: Path, fmt: ModelFormat, name: str) -> None:
        if name.startswith("/"):
            name = str(tmp_path / "escaped-abs")
        path = write(
            tmp_path / "upload.archive", ARCHIVE_BUILDERS[fmt](model_entries() | {name: b"evil"})
        )
        dest = tmp_path / "dest"
        dest.mkdir()
        before = snapshot(tmp_path)
        with pytest.raises(InvalidModelFile):
            extract_archive(
                fmt, path, dest, forged_info(), max_unpacked_bytes=LIMIT, max_files=FILES
            )
        assert files_outside(tmp_path, dest, before) == set()

    def test_never_creates_tar_links(self, tmp_path: Path) -> None:
        members = [tar_member("link", None, kind=tarfile.SYMTYPE, linkname=str(tmp_path))]
        members.append(tar_member("link/escaped", b"evil"))
        path = write(tmp_path / "upload.archive", tar_gz_bytes(members))
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(InvalidModelFile, match="symbolic link"):
            extract_archive(
                ModelFormat.MLFLOW_TAR,
                path,
                dest,
                forged_info(),
                max_unpacked_bytes=LIMIT,
                max_files=FILES,
            )
        assert list(dest.iterdir()) == []
        assert not (tmp_path / "escaped").exists()

    def test_never_creates_zip_symlinks(self, tmp_path: Path) -> None:
        path = write(tmp_path / "upload.archive", zip_with_mode("link", stat.S_IFLNK | 0o777))
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(InvalidModelFile, match="symbolic link"):
            extract_archive(
                ModelFormat.MLFLOW_ZIP,
                path,
                dest,
                forged_info(),
                max_unpacked_bytes=LIMIT,
                max_files=FILES,
            )
        assert not (dest / "link").is_symlink()

    def test_rejects_archive_that_changed_since_inspection(self, tmp_path: Path) -> None:
        path = write(tmp_path / "upload.archive", zip_bytes(model_entries()))
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(InvalidModelFile, match="changed"):
            extract_archive(
                ModelFormat.MLFLOW_ZIP,
                path,
                dest,
                forged_info(file_count=3),
                max_unpacked_bytes=LIMIT,
                max_files=FILES,
            )

    def test_applies_the_byte_limit_itself(self, tmp_path: Path) -> None:
        path = write(tmp_path / "upload.archive", tar_of(model_entries()))
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(PayloadTooLarge):
            extract_archive(
                ModelFormat.MLFLOW_TAR,
                path,
                dest,
                forged_info(file_count=4),
                max_unpacked_bytes=100,
                max_files=FILES,
            )


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, by its full dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


class TestModuleBoundaries:
    @pytest.mark.parametrize("module", ["archives", "zipdir"])
    def test_archive_reading_knows_nothing_of_mlflow(self, module: str) -> None:
        folder = Path(artifacts.__file__).parent
        allowed = {
            "app.errors",
            "app.registration.artifacts.names",
            "app.registration.artifacts.zipdir",
        }
        imported = imported_modules(folder / f"{module}.py")
        foreign = {
            name for name in imported - allowed if name.split(".")[0] not in sys.stdlib_module_names
        }
        assert foreign == set()
        assert "mlmodel" not in (folder / f"{module}.py").read_text().lower()
