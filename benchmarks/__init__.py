"""`make bench`: benchmarks of the executor, RQ dispatch, the intake and the stores beneath.

Run with `python -m benchmarks`; see docs/benchmarks.md for what each scenario measures.
"""
