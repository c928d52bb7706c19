"""Near-duplicate matching: PDQ hashes in a faiss index, candidate search, video alignment,
keypoint confirmation, the matcher that links stored items, and the reports read from links.

One package so that matching has one home: the hashes stage writes hashes, the store keeps
links, and everything that decides what a match is lives here.
"""
