"""Python `websockets` peers at their defaults (permessage-deflate on) for
tests/compression.rs: a compressing echo backend, and a client that checks
the gateway's promises on compressed messages. Every wait is bounded.

  python3 deflate_peers.py server          # prints "port N", then one line per event
  python3 deflate_peers.py client URL      # exit 0 when every check passed
"""
import asyncio
import json
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

WAIT = 10
PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'


def say(**ev):
    print(json.dumps(ev), flush=True)


async def server():
    async def echo(ws):
        path = ws.request.path
        say(ev="conn", path=path, offer=ws.request.headers.get("Sec-WebSocket-Extensions", ""),
            agreed=ws.response.headers.get("Sec-WebSocket-Extensions", ""))
        try:
            async for msg in ws:
                say(ev="msg", path=path, text=msg if isinstance(msg, str) else None)
                if msg == "bad-utf8":
                    # Compressed text that is not UTF-8 (bytes sent as text).
                    await ws.send(b"hi\xff\xfe", text=True)
                else:
                    await ws.send(msg)
        except ConnectionClosed:
            pass
        say(ev="close", path=path, code=ws.close_code)

    async with serve(echo, "127.0.0.1", 0, max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


async def closed_with(ws):
    try:
        await asyncio.wait_for(ws.recv(), WAIT)
    except ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


async def client(url):
    async with connect(url + "/py-ping", max_size=None) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in ext and "client_no_context_takeover" in ext, ext
        await ws.send(PING)
        assert await asyncio.wait_for(ws.recv(), WAIT) == PONG
        # 1,000 compressed messages echo in order.
        for i in range(1000):
            await ws.send(json.dumps({"seq": i, "body": "lorem ipsum " * 20}))
        for i in range(1000):
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["seq"] == i
    async with connect(url + "/py-big", max_size=None) as ws:
        await ws.send("a" * (1 << 20))
        code = await closed_with(ws)
        assert code == 1009, code
    async with connect(url + "/py-utf8", max_size=None) as ws:
        await ws.send(b"ok \xff", text=True)
        code = await closed_with(ws)
        assert code == 1007, code
    async with connect(url + "/py-utf8-backend", max_size=None) as ws:
        await ws.send("bad-utf8")
        code = await closed_with(ws)
        assert code == 1014, code
    print("client ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(asyncio.wait_for(client(sys.argv[2]), 60))
