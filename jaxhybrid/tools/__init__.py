"""The results tools: run grids, and tables and figures of finished runs.

* :mod:`jaxhybrid.tools.sweep` runs a grid of ordinary runs (``python -m
  jaxhybrid.tools.sweep``): :mod:`.grid` makes its points, :mod:`.overrides` parses
  config keys and values, :mod:`.configfile` reads a config module's ``get_sweep``.
* :mod:`jaxhybrid.tools.compare` puts the evaluations of several runs side by side;
  :mod:`jaxhybrid.tools.aggregate` summarises a sweep (mean ± std over seeds, figures).
* Shared by both: :mod:`.runs` (finding runs and the evaluation each one names),
  :mod:`.identity` (what a table row is: metric, ε, the definition of a score),
  :mod:`.stats` (grouping, mean ± std), :mod:`.tables` (md, csv, json),
  :mod:`.presentation` (what a sweep declares for its figures) and :mod:`.figures`.

Every path goes through ``etils.epath``, so run directories may live on gs://.
"""
