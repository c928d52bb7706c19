"""Generated media for the tests, the demo and the benchmarks, named by the property it has.

Everything is made on the spot (Pillow + piexif, ffmpeg lavfi, espeak-ng) and written under a
path the caller chooses, so nothing needs data files or the network, and the demo shows what
real material looks like to the pipeline. Names are chosen to lie where a test needs them to:
the stages must never look at names.

One module per kind of media: `photos`, `videos`, `audio`, `archives` for the zips and tars
evidence arrives packed in, and `hostile` for what a broken transfer, a careless save or an
attacker leaves (bombs and path-traversal archives among them). The benchmarks' media is cut
from the shared corpus's real pictures and voices instead, since made-up media would flatter
what they measure: `phone_clips` (a phone-like clip with its true cuts), `corpus_speech` (a
long recording of Arabic speech) and `video_edits` (the copies people make of a real video).
`motion_clips` renders the camera motion, flashes and transitions a shot detector must tell
apart, in two halves: one to choose settings on, one to check them.
"""
