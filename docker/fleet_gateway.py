"""The Fleet gateway: publishes only the SuperLink's Fleet API to the devices.

Flower 1.41's SuperLink serves its Fleet (``/v1/fleet/*``), Control
(``/v1/control/*``) and Runtime (``/v1/runtime/*``) HTTP APIs on one host and
port (``--host``/``--port``; ``--fleet-api-address`` and
``--control-api-address`` only configure legacy gRPC servers that the 1.41
SuperNode and CLI no longer use), and its Control API has no authentication
without Flower Enterprise (OIDC). Whoever reaches that port can therefore
register a node key or start an app. This gateway stands between the devices
and the SuperLink: it terminates TLS with the SuperLink's certificate, forwards
``POST /v1/fleet/<name>`` requests (headers and body unchanged, so each node's
signature still reaches the SuperLink's node authentication) to the SuperLink
over TLS, and answers everything else with 404 without contacting the SuperLink.

Run with the Python of Flower's images (it uses only Flower's own dependencies:
Starlette, httpx, uvicorn)::

    python fleet_gateway.py --host 0.0.0.0 --port 9092 --upstream superlink:9093 \\
        --ssl-certfile server.crt --ssl-keyfile server.key --upstream-ca ca.crt

``--insecure`` serves and forwards plain HTTP (compose.insecure.yml only).
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
from collections.abc import Sequence

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z0-9-]*$")  # one route name: no dots, slashes or escapes
# Hop-by-hop headers (RFC 9110, 7.6.1) and those httpx sets itself for the upstream request.
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
REFUSED = "fleet gateway: only POST /v1/fleet/* is served here (the Control and Runtime APIs are not)\n"


def is_fleet_request(method: str, path: str) -> bool:
    """Whether a request is one of the Fleet API's calls, the only ones forwarded."""
    return method == "POST" and FLEET_PATH.fullmatch(path) is not None


def create_app(upstream: str, client: httpx.AsyncClient) -> Starlette:
    """The gateway's ASGI app, forwarding Fleet calls to ``upstream`` (a base URL) with ``client``."""

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.url.query or not is_fleet_request(request.method, path):
            return PlainTextResponse(REFUSED, status_code=404)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
        outgoing = client.build_request(
            "POST", upstream + path, headers=headers, content=await request.body()
        )
        try:
            reply = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            return PlainTextResponse(
                f"fleet gateway: the SuperLink is unreachable ({exc})\n", status_code=502
            )
        reply_headers = {k: v for k, v in reply.headers.items() if k.lower() not in _NOT_FORWARDED}
        return StreamingResponse(
            reply.aiter_raw(),
            status_code=reply.status_code,
            headers=reply_headers,
            background=BackgroundTask(reply.aclose),
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Publish only the Fleet API of a Flower SuperLink.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    parser.add_argument("--upstream", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--ssl-certfile", help="the certificate presented to the devices")
    parser.add_argument("--ssl-keyfile", help="its private key")
    parser.add_argument("--upstream-ca", help="CA certificate that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (one-host trials)")
    args = parser.parse_args(argv)
    tls = [args.ssl_certfile, args.ssl_keyfile, args.upstream_ca]
    if args.insecure and any(tls):
        parser.error("--insecure excludes --ssl-certfile, --ssl-keyfile and --upstream-ca")
    if not args.insecure and not all(tls):
        parser.error("--ssl-certfile, --ssl-keyfile and --upstream-ca are required (or --insecure)")
    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", args.upstream):
        parser.error(f"--upstream must be HOST:PORT, not {args.upstream!r}")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    scheme = "http" if args.insecure else "https"
    verify: ssl.SSLContext | bool = (
        False if args.insecure else ssl.create_default_context(cafile=args.upstream_ca)
    )
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)
    client = httpx.AsyncClient(verify=verify, timeout=timeout)
    app = create_app(f"{scheme}://{args.upstream}", client)
    print(
        f"fleet gateway: {scheme}://{args.host}:{args.port} forwards POST /v1/fleet/* to "
        f"{scheme}://{args.upstream}; every other request gets 404",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
