# InferRequest made from C, textually included by the decoders that make one (inferjson, grpcpb);
# the including module imports InferRequest.
#
# Its fields are ``__slots__``: each one's member descriptor says where in the object its pointer
# lives, so ``_new_request`` stores the eight fields there directly (a fresh object's slots are
# NULL) instead of eight generic ``setattr`` calls, which cost more than the rest of making it.

from cpython.ref cimport PyObject, Py_INCREF

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

# The request's fields, as ``_new_request`` sets them: a field added to InferRequest must be added
# there too (the module refuses to load until it is).
_REQUEST_FIELDS = ("model_name", "model_version", "inputs", "outputs", "id", "parameters", "timeout_us", "entity")
if InferRequest.__slots__ != _REQUEST_FIELDS:
    raise ImportError(f"_new_request (_native/request.pxi) does not set InferRequest's fields {InferRequest.__slots__}")


cdef Py_ssize_t _slot_offset(str name) except -1:
    descr = InferRequest.__dict__[name]
    if type(descr).__name__ != "member_descriptor":
        raise ImportError(f"InferRequest.{name} is a {type(descr).__name__}, not a slot")
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef object _new_req = InferRequest.__new__
cdef Py_ssize_t _off_model = _slot_offset("model_name")
cdef Py_ssize_t _off_version = _slot_offset("model_version")
cdef Py_ssize_t _off_inputs = _slot_offset("inputs")
cdef Py_ssize_t _off_outputs = _slot_offset("outputs")
cdef Py_ssize_t _off_id = _slot_offset("id")
cdef Py_ssize_t _off_parameters = _slot_offset("parameters")
cdef Py_ssize_t _off_timeout = _slot_offset("timeout_us")
cdef Py_ssize_t _off_entity = _slot_offset("entity")
cdef object _ZERO = 0
cdef object _EMPTY = ""


cdef inline void _store(object obj, Py_ssize_t offset, object value) noexcept:
    """Set a slot of a fresh object (NULL before: nothing to release)."""
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + offset))[0] = <PyObject*>value


cdef object _new_request(str model, str version, dict tensors):
    """``InferRequest(model, version, tensors)`` without the dataclass's interpreted ``__init__``."""
    req = _new_req(InferRequest)
    _store(req, _off_model, model)
    _store(req, _off_version, version)
    _store(req, _off_inputs, tensors)
    _store(req, _off_outputs, None)
    _store(req, _off_id, _EMPTY)
    _store(req, _off_parameters, None)
    _store(req, _off_timeout, _ZERO)
    _store(req, _off_entity, None)
    return req
