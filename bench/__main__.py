"""`python -m bench`: run the benchmarks, print a table, write the figures as JSON.

Targets are printed beside the figures; nothing here fails a build (`--smoke` is what CI
runs, to keep the suite working).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import anyio

from bench.harness import Row, StandInSetup
from bench.sizes import SMOKE, Sizes
from bench.suites import OPT_IN, SUITES

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def render_table(rows: list[Row]) -> str:
    header = f"{'benchmark':<52} {'median':>10} {'p95':>10}  {'unit':<6} {'target':<12} verdict"
    lines = [header, "-" * len(header)]
    for row in rows:
        verdict = {True: "met", False: "MISSED", None: "-"}[row.met]
        lines.append(
            f"{row.name:<52} {row.median:>10.2f} {row.p95:>10.2f}  {row.unit:<6} "
            f"{row.target:<12} {verdict}"
        )
        if row.notes:
            lines.append(f"{'':<4}{row.notes}")
    return "\n".join(lines)


async def run(names: list[str], sizes: Sizes) -> list[Row]:
    setup = StandInSetup()
    rows: list[Row] = []
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows += await SUITES[name](setup, sizes)
    finally:
        setup.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--only", action="append", choices=sorted(SUITES), help="run just this")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUTPUT, help="where to write")
    parser.add_argument(
        "--real-architecture",
        action="store_true",
        help="also the diffusers backend at real scale (an SD 1.5-shaped random-weight "
        "model, built once: about 4 GB and ten minutes)",
    )
    args = parser.parse_args(argv)
    names = args.only or [name for name in SUITES if name not in OPT_IN]
    if args.real_architecture and "real-architecture" not in names:
        names.append("real-architecture")
    sizes = SMOKE if args.smoke else Sizes()
    rows = anyio.run(run, names, sizes)
    print(render_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        },
        "smoke": args.smoke,
        "results": [row.as_json() for row in rows],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
