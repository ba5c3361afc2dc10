"""Lesson 01: text generation as a Markov decision process, stepped by hand.

    python examples/01_mdp_by_hand.py            # ~10 s on a CPU; --quick: a few seconds

TextGen-v0 makes a language model's generation an RL episode:

* state s_t:   the prompt x plus the tokens generated so far y_<t (the observation: token ids + attention mask);
* action a_t:  one token id out of the vocabulary (``Discrete(V)``);
* policy π_θ:  the language model's next-token distribution π_θ(a_t | s_t) = softmax(logits);
* transition:  deterministic, s_{t+1} = s_t followed by a_t; the episode ends at EOS (terminated) or after
               ``max_new_tokens`` actions (truncated);
* reward:      0 on every step but the last, which pays (InstructGPT eq. 2)
                   R = r_φ(x, y) − β · Σ_t [log π_θ(y_t|s_t) − log π_ref(y_t|s_t)]
               r_φ is a reward model's score of the whole completion (here VADER sentiment in [−1, 1]), the sum is
               the KL of the completion to π_ref (a frozen copy of the starting model) and β is ``kl_coef``.
               With γ = 1 the return of an episode is exactly R.

This lesson walks one episode step by step, then compares two policies on the same env: a uniformly random
actor and the model's own sampling. It writes ``episodes.json`` to ``--output``.
"""

import argparse
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.reward_models import make_reward_model


def one_episode_by_hand(env) -> None:
    """reset → step → render, printing what the agent sees at every step."""
    obs, info = env.reset(seed=0)
    tokenizer = env.get_wrapper_attr("tokenizer")  # gym.make wraps the env: reach its attributes like this...
    policy = env.unwrapped.policy  # ...or through env.unwrapped
    print(f"prompt x = {info['prompt']!r}")
    print(f"observation: input_ids {obs['input_ids'].shape}, attention_mask {obs['attention_mask'].tolist()}")
    print("  (left-padded: the real tokens are right-aligned, padding has mask 0)")
    print(f"action space: {env.action_space} (one token id); policy: {type(policy).__name__} with "
          f"{sum(p.numel() for p in policy.parameters()):,} parameters")
    generator, done, t = torch.Generator().manual_seed(0), False, 0
    while not done:
        logits = env.unwrapped.next_token_logits()  # π_θ's logits at s_t, already computed by the env
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, 3)
        candidates = ", ".join(f"{tokenizer.decode([i])!r} {p:.2f}" for p, i in zip(top.values, top.indices))
        action = int(torch.multinomial(probs, 1, generator=generator))  # a_t ~ π_θ(·|s_t)
        obs, reward, terminated, truncated, info = env.step(action)
        print(f"t={t:2d} top-3 [{candidates}] → a_t={tokenizer.decode([action])!r:12} "
              f"log π_θ(a_t|s_t)={info['logprob']:+.2f}  reward={reward:+.3f}")
        if t == 2:  # the env's own view of the state mid-episode (render_mode="ansi" returns it as text)
            print(env.render())
        done, t = terminated or truncated, t + 1
    print(env.render())  # the last step adds r_φ, Σ KL, β and the return R
    print(f"episode ended: terminated={terminated} (EOS) truncated={truncated} (length limit)")
    # The last reward is R = r_φ − β·KL; info says what it is made of.
    print(f"r_φ (VADER) = {info['rm_score']:+.3f}, Σ_t KL_t = {info['episode_kl']:.3f} nats, β = {info['kl_coef']}"
          f"  →  R = {info['rm_score']:+.3f} − {info['kl_coef']}·{info['episode_kl']:.3f} = {reward:+.3f}")


def play(env, choose_action, episodes: int, seed: int) -> list[dict]:
    """Run ``episodes`` episodes with the actor ``choose_action(env, generator) -> token id``."""
    generator, records = torch.Generator().manual_seed(seed), []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done, logprob = False, 0.0
        while not done:
            _, reward, terminated, truncated, info = env.step(choose_action(env, generator))
            logprob += float(info["logprob"])  # log π_θ of the action actually taken, whoever chose it
            done = terminated or truncated
        records.append({"prompt": info["prompt"], "text": info["text"], "rm_score": float(info["rm_score"]),
                        "kl": float(info["episode_kl"]), "return": float(reward), "logprob": logprob})
    return records


def random_actor(env, generator) -> int:
    """Ignores the state: every token id equally likely."""
    return int(torch.randint(env.action_space.n, (1,), generator=generator))


def model_actor(env, generator) -> int:
    """Samples from π_θ(·|s_t), the model's own next-token distribution."""
    return int(torch.multinomial(torch.softmax(env.unwrapped.next_token_logits(), dim=-1), 1, generator=generator))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 01: the MDP of TextGen-v0 by hand.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer episodes (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/01_mdp_by_hand"))
    parser.add_argument("--model", default="textenv/default", help="default: the embedded 2.7M-parameter GPT-2")
    args = parser.parse_args(argv)
    episodes = 4 if args.quick else 32
    env = gym.make("TextGen-v0", model=args.model, max_new_tokens=12, kl_coef=0.05, render_mode="ansi")
    print("== 1. one episode, step by step")
    one_episode_by_hand(env)

    print(f"\n== 2. two policies, {episodes} episodes each")
    with warnings.catch_warnings(record=True) as caught:  # the env may notice actions that π_θ did not sample
        warnings.simplefilter("always")
        results = {"random": play(env, random_actor, episodes, seed=100), "model": play(env, model_actor, episodes, 100)}
    for warning in caught:
        print(f"the env warned ({warning.category.__name__}): {warning.message}")
    for name, records in results.items():
        print(f"{name:6} actor: mean r_φ {np.mean([r['rm_score'] for r in records]):+.3f}, mean KL "
              f"{np.mean([r['kl'] for r in records]):.3f} nats, mean log π_θ(y|x) "
              f"{np.mean([r['logprob'] for r in records]):.1f}   e.g. {records[0]['text']!r}")
    # The random text is far less likely under the model (log π_θ much lower), yet its KL is ~0: the KL term
    # compares π_θ with π_ref at the chosen tokens, and both are still the same weights. The env measures ITS
    # policy, not whatever picked the action; training π_θ is what makes the KL grow (lessons 02 and 04).

    print("\n== 3. the reward model r_φ is just a function of (prompt, completion)")
    vader = make_reward_model("vader")
    texts = [" was great, I loved it!", " was fine.", " broke after a week, awful."]
    for text, score in zip(texts, vader.score(["The blender"] * 3, texts)):
        print(f"r_φ('The blender', {text!r}) = {score:+.3f}")

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "episodes.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output / 'episodes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
