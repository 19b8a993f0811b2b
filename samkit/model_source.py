"""Find or download: the file a model name means, fetching a catalogue model that is missing.

The order (:func:`resolve_model_path`): an existing file wins, by ``model_folders``' rules;
then a missing model the catalogue lists (``catalogue.KNOWN_MODELS``) is downloaded into the
first model folder (``download.download_model``: checked, then moved into place); anything else
raises ``FileNotFoundError`` saying where it looked and what to do.
"""

from __future__ import annotations

from pathlib import Path

from . import catalogue, model_folders
from .download import download_model


def resolve_model_path(name: str, download: bool = True, folders_only: bool = False) -> Path:
    """The path of the model file ``name`` means, downloading a missing catalogue model.

    An existing file wins (``model_folders.find_model_file``'s rules); a catalogue model that
    is missing is downloaded into the first model folder when ``download`` is true; anything
    else raises ``FileNotFoundError`` saying where it looked. Also raises
    ``model_errors.ModelFileError`` for a folder given as a model and ``download.DownloadError``
    for a download that fails or fails a check.
    """
    path = model_folders.find_model_file(name, folders_only)
    if path is not None:
        return path
    name = str(name).strip()
    folders = model_folders.model_dirs()
    where = ", ".join(str(d) for d in folders)
    if folders_only and (Path(name).is_absolute() or Path(name).drive or name.startswith("~") or ".." in Path(name).parts):
        raise FileNotFoundError(
            f"model {name!r}: inside ComfyUI a model is a file in the model folders ({where}), not a path. "
            "Put the file in one of them and choose it from the list."
        )
    if not folders_only and model_folders.is_explicit_path(name):
        raise FileNotFoundError(f"model file {Path(name).expanduser().absolute()} does not exist (given as {name!r}).")
    known = catalogue.known_model(name)
    if known is not None:
        if download:
            return download_model(known, folders[0])
        raise FileNotFoundError(
            f"model {known.file_name} is not in {where} and downloading is off. "
            f"Download it from {known.url} and put it in {folders[0]}."
        )
    if not folders_only:
        where = f"the current folder ({Path.cwd()}), then {where}"
    known_names = ", ".join(m.file_name for m in catalogue.KNOWN_MODELS)
    raise FileNotFoundError(
        f"model {name!r} was not found; looked in: {where}. Put the file in one of these folders "
        f"(supported: {', '.join(model_folders.MODEL_EXTENSIONS)}), or choose a model the pack downloads itself: {known_names}."
    )
