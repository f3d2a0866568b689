"""The gRPC front: inference.GRPCInferenceService over grpc.aio."""
