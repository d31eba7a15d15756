"""Benchmarks for Plexus: each module prints a markdown table; none of them asserts timings.

Run all with `make bench` (`python -m bench.run_all`) or one with `python -m bench.<name> --help`.
Figures and the machine they came from go to docs/benchmarks.md.
"""
