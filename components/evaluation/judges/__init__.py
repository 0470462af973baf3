"""InterBench judges: the offline SynthWorld judge (ground truth) and, later, a VLM judge."""

from worldloop.components.evaluation.judges.base import (
    DIMENSIONS,
    CaseScores,
    Dimension,
    Judge,
    TurnScores,
    aggregate,
    aggregate_turns,
)
from worldloop.components.evaluation.judges.synthworld import (
    SynthWorldJudge,
    SynthWorldJudgeConfig,
    judge_accuracy,
    score_against_truth,
)
from worldloop.components.evaluation.judges.vlm import (
    ANSWER_FORMATS,
    QUESTIONS,
    SYSTEM_PROMPT,
    VLMJudge,
    VLMJudgeConfig,
    VLMJudgeError,
)

__all__ = [
    "DIMENSIONS",
    "CaseScores",
    "Dimension",
    "Judge",
    "TurnScores",
    "SynthWorldJudge",
    "SynthWorldJudgeConfig",
    "aggregate",
    "aggregate_turns",
    "judge_accuracy",
    "score_against_truth",
    "ANSWER_FORMATS",
    "QUESTIONS",
    "SYSTEM_PROMPT",
    "VLMJudge",
    "VLMJudgeConfig",
    "VLMJudgeError",
]
