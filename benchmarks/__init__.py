"""Benchmarks of the fused contrast op against materialised and naive forms (see benchmarks/README.md and docs/benchmarks.md)."""
