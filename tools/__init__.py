"""The agent's hands: workspace confinement, repo map, view/search, edit, shell, checkpoints.

Knows nothing of the agent, the model or the CLI.
"""
