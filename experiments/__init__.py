"""Research on how the toolkit's parts were built: runs, logs and the scripts that made them.

Not the product: `pip install cascade-interp` does not install it, and nothing in interp/, activations/ or
probes/ imports it. Its scripts run from the repository root as modules
(`python -m experiments.mini_ultravox.train_projector ...`), so they import each other without path edits.
"""
