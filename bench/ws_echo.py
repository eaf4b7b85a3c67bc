#!/usr/bin/env python3
"""WebSocket echo round trips for bench/websocket (Python `websockets`, no compression).

  ws_echo.py serve            an echo server on 127.0.0.1; prints {"port": N}
  ws_echo.py client URL N     N sequential round trips of a 64-byte text message on one socket
                              (after 200 warm-up ones); prints {"p50_us", "p99_us", "n"}
"""
import asyncio
import json
import sys
import time


async def serve():
    from websockets.asyncio.server import serve as ws_serve

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with ws_serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await asyncio.sleep(900)  # bounded: the bench stops it long before


def client(url, n):
    from websockets.sync.client import connect

    msg = "x" * 64
    with connect(url, compression=None, open_timeout=10, additional_headers={"Authorization": "Bearer unused"}) as ws:
        for _ in range(200):
            ws.send(msg)
            ws.recv(timeout=10)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            ws.send(msg)
            ws.recv(timeout=10)
            lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
    print(json.dumps({"p50_us": round(pick(0.5), 1), "p99_us": round(pick(0.99), 1), "n": n}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve())
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 4:
        client(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
