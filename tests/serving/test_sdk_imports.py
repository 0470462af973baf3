"""The SDK other services install imports neither torch nor Ray (nor the model code that needs torch)."""

from __future__ import annotations

import subprocess
import sys


def test_client_and_protocol_import_no_torch_or_ray() -> None:
    code = (
        "import sys, worldloop.serving.client, worldloop.serving.protocol\n"
        "heavy = {'torch', 'ray', 'worldloop.model'}\n"
        "print(','.join(sorted(m for m in sys.modules if m in heavy)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "", f"the SDK imported {out.stdout.strip()}"
