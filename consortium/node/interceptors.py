"""Every RPC answers with a status a client can act on, never UNKNOWN.

- Malformed protobuf gets INVALID_ARGUMENT: gRPC deserialises a request before the servicer
  sees it, and bytes that are not the message (a truncated varint, a message nested beyond
  protobuf's recursion limit) would surface as UNKNOWN ("Unexpected <class
  'google.protobuf.message.DecodeError'>"). Every method's deserializer is wrapped so such
  bytes become a marker, answered with INVALID_ARGUMENT and one line.
- A validator that cannot answer for now (its database is down or refuses writes, or it is
  still starting) answers UNAVAILABLE with the reason, which clients retry elsewhere; another
  storage error (a damaged database) is INTERNAL with one line.
For unary and streaming requests alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from consortium.storage.rows import StoreError, StoreUnavailable


class NotReady(Exception):
    """The validator has not finished starting (no replica yet)."""


class Malformed:
    """What a request that did not decode is replaced with."""

    def __init__(self, exc: Exception) -> None:
        self.reason = str(exc)[:200] or type(exc).__name__


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return Malformed(exc)
    return decode


async def _refuse(context: grpc.aio.ServicerContext, bad: Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a well-formed protobuf message: {bad.reason}")


async def _unavailable(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, NotReady):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, StoreUnavailable):
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"this validator cannot read its database now ({exc}): ask another "
                            "validator or retry")
    await context.abort(grpc.StatusCode.INTERNAL, f"storage error: {str(exc)[:300]}")


_CANNOT_ANSWER = (NotReady, StoreError)


async def _checked(requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for r in requests:
        if isinstance(r, Malformed):
            await _refuse(context, r)
        yield r


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        fields: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    await _refuse(context, request)
                try:
                    return await inner_uu(request, context)
                except _CANNOT_ANSWER as exc:
                    await _unavailable(context, exc)
            fields["unary_unary"] = unary_unary
        elif handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any,
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Malformed):
                    await _refuse(context, request)
                try:
                    async for reply in inner_us(request, context):
                        yield reply
                except _CANNOT_ANSWER as exc:
                    await _unavailable(context, exc)
            fields["unary_stream"] = unary_stream
        elif handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any],
                                   context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_su(_checked(requests, context), context)
                except _CANNOT_ANSWER as exc:
                    await _unavailable(context, exc)
            fields["stream_unary"] = stream_unary
        elif handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for reply in inner_ss(_checked(requests, context), context):
                        yield reply
                except _CANNOT_ANSWER as exc:
                    await _unavailable(context, exc)
            fields["stream_stream"] = stream_stream
        return handler._replace(**fields)
