"""Run the app on uvicorn until Ctrl-C, announcing the address once it listens."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

from llmgen.errors import LLMGenError
from llmgen.serving.app import create_app
from llmgen.serving.service import ModelService


def serve_forever(service: ModelService, host: str, port: int, api_key: str | None,
                  on_listening: Callable[[str], None]) -> None:
    """Serve until interrupted; on_listening gets each bound address's base URL (the port known then, when
    port 0 asked for any free one). uvicorn's own logging is off: the access log is app.py's."""
    config = uvicorn.Config(create_app(service, api_key), host=host, port=port, log_level="critical",
                            access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    startup = server.startup

    async def startup_then_announce(sockets=None):
        await startup(sockets=sockets)
        if server.started:
            for listener in server.servers:
                for sock in listener.sockets:
                    address, bound_port = sock.getsockname()[:2]
                    shown = f"[{address}]" if ":" in address else address
                    on_listening(f"http://{shown}:{bound_port}/v1")

    server.startup = startup_then_announce  # type: ignore[method-assign]
    service.start()
    try:
        server.run()
    except SystemExit:  # uvicorn's way of saying it could not bind
        raise LLMGenError(f"could not listen on {host}:{port}: the port is in use, or the address is not this "
                          "machine's") from None
    finally:
        service.close()
