"""``python -m jaxhybrid.config_page > docs/config.md``: every config field, section by
section, from the tables the code reads (default, what is valid, meaning);
``tests/test_family_seam.py`` checks that the page is current."""
from __future__ import annotations

from jaxhybrid.data.config import DATA
from jaxhybrid.evaluators.config import EVALS
from jaxhybrid.families import FAMILIES
from jaxhybrid.models import MODELS
from jaxhybrid.optim import OPTIMIZER
from jaxhybrid.run_config import RUN

_SHARED = ((RUN, "the run (top-level fields)", "jaxhybrid/run_config.py", "RUN"),
           (DATA, "`data`", "jaxhybrid/data/config.py", "DATA"),
           (OPTIMIZER, "`optimizer`", "jaxhybrid/optim.py", "OPTIMIZER"),
           (EVALS, "`evals`", "jaxhybrid/evaluators/config.py", "EVALS"))


def _family_tables() -> list[str]:
    out = []
    for name, spec in FAMILIES.items():
        out += [f"### `{name}` ({spec.__name__}, `jaxhybrid/families/{name}.py`)", ""]
        if spec.MODEL is None:
            out += ["`model.*`: a network of `jaxhybrid/models` (`model.name`: "
                    f"{', '.join(MODELS)}) and its options; default: "
                    f"`{dict(spec.default_model())}`.", ""]
        else:
            out += [spec.MODEL.table(), ""]
        out += [spec.OBJECTIVE.table(), ""]
    return out


def config_page() -> str:
    """Markdown of every section's table (the page docs/config.md)."""
    out = ["# Config fields", "",
           "Written by `python -m jaxhybrid.config_page > docs/config.md` from the tables the "
           "code reads, each beside that code; `tests/test_family_seam.py` checks that it is "
           "current. Every field is set with `--config.KEY=VALUE` (nested keys dotted, e.g. "
           "`--config.optimizer.learning_rate=3e-4`); a bad value is one `error: config field "
           "KEY = VALUE: ...` line before anything runs.", "",
           "## Shared by every family", ""]
    for schema, title, path, name in _SHARED:
        out += [f"### {title} (`{name}`, `{path}`)", "", schema.table(), ""]
    out += ["## Each family's `model` and `objective`", "",
            "A field of one family is never a key of another family's config.", ""]
    return "\n".join(out + _family_tables())


if __name__ == "__main__":
    print(config_page(), end="")
