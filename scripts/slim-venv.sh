#!/usr/bin/env bash
# Shrink an installed virtualenv inside an image build (run as root, in the RUN that installed it):
#   - strip debug symbols from shared libraries (TensorFlow's main one: 788 -> 583 MB), except
#     those auditwheel rewrote with patchelf (vendored *.libs folders, and extensions whose
#     RUNPATH points into one): stripping those corrupts them;
#   - delete the test suites that numpy, scipy, pandas, scikit-learn and matplotlib ship;
#   - import what the images use, so a library that no longer loads fails the build.
# Run again after a later layer installed more, it strips only the files added since the last
# run (a stamp file records when): rewriting a file of an earlier layer would copy it into
# the new one. binutils (for strip) is installed and purged again here, never reaching a layer.
#
# Usage: slim-venv.sh VENV
set -euo pipefail

venv="$1"
site=$(echo "$venv"/lib/python3*/site-packages)
stamp="$venv/.slimmed"
newer=()
[ -e "$stamp" ] && newer=(-cnewer "$stamp")

for package in numpy scipy pandas sklearn matplotlib; do
    [ -d "$site/$package" ] && find "$site/$package" -depth "${newer[@]}" -type d -name tests \
        -exec rm -rf {} +
done

libraries=$(mktemp)
find "$site" "${newer[@]}" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
    -print0 >"$libraries"
stripped=false
if [ -s "$libraries" ]; then
    stripped=true
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends binutils >/dev/null
    while IFS= read -r -d '' library; do
        if ! readelf -d "$library" 2>/dev/null | grep -q 'R.*PATH.*\.libs'; then
            strip --strip-unneeded "$library"
        fi
    done <"$libraries"
    apt-get purge -y -q --auto-remove binutils >/dev/null
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
fi
rm "$libraries"
touch "$stamp"
# A library that no longer loads must fail the build, not a user's notebook; with nothing
# stripped (pure-Python additions) there is nothing new to check.
[ "$stripped" = true ] || exit 0
"$venv/bin/python" - <<'PY'
import importlib.util

for name in ("tensorflow", "keras", "numpy", "scipy", "pandas", "sklearn", "matplotlib",
             "sqlalchemy", "fontTools.ttLib", "kiwisolver", "yaml", "grpc", "h5py", "zmq",
             "mlflow", "cryptography", "PIL.Image", "pyarrow", "flask", "debugpy"):
    if importlib.util.find_spec(name.split(".")[0]) is not None:
        importlib.import_module(name)
if importlib.util.find_spec("keras") is not None:
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=1, verbose=0)
PY
