"""stable-baselines3 / sb3-contrib on TextGen-v0: a ``VecEnv`` adapter, a transformer policy, and agents.

Three pieces, usable separately (SB3 and sb3-contrib are used unmodified):

* :class:`TextGenSB3VecEnv` — an SB3 ``VecEnv`` over the batched :class:`~textenv.vector_env.TextGenVectorEnv`
  (one row = one SB3 sub-environment). SB3 semantics: a finished row is reset *in the same step*, the
  returned observation is the new episode's first one, and ``infos[i]["terminal_observation"]`` holds the
  last one. Infos carry Monitor-style ``"episode"`` dicts, so SB3's ``ep_info_buffer`` / logging work.
  ``action_masks()`` gives NLPO-style top-k / top-p masks of the reference model (sb3-contrib MaskablePPO).
* :class:`TextGenActorCriticPolicy` / :class:`TextGenMaskablePolicy` — SB3 policies whose actor *is* the
  env's causal LM (``TextGenVectorEnv.policy``: the same object the env computes its KL with) and whose critic is a
  linear value head on the LM's last hidden state. Token ids go straight from the Dict observation into the
  LM as integers (no float feature extractor). The action distribution is the LM's next-token softmax, so
  SB3's PPO clipped objective (Schulman et al. 2017; docs/rl-framing.md#ppo) is exactly the
  RLHF PPO of InstructGPT, with the env's KL-penalised reward (InstructGPT eq. 2).
* :class:`SB3PPO` (``"sb3-ppo"``), :class:`SB3A2C` (``"sb3-a2c"``), :class:`MaskablePPOAgent`
  (``"maskable-ppo"``) — :class:`~textenv.agents.base.Agent` subclasses: ``train_iteration()`` = one SB3
  rollout of ``n_steps`` per row + one SB3 update, reported with the shared scalar names.

Plain SB3 usage::

    venv = TextGenSB3VecEnv(num_envs=8, max_new_tokens=24)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=24, gamma=1.0)
    model.learn(10_000)
    model.save("ppo_textgen.zip")
    loaded = PPO.load("ppo_textgen.zip")                # predict() works at once
    resumed = PPO.load("ppo_textgen.zip", env=venv)
    venv.attach(resumed)                                # the env now generates with the loaded weights
    resumed.learn(10_000)
"""

from __future__ import annotations

from textenv.agents.sb3.agents import SB3A2C, SB3PPO, MaskablePPOAgent, SB3Agent
from textenv.agents.sb3.policy import SharedLanguageModel, TextGenActorCriticPolicy, TextGenMaskablePolicy
from textenv.agents.sb3.vec_env import TextGenSB3VecEnv

__all__ = ["SB3A2C", "SB3PPO", "MaskablePPOAgent", "SB3Agent", "SharedLanguageModel", "TextGenActorCriticPolicy",
           "TextGenMaskablePolicy", "TextGenSB3VecEnv"]
