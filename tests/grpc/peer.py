"""gRPC server and client for Sidetrack's HTTP/2 tests (tests/tests/proxy_http2.rs).

Messages are raw bytes (no protobuf): the methods of the service
`test.Echo` take and return text, so no code generation is needed.

    peer.py serve PORT NAME [HOST]
                                  serve test.Echo on HOST:PORT (127.0.0.1), answering
                                  as NAME; prints "ready" when listening
    peer.py call TARGET AUTHORITY SCENARIO [ARG]
                                  run SCENARIO on one channel to TARGET (the proxy)
                                  with :authority AUTHORITY; prints one JSON object

The server exits when its stdin closes, so a test that dies takes it along.
"""

import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def serve(port, name, host):
    cancelled = {"n": 0}
    # The unary calls taken (the last 100), for Seen.
    seen = []

    def meta(ctx):
        return {k: v for k, v in ctx.invocation_metadata()}

    def unary(req, ctx):
        md = meta(ctx)
        seen.append({"echo": req.decode(), "shadow": md.get("l5d-shadow", ""), "dst_service": md.get("l5d-dst-service", "")})
        del seen[:-100]
        return json.dumps(
            {
                "server": name,
                "echo": req.decode(),
                "dst_client": md.get("l5d-dst-client", ""),
                "dst_service": md.get("l5d-dst-service", ""),
                "ctx_dtab": md.get("l5d-ctx-dtab", ""),
                "dtab": md.get("l5d-dtab", ""),
                "via": md.get("via", ""),
                "reqid": md.get("l5d-reqid", ""),
            }
        ).encode()

    def server_stream(req, ctx):
        for i in range(int(req)):
            yield f"{name} {i}".encode()

    def client_stream(it, ctx):
        total = 0
        count = 0
        for m in it:
            count += 1
            total += len(m)
        return f"{name} {count} {total}".encode()

    def bidi(it, ctx):
        for m in it:
            yield name.encode() + b" " + m

    def sleep(req, ctx):
        time.sleep(int(req) / 1000)
        return b"slept"

    def die(req, ctx):
        # Three messages, then the whole server goes (a backend killed mid-stream).
        for i in range(3):
            yield f"{name} {i}".encode()
        time.sleep(0.3)
        os._exit(3)

    def watch(req, ctx):
        # Streams until the client cancels; counts the cancellations.
        ctx.add_callback(lambda: cancelled.__setitem__("n", cancelled["n"] + 1))
        i = 0
        while ctx.is_active():
            yield f"{name} {i}".encode()
            i += 1
            time.sleep(0.02)

    def cancellations(req, ctx):
        return str(cancelled["n"]).encode()

    def seen_calls(req, ctx):
        return json.dumps(seen).encode()

    def big(req, ctx):
        # A stream of 64 KiB messages, as fast as flow control lets it go.
        chunk = b"x" * 65536
        for _ in range(int(req)):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Die": grpc.unary_stream_rpc_method_handler(die),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
            "Cancellations": grpc.unary_unary_rpc_method_handler(cancellations),
            "Seen": grpc.unary_unary_rpc_method_handler(seen_calls),
            "Big": grpc.unary_stream_rpc_method_handler(big),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    print("ready", flush=True)
    # Exits with the test: stdin closes when the test process goes.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    server.wait_for_termination()


def method(channel, kind, name):
    path = f"/{SERVICE}/{name}"
    return {
        "uu": channel.unary_unary,
        "us": channel.unary_stream,
        "su": channel.stream_unary,
        "ss": channel.stream_stream,
    }[kind](path)


def error(e):
    return {"code": e.code().name, "details": e.details()}


def call(target, authority, scenario, arg):
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    grpc.channel_ready_future(channel).result(timeout=10)
    out = {}
    if scenario == "kinds":
        out["unary"] = json.loads(method(channel, "uu", "Unary")(b"hi", timeout=10))
        out["server_stream"] = [m.decode() for m in method(channel, "us", "ServerStream")(b"5", timeout=10)]
        out["client_stream"] = method(channel, "su", "ClientStream")(iter([b"a" * 1000] * 7), timeout=10).decode()
        out["bidi"] = [m.decode() for m in method(channel, "ss", "Bidi")(iter([b"x", b"y", b"z"]), timeout=10)]
    elif scenario == "stage":
        # N[,DTAB]: N calls; the one at index N//2 carries the override DTAB.
        n, _, dtab = arg.partition(",")
        n = int(n)
        dtab = dtab or "/svc/world => /#/io.l5d.fs/world-v2"
        answers = []
        for i in range(n):
            md = [("l5d-dtab", dtab)] if i == n // 2 else []
            answers.append(json.loads(method(channel, "uu", "Unary")(str(i).encode(), metadata=md, timeout=10)))
        out["answers"] = answers
    elif scenario == "spread":
        counts = {}
        for i in range(int(arg)):
            a = json.loads(method(channel, "uu", "Unary")(b"s", timeout=10))
            counts[a["server"]] = counts.get(a["server"], 0) + 1
        out["counts"] = counts
    elif scenario == "deadline":
        try:
            method(channel, "uu", "Sleep")(arg.encode(), timeout=0.5)
            out["result"] = "answered"
        except grpc.RpcError as e:
            out["error"] = error(e)
    elif scenario == "die":
        got = []
        try:
            for m in method(channel, "us", "Die")(b"", timeout=10):
                got.append(m.decode())
            out["result"] = "ended"
        except grpc.RpcError as e:
            out["error"] = error(e)
        out["got"] = got
        # The same channel goes on with the others.
        after = []
        for _ in range(6):
            try:
                after.append(json.loads(method(channel, "uu", "Unary")(b"after", timeout=10))["server"])
            except grpc.RpcError as e:
                after.append(error(e)["code"])
        out["after"] = after
    elif scenario == "cancel":
        stream = method(channel, "us", "Watch")(b"", timeout=30)
        first = [next(stream).decode() for _ in range(3)]
        stream.cancel()
        out["first"] = first
        deadline = time.time() + 5
        n = "0"
        while time.time() < deadline:
            n = method(channel, "uu", "Cancellations")(b"", timeout=10).decode()
            if n != "0":
                break
            time.sleep(0.05)
        out["cancellations"] = int(n)
    elif scenario == "unary":
        # One call, with `arg` as its l5d-dtab when given.
        md = [("l5d-dtab", arg)] if arg else []
        out = json.loads(method(channel, "uu", "Unary")(b"hi", metadata=md, timeout=10))
    elif scenario == "seen":
        # The unary calls the server took (called on the server itself).
        out["seen"] = json.loads(method(channel, "uu", "Seen")(b"", timeout=10))
    elif scenario == "sleep":
        out["result"] = method(channel, "uu", "Sleep")(arg.encode(), timeout=30).decode()
    elif scenario == "unavailable":
        try:
            method(channel, "uu", "Unary")(b"x", timeout=10)
            out["result"] = "answered"
        except grpc.RpcError as e:
            out["error"] = error(e)
    elif scenario == "slow-reader":
        # Opens a big stream, reads one message, then stops reading for
        # `arg` seconds (the test measures the proxy meanwhile), then reads on.
        stream = method(channel, "us", "Big")(b"400", timeout=120)
        next(stream)
        print(json.dumps({"paused": True}), flush=True)
        time.sleep(float(arg))
        n = 1 + sum(1 for _ in stream)
        out["messages"] = n
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1")
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "")
