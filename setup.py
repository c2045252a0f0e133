"""Build hook: ship the presets of ``configs/`` inside the package as ``fedleak/presets/`` (all settings are in
pyproject.toml). ``configs/`` stays the one copy in the source tree; ``fedleak.config.presets_dir()`` reads it in
a source checkout or editable install, and ``fedleak/presets/`` in an installed wheel."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithPresets(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads configs/ in place
            return
        src = ROOT / "configs"
        if not src.is_dir():  # building from an sdist made without configs/ would ship no presets
            raise SystemExit(f"{src} is missing: build fedleak from a source checkout or a complete sdist")
        for path in sorted(src.rglob("*.yaml")):
            target = Path(self.build_lib) / "fedleak" / "presets" / path.relative_to(src)
            self.mkpath(str(target.parent))
            self.copy_file(str(path), str(target))


setup(cmdclass={"build_py": BuildWithPresets})
