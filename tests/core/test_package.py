"""Installed layout: the root package is ``domainfm``; no bare ``core``; domain extras fail with a hint."""

import subprocess
import sys

from tests.conftest import REPO


def _py(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_root_package_maps_to_core_folder(tmp_path):
    out = _py(
        "import domainfm, domainfm.engine, domainfm.pathology; print(domainfm.__file__); "
        "print(domainfm.pathology.__file__)",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    core_file, path_file = out.stdout.split()
    assert core_file == str(REPO / "core" / "__init__.py")
    assert path_file == str(REPO / "pathology" / "__init__.py")


def test_no_bare_core_package_after_install(tmp_path):
    out = _py("import core", tmp_path)
    assert out.returncode != 0
    assert "No module named 'core'" in out.stderr


def test_missing_extra_names_the_pip_command(tmp_path):
    code = (
        "import sys; sys.modules['openslide'] = None\n"
        "try:\n    import domainfm.pathology\nexcept ImportError as e:\n    print(e)"
    )
    out = _py(code, tmp_path)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line
    assert 'pip install "domainfm[pathology]"' in line and "openslide" in line


def test_every_domain_package_guards_its_extra(tmp_path):
    blocked = {"medical": "pydicom", "remote_sensing": "rasterio", "three_d": "torch_geometric", "face_security": "cv2"}
    for domain, module in blocked.items():
        code = (
            f"import sys; sys.modules['{module}'] = None\n"
            f"try:\n    import domainfm.{domain}\nexcept ImportError as e:\n    print(e)"
        )
        out = _py(code, tmp_path)
        extra = domain.replace("_", "-").replace("face-security", "face")
        assert f'pip install "domainfm[{extra}]"' in out.stdout, (domain, out.stdout, out.stderr)


def test_python_dash_m_shows_usage(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "domainfm", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for sub in ("pretrain", "finetune", "evaluate", "extract", "export", "recipes"):
        assert sub in out.stdout
