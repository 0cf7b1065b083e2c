"""The vLLM reranker: one-step letter scoring of candidates and grounded explanations.

The Serve wrapper lives in `deployments.reranker.deployment` (imported on its
own so that this package stays importable without Ray).
"""

from deployments.reranker.core import (
    EngineFailed,
    PromptTooLong,
    RerankEngine,
    RerankerCore,
    RerankFailed,
    VllmEngine,
)
from deployments.reranker.prompts import (
    LETTERS,
    Candidate,
    blend,
    build_explain_prompt,
    build_rerank_prompt,
    display_title,
    explanation_from,
    letter_scores,
    template_reason,
    validate_explanation,
)

__all__ = [
    "LETTERS",
    "Candidate",
    "EngineFailed",
    "PromptTooLong",
    "RerankEngine",
    "RerankFailed",
    "RerankerCore",
    "VllmEngine",
    "blend",
    "build_explain_prompt",
    "build_rerank_prompt",
    "display_title",
    "explanation_from",
    "letter_scores",
    "template_reason",
    "validate_explanation",
]
