"""llmrec loadtest package."""
