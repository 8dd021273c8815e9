"""``esper serve`` (REST API + Nissa), ``esper token`` (local keys and tokens), ``esper alerts``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from streams import Backbone, EsperError

console = Console(stderr=True)
token_app = typer.Typer(no_args_is_help=True, help="Local signing keys and tokens for the REST API.")


def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8080)) -> None:
    """The REST API (/api/v1, OpenAPI at /docs and /openapi.json) and the Nissa page (/nissa/). Every API call
    needs a bearer JWT verified against ESPER_API_PUBLIC_KEYS / ESPER_API_JWKS_FILE / ESPER_API_JWKS_URL."""
    import uvicorn

    from esper_runtime.api.app import ApiData, create_app
    from esper_runtime.api.auth import ApiSettings, TokenVerifier

    settings = ApiSettings()
    verifier = TokenVerifier(settings)
    app = create_app(ApiData(Backbone()), verifier, settings)
    console.print(f"Esper API on http://{host}:{port}/api/v1 (issuer {settings.issuer!r}, audience "
                  f"{settings.audience!r}); Nissa at http://{host}:{port}/nissa/#token=...")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@token_app.command("keygen")
def keygen(out: Path = typer.Option(None, help="Directory (default $ESPER_HOME/api).")) -> None:
    """Make an ES256 key pair: private.pem signs tokens, public.pem is what `esper serve` verifies with."""
    from esper_runtime.api.auth import generate_keypair
    from streams import load_settings

    private, public = generate_keypair(out or load_settings().home / "api")
    console.print(f"wrote {private} (keep it secret) and {public}")


@token_app.command("issue")
def issue(subject: str = typer.Option("me", "--sub", help="Who the token is for."),
          roles: str = typer.Option("esper:read", help="Comma-separated roles (esper:write to submit)."),
          ttl: int = typer.Option(3600, help="Seconds until it expires."),
          key: Path = typer.Option(None, help="Private key (default $ESPER_HOME/api/private.pem).")) -> None:
    """Print a signed token for the configured issuer and audience."""
    from esper_runtime.api.auth import ApiSettings, issue_token
    from streams import load_settings

    key = key or load_settings().home / "api" / "private.pem"
    if not key.exists():
        raise EsperError(f"no private key at {key}: run `esper token keygen` first")
    settings = ApiSettings()
    print(issue_token(key.read_bytes(), subject, [r for r in roles.split(",") if r], settings.issuer,
                      settings.audience, ttl))


def alerts(run: str = typer.Option(..., "--run", help="The run id."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Evaluate the alert rules (loss spike, seed stuck, many culls) over a run's analytics tables."""
    from esper_runtime.nissa.alerts import evaluate
    from processors.clickhouse import open_store

    bb = Backbone()
    store = open_store(bb.settings)
    try:
        found = evaluate(store, run)
    finally:
        store.close()
    if as_json:
        print(json.dumps(found))
        return
    for a in found:
        Console().print(f"[{a['severity']}] {a['rule']}: {a['message']}")
    if not found:
        Console().print("no alerts")
