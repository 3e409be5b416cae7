"""The multipart parser on its own: framing, caps and file-name decoding, fed in every split."""

from __future__ import annotations

import random

import pytest

from app.errors import AppError, PayloadTooLarge
from app.registration.multipart import (
    MAX_HEADER_BYTES,
    Chunk,
    MultipartError,
    MultipartParser,
    PartHeaders,
    boundary_of,
    parse_part_headers,
)

BOUNDARY = b"----b0undary"


class Collected:
    def __init__(self) -> None:
        self.parts: list[tuple[PartHeaders, bytes]] = []
        self._data = bytearray()
        self._headers: PartHeaders | None = None

    def on_part(self, headers: PartHeaders) -> Collected:
        self._headers = headers
        self._data = bytearray()
        return self

    def write(self, data: Chunk) -> None:
        self._data += data

    def finish(self) -> None:
        assert self._headers is not None
        self.parts.append((self._headers, bytes(self._data)))


def parse(body: bytes, *, pieces: int = 1, seed: int = 0, max_parts: int = 64) -> Collected:
    collected = Collected()
    parser = MultipartParser(BOUNDARY, collected.on_part, max_parts=max_parts)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(body)), min(pieces - 1, len(body) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        parser.feed(body[start:end])
    parser.close()
    return collected


def body(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    framed = b"".join(b"--" + BOUNDARY + b"\r\n" + p + b"\r\n" for p in parts)
    return preamble + framed + b"--" + BOUNDARY + b"--\r\n" + epilogue


FORM = body(
    b'Content-Disposition: form-data; name="metric"\r\n\r\nauroc',
    b'Content-Disposition: form-data; name="model_file"; filename="m.pkl"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    + bytes(range(256)) * 64
    + b"\r\n--"
    + BOUNDARY[:-1]  # a near-boundary inside the data
    + b"\r\n--",
    b'Content-Disposition: form-data; name="empty"\r\n\r\n',
)


class TestFraming:
    @pytest.mark.parametrize("pieces", [1, 2, 7, 100, 5000])
    def test_any_split_of_the_body_parses_the_same(self, pieces: int) -> None:
        for seed in range(3):
            collected = parse(FORM, pieces=pieces, seed=seed)
            assert [(h.name, h.filename) for h, _ in collected.parts] == [
                ("metric", None),
                ("model_file", "m.pkl"),
                ("empty", None),
            ]
            assert collected.parts[0][1] == b"auroc"
            assert collected.parts[1][1].endswith(b"\r\n--" + BOUNDARY[:-1] + b"\r\n--")
            assert collected.parts[1][0].content_type == "application/octet-stream"
            assert collected.parts[2][1] == b""

    def test_byte_by_byte(self) -> None:
        assert len(parse(FORM, pieces=len(FORM)).parts) == 3

    def test_preamble_epilogue_and_padding_after_the_boundary(self) -> None:
        padded = FORM.replace(b"--" + BOUNDARY + b"\r\n", b"--" + BOUNDARY + b" \t\r\n", 1)
        collected = parse(padded, pieces=3)
        assert len(collected.parts) == 3
        framed = body(b'Content-Disposition: form-data; name="a"\r\n\r\nx', preamble=b"ignored\r\n")
        assert parse(framed).parts[0][1] == b"x"

    @pytest.mark.parametrize(
        "broken",
        [
            pytest.param(FORM[:-20], id="no-closing-boundary"),
            pytest.param(b"x" * 5000, id="no-boundary-at-all"),
            pytest.param(body(b"\r\nno headers"), id="no-headers"),
            pytest.param(body(b"Content-Type: text/plain\r\n\r\nx"), id="no-disposition"),
            pytest.param(FORM + b"y" * 5000, id="long-epilogue"),
            pytest.param(
                FORM.replace(b"--" + BOUNDARY + b"\r\n", b"--" + BOUNDARY + b"junk\r\n", 1),
                id="text-after-boundary",
            ),
        ],
    )
    def test_malformed_bodies_are_refused(self, broken: bytes) -> None:
        with pytest.raises(MultipartError):
            parse(broken, pieces=4)

    def test_the_header_cap_holds_however_the_header_arrives(self) -> None:
        flood = b'Content-Disposition: form-data; name="a"' + b"; a=b" * MAX_HEADER_BYTES
        for pieces in (1, 50):
            with pytest.raises(PayloadTooLarge):
                parse(body(flood + b"\r\n\r\nx"), pieces=pieces)
        unterminated = b"--" + BOUNDARY + b"\r\n" + b"X" * (MAX_HEADER_BYTES + 10)
        with pytest.raises(PayloadTooLarge):
            parse(unterminated)

    def test_the_part_cap_holds(self) -> None:
        many = body(*[b'Content-Disposition: form-data; name="u"\r\n\r\n'] * 11)
        assert len(parse(many, max_parts=11).parts) == 11
        with pytest.raises(MultipartError, match="more than 10 parts"):
            parse(many, max_parts=10)


class TestBoundary:
    @pytest.mark.parametrize(
        "content_type",
        [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=" + "a" * 71,
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/mixed; boundary=abc",
            'multipart/form-data; boundary="bad\x00"',
        ],
    )
    def test_invalid_boundaries_are_refused(self, content_type: str) -> None:
        with pytest.raises(MultipartError):
            boundary_of(content_type)

    def test_quoted_and_plain_boundaries(self) -> None:
        assert boundary_of('multipart/form-data; boundary="a b:c"') == b"a b:c"
        assert boundary_of("Multipart/Form-Data ; charset=utf-8; boundary=xyz") == b"xyz"


class TestFileNames:
    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            (b'; filename="plain.pkl"', "plain.pkl"),
            (b'; filename="with \\"quote\\".pkl"', 'with "quote".pkl'),
            (b'; filename="%2e%2e%2f.pkl"', "%2e%2e%2f.pkl"),
            ('; filename="модель.pkl"'.encode(), "модель.pkl"),
            (b"; filename*=UTF-8''%D0%BC.pkl", "м.pkl"),
            (b"; filename*=utf-8'en'a%20b.pkl", "a b.pkl"),
            (b"; filename*=ISO-8859-1''caf%E9.pkl", "café.pkl"),
            (b"; filename*=UTF-8''%25252e.pkl", "%252e.pkl"),
            (b'; filename="=?utf-8?B?0LzQvtC0LnBrbA==?="', "мод.pkl"),
            (b'; filename="=?UTF-8?Q?caf=C3=A9_x.pkl?="', "café x.pkl"),
            (b'; filename="=?utf-8?B?YQ==?= =?utf-8?B?Yi5wa2w=?="', "ab.pkl"),
            (b'; filename="=?utf-8?B?YQ==?= plain"', "=?utf-8?B?YQ==?= plain"),
            (b"; filename=bare.pkl", "bare.pkl"),
            (b'; filename=""', ""),
            (b"; filename=\"ignored.pkl\"; filename*=UTF-8''chosen.pkl", "chosen.pkl"),
        ],
    )
    def test_decoded_exactly_once(self, params: bytes, expected: str) -> None:
        headers = parse_part_headers(b'Content-Disposition: form-data; name="f"' + params)
        assert headers.filename == expected

    @pytest.mark.parametrize(
        "params",
        [
            b'; filename="\xff.pkl"',
            b"; filename*=UTF-8''%FF.pkl",
            b"; filename*=UTF-16''a.pkl",
            b"; filename*=nocharset.pkl",
            b'; filename="=?utf-8?B?***?="',
            b'; filename="=?koi8-r?B?YQ==?="',
            b'; filename="unterminated.pkl',
            b'; filename="a.pkl"; filename="b.pkl"',
            b"; " + b"; ".join(b"p%d=v" % i for i in range(9)),
        ],
    )
    def test_undecodable_or_ambiguous_names_are_refused(self, params: bytes) -> None:
        with pytest.raises(AppError):
            parse_part_headers(b'Content-Disposition: form-data; name="f"' + params)
