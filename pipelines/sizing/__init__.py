"""Sizing hardware: the per-stage cost model that `qarina bench` writes and `qarina plan` reads.

`costs` is the one cost model (both commands import it, so the measurement and the plan
cannot drift apart); `plan` turns bench files and a backlog into cores, GPUs, days and growth.
"""
