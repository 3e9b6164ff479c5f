"""Every config key the README, the docs pages, the configs' docstrings and the results scripts
write in a command (``--config.KEY=``, ``--sweep KEY=``, ``--set KEY=``) exists in the
configs: a renamed field cannot leave a stale command behind."""
import glob
import os
import re

from configs import dhm, gffn, hvae
from jaxhybrid.rundir import config_dict, flatten
from tests.helpers import REPO

PATTERNS = (r"--config\.([A-Za-z_][\w.]*)=", r"--(?:sweep|set)[= ]([A-Za-z_][\w.]*)=")
PLACEHOLDERS = {"KEY"}


def test_every_documented_key_exists():
    keys = set()
    for module in (gffn, dhm, hvae):
        for variant in module.VARIANTS:
            keys |= set(flatten(config_dict(module.get_config(variant))))
    files = ["README.md", "Makefile"] + [
        f for pattern in ("docs/**/*.md", "docs/results/*.py", "docs/results/*.sh",
                          "configs/*.py")
        for f in glob.glob(pattern, root_dir=REPO, recursive=True)]
    stale = []
    for name in files:
        text = open(os.path.join(REPO, name)).read()
        for pattern in PATTERNS:
            stale += [(name, k) for k in re.findall(pattern, text)
                      if k not in keys | PLACEHOLDERS]
    assert len(files) > 10 and not stale, stale
    # wherever a command moves (README.md is a front door linking the docs pages), its
    # page is read: every markdown page the README links to is among the files checked
    linked = {os.path.normpath(t.partition("#")[0]) for t in
              re.findall(r"\]\(([^)\s]+\.md(?:#[^)\s]*)?)\)",
                         open(os.path.join(REPO, "README.md")).read())
              if "://" not in t}
    assert len(linked) > 5 and linked <= set(map(os.path.normpath, files)), linked - set(files)
