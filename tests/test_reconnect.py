"""A client reconnecting to a server restarted from a checkpoint (gRPC on 127.0.0.1): what the
server lost is sent again, an answer it gave is not handled twice, and a gap is an error."""

from __future__ import annotations

import grpc
import pytest
from test_grpc import INSECURE_CLIENT, INSECURE_SERVER, _frame, _run

from splitfedzip.metrics.ledger import Ledger
from splitfedzip.transport.base import Handler, Reply, TransportError
from splitfedzip.transport.grpc import LOST_BY_CORE, GrpcChannel, PartyService, serve_handler
from splitfedzip.wire import read_frames


class Tally(Handler):
    """Adds each request's number to a total and answers the total: a party with state."""

    def __init__(self, total: int = 0) -> None:
        self.total, self.handled = total, 0

    async def handle(self, request: bytes, client: int) -> Reply:
        """Add the number, answer the total."""
        self.total += int(read_frames(request)[0].payload)
        self.handled += 1
        return Reply(_frame(client, str(self.total).encode()))


async def _start(tally: Tally, port: int = 0, saved: dict | None = None):
    """Serve ``tally`` (restored with the service state ``saved``); (server, service, port)."""
    ledger = Ledger()
    service = PartyService(
        tally, peer="federation", security=INSECURE_SERVER, ledger=ledger, keep_replies=True
    )
    if saved is not None:
        service.restore(saved)
    return await serve_handler(
        tally, f"127.0.0.1:{port}", peer="federation", security=INSECURE_SERVER, service=service
    )


async def _ask(ch: GrpcChannel, n: int) -> int:
    return int(read_frames(await ch.request(_frame(0, str(n).encode())))[0].payload)


def test_a_restored_server_gets_what_it_lost_and_no_request_twice() -> None:
    async def go() -> None:
        first = Tally()
        server, service, port = await _start(first)
        ch = await GrpcChannel.connect(
            f"127.0.0.1:{port}", 0, peer="federation", security=INSECURE_CLIENT,
            connect_timeout=5, reconnect=20,
        )  # fmt: skip
        assert [await _ask(ch, n) for n in (1, 2)] == [1, 3]
        checkpoint = (first.total, service.state())  # the server's round boundary
        assert await _ask(ch, 3) == 6  # then it dies, and this answer is lost with it
        await server.stop(None)
        restored = Tally(checkpoint[0])
        server, service, _ = await _start(restored, port, checkpoint[1])
        try:
            # The client sends 3 again (the restored server had not had it), then 4.
            assert await _ask(ch, 4) == 10
            assert restored.handled == 2 and service.answered == {0: 4}
            # A client one answer behind (its answer was lost): the kept answer, not handled.
            behind = await GrpcChannel.connect(
                f"127.0.0.1:{port}", 0, peer="federation", security=INSECURE_CLIENT,
                connect_timeout=5, reconnect=20,
            )  # fmt: skip
            await ch.close()
            behind.restore({"answered": 3, "log": [_frame(0, str(n).encode()) for n in (1, 2, 3)]})
            assert await _ask(behind, 4) == 10 and restored.handled == 2
            await behind.close()
        finally:
            await server.stop(None)

    _run(go(), 60)


def test_a_server_that_lost_more_than_the_client_kept_is_an_error() -> None:
    async def go() -> None:
        server, _, port = await _start(Tally())
        ch = await GrpcChannel.connect(
            f"127.0.0.1:{port}", 0, peer="federation", security=INSECURE_CLIENT,
            connect_timeout=5, reconnect=20, replay_limit=1,  # keeps one request only
        )  # fmt: skip
        assert [await _ask(ch, n) for n in (1, 2)] == [1, 3]
        await server.stop(None)
        server, _, _ = await _start(Tally(), port)  # restarted without its checkpoint
        try:
            with pytest.raises(TransportError, match="having answered 0 requests of this client"):
                await _ask(ch, 3)
        finally:
            await ch.close()
            await server.stop(None)

    _run(go(), 60)


def test_a_stream_lost_in_grpc_core_counts_as_the_server_gone() -> None:
    # grpc.aio reports a write on a stream that a server's shutdown cancelled as INTERNAL
    # "Internal error from Core" now and then instead of UNAVAILABLE: the client must wait for
    # the server as for any other drop, while a party's own INTERNAL stays an error.
    async def go() -> None:
        ch = GrpcChannel("127.0.0.1:1", 0, peer="federation", security=INSECURE_CLIENT)
        try:
            lost = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, details=LOST_BY_CORE)
            assert ch._error("request failed", lost).status == "UNAVAILABLE"
            party = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, details="party failed: x")
            error = ch._error("request failed", party)
            assert error.status == "INTERNAL" and "party failed: x" in str(error)
        finally:
            await ch.close()

    _run(go(), 10)
