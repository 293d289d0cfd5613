"""The pure core: the observation model, decisions, the planner and what it uses."""
