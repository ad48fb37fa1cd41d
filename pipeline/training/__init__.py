"""The train stage's parts: what to train (plan), the resumable backup, callbacks, the run."""
