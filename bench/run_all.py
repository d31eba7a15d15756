"""`make bench`: run every benchmark, one after another, each in a fresh interpreter (so one's imports,
fd limits and leftovers cannot colour the next), and let each print its own tables.

    python -m bench.run_all [--only gateway_overhead,streaming,open_streams,knowledge,tools]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import ROOT, print_machine, python_env

BENCHES = ("gateway_overhead", "streaming", "open_streams", "knowledge", "tools", "workflow", "scale_out")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES), help="comma list of benchmarks to run")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    print("# Plexus benchmarks\n")
    print_machine()
    print(flush=True)
    failed = []
    for name in names:
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False, cwd=ROOT, env=python_env()).returncode
        print(f"\n({name}: {time.monotonic() - t0:.0f} s, exit {rc})\n", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
