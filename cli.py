"""`hokusai`: the command line of the Hokusai model registration service.

A thin client: it speaks only HTTP to the service (httpx, imported when a command first needs it)
and imports nothing of the server's stack, so `hokusai --help` answers at once. Output is a readable
summary or table, or with `--json` the service's JSON unchanged. Every class of failure has its own
exit code (`Exit`). docs/cli.md is the reference.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import os
import secrets
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec
from urllib.parse import quote, urlsplit

import typer

if TYPE_CHECKING:
    import httpx
    from rich.console import Console
    from rich.progress import Progress, TaskID

VERSION = "0.1.0"
DEFAULT_API_URL = "http://127.0.0.1:8000"
DEV_KEY_FILENAME = "dev-api-key"
DEFAULT_DATA_DIR = Path(".hokusai")
CHUNK_BYTES = 1024 * 1024
# Registering a large model takes the service a while after the last byte (MLflow copies it).
REGISTER_READ_TIMEOUT = 900.0
# The longest `Retry-After` honoured, and the cap of the exponential back-off between retries.
MAX_RETRY_AFTER = 30.0
MAX_BACKOFF = 8.0
# `GET /events?wait=` long-polls at most this long on the service's side.
WATCH_WAIT_SECONDS = 30
WATCH_MAX_FAILURES = 10
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
METRICS = (
    "accuracy, auroc, f1, precision, recall, log_loss, mse, rmse, mae, r2, reply_rate, "
    "conversion_rate, engagement_score"
)


class Exit(enum.IntEnum):
    """Exit codes, one per class of failure (listed in docs/cli.md)."""

    OK = 0
    UNEXPECTED = 1  # an answer the CLI does not understand, or a bug
    USAGE = 2  # bad arguments or options (click uses 2 as well)
    AUTH = 3  # 401 or 403: missing, unknown or under-scoped API key
    CONFLICT = 4  # 404 or 409: not found, or the current state does not allow it
    INVALID = 5  # 400, 413, 415 or 422: the service refused the input
    UNAVAILABLE = 6  # network failure or a 5xx answer, after the retries
    TIMEOUT = 7  # `events watch --timeout` ran out before `--count` events arrived
    INTERRUPTED = 130  # Ctrl-C


def exit_for_status(status: int) -> Exit:
    """The exit code for an HTTP error status."""
    if status in (401, 403):
        return Exit.AUTH
    if status in (404, 409, 410):
        return Exit.CONFLICT
    if status in (400, 413, 415, 422):
        return Exit.INVALID
    if status >= 500:
        return Exit.UNAVAILABLE
    return Exit.UNEXPECTED


# Hints for the failures a newcomer meets first; `{token_id}` is filled in when known.
HINTS: dict[str, str] = {
    "token_not_found": "check the id with `hokusai token list`, or create the token with "
    "`hokusai token create {token_id}`",
    "token_not_registrable": "only draft and failed tokens can be registered; see "
    "`hokusai model status --token-id {token_id}`",
    "registration_in_progress": "a registration of this token is running; wait, then see "
    "`hokusai model status --token-id {token_id}`",
    "metric_below_baseline": "the score must be at least as good as the baseline (moved by "
    "--min-improvement); nothing was registered",
    "benchmark_mismatch": "use the token's own metric and baseline: "
    "`hokusai token show {token_id}`",
    "unsupported_metric": f"supported metrics: {METRICS}",
    "idempotency_key_reused": "this --idempotency-key came with a different request; use a new "
    "key, or leave the option out to get a fresh one",
    "checksum_mismatch": "the file changed while it was read or sent; run the command again",
    "invalid_model_file": "send a model file (.pkl, .joblib, .onnx, .pt, .safetensors, ...) or "
    "an MLflow model folder (with an MLmodel file at its top)",
    "payload_too_large": "the service refuses uploads above HOKUSAI_MAX_UPLOAD_BYTES",
    "forbidden": "use a key with the scope named above (`hokusai-registry create-api-key "
    "--name NAME --scopes SCOPES` creates one)",
    "mlflow_unavailable": "the service cannot reach MLflow; try again later "
    "(`curl {api_url}/ready` shows which dependency is down)",
    "database_unavailable": "the service cannot reach its database; try again later "
    "(`curl {api_url}/ready` shows which dependency is down)",
}


class CliError(Exception):
    """A failure to report as one line (plus an optional hint) and an exit code."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: Exit,
        hint: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint
        # The service's problem+json, printed on stdout under --json.
        self.body = body

    def report(self, *, json_output: bool) -> None:
        if json_output and self.body:
            _write_stdout(self.body)
        typer.secho(f"error: {self.message}", err=True, fg="red")
        if self.hint:
            typer.secho(f"hint: {self.hint}", err=True, fg="yellow")


def usage_error(message: str) -> CliError:
    return CliError(message, exit_code=Exit.USAGE)


# Configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the service is and how to talk to it; built by the root callback."""

    api_url: str
    api_key: str | None
    key_source: str | None  # "--api-key", "HOKUSAI_API_KEY" or the dev key file's path
    timeout: float
    retries: int


def is_loopback(api_url: str) -> bool:
    host = urlsplit(api_url).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def dev_key_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where `make run` leaves the development key: the data folder's `dev-api-key`."""
    environ = os.environ if environ is None else environ
    data_dir = environ.get("HOKUSAI_DATA_DIR", "").strip()
    return (Path(data_dir) if data_dir else DEFAULT_DATA_DIR) / DEV_KEY_FILENAME


def resolve_api_key(
    given: str | None,
    given_source: str | None,
    api_url: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """The key and where it came from: the flag or HOKUSAI_API_KEY, else the dev key file.

    The dev key file is read only for a service on this machine: a development key never leaves
    it.
    """
    if given and given.strip():
        return given.strip(), given_source
    if not is_loopback(api_url):
        return None, None
    path = dev_key_file(environ)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None, None
    return (key, str(path)) if key else (None, None)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


# Output ------------------------------------------------------------------------------------------


def _write_stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _console() -> Console:
    from rich.console import Console

    # A table piped to a file or another program is not squeezed into 80 columns.
    width = None if sys.stdout.isatty() else max(int(os.environ.get("COLUMNS") or 0), 200)
    return Console(highlight=False, width=width)


def _print_fields(title: str, fields: Sequence[tuple[str, object]]) -> None:
    """A titled block of `label  value` lines; empty values are left out."""
    typer.secho(title, bold=True)
    shown = [(label, value) for label, value in fields if value not in (None, "", [], {})]
    width = max((len(label) for label, _ in shown), default=0)
    for label, value in shown:
        typer.echo(f"  {label.ljust(width)}  {_text(value)}")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _time(value: object) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (UTC); empty for none."""
    return str(value)[:19].replace("T", " ") if value else ""


def _num(value: object) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _size(count: object) -> str:
    if not isinstance(count, int):
        return ""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(count)


_STATUS_STYLES = {
    "registered": "green",
    "deployed": "cyan",
    "delivered": "green",
    "failed": "red",
    "rejected": "red",
    "dead": "red",
    "registering": "yellow",
    "in_progress": "yellow",
    "pending": "yellow",
    "archived": "dim",
}


def _table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, status_column: int = -1
) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = list(row)
        if 0 <= status_column < len(cells):
            style = _STATUS_STYLES.get(cells[status_column])
            if style:
                cells[status_column] = f"[{style}]{cells[status_column]}[/]"
        table.add_row(
            *(cell if i == status_column else _escape(cell) for i, cell in enumerate(cells))
        )
    _console().print(table)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _status(value: object) -> str:
    """A status, coloured on a terminal."""
    text = str(value or "")
    color = _STATUS_STYLES.get(text)
    return typer.style(text, fg=color, bold=True) if color and color != "dim" else text


# HTTP --------------------------------------------------------------------------------------------


def _httpx() -> types.ModuleType:
    """httpx, imported on first use.

    httpx's package imports its own command line (`httpx._main`: click, rich.syntax, pygments),
    about 0.2 s this client never uses; a stand-in module lets `import httpx` skip it.
    """
    if "httpx" not in sys.modules:
        stand_in = types.ModuleType("httpx._main")

        def main() -> None:
            raise SystemExit("the httpx command line is not available here")

        stand_in.main = main  # type: ignore[attr-defined]
        sys.modules.setdefault("httpx._main", stand_in)
    import httpx

    return httpx


class Api:
    """The service over HTTP, with bounded retries of transient failures."""

    def __init__(self, settings: Settings) -> None:
        hx = _httpx()
        scheme = urlsplit(settings.api_url).scheme
        if scheme not in ("http", "https"):
            raise usage_error(
                f"--api-url must be an http:// or https:// URL, not {settings.api_url!r}"
            )
        self.settings = settings
        headers = {
            "User-Agent": f"hokusai-cli/{VERSION}",
            "Accept": "application/json, application/problem+json",
        }
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._client: httpx.Client = hx.Client(
            base_url=settings.api_url.rstrip("/"),
            headers=headers,
            timeout=hx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            follow_redirects=False,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        expected: Sequence[int] = (200,),
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: Callable[[], Iterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        read_timeout: float | None = None,
        retries: int | None = None,
        token_id: str | None = None,
    ) -> httpx.Response:
        """Send one request; retry connection failures and 503 with Retry-After, boundedly.

        A request the service may have received (a read error, a timed-out answer) is retried
        only when repeating it is harmless: a GET, or a registration under its Idempotency-Key.
        A 409 `registration_in_progress` after such a failure is most likely the first attempt
        still running, so it is waited for too. Other failures raise `CliError`.
        """
        hx = _httpx()
        idempotent = method == "GET" if idempotent is None else idempotent
        retries = self.settings.retries if retries is None else retries
        timeout = hx.Timeout(
            self.settings.timeout,
            connect=min(self.settings.timeout, 10.0),
            read=read_timeout or self.settings.timeout,
        )
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        sent_before = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response: httpx.Response = self._client.request(
                    method,
                    path,
                    params=clean_params,
                    json=json_body,
                    content=content() if content is not None else None,
                    headers=headers,
                    timeout=timeout,
                )
            except hx.UnsupportedProtocol as e:
                raise usage_error(f"--api-url: {e}") from e
            except hx.TransportError as e:
                reached = not isinstance(e, hx.ConnectError | hx.ConnectTimeout)
                sent_before = sent_before or reached
                if attempt <= retries and (idempotent or not reached):
                    self._pause(attempt, retries, _describe(e), None)
                    continue
                raise self._network_error(e, reached=reached) from e
            wait = _retry_after(response)
            if response.status_code in (429, 503) and wait is not None and attempt <= retries:
                self._pause(attempt, retries, f"HTTP {response.status_code}", wait)
                continue
            if (
                response.status_code == 409
                and sent_before
                and attempt <= retries
                and _problem(response).get("code") == "registration_in_progress"
            ):
                self._pause(attempt, retries, "the first attempt is still running", 2.0**attempt)
                continue
            if response.status_code in expected:
                return response
            raise problem_error(
                response,
                api_url=self.settings.api_url,
                token_id=token_id,
                key_source=self.settings.key_source,
            )

    def _pause(self, attempt: int, retries: int, reason: str, wait: float | None) -> None:
        if wait is None:
            wait = min(MAX_BACKOFF, 0.5 * 2 ** (attempt - 1)) * (
                0.8 + 0.4 * secrets.randbelow(1000) / 1000
            )
        wait = min(max(wait, 0.0), MAX_RETRY_AFTER)
        typer.secho(
            f"retrying in {wait:.1f} s ({reason}; attempt {attempt + 1} of {retries + 1})",
            err=True,
            fg="yellow",
        )
        time.sleep(wait)

    def _network_error(self, error: Exception, *, reached: bool) -> CliError:
        url = self.settings.api_url
        if not reached:
            return CliError(
                f"cannot reach the service at {url} ({_describe(error)})",
                exit_code=Exit.UNAVAILABLE,
                hint="start it with `make run`, or point --api-url / HOKUSAI_API_URL at it",
            )
        return CliError(
            f"the connection to {url} failed before an answer came ({_describe(error)})",
            exit_code=Exit.UNAVAILABLE,
        )


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def problem_error(
    response: httpx.Response,
    *,
    api_url: str,
    token_id: str | None = None,
    key_source: str | None = None,
) -> CliError:
    """The service's problem+json as one line (title, detail, code), a hint and an exit code."""
    status = response.status_code
    problem = _problem(response)
    code = str(problem.get("code") or "")
    if code:
        title = str(problem.get("title") or f"HTTP {status}")
        detail = str(problem.get("detail") or "")
        message = f"{title}: {detail} ({code})" if detail else f"{title} ({code})"
        if status >= 500 and problem.get("request_id"):
            message += f" [request_id {problem['request_id']}]"
    else:
        message = f"HTTP {status} {response.reason_phrase} from {api_url}"
        if response.text and len(response.text) < 300:
            message += f": {response.text.strip()}"
    hint = HINTS.get(code)
    if code == "unauthorized":
        hint = _unauthorized_hint(key_source)
    if hint:
        hint = hint.replace("{token_id}", token_id or "TOKEN_ID").replace("{api_url}", api_url)
    body = response.text if problem else None
    return CliError(message, exit_code=exit_for_status(status), hint=hint, body=body)


def _unauthorized_hint(key_source: str | None) -> str:
    if key_source is None:
        return (
            "no API key was sent: pass --api-key or set HOKUSAI_API_KEY (for a service started "
            "with `make run` on this machine, its key file .hokusai/dev-api-key is read "
            "automatically)"
        )
    if key_source in ("--api-key", "HOKUSAI_API_KEY"):
        return f"the service does not know the key given by {key_source}"
    return (
        f"the service does not know the key in {key_source} (a key of another data folder?); "
        "restarting `make run` writes a fresh one"
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise CliError(
            f"the service answered HTTP {response.status_code} with a body that is not JSON",
            exit_code=Exit.UNEXPECTED,
        ) from e


def _items(body: Any, key: str = "items") -> list[dict[str, Any]]:
    """The list in a page (`{"items": [...]}`), or the body itself when it is a list."""
    items = body.get(key) if isinstance(body, dict) else body
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


# Uploads: packing, hashing, the streamed multipart body ------------------------------------------


class PackFormat(enum.StrEnum):
    TAR_GZ = "tar.gz"
    ZIP = "zip"


# A fixed timestamp for packed entries (the earliest a zip can hold), so the same folder always
# packs to the same bytes: a rerun with the same --idempotency-key sends the same request.
_PACK_MTIME = 315532800  # 1980-01-01T00:00:00Z


def _pack_entries(folder: Path) -> list[tuple[str, Path]]:
    """The folder's files as (archive name, path), sorted; MLmodel must be at the top."""
    if not (folder / "MLmodel").is_file():
        raise usage_error(
            f"{folder} is a folder without an MLmodel file at its top; give a model file or an "
            "MLflow model folder"
        )
    entries: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in dirs:
            if (base / name).is_symlink():
                raise usage_error(f"cannot pack {base / name}: a link to a folder")
        for name in sorted(files):
            path = base / name
            if not path.is_file():
                raise usage_error(f"cannot pack {path}: not a regular file")
            entries.append((path.relative_to(folder).as_posix(), path))
    return entries


def pack_folder(folder: Path, destination: Path, fmt: PackFormat) -> Path:
    """Pack an MLflow model folder into `destination` (streamed to disk, reproducibly)."""
    entries = _pack_entries(folder)
    name = (folder.resolve().name or "model").replace(" ", "_")
    archive = destination / f"{name}.{fmt.value}"
    if fmt is PackFormat.TAR_GZ:
        import gzip
        import tarfile

        with (
            archive.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for arcname, path in entries:
                stat = path.stat()
                info = tarfile.TarInfo(arcname)
                info.size = stat.st_size
                info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
                info.mtime = _PACK_MTIME
                with path.open("rb") as source:
                    tar.addfile(info, source)
    else:
        import shutil
        import zipfile

        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, path in entries:
                stat = path.stat()
                zinfo = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zinfo.external_attr = (0o100755 if stat.st_mode & 0o111 else 0o100644) << 16
                zinfo.file_size = stat.st_size
                with path.open("rb") as source, zf.open(zinfo, "w") as target:
                    shutil.copyfileobj(source, target, CHUNK_BYTES)
    return archive


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class FilePart:
    field: str
    path: Path
    filename: str
    size: int
    content_type: str = "application/octet-stream"


def _quoted(value: str) -> str:
    # The HTML5 form encoding of a name in Content-Disposition, as browsers and httpx send it.
    return value.translate({ord('"'): "%22", ord("\\"): "\\\\", ord("\r"): "%0D", ord("\n"): "%0A"})


class MultipartBody:
    """A multipart/form-data body streamed from disk: the text fields first, then the files.

    Its length is known up front (sent as Content-Length, so the service can refuse an oversized
    upload at once) and the files are read a chunk at a time, so memory stays flat whatever
    their size.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[FilePart],
        boundary: str | None = None,
    ) -> None:
        self.boundary = boundary or f"hokusai-{secrets.token_hex(16)}"
        self._fields = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"'
            f"\r\n\r\n".encode()
            + value.encode("utf-8")
            + b"\r\n"
            for name, value in fields
        )
        self._files = [
            (
                f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f'name="{_quoted(part.field)}"; filename="{_quoted(part.filename)}"\r\n'
                f"Content-Type: {part.content_type}\r\n\r\n".encode(),
                part,
            )
            for part in files
        ]
        self._end = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        files = sum(len(head) + part.size + 2 for head, part in self._files)
        return len(self._fields) + files + len(self._end)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(len(self))}

    def chunks(self, advance: Callable[[int], None] | None = None) -> Iterator[bytes]:
        def sent(chunk: bytes) -> bytes:
            if advance is not None:
                advance(len(chunk))
            return chunk

        yield sent(self._fields)
        for head, part in self._files:
            yield sent(head)
            read = 0
            with part.path.open("rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    read += len(chunk)
                    if read > part.size:
                        break
                    yield sent(chunk)
            if read != part.size:
                raise CliError(
                    f"{part.path} changed size while it was being sent",
                    exit_code=Exit.UNEXPECTED,
                    hint="run the command again once the file is complete",
                )
            yield sent(b"\r\n")
        yield sent(self._end)


class _Bars:
    """Progress bars on stderr (bytes and speed), or nothing at all."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True, force_terminal=True),
            )

    def __enter__(self) -> _Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None] | None:
        progress = self._progress
        if progress is None:
            return None
        task_id: TaskID = progress.add_task(description, total=total)

        def advance(count: int) -> None:
            progress.advance(task_id, count)

        return advance

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, style="dim", highlight=False, markup=False)


def _show_progress(choice: bool | None) -> bool:
    """On by default only when both output streams are a terminal: quiet when piped."""
    if choice is not None:
        return choice
    return sys.stderr.isatty() and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


# The application ---------------------------------------------------------------------------------

P = ParamSpec("P")


def _command(func: Callable[P, None]) -> Callable[P, None]:
    """Turn `CliError` and Ctrl-C into a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        json_output = bool(kwargs.get("json_output"))
        try:
            func(*args, **kwargs)
        except CliError as e:
            e.report(json_output=json_output)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True, fg="yellow")
            raise typer.Exit(int(Exit.INTERRUPTED)) from None
        except BrokenPipeError:
            # The reader went away (`hokusai events watch | head -1`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(int(Exit.OK)) from None

    return wrapper


app = typer.Typer(
    name="hokusai",
    help=(
        "Register ML models for Hokusai tokens, follow their events, manage webhooks.\n\n"
        "\b\n"
        "Configuration (options of hokusai itself, before the command):\n"
        "  --api-url, HOKUSAI_API_URL   the service (default http://127.0.0.1:8000)\n"
        "  --api-key, HOKUSAI_API_KEY   the API key; when none is given and the service runs\n"
        "                               on this machine, the key `make run` writes to\n"
        "                               $HOKUSAI_DATA_DIR/dev-api-key, else\n"
        "                               ./.hokusai/dev-api-key\n"
        "\n"
        "\b\n"
        "Examples:\n"
        "  hokusai token create XRAY --metric auroc --baseline 0.82\n"
        "  hokusai model register --token-id XRAY --model-path model.pkl \\\n"
        "      --metric auroc --baseline 0.82 --metric-value 0.86\n"
        "  hokusai model status --token-id XRAY\n"
        "  hokusai events watch --token-id XRAY\n"
        "  hokusai --api-url https://registry.example.com model list --status registered\n"
        "\n"
        "\b\n"
        "Exit codes: 0 ok, 1 unexpected answer, 2 usage, 3 auth, 4 not found or conflict,\n"
        "5 refused input, 6 server or network, 7 watch timed out, 130 interrupted.\n"
        "Reference: docs/cli.md"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
model_app = typer.Typer(help="Register models and see their status.", no_args_is_help=True)
token_app = typer.Typer(help="Create, show, list, deploy and archive tokens.", no_args_is_help=True)
events_app = typer.Typer(help="Read and follow the events feed.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Manage webhook endpoints and their deliveries.", no_args_is_help=True
)
app.add_typer(model_app, name="model")
app.add_typer(token_app, name="token")
app.add_typer(events_app, name="events")
app.add_typer(webhooks_app, name="webhooks")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hokusai {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    api_url: Annotated[
        str,
        typer.Option("--api-url", envvar="HOKUSAI_API_URL", help="The service's base URL."),
    ] = DEFAULT_API_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="HOKUSAI_API_KEY",
            help="API key (prefer the environment variable: a flag shows in `ps`).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the service to answer.")
    ] = 30.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0, max=10, help="Retries of a connection failure or a 503 with Retry-After."
        ),
    ] = 3,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    source = ctx.get_parameter_source("api_key")
    given_source = "HOKUSAI_API_KEY" if source and source.name == "ENVIRONMENT" else "--api-key"
    key, key_source = resolve_api_key(api_key, given_source, api_url)
    ctx.obj = Settings(
        api_url=api_url.rstrip("/"),
        api_key=key,
        key_source=key_source,
        timeout=timeout,
        retries=retries,
    )


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the service's JSON unchanged, for scripts.")
]
TokenIdArgument = Annotated[
    str | None,
    typer.Argument(metavar="TOKEN_ID", help="The token's id (or --token-id).", show_default=False),
]
TokenIdOption = Annotated[
    str | None,
    typer.Option("--token-id", "-t", help="The token's id.", show_default=False),
]


def _token_id(argument: str | None, option: str | None) -> str:
    if argument and option and argument.upper() != option.upper():
        raise usage_error(f"two different token ids given: {argument} and --token-id {option}")
    token_id = (argument or option or "").strip()
    if not token_id:
        raise usage_error("give the token id, as an argument or with --token-id")
    return token_id


def _pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """`KEY=VALUE` options as a dict; a repeated key is a usage error."""
    result: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise usage_error(f"{option} takes KEY=VALUE, got {item!r}")
        if key in result:
            raise usage_error(f"{option} {key} is given twice")
        result[key] = value
    return result


class TokenStatus(enum.StrEnum):
    DRAFT = "draft"
    REGISTERING = "registering"
    REGISTERED = "registered"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ARCHIVED = "archived"


# Tokens ------------------------------------------------------------------------------------------


def _print_token(token: Mapping[str, Any], title: str | None = None) -> None:
    benchmark = (
        f"{token.get('metric')} (baseline {_num(token.get('baseline'))})"
        if token.get("metric")
        else None
    )
    version = (
        f"{token.get('model_name')} version {token.get('model_version')}"
        if token.get("model_version")
        else token.get("model_name")
    )
    _print_fields(
        title or f"Token {token.get('token_id')}",
        [
            ("status", _status(token.get("status"))),
            ("name", token.get("name")),
            ("benchmark", benchmark),
            ("score", _num(token.get("metric_value"))),
            ("model", version),
            ("model URI", token.get("model_uri")),
            ("MLflow run", token.get("mlflow_run_id")),
            ("registered", _time(token.get("registered_at"))),
            ("created", _time(token.get("created_at"))),
            ("updated", _time(token.get("updated_at"))),
            ("metadata", token.get("metadata")),
        ],
    )


def _token_rows(tokens: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(token.get("token_id") or ""),
            str(token.get("status") or ""),
            str(token.get("name") or ""),
            str(token.get("metric") or ""),
            _num(token.get("baseline")),
            _num(token.get("metric_value")),
            str(token.get("model_name") or ""),
            str(token.get("model_version") or ""),
            _time(token.get("updated_at")),
        ]
        for token in tokens
    ]


_TOKEN_COLUMNS = (
    "TOKEN",
    "STATUS",
    "NAME",
    "METRIC",
    "BASELINE",
    "SCORE",
    "MODEL",
    "VERSION",
    "UPDATED (UTC)",
)


def _list_tokens(
    ctx: typer.Context,
    *,
    status: TokenStatus | None,
    limit: int | None,
    every: bool,
    json_output: bool,
    empty: str,
) -> None:
    with Api(_settings(ctx)) as api:
        params: dict[str, Any] = {"status": status.value if status else None, "limit": limit}
        response = api.request("GET", "/tokens", params=params)
        if not every:
            if json_output:
                _write_stdout(response.text)
                return
            page = _json(response)
            tokens = _items(page)
            cursor = page.get("next_cursor") if isinstance(page, dict) else None
        else:
            tokens, cursor = [], None
            page = _json(response)
            while True:
                tokens.extend(_items(page))
                next_cursor = page.get("next_cursor") if isinstance(page, dict) else None
                if not next_cursor:
                    break
                page = _json(
                    api.request("GET", "/tokens", params={**params, "cursor": next_cursor})
                )
            if json_output:
                _write_stdout(json.dumps({"items": tokens, "next_cursor": None}))
                return
    if not tokens:
        typer.echo(empty)
        return
    _table(_TOKEN_COLUMNS, _token_rows(tokens), status_column=1)
    if cursor:
        typer.secho("more tokens: add --all to list every page", err=True, dim=True)


@token_app.command("create")
@_command
def token_create(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    name: Annotated[str | None, typer.Option(help="A readable name.")] = None,
    metric: Annotated[str | None, typer.Option(help="The benchmark's metric (e.g. auroc).")] = None,
    baseline: Annotated[
        float | None, typer.Option(help="The benchmark's baseline: a model must beat it.")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", metavar="KEY=VALUE", help="Metadata; repeat for more."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a draft token, optionally with the benchmark its model must beat.

    \b
    Examples:
      hokusai token create XRAY --name "Chest X-ray classifier" --metric auroc --baseline 0.82
      hokusai token create CHURN --metadata team=growth --json
    """
    tid = _token_id(token_id, token_id_option)
    if (metric is None) != (baseline is None):
        raise usage_error("a benchmark needs both --metric and --baseline")
    body: dict[str, Any] = {"token_id": tid}
    if name is not None:
        body["name"] = name
    if metric is not None:
        body["metric"], body["baseline"] = metric, baseline
    if metadata:
        body["metadata"] = _pairs(metadata, "--metadata")
    with Api(_settings(ctx)) as api:
        response = api.request(
            "POST", "/tokens", json_body=body, expected=(201,), idempotent=False, token_id=tid
        )
    if json_output:
        _write_stdout(response.text)
        return
    token = _json(response)
    _print_token(token, f"Created token {token.get('token_id')}")


@token_app.command("show")
@_command
def token_show(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one token: its status, benchmark and registered model.

    \b
    Examples:
      hokusai token show XRAY
      hokusai token show XRAY --json
    """
    tid = _token_id(token_id, token_id_option)
    with Api(_settings(ctx)) as api:
        response = api.request("GET", _path("tokens", tid), token_id=tid)
    if json_output:
        _write_stdout(response.text)
        return
    _print_token(_json(response))


@token_app.command("list")
@_command
def token_list(
    ctx: typer.Context,
    status: Annotated[
        TokenStatus | None, typer.Option(help="Only tokens in this status.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Tokens per page (the service's default: 50).")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_output: JsonOption = False,
) -> None:
    """List tokens, newest first.

    \b
    Examples:
      hokusai token list
      hokusai token list --status draft --all
      hokusai token list --json
    """
    _list_tokens(
        ctx, status=status, limit=limit, every=every, json_output=json_output, empty="no tokens"
    )


def _set_status(ctx: typer.Context, token_id: str, status: str, json_output: bool) -> None:
    with Api(_settings(ctx)) as api:
        response = api.request(
            "PATCH",
            _path("tokens", token_id),
            json_body={"status": status},
            idempotent=False,
            token_id=token_id,
        )
    if json_output:
        _write_stdout(response.text)
        return
    token = _json(response)
    _print_token(token, f"Token {token.get('token_id')} is now {token.get('status')}")


@token_app.command("deploy")
@_command
def token_deploy(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Mark a registered token deployed (announced as `model_deployed`).

    \b
    Examples:
      hokusai token deploy XRAY
    """
    _set_status(ctx, _token_id(token_id, token_id_option), "deployed", json_output)


@token_app.command("archive")
@_command
def token_archive(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Archive a token (from any status).

    \b
    Examples:
      hokusai token archive XRAY
    """
    _set_status(ctx, _token_id(token_id, token_id_option), "archived", json_output)


# Models ------------------------------------------------------------------------------------------


def _print_registration(registration: Mapping[str, Any]) -> None:
    metric = registration.get("metric") or {}
    artifact = registration.get("artifact") or {}
    check = None
    if metric:
        improvement = metric.get("improvement")
        sign = "+" if isinstance(improvement, int | float) and improvement >= 0 else ""
        check = (
            f"{metric.get('name')} {_num(metric.get('value'))} against baseline "
            f"{_num(metric.get('baseline'))} (improvement {sign}{_num(improvement)})"
        )
    stored = None
    if artifact:
        stored = (
            f"{artifact.get('filename')} ({artifact.get('format')}, "
            f"{_size(artifact.get('size_bytes'))}), sha256 {artifact.get('sha256')}"
        )
    _print_fields(
        f"Registered a model for {registration.get('token_id')}",
        [
            (
                "model",
                f"{registration.get('model_name')} version {registration.get('model_version')}",
            ),
            ("model URI", registration.get("model_uri")),
            ("MLflow run", registration.get("mlflow_run_id")),
            ("metric", check),
            ("artifact", stored),
            ("API schema", "yes" if registration.get("api_schema") else None),
            ("registration", registration.get("registration_id")),
        ],
    )


@model_app.command("register")
@_command
def model_register(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Option("--token-id", "-t", help="The token to register for.")],
    model_path: Annotated[
        Path,
        typer.Option(
            "--model-path",
            "-m",
            exists=True,
            readable=True,
            help="A model file, or an MLflow model folder (packed on the fly).",
        ),
    ],
    metric: Annotated[str, typer.Option(help="The metric's name (e.g. auroc).")],
    baseline: Annotated[float, typer.Option(help="The score to beat: the token's baseline.")],
    metric_value: Annotated[
        float | None,
        typer.Option(help="The model's score on the benchmark (or give --predictions)."),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV with y_true and y_pred and/or y_score; the service scores it.",
        ),
    ] = None,
    min_improvement: Annotated[
        float | None, typer.Option(help="How much better than the baseline (default 0).")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="MLflow registered model name (default hokusai-TOKEN).")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="KEY=VALUE", help="A tag for the MLflow run; repeat."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Reuse the key of an interrupted run to get its outcome instead of a second "
            "registration (default: a new key, printed if the outcome is unknown).",
            show_default=False,
        ),
    ] = None,
    pack_format: Annotated[
        PackFormat, typer.Option("--pack-format", help="How a model folder is packed.")
    ] = PackFormat.TAR_GZ,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars on stderr (default: only on a terminal).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Register a model for a draft or failed token; exits 0 only when it is registered (201).

    The file's sha256 is computed and sent with the metric fields ahead of the file, so a bad
    metric is refused before the upload. The upload streams from disk. Transient failures are
    retried under one Idempotency-Key, so a model is never registered twice.

    \b
    Examples:
      hokusai model register --token-id XRAY --model-path model.pkl \\
          --metric auroc --baseline 0.82 --metric-value 0.86
      hokusai model register -t XRAY -m ./mlflow-model/ --metric auroc --baseline 0.82 \\
          --predictions scores.csv --tag framework=sklearn --json
    """
    if (metric_value is None) == (predictions is None):
        raise usage_error("give exactly one of --metric-value and --predictions")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
        raise usage_error("--idempotency-key takes 1 to 255 characters")
    tags = _pairs(tag, "--tag")
    settings = _settings(ctx)
    key = idempotency_key or f"cli-{secrets.token_hex(16)}"
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="hokusai-") as scratch,
        _Bars(_show_progress(progress)) as bars,
    ):
        if model_path.is_dir():
            bars.note(f"packing {model_path} as .{pack_format.value}")
            upload = pack_folder(model_path, Path(scratch), pack_format)
        else:
            upload = model_path
        size = upload.stat().st_size
        sha256 = sha256_file(upload, bars.task("sha256", size))
        fields = [("metric", metric), ("baseline", repr(baseline))]
        if metric_value is not None:
            fields.append(("metric_value", repr(metric_value)))
        if min_improvement is not None:
            fields.append(("min_improvement", repr(min_improvement)))
        if model_name:
            fields.append(("model_name", model_name))
        if tags:
            fields.append(("tags", json.dumps(tags)))
        fields.append(("sha256", sha256))
        files = []
        if predictions is not None:
            files.append(
                FilePart(
                    "predictions",
                    predictions,
                    predictions.name,
                    predictions.stat().st_size,
                    "text/csv",
                )
            )
        files.append(FilePart("model_file", upload, upload.name, size))
        body = MultipartBody(fields, files)
        attempts = 0

        def content() -> Iterator[bytes]:
            nonlocal attempts
            attempts += 1
            label = f"upload {upload.name}" + (f" (try {attempts})" if attempts > 1 else "")
            return body.chunks(bars.task(label, len(body)))

        with Api(settings) as api:
            try:
                response = api.request(
                    "POST",
                    _path("models", token_id, "register"),
                    expected=(201,),
                    content=content,
                    headers={**body.headers(), "Idempotency-Key": key},
                    idempotent=True,
                    read_timeout=max(settings.timeout, REGISTER_READ_TIMEOUT),
                    token_id=token_id,
                )
            except CliError as e:
                if e.exit_code is Exit.UNAVAILABLE and e.body is None:
                    e.hint = _unknown_outcome_hint(key)
                raise
            except KeyboardInterrupt:
                raise CliError(
                    "interrupted", exit_code=Exit.INTERRUPTED, hint=_unknown_outcome_hint(key)
                ) from None
    if json_output:
        _write_stdout(response.text)
        return
    _print_registration(_json(response))


def _unknown_outcome_hint(key: str) -> str:
    return (
        f"the outcome is unknown; run the same command with --idempotency-key {key} to learn "
        "it: a registration that went through is answered again, never made twice"
    )


@model_app.command("status")
@_command
def model_status(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Registrations to show.")] = 10,
    json_output: JsonOption = False,
) -> None:
    """Show a token's registration status and its latest registration attempts.

    With --json: {"token": <GET /tokens/ID>, "registrations": <its "items">}.

    \b
    Examples:
      hokusai model status --token-id XRAY
      hokusai model status XRAY --json
    """
    tid = _token_id(token_id, token_id_option)
    with Api(_settings(ctx)) as api:
        token = _json(api.request("GET", _path("tokens", tid), token_id=tid))
        page = _json(
            api.request(
                "GET", _path("tokens", tid, "registrations"), params={"limit": limit}, token_id=tid
            )
        )
    registrations = _items(page)
    if json_output:
        _write_stdout(json.dumps({"token": token, "registrations": registrations}))
        return
    _print_token(token)
    if not registrations:
        typer.echo("\nNo registration attempts yet.")
        return
    typer.echo("")
    typer.secho("Registration attempts (newest first)", bold=True)
    rows = []
    for item in registrations:
        metric = item.get("metric") or {}
        error = item.get("error") or {}
        rows.append(
            [
                _time(item.get("created_at")),
                str(item.get("status") or ""),
                f"{metric.get('name')} {_num(metric.get('value'))}" if metric else "",
                str(item.get("model_version") or ""),
                str(error.get("code") or ""),
                str(item.get("registration_id") or ""),
            ]
        )
    _table(
        ("CREATED (UTC)", "STATUS", "SCORE", "VERSION", "ERROR", "REGISTRATION"),
        rows,
        status_column=1,
    )


@model_app.command("list")
@_command
def model_list(
    ctx: typer.Context,
    status: Annotated[
        TokenStatus | None,
        typer.Option(help="Only tokens in this status (e.g. registered).", show_default=False),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Tokens per page (the service's default: 50).")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_output: JsonOption = False,
) -> None:
    """List tokens with their registered models (GET /tokens).

    \b
    Examples:
      hokusai model list --status registered
      hokusai model list --all --json
    """
    _list_tokens(
        ctx, status=status, limit=limit, every=every, json_output=json_output, empty="no models"
    )


# Events ------------------------------------------------------------------------------------------


def event_summary(event: Mapping[str, Any]) -> str:
    """One line about an event's payload."""
    payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
    assert isinstance(payload, dict)
    kind = event.get("event_type")
    model = f"{payload.get('model_name')} version {payload.get('model_version')}"
    if kind == "model_registered":
        return (
            f"{model}: {payload.get('metric_name')} {_num(payload.get('metric_value'))} "
            f"(baseline {_num(payload.get('baseline_value'))})"
        )
    if kind == "token_ready_for_deploy":
        return f"{model} ready to deploy"
    if kind in ("model_validation_failed", "registration_failed"):
        return f"{payload.get('code')}: {payload.get('detail')}"
    if kind == "model_deployed":
        return model
    if kind == "ping":
        return f"webhook {payload.get('webhook_id')}"
    text = json.dumps(payload, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def event_line(event: Mapping[str, Any]) -> str:
    return (
        f"{event.get('sequence')!s:>6}  {_time(event.get('timestamp'))}  "
        f"{event.get('event_type')!s:<24}  {event.get('token_id') or '-'!s:<12}  "
        f"{event_summary(event)}"
    )


AfterOption = Annotated[
    int, typer.Option(min=0, help="Start after this sequence number (0: from the first event).")
]
EventTypeOption = Annotated[
    str | None, typer.Option("--event-type", "-e", help="Only this event type.", show_default=False)
]


@events_app.command("list")
@_command
def events_list(
    ctx: typer.Context,
    after: AfterOption = 0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many events.", show_default=False)
    ] = None,
    event_type: EventTypeOption = None,
    token_id: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """List events in sequence order (one page of GET /events).

    \b
    Examples:
      hokusai events list
      hokusai events list --token-id XRAY --event-type model_registered
      hokusai events list --after 120 --limit 50 --json
    """
    params = {"after": after, "limit": limit, "event_type": event_type, "token_id": token_id}
    with Api(_settings(ctx)) as api:
        response = api.request("GET", "/events", params=params, token_id=token_id)
    if json_output:
        _write_stdout(response.text)
        return
    page = _json(response)
    events = _items(page, "events")
    if not events:
        typer.echo("no events")
    else:
        _table(
            ("SEQ", "TIME (UTC)", "TYPE", "TOKEN", "DETAIL"),
            [
                [
                    str(event.get("sequence")),
                    _time(event.get("timestamp")),
                    str(event.get("event_type")),
                    str(event.get("token_id") or ""),
                    event_summary(event),
                ]
                for event in events
            ],
        )
    if isinstance(page, dict) and page.get("next_after") is not None:
        typer.secho(f"next page: --after {page['next_after']}", err=True, dim=True)


@events_app.command("watch")
@_command
def events_watch(
    ctx: typer.Context,
    after: AfterOption = 0,
    event_type: EventTypeOption = None,
    token_id: TokenIdOption = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many events.", show_default=False)
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Stop after this many seconds (exit 7 if --count events have not come).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One event envelope (JSON) per line.")
    ] = False,
) -> None:
    """Follow the events feed (long-polling) and print each event as it arrives.

    Starts after --after (0: replays the feed from its first event), then waits for new ones
    until Ctrl-C, --count or --timeout. Connection failures are retried (up to 10 in a row).

    \b
    Examples:
      hokusai events watch
      hokusai events watch --token-id XRAY --event-type model_registered --count 1 --timeout 120
      hokusai events watch --after 120 --json | jq .payload
    """
    settings = _settings(ctx)
    deadline = time.monotonic() + timeout if timeout is not None else None
    seen = 0
    with Api(settings) as api:
        while True:
            wait = WATCH_WAIT_SECONDS
            if deadline is not None:
                wait = max(0, min(wait, math.ceil(deadline - time.monotonic())))
            asked = time.monotonic()
            params = {
                "after": after,
                "event_type": event_type,
                "token_id": token_id,
                "wait": wait,
            }
            response = api.request(
                "GET",
                "/events",
                params=params,
                read_timeout=wait + settings.timeout,
                retries=max(settings.retries, WATCH_MAX_FAILURES),
                token_id=token_id,
            )
            page = _json(response)
            events = _items(page, "events")
            for event in events:
                _write_stdout(
                    json.dumps(event, separators=(",", ":")) if json_output else event_line(event)
                )
                seen += 1
                if count is not None and seen >= count:
                    return
            next_after = page.get("next_after") if isinstance(page, dict) else None
            if isinstance(next_after, int) and next_after >= after:
                after = next_after
            if not events and wait and time.monotonic() - asked < 1.0:
                # A feed that answers at once instead of holding the request: do not spin.
                time.sleep(1.0)
            if deadline is not None and time.monotonic() >= deadline:
                if count is not None:
                    raise CliError(
                        f"{seen} of {count} events arrived within {timeout:g} s",
                        exit_code=Exit.TIMEOUT,
                    )
                return


# Webhooks ----------------------------------------------------------------------------------------


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


WebhookId = Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The webhook's id.")]


def _print_webhook(webhook: Mapping[str, Any], title: str) -> None:
    _print_fields(
        title,
        [
            ("id", webhook.get("id")),
            ("url", webhook.get("url")),
            ("event types", ", ".join(map(str, webhook.get("event_types") or []))),
            ("description", webhook.get("description")),
            ("active", webhook.get("active")),
            ("created", _time(webhook.get("created_at"))),
        ],
    )


@webhooks_app.command("add")
@_command
def webhooks_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where events are POSTed.")],
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--event-type", "-e", help="An event type to send; repeat (default: all, '*')."
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the endpoint is for.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Add a webhook endpoint; its signing secret is shown this once.

    \b
    Examples:
      hokusai webhooks add https://example.com/hooks/hokusai
      hokusai webhooks add https://example.com/hook -e model_registered -e model_deployed \\
          --description "site backend"
    """
    body: dict[str, Any] = {"url": url, "event_types": list(event_type or ["*"])}
    if description is not None:
        body["description"] = description
    with Api(_settings(ctx)) as api:
        response = api.request(
            "POST", "/webhooks", json_body=body, expected=(201,), idempotent=False
        )
    if json_output:
        _write_stdout(response.text)
        return
    webhook = _json(response)
    _print_webhook(webhook, f"Added webhook {webhook.get('id')}")
    if webhook.get("secret"):
        typer.echo(f"  secret       {webhook['secret']}")
        typer.secho(
            "  (shown only now: keep it to verify the webhook-signature header)",
            fg="yellow",
        )


@webhooks_app.command("list")
@_command
def webhooks_list(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List webhook endpoints.

    \b
    Examples:
      hokusai webhooks list
      hokusai webhooks list --json
    """
    with Api(_settings(ctx)) as api:
        response = api.request("GET", "/webhooks")
    if json_output:
        _write_stdout(response.text)
        return
    webhooks = _items(_json(response))
    if not webhooks:
        typer.echo("no webhooks")
        return
    _table(
        ("ID", "URL", "EVENT TYPES", "ACTIVE", "DESCRIPTION", "CREATED (UTC)"),
        [
            [
                str(hook.get("id")),
                str(hook.get("url")),
                ",".join(map(str, hook.get("event_types") or [])),
                _text(bool(hook.get("active"))),
                str(hook.get("description") or ""),
                _time(hook.get("created_at")),
            ]
            for hook in webhooks
        ],
    )


@webhooks_app.command("remove")
@_command
def webhooks_remove(
    ctx: typer.Context, webhook_id: WebhookId, json_output: JsonOption = False
) -> None:
    """Remove a webhook endpoint.

    \b
    Examples:
      hokusai webhooks remove 3f6c1e2a-...
    """
    with Api(_settings(ctx)) as api:
        response = api.request(
            "DELETE", _path("webhooks", webhook_id), expected=(200, 204), idempotent=False
        )
    if json_output:
        _write_stdout(response.text or json.dumps({"id": webhook_id, "removed": True}))
        return
    typer.echo(f"removed webhook {webhook_id}")


@webhooks_app.command("deliveries")
@_command
def webhooks_deliveries(
    ctx: typer.Context,
    webhook_id: WebhookId,
    status: Annotated[
        DeliveryStatus | None,
        typer.Option(help="Only deliveries in this status.", show_default=False),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many (newest first).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List a webhook's deliveries, newest first: one per event, with attempts and last error.

    \b
    Examples:
      hokusai webhooks deliveries 3f6c1e2a-...
      hokusai webhooks deliveries 3f6c1e2a-... --status dead --json | jq '.items[].id'
    """
    params = {"status": status.value if status else None, "limit": limit}
    with Api(_settings(ctx)) as api:
        response = api.request("GET", _path("webhooks", webhook_id, "deliveries"), params=params)
    if json_output:
        _write_stdout(response.text)
        return
    deliveries = _items(_json(response))
    if not deliveries:
        typer.echo("no deliveries")
        return
    _table(
        (
            "DELIVERY",
            "EVENT TYPE",
            "STATUS",
            "ATTEMPTS",
            "LAST CODE",
            "LAST ERROR",
            "NEXT ATTEMPT (UTC)",
            "DELIVERED (UTC)",
        ),
        [
            [
                str(item.get("id")),
                str(item.get("event_type") or ""),
                str(item.get("status") or ""),
                _num(item.get("attempts")),
                _num(item.get("last_status_code")),
                str(item.get("last_error") or ""),
                _time(item.get("next_attempt_at")),
                _time(item.get("delivered_at")),
            ]
            for item in deliveries
        ],
        status_column=2,
    )


@webhooks_app.command("retry")
@_command
def webhooks_retry(
    ctx: typer.Context,
    webhook_id: WebhookId,
    delivery_id: Annotated[str, typer.Argument(metavar="DELIVERY_ID", help="The delivery.")],
    json_output: JsonOption = False,
) -> None:
    """Send a delivery again now (a dead one too).

    \b
    Examples:
      hokusai webhooks retry 3f6c1e2a-... 9b1d7c40-...
    """
    with Api(_settings(ctx)) as api:
        response = api.request(
            "POST",
            _path("webhooks", webhook_id, "deliveries", delivery_id, "retry"),
            expected=(202,),
            idempotent=False,
        )
    if json_output:
        _write_stdout(response.text or "{}")
        return
    delivery = _json(response) if response.content else {}
    attempts = delivery.get("attempts") if isinstance(delivery, dict) else None
    done = f" ({attempts} attempts so far)" if isinstance(attempts, int) else ""
    typer.echo(f"delivery {delivery_id} is queued for another attempt{done}")


@webhooks_app.command("test")
@_command
def webhooks_test(
    ctx: typer.Context, webhook_id: WebhookId, json_output: JsonOption = False
) -> None:
    """Send a `ping` event to this endpoint alone.

    \b
    Examples:
      hokusai webhooks test 3f6c1e2a-...
    """
    with Api(_settings(ctx)) as api:
        response = api.request(
            "POST", _path("webhooks", webhook_id, "test"), expected=(202,), idempotent=False
        )
    if json_output:
        _write_stdout(response.text or "{}")
        return
    typer.echo(
        f"ping queued for webhook {webhook_id}; see `hokusai webhooks deliveries {webhook_id}`"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
