"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from learners.advantages import (
    LeafCredit as LeafCredit,
)
from learners.advantages import (
    group_advantages as group_advantages,
)
from learners.algorithms import (
    register_advantage as register_advantage,
)
from learners.algorithms import (
    register_credit as register_credit,
)
from learners.algorithms import (
    register_kl_estimator as register_kl_estimator,
)
from learners.algorithms import (
    register_loss_norm as register_loss_norm,
)
from learners.algorithms import (
    register_policy_loss as register_policy_loss,
)
from learners.base import (
    ExampleSource as ExampleSource,
)
from learners.base import (
    Learner as Learner,
)
from learners.base import (
    LearnerSpec as LearnerSpec,
)
from learners.base import (
    UpdateResult as UpdateResult,
)
from learners.distill import (
    Distill as Distill,
)
from learners.dpo import (
    DPO as DPO,
)
from learners.dpo import (
    DPOLearner as DPOLearner,
)
from learners.dpo import (
    DPOSettings as DPOSettings,
)
from learners.evaluate import (
    Evaluator as Evaluator,
)
from learners.examples import (
    Example as Example,
)
from learners.examples import (
    PathSettings as PathSettings,
)
from learners.examples import (
    VerifiedPaths as VerifiedPaths,
)
from learners.examples import (
    oldest_version as oldest_version,
)
from learners.examples import (
    path_nodes as path_nodes,
)
from learners.examples import (
    path_text as path_text,
)
from learners.expert_iteration import (
    ExpertIteration as ExpertIteration,
)
from learners.grpo import (
    GRPO as GRPO,
)
from learners.loop import (
    LoopStats as LoopStats,
)
from learners.loop import (
    OnlineLoop as OnlineLoop,
)
from learners.loop_settings import (
    EvalSettings as EvalSettings,
)
from learners.loop_settings import (
    LoopSettings as LoopSettings,
)
from learners.on_policy_distill import (
    OnPolicyDistill as OnPolicyDistill,
)
from learners.on_policy_distill import (
    OnPolicyDistillLearner as OnPolicyDistillLearner,
)
from learners.on_policy_distill import (
    OnPolicySamples as OnPolicySamples,
)
from learners.pairs import (
    Pair as Pair,
)
from learners.pairs import (
    Pairs as Pairs,
)
from learners.pairs import (
    PairSettings as PairSettings,
)
from learners.policy_gradient import (
    PGSettings as PGSettings,
)
from learners.policy_gradient import (
    PolicyGradientLearner as PolicyGradientLearner,
)
from learners.policy_gradient import (
    token_logprobs as token_logprobs,
)
from learners.ppo import (
    PPO as PPO,
)
from learners.ppo import (
    PPOLearner as PPOLearner,
)
from learners.ppo import (
    PPOSettings as PPOSettings,
)
from learners.ppo import (
    gae as gae,
)
from learners.prm import (
    PRMExample as PRMExample,
)
from learners.prm import (
    TrainReport as TrainReport,
)
from learners.prm import (
    build_tiny_prm as build_tiny_prm,
)
from learners.prm import (
    mc_examples as mc_examples,
)
from learners.prm import (
    train_prm as train_prm,
)
from learners.prm import value_head_model as value_head_model
from learners.reflection import (
    ReflectionSettings as ReflectionSettings,
)
from learners.reflection import (
    ReflectionTraces as ReflectionTraces,
)
from learners.reward_models import (
    ORM as ORM,
)
from learners.reward_models import (
    PRM as PRM,
)
from learners.reward_models import (
    LabelledPath as LabelledPath,
)
from learners.reward_models import (
    OutcomeRMLearner as OutcomeRMLearner,
)
from learners.reward_models import (
    PRMLearner as PRMLearner,
)
from learners.reward_models import (
    StepLabels as StepLabels,
)
from learners.rollouts import (
    Rollout as Rollout,
)
from learners.rollouts import (
    Rollouts as Rollouts,
)
from learners.rollouts import (
    RolloutSettings as RolloutSettings,
)
from learners.served_teacher import (
    ServedTeacher as ServedTeacher,
)
from learners.served_teacher import (
    ServedTeacherSettings as ServedTeacherSettings,
)
from learners.sft import (
    LoraSettings as LoraSettings,
)
from learners.sft import (
    SFTLearner as SFTLearner,
)
from learners.sft import (
    SFTSettings as SFTSettings,
)
from learners.trackers import (
    Tracker as Tracker,
)
from learners.trackers import (
    register_tracker as register_tracker,
)
from learners.trainer import (
    TorchLearner as TorchLearner,
)
from learners.trainer import (
    TrainerSettings as TrainerSettings,
)
