"""The ``harness-backends`` command: every discovered backend, whether it can run here, and why not."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table


def main() -> None:
    from harness import ui
    from harness.config import typed
    from harness.errors import HarnessError
    from harness.plugins import get_plugins

    plugins = get_plugins()
    table = Table(title="harness backends", title_justify="left")
    for column in ("backend", "package", "version", "available", "reason", "devices"):
        table.add_column(column)
    for name in sorted(plugins.registry.backends):
        backend = plugins.registry.backends[name]
        origin = plugins.registry.plugin_of("backends", name)
        try:
            availability = backend.probe(typed(backend.options_type, {}, "backend"))
            available, reason, devices = availability.available, availability.reason, ", ".join(availability.devices)
            version = availability.versions.get(name, "")
        except (HarnessError, Exception) as exc:  # a plugin raising in probe is reported, not fatal
            available, reason, devices, version = False, f"probe raised {type(exc).__name__}: {exc}", "", ""
        table.add_row(
            escape(name),
            escape(origin.package if origin else "?"),
            escape(version or (origin.version if origin else "?")),
            "[green]yes[/]" if available else "[red]no[/]",
            escape(" ".join(reason.split())),
            escape(devices),
        )
    ui.out.print(table)
    for problem in plugins.problems:
        ui.warning(problem.warning())
    sys.exit(0)


if __name__ == "__main__":
    main()
