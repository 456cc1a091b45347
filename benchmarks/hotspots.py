"""Where a Kairos route spends its CPU: py-spy samples of the gateway under wrk, in µs/request.

    .venv/bin/pip install py-spy    # not a dependency of Kairos
    .venv/bin/python benchmarks/hotspots.py [--route bare|full] [--duration 10] [--top 25]

Starts the backend (nginx ``return 200``, 1 KiB, else the aiohttp test upstream) and a gateway
at ``--log-level warning``, then:

1. runs wrk (``-t1 -c64``) against the route without the profiler: requests/s and the gateway's
   CPU µs per request (``/proc``, as ``run.py`` measures it);
2. runs wrk again while ``py-spy record`` samples the gateway (``--rate`` Hz, idle samples
   excluded, so every sample is time the process was running Python or a call made from it);
3. prints, for the top functions, the share of samples in which each is on the stack
   (inclusive) and at the top of it (self), converted to µs per request with the CPU figure of
   step 1, and the same by source file. ``--raw FILE`` keeps py-spy's collapsed stacks (for
   ``flamegraph.pl`` or speedscope).

Time in C (the event loop's ``select``, socket calls, httptools) is charged to the Python line
that called it. Not part of the test run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run import BARE, FULL, Environment, Target, start_environment  # noqa: E402
from benchmarks.wrk import Load, run_wrk  # noqa: E402

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def profile(target: Target, duration_s: int, rate: int, raw: Path) -> Counter[str]:
    """Collapsed stacks (``frame;frame;... count``) of the target's gateway under wrk."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    headers = [f"-H{name}: {value}" for name, value in target.request.headers.items()]
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c64", f"-d{duration_s + 2}s", *headers, target.request.url],
        stdout=subprocess.DEVNULL,
    )
    record = [py_spy, "record", "-p", str(target.cpu_pid), "-d", str(duration_s)]
    try:
        subprocess.run(
            [*record, "-r", str(rate), "-f", "raw", "-o", str(raw)], check=True, capture_output=True
        )
    finally:
        wrk.wait()
    stacks: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[stack] += int(count)
    return stacks


def function_of(frame: str) -> tuple[str, str]:
    """(``function (file)``, ``file``) of a py-spy frame ``function (file:line)``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, frame
    return f"{match['function']} ({match['file']})", match["file"]


def tables(stacks: Counter[str]) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """Total samples, inclusive and self samples per function, self samples per file."""
    total = sum(stacks.values())
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [function_of(frame) for frame in stack.split(";")]
        for function in {function for function, _ in frames}:
            inclusive[function] += count
        leaf_function, leaf_file = frames[-1]
        own[leaf_function] += count
        by_file[leaf_file] += count
    return total, inclusive, own, by_file


class Node:
    """One frame of the call tree: its samples (inclusive) and its callees."""

    def __init__(self) -> None:
        self.samples = 0
        self.children: dict[str, Node] = {}


def call_tree(stacks: Counter[str]) -> Node:
    root = Node()
    for stack, count in stacks.items():
        node = root
        node.samples += count
        for frame in stack.split(";"):
            node = node.children.setdefault(function_of(frame)[0], Node())
            node.samples += count
    return root


def print_tree(root: Node, cpu_us: float, min_share: float) -> None:
    """Callees above ``min_share`` of all samples, heaviest first; the chain of frames every
    sample shares (interpreter start-up, Sanic's runner) is skipped."""
    total = root.samples
    while len(root.children) == 1:
        (root,) = root.children.values()
    print(f"{'share':>6s} {'µs/req':>7s}  call tree (inclusive)")

    def walk(node: Node, name: str, depth: int) -> None:
        share = node.samples / total
        print(f"{100 * share:5.1f}% {share * cpu_us:7.1f}  {'  ' * depth}{name}")
        for child_name, child in sorted(node.children.items(), key=lambda c: -c[1].samples):
            if child.samples / total >= min_share:
                walk(child, child_name, depth + 1)
        accounted = sum(c.samples for c in node.children.values())
        own = (node.samples - accounted) / total
        if node.children and own >= min_share:
            print(f"{100 * own:5.1f}% {own * cpu_us:7.1f}  {'  ' * (depth + 1)}(self)")

    for name, child in sorted(root.children.items(), key=lambda c: -c[1].samples):
        walk(child, name, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=["bare", "full"], default="bare")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--min-share", type=float, default=1.0, help="call tree: hide frames under this %%"
    )
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kairos-hotspots-"))
    env: Environment = start_environment(workdir, with_aiohttp=False)
    try:
        target = env.targets[BARE if args.route == "bare" else FULL]
        run_wrk(target.request, Load(duration_s=2))
        plain = run_wrk(target.request, Load(duration_s=args.duration), target.cpu_pid)
        raw = args.raw or workdir / "stacks.txt"
        stacks = profile(target, args.duration, args.rate, raw)
    finally:
        env.stop()
    total, inclusive, own, by_file = tables(stacks)
    cpu = plain.cpu_us_per_request
    print(
        f"kairos {args.route}: {plain.rps:,.0f} req/s, {cpu:.1f} µs CPU per request "
        f"(wrk -t1 -c64 -d{args.duration}s, no profiler); {total:,} py-spy samples at "
        f"{args.rate} Hz under the same load; backend: {env.backend}"
    )

    def show(title: str, counts: Counter[str], top: int) -> None:
        print(f"\n{title}")
        print(f"{'share':>6s} {'µs/req':>7s}  function")
        for name, count in counts.most_common(top):
            share = count / total
            print(f"{100 * share:5.1f}% {share * cpu:7.1f}  {name}")

    print()
    print_tree(call_tree(stacks), cpu, args.min_share / 100)
    show("On the stack (inclusive)", inclusive, args.top)
    show("At the top of the stack (self)", own, args.top)
    show("Self time by file", by_file, args.top)
    print(f"\n(µs/req = share of samples × {cpu:.1f} µs)")
    if args.raw is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
