"""Where the service is and which key to use: arguments, the environment, the dev key file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_API_URL = "http://127.0.0.1:8000"
# HOKUSAI_API_URL is this service's name for it; HOKUSAI_API_ENDPOINT is the Hokusai SDK's.
API_URL_VARIABLES = ("HOKUSAI_API_URL", "HOKUSAI_API_ENDPOINT")
API_KEY_VARIABLE = "HOKUSAI_API_KEY"
DEV_KEY_FILENAME = "dev-api-key"
DEFAULT_DATA_DIR = Path(".hokusai")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def resolve_api_url(given: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The service's base URL: `given`, else HOKUSAI_API_URL, else HOKUSAI_API_ENDPOINT, else
    the local default. Trailing slashes are dropped."""
    environ = os.environ if environ is None else environ
    for candidate in (given, *(environ.get(name) for name in API_URL_VARIABLES)):
        if candidate and candidate.strip():
            return candidate.strip().rstrip("/")
    return DEFAULT_API_URL


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
    """The key and where it came from: `given` (from a flag or HOKUSAI_API_KEY), else the dev key
    file.

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
