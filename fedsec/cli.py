"""The `fedsec` command: a thin argparse front end over the library.

Each subcommand imports what it needs when it runs, so `fedsec --help` stays
fast. Errors print one `fedsec: error: ...` line; exit 2 for bad input, 1 for
a runtime failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedsec import __version__, _proc
from fedsec.errors import EXIT_OK, ConfigError, FedsecError


def _cmd_provision(args: argparse.Namespace) -> int:
    from fedsec import _fs
    from fedsec.provision import load_project, provision, templates

    if args.init:
        out = Path(args.output)
        if out.exists():
            raise ConfigError(f"{out} already exists; not overwriting it")
        _fs.write_atomic(out, templates.SAMPLE_PROJECT.encode())
        print(f"wrote a sample project file to {out}; edit it, then run: fedsec provision -p {out}")
        return EXIT_OK
    if not args.project:
        raise ConfigError("provision needs -p PROJECT_YML (or --init to write a sample)")
    result = provision(load_project(Path(args.project)), Path(args.workspace))
    root_note = "made a new root CA" if result.new_root else "kept the existing root CA"
    print(f"provisioned project {result.project.name} into {result.prod_dir} ({root_note})")
    for kit in result.kits:
        print(f"  {kit.name:<28} {kit}")
    return EXIT_OK


def _cmd_verify_kit(args: argparse.Namespace) -> int:
    from fedsec.kit import load_kit

    kit = load_kit(Path(args.kit))
    what = f"{kit.kind.value} {kit.name!r} of project {kit.config.project}"
    print(f"kit {kit.root} is intact: {what}, {len(kit.signed_files)} signed files")
    return EXIT_OK


def _cmd_server(args: argparse.Namespace) -> int:
    from fedsec import logs
    from fedsec.kit import load_kit
    from fedsec.server.app import run_server

    _proc.tune_malloc()
    _proc.private_files()
    logs.setup(args.log_level)
    # checked here, not in a child as a site's: the server reads a certificate at every call (the X.509 code stays)
    return run_server(load_kit(Path(args.kit)), listen=args.listen, fl_port=args.fl_port)


def _cmd_client(args: argparse.Namespace) -> int:
    from fedsec import logs
    from fedsec.launch import check_kit
    from fedsec.pki.identity import Kind

    _proc.tune_malloc()
    _proc.private_files()
    logs.setup(args.log_level)
    kit = check_kit(Path(args.kit), Kind.CLIENT)  # first, in a child: this process never loads the X.509 code
    from fedsec.site.agent import run_site

    return run_site(kit)


def _cmd_launch(args: argparse.Namespace) -> int:
    from fedsec.launch import launch

    _proc.tune_malloc()
    _proc.private_files()
    return launch([Path(k) for k in args.kits], args.log_level)


def _cmd_admin(args: argparse.Namespace) -> int:
    from fedsec import logs
    from fedsec.admin.shell import run_admin

    logs.setup(args.log_level)
    return run_admin(Path(args.kit), args.commands or (), as_json=args.json)


def _cmd_he_decrypt(args: argparse.Namespace) -> int:
    from fedsec import _fs, limits
    from fedsec.he.codec import decrypt_model
    from fedsec.he.context import load_client_context
    from fedsec.he.sealed import BUNDLE_MAGIC, split_bundle, unseal
    from fedsec.wire import arrays, model_file

    context = load_client_context(
        _fs.read_bounded(Path(args.context), limits.MAX_KIT_FILE_BYTES, f"HE context {args.context}"), args.context
    )
    source = Path(args.result)
    if source.is_dir():
        source = source / "global_model.fsh"
    data = _fs.read_bounded(source, limits.MAX_MODEL_BYTES, f"encrypted model {source}")
    if data[: len(BUNDLE_MAGIC)] == BUNDLE_MAGIC:  # a FedOpt job's: the global model its sites stepped to, sealed
        from fedsec.fedopt import split_plaintext

        _, sealed, _ = split_bundle(data, str(source))
        params, _ = split_plaintext(unseal(context, sealed, str(source)), str(source))
        what = "the FedOpt global model"
    else:
        from fedsec.jobs.control import RESERVED  # a scaffold job's sum also holds its control-variate sections

        params, weight = decrypt_model(context, data, str(source))
        params = {name: value for name, value in params.items() if not name.startswith(RESERVED)}
        what = f"total weight {weight:g}"
    out = Path(args.output) if args.output else source.with_suffix(model_file.SAFETENSORS_SUFFIX)
    if out.suffix == model_file.CONTAINER_SUFFIX:  # the older format, when asked for by name
        arrays.write_file(out, params)
    else:
        model_file.write_safetensors(out, params)
    print(f"decrypted {source} ({len(params)} tensors, {what}) into {out}")
    return EXIT_OK


def _cmd_poc(args: argparse.Namespace) -> int:
    from fedsec.provision import poc

    folder = Path(args.dir)
    if args.action == "stop":
        if args.he:
            raise ConfigError("poc stop: --he is for starting a poc")
        for line in poc.stop(folder):
            print(line)
        return EXIT_OK
    if not args.action.isdigit():
        raise ConfigError(f"poc: expected the number of sites or 'stop', got {args.action!r}")
    started, fresh = poc.start(folder, int(args.action), he=args.he)
    kit = started.admin
    what = "provisioned and started" if fresh else "started"
    he = " with homomorphic encryption" if started.he else ""
    print(f"{what} a poc federation{he} in {started.folder}: the server and {len(started.sites)} sites, all registered")
    print(f"admin kit: {kit}")
    print("next:")
    print("  fedsec job new myjob --template pytorch     # a job folder to start from")
    print(f"  python myjob/job.py --startup_kit {kit}")
    print(f"  {kit}/startup/fl_admin.sh     # the admin shell")
    print(f"  fedsec poc stop --dir {started.folder}")
    return EXIT_OK


def _cmd_job_new(args: argparse.Namespace) -> int:
    from fedsec.jobs.scaffold import new_job

    folder = Path(args.dir) / args.name
    written = new_job(folder, args.template)
    print(f"wrote the {args.template} job {args.name} into {folder}: {', '.join(p.name for p in written)}")
    print(f"run it on a federation (fedsec poc 2 starts one): python {folder / 'job.py'} --startup_kit ADMIN_KIT")
    return EXIT_OK


def _add_launch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "launch",
        help="start the server and sites of kits on this machine in the background, importing once (start_fl.sh)",
        description="Start a server (at most one) and sites from their kits in the background, as each kit's "
        "startup/start.sh would (log in <kit>/log.txt, pid in <kit>/daemon.pid; stop each with its "
        "startup/stop_fl.sh), from one process that imports their code once and forks a process per kit. "
        "Returns once all are started: it does not wait for the server to listen or the sites to register. "
        "Exit 1 when a kit was refused (it is not started; the others are).",
    )
    p.add_argument("--kit", dest="kits", action="append", required=True, metavar="DIR", help="a kit (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_launch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsec", description="fedsec: secure federated learning (provision, run and administer a federation)."
    )
    parser.add_argument("--version", action="version", version=f"fedsec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "provision",
        help="make a root CA and signed startup kits from a project file",
        description="Make (once) the project's root CA and, each run, a new prod_NN folder with one signed startup "
        "kit per participant. Kits of every prod_NN of a project work together.",
    )
    p.add_argument("-p", "--project", metavar="PROJECT_YML", help="the project file")
    p.add_argument(
        "-w", "--workspace", metavar="DIR", default="workspace", help="where to write (default: ./workspace)"
    )
    p.add_argument("--init", action="store_true", help="write a commented sample project file and exit")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="project.yml",
        help="with --init: where to write it (default: project.yml)",
    )
    p.set_defaults(func=_cmd_provision)

    p = sub.add_parser(
        "verify-kit",
        help="check a startup kit's signatures, certificate and key",
        description="Check every signed file of a startup kit against its root CA, "
        "and that its certificate and key belong together.",
    )
    p.add_argument("kit", metavar="DIR", help="the participant's kit folder (the one holding startup/)")
    p.set_defaults(func=_cmd_verify_kit)

    p = sub.add_parser(
        "server",
        help="run the federation server from its startup kit",
        description="Run the server parent process: the clients' port and the admins' port (both mutual TLS). "
        "Refuses a kit whose signature check fails. Stops on SIGTERM; running jobs resume at the next start.",
    )
    p.add_argument("--kit", required=True, metavar="DIR", help="the server's kit folder")
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="address to listen on (default: 127.0.0.1 for a loopback-only server, else 0.0.0.0)",
    )
    p.add_argument(
        "--fl-port",
        type=int,
        metavar="PORT",
        help="listen for sites on PORT instead of the kit's fl_port: for a server behind a port-forwarding NAT, "
        "a load balancer or a test proxy that sites reach at the kit's address",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser(
        "client",
        help="run a site (client) from its startup kit",
        description="Run a site's client parent process: it dials out to the server over mutual TLS, registers, "
        "heartbeats and runs the jobs assigned to it. Refuses a kit whose signature check fails.",
    )
    p.add_argument("--kit", required=True, metavar="DIR", help="the site's kit folder")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_client)

    _add_launch(sub)

    p = sub.add_parser(
        "admin",
        help="the admin shell: submit, follow and manage jobs and sites with an admin kit",
        description="Log in to the server with an admin kit and run admin commands: at a prompt with history and "
        "completion, or non-interactively from -c options or piped stdin (plain text; exit 0 when every command "
        "succeeded, 1 when one failed, 2 for an unknown command or bad usage; stops at the first failure).",
    )
    p.add_argument("--kit", required=True, metavar="DIR", help="the admin's kit folder")
    p.add_argument(
        "-c",
        "--command",
        dest="commands",
        action="append",
        metavar="COMMAND",
        help="run COMMAND and exit (repeatable, run in order); 'help' lists the commands",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with -c or piped stdin: each command writes one line, a JSON document "
        '{"command", "status", "result"} or {"command", "status", "error"}, instead of text',
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_admin)

    p = sub.add_parser(
        "poc",
        help="a local proof-of-concept federation: provision N sites and start them, or stop them",
        description="fedsec poc N: provision a project with a server, sites site-1..site-N and the project admin "
        "admin@fedsec.local into DIR (on free ports of 127.0.0.1), start the server and every site in the "
        "background and return once all are registered. Run again on a stopped DIR to start the same kits. "
        "fedsec poc stop: stop exactly the processes started from DIR, by their pids.",
    )
    p.add_argument("action", metavar="N|stop", help="how many sites to start, or 'stop'")
    p.add_argument("--he", action="store_true", help="a project with homomorphic encryption (the he extra)")
    p.add_argument("--dir", default="fedsec-poc", metavar="DIR", help="the poc's folder (default: ./fedsec-poc)")
    p.set_defaults(func=_cmd_poc)

    p = sub.add_parser("job", help="job folders", description="Job folders.")
    job_sub = p.add_subparsers(dest="job_command", metavar="JOB_COMMAND", required=True)
    p = job_sub.add_parser(
        "new",
        help="write a job folder to start from (job.py, client.py, model.py)",
        description="Write DIR/NAME: job.py (builds a FedAvg recipe and runs it: python NAME/job.py --startup_kit "
        "ADMIN_KIT), client.py (the training script) and model.py, from a template that runs as it is on a "
        "fedsec poc federation. Refuses a folder that exists.",
    )
    p.add_argument("name", metavar="NAME", help="the job's name, and its folder's")
    p.add_argument(
        "--template",
        choices=["numpy", "pytorch", "sklearn"],
        default="numpy",
        help="numpy: softmax regression on synthetic data (no extra); pytorch, sklearn: the digits data (the ml "
        "extra). Default: numpy",
    )
    p.add_argument("--dir", default=".", metavar="DIR", help="where to make the folder (default: here)")
    p.set_defaults(func=_cmd_job_new)

    p = sub.add_parser("he", help="homomorphic encryption tools", description="Homomorphic encryption tools.")
    he_sub = p.add_subparsers(dest="he_command", metavar="HE_COMMAND", required=True)
    p = he_sub.add_parser(
        "decrypt",
        help="decrypt a downloaded encrypted global model with a site's HE context",
        description="Decrypt an HE job's global model (global_model.fsh, or a downloaded result folder holding it) "
        "with a site's client_context.tenseal, into plain weights: a .safetensors file (or .fsa, if -o names one).",
    )
    p.add_argument(
        "--context", required=True, metavar="CLIENT_CONTEXT", help="a site kit's startup/client_context.tenseal"
    )
    p.add_argument("result", metavar="RESULT", help="global_model.fsh or the downloaded result folder")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default: next to the input, .safetensors)")
    p.set_defaults(func=_cmd_he_decrypt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Job processes are started with fork+exec; gRPC's fork handlers are for children that keep using gRPC.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except FedsecError as exc:
        print(f"fedsec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedsec: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
