"""The `qarina` command's parts, one module per area of work; `pipelines/cli.py` joins them."""
