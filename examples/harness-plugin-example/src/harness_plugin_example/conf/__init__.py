"""Hydra config shipped with the plugin (``pkg://harness_plugin_example.conf``)."""
