"""A proxyless gRPC client for the xDS tests. Dials TARGET (e.g. xds:///shop, with GRPC_XDS_BOOTSTRAP
set, or 127.0.0.1:PORT through Envoy) and answers one JSON command per stdin line with one JSON line:

  {"n": 2000}                                   -> {"counts": {"blue": 1003, "green": 997}, "errors": {},
                                                    "details": {}}  (details: the last message per error code)
  {"n": 100, "metadata": {"plannerip": "..."}}  -> same, with that metadata on every call
  {"wait": 20}                                  -> {"ready": true} once one call succeeded (or false)

Keeping the channel open between commands is what lets a test see a weight change reach an already
connected client.
"""
import json
import sys
import time

import grpc


def main():
    target = sys.argv[1]
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/weir.test.Echo/Who")
    print(json.dumps({"started": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
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


if __name__ == "__main__":
    main()
