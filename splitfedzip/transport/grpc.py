"""The gRPC transport: each client holds one long-lived bidirectional stream per serving party.

Messages travel as raw bytes (identity serialisers, no generated code). On each stream the
client writes a request message and reads the answer, strictly in turn. An empty message is the
client's goodbye: a stream that ends without one is a client that dropped out, and the serving
party is told. The server checks the client's identity when the stream opens (a per-client
token, and/or the CN ``client-N`` of a mutual-TLS certificate), validates every request's frames
(intact, within the size limit, naming that client) before the party sees them, and answers a
bad request with an error status that ends that client's stream only.

Both ends count the requests answered on a client's stream. A client that reconnects (its server
went away and came back, possibly restored from a checkpoint) says how many answers it has had;
the server says how many it has given, and the client sends again those it has had but the
server no longer remembers, in order, from a log of its recent requests. A server one answer
ahead (it answered, the answer was lost) gives that answer again for the repeated request. So a
server restored from a round checkpoint ends where it would have been, and its ledger too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ..errors import UserError
from ..metrics.ledger import Ledger
from ..wire import Frame, FrameError, read_frames
from .base import Channel, Handler, TransportError

SERVICE = "splitfedzip.Party"
METHOD = f"/{SERVICE}/Exchange"
DEFAULT_MAX_MESSAGE = 256 << 20  # 256 MiB: an fg weights message of the paper's model fits
GRPC_PREFIX = 5  # gRPC message prefix: 1 compressed flag + 4 length bytes
HTTP2_FRAME_HEADER = 9
HTTP2_MAX_FRAME = 16384  # the HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which grpcio keeps
#: Metadata with the answers a reconnecting client has had (request) and the server has given.
ANSWERED = "x-answered"
#: The details grpc.aio gives a call that its core lost, with status INTERNAL.
LOST_BY_CORE = "Internal error from Core"

log = logging.getLogger(__name__)


def wire_bytes(message_len: int) -> int:
    """Estimated bytes on the wire for one message: gRPC prefix plus HTTP/2 DATA frame headers."""
    data = message_len + GRPC_PREFIX
    return data + HTTP2_FRAME_HEADER * max(1, math.ceil(data / HTTP2_MAX_FRAME))


def channel_options(max_message: int) -> list[tuple[str, Any]]:
    """Size limits and keepalive pings shared by both ends."""
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        # Pings detect a peer that vanished without closing its connection.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # A client waiting for a restarted server tries again within a second or two (gRPC's
        # default backoff grows to two minutes).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this side's certificate and key, and the CA that signs the peer's."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The three PEM blobs (None where not given)."""
        cert, key, ca = (
            None if p is None else Path(p).read_bytes() for p in (self.cert, self.key, self.ca)
        )
        return cert, key, ca


@dataclass(frozen=True)
class ServerSecurity:
    """How a serving party authenticates itself and its clients.

    ``tls.ca`` set: mutual TLS, the client certificate's CN must be ``client-N``. ``tokens``
    set: each client must present its own bearer token. ``insecure``: plaintext, and with
    neither check the client's claimed id is believed (local experiments only).
    """

    tls: TlsFiles | None = None
    tokens: Mapping[int, str] | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.tls is not None:
            raise UserError("--insecure and TLS files are mutually exclusive")
        if not self.insecure and (self.tls is None or not (self.tls.cert and self.tls.key)):
            raise UserError("a server needs --tls-cert and --tls-key, or --insecure")

    @property
    def mutual_tls(self) -> bool:
        """True when client certificates are required."""
        return self.tls is not None and self.tls.ca is not None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server: TLS trust (and its certificate for mTLS), and its token."""

    tls: TlsFiles | None = None
    token: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.tls is not None:
            raise UserError("--insecure and TLS files are mutually exclusive")
        if not self.insecure and (self.tls is None or self.tls.ca is None):
            raise UserError("a client needs --tls-ca (the server's CA), or --insecure")


class ForeignFrame(ValueError):
    """A request holds a frame that names another client than the stream's."""

    status = "PERMISSION_DENIED"


def _status_for(exc: BaseException) -> grpc.StatusCode:
    named = getattr(type(exc), "status", None)  # an error that names its own status
    if isinstance(named, str) and named in grpc.StatusCode.__members__:
        return grpc.StatusCode[named]
    if isinstance(exc, FrameError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ValueError | KeyError | IndexError):
        return grpc.StatusCode.FAILED_PRECONDITION  # a protocol error from the party
    return grpc.StatusCode.INTERNAL


class PartyService:
    """Serves one party's :class:`Handler` on the ``Exchange`` stream."""

    def __init__(
        self,
        handler: Handler,
        *,
        peer: str,
        security: ServerSecurity,
        ledger: Ledger | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        until_clients: int | None = None,
        keep_replies: bool = False,
    ) -> None:
        self.handler, self.peer, self.security = handler, peer, security
        self.ledger, self.max_message = ledger, max_message
        self.until_clients = until_clients
        self.active: set[int] = set()
        self.finished: set[int] = set()
        self.dropped: set[int] = set()
        self.done = asyncio.Event()
        self._notices: set[asyncio.Task] = set()
        #: client -> requests answered on its streams (since its process started)
        self.answered: dict[int, int] = {}
        #: client -> (digest of its last request, the answer): kept with ``keep_replies`` (a
        #: server that checkpoints), to answer again a request whose answer was lost.
        self.keep_replies = keep_replies
        self.last: dict[int, tuple[bytes, bytes]] = {}
        #: Called with each valid request's frames before the party or the ledger sees it, when
        #: every earlier request is answered or still waiting (round checkpoints).
        self.before_request: Callable[[int, list[Frame]], None] | None = None

    def state(self) -> dict[str, Any]:
        """The answer counts, last answers and clients that left (a server's checkpoint)."""
        return {
            "answered": dict(self.answered), "last": dict(self.last),
            "finished": set(self.finished),
        }  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` saved."""
        self.answered, self.last = dict(state["answered"]), dict(state["last"])
        self.finished = set(state["finished"])

    async def _claimed(self, context: grpc.aio.ServicerContext) -> int | None:
        """The answers a reconnecting client says it has had; None for a client process that
        has just started."""
        raw = dict(context.invocation_metadata() or ()).get(ANSWERED)
        if raw is None:
            return None
        if not raw.isdigit():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ANSWERED}: {raw!r}")
        return int(raw)

    async def _resume(
        self, client: int, claimed: int | None, context: grpc.aio.ServicerContext
    ) -> tuple[bytes, bytes] | None:
        """Line this stream up with the client's count; the answer owed to its first request
        when the server is one ahead."""
        if claimed is None:  # a new client process: its requests count from zero again
            self.answered[client] = 0
            self.last.pop(client, None)
            return None
        given = self.answered.get(client, 0)
        await context.send_initial_metadata(((ANSWERED, str(given)),))
        if given <= claimed:
            return None  # the client sends again what this server no longer remembers
        if given == claimed + 1 and client in self.last:
            return self.last[client]
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{self.peer}: client {client} has had {claimed} answers, this server gave "
            f"{given}: it was restored from a later checkpoint than the client",
        )
        return None

    async def _identify(self, context: grpc.aio.ServicerContext) -> int:
        metadata = {k: v for k, v in context.invocation_metadata() or ()}
        raw_id = metadata.get("x-client-id")
        try:
            client = int(raw_id) if raw_id is not None else -1
        except ValueError:
            client = -1
        if client < 0:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or invalid x-client-id metadata"
            )
        sec = self.security
        if sec.tokens is not None:
            auth = metadata.get("authorization", "")
            expected = sec.tokens.get(client)
            given = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"client {client}: missing or invalid token",
                )
        if sec.mutual_tls:
            names = context.auth_context().get("x509_common_name", [])
            if [n.decode() for n in names] != [f"client-{client}"]:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"client {client}: certificate CN {names!r} is not client-{client}",
                )
        return client

    async def exchange(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """The stream: validate and answer each request message in order."""
        client = await self._identify(context)
        claimed = await self._claimed(context)
        if client in self.active:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"client {client} is already connected"
            )
        self.active.add(client)  # no await since the check: no other stream can slip in
        try:
            owed = await self._resume(client, claimed, context)
        except BaseException:
            self.active.discard(client)  # refused before it took part: not a dropped client
            raise
        self.dropped.discard(client)
        log.info("%s: client %d connected from %s", self.peer, client, context.peer())
        clean = False
        try:
            async for message in requests:
                if not message:  # the goodbye of GrpcChannel.close
                    clean = True
                    break
                if owed is not None:
                    reply, owed = await self._owed(message, client, owed, context), None
                else:
                    reply = await self._answer(message, client, context)
                yield reply
        finally:
            self._ended(client, clean)

    async def _owed(
        self,
        message: bytes,
        client: int,
        owed: tuple[bytes, bytes],
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """The answer given to this request before it was lost: not handled, not recorded."""
        if hashlib.sha256(message).digest() != owed[0]:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.peer}: client {client} repeated another request than the one answered",
            )
        log.info("%s: client %d: its last answer, again", self.peer, client)
        return owed[1]

    def _ended(self, client: int, clean: bool) -> None:
        self.active.discard(client)
        log.info("%s: client %d %s", self.peer, client, "left" if clean else "dropped")
        if clean:
            self.finished.add(client)
        else:
            self.dropped.add(client)
            # A task, not an await: this runs in the finally of a cancelled stream.
            notice = asyncio.get_running_loop().create_task(self.handler.disconnected(client))
            self._notices.add(notice)
            notice.add_done_callback(self._notices.discard)
        # Done once every client has left or dropped out and none is connected any more.
        ended = len(self.finished | self.dropped)
        if self.until_clients is not None and ended >= self.until_clients and not self.active:
            self.done.set()

    async def _answer(
        self, message: bytes, client: int, context: grpc.aio.ServicerContext
    ) -> bytes:
        try:
            parsed = list(read_frames(message, max_payload=self.max_message))
            for frame in parsed:
                if frame.header.client != client:
                    raise ForeignFrame(
                        f"a frame names client {frame.header.client}, but this stream is "
                        f"client {client}'s"
                    )
            if self.before_request is not None:
                self.before_request(client, parsed)
            if self.ledger is not None:
                # The request crossed, whatever the party makes of it; recorded here too, so
                # that the servers' ledgers hold every frame of a client that dies mid-run.
                self.ledger.record_message(
                    message, f"client->{self.peer}", wire_bytes=wire_bytes(len(message))
                )
            reply = await self.handler.handle(message, client)
            if not isinstance(reply.message, bytes):
                raise TypeError(f"handler answered {type(reply.message).__name__}, not bytes")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the party's fault or the client's: end this stream only
            log.warning("%s: client %d: %s: %s", self.peer, client, type(e).__name__, e)
            await context.abort(_status_for(e), f"{self.peer}: {type(e).__name__}: {e}")
        if self.ledger is not None and reply.message:
            self.ledger.record_message(
                reply.message,
                f"{self.peer}->client",
                estimates=reply.estimates,
                wire_bytes=wire_bytes(len(reply.message)),
            )
        self.answered[client] = self.answered.get(client, 0) + 1
        if self.keep_replies:
            self.last[client] = (hashlib.sha256(message).digest(), reply.message)
        return reply.message


def _server_credentials(security: ServerSecurity) -> grpc.ServerCredentials | None:
    if security.insecure:
        return None
    assert security.tls is not None
    cert, key, ca = security.tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


async def serve_handler(
    handler: Handler,
    listen: str,
    *,
    peer: str,
    security: ServerSecurity,
    ledger: Ledger | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
    until_clients: int | None = None,
    service: PartyService | None = None,
) -> tuple[grpc.aio.Server, PartyService, int]:
    """Start serving ``handler`` on ``listen`` (HOST:PORT, port 0 picks one); returns the port.
    ``service``: one set up already (restored from a checkpoint), else a new one."""
    if service is None:
        service = PartyService(
            handler, peer=peer, security=security, ledger=ledger,
            max_message=max_message, until_clients=until_clients,
        )  # fmt: skip
    server = grpc.aio.server(options=channel_options(max_message))
    rpc = grpc.stream_stream_rpc_method_handler(
        service.exchange, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Exchange": rpc}),)
    )
    creds = _server_credentials(security)
    try:
        port = (
            server.add_insecure_port(listen)
            if creds is None
            else server.add_secure_port(listen, creds)
        )
    except RuntimeError as e:
        raise TransportError(f"{peer}: cannot listen on {listen}: {e}") from e
    if port == 0:
        raise TransportError(f"{peer}: cannot listen on {listen}")
    await server.start()
    return server, service, port


class GrpcChannel(Channel):
    """A client's stream to one serving party over gRPC."""

    def __init__(
        self,
        target: str,
        client_id: int,
        *,
        peer: str,
        security: ClientSecurity,
        ledger: Ledger | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        request_timeout: float | None = 600.0,
        claim_timeout: float = 60.0,
        reconnect: float = 0.0,
        replay_limit: int = 64 << 20,
    ) -> None:
        self.target, self.client_id, self.peer = target, client_id, peer
        self._ledger, self._timeout = ledger, request_timeout
        self._claim_timeout = claim_timeout
        #: Seconds to wait for a server that went away to come back (0: fail at once).
        self.reconnect = reconnect
        #: Answers had so far, and the latest requests (up to ``replay_limit`` bytes) to send
        #: again to a server that comes back without them; kept only with ``reconnect``.
        self.answered = 0
        self._log: deque[bytes] = deque()
        self._log_bytes, self._replay_limit = 0, replay_limit
        self._restored = False
        options = channel_options(max_message)
        if security.insecure:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            assert security.tls is not None
            cert, key, ca = security.tls.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        self._metadata: tuple[tuple[str, str], ...] = (("x-client-id", str(client_id)),)
        if security.token:
            self._metadata += (("authorization", f"Bearer {security.token}"),)
        self._stub = self._channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=None
        )
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, target: str, client_id: int, *, connect_timeout: float = 30.0, **kwargs: Any
    ) -> GrpcChannel:
        """Open a channel and wait (bounded) until the server is reachable."""
        channel = cls(target, client_id, **kwargs)
        try:
            await asyncio.wait_for(channel._channel.channel_ready(), connect_timeout)
        except TimeoutError:
            await channel._channel.close()
            raise TransportError(
                f"{channel.peer} at {target}: not reachable within {connect_timeout:g} s "
                "(server down, wrong address, or TLS handshake refused)"
            ) from None
        return channel

    def _error(self, what: str, e: grpc.aio.AioRpcError | None = None) -> TransportError:
        if e is None:
            return TransportError(f"{self.peer} at {self.target}: {what}")
        return self._status_error(what, e.code(), e.details())

    def _status_error(
        self, what: str, code: grpc.StatusCode, details: str | None
    ) -> TransportError:
        """The error for a call that ended with ``code``; a stream that gRPC's core lost
        (a server that went away while the client wrote) counts as the server unavailable."""
        status = code.name
        if code is grpc.StatusCode.INTERNAL and details == LOST_BY_CORE:
            # grpc.aio sets this status itself when a write or read fails in its core, e.g.
            # on a stream the server's shutdown (GOAWAY) cancelled: no party sent it, and
            # the server may be coming back, so a reconnecting client waits for it.
            status, details = "UNAVAILABLE", f"the stream was lost ({LOST_BY_CORE})"
        return TransportError(f"{self.peer} at {self.target}: {what}: {status}: {details}", status)

    def state(self) -> dict[str, Any]:
        """The answer count and the replay log (a client's round checkpoint)."""
        return {"answered": self.answered, "log": list(self._log)}

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` saved: the next stream opens as a reconnection."""
        self.answered, self._log = state["answered"], deque(state["log"])
        self._log_bytes = sum(map(len, self._log))
        self._restored = True

    async def request(self, message: bytes, estimates: dict[int, float] | None = None) -> bytes:
        """Write ``message`` on the stream and wait for the answer; with ``reconnect``, wait
        for a server that went away and send it again."""
        if not isinstance(message, bytes):
            raise TypeError(f"parties exchange bytes only, got {type(message).__name__}")
        if not message:
            raise ValueError("empty message: a request carries at least one frame")
        async with self._lock:  # one request in flight per stream: answers come in order
            if self._ledger is not None:
                self._ledger.record_message(
                    message, f"client->{self.peer}", estimates=estimates,
                    wire_bytes=wire_bytes(len(message)),
                )  # fmt: skip
            deadline = time.monotonic() + self._claim_timeout
            back_by: float | None = None
            while True:
                fresh = self._call is None
                try:
                    reply = await self._exchange(message)
                except TransportError as e:
                    if self.reconnect > 0 and e.status == "UNAVAILABLE":
                        if back_by is None:
                            back_by = time.monotonic() + self.reconnect
                            log.warning("%s; waiting up to %g s for it", e, self.reconnect)
                        await self._wait_back(back_by, e)
                        continue
                    # A restarted client can find its id still held by its old stream, which
                    # the server only drops once keepalive notices it is dead; the refused
                    # request never reached the party, so sending it again is safe.
                    if not (fresh and e.status == "ALREADY_EXISTS"):
                        raise
                    if time.monotonic() >= deadline:
                        raise
                    log.info("%s: client id %d still held; retrying", self.peer, self.client_id)
                    await asyncio.sleep(1.0)
                    continue
                self._answered(message)
                return reply

    def _answered(self, message: bytes) -> None:
        self.answered += 1
        if self.reconnect <= 0:
            return
        self._log.append(message)
        self._log_bytes += len(message)
        while self._log_bytes > self._replay_limit and len(self._log) > 1:
            self._log_bytes -= len(self._log.popleft())

    async def _wait_back(self, back_by: float, error: TransportError) -> None:
        """Wait (until ``back_by``) for the server to accept connections again."""
        left = back_by - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._channel.channel_ready(), left)
        except TimeoutError:
            raise TransportError(
                f"{error}; not back within {self.reconnect:g} s", error.status
            ) from None
        await asyncio.sleep(0.1)  # not in a tight loop if it accepts and fails again

    async def _open(self) -> grpc.aio.StreamStreamCall:
        """A new stream; a reconnecting client first sends again what the server lacks."""
        if not (self.reconnect > 0 and (self.answered > 0 or self._restored)):
            return self._stub(metadata=self._metadata)
        call = self._stub(metadata=(*self._metadata, (ANSWERED, str(self.answered))))
        try:
            head = dict(await asyncio.wait_for(call.initial_metadata(), self._timeout))
            if ANSWERED not in head:
                raise await self._ended(call)
            given = int(head[ANSWERED])
            first = self.answered - len(self._log)
            if given < first:
                call.cancel()
                raise self._error(
                    f"the server came back having answered {given} requests of this client, "
                    f"which has had {self.answered} and can send again those from {first} "
                    "only (was it restarted without its checkpoint?)"
                )
            if given < self.answered:
                log.info(
                    "%s: sending again %d requests it no longer has", self.peer,
                    self.answered - given,
                )  # fmt: skip
            for message in list(self._log)[given - first :]:
                await asyncio.wait_for(call.write(message), self._timeout)
                if await asyncio.wait_for(call.read(), self._timeout) is grpc.aio.EOF:
                    raise await self._ended(call)
        except grpc.aio.AioRpcError as e:
            raise self._error("reconnecting failed", e) from None
        except TimeoutError:
            call.cancel()
            raise self._error(f"no answer within {self._timeout:g} s") from None
        except asyncio.InvalidStateError:
            raise await self._ended(call) from None
        self._restored = False
        return call

    async def _exchange(self, message: bytes) -> bytes:
        if self._call is None:
            self._call = await self._open()
        call = self._call
        try:
            await asyncio.wait_for(call.write(message), self._timeout)
            reply = await asyncio.wait_for(call.read(), self._timeout)
        except grpc.aio.AioRpcError as e:
            self._call = None
            raise self._error("request failed", e) from None
        except TimeoutError:
            self._call = None
            call.cancel()
            raise self._error(f"no answer within {self._timeout:g} s") from None
        except asyncio.InvalidStateError:
            # write() on a stream the server already ended: report the server's status.
            self._call = None
            raise await self._ended(call) from None
        if reply is grpc.aio.EOF:
            self._call = None
            raise await self._ended(call)
        return bytes(reply)

    async def _ended(self, call: grpc.aio.StreamStreamCall) -> TransportError:
        try:
            code = await asyncio.wait_for(call.code(), 5.0)
            details = await call.details()
        except TimeoutError:
            return self._error("stream ended without a status")
        return self._status_error("stream ended", code, details)

    async def close(self) -> None:
        """Half-close the stream, wait for the server to end it, release the connection."""
        async with self._lock:
            call, self._call = self._call, None
            if call is not None:
                try:
                    # An empty message says goodbye: the server tells a client that left from
                    # one whose stream just ended (a dead process looks the same otherwise).
                    await asyncio.wait_for(call.write(b""), 5.0)
                    await asyncio.wait_for(call.done_writing(), 5.0)
                    await asyncio.wait_for(call.read(), 5.0)
                except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError):
                    pass  # closing anyway
            await self._channel.close()
