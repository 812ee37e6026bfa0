"""kvserve's own protobuf descriptor pool, so its stubs never collide with anyone else's in one process.

kvserve's protos reuse public package names (``inference`` as Triton's client does, ``tensorflow`` and
``tensorflow.serving`` as TensorFlow and tensorflow-serving-api do). Registered in protobuf's default pool they
would clash ("duplicate symbol 'inference.DataType'") the moment ``tritonclient.grpc`` or TensorFlow is imported
beside ``kvserve.client``. ``python -m kvserve.proto.generate`` makes every generated ``*_pb2.py`` register
here instead. The wire format is unchanged: only the in-process registry differs.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()

# Well-known types our protos import; grpc.health.v1 and server reflection are added by kvserve.server.ops.health
# so reflection can describe every service from this one pool.
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)


def add_file(serialized: bytes) -> None:
    """Add a file descriptor (e.g. grpc.health.v1's) unless the pool already has one of that name."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    try:
        POOL.FindFileByName(proto.name)
    except KeyError:
        POOL.AddSerializedFile(serialized)
