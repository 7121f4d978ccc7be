"""Builds kptrace's compiled parts in place in a source checkout: `python kptrace/build_compiled.py`
(an install builds them through setup.py's `cffi_modules`, from the same builders).

Each module is named as pip names it (cffi builds for the stable ABI: NAME.abi3.so), so a build
here and an install never leave two copies of which Python would load the stale one (it
prefers NAME.cpython-311-*.so), and it is moved over the old one, never written into it, as a
running process may have that one mapped. The builders are loaded from their files, so this runs
without kptrace's dependencies; the C and object files stay in a scratch directory.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: Each builder's file and the module it builds (its set_source name).
BUILDERS = {"read/pages_build.py": "_pages", "export/packets_build.py": "_packets", "whatif/steps_build.py": "_steps",
            "resample_build.py": "_resample"}


def build_in_place(builder: Path, module: str) -> Path:
    """Compile the FFI builder defined in `builder` and put `module`.abi3.so beside it."""
    spec = importlib.util.spec_from_file_location(builder.stem, builder)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(loaded.ffibuilder.compile(tmpdir=scratch))
        target = builder.parent / f"{module}.abi3.so"
        staged = target.with_name(f".{target.name}.new")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
    for stale in set(builder.parent.glob(f"{module}.*.so")) - {target}:
        stale.unlink()
    return target


if __name__ == "__main__":
    for path, name in BUILDERS.items():
        print(build_in_place(_HERE / path, name))
