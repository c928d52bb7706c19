"""Wiring: which stages run for which kind, the Ray runtime, intake, the CLI and benchmarks."""
