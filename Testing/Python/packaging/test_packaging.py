"""Packaging: CMake installs every file, each .ui loads and holds the widgets the code uses, layers stay apart."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
from meddl.device import DEVICE_CHOICES
from meddl.tasks import TASKS

ROOT = Path(__file__).resolve().parents[3]
EXTENSION = ROOT / "MedDLExtension"
MODULES = list(dict.fromkeys(task.module for task in TASKS.values()))  # the Slicer modules that run the tasks
PACKAGES = {"meddl": "MEDDL_PYTHON", "MedDLLib": "MEDDLLIB_PYTHON", "MedDLWidgets": "MEDDLWIDGETS_PYTHON"}


def _cmake_list(cmake: Path, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmake.read_text(), re.S)
    assert match, f"{variable} not set in {cmake}"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def _module_file_list(module: str, variable: str) -> set[str]:
    return {item.replace("${MODULE_NAME}", module) for item in _cmake_list(EXTENSION / module / "CMakeLists.txt",
                                                                           variable)}


def _files(folder: Path, pattern: str) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob(pattern) if "__pycache__" not in p.parts}


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for required in ["EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'EXTENSION_DEPENDS "PyTorch"',
                     "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]:
        assert required in text
    subdirectories = re.findall(r"add_subdirectory\((\S+)\)", text)
    assert sorted(subdirectories) == sorted(f"MedDLExtension/{name}" for name in [*MODULES, *PACKAGES])


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_every_file(module):
    folder = EXTENSION / module
    scripts = _module_file_list(module, "MODULE_PYTHON_SCRIPTS")
    resources = _module_file_list(module, "MODULE_PYTHON_RESOURCES")
    assert scripts == _files(folder, "*.py")  # the module, and in subfolders what it loads (editor effects)
    assert {p.name for p in folder.glob("*.py")} == {f"{module}.py"}
    assert resources == {f"Resources/{r}" for r in _files(folder / "Resources", "*.*")}
    text = (folder / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


@pytest.mark.parametrize(("package", "prefix"), PACKAGES.items())
def test_shared_package_cmake_lists_every_file(package, prefix):
    folder = EXTENSION / package
    cmake = folder / "CMakeLists.txt"
    assert set(_cmake_list(cmake, f"{prefix}_SCRIPTS")) == _files(folder, "*.py")
    json_files = _files(folder, "*.json")
    if json_files:
        assert set(_cmake_list(cmake, f"{prefix}_RESOURCES")) == json_files
    assert "ctkMacroCompilePythonScript" in cmake.read_text()


def test_no_stray_python_files_in_module_folders():
    """Slicer treats every .py directly in a module folder as a module."""
    for module in MODULES:
        assert [p.name for p in (EXTENSION / module).glob("*.py")] == [f"{module}.py"]


EDITOR_EFFECTS = {"MedDLSegmentation": "SegmentEditorMedDL/SegmentEditorEffect.py"}  # module -> effect source
EFFECT_METHODS = {"clone", "icon", "helpText", "setupOptionsFrame", "createCursor", "activate", "deactivate",
                  "setMRMLDefaults", "updateGUIFromMRML", "updateMRMLFromGUI", "cleanup"}
# Loads an effect file the way Slicer's setPythonSource does (module named after the folder, class after the file),
# with stand-ins for what only Slicer's application has (qt, SegmentEditorEffects); reports what it found.
EFFECT_PROBE = """
import importlib.util, json, sys, types
from pathlib import Path
sys.modules["qt"] = types.ModuleType("qt")
effects = types.ModuleType("SegmentEditorEffects")
class AbstractScriptedSegmentEditorEffect:
    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect
effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
sys.modules["SegmentEditorEffects"] = effects
path = Path(sys.argv[1])
class_name = path.stem if path.stem.endswith("Effect") else path.stem + "Effect"
spec = importlib.util.spec_from_file_location(path.parent.name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
cls = getattr(module, class_name, None)
found = {"heavy": sorted(m for m in ("torch", "monai") if m in sys.modules), "class": cls is not None}
if cls is not None:
    effect = cls(types.SimpleNamespace())
    found.update(subclass=issubclass(cls, AbstractScriptedSegmentEditorEffect), methods=sorted(vars(cls)),
                 name=effect.scriptedEffect.name, help=effect.helpText(), icon=str(getattr(module, "ICON", "")))
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def probed_effects() -> dict[str, dict]:
    import subprocess
    import sys

    found = {}
    for module, source in EDITOR_EFFECTS.items():
        out = subprocess.run([sys.executable, "-c", EFFECT_PROBE, str(EXTENSION / module / source)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(EXTENSION)})
        assert out.returncode == 0, out.stderr[-3000:]
        found[module] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize(("module", "source"), EDITOR_EFFECTS.items())
def test_editor_effect_is_installed_with_its_module(module, source):
    assert (EXTENSION / module / source).is_file()
    assert source in _module_file_list(module, "MODULE_PYTHON_SCRIPTS")


@pytest.mark.parametrize("module", EDITOR_EFFECTS)
def test_editor_effect_loads_without_torch_and_defines_the_effect(probed_effects, module):
    """Slicer loads the effect when it starts, before MedDL's first-use install of torch: nothing it imports may
    load torch or MONAI, and the class Slicer looks for must be there with the methods the editor calls."""
    found = probed_effects[module]
    assert found["heavy"] == [], f"importing the effect loads {found['heavy']}"
    assert found["class"] and found["subclass"]
    assert not EFFECT_METHODS - set(found["methods"]), "missing methods"
    assert found["name"] == "MedDL" and found["help"]


@pytest.mark.parametrize("module", EDITOR_EFFECTS)
def test_editor_effect_icon_is_installed(probed_effects, module):
    icon = Path(probed_effects[module]["icon"]).resolve()
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(icon.relative_to(EXTENSION / module)) in _module_file_list(module, "MODULE_PYTHON_RESOURCES")


def _registered_effect_sources(path: Path) -> list[Path]:
    """The files a module passes to setPythonSource: names bound to `Path(__file__)...parent / "dir" / "x.py"`."""
    tree = ast.parse(path.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "setPythonSource"]
    passed = {name.id for call in calls for arg in call.args for name in ast.walk(arg) if isinstance(name, ast.Name)}
    sources = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in passed for t in node.targets) \
                and any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node.value)):
            parts = [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            sources.append(path.parent.joinpath(*sorted(parts, key=lambda part: part.endswith(".py"))))
    return sources


@pytest.mark.parametrize(("module", "source"), EDITOR_EFFECTS.items())
def test_module_registers_its_editor_effect_at_startup(module, source):
    path = EXTENSION / module / f"{module}.py"
    text = path.read_text()
    assert re.search(r'slicer\.app\.connect\("startupCompleted\(\)", \w+\)', text)
    assert "qSlicerSegmentEditorScriptedEffect(None)" in text and ".self().register()" in text
    assert _registered_effect_sources(path) == [EXTENSION / module / source]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), feature_version=(3, 9))  # also proves Python 3.9 syntax
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engine_imports_no_slicer_qt_or_vtk():
    for path in (EXTENSION / "meddl").rglob("*.py"):
        assert not _imports(path) & {"slicer", "qt", "ctk", "vtk", "vtkmodules", "MedDLLib"}, path


def test_mrml_logic_imports_no_qt():
    for path in (EXTENSION / "MedDLLib").rglob("*.py"):
        assert not _imports(path) & {"qt", "ctk", "PythonQt"}, path
        globals_used = {f"{node.value.id}.{node.attr}" for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
        assert not globals_used & {"slicer.app", "slicer.mrmlScene", "slicer.modules"}, path


def test_extension_index_entry():
    entry = json.loads((ROOT / "Resources" / "ExtensionsIndex" / "MedDL.json").read_text())
    assert "slicer-extension-catalog-entry-schema-v1.0.1" in entry["$schema"]
    assert entry["build_dependencies"] == ["PyTorch"]
    assert {"category", "scm_url", "scm_revision", "tier"} <= set(entry)


def test_licence_and_icons():
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    for icon in [ROOT / "Resources/Icons/MedDL.png",
                 *[EXTENSION / m / "Resources/Icons" / f"{m}.png" for m in MODULES]]:
        assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def qt_application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets  # in the dev environment: a missing PySide6 is a failure, not a skip

    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.mark.parametrize("module", MODULES)
def test_ui_loads_and_holds_every_widget_the_code_uses(qt_application, module):
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    ui_path = EXTENSION / module / "Resources" / "UI" / f"{module}.ui"
    ui_file = QFile(str(ui_path))
    assert ui_file.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui_file)  # Slicer's custom widgets load as their declared base class
    ui_file.close()
    assert widget is not None
    names = {child.objectName() for child in widget.findChildren(QWidget)}
    used = set(re.findall(r"self\.ui\.(\w+)", (EXTENSION / module / f"{module}.py").read_text()))
    for helper in (EXTENSION / module / f"{module}Lib").glob("*.py"):  # panel parts kept out of the module file
        used |= set(re.findall(r"\bui\.(\w+)", helper.read_text()))
    if "MedDLWidgetMixin" in (EXTENSION / module / f"{module}.py").read_text():  # the shared widgets
        without_library = "withLibrary=False" in (EXTENSION / module / f"{module}.py").read_text()
        for shared in (EXTENSION / "MedDLWidgets").glob("*.py"):
            if not (without_library and shared.name == "model_library_panel.py"):
                used |= set(re.findall(r"\bui\.(\w+)", shared.read_text()))
    assert used and used <= names, f"widgets used but missing from {ui_path.name}: {used - names}"
    # every parameter-node field is bound to a widget through SlicerParameterName
    source = (EXTENSION / module / f"{module}.py").read_text()
    fields = set(re.findall(r"^    (\w+): ", source.split("@parameterNodeWrapper")[1].split("class ", 2)[1], re.M))
    bound = _parameter_bindings(ui_path)
    assert fields == set(bound)
    # Slicer's QComboBox connector raises at connectGui unless the field is annotated with Choice
    for field, widget_class in bound.items():
        if widget_class == "QComboBox":
            assert re.search(rf"^    {field}: Annotated\[\w+, Choice\(", source, re.M), f"{field} needs Choice"


@pytest.mark.parametrize("module", MODULES)
def test_every_panel_offers_every_device(module):
    """auto, cpu, cuda and mps, as the command line does: from the engine's list, or the .ui's items in that order."""
    source = (EXTENSION / module / f"{module}.py").read_text()
    assert "device: Annotated[str, Choice(list(DEVICE_CHOICES))]" in source
    for widget in ElementTree.parse(EXTENSION / module / "Resources" / "UI" / f"{module}.ui").iter("widget"):
        if widget.get("name") == "deviceSelector":
            items = [item.findtext("property/string") for item in widget.findall("item")]
            assert items in ([], list(DEVICE_CHOICES)), module


def test_every_registered_task_has_its_module_and_commands():
    for task in TASKS.values():
        assert (EXTENSION / task.module / f"{task.module}.py").is_file()
        assert (EXTENSION / "meddl" / Path(*task.commands.split(".")[1:])).with_suffix(".py").is_file()


def _parameter_bindings(ui_path: Path) -> dict[str, str]:
    """SlicerParameterName -> the class of the widget that carries it, from a .ui file."""
    bindings = {}
    for widget in ElementTree.parse(ui_path).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[prop.findtext("string")] = widget.get("class")
    return bindings


def _engine_modules() -> dict[str, Path]:
    modules = {}
    for path in (EXTENSION / "meddl").rglob("*.py"):
        parts = list(path.relative_to(EXTENSION).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _engine_imports(path: Path, modules: dict[str, Path], nodes) -> set[str]:
    """The engine modules that these import statements of `path` load."""
    package = ".".join(path.relative_to(EXTENSION).with_suffix("").parts[:-1])
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or "" if node.level == 0 else ".".join(
                [*package.split(".")[: len(package.split(".")) - node.level + 1], *([node.module] if node.module
                                                                                     else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in modules}


def test_engine_module_imports_form_no_cycle():
    """No hidden import loops: the module-level imports between engine modules are a DAG."""
    modules = _engine_modules()
    graph = {name: _engine_imports(path, modules, [n for n in ast.parse(path.read_text()).body
                                                   if isinstance(n, (ast.Import, ast.ImportFrom))])
             for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "open":
            raise AssertionError(f"import cycle: {' -> '.join([*trail, name])}")
        if state.get(name) != "done":
            state[name] = "open"
            for target in graph[name] - {name}:
                visit(target, [*trail, name])
            state[name] = "done"

    for name in graph:
        visit(name, [])


def test_imports_inside_engine_functions_are_only_of_heavy_modules():
    """An import inside a function is for what loads torch or MONAI (start-up and Slicer's process stay light),
    never a way around an import cycle."""
    modules = _engine_modules()
    top = {name: [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
           for name, path in modules.items()}
    heavy: dict[str, bool] = {}

    def is_heavy(name: str, seen: frozenset = frozenset()) -> bool:
        if name not in heavy:
            external = {alias.name.split(".")[0] for n in top[name] if isinstance(n, ast.Import) for alias in n.names}
            external |= {n.module.split(".")[0] for n in top[name] if isinstance(n, ast.ImportFrom) and n.level == 0
                         and n.module}
            inner = _engine_imports(modules[name], modules, top[name]) - seen - {name}
            heavy[name] = bool(external & {"torch", "monai"}) or any(is_heavy(m, seen | {name}) for m in inner)
        return heavy[name]

    light = []
    for name, path in modules.items():
        functions = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]
        inner = [n for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        light += [f"{name} -> {target}" for target in _engine_imports(path, modules, inner) if not is_heavy(target)]
    assert not light, f"light modules imported inside functions: {light}"


def test_slicer_side_imports_load_no_torch():
    """Slicer's process imports MedDLLib (and the engine's light parts) before torch is installed: the first-use
    install prompt must be reachable, so no module it imports may load torch."""
    import subprocess
    import sys

    names = sorted(f"MedDLLib.{p.stem}" for p in (EXTENSION / "MedDLLib").glob("*.py") if p.stem != "__init__")
    code = (f"import sys; [__import__(n) for n in {names!r}]; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(EXTENSION)})
    assert out.stdout.strip() == "[]", out.stdout
