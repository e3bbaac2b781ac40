"""python-socketio's asyncio client at its defaults (polling, then upgrade to
websocket), N sessions through URL, session i from source address
127.0.0.(FIRST+i) (an aiohttp session bound to it, standing for N machines).
Prints one JSON line: per session, the backend that acked over polling and
after the upgrade, the transports, and the broadcast received.
Usage: pyclient.py URL N FIRST"""
import asyncio
import json
import sys

import aiohttp
import socketio


async def session(url, local):
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))
    c = socketio.AsyncClient(reconnection=False, http_session=http)
    got = asyncio.get_running_loop().create_future()
    c.on("broadcast", lambda m: got.done() or got.set_result(m))
    try:
        await asyncio.wait_for(c.connect(url), 15)
        first = await c.call("hello", timeout=10)
        for _ in range(500):
            if c.transport() == "websocket":
                break
            await asyncio.sleep(0.02)
        second = await c.call("hello", timeout=10)
        await c.emit("shout", "hi")
        broadcast = await asyncio.wait_for(got, 10)
        return {"first": first, "transport": c.transport(), "second": second, "broadcast": broadcast, "sid": c.get_sid(), "eio_sid": c.eio.sid}
    finally:
        await c.disconnect()
        await http.close()


async def main():
    url, n, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = []
    for i in range(n):
        out.append(await session(url, f"127.0.0.{first + i}"))
    print(json.dumps(out), flush=True)


asyncio.run(main())
