"""The Hydra config tree shipped with harness (``pkg://harness.conf``)."""
