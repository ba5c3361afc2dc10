"""The applications built on the library: the ``textenv`` command line, the RLHF pipeline, preference
collection and labelling, and evaluation. The library (env, engine, models, agents, reward models) never
imports them."""
