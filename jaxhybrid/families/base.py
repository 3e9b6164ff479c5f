"""What the trainer and the evaluators know about a model family: nothing else.

A family is a Flax module, an objective and its named outputs:

- ``init(rng, batch, axis_name) -> variables``: ``{"params": ..., <collection>: ...}``
  from a real global batch (data-dependent init); runs per device inside
  ``jax.shard_map``, so anything computed from the data must be reduced over
  ``axis_name`` (the result must be the same on every device).
- ``loss(variables, batch, rng, progress, axis_name) -> (loss, (model_state, aux))``:
  per device, inside ``jax.shard_map``. ``batch``: ``image`` [B, H, W, C] in [0, 1]
  (train transforms applied), ``mask`` [B] bool, ``id`` [B] global example ids, and
  ``label`` [B] when the data has labels. ``rng`` is the step's MODEL stream key, the
  same on every device: a family draws from named streams of it
  (:func:`jaxhybrid.rng.stream`), each keyed per example by
  :func:`jaxhybrid.rng.example_keys` with ``batch["id"]``. ``progress``:
  ``{"step": int32, "epoch": float32}`` (fractional),
  for schedules. ``model_state``: the updated non-trainable collections (e.g.
  ``batch_stats``, over the global batch); ``aux``: scalars reduced over ``axis_name``.
- ``global_stats`` (optional, :class:`GlobalStatistics`): a loss with a normaliser over
  the WHOLE global batch (the GFFN partition) exposes it, so that gradient accumulation
  (``config.accumulation_steps``, :func:`jaxhybrid.train.make_train_step`) computes it
  exactly over every micro-batch. Without it, a family's ``loss`` must be a mean over the
  valid rows of its batch (plus terms of the parameters alone): the trainer averages the
  micro-batches' losses, gradients and aux scalars weighted by their valid rows.
- ``predict(variables, batch, rng, outputs) -> {name: [B, ...]}``: eval mode, only the
  named ``outputs`` (an expensive one is computed only when asked for). ``rng`` is the
  fixed evaluation key.

It declares what it serves: ``outputs`` (every name ``predict`` knows),
``supervised`` (its loss needs labels), and the canonical outputs the evaluators look
for: ``logits`` [B, K] (class scores), ``log_likelihood`` [B] (a bound on log p(x) in
nats), and ``ood_scores`` (``ood_score_fn(outputs) -> {name: [N]}``, higher = more
in-distribution, computed from ``ood_outputs``). Validation during training computes
``validation_outputs`` and ``validate(outputs) -> {metric: float}``; ``select =
(metric, "max" | "min")`` names the metric that :mod:`jaxhybrid.selection` chooses the
best checkpoint and stops early on.
"""
from __future__ import annotations

import abc
import dataclasses
import types
from typing import Any, Callable, Mapping, Optional

import ml_collections

from jaxhybrid import precision
from jaxhybrid.schema import Schema

SELECT_MODES = ("max", "min")


@dataclasses.dataclass(frozen=True)
class GlobalStatistics:
    """A loss's statistics over the whole global batch, for gradient accumulation.

    With k micro-batches the trainer first runs ``collect`` on each (in order, the
    model state carried from one to the next as the gradient pass will), stacks the
    partial statistics on a leading axis [k, ...] and ``combine``s them into the global
    batch's; it then takes each micro-batch's gradient of ``loss`` with those statistics
    held fixed (no gradient flows into them). Per device, inside ``jax.shard_map``:

    - ``collect(variables, batch, rng, progress, axis_name) -> (partial, model_state)``:
      one micro-batch's statistics, reduced over ``axis_name`` (the same on every device);
    - ``combine(stacked) -> statistics`` of the global batch (outside the shard_map);
    - ``loss(variables, batch, rng, progress, axis_name, statistics) -> (loss, (state,
      aux))``: the micro-batch's loss with the global ``statistics``, such that its value
      and gradient, weighted by the micro-batch's share of the valid rows (n_j / N) and
      summed over the micro-batches, are the global batch's loss and gradient.
    """
    collect: Callable
    combine: Callable
    loss: Callable


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    init: Callable            # (rng, batch, axis_name) -> variables
    loss: Callable            # (variables, batch, rng, progress, axis_name) -> (loss, (state, aux))
    predict: Callable         # (variables, batch, rng, outputs: tuple) -> {name: [B, ...]}
    outputs: tuple            # every output name predict serves
    supervised: bool          # the loss needs labels
    validation_outputs: tuple                 # outputs computed at each validation
    validate: Callable        # (outputs incl. 'label' if any) -> {metric: float}
    select: tuple = ("accuracy", "max")       # (validation metric, max|min)
    ood_outputs: tuple = ()                   # outputs ood_score_fn needs
    ood_score_fn: Optional[Callable] = None   # (outputs) -> {score: [N]}, higher = in-dist
    bound_outputs: tuple = ()                 # outputs bound_fn needs
    bound_fn: Optional[Callable] = None       # (outputs) -> {name: [N]} further bounds on
                                              # log p(x) in nats (the likelihood evaluator
                                              # reports them beside log_likelihood)
    label: str = ""           # short human label for figures and reports
    likelihood: str = ""      # the observation model of log_likelihood, a name of
                              # models.likelihoods.LIKELIHOODS ('' if none): reports say
                              # what its bits/dim mean, and a 'binary' one is refused on
                              # data that are not binary (config_check.check_family_data)
    definitions: dict = dataclasses.field(default_factory=dict)
                              # {output or OOD score name: one-line definition}; reports print
                              # it beside the number, and results tools never put two scores
                              # with different definitions in one row
    describe: dict = dataclasses.field(default_factory=dict)
    global_stats: Optional[GlobalStatistics] = None   # a normaliser over the global batch

    def __post_init__(self):
        metric, mode = self.select
        if mode not in SELECT_MODES:
            raise ValueError(f"family {self.name!r}: select mode {mode!r}; valid choices: "
                             f"{', '.join(SELECT_MODES)}")
        unknown = set(self.validation_outputs) | set(self.ood_outputs) | set(self.bound_outputs)
        unknown -= set(self.outputs)
        if unknown:
            raise ValueError(f"family {self.name!r} asks for outputs {sorted(unknown)} that "
                             f"predict does not serve ({', '.join(self.outputs)})")

    def provides(self) -> set[str]:
        """Capabilities for evaluators: output names, plus 'ood_scores' if it has any."""
        return set(self.outputs) | ({"ood_scores"} if self.ood_score_fn else set())

    @property
    def select_key(self) -> str:
        """The validation metric's name in logs and checkpoint metrics (``val_<metric>``)."""
        return f"val_{self.select[0]}"


@dataclasses.dataclass(frozen=True)
class Options:
    """A family's checked config sections, each a read-only mapping {field: value}:
    ``model`` (``config.model``) and ``objective`` (``config.objective``). A reader says
    which section a value is of: ``opts.model["width"]``, ``opts.objective["beta"]``."""
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    objective: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for section in ("model", "objective"):
            object.__setattr__(self, section,
                               types.MappingProxyType(dict(getattr(self, section))))

    def field(self, dotted: str):
        """The value of ``"model.<name>"`` or ``"objective.<name>"``."""
        section, name = dotted.split(".", 1)
        return getattr(self, section)[name]


class FamilyBase(abc.ABC):
    """The shape of every family of the library: one small class.

    It declares its config sections as tables (:class:`jaxhybrid.schema.Schema`):
    ``MODEL`` (``config.model``: the module, and the outputs' sampling) and ``OBJECTIVE``
    (``config.objective``: the loss, its weights and schedules), plus ``RULES`` across
    them (the classifier's ``MODEL`` holds every network of :data:`jaxhybrid.models.MODELS`
    with its options; ``MODEL = None`` checks no model section). ``__init__`` reads and
    checks both sections (``self.opts``: an :class:`Options`, ``self.opts.model[...]`` and
    ``self.opts.objective[...]``); the subclass implements the seam's functions as methods
    and :meth:`family` returns the :class:`Family` record the trainer and evaluators hold.
    :meth:`build` is the factory the registry calls (``(config, num_classes, mean, std)``,
    the signature an external family's factory has too).
    """
    name: str = ""
    MODEL: Optional[Schema] = None
    OBJECTIVE: Schema = Schema("objective", {})
    RULES: tuple = ()         # (opts: Options) -> [(dotted field, what is valid)], run once
                              # every field is valid

    @classmethod
    def default_model(cls) -> ml_collections.ConfigDict:
        """``config.model`` at the family's defaults."""
        return cls.MODEL.defaults()

    @classmethod
    def options(cls, config) -> Options:
        """``config.model`` and ``config.objective`` checked, each read into its own
        section of an :class:`Options`: one ValueError naming every bad field and what is
        valid."""
        bad, read = [], {}
        schemas = [s for s in (cls.MODEL, cls.OBJECTIVE) if s is not None]
        for schema in schemas:
            section = config.get(schema.section) if hasattr(config, "get") else None
            found = schema.problems(section, [s for s in schemas if s is not schema])
            bad += found
            if not found:
                read[schema.section] = schema.read(section)
        if not bad:
            opts = Options(**read)
            bad = [f"config field {f} = {opts.field(f)!r}: {why}"
                   for rule in cls.RULES for f, why in rule(opts)]
        if bad:
            raise ValueError("\n".join(bad))
        return opts

    @classmethod
    def problems(cls, config) -> list[str]:
        """One line per bad field of the family's sections (none: [])."""
        try:
            cls.options(config)
        except ValueError as e:
            return str(e).splitlines()
        return []

    @classmethod
    def build(cls, config, num_classes: int, mean=None, std=None) -> "Family":
        return cls(config, num_classes, mean, std).family()

    def __init__(self, config, num_classes: int, mean=None, std=None):
        self.config, self.num_classes, self.mean, self.std = config, num_classes, mean, std
        self.opts = self.options(config)
        self.dtype = precision.compute_dtype(config)

    def needs_classes(self) -> None:
        """A supervised family's check: labelled data with at least two classes."""
        if self.num_classes < 2:
            raise ValueError(f"family {self.name!r} needs labelled data with >= 2 classes; "
                             f"data {self.config.data.source!r} has {self.num_classes}")

    @abc.abstractmethod
    def family(self) -> "Family":
        """The record the trainer and the evaluators hold (the seam)."""


def variables_of(state: dict) -> dict:
    """The module variables of a train state: params plus non-trainable collections."""
    return {"params": state["params"], **state["model_state"]}


def split_variables(variables: Any) -> tuple[Any, dict]:
    """variables -> (params, model_state) with every non-params collection in the state."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables
