"""The MLflow tag names the registry writes: one place, so the CLI, the rules and the UI agree.

On each model version:

* ``lineage.*`` — where it came from: the pipeline run, the data every stage read (its datasets,
  weights and shard count; the whole record, with every shard's sha256, is the checkpoint's
  ``lineage.json``, digested in ``lineage.data_sha256``), the checkpoint it was cut from, the
  training config (digest, and the JSON when it fits a tag), the model preset;
* ``interbench.*`` — its InterBench scores (JSON of the six dimensions), suite, judge and case count;
* ``quality.*`` — the quality ladder's headline metrics for the model and its two baselines, and the
  held-out set they were measured on;
* ``approval.*`` — the latest approval: identity, reason, UTC time, and ``approval.record``, the same
  signed (:mod:`worldloop.platform.signing`);
* ``promotion.*`` — set when it becomes champion: who, when, the champion it replaced, and
  ``promotion.record``, the signed promotion with the approval it rested on;
* ``audit.NNNN`` — one JSON record per decision about it (approve, promote, rollback; allowed or
  refused): who, what, when, the result and every reason.

On the registered model: ``champion.history`` (JSON list of versions, the current champion last) for
rollback, ``champion.record`` (the signed pointer serving checks the alias against), and ``audit.NNNN``
for decisions that concern no version (a rollback with no champion).
"""

# The signed records are named where serving reads them (the platform layer), and re-exported here.
from worldloop.platform.signing import APPROVAL_RECORD as APPROVAL_RECORD
from worldloop.platform.signing import CHAMPION_RECORD as CHAMPION_RECORD
from worldloop.platform.signing import PROMOTION_RECORD as PROMOTION_RECORD

LINEAGE = "lineage."
PIPELINE_RUN = "lineage.pipeline_run_id"
DATA = "lineage.data"  # JSON: [{stage, sources: [{uri, weight, kind, shards_read}]}], training order
DATA_SHA256 = "lineage.data_sha256"  # of the checkpoint's lineage.json
TEACHER_SHA256 = "lineage.teacher_sha256"  # weights of the frozen real score of stages 3-4
CHECKPOINT = "lineage.checkpoint"
CHECKPOINT_STEP = "lineage.checkpoint_step"
CONFIG = "lineage.config"
CONFIG_SHA256 = "lineage.config_sha256"
MODEL_PRESET = "lineage.model_preset"

SCORES = "interbench.scores"
SUITE = "interbench.suite"
JUDGE = "interbench.judge"
CASES = "interbench.cases"
QUALITY = "quality.metrics"  # JSON: contestant (model, random, frozen) → headline metric → value
QUALITY_SETUP = "quality.setup"  # JSON: held-out seed, clips, blocks, size

APPROVAL_IDENTITY = "approval.identity"
APPROVAL_REASON = "approval.reason"
APPROVAL_TIME = "approval.time"

PROMOTED_BY = "promotion.identity"
PROMOTED_AT = "promotion.time"
PREVIOUS_CHAMPION = "promotion.previous_champion"

AUDIT = "audit."
CHAMPION_HISTORY = "champion.history"
MAX_TAG_CHARS = 5000  # the smallest tag-value limit of MLflow's stores
