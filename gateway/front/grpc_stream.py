"""ModelStreamInfer: a bidirectional stream where every request gets one answer on the stream.

Shape of one stream:
- a reader task takes requests off the stream, decodes them and submits them to the data plane
  with a callback (no task or future per request); a request that fails decode or submit is
  answered at once with ``error_message``, and the stream goes on;
- the call's own task is the only writer: it takes answers off a queue in completion order, so
  ``context.write`` calls never overlap (grpc allows one write in flight);
- the stream ends when the client has half-closed and every submitted request was answered;
- when the call is cancelled (client gone, deadline, server stop past its grace), the reader is
  cancelled and every ticket still queued is cancelled, so no work is computed for nobody.

Answers carry the request's id (and model name/version) in ``infer_response`` even for errors,
so a client on the raw stubs can match an error to its request; tritonclient only shows the
message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.dataplane import DataPlane
from gateway.errors import GatewayError
from gateway.front.grpc_codec import decode_infer_request, encode_infer_response
from gateway.pb import service as pb
from gateway.types import InferResponse

_StreamResponse = pb.ModelStreamInferResponse
_InferResponse = pb.ModelInferResponse
_GONE = object()


def error_answer(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return _StreamResponse(
        error_message=message,
        infer_response=_InferResponse(model_name=request.model_name, model_version=request.model_version,
                                      id=request.id),
    )


class _Stream:
    """State of one stream: outstanding tickets by sequence number, and the answer queue."""

    __slots__ = ("dp", "answers", "tickets", "seq", "reading", "error")

    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp
        self.answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        self.tickets: dict[int, Any] = {}  # seq -> ticket, for requests not yet answered
        self.seq = 0
        self.reading = True
        self.error: BaseException | None = None

    async def read(self, request_iterator: Any) -> None:
        try:
            async for msg in request_iterator:
                self.submit(msg)
        except Exception as exc:  # the call broke (e.g. a message over the size limit): end it
            self.error = exc
            self.answers.put_nowait(None)
            return
        self.reading = False
        if not self.tickets:
            self.answers.put_nowait(None)

    def submit(self, msg: pb.ModelInferRequest) -> None:
        seq = self.seq = self.seq + 1
        self.tickets[seq] = None  # placeholder: done may run before submit returns
        req = None
        try:
            req = decode_infer_request(msg)
            ticket = self.dp.submit(req, lambda r, e: self.done(seq, msg, r, e))
        except GatewayError as exc:
            if req is None:  # not decoded (submit counts its own rejections)
                self.dp.record_rejected(msg.model_name, msg.model_version, exc.code)
            del self.tickets[seq]
            self.answers.put_nowait(error_answer(msg, exc.message))
            return
        if seq in self.tickets:
            self.tickets[seq] = ticket

    def done(self, seq: int, msg: pb.ModelInferRequest, resp: InferResponse | None,
             err: GatewayError | None) -> None:
        if self.tickets.pop(seq, _GONE) is _GONE:
            return  # already answered or the stream is gone
        if err is not None:
            self.answers.put_nowait(error_answer(msg, err.message))
        else:
            try:
                answer = _StreamResponse(infer_response=encode_infer_response(resp))  # type: ignore[arg-type]
            except Exception as exc:  # an output we cannot encode: answer it, keep the stream
                answer = error_answer(msg, f"cannot encode the response: {exc}")
            self.answers.put_nowait(answer)
        if not self.reading and not self.tickets:
            self.answers.put_nowait(None)

    def cancel_all(self) -> None:
        tickets, self.tickets = self.tickets, {}
        for t in tickets.values():
            if t is not None:
                t.cancel()


async def serve_stream(dp: DataPlane, request_iterator: Any, context: Any) -> None:
    """Run one ModelStreamInfer call until the client half-closes and all answers are written."""
    stream = _Stream(dp)
    reader = asyncio.ensure_future(stream.read(request_iterator))
    answers = stream.answers
    try:
        while True:
            answer = await answers.get()
            if answer is None:
                break
            await context.write(answer)
        if stream.error is not None:
            raise stream.error
    finally:
        reader.cancel()
        stream.cancel_all()
