"""Where a remote node sends its jobs, and with which key.

A workflow names a *target*: ``"fal"`` or the name of a self-hosted server. The URL and the key
come from the machine, never from the workflow, so a shared workflow can neither carry a key nor
send the user's key to a server of its author's choosing.

``fal``
    base URL: ``SAMKIT_FAL_BASE_URL``, else ``base_url`` in ``[fal]`` of the config file, else
    ``https://queue.fal.run``. Key: ``FAL_KEY``, else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``, else
    ``key`` (or ``key_id`` + ``key_secret``) in ``[fal]`` of the config file.
self-hosted servers (``python -m samkit serve``)
    every other section of the config file that has a ``base_url`` is a target named after the
    section; its ``key`` (a key from the server's ``--key-file``) is optional.
the pack deployed as a fal App (``fal deploy``, see ``samkit/fal/app.py``)
    a section with ``app = <owner>/<app-name>`` (the id ``fal deploy`` printed) is a target whose
    jobs go to that app's endpoints on fal's queue (:data:`.schemas.APP_ROUTES`). Without a
    ``base_url`` it is fal's queue and fal's key (the app runs on the user's own fal account);
    with one, the section's own ``key``. The environment
    variables ``SAMKIT_SELF_HOSTED_URL`` / ``SAMKIT_SELF_HOSTED_KEY`` define one more target,
    ``self-hosted``. A fal key is never sent to a self-hosted server.

The config file (INI) is ``SAMKIT_FAL_CONFIG`` if set, else ``comfyui-sam-kit/fal.ini`` in the
host's user folder (when the host registers one with :func:`set_config_dir_provider`), then in
``$XDG_CONFIG_HOME`` or ``~/.config`` (``%APPDATA%`` on Windows)::

    [fal]
    key = key_id:key_secret

    [studio]
    base_url = https://gpu-box.example.com:8765
    key = a-key-from-the-servers-key-file

    [studio-fal]
    app = your-fal-user/samkit

It is refused inside the pack's own folder, where a ``git add`` or a shared copy of the pack
would take it along.

Keys are read when a job runs (so editing the file needs no restart) and are held in
:class:`FalKey`, whose ``repr``/``str`` never show the secret and which refuses to be pickled.
The key is never written to ``os.environ``.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from .schemas import APP_ROUTES, AppId

DEFAULT_QUEUE_BASE = "https://queue.fal.run"
FAL_TARGET = "fal"
ENV_TARGET = "self-hosted"  # the target SAMKIT_SELF_HOSTED_URL defines
CONFIG_ENV = "SAMKIT_FAL_CONFIG"
CONFIG_RELATIVE = Path("comfyui-sam-kit") / "fal.ini"
PACK_ROOT = Path(__file__).resolve().parents[2]

_config_dir_provider: Optional[Callable[[], Optional[str]]] = None


class KeyConfigError(ValueError):
    """The key or endpoint configuration is missing or unusable; the message says how to fix it."""


class FalKey:
    """A secret that does not show itself. ``authorization()`` is the only way to read it."""

    __slots__ = ("_secret", "source")

    def __init__(self, secret: str, source: str):
        secret = secret.strip()
        if not secret:
            raise KeyConfigError(f"the key from {source} is empty")
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
            # would break the header (or smuggle another one); never echo the value
            raise KeyConfigError(f"the key from {source} contains spaces, line breaks or non-ASCII characters; "
                                 "copy it again exactly as fal shows it (key_id:key_secret)")
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "source", source)

    def __setattr__(self, name, value):
        raise AttributeError("FalKey is read-only")

    def authorization(self) -> str:
        return f"Key {self._secret}"

    def scrub(self, text: str) -> str:
        """``text`` with the key (and each half of ``id:secret``) replaced by ``[redacted]``."""
        if not text:
            return text
        parts = [self._secret, *[p for p in self._secret.split(":") if len(p) >= 6]]
        for part in sorted(parts, key=len, reverse=True):
            text = text.replace(part, "[redacted]")
        return text

    def __repr__(self) -> str:
        return f"<FalKey from {self.source}: redacted>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol):
        raise TypeError("a FalKey cannot be pickled or copied (it would write the secret somewhere)")


@dataclass(frozen=True)
class Target:
    """Where jobs go: ``name`` (fal or a self-hosted server), the queue base URL, the key (may be
    None for a server that needs none), and what to tell the user when the key is refused."""

    name: str
    base_url: str
    key: Optional[FalKey]
    url_source: str
    auth_hint: str = ""
    #: ``owner/app`` of the pack deployed as a fal App (``app`` in the section), else None
    app: Optional[str] = None

    def __repr__(self) -> str:
        app = f", app {self.app!r}" if self.app else ""
        return f"Target({self.name!r}, {self.base_url!r} from {self.url_source}{app}, key={self.key!r})"

    def endpoint_id(self, fal_endpoint: str) -> str:
        """The endpoint id to submit to: fal's own id, or the deployed app's route for it.
        Raises :class:`KeyConfigError` when the deployed app does not serve that job."""
        if self.app is None:
            return fal_endpoint
        if fal_endpoint not in APP_ROUTES:
            served = ", ".join(APP_ROUTES)
            raise KeyConfigError(f"endpoint {self.name!r} is the pack's fal App {self.app}, which serves {served}; "
                                 f"it does not serve {fal_endpoint}. Choose endpoint 'fal' for that job.")
        return f"{self.app}/{APP_ROUTES[fal_endpoint]}"


def set_config_dir_provider(provider: Optional[Callable[[], Optional[str]]]) -> None:
    """Let a host (ComfyUI) add its user folder to the places searched for ``fal.ini``."""
    global _config_dir_provider
    _config_dir_provider = provider


def _user_config_dir(env: Mapping[str, str]) -> Path:
    if sys.platform == "win32":
        return Path(env.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def config_candidates(env: Mapping[str, str] | None = None) -> list[Path]:
    """The config files looked at, in order (the first that exists is used)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return [Path(env[CONFIG_ENV]).expanduser()]
    out = []
    if _config_dir_provider is not None:
        try:
            host_dir = _config_dir_provider()
        except Exception:
            host_dir = None
        if host_dir:
            out.append(Path(host_dir) / CONFIG_RELATIVE)
    out.append(_user_config_dir(env) / CONFIG_RELATIVE)
    return out


def _inside_pack(path: Path) -> bool:
    try:
        path.resolve().relative_to(PACK_ROOT)
        return True
    except ValueError:
        return False


def read_config(env: Mapping[str, str] | None = None) -> tuple[Optional[Path], configparser.ConfigParser]:
    """The first existing config file and its contents (an empty parser when there is none)."""
    parser = configparser.ConfigParser(interpolation=None)
    for path in config_candidates(env):
        if not path.is_file():
            continue
        if _inside_pack(path):
            raise KeyConfigError(
                f"the fal config file {path} is inside the SAM Kit folder, where it could be committed or shared "
                f"with the pack; move it to {_user_config_dir(os.environ if env is None else env) / CONFIG_RELATIVE} "
                f"or point {CONFIG_ENV} at a file elsewhere"
            )
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            # configparser errors quote lines of the file, which may hold the key: say where, not what
            raise KeyConfigError(f"the fal config file {path} is not a valid INI file ({type(exc).__name__}); "
                                 "see the SAM Kit README for its format") from None
        return path, parser
    return None, parser


def _section_key(parser: configparser.ConfigParser, section: str, where: str) -> Optional[FalKey]:
    if not parser.has_section(section):
        return None
    s = parser[section]
    if s.get("key", "").strip():
        return FalKey(s["key"], f"[{section}] key in {where}")
    kid, ksecret = s.get("key_id", "").strip(), s.get("key_secret", "").strip()
    if kid and ksecret:
        return FalKey(f"{kid}:{ksecret}", f"[{section}] key_id/key_secret in {where}")
    if kid or ksecret:
        raise KeyConfigError(f"[{section}] in {where} has only one of key_id and key_secret; give both, or key = id:secret")
    return None


def fal_key_from_env(env: Mapping[str, str]) -> Optional[FalKey]:
    if env.get("FAL_KEY", "").strip():
        return FalKey(env["FAL_KEY"], "environment variable FAL_KEY")
    kid, ksecret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if kid and ksecret:
        return FalKey(f"{kid}:{ksecret}", "environment variables FAL_KEY_ID and FAL_KEY_SECRET")
    if kid or ksecret:
        raise KeyConfigError("only one of FAL_KEY_ID and FAL_KEY_SECRET is set; set both, or set FAL_KEY=key_id:key_secret")
    return None


def list_targets(env: Mapping[str, str] | None = None) -> list[str]:
    """Target names for the node's endpoint choice: ``fal`` first, then the self-hosted ones.

    Never raises (it runs when ComfyUI lists the nodes); a broken config file shows its error
    when a job runs.
    """
    env = os.environ if env is None else env
    names = [FAL_TARGET]
    if env.get("SAMKIT_SELF_HOSTED_URL", "").strip():
        names.append(ENV_TARGET)
    try:
        _path, parser = read_config(env)
    except KeyConfigError:
        return names
    for section in parser.sections():
        if section != FAL_TARGET and section not in names and _is_target(parser, section):
            names.append(section)
    return names


def _is_target(parser: configparser.ConfigParser, section: str) -> bool:
    s = parser[section]
    return bool(s.get("base_url", "").strip() or s.get("app", "").strip())


def _app_of(parser: configparser.ConfigParser, section: str, where: str) -> Optional[str]:
    app = parser[section].get("app", "").strip().strip("/")
    if not app:
        return None
    try:
        parsed = AppId.parse(app)
    except ValueError:
        parsed = None
    if parsed is None or parsed.path:
        raise KeyConfigError(f"[{section}] app in {where} must be the id 'fal deploy' printed, owner/app-name "
                             f"(e.g. your-fal-user/samkit), got {app!r}")
    return parsed.endpoint_id


def resolve_target(name: str = FAL_TARGET, env: Mapping[str, str] | None = None) -> Target:
    """The base URL and key for target ``name``, read now. Raises :class:`KeyConfigError`."""
    env = os.environ if env is None else env
    path, parser = read_config(env)
    where = str(path) if path else "(no config file)"
    hint_file = path or config_candidates(env)[-1]

    if name == FAL_TARGET:
        if env.get("SAMKIT_FAL_BASE_URL", "").strip():
            base, source = env["SAMKIT_FAL_BASE_URL"].strip(), "SAMKIT_FAL_BASE_URL"
        elif parser.has_option(FAL_TARGET, "base_url") and parser[FAL_TARGET]["base_url"].strip():
            base, source = parser[FAL_TARGET]["base_url"].strip(), f"[fal] base_url in {where}"
        else:
            base, source = DEFAULT_QUEUE_BASE, "default"
        key = fal_key_from_env(env) or _section_key(parser, FAL_TARGET, where)
        if key is None:
            raise KeyConfigError(
                "no fal key found. Set the environment variable FAL_KEY=key_id:key_secret (or FAL_KEY_ID and "
                f"FAL_KEY_SECRET) before starting ComfyUI, or write it in {hint_file} as:\n[fal]\nkey = key_id:key_secret\n"
                "Keys are made at https://fal.ai/dashboard/keys. Never put a key in a workflow."
            )
        hint = (f"Check the key ({key.source}); fal keys look like key_id:key_secret and are made at "
                "https://fal.ai/dashboard/keys.")
        return Target(name, base, key, source, hint)

    if name == ENV_TARGET and env.get("SAMKIT_SELF_HOSTED_URL", "").strip():
        base, source = env["SAMKIT_SELF_HOSTED_URL"].strip(), "SAMKIT_SELF_HOSTED_URL"
        if env.get("SAMKIT_SELF_HOSTED_KEY", "").strip():
            key = FalKey(env["SAMKIT_SELF_HOSTED_KEY"], "environment variable SAMKIT_SELF_HOSTED_KEY")
        else:
            key = _section_key(parser, name, where)
    elif parser.has_section(name) and name != FAL_TARGET and _is_target(parser, name):
        app = _app_of(parser, name, where)
        if app is not None and not parser[name].get("base_url", "").strip():
            # the pack deployed on the user's own fal account: fal's queue, fal's key
            fal = resolve_target(FAL_TARGET, env)
            return Target(name, fal.base_url, fal.key, fal.url_source, fal.auth_hint, app)
        base, source = parser[name]["base_url"].strip(), f"[{name}] base_url in {where}"
        key = _section_key(parser, name, where)
        if app is not None:
            hint = f"Check the key ([{name}] key in {where})." if key else f"Add key = ... to [{name}] in {where}."
            return Target(name, base, key, source, hint, app)
    else:
        known = ", ".join(list_targets(env))
        raise KeyConfigError(
            f"endpoint {name!r} is not configured on this machine (known: {known}). Add it to {hint_file}:\n"
            f"[{name}]\nbase_url = http://127.0.0.1:8765\nkey = <a key listed in the server's --key-file>\n"
            "then reload the ComfyUI page."
        )
    if key is None:
        hint = (f"No key is configured for endpoint {name!r}: add key = <a key from the server's --key-file> to "
                f"[{name}] in {hint_file}.")
    else:
        hint = f"Check the key ({key.source}): it must be listed in the server's --key-file."
    return Target(name, base, key, source, hint)
