"""A misbehaving upstream for the chaos suite: one process, switched between failure modes.

``python -m tests.support.chaos --port P``. ``GET /_mode/<mode>`` (always answered, never
counted) switches the mode; every other request is answered by the current mode:

- ``ok``: 200, a small JSON body;
- ``hang``: the head is read and nothing is ever sent (until the peer goes away);
- ``slow``: 200 after ``SLOW_S`` (2 s);
- ``reset``: a head announcing 1,000 bytes, 100 of them, then an RST;
- ``truncated``: a chunked head, one chunk, then the connection closes (no last chunk);
- ``giant_head``: a 1 MiB response head;
- ``flap``: ``FLAP_EVERY`` (3) answers 200, then 3 answers 503, and so on.

``GET /_hits`` answers the number of requests received in the current mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct

SLOW_S = 2.0
FLAP_EVERY = 3
MODES = ("ok", "hang", "slow", "reset", "truncated", "giant_head", "flap")


class Chaos:
    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                target = head.split(b" ", 2)[1].decode()
                if not await self.answer(target, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(self, target: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        if target.startswith("/_mode/"):
            self.mode, self.hits = target.removeprefix("/_mode/"), 0
            return _send(writer, 200, json.dumps({"mode": self.mode}).encode())
        if target == "/_hits":
            return _send(writer, 200, json.dumps({"hits": self.hits}).encode())
        self.hits += 1
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "slow":
            await asyncio.sleep(SLOW_S)
        if mode == "reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"r" * 100)
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "truncated":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            return False
        if mode == "giant_head":
            pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(1024))
            writer.write(b"HTTP/1.1 200 OK\r\n" + pad + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
            return True
        if mode == "flap" and (self.hits - 1) // FLAP_EVERY % 2 == 1:
            return _send(writer, 503, b'{"flap": "down"}')
        return _send(writer, 200, b'{"chaos": "ok"}')


def _send(writer: asyncio.StreamWriter, status: int, body: bytes) -> bool:
    reason = b"OK" if status == 200 else b"Service Unavailable"
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status, reason, len(body), body)
    )
    return True


async def main(port: int) -> None:
    chaos = Chaos()
    server = await asyncio.start_server(chaos.serve, "127.0.0.1", port, limit=4 * 1024 * 1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
