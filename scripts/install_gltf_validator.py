"""Install the Khronos glTF Validator (npm ``gltf-validator``) into ``.cache/gltf-validator`` for the tests.

Straight from the npm registry, checked against the pinned sha512, so neither npm nor a global
install is needed (Debian's ``nodejs`` package comes without npm). Run by ``scripts/bootstrap.sh``;
does nothing when that version is already there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "2.0.0-dev.3.10"
URL = f"https://registry.npmjs.org/gltf-validator/-/gltf-validator-{VERSION}.tgz"
INTEGRITY = "sha512-odJ4k0tRkGXiDGn78yDBg+fBbAIvBnXxh3RwAta0emSxGtyagFE8B4xELB1oYe3S5RD8Ci3uZAsZaascH2LAEQ=="
TARGET = Path(__file__).resolve().parent.parent / ".cache" / "gltf-validator" / "node_modules" / "gltf-validator"


def main() -> int:
    manifest = TARGET / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("version") == VERSION:
        return 0
    with urllib.request.urlopen(URL, timeout=60) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        print(f"gltf-validator {VERSION} from {URL} does not match its pinned sha512; not installed", file=sys.stderr)
        return 1
    staging = TARGET.with_name(".gltf-validator.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(staging, filter="data")  # npm tarballs hold package/...
    shutil.rmtree(TARGET, ignore_errors=True)
    (staging / "package").rename(TARGET)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"installed gltf-validator {VERSION} into {TARGET.parent.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
