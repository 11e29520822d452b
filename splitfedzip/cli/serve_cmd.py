"""``splitfedzip serve|client|launch|certs``: each party as its own process, over gRPC."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..config import load_config
from ..errors import RunFailure, UserError
from .options import add_overrides

TOKEN_ENV = "SPLITFEDZIP_TOKEN"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML run configuration (the same everywhere)")
    add_overrides(p)
    p.add_argument(
        "--max-message-mb", type=int, default=256,
        help="largest message sent or accepted, in MiB (default 256)",
    )  # fmt: skip
    p.add_argument("--tls-cert", type=Path, help="this side's certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="this side's private key (PEM)")
    p.add_argument(
        "--tls-ca", type=Path,
        help="CA certificate (PEM): on a client, the CA that signed the server's certificate; "
        "on a server, require client certificates signed by it (mutual TLS, CN client-N)",
    )  # fmt: skip
    p.add_argument(
        "--insecure", action="store_true",
        help="plaintext, no TLS: local experiments only",
    )  # fmt: skip
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument(
        "--checkpoints", type=Path, metavar="DIR",
        help="save this process's part of each round checkpoint in DIR (round-NNNN/NAME.pt)",
    )  # fmt: skip
    p.add_argument(
        "--resume", nargs="?", const="latest", metavar="ROUND",
        help="continue from this process's part of round ROUND in --checkpoints (default: its "
        "latest); without one it starts from the beginning",
    )  # fmt: skip


def _checkpointing(args: argparse.Namespace):
    """--checkpoints and --resume as the deployment's typed option."""
    from ..experiments.resume import Checkpointing

    if args.checkpoints is None:
        if args.resume is not None:
            raise UserError("--resume needs --checkpoints DIR")
        return None
    if args.resume in (None, "latest"):
        return Checkpointing(args.checkpoints, args.resume is not None)
    if not args.resume.isdigit():
        raise UserError(f"--resume {args.resume!r}: expected a round number")
    return Checkpointing(args.checkpoints, True, int(args.resume))


def _server(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on")
    p.add_argument(
        "--tokens", type=Path,
        help='JSON file {"0": "token-of-client-0", ...}: each client must present its token',
    )  # fmt: skip
    p.add_argument("--ledger", type=Path, help="where to write this server's ledger csv")
    p.add_argument("--port-file", type=Path, help="write HOST:PORT here once serving")
    p.add_argument(
        "--until-clients", type=int,
        help="stop once this many clients have left or dropped out and none is connected "
        "(default: the configured number; 0: never)",
    )  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve``, ``client``, ``launch`` and ``certs`` commands."""
    serve = subparsers.add_parser("serve", help="run the federation server or the main server")
    roles = serve.add_subparsers(dest="role", metavar="ROLE", required=True)
    fed = roles.add_parser("federation", help="the federation server (FedAvg of client models)")
    _server(fed)
    fed.set_defaults(func=run_serve)
    main = roles.add_parser("main", help="the main server (the middle of the U-Net)")
    _server(main)
    main.add_argument(
        "--federation", required=True, metavar="HOST:PORT",
        help="the federation server; checked reachable at start-up",
    )  # fmt: skip
    main.set_defaults(func=run_serve)

    client = subparsers.add_parser("client", help="run one client against the two servers")
    _common(client)
    client.add_argument("--client-id", type=int, required=True, help="this client's index")
    client.add_argument("--main", required=True, metavar="HOST:PORT", help="the main server")
    client.add_argument(
        "--federation", required=True, metavar="HOST:PORT", help="the federation server"
    )
    client.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV),
        help=f"this client's token (default: ${TOKEN_ENV}, which keeps it out of ps)",
    )  # fmt: skip
    client.add_argument("--ledger", type=Path, help="where to write this client's ledger csv")
    client.add_argument("--result", type=Path, help="where to write this client's result JSON")
    client.add_argument(
        "--connect-timeout", type=float, default=60.0,
        help="seconds to wait for a server to be reachable, and for this client's id to be "
        "free after a restart (default 60)",
    )  # fmt: skip
    client.add_argument(
        "--request-timeout", type=float, default=600.0,
        help="seconds to wait for any one answer (default 600)",
    )  # fmt: skip
    client.add_argument(
        "--data-root", type=Path, metavar="DIR",
        help="this client's own data folder (the data set's layout), split into training and "
        "validation here; no other client's data is read (default: its share of the data set "
        "the config describes)",
    )  # fmt: skip
    client.add_argument(
        "--test-root", type=Path, metavar="DIR",
        help="client 0 (the tester): the test folder (default: data.test_root)",
    )  # fmt: skip
    client.add_argument(
        "--reconnect", type=float, default=0.0, metavar="SECONDS",
        help="wait up to SECONDS for a server that went away to come back (restarted from its "
        "checkpoint), and go on (default 0: stop at once)",
    )  # fmt: skip
    client.add_argument("--progress", action="store_true", help="show a progress bar")
    client.set_defaults(func=run_client)

    launch = subparsers.add_parser(
        "launch",
        help="run every party as a process on 127.0.0.1 and collect the results like train",
    )
    launch.add_argument("--config", required=True, help="YAML run configuration")
    add_overrides(launch)
    launch.add_argument("--out", type=Path, default=Path("runs/launch"), help="output directory")
    launch.add_argument(
        "--insecure", action="store_true", help="plaintext instead of TLS with tokens"
    )
    launch.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before giving up (default 3600)"
    )
    launch.add_argument("--max-message-mb", type=int, default=256)
    launch.add_argument(
        "--data-root", type=Path, action="append", metavar="DIR",
        help="one per client, in client order: each client process reads only its own folder "
        "(sets data.client_roots)",
    )  # fmt: skip
    launch.add_argument(
        "--test-root", type=Path, metavar="DIR",
        help="the tester's test folder, with --data-root (sets data.test_root)",
    )  # fmt: skip
    launch.add_argument(
        "--resume", action="store_true",
        help="continue the launch in OUT from its last complete round (OUT/checkpoints/)",
    )  # fmt: skip
    launch.set_defaults(func=run_launch)

    certs = subparsers.add_parser(
        "certs", help="generate a local CA and server/client certificates for a trial"
    )
    certs.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    certs.add_argument("--clients", type=int, required=True, help="number of client certificates")
    certs.add_argument(
        "--hosts", nargs="+", default=["127.0.0.1", "localhost"],
        help="names and addresses the server certificate is valid for",
    )  # fmt: skip
    certs.set_defaults(func=run_certs)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _tls(args: argparse.Namespace):
    from ..transport.grpc import TlsFiles

    if args.insecure:
        if args.tls_cert or args.tls_key or args.tls_ca:
            raise UserError("--insecure cannot be combined with --tls-* files")
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


def _read_tokens(path: Path | None) -> dict[int, str] | None:
    if path is None:
        return None
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise UserError(f'{path}: expected a JSON object {{"0": "token", ...}}')
    return {int(k): v for k, v in raw.items()}


def run_serve(args: argparse.Namespace) -> int:
    """``serve federation`` / ``serve main``."""
    _setup_logging(args.log_level)
    cfg = load_config(args.config, args.overrides)
    from ..experiments import deploy
    from ..transport.grpc import ServerSecurity

    security = ServerSecurity(
        tls=_tls(args), tokens=_read_tokens(args.tokens), insecure=args.insecure
    )
    opts = dict(
        security=security, max_message=args.max_message_mb << 20, ledger_path=args.ledger,
        port_file=args.port_file, until_clients=args.until_clients,
        checkpointing=_checkpointing(args),
    )  # fmt: skip
    try:
        if args.role == "federation":
            deploy.serve_federation(cfg, args.listen, **opts)
        else:
            deploy.serve_main(cfg, args.listen, args.federation, **opts)
    except RunFailure as e:
        print(f"splitfedzip serve {args.role}: error: {e}", file=sys.stderr)
        return 1
    return 0


def run_client(args: argparse.Namespace) -> int:
    """``client``."""
    _setup_logging(args.log_level)
    cfg = load_config(args.config, args.overrides)
    from ..experiments import deploy
    from ..transport.grpc import ClientSecurity

    security = ClientSecurity(tls=_tls(args), token=args.token, insecure=args.insecure)
    try:
        result = deploy.run_client(
            cfg, args.client_id, args.main, args.federation, security=security,
            max_message=args.max_message_mb << 20, ledger_path=args.ledger,
            result_path=args.result, connect_timeout=args.connect_timeout,
            request_timeout=args.request_timeout, progress=args.progress,
            data_root=args.data_root, test_root=args.test_root,
            checkpointing=_checkpointing(args), reconnect=args.reconnect,
        )  # fmt: skip
    except RunFailure as e:  # a server went away or refused, the codecs disagree, divergence
        print(f"splitfedzip client {args.client_id}: error: {e}", file=sys.stderr)
        return 1
    if result.test is not None:
        print(f"client {args.client_id}: test MJI {result.test['mji']:.4f}")
    return 0


def run_launch(args: argparse.Namespace) -> int:
    """``launch``."""
    overrides = list(args.overrides)
    if args.data_root:  # JSON strings are YAML: any path survives the override
        overrides.append(f"data.client_roots={json.dumps([str(p) for p in args.data_root])}")
    if args.test_root:
        overrides.append(f"data.test_root={json.dumps(str(args.test_root))}")
    cfg = load_config(args.config, overrides)
    from ..experiments.launch import launch

    try:
        result = launch(
            cfg, args.out, insecure=args.insecure, timeout=args.timeout,
            max_message_mb=args.max_message_mb, resume=args.resume,
        )  # fmt: skip
    except RunFailure as e:
        print(f"splitfedzip launch: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary, indent=2))
    return 0


def run_certs(args: argparse.Namespace) -> int:
    """``certs``."""
    from ..transport.tls import generate_certificates

    if args.clients < 1:
        raise UserError("--clients must be at least 1")
    written = generate_certificates(args.out, args.clients, tuple(args.hosts))
    print("\n".join(str(p) for p in written.values()))
    return 0
