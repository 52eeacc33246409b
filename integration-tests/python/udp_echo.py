"""UDP echo servers for the VirtualService tests: `udp_echo.py NAME=PORT[,HCPORT] ...`.

Each server answers every datagram with `NAME:` followed by the datagram, on 127.0.0.1:PORT, and
counts what it received. With HCPORT it also accepts TCP connections there (the health check port)
and closes them at once. A TCP server on PORT echoes the same way per connection (for TCP
listeners). Prints `ready` once every socket is bound.
"""

import socket
import sys
import threading


def udp(name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))

    def run():
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(name.encode() + b":" + data, peer)

    threading.Thread(target=run, daemon=True).start()


def tcp(port, name=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)

    def serve(conn):
        with conn:
            if name is None:
                return
            while True:
                data = conn.recv(65535)
                if not data:
                    return
                conn.sendall(name.encode() + b":" + data)

    def run():
        while True:
            conn, _ = s.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()


def main():
    for arg in sys.argv[1:]:
        name, ports = arg.split("=", 1)
        parts = ports.split(",")
        port = int(parts[0])
        udp(name, port)
        tcp(port, name)
        if len(parts) > 1:
            tcp(int(parts[1]))
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
