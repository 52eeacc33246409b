"""A raw ADS client built from PyPI `xds-protos` (Envoy's generated stubs) and grpcio, for the tests
of weir's ADS bounds. Dials ADDR and answers one JSON command per stdin line with one JSON line:

  {"channel": "a"}                         -> {"ok": true}: a new channel, its own HTTP/2 connection
  {"open": "s", "channel": "a", "from": 0, "names": 3, "protocol": "delta"}
                                           -> {"response": true} once the first response came, or
                                              {"code": "RESOURCE_EXHAUSTED", "details": "..."} if the
                                              stream ended first (protocol: "delta" or "sotw"; with
                                              "long": L, one more name of L bytes)
  {"send": "s", "from": 3, "names": 2}     -> {"sent": true}: subscribes these names too
  {"end": "s"}                             -> {"code": ..., "details": ..., "responses": n} once the
                                              stream ended (or {"code": null} after 20 s)
  {"close": "s"}                           -> {"closed": true}: cancels the stream
  {"flood": "a", "requests": 80, "names": 100000}
                                           -> one delta stream subscribing requests x names cluster
                                              names, each request made only when grpcio asks for it:
                                              {"code": ..., "details": ..., "made": k}

Names are `default/no-such-cluster-NNNNNNNN` (resources weir does not have; a subscription may name
resources yet to come); the type is Cluster, the node id `caps`.
"""
import json
import queue
import sys
import threading

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
DONE = object()


def names(start, n):
    return ["default/no-such-cluster-%08d" % i for i in range(start, start + n)]


def request(protocol, start, n, held, long=0):
    node = base_pb2.Node(id="caps")
    new = names(start, n) + (["x" * long] if long else [])
    if protocol == "delta":
        return discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=node, resource_names_subscribe=new)
    # State of the world: every request carries the whole subscription.
    held.extend(new)
    return discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node, resource_names=list(held))


class Stream:
    def __init__(self, channel, protocol, start, n, long):
        self.protocol = protocol
        self.held = []
        self.requests = queue.Queue()
        self.events = queue.Queue()
        self.responses = 0
        self.requests.put(request(protocol, start, n, self.held, long))
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if protocol == "delta" else stub.StreamAggregatedResources
        self.call = method(iter(self.requests.get, DONE))
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        try:
            for _ in self.call:
                self.events.put(("response", None))
            self.events.put(("end", (None, "the stream ended without a status")))
        except grpc.RpcError as e:
            self.events.put(("end", (e.code().name, e.details())))

    def next_event(self, timeout):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return ("timeout", None)


def main():
    addr = sys.argv[1]
    channels, streams = {}, {}
    print(json.dumps({"started": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if "channel" in cmd and "open" not in cmd:
            # A local subchannel pool: each channel its own connection, not one shared by all.
            channels[cmd["channel"]] = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            out = {"ok": True}
        elif "open" in cmd:
            s = Stream(channels[cmd["channel"]], cmd.get("protocol", "delta"), cmd["from"], cmd["names"], cmd.get("long", 0))
            streams[cmd["open"]] = s
            kind, value = s.next_event(20)
            if kind == "response":
                s.responses += 1
                out = {"response": True}
            elif kind == "end":
                out = {"code": value[0], "details": value[1]}
            else:
                out = {"response": False, "code": None}
        elif "send" in cmd:
            s = streams[cmd["send"]]
            s.requests.put(request(s.protocol, cmd["from"], cmd["names"], s.held))
            out = {"sent": True}
        elif "end" in cmd:
            s = streams[cmd["end"]]
            out = {"code": None}
            while True:
                kind, value = s.next_event(20)
                if kind == "response":
                    s.responses += 1
                    continue
                if kind == "end":
                    out = {"code": value[0], "details": value[1]}
                break
            out["responses"] = s.responses
        elif "close" in cmd:
            s = streams.pop(cmd["close"])
            s.call.cancel()
            s.requests.put(DONE)
            out = {"closed": True}
        elif "flood" in cmd:
            made = [0]

            def flood(total=cmd["requests"], n=cmd["names"]):
                for i in range(total):
                    made[0] += 1
                    yield discovery_pb2.DeltaDiscoveryRequest(
                        type_url=CLUSTER, node=base_pb2.Node(id="caps"), resource_names_subscribe=names(i * n, n)
                    )

            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[cmd["flood"]])
            out = {"code": None, "details": "the stream ended without a status"}
            try:
                for _ in stub.DeltaAggregatedResources(flood(), timeout=120):
                    pass
            except grpc.RpcError as e:
                out = {"code": e.code().name, "details": e.details()}
            out["made"] = made[0]
        else:
            out = {"error": "unknown command %r" % cmd}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
