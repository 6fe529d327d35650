"""The ``attnalign`` command: thin argument parsing over the library.

Every sub-command prints an :class:`AttnalignError` as one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import AttnalignError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnalign", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score attributions computed elsewhere (JSON Lines)")
    s.add_argument("file", help="JSON Lines: one task a line (see README)")
    s.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="top-K sizes (default 5 10 20)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(func=cmd_score)

    v = sub.add_parser("verify-benchmarks", help="run every canonical solution through the sandbox")
    v.add_argument("--benchmark", choices=["humaneval", "mbpp", "all"], default="all")
    v.add_argument("-j", "--jobs", type=int, default=0, help="parallel programs (default: CPU count)")
    v.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program")
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser("check", help="run one completion against a task's tests")
    c.add_argument("task_id", help="HumanEval/N or Mbpp/N")
    c.add_argument("completion_file", help="text continuing the task's completion-mode prompt")
    c.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)
    return p


def cmd_score(args: argparse.Namespace) -> int:
    from .scorefile import score_file_command

    return score_file_command(args.file, args.k, args.json)


def cmd_verify(args: argparse.Namespace) -> int:
    from .execution import verify_benchmarks_command

    return verify_benchmarks_command(args.benchmark, args.jobs, args.timeout)


def cmd_check(args: argparse.Namespace) -> int:
    from .execution import check_command

    return check_command(args.task_id, args.completion_file, args.timeout, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except AttnalignError as exc:
        print(f"attnalign: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
