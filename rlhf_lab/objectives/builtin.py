"""The built-in objectives, registered through the same hook as a third party's: each system by
"module:attr", imported when a run starts, and its schema from ``schemas.py``, so that composing a
config (``--help``, ``--cfg job``) loads no torch, Lightning or transformers."""

from rlhf_lab import hookimpl
from rlhf_lab.objectives.schemas import (
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RLOOConfig,
    RMConfig,
    SFTConfig,
)


@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("sft", "rlhf_lab.objectives.sft:SFT", SFTConfig)
    register.add_objective("rm", "rlhf_lab.objectives.rm:RewardModel", RMConfig)
    register.add_objective("dpo", "rlhf_lab.objectives.dpo:DPO", DPOConfig)
    register.add_objective("kto", "rlhf_lab.objectives.kto:KTO", KTOConfig)
    register.add_objective("ppo", "rlhf_lab.objectives.ppo:PPO", PPOConfig)
    register.add_objective("grpo", "rlhf_lab.objectives.grpo:GRPO", GRPOConfig)
    register.add_objective("online_dpo", "rlhf_lab.objectives.online_dpo:OnlineDPO", OnlineDPOConfig)
    register.add_objective("rloo", "rlhf_lab.objectives.rloo:RLOO", RLOOConfig)
