"""The vLLM reranker: one-step letter scoring of candidates and grounded explanations.

The Serve wrapper lives in `deployments.reranker.deployment` (imported on its
own so that this package stays importable without Ray).
"""

from deployments.reranker.budget import Admission, EngineCost, Work
from deployments.reranker.core import Explanation, RerankerCore, RerankFailed, RerankOutcome
from deployments.reranker.engine import (
    EngineFailed,
    EngineOutput,
    PromptTooLong,
    RerankEngine,
    VllmEngine,
)
from deployments.reranker.prompts import (
    LETTERS,
    Candidate,
    PromptContext,
    blend,
    build_explain_prompt,
    build_rerank_prompt,
    check_reason,
    display_title,
    explanation_from,
    letter_scores,
    template_reason,
    validate_explanation,
)

__all__ = [
    "LETTERS",
    "Admission",
    "Candidate",
    "EngineCost",
    "EngineFailed",
    "EngineOutput",
    "Explanation",
    "PromptContext",
    "PromptTooLong",
    "RerankEngine",
    "RerankFailed",
    "RerankOutcome",
    "RerankerCore",
    "VllmEngine",
    "Work",
    "blend",
    "build_explain_prompt",
    "build_rerank_prompt",
    "check_reason",
    "display_title",
    "explanation_from",
    "letter_scores",
    "template_reason",
    "validate_explanation",
]
