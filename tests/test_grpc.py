"""The gRPC transport on 127.0.0.1: round trips, bad frames, TLS, identity, and a full run."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from splitfedzip.metrics.ledger import Ledger
from splitfedzip.transport.base import Handler, Reply, TransportError
from splitfedzip.transport.grpc import (
    ClientSecurity,
    GrpcChannel,
    ServerSecurity,
    TlsFiles,
    serve_handler,
    wire_bytes,
)
from splitfedzip.wire import Header, Kind, encode_frame, read_frames

INSECURE_SERVER = ServerSecurity(insecure=True)
INSECURE_CLIENT = ClientSecurity(insecure=True)


class Echo(Handler):
    """Answers each message with a frame carrying the client id and the payload reversed."""

    async def handle(self, request: bytes, client: int) -> Reply:
        """Echo the first frame's payload, reversed."""
        frame = read_frames(request)[0]
        return Reply(encode_frame(Header(Kind.CONTROL, client=client), frame.payload[::-1]))


def _frame(client: int, payload: bytes) -> bytes:
    return encode_frame(Header(Kind.CONTROL, client=client), payload)


def _run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _serve(security: ServerSecurity = INSECURE_SERVER, **kw):
    return await serve_handler(Echo(), "127.0.0.1:0", peer="main", security=security, **kw)


def test_round_trip_and_ledger() -> None:
    async def go() -> None:
        server_ledger, client_ledger = Ledger(), Ledger()
        server, _, port = await _serve(ledger=server_ledger)
        try:
            ch = await GrpcChannel.connect(
                f"127.0.0.1:{port}", 3, peer="main", security=INSECURE_CLIENT,
                ledger=client_ledger, connect_timeout=5,
            )  # fmt: skip
            for payload in (b"abc", b"x" * 100_000):
                msg = _frame(3, payload)
                reply = read_frames(await ch.request(msg, {0: 12.5}))
                assert reply[0].payload == payload[::-1] and reply[0].header.client == 3
            await ch.close()
        finally:
            await server.stop(None)
        assert [r.direction for r in client_ledger.rows] == ["client->main"] * 2
        # The server records both ways: its ledger alone holds every frame.
        assert [r.direction for r in server_ledger.rows] == ["client->main", "main->client"] * 2
        assert [r.bytes for r in server_ledger.rows[::2]] == [r.bytes for r in client_ledger.rows]
        assert client_ledger.rows[0].est_bits == 12.5 and server_ledger.rows[0].est_bits is None
        server_ledger.adopt_estimates(client_ledger)  # what only the sender knows
        assert [r.est_bits for r in server_ledger.rows[::2]] == [12.5, 12.5]
        big = client_ledger.rows[1]
        # 100 kB spans 7 HTTP/2 DATA frames: 5 prefix bytes + 7 * 9 header bytes of overhead.
        assert big.wire_bytes == wire_bytes(big.bytes) == big.bytes + 5 + 7 * 9

    _run(go())


def test_bad_frame_refused_server_keeps_serving() -> None:
    async def go() -> None:
        server, _, port = await _serve(max_message=1 << 20)
        target = f"127.0.0.1:{port}"
        try:
            good = await GrpcChannel.connect(target, 0, peer="main", security=INSECURE_CLIENT)
            bad = await GrpcChannel.connect(target, 1, peer="main", security=INSECURE_CLIENT)
            corrupt = bytearray(_frame(1, b"payload"))
            corrupt[-1] ^= 0xFF  # break the CRC
            with pytest.raises(TransportError, match=r"INVALID_ARGUMENT.*CRC32") as err:
                await bad.request(bytes(corrupt))
            assert target in str(err.value)
            with pytest.raises(ValueError, match="empty message"):
                await bad.request(b"")  # empty is the goodbye; a request needs a frame
            with pytest.raises(TransportError, match="RESOURCE_EXHAUSTED"):
                await bad.request(_frame(1, b"x" * (2 << 20)))
            # The other client's stream, and a new stream of the faulty one, still work.
            assert read_frames(await good.request(_frame(0, b"ok")))[0].payload == b"ko"
            assert read_frames(await bad.request(_frame(1, b"ab")))[0].payload == b"ba"
            await good.close()
            await bad.close()
        finally:
            await server.stop(None)

    _run(go())


def test_unreachable_server_bounded_wait() -> None:
    async def go() -> None:
        with pytest.raises(TransportError, match="not reachable within 1 s"):
            await GrpcChannel.connect(
                "127.0.0.1:1", 0, peer="federation", security=INSECURE_CLIENT, connect_timeout=1
            )

    _run(go())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitfedzip.transport.tls import generate_certificates

    out = tmp_path_factory.mktemp("certs")
    generate_certificates(out, clients=2)
    return out


def test_tls_tokens_and_duplicate_client(certs: Path) -> None:
    tokens = {0: "secret-0", 1: "secret-1"}
    server_sec = ServerSecurity(
        tls=TlsFiles(certs / "server.pem", certs / "server.key"), tokens=tokens
    )

    def client_sec(token: str | None) -> ClientSecurity:
        return ClientSecurity(tls=TlsFiles(ca=certs / "ca.pem"), token=token)

    async def go() -> None:
        server, _, port = await _serve(server_sec)
        target = f"127.0.0.1:{port}"
        try:
            for cid, token in ((0, None), (0, "secret-1"), (7, "secret-0")):
                ch = await GrpcChannel.connect(target, cid, peer="main", security=client_sec(token))
                with pytest.raises(TransportError, match="UNAUTHENTICATED.*invalid token"):
                    await ch.request(_frame(cid, b"hi"))
                await ch.close()
            ok = await GrpcChannel.connect(target, 0, peer="main", security=client_sec("secret-0"))
            assert read_frames(await ok.request(_frame(0, b"hi")))[0].payload == b"ih"
            twin = await GrpcChannel.connect(
                target, 0, peer="main", security=client_sec("secret-0"), claim_timeout=1
            )
            with pytest.raises(TransportError, match="ALREADY_EXISTS.*already connected"):
                await twin.request(_frame(0, b"hi"))
            await twin.close()
            # A restarted client waits (bounded) for its old stream to go, then gets through.
            again = await GrpcChannel.connect(
                target, 0, peer="main", security=client_sec("secret-0"), claim_timeout=20
            )
            closing = asyncio.get_running_loop().call_later(
                1.5, lambda: asyncio.ensure_future(ok.close())
            )
            assert read_frames(await again.request(_frame(0, b"yo")))[0].payload == b"oy"
            closing.cancel()
            await again.close()
            # Plaintext against a TLS server never becomes ready.
            with pytest.raises(TransportError, match="not reachable"):
                await GrpcChannel.connect(
                    target, 1, peer="main", security=INSECURE_CLIENT, connect_timeout=1
                )
        finally:
            await server.stop(None)

    _run(go())


def test_mutual_tls_checks_certificate_cn(certs: Path) -> None:
    server_sec = ServerSecurity(
        tls=TlsFiles(certs / "server.pem", certs / "server.key", certs / "ca.pem")
    )

    def client_sec(i: int) -> ClientSecurity:
        return ClientSecurity(
            tls=TlsFiles(certs / f"client-{i}.pem", certs / f"client-{i}.key", certs / "ca.pem")
        )

    async def go() -> None:
        server, _, port = await _serve(server_sec)
        target = f"127.0.0.1:{port}"
        try:
            ok = await GrpcChannel.connect(target, 1, peer="main", security=client_sec(1))
            assert read_frames(await ok.request(_frame(1, b"hi")))[0].payload == b"ih"
            await ok.close()
            # client-0's certificate claiming to be client 1
            liar = await GrpcChannel.connect(target, 1, peer="main", security=client_sec(0))
            with pytest.raises(TransportError, match="UNAUTHENTICATED.*client-0"):
                await liar.request(_frame(1, b"hi"))
            await liar.close()
        finally:
            await server.stop(None)

    _run(go())


SMALL_RUN = [
    "data.image_size=32", "model.base_width=4", "data.num_samples=12", "data.test_samples=4",
    "train.rounds=1", "train.local_epochs=1", "train.max_batches=2", "train.device=cpu",
    "scheme=fg", "codec=ae", "codec_options.latent_channels=8", "data.partition.clients=2",
]  # fmt: skip


def _bytes_by_kind(ledger: Ledger) -> Counter:
    totals: Counter = Counter()
    for row in ledger.rows:
        totals[row.direction, row.kind, row.phase] += row.bytes
    return totals


def test_launch_with_a_folder_per_client_matches_the_embedded_run(tmp_path, lesion_folder):
    from splitfedzip.config import load_config
    from splitfedzip.data.sites import write_site_folders
    from splitfedzip.experiments.launch import launch
    from splitfedzip.experiments.train import run_embedded

    ham = ["data.dataset=ham10000", "data.test_samples=4"]
    shared = load_config(None, [*SMALL_RUN, *ham, f"data.root={lesion_folder('all', 16)}"])
    embedded = run_embedded(shared)
    # Each client process gets its own folder (--data-root) and reads no other.
    roots, test = write_site_folders(shared.data, shared.train.seed, tmp_path / "sites")
    sites = [f"data.client_roots={json.dumps([str(r) for r in roots])}", f"data.test_root={test}"]
    deployed = launch(load_config(None, [*SMALL_RUN, *ham, *sites]), tmp_path / "run", timeout=180)
    # Same seeds, samples and operations in the same order on the same CPU: only torch's
    # parallel reductions, split over a different number of threads (launch gives each process
    # a share of the cores), could move the result, far below 1e-5.
    assert deployed.summary["test_mji"] == pytest.approx(embedded.summary["test_mji"], abs=1e-5)
    assert _bytes_by_kind(deployed.ledger) == _bytes_by_kind(embedded.ledger)
    for i, root in enumerate(roots):
        log = (tmp_path / "run" / "logs" / f"client-{i}.log").read_text()
        assert f"checked {len(list((root / 'images').iterdir()))} images" in log
    # wire_bytes sits on each message's first frame and covers the whole message plus framing.
    for side in ("client->", "main->", "federation->"):
        rows = [r for r in deployed.ledger.rows if r.direction.startswith(side)]
        assert sum(r.wire_bytes or 0 for r in rows) > sum(r.bytes for r in rows) > 0
    for name in ("config.yaml", "metrics.csv", "ledger.csv", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    assert (tmp_path / "run" / "checkpoints").is_dir()
    logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    assert logs == ["client-0.log", "client-1.log", "federation.log", "main.log"]
