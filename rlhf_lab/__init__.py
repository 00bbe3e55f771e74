"""rlhf_lab: post-training experiments (SFT, reward models, DPO, PPO, prompting) as Hydra-composed Lightning runs.

Plugin authors import from ``rlhf_lab.api``, the stable public API (docs/plugins.md); this module
stays cheap to import and exports only the ``hookimpl`` marker and the version.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rlhf_lab")

__all__ = ["__version__", "hookimpl"]
