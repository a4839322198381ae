"""The Hydra config tree shipped with harness (``pkg://harness.conf``).

Importing it registers the resolvers its YAML files use, so every way of composing the
tree (the CLI, ``hydra.compose`` in tests or notebooks) resolves them the same.
"""

from omegaconf import OmegaConf


def _slurm_rendezvous() -> str:
    from harness.slurm import rendezvous_endpoint

    return rendezvous_endpoint()


OmegaConf.register_new_resolver("harness.slurm_rendezvous", _slurm_rendezvous, replace=True)
