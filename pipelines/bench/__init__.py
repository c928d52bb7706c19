"""Benchmarks for hardware planners: `qarina bench ingest | photos | backlog`.

Planners size clusters from these numbers ("how many nodes clear 2 million items in 30
days?"), so every benchmark follows the same rules, on purpose:

- It measures against a named peer *in the same run* (`openssl dgst`, `dd`, the sequential
  runner) and reports the ratio: absolute MB/s or items/s mean little across machines, a ratio
  to a well-known tool on the same machine, cache state and disk does not.
- It repeats what it can, reports the median, and keeps every run in the JSON.
- It records the machine (CPU model, cores, RAM, the data folder's disk and file system,
  Python, Ray) next to the numbers, because a figure without its machine cannot be compared.
- Generated data lives in a temporary folder inside the data folder (the disk being
  measured), is never timed, and is removed afterwards.

Each benchmark writes its JSON to `output` (parents created), prints a short summary to
stderr, and returns the same dict.

One module per benchmark (`ingest`, `photos`, `backlog`, `keyframes`), each with its own `bench_*`
function; what they share (machine description, medians and latencies, the scratch folder,
writing the report) lives in `report`.
"""
