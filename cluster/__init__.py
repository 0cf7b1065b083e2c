"""llmrec cluster package."""
