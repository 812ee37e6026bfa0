"""The generated stubs match proto/, and the v2 service is the KServe/Triton one, name for name."""

from __future__ import annotations

import subprocess
import sys

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto import kvserve_service_pb2 as kv


def test_generated_stubs_match_the_proto_sources():
    result = subprocess.run([sys.executable, "-m", "kvserve.proto.generate", "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_v2_service_has_the_protocol_rpcs():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == "inference"
    needed = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelConfig",
              "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    assert needed <= set(service.methods_by_name)


def test_wire_field_numbers_of_infer_messages():
    request = pb.ModelInferRequest.DESCRIPTOR
    assert request.fields_by_name["raw_input_contents"].number == 7
    assert request.fields_by_name["inputs"].number == 5
    assert pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
    assert pb.InferTensorContents.DESCRIPTOR.fields_by_name["fp32_contents"].number == 6


def test_kvserve_service_package():
    assert kv.DESCRIPTOR.package == "kvserve.v1"
    assert {"Upload", "Delete", "Describe", "Devices", "Plugins", "Benchmark"} <= set(kv.DESCRIPTOR.services_by_name["KvServe"].methods_by_name)
    benchmark = kv.DESCRIPTOR.services_by_name["KvServe"].methods_by_name["Benchmark"]
    assert benchmark.server_streaming and not benchmark.client_streaming
