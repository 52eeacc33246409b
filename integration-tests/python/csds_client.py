"""A Client Status Discovery Service client built from PyPI `xds-protos` (Envoy's generated
stubs): asks ADDR for the status of every connected xDS client and prints the answer as JSON
(protobuf field names). Usage: csds_client.py ADDR [fetch|stream] [NODE_ID_PREFIX]
"""
import sys

import grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2
from google.protobuf import json_format


def main():
    addr = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "fetch"
    req = csds_pb2.ClientStatusRequest()
    if len(sys.argv) > 3:
        req.node_matchers.append(node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix=sys.argv[3])))
    with grpc.insecure_channel(addr) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        if mode == "stream":
            resp = next(iter(stub.StreamClientStatus(iter([req]), timeout=10)))
        else:
            resp = stub.FetchClientStatus(req, timeout=10)
    print(json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None))


if __name__ == "__main__":
    main()
