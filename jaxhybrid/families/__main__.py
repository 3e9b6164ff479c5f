"""``python -m jaxhybrid.families``: print docs/config.md (every family's config tables)."""
from jaxhybrid.families import config_tables

print(config_tables(), end="")
