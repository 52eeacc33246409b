"""Tiny gRPC backends for the xDS tests: each NAME=PORT serves the unary method
/weir.test.Echo/Who on 127.0.0.1:PORT and answers with NAME, so a client can tell which backend
answered. Uses generic handlers (raw bytes), so nothing has to be compiled.

Usage: backend.py blue=50061 green=50062 ...   (prints "ready" once every port listens)
"""
import sys
import time
from concurrent import futures

import grpc


def serve(name, port):
    def who(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "weir.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on {port}")
    server.start()
    return server


def main():
    servers = []
    for arg in sys.argv[1:]:
        name, port = arg.split("=")
        servers.append(serve(name, int(port)))
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
