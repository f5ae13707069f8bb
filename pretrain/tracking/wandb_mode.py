"""Decide wandb's mode *before* wandb can touch the network.

Measured with wandb 0.31 (strace of the whole process tree, see docs/tracking.md):
- with no key and no mode, wandb tries its cloud host;
- even with `wandb.init(mode="offline")`, `run.log` feeds a process-wide OpenTelemetry proxy built
  from wandb's *global* settings (default mode online), whose exporter thread POSTs to
  api.forge.coreweave.com (a DNS lookup at least). Only making the global settings offline
  (`wandb.setup(settings=Settings(mode="offline"))`, done in wandb_tracker.py) stops it.
So the mode is resolved here from local facts only (env, netrc, wandb's settings file).
"""
from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_BASE_URL_FALLBACK = "https://api.wandb.ai"


def _settings_file() -> dict[str, str]:
    """[default] of wandb's settings file (WANDB_CONFIG_DIR or ~/.config/wandb), read afresh:
    wandb's own settings singleton caches env values, which would make this answer stale."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or str(Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_dir) / "settings")
    except (OSError, configparser.Error):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _base_url() -> str:
    """The configured W&B host: WANDB_BASE_URL, the settings file, else wandb's own default."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    if _settings_file().get("base_url"):
        return _settings_file()["base_url"]
    try:
        from wandb.sdk.lib import urls
        return urls.DEFAULT_BASE_URL
    except Exception:  # private module moved: fall back to the historical default
        return DEFAULT_BASE_URL_FALLBACK


def _netrc_has_key(base_url: str) -> bool:
    """A netrc entry with a password for the host (or its upstream alias), read locally."""
    try:  # wandb's reader knows host aliases (forge -> api.wandb.ai) and NETRC
        from wandb.sdk.lib.wbauth import read_netrc_auth
        return bool(read_netrc_auth(host=base_url))
    except ImportError:
        pass
    except Exception:  # malformed entry etc.: wandb would fail to log in too
        return False
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        creds = netrc.netrc(str(path)).authenticators(urlsplit(base_url).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def has_credentials() -> bool:
    """True if wandb could authenticate without asking: env key/token, netrc, or settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if _netrc_has_key(_base_url()):
        return True
    return bool(_settings_file().get("api_key"))


def resolve_wandb_mode(requested: str) -> tuple[str, str]:
    """(mode, why). Explicit config > user-set WANDB_MODE > auto (online iff credentials).

    Returns one of "online", "offline", "disabled"; raises a one-line ValueError when online is
    demanded with no credentials (wandb would otherwise prompt or hang).
    """
    if requested not in ("auto", "offline", "online", "disabled"):
        raise ValueError(f"tracker.wandb_mode: {requested!r} is not one of auto, offline, online, disabled")
    if requested != "auto":
        mode, why = requested, f"tracker.wandb_mode={requested}"
    elif os.environ.get("WANDB_MODE"):
        env_mode = os.environ["WANDB_MODE"].strip().lower()
        mode = {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"WANDB_MODE={os.environ['WANDB_MODE']!r}: expected online, offline or disabled")
        why = f"WANDB_MODE={env_mode}"
    elif has_credentials():
        return "online", "an API key is configured"
    else:
        return "offline", "no API key configured (WANDB_API_KEY / netrc)"
    if mode == "online" and not has_credentials():
        raise ValueError(f"{why} but no W&B API key is configured: set WANDB_API_KEY or run `wandb login`, "
                         "or use tracker.wandb_mode=offline")
    return mode, why
