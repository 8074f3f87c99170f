"""Benchmarks: ``python -m benchmarks --data-dir ../shared/celeba-sample`` runs them all."""
