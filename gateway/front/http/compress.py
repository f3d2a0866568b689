"""HTTP content codings for the HTTP front: gzip and deflate, as tritonclient sends and reads them.

Requests: ``Content-Encoding: gzip|deflate`` compresses the whole body (with the binary
extension too; ``Inference-Header-Content-Length`` counts the *uncompressed* JSON header), so
the body is decompressed before decoding. Decompression is bounded: at most
``max_body_bytes + 1`` bytes are ever produced, so a zip bomb costs the server ``max_body_bytes``
of memory and gets 413. A corrupt stream gets 400; a coding we do not know gets 415 with
``Accept-Encoding: gzip, deflate`` (RFC 9110 15.5.16, and what Triton answers).

Responses: a successful infer response is compressed when the request's ``Accept-Encoding``
accepts gzip or deflate (``q=0`` refuses a coding; highest q wins, ties go to the one listed
first; ``*`` stands for any coding not listed). ``Inference-Header-Content-Length`` stays the
uncompressed JSON header length, as Triton does: the client decompresses the whole body first.
Errors are never compressed: tritonclient reads an error body without decompressing it.

"deflate" means the zlib format (RFC 9110 8.4.1.2), which tritonclient sends; a raw deflate
stream, which some clients send instead, is accepted too.
"""

from __future__ import annotations

import functools
import zlib

from gateway.errors import Code, GatewayError

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS
# Level 1: most of the size gain of level 6 at a fraction of its CPU, on the event loop thread.
_LEVEL = 1
ACCEPTED = b"gzip, deflate"


class UnsupportedEncoding(Exception):
    """A request body in a content coding this server cannot decode (answered 415)."""


def decode_body(body: bytes, content_encoding: bytes, limit: int) -> bytes:
    """The body with its content coding removed; at most ``limit`` bytes are produced.

    Raises ``GatewayError`` (413 past ``limit``, 400 for a corrupt stream) or
    ``UnsupportedEncoding``.
    """
    codings = [c for c in (p.strip() for p in content_encoding.decode("latin-1").lower().split(","))
               if c and c != "identity"]
    if not codings:
        return body
    if len(codings) > 1:  # each layer could cost max_body_bytes of CPU; nobody stacks codings
        raise UnsupportedEncoding("only one content coding is supported, got "
                                  f"{content_encoding.decode('latin-1')!r}")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, _GZIP_WBITS, limit, coding)
    if coding == "deflate":
        return _inflate(body, _ZLIB_WBITS if _is_zlib(body) else _RAW_WBITS, limit, coding)
    raise UnsupportedEncoding(f"unsupported Content-Encoding {coding!r}: this server accepts gzip or deflate")


def _is_zlib(data: bytes) -> bool:
    """A zlib header (RFC 1950): method 8, and the two bytes are a multiple of 31."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    if not data:
        return data
    out: list[bytes] = []
    size = 0
    try:
        while True:
            d = zlib.decompressobj(wbits)
            chunk = d.decompress(data, limit - size + 1)  # never more than one byte past the limit
            size += len(chunk)
            if size > limit:
                raise GatewayError(Code.PAYLOAD_TOO_LARGE,
                                   f"decompressed request body exceeds max_body_bytes ({limit})")
            out.append(chunk)
            if not d.eof:
                raise GatewayError(Code.INVALID_ARGUMENT, f"{coding} request body is truncated")
            data = d.unused_data
            # gzip allows several members one after another; anything else after the end is corrupt
            if not data or wbits != _GZIP_WBITS:
                break
    except zlib.error as exc:
        raise GatewayError(Code.INVALID_ARGUMENT, f"corrupt {coding} request body: {exc}") from None
    if data:
        raise GatewayError(Code.INVALID_ARGUMENT,
                           f"corrupt {coding} request body: data after the end of the stream")
    return out[0] if len(out) == 1 else b"".join(out)


@functools.lru_cache(maxsize=64)  # the same few header values arrive over and over
def response_coding(accept_encoding: bytes) -> str | None:
    """The coding to answer with for an ``Accept-Encoding`` value: "gzip", "deflate" or None."""
    listed: dict[str, float] = {}
    for item in accept_encoding.decode("latin-1").lower().split(","):
        name, _, params = item.partition(";")
        name = name.strip()
        if not name or name in listed:
            continue
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a q we cannot read is not a yes
        listed[name] = q
    star = listed.get("*", 0.0)  # "*" stands for every coding not listed by name
    order = list(listed)
    best, best_key = None, (0.0, 0)
    for coding, alias in (("gzip", "x-gzip"), ("deflate", "")):
        name = coding if coding in listed else alias if alias in listed else ""
        q, pos = (listed[name], order.index(name)) if name else (star, len(order))
        if q > 0 and (best is None or (-q, pos) < best_key):
            best, best_key = coding, (-q, pos)
    return best


def compress(body: bytes, coding: str) -> bytes:
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS if coding == "gzip" else _ZLIB_WBITS)
    return c.compress(body) + c.flush()


def encode_body(body: bytes, accept_encoding: bytes, headers: bytes) -> tuple[bytes, bytes]:
    """(body, headers) for a response to a request that sent ``Accept-Encoding``: compressed and
    with ``content-encoding`` prepended to ``headers`` when a coding we support is accepted."""
    coding = response_coding(accept_encoding)
    if coding is None:
        return body, headers
    return compress(body, coding), b"content-encoding: " + coding.encode() + b"\r\n" + headers


__all__ = ["ACCEPTED", "UnsupportedEncoding", "compress", "decode_body", "encode_body", "response_coding"]
