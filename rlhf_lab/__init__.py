"""rlhf_lab: post-training experiments (SFT, reward models, DPO, PPO, prompting) as Hydra-composed Lightning runs.

Plugin authors need only what is exported here: the ``hookimpl`` marker, the registry types and
the base classes their objectives and schemas extend.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rlhf_lab")

__all__ = ["__version__", "hookimpl"]
