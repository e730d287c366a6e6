"""Run a command line the way a person pastes it: a fresh shell at the repository root, with
`mhc-fuzz` installed as a console script (which, unlike `python -m`, puts no directory of
the checkout on sys.path) and nothing else set."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_line(line: str, tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    site = tmp_path / "installed"          # fuzz and impls as an installed package provides them
    bin_dir = tmp_path / "bin"
    if not site.exists():
        site.mkdir()
        for pkg in ("fuzz", "impls"):
            (site / pkg).symlink_to(ROOT / pkg)
        bin_dir.mkdir()
        script = bin_dir / "mhc-fuzz"
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom fuzz.cli import main\n"   # as pip writes it
                          "if __name__ == '__main__':\n    sys.exit(main())\n")
        script.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": os.environ.get("HOME", str(tmp_path)), "PYTHONPATH": str(site)}
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
