"""Settings from config files, shared by `fix`, `eval` and the TUI.

Two TOML files are read: the user's (``$XDG_CONFIG_HOME/loopcli/config.toml``, by default
``~/.config/loopcli/config.toml``), then the repository's ``.loopcli.toml``; command-line flags
win over both. Today they hold the sandbox settings::

    [sandbox]
    policy = "workspace-write"   # read-only | workspace-write | danger-full-access
    network = false

The repository's file is written by whoever wrote the repository (and the model can edit it),
so it may only tighten: a looser policy or `network = true` there is ignored with a warning
unless the user's own file or a flag allows as much.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from loopcli.tools.environment import DEFAULT_POLICY, POLICIES

REPO_FILE = ".loopcli.toml"


class ConfigError(Exception):
    """A config file that cannot be read or holds a bad value: exit code 2."""


@dataclass
class SandboxSettings:
    policy: str = DEFAULT_POLICY
    network: bool = False
    warnings: tuple[str, ...] = ()  # what was ignored, for stderr


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "loopcli" / "config.toml"


def read_toml(path: Path) -> dict:
    """The file's table, {} when there is no file; ConfigError when it cannot be parsed."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}; fix or remove it") from None


def _sandbox_table(path: Path) -> dict:
    table = read_toml(path).get("sandbox", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `sandbox` must be a table ([sandbox])")
    policy, network = table.get("policy"), table.get("network")
    if policy is not None and policy not in POLICIES:
        raise ConfigError(f"{path}: sandbox.policy is {policy!r}; use one of {', '.join(POLICIES)}")
    if network is not None and not isinstance(network, bool):
        raise ConfigError(f"{path}: sandbox.network must be true or false, not {network!r}")
    return table


def sandbox_settings(repo: Path | None, policy: str | None = None,
                     network: bool | None = None) -> SandboxSettings:
    """The sandbox policy and network switch: flags, else the files, else the defaults."""
    user = _sandbox_table(user_config_path())
    settings = SandboxSettings(user.get("policy", DEFAULT_POLICY), user.get("network", False))
    warnings = []
    if repo is not None:
        path = repo / REPO_FILE
        project = _sandbox_table(path)
        wanted = project.get("policy")
        if wanted and POLICIES.index(wanted) <= POLICIES.index(settings.policy):
            settings.policy = wanted
        elif wanted and policy is None:
            warnings.append(f"{path} asks for sandbox policy {wanted}, looser than "
                            f"{settings.policy}; ignored (a repository may only tighten it: "
                            "use --sandbox or your own config)")
        if project.get("network") is False:
            settings.network = False
        elif project.get("network") and not settings.network and network is None:
            warnings.append(f"{path} asks for network access; ignored (a repository may only "
                            "tighten it: use --network or your own config)")
    if policy is not None:
        settings.policy = policy
    if network is not None:
        settings.network = network
    settings.warnings = tuple(warnings)
    return settings
