"""A proxyless gRPC client for the xDS tests. Dials TARGET (e.g. xds:///shop, with GRPC_XDS_BOOTSTRAP
set, or 127.0.0.1:PORT through Envoy) and answers one JSON command per stdin line with one JSON line:

  {"n": 2000}                                   -> {"counts": {"blue": 1003, "green": 997}, "errors": {},
                                                    "details": {}}  (details: the last message per error code)
  {"n": 100, "metadata": {"plannerip": "..."}}  -> same, with that metadata on every call
  {"wait": 20}                                  -> {"ready": true} once one call succeeded (or false)
  {"loop": 4}                                   -> {"looping": 4}: 4 threads call without pause...
  {"stop": true}                                -> ...until this: {"counts": ..., "errors": ...}

Keeping the channel open between commands is what lets a test see a weight change reach an already
connected client.
"""
import json
import sys
import threading
import time

import grpc


def main():
    target = sys.argv[1]
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/weir.test.Echo/Who")
    print(json.dumps({"started": True}), flush=True)
    looping = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if "loop" in cmd:
            looping = Loop(who, cmd["loop"])
            print(json.dumps({"looping": cmd["loop"]}), flush=True)
            continue
        if "stop" in cmd:
            counts, errors = looping.stop()
            print(json.dumps({"counts": counts, "errors": errors}), flush=True)
            continue
        if "wait" in cmd:
            deadline = time.time() + cmd["wait"]
            ok = False
            while time.time() < deadline and not ok:
                try:
                    who(b"", timeout=2, wait_for_ready=True)
                    ok = True
                except grpc.RpcError:
                    time.sleep(0.1)
            print(json.dumps({"ready": ok}), flush=True)
            continue
        metadata = tuple((cmd.get("metadata") or {}).items())
        counts, errors, details = {}, {}, {}
        for _ in range(cmd["n"]):
            try:
                name = who(b"", timeout=5, metadata=metadata).decode()
                counts[name] = counts.get(name, 0) + 1
            except grpc.RpcError as e:
                code = e.code().name
                errors[code] = errors.get(code, 0) + 1
                details[code] = e.details()
        print(json.dumps({"counts": counts, "errors": errors, "details": details}), flush=True)


class Loop:
    """Threads calling back to back, tallying answers and errors, until stopped."""

    def __init__(self, who, threads):
        self.who, self.done, self.lock = who, threading.Event(), threading.Lock()
        self.counts, self.errors = {}, {}
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.done.is_set():
            try:
                key, tally = self.who(b"", timeout=5).decode(), self.counts
            except grpc.RpcError as e:
                key, tally = f"{e.code().name}: {e.details()}"[:200], self.errors
            with self.lock:
                tally[key] = tally.get(key, 0) + 1

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join()
        return self.counts, self.errors


if __name__ == "__main__":
    main()
