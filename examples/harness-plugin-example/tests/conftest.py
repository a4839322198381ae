"""Make the plugin discoverable when the tests run from a plain checkout.

Installed (``pip install -e .``), the ``harness`` entry point registers the plugin and
this file does nothing. Not installed, ``src/`` is on ``sys.path`` (``pythonpath`` in
pyproject.toml) and ``HARNESS_PLUGINS`` names the module, which harness loads the same
way. Either way the conformance kit sees exactly what a user of the plugin would.
"""

import os
from importlib.metadata import entry_points

MODULE = "harness_plugin_example"

if not any(ep.value == MODULE for ep in entry_points(group="harness")):
    present = [m for m in os.environ.get("HARNESS_PLUGINS", "").split(",") if m.strip()]
    if MODULE not in present:
        os.environ["HARNESS_PLUGINS"] = ",".join([*present, MODULE])
