"""kvctl commands for the model lifecycle: pin, unpin, rollback, config show."""

from __future__ import annotations

from typing import Any

import click


def register(cli: click.Group, state_type: type, print_json: Any, console: Any) -> None:
    """Add the lifecycle commands to ``cli`` (kept here so cli.py stays about the rest)."""
    pass_state = click.make_pass_decorator(state_type)

    def report(result: dict[str, str], as_json: bool) -> None:
        if as_json:
            print_json(result)
            return
        serving = result["serving"] or "none ready"
        console().print(f"{result['message']}; requests without a version get version {serving}")

    @cli.command()
    @click.argument("name")
    @click.argument("version")
    @click.option("--json", "as_json", is_flag=True)
    @pass_state
    def pin(state: Any, name: str, version: str, as_json: bool) -> None:
        """Serve VERSION to requests that name no version (kept across restarts)."""
        report(state.client.pin(name, version), as_json)

    @cli.command()
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @pass_state
    def unpin(state: Any, name: str, as_json: bool) -> None:
        """Undo a pin: the config file's pin, else the latest ready version, serves again."""
        report(state.client.unpin(name), as_json)

    @cli.command()
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @pass_state
    def rollback(state: Any, name: str, as_json: bool) -> None:
        """Pin the version below the one serving now ('kvctl unpin NAME' undoes it)."""
        report(state.client.rollback(name), as_json)

    @cli.group()
    def config() -> None:
        """kvd's configuration (kvd --config FILE)."""

    @config.command(name="show")
    @click.option("--json", "as_json", is_flag=True)
    @pass_state
    def config_show(state: Any, as_json: bool) -> None:
        """Print the effective configuration: defaults, each model's policy, pin and serving version."""
        data = state.client.config()
        if as_json:
            print_json(data)
            return
        out = console()
        out.print(f"config file: {data.get('source') or 'none (built-in defaults)'}; on-demand versions kept: {data['on_demand_versions']}")
        out.print("defaults: " + _settings_line(data["defaults"]))
        for name, model in sorted(data["models"].items()):
            extra = ""
            if "stored_versions" in model:
                extra = (f"; stored {','.join(map(str, model['stored_versions'])) or '-'}, serving {model.get('serving') or 'none'}")
            out.print(f"{name}: " + _settings_line(model) + extra)


def _settings_line(settings: dict[str, Any]) -> str:
    batching = settings.get("batching")
    parts = [f"policy {settings.get('version_policy')}",
             f"pinned {settings.get('pinned') or '-'}",
             f"devices {','.join(settings.get('devices') or []) or 'from the upload'}",
             f"hint {settings.get('performance_hint') or 'default'}",
             f"batching {'max_batch %s, max_delay_ms %s' % (batching['max_batch'], batching['max_delay_ms']) if batching else 'off'}",
             f"warmup {settings.get('warmup')}"]
    return ", ".join(parts)
