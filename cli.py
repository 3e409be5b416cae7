"""The `hokusai` command: a thin HTTP client of the registration service."""


def main() -> None:
    raise SystemExit("hokusai: the CLI is not built yet")
