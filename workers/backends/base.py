"""The narrow interface every backend implements, and the one registry that finds them.

A backend turns a :class:`CompletionRequest` into a :class:`Completion` with token usage, or
raises an error from :mod:`tierflow.core.errors`. Timing, pricing, limits, persistence and
retries live outside it (in the attempt pipeline). Backends never retry on their own: the SDK
clients they build have ``max_retries=0``, because the fleet retries (cooldown, next model, next
tier) and two retry layers would multiply calls against a provider that is already throttling us.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tierflow.core.config import LLMConfig, ModelConfig
from tierflow.core.errors import ConfigError
from tierflow.core.secrets import scrub


@dataclass(frozen=True)
class CompletionRequest:
    """One call to a model. ``timeout_s`` is the whole call's budget in seconds."""

    prompt: str
    system: str | None = None
    max_tokens: int = 512
    temperature: float = 0.2
    stop: tuple[str, ...] = ()
    json_output: bool = False
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Completion:
    """A model's answer with the usage the provider reported (tokens)."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str
    provider: str
    finish_reason: str | None = None
    fake: bool = False
    fake_wrong: bool | None = None  # the fake backend's record of answering wrong on purpose


@dataclass(frozen=True)
class StreamChunk:
    """The second seed's streaming shape: ``{delta, text, done, provider}``; the last has usage."""

    delta: str
    text: str
    done: bool
    provider: str
    completion: Completion | None = None  # set on the last chunk only

    def as_event(self) -> dict[str, object]:
        event: dict[str, object] = {
            "delta": self.delta,
            "text": self.text,
            "done": self.done,
            "provider": self.provider,
        }
        if self.completion is not None:
            event["usage"] = {
                "input_tokens": self.completion.input_tokens,
                "output_tokens": self.completion.output_tokens,
            }
        return event


@dataclass(frozen=True)
class Availability:
    """Whether a backend can take a call now, and why not: ``reason`` is shown on the dashboard
    and in logs, so it is scrubbed of keys and URL passwords (a ``base_url`` may carry one)."""

    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", scrub(self.reason))


@runtime_checkable
class Backend(Protocol):
    """What the worker holds; it never knows which provider is behind it."""

    provider: str

    def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]: ...

    def availability(self) -> Availability: ...


def stream_by_completing(backend: Backend, request: CompletionRequest) -> Iterator[StreamChunk]:
    """Fallback ``stream`` for backends without native streaming: one chunk carrying everything."""
    completion = backend.complete(request)
    yield StreamChunk(completion.text, completion.text, True, completion.provider, completion)


BackendFactory = Callable[[ModelConfig], Backend]


@dataclass
class Registry:
    """Provider name → factory. Aliases (``vllm``, ``openai``) map to one factory."""

    factories: dict[str, BackendFactory] = field(default_factory=dict)
    known_options: dict[str, frozenset[str]] = field(default_factory=dict)
    validators: dict[str, Callable[[ModelConfig], None]] = field(default_factory=dict)
    _instances: dict[tuple[str, str], Backend] = field(default_factory=dict)

    def register(
        self,
        *names: str,
        options: Iterable[str] | None = None,
        validate: Callable[[ModelConfig], None] | None = None,
    ) -> Callable[[BackendFactory], BackendFactory]:
        """Register a factory under ``names``. ``options`` are the keys of a model's
        ``options:`` the backend reads; any other key is refused at start (None: not checked).
        ``validate`` checks a model's option values at start, raising ValueError saying what
        is wrong (reported as a ConfigError naming the model's field)."""

        def decorate(factory: BackendFactory) -> BackendFactory:
            for name in names:
                self.factories[name] = factory
                if options is not None:
                    self.known_options[name] = frozenset(options)
                if validate is not None:
                    self.validators[name] = validate
            return factory

        return decorate

    def check(self, config: LLMConfig) -> None:
        """Refuse, naming the field, a model whose provider is unknown, whose options the
        backend does not read, or whose option values its validator refuses. Run at every
        start, so a typo fails before the first job."""
        for tier, tier_config in config.tiers.items():
            for i, model in enumerate(tier_config.models):
                where = f"tiers.{tier.value}.models.{i}"
                if model.provider not in self.factories:
                    known = ", ".join(sorted(self.factories))
                    raise ConfigError(
                        f"{where}.provider: unknown provider {model.provider!r} (known: {known})"
                    )
                allowed = self.known_options.get(model.provider)
                unknown = sorted(set(model.options) - allowed) if allowed is not None else []
                if unknown:
                    raise ConfigError(
                        f"{where}.options: {model.provider} does not read {', '.join(unknown)} "
                        f"(it reads: {', '.join(sorted(allowed or ())) or 'no options'})"
                    )
                validate = self.validators.get(model.provider)
                if validate is not None:
                    try:
                        validate(model)
                    except ValueError as exc:
                        raise ConfigError(f"{where}.options: {exc}") from exc

    def backend_for(self, model: ModelConfig) -> Backend:
        """The (cached) backend serving ``model``; ConfigError for an unknown provider."""
        key = (model.name, model.model_dump_json())
        found = self._instances.get(key)
        if found is None:
            factory = self.factories.get(model.provider)
            if factory is None:
                known = ", ".join(sorted(self.factories))
                raise ConfigError(
                    f"model {model.name}: unknown provider {model.provider!r} (known: {known})"
                )
            found = self._instances[key] = factory(model)
        return found

    def clear(self) -> None:
        self._instances.clear()


registry = Registry()
register_backend = registry.register
