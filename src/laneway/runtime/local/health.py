"""Health checks against a process's internal port: a TCP connect, or an HTTP GET of a path."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["check_health"]


async def check_health(port: int, health: str, timeout: float = 1.0) -> str | None:
    """None when healthy, otherwise what went wrong (shown in status messages)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout
        )
    except TimeoutError:
        return f"connect to port {port} timed out"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    except RuntimeError as exc:  # uvloop raises it for a socket reset under its feet
        return f"port {port}: {exc}"
    try:
        if health == "tcp":
            return None
        writer.write(
            f"GET {health} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: laneway-health\r\n"
            "connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return f"GET {health}: not an HTTP answer"
        status = int(parts[1])
        if 200 <= status < 400:
            return None
        return f"GET {health} answered {status}"
    except TimeoutError:
        return f"GET {health}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"GET {health}: {exc.strerror or exc}"
    except RuntimeError as exc:
        # Under uvloop, writing to a socket the peer reset raises RuntimeError, not OSError:
        # an unhealthy answer, never a reason for the supervisor to die.
        return f"GET {health}: {exc}"
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
            await writer.wait_closed()
