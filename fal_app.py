"""Entry file for ``fal deploy fal_app.py::SamKitApp`` (and ``fal run``), run from the pack's folder.

fal loads this file by path, so the App lives in the library (``samkit/fal/app.py``) and this file
only imports it; ``SamKitApp.app_files`` ships ``samkit/`` with the app. ComfyUI never imports it.
"""

from samkit.fal.app import SamKitApp

__all__ = ["SamKitApp"]
