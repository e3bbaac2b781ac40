"""One backend instance: python-socketio's ASGI server on uvicorn, at its
defaults (path /socket.io/, polling then websocket), plus GET /healthz.
Prints JSON lines on stdout. Usage: pyapp.py NAME"""
import json
import socket
import sys

import socketio
import uvicorn

name = sys.argv[1]
sio = socketio.AsyncServer(async_mode="asgi")


def log(**kw):
    print(json.dumps({"backend": name, **kw}), flush=True)


async def other(scope, receive, send):
    """Everything that is not Socket.IO: /healthz, else 404."""
    if scope["type"] != "http":
        return
    ok = scope["path"] == "/healthz"
    await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": []})
    await send({"type": "http.response.body", "body": b"ok" if ok else b""})


@sio.event
async def connect(sid, environ):
    log(ev="sio", id=sid, transport=sio.transport(sid))


@sio.event
async def hello(sid):
    return name


@sio.event
async def shout(sid, text):
    await sio.emit("broadcast", f"{name}:{text}")


engine = socketio.ASGIApp(sio, other_asgi_app=other)


async def app(scope, receive, send):
    """Logs each long-polling request's engine session ID, then serves it."""
    if scope["type"] == "http" and scope["path"].startswith("/socket.io"):
        q = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        if q.get("transport") == "polling":
            log(ev="poll", method=scope["method"], eio_sid=q.get("sid"))
    await engine(scope, receive, send)


sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
log(ev="listening", port=sock.getsockname()[1])
config = uvicorn.Config(app, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
