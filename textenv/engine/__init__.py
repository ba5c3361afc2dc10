"""The generation engine: textenv's private layer under the env (KV caches, prompt prefill, lazy reference
scoring, sampling). Agents never use it directly; they go through :class:`~textenv.vector_env.TextGenVectorEnv`."""
