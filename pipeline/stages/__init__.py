"""One module per stage: its work as free functions with explicit arguments, and the step a run asks the engine
for (``*_step(plan, ...)``, built from the planner)."""
