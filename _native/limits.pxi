# Constants shared by the native kernels, textually included by each .pyx (convention 5).

cdef enum:
    # Copy loops smaller than this keep the GIL: giving it up and taking it back costs little,
    # but taking it back can wait a whole switch interval (5 ms) when another thread (an
    # onnxruntime callback, a pool worker) is running Python, which dwarfs a small memcpy.
    GIL_RELEASE_BYTES = 262144
    # Per-call scratch for up to this many requests lives on the C stack instead of the heap.
    STACK_ITEMS = 64
    # Deepest list nesting list_to_array accepts (tensor ranks are small; this also stops a
    # self-containing list from recursing forever).
    MAX_NEST_DEPTH = 64
    # Most dimensions a tensor may have (numpy's own limit; gateway.validate.MAX_DIMS agrees).
    MAX_DIMS = 64
