"""The distribution's name, import package and command: ``unsolo``, nothing that clashes with PyPI's ``freesolo``."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import unsolo


def test_distribution_command_and_import_name_are_unsolo():
    dist = md.distribution("unsolo")
    assert dist.metadata["Name"] == "unsolo" and dist.version == unsolo.__version__
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"unsolo": "unsolo.cli:main"}
    # nothing this distribution installs may be called freesolo (PyPI's freesolo installs a top-level 'freesolo')
    files = [str(f) for f in (dist.files or [])]
    assert not any(f.split("/")[0] == "freesolo" or f.startswith("freesolo.") for f in files), files[:5]
    out = subprocess.run([sys.executable, "-m", "unsolo", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"unsolo {unsolo.__version__}"
