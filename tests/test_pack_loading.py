"""The pack loads the way ComfyUI loads it, without ComfyUI installed."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_NODES = {
    "SamKitModelLoader",
    "SamKitSegmentationMap",
    "SamKitSegmentPicker",
    "SamKitTinySAM",
    "SamKitFalTinySAM",
    "SamKitFalSegmentationMap",
    "SamKitFalSAM3",
}


def _load_like_comfyui():
    # ComfyUI's nodes.load_custom_node: module named after the full path, dots replaced.
    name = str(ROOT).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_loads_by_path_and_exports_every_node():
    module = _load_like_comfyui()
    assert set(module.NODE_CLASS_MAPPINGS) == EXPECTED_NODES, module.nodes.IMPORT_ERRORS
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED_NODES
    assert module.WEB_DIRECTORY == "./web"
    assert not hasattr(module, "comfy_entrypoint")  # exporting both would silence one of them
    for cls in module.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        assert "required" in spec
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert callable(getattr(cls, cls.FUNCTION))
        assert cls.CATEGORY.startswith("SAM Kit")
        for section in spec.values():
            for input_name, entry in section.items():
                if len(entry) > 1 and isinstance(entry[1], dict):
                    assert entry[1].get("tooltip"), f"{cls.__name__}.{input_name} has no tooltip"


def test_no_input_could_carry_a_fal_key():
    module = _load_like_comfyui()
    for cls in module.NODE_CLASS_MAPPINGS.values():
        for section in cls.INPUT_TYPES().values():
            for input_name in section:
                assert "key" not in input_name.lower() and "secret" not in input_name.lower(), (cls, input_name)


def test_library_imports_nothing_from_comfyui():
    code = (
        "import sys, importlib, pkgutil\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import samkit\n"
        "for m in pkgutil.walk_packages(samkit.__path__, 'samkit.'):\n"
        "    if m.name != 'samkit.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'server', 'comfy_api', 'nodes')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_pyproject_has_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["version"]
    assert "comfyui" not in data["project"]["name"].lower()
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert "web" not in comfy  # WEB_DIRECTORY is used; both would serve the JS twice
