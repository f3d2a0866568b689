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
import logging
from typing import Any

from gateway.dataplane import DataPlane
from gateway.errors import GatewayError
from gateway.front.grpc.codec import decode_infer_request, encode_infer_response
from gateway.pb import Message
from gateway.pb import service as pb
from gateway.shm import OutputTarget, write_outputs
from gateway.types import InferResponse

_StreamResponse = pb.ModelStreamInferResponse
_InferResponse = pb.ModelInferResponse
_GONE = object()
log = logging.getLogger(__name__)


def error_answer(request: Message, message: str) -> Message:
    return _StreamResponse(
        error_message=message,
        infer_response=_InferResponse(model_name=request.model_name, model_version=request.model_version,
                                      id=request.id),
    )


class _Stream:
    """State of one stream: outstanding tickets by sequence number, and the answer queue."""

    __slots__ = ("dp", "budget", "answers", "tickets", "sizes", "seq", "reading", "error")

    def __init__(self, dp: DataPlane, budget: Any) -> None:
        self.dp = dp
        self.budget = budget
        self.answers: asyncio.Queue[Message | None] = asyncio.Queue()
        self.tickets: dict[int, Any] = {}  # seq -> ticket, for requests not yet answered
        self.sizes: dict[int, int] = {}  # seq -> bytes taken from the server's budget
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

    def submit(self, msg: Message) -> None:
        seq = self.seq = self.seq + 1
        self.tickets[seq] = None  # placeholder: done may run before submit returns
        req = None
        try:
            if self.dp.door.refuse():  # the loop is late: refuse before the decode
                raise self.dp.door.error()
            req, plan = decode_infer_request(msg, 0, self.dp.shm)
            shm = plan.shm if plan is not None else None
            self.sizes[seq] = self.budget.take(req)
            ticket = self.dp.submit(req, lambda r, e: self.done(seq, msg, r, e, shm))
        except Exception as exc:  # every request gets its answer; the stream goes on
            self.budget.give(self.sizes.pop(seq, 0))
            if not isinstance(exc, GatewayError):
                log.exception("ModelStreamInfer: request failed")
            elif req is None:  # not decoded (submit counts its own rejections)
                self.dp.record_rejected(msg.model_name, msg.model_version, exc.code)
            message = exc.message if isinstance(exc, GatewayError) else f"internal error: {exc}"
            del exc  # no traceback (frames holding the message) outlives this answer
            del self.tickets[seq]
            self.answers.put_nowait(error_answer(msg, message))
            return
        if seq in self.tickets:
            self.tickets[seq] = ticket

    def done(self, seq: int, msg: Message, resp: InferResponse | None,
             err: GatewayError | None, shm: dict[str, OutputTarget] | None = None) -> None:
        self.budget.give(self.sizes.pop(seq, 0))
        if self.tickets.pop(seq, _GONE) is _GONE:
            return  # already answered or the stream is gone
        if err is not None:
            self.answers.put_nowait(error_answer(msg, err.message))
        else:
            try:
                written = write_outputs(resp.outputs, shm) if shm is not None else None  # type: ignore[union-attr]
                answer = _StreamResponse(infer_response=encode_infer_response(resp, written))  # type: ignore[arg-type]
            except GatewayError as exc:  # e.g. an output region too small
                answer = error_answer(msg, exc.message)
            except Exception as exc:  # an output we cannot encode: answer it, keep the stream
                answer = error_answer(msg, f"cannot encode the response: {exc}")
            self.answers.put_nowait(answer)
        if not self.reading and not self.tickets:
            self.answers.put_nowait(None)

    def cancel_all(self) -> None:
        """Drop every queued request; their callbacks never run, so their bytes are given back here."""
        self.budget.give(sum(self.sizes.values()))
        self.sizes.clear()
        tickets, self.tickets = self.tickets, {}
        for t in tickets.values():
            if t is not None:
                t.cancel()


async def serve_stream(dp: DataPlane, request_iterator: Any, context: Any, budget: Any) -> None:
    """Run one ModelStreamInfer call until the client half-closes and all answers are written."""
    stream = _Stream(dp, budget)
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
