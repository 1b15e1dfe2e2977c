"""`kiban serve`: every role over the data in DIR."""

from pathlib import Path

import typer


def serve(
    data: Path = typer.Option(Path("var/demo"), "--data", help="Data directory."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
) -> None:
    """Serve the web UI, the APIs, OCSP and CRLs."""
    import uvicorn

    from kiban.core.config import load_settings
    from kiban.core.database import upgrade
    from kiban.core.logging import configure_logging
    from kiban.web.app import create_app

    # JSON log lines with secrets redacted; uvicorn's own records go through the same handler.
    configure_logging("INFO", json=True)
    settings = load_settings(data)
    settings.ensure_dirs()
    # The schema is brought to head first, so a fresh data directory serves at once.
    upgrade(settings.database_url)
    app = create_app(settings)
    typer.echo(f"Kiban serving {settings.data_dir} on http://{host}:{port}/ (OpenAPI at /openapi.json)")
    # proxy_headers stays off: client addresses feed the login rate limit, and only a
    # deployment that knows its proxies may trust X-Forwarded-For (uvicorn --forwarded-allow-ips).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, server_header=False, log_config=None)
