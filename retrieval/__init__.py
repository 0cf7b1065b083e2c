"""llmrec retrieval package."""
