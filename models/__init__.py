"""The ML models the stages run: where weights come from, their hashes, and the device to use.

Models are only ever loaded from installed packages or local folders; nothing is downloaded at
run time. `whisper` holds the transcription models.
"""
