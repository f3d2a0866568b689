# InferRequest made from C, textually included by the decoders that make one (inferjson, grpcpb);
# the including module imports InferRequest.

# The request's fields, as ``_new_request`` sets them: a field added to InferRequest must be added
# there too (the module refuses to load until it is).
if InferRequest.__slots__ != ("model_name", "model_version", "inputs", "outputs", "id", "parameters",
                              "timeout_us", "entity"):
    raise ImportError(f"_new_request (_native/request.pxi) does not set InferRequest's fields {InferRequest.__slots__}")
cdef object _new_req = InferRequest.__new__


cdef object _new_request(str model, str version, dict tensors):
    """``InferRequest(model, version, tensors)`` without the dataclass's interpreted ``__init__``."""
    req = _new_req(InferRequest)
    req.model_name = model
    req.model_version = version
    req.inputs = tensors
    req.outputs = None
    req.id = ""
    req.parameters = None
    req.timeout_us = 0
    req.entity = None
    return req
