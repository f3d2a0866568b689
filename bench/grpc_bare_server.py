"""The bare grpc.aio baseline: a KServe v2 gRPC server that answers every ModelInfer with one fixed
response, on uvloop. No decode, no model, no batching.

Run side by side with the gateway in the same benchmark (bench/grpc_bench.sh): its throughput is
this machine's limit for Python grpc.aio serving, and the gateway's throughput divided by it is a
ratio that holds from one noisy machine to the next. It answers just enough for perf_analyzer to
start (ServerLive/Ready, ModelReady, ModelMetadata, ModelConfig) for one model, "mlp":
INPUT0 FP32 [-1, 64] -> OUTPUT0 FP32 [-1, 10].

    python bench/grpc_bare_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop

from gateway.pb import add_servicer
from gateway.pb import model_config as mc
from gateway.pb import service as pb

MODEL = "mlp"


def _fixed_response() -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    resp.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    resp.raw_output_contents.append(bytes(40))
    return resp


class BareServicer:
    def __init__(self) -> None:
        self.infer_response = _fixed_response()
        self.metadata = pb.ModelMetadataResponse(name=MODEL, versions=["1"], platform="onnxruntime_onnx")
        self.metadata.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 64])
        self.metadata.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, 10])
        self.config = pb.ModelConfigResponse()
        c = self.config.config
        c.name, c.platform, c.backend, c.max_batch_size = MODEL, "onnxruntime_onnx", "onnxruntime", 64
        c.input.add(name="INPUT0", data_type=mc.TYPE_FP32, dims=[64])
        c.output.add(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[10])
        c.dynamic_batching.SetInParent()

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="bare-grpc-aio", version="0")

    async def ModelMetadata(self, request, context):
        return self.metadata

    async def ModelConfig(self, request, context):
        return self.config

    async def ModelInfer(self, request, context):
        return self.infer_response


async def main(port: int) -> None:
    server = grpc.aio.server()
    add_servicer(server, BareServicer())
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare grpc.aio server on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8011))
