"""Online RL's moving parts, shared by PPO, GRPO and RLOO: generation backends (``generation``),
a batch of sampled completions and its forward passes (``experience``), advantage estimation
(``advantages``) and the policy / value losses (``losses``), each a small pure function."""
