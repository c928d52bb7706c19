"""The evidence store: schema, content-addressed blobs, the job queue, custody and matches.

Nothing here knows about stages or Ray; `pipelines` wires the store to the workers.
"""
