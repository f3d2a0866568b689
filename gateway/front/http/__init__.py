"""The HTTP/1.1 front: KServe v2 REST with Triton's extensions."""
