#!/usr/bin/env bash
# `gdk component build` (gdk-config.json's custom build): the agent's source as the component's
# one artifact, and the recipe, where `gdk component publish` looks for them:
#
#   greengrass-build/artifacts/<component>/<version>/neo-edge-agent.zip   pyproject.toml, README.md,
#                                                                         agent/, device_profiles/
#   greengrass-build/recipes/recipe.yaml
#
# gdk runs it in the folder that holds gdk-config.json; the source is this script's repository.
# <version> is gdk-config.json's, NEXT_PATCH included (gdk's own folder name for it); publish sets
# the recipe's ComponentVersion and the artifact's S3 URI.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
read -r name version < <("$PYTHON" -c '
import json
(name, component), = json.load(open("gdk-config.json"))["component"].items()
print(name, component["version"])')
artifacts="greengrass-build/artifacts/$name/$version"
rm -rf greengrass-build
mkdir -p "$artifacts" greengrass-build/recipes
"$PYTHON" - "$repo" "$artifacts/neo-edge-agent.zip" <<'PY'
import pathlib, sys, zipfile

repo, out = pathlib.Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
    for top in ("pyproject.toml", "README.md", "agent", "device_profiles"):
        path = repo / top
        for item in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
            if item.is_file() and "__pycache__" not in item.parts:
                archive.write(item, item.relative_to(repo).as_posix())
PY
cp recipe.yaml greengrass-build/recipes/recipe.yaml
echo "built $artifacts/neo-edge-agent.zip and greengrass-build/recipes/recipe.yaml"
