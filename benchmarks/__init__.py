"""Benchmarks of the fused contrast op against materialised and naive forms (see README.md)."""
