"""A KServe v2 gRPC stub (grpc.aio, tritonclient's generated service) for load-tester tests.

  python grpc_stub.py PORT [--delay-ms D]

ModelMetadata describes "mlp" (INPUT0 FP32 [-1,64] -> OUTPUT0 FP32 [-1,10]); ModelInfer answers after
D ms and records the metadata keys and parameters it saw; ModelStatistics reports the request count.
"""

import argparse
import asyncio
import json

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, delay_ms: float) -> None:
        self.delay = delay_ms / 1e3
        self.count = 0
        self.seen: dict[str, int] = {}

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        r = service_pb2.ModelMetadataResponse(name=request.name, versions=["1"], platform="stub")
        r.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 64])
        r.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, 10])
        return r

    async def ModelInfer(self, request, context):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.count += 1
        for k, _ in context.invocation_metadata():
            if k.startswith("x-"):
                self.seen[k] = self.seen.get(k, 0) + 1
        for k in request.parameters:
            self.seen["param:" + k] = self.seen.get("param:" + k, 0) + 1
        if request.inputs[0].shape[1] != 64 or len(request.raw_input_contents[0]) != 4 * 64 * request.inputs[0].shape[0]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        r = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        r.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
        r.raw_output_contents.append(b"\0" * 40)
        return r

    async def ModelStatistics(self, request, context):
        r = service_pb2.ModelStatisticsResponse()
        m = r.model_stats.add(name="mlp", version="1", inference_count=self.count, execution_count=self.count)
        m.inference_stats.success.count = self.count
        m.inference_stats.success.ns = int(self.count * self.delay * 1e9)
        m.inference_stats.queue.count = self.count
        m.inference_stats.queue.ns = 0
        # Smuggle what the stub saw to the test through the model's "platform"-free slot: a fake model entry.
        seen = r.model_stats.add(name="seen:" + json.dumps(self.seen, sort_keys=True), version="0")
        seen.inference_count = 0
        return r


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(args.delay_ms), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"grpc stub listening on {args.port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
