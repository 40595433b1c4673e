"""The run folder: what it holds and how it is created (folder), checkpoints, trackers and the progress line."""
