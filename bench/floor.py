"""The gRPC floor: a grpc.aio server that answers every ModelInfer with a fixed response and does nothing else.

``python bench/floor.py PORT_FILE`` (started by bench/matrix.py). No interceptor, no decoding, no model: what
grpc.aio itself costs per call on this machine, so kvd's figures can be read against it (kvd cannot cost less
per call than the Python gRPC server it runs on).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from kvserve.proto import grpc_service_pb2 as pb

RESPONSE = pb.ModelInferResponse(model_name="m", model_version="1").SerializeToString()


async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return RESPONSE


async def main(port_file: Path) -> None:
    server = grpc.aio.server()
    handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
