"""Reference servers on the same uvicorn settings as `plexus run` (uvloop + httptools, no access log):

- ``asgi``: raw ASGI answering a small JSON on every path — the floor of uvicorn on this machine;
- ``fastapi``: one FastAPI route built with shared.http.create_base_app, i.e. the middleware every
  Plexus service has — the floor of a Plexus service, to tell framework cost from gateway cost.

    python -m bench.hello --port P [--framework asgi|fastapi]
"""

from __future__ import annotations

import argparse

BODY = b'{"status":"ok","hello":"world"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def fastapi_app():
    from shared.http import create_base_app

    fa = create_base_app("hello")

    @fa.get("/v1/parameters")
    async def parameters() -> dict:
        return {"status": "ok", "hello": "world"}

    return fa


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--framework", choices=["asgi", "fastapi"], default="asgi")
    a = p.parse_args()
    target = app if a.framework == "asgi" else fastapi_app()
    uvicorn.run(target, host="127.0.0.1", port=a.port, lifespan="off", access_log=False, log_level="warning",
                http="auto", loop="auto")


if __name__ == "__main__":
    main()
