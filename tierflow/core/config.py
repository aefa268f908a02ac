"""``llm_config.yaml``: tiers, models, prices, routing rules and limits, in the seed's schema.

Strings may hold ``${VAR}`` or ``${VAR:-default}``, expanded from the environment when loaded, so
one file serves a laptop and a cluster. Every field is validated; a bad file raises
:class:`~tierflow.core.errors.ConfigError` naming the field, e.g.
``tiers.local_fast.models.0.provider``.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierflow.core.constants import Mode, Tier
from tierflow.core.errors import ConfigError, describe_validation_error
from tierflow.core.secrets import remember_key_variable

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# ``options.extra_buffers`` of a model served by the embedded llama.cpp engine.
EXTRA_BUFFERS_CHOICES = ("auto", "on", "off")
# OpenAI's Batch API and Anthropic's Message Batches both charge half the synchronous price.
BATCH_DISCOUNT = 0.5
# The variable an API provider's key is read from when a model names none (``api_key_env``);
# a provider not listed (a local server) needs no key unless its model names one.
DEFAULT_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLimits(_Strict):
    """Fleet-wide limits for one model; ``None`` means unlimited."""

    requests_per_minute: int | None = Field(default=None, gt=0)
    input_tokens_per_minute: int | None = Field(default=None, gt=0)
    output_tokens_per_minute: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)


class ModelConfig(_Strict):
    """One model of a tier. Prices are US dollars per million tokens."""

    name: str = Field(min_length=1, max_length=100)
    provider: str = Field(min_length=1)
    model_id: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = None
    input_cost_per_million: float = Field(default=0.0, ge=0)
    output_cost_per_million: float = Field(default=0.0, ge=0)
    # The seed's single price, kept for old files: used for both directions when set.
    cost_per_1k_tokens: float | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_tokens: int = Field(default=512, gt=0, le=200_000)
    temperature: float = Field(default=0.2, ge=0, le=2)
    context_window: int = Field(default=8192, gt=0)
    supports_json: bool = True
    enabled: bool = True
    limits: ModelLimits = ModelLimits()
    options: dict[str, Any] = Field(default_factory=dict)
    # Prices of the provider's Batch API (OpenAI Batch, Anthropic Message Batches), US dollars
    # per million tokens; None: half the model's price (both providers' documented discount).
    batch_input_cost_per_million: float | None = Field(default=None, ge=0)
    batch_output_cost_per_million: float | None = Field(default=None, ge=0)

    @field_validator("options")
    @classmethod
    def _extra_buffers(cls, options: dict[str, Any]) -> dict[str, Any]:
        value = options.get("extra_buffers", "auto")
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off as a boolean
            return {**options, "extra_buffers": "on" if value else "off"}
        if value not in EXTRA_BUFFERS_CHOICES:
            raise ValueError(f"extra_buffers must be one of {', '.join(EXTRA_BUFFERS_CHOICES)}")
        return options

    @field_validator("api_key_env")
    @classmethod
    def _scrub_key_variable(cls, name: str | None) -> str | None:
        if name:
            remember_key_variable(name)  # its value is a key whatever the variable's name
        return name

    @model_validator(mode="after")
    def _seed_price(self) -> ModelConfig:
        if self.cost_per_1k_tokens is not None:
            per_million = self.cost_per_1k_tokens * 1000
            object.__setattr__(self, "input_cost_per_million", per_million)
            object.__setattr__(self, "output_cost_per_million", per_million)
        return self

    @property
    def key_variable(self) -> str | None:
        """The environment variable this model's API key is read from: ``api_key_env``, else
        the provider's default (:data:`DEFAULT_KEY_VARIABLES`); None when it needs no key."""
        return self.api_key_env or DEFAULT_KEY_VARIABLES.get(self.provider)

    def price(self, input_tokens: int, output_tokens: int) -> float:
        """Cost in US dollars of the given usage on this model."""
        return (
            input_tokens * self.input_cost_per_million
            + output_tokens * self.output_cost_per_million
        ) / 1_000_000

    def at_batch_price(self) -> ModelConfig:
        """This model priced as its provider's Batch API charges (see the ``batch_*`` prices):
        the same model, so :meth:`price` of the copy is the batch price."""
        batch_in = self.batch_input_cost_per_million
        batch_out = self.batch_output_cost_per_million
        return self.model_copy(
            update={
                "input_cost_per_million": (
                    self.input_cost_per_million * BATCH_DISCOUNT if batch_in is None else batch_in
                ),
                "output_cost_per_million": (
                    self.output_cost_per_million * BATCH_DISCOUNT
                    if batch_out is None
                    else batch_out
                ),
                "cost_per_1k_tokens": None,
            }
        )


class TierConfig(_Strict):
    """A tier's models. ``balance: order`` (the default) takes the first servable model in the
    file's order (a preference list). ``balance: free_capacity`` treats the models as nodes
    serving the same weights (one entry per vLLM server, each with ``limits.max_concurrency``
    set to its capacity, e.g. its ``max_num_seqs``): each call goes to the node with the largest
    share of its capacity free, counted fleet-wide in Redis (:mod:`workers.balance`)."""

    models: list[ModelConfig] = Field(default_factory=list)
    balance: Literal["order", "free_capacity"] = "order"

    @model_validator(mode="after")
    def _capacity_known(self) -> TierConfig:
        if self.balance == "free_capacity":
            uncapped = [m.name for m in self.models if m.limits.max_concurrency is None]
            if uncapped:
                raise ValueError(
                    "balance: free_capacity needs limits.max_concurrency (the node's capacity) "
                    f"on every model; missing on {uncapped}"
                )
        return self


AnswerKind = Literal["json", "label", "number", "code", "text"]
VerifierName = Literal["shape", "checks", "consistency", "judge", "learned"]
# What can fail an answer hard at the chain's last tier: a vetoing check's code
# (router/gate/kinds.py VETO_CODES) or a verifier that failed it.
HardFailure = Literal["no_value", "schema", "parse", "arithmetic", "consistency", "judge", "shape"]


def _default_hard_failures() -> list[HardFailure]:
    return ["no_value", "schema", "parse"]


def _default_verifiers() -> list[VerifierName]:
    return ["checks", "shape"]


class ActionRule(_Strict):
    """What the gate expects of one action's answers, and how it judges them.

    ``answer`` is the answer's kind (default: ``json`` when JSON is expected, ``code`` when code
    is, else ``text``); ``labels`` the allowed labels of a ``label`` answer (or of a ``json``
    answer's required fields). ``verifiers`` are composed in order (default: the kind's
    ``checks``, then the seed's ``shape`` score); a verifier that fails vetoes the answer.
    ``consistency_samples`` extra samples are drawn for ``consistency``; ``judge_tier`` names
    the tier whose model ``judge`` asks. Thresholds: ``target_quality`` (the share of the next
    tier's accuracy to keep) or ``max_escalation`` (the share of jobs allowed to escalate)
    calibrate the score threshold from the labels once ``min_labels`` exist; until then the
    routing's ``quality_threshold`` holds. ``audit_share`` of passed answers is re-run on the
    next tier of the chain that has a model, to make labels, until the action's audits cost
    ``audit_daily_usd`` in a UTC day (null: no ceiling). Every escalation makes a label too.
    ``route_first_below``: once ``min_labels`` labels exist, a job whose prompt gives the first
    tier a learned chance of passing below this goes straight to the next tier (null: never).
    """

    answer: AnswerKind | None = None
    labels: list[str] = Field(default_factory=list)
    expects_json: bool = False
    expects_code: bool = False
    required_fields: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    min_length: int | None = Field(default=None, ge=0)
    verifiers: list[VerifierName] = Field(default_factory=_default_verifiers, min_length=1)
    consistency_samples: int = Field(default=2, ge=1, le=10)
    judge_tier: Tier | None = None
    target_quality: float | None = Field(default=None, gt=0, le=1)
    max_escalation: float | None = Field(default=None, ge=0, le=1)
    min_labels: int = Field(default=30, ge=2)
    audit_share: float = Field(default=0.0, ge=0, le=1)
    audit_daily_usd: float | None = Field(default=None, ge=0)
    route_first_below: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _coherent(self) -> ActionRule:
        if self.answer == "label" and not self.labels:
            raise ValueError("answer: label needs labels: [...]")
        if self.target_quality is not None and self.max_escalation is not None:
            raise ValueError("set target_quality or max_escalation, not both")
        if "judge" in self.verifiers and self.judge_tier is None:
            raise ValueError("verifiers: judge needs judge_tier")
        return self


class RoutingConfig(_Strict):
    prefer_local: bool = True
    quality_threshold: float = Field(default=0.7, ge=0, le=1)
    max_fallback_attempts: int = Field(default=2, ge=0, le=10)
    max_retries_per_tier: int = Field(default=2, ge=0, le=20)
    # Answers served from the cache (``caching:`` tunes it; workers/cache.py). Off by default.
    enable_caching: bool = False
    self_critique: bool = True
    default_mode: Mode = Mode.AUTO
    # Automatic mode: in auto, switch to cloud once no local model was available this long
    # (seconds), and back to auto when one is (workers/automode.py); null: never switch.
    auto_cloud_after_s: float | None = Field(default=120.0, gt=0)
    default_complexity: Literal["simple", "moderate", "complex"] = "moderate"
    # The API model that prices each job's API-only baseline; None: the first enabled model of
    # api_fallback (a file in the seed's schema names none).
    baseline_model: str | None = None
    action_tier_overrides: dict[str, Tier] = Field(default_factory=dict)
    actions: dict[str, ActionRule] = Field(default_factory=dict)
    # An answer of the chain's last tier that the gate rejected is still returned (degraded,
    # with the gate's reasons) unless one of these failed it: check codes (no_value, schema,
    # parse, arithmetic) or verifier names (consistency, judge, shape). Below the threshold
    # alone is never a hard failure there: no tier is left to do better.
    final_tier_hard_failures: list[HardFailure] = Field(default_factory=_default_hard_failures)


class InputLimits(_Strict):
    """Sizes ``submit_job`` accepts: characters (prompt), bytes of JSON (context, metadata)."""

    max_prompt_chars: int = Field(default=200_000, gt=0)
    max_context_bytes: int = Field(default=256_000, gt=0)
    max_metadata_bytes: int = Field(default=16_000, gt=0)


class ActionCaching(_Strict):
    """One action's caching: ``enabled: false`` turns it off for the action; ``semantic`` and
    ``ttl_s`` (seconds) override the section's values (null: the section's)."""

    enabled: bool = True
    semantic: bool | None = None
    ttl_s: int | None = Field(default=None, gt=0)


class CachingConfig(_Strict):
    """How answers are cached once ``routing.enable_caching`` is true (see :mod:`workers.cache`).

    ``ttl_s``: how long an answer is served again, in seconds. ``semantic``: also serve the
    answer of a paraphrase, when the cosine similarity of the two prompts' embeddings
    (all-MiniLM-L6-v2) is at least ``semantic_threshold``, among answers to the same action
    and context. ``max_entries``: the most answers kept for semantic search per (daemon,
    action, context), the oldest evicted first. ``share_across_daemons``: one cache for every
    daemon (default: each daemon, ``metadata.daemon``, has its own, and jobs with no daemon
    share one of their own). ``actions``: per-action overrides.
    """

    ttl_s: int = Field(default=86_400, gt=0)
    semantic: bool = True
    semantic_threshold: float = Field(default=0.92, ge=0.5, le=1.0)
    max_entries: int = Field(default=1000, gt=0, le=100_000)
    share_across_daemons: bool = False
    actions: dict[str, ActionCaching] = Field(default_factory=dict)

    def for_action(self, action: str) -> ActionCaching:
        """The action's caching with the section's defaults filled in."""
        rule = self.actions.get(action, ActionCaching())
        return ActionCaching(
            enabled=rule.enabled,
            semantic=self.semantic if rule.semantic is None else rule.semantic,
            ttl_s=rule.ttl_s or self.ttl_s,
        )


class DaemonBudget(_Strict):
    """A daemon's spend ceilings in US dollars per UTC day and month (null: no ceiling)."""

    daily_usd: float | None = Field(default=None, ge=0)
    monthly_usd: float | None = Field(default=None, ge=0)

    def reached(self, day_usd: float, month_usd: float) -> bool:
        """Whether no paid call fits any more: a ceiling is already reached by the spend so far
        (every paid call's estimate is above 0, so a reservation would be refused)."""
        return (self.daily_usd is not None and day_usd >= self.daily_usd) or (
            self.monthly_usd is not None and month_usd >= self.monthly_usd
        )


class DaemonShare(_Strict):
    """A daemon's share of a contended tier (``router/fairshare.py``): ``weight`` (relative to
    other daemons with work waiting; 1 by default) and ``max_in_flight`` (its attempts running
    at once on each tier; null: no cap). Idle capacity is never withheld by a weight."""

    weight: float = Field(default=1.0, gt=0, le=1000)
    max_in_flight: int | None = Field(default=None, gt=0)


# The providers' Batch APIs answer within a fixed window: OpenAI's ``completion_window`` accepts
# only "24h", Anthropic's Message Batches end after 24 hours. Nothing in the config can change it.
PROVIDER_BATCH_WINDOW_HOURS = 24.0


class ProviderBatchConfig(_Strict):
    """The providers' Batch APIs for the API tier (:mod:`workers.provider_batch`).

    A batch run may send its API-tier calls through OpenAI's Batch API or Anthropic's Message
    Batches at their batch price, answered within the providers' fixed window
    (:data:`PROVIDER_BATCH_WINDOW_HOURS`, 24 h): when submitted with a deadline of at least
    ``min_deadline_hours`` (at least the window: a shorter deadline would let the job expire
    while the provider still holds its request; ``tierflow batch run --deadline 24h``), or,
    with ``default: true``, every batch whose deadline allows it. Requests wait up to
    ``collect_s`` seconds to be grouped per (provider, model, base URL), at most
    ``max_requests`` per provider batch; an open provider batch is polled every ``poll_s``.

    ``window_hours`` is refused: it never set the providers' window, only how long the fleet
    held a deferred attempt, and a value under 24 let that hold lapse while the provider still
    had the request.
    """

    default: bool = False
    min_deadline_hours: float = Field(default=PROVIDER_BATCH_WINDOW_HOURS, gt=0)
    collect_s: float = Field(default=60.0, ge=0)
    max_requests: int = Field(default=10_000, gt=0, le=50_000)
    poll_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_window_hours(cls, data: Any) -> Any:
        if isinstance(data, dict) and "window_hours" in data:
            raise ValueError(
                "provider_batches.window_hours is not a setting: the providers' batch window is "
                f"fixed at {PROVIDER_BATCH_WINDOW_HOURS:g}h (OpenAI's completion_window \"24h\", "
                "Anthropic's 24 hours); remove it"
            )
        return data

    @field_validator("min_deadline_hours")
    @classmethod
    def _deadline_covers_the_window(cls, hours: float) -> float:
        if hours < PROVIDER_BATCH_WINDOW_HOURS:
            raise ValueError(
                f"provider_batches.min_deadline_hours must be at least the providers' fixed "
                f"{PROVIDER_BATCH_WINDOW_HOURS:g}h window (a job would expire while the provider "
                f"still holds its request), got {hours:g}"
            )
        return hours


class LLMConfig(_Strict):
    tiers: dict[Tier, TierConfig]
    routing: RoutingConfig = RoutingConfig()
    inputs: InputLimits = InputLimits()
    provider_batches: ProviderBatchConfig = ProviderBatchConfig()
    # Per daemon (the gateway key's daemon, ``metadata.daemon`` of a job): see workers/budget.py
    # (``tierflow budget set`` stores ceilings that take precedence over these).
    budgets: dict[str, DaemonBudget] = Field(default_factory=dict)
    # Per daemon: its weight and cap on each contended tier (router/fairshare.py).
    daemons: dict[str, DaemonShare] = Field(default_factory=dict)
    # false: no admission, every attempt straight to its tier's queue (first in, first out
    # within a priority: the behaviour before fair shares); daemons' weights and caps unused.
    fair_share: bool = True
    caching: CachingConfig = CachingConfig()

    @field_validator("daemons")
    @classmethod
    def _daemon_names(cls, daemons: dict[str, DaemonShare]) -> dict[str, DaemonShare]:
        bad = [n for n in daemons if not n or len(n) > 64 or n != n.strip()]
        if bad:
            raise ValueError(f"daemons: names must be 1-64 characters, no edge spaces: {bad}")
        return daemons

    @model_validator(mode="after")
    def _shares_used(self) -> LLMConfig:
        if not self.fair_share and self.daemons:
            raise ValueError("daemons: weights and caps need fair_share: true")
        return self

    @field_validator("tiers")
    @classmethod
    def _all_tiers(cls, tiers: dict[Tier, TierConfig]) -> dict[Tier, TierConfig]:
        names = [m.name for t in tiers.values() for m in t.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique across tiers, repeated: {dupes}")
        return tiers

    @model_validator(mode="after")
    def _cross_references(self) -> LLMConfig:
        """Every name the routing section uses points at something that can serve."""
        routing = self.routing
        if routing.baseline_model is not None:
            model = self._named(routing.baseline_model)
            if model is None:
                raise ValueError(
                    f"routing.baseline_model: no model named {routing.baseline_model!r} "
                    f"(known: {', '.join(sorted(m.name for m in self._all_models()))})"
                )
        for action, tier in routing.action_tier_overrides.items():
            if not self.tier_models(tier):
                raise ValueError(
                    f"routing.action_tier_overrides.{action}: tier {tier.value} has no "
                    "enabled model"
                )
        if not any(self.tier_models(t) for t in self.tiers):
            raise ValueError("tiers: no enabled model in any tier")
        return self

    def _all_models(self) -> list[ModelConfig]:
        return [m for tier in self.tiers.values() for m in tier.models]

    def _named(self, name: str) -> ModelConfig | None:
        return next((m for m in self._all_models() if m.name == name), None)

    def tier_balance(self, tier: Tier | str) -> str:
        """How ``tier`` spreads calls over its models: ``order`` or ``free_capacity``."""
        cfg = self.tiers.get(Tier(tier))
        return cfg.balance if cfg else "order"

    def tier_models(self, tier: Tier | str) -> list[ModelConfig]:
        """Enabled models of a tier, in the order of the file (first is preferred)."""
        cfg = self.tiers.get(Tier(tier))
        return [m for m in cfg.models if m.enabled] if cfg else []

    def model(self, name: str) -> ModelConfig:
        found = self._named(name)
        if found is None:
            raise ConfigError(f"no model named {name!r} in the configuration")
        return found

    def baseline(self) -> ModelConfig | None:
        """The API model that prices each job's API-only baseline cost: ``routing.baseline_model``
        (checked at load), else the first enabled ``api_fallback`` model; None when there is
        none (a local-only fleet: its baseline cost is 0)."""
        if self.routing.baseline_model is not None:
            return self.model(self.routing.baseline_model)
        return next(iter(self.tier_models(Tier.API_FALLBACK)), None)


def expand_env(value: Any) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            found = os.environ.get(var)
            if found is None or found == "":
                if default is None:
                    raise ConfigError(f"environment variable {var} is referenced but not set")
                return default
            return found

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def parse_config(raw: Any, source: str = "llm_config.yaml") -> LLMConfig:
    """Validate a parsed YAML tree; raise ConfigError naming the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with 'tiers' and 'routing'")
    try:
        return LLMConfig.model_validate(expand_env(raw))
    except ValidationError as exc:
        problems = describe_validation_error(exc, empty="(top level)")
        raise ConfigError(f"{source}: invalid configuration: {problems}") from None


def load_config(path: str | Path | None) -> LLMConfig:
    """Load ``path``, or the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("tierflow.core").joinpath("default_llm_config.yaml").read_text()
        return parse_config(yaml.safe_load(text), "default_llm_config.yaml")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read TIERFLOW_CONFIG={p}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(raw, str(p))
