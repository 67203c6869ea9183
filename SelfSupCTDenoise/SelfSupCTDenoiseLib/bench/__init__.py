"""Benchmarks: methods compared, the faint-lesion benchmark and its observer, and figures."""
