"""`llmrec bench …`: benchmarks that print a table and write JSON.

One module per subcommand (`encoder`, `retrieval`, `reranker`, `pipeline`, `store`, each with
`register(subparsers)`), `naive` (the encoder bench's one-pass baseline),
`retrieval_core` (the retrieval bench's Ray-free data, variants and recall) and
`driver`: the one closed-loop load driver, its HTTP client and free ports.
"""
