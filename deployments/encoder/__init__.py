"""The encoder pool: token-budget batching, LRU cache, Serve deployment (see `deployment.py`)."""
