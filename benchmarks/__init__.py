"""Benchmarks of jaxdd (not part of the installed package): run them as `python -m benchmarks.NAME` from the
repository root; benchmarks/RESULTS.md lists the commands and the results they made."""
