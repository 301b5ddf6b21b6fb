"""``nocdet --help`` and every command's parser build without importing torch (the CLI's lazy-import rule)."""
import subprocess
import sys


def test_building_the_parser_imports_no_torch():
    code = ("import sys, nocdet.cli as cli; cli.build_parser(); "
            "heavy = [m for m in ('torch', 'torchvision', 'cv2', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the parser imported {done.stdout.strip()}"


def test_version():
    import nocdet

    done = subprocess.run([sys.executable, "-m", "nocdet", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"nocdet {nocdet.__version__}"
