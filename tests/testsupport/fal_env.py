"""The fal tests' clean slate: no key, base URL or config file from the machine running them."""

from __future__ import annotations

FAL_VARIABLES = ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "SAMKIT_FAL_BASE_URL", "SAMKIT_FAL_CONFIG",
                 "SAMKIT_SELF_HOSTED_URL", "SAMKIT_SELF_HOSTED_KEY")


def clear_fal_environment(monkeypatch, tmp_path) -> None:
    """Unset every variable the fal client reads and point the per-user config folders (XDG and
    Windows' APPDATA) at an empty folder under ``tmp_path``."""
    for name in FAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "config"))
