"""The registry of backends: what a backend is, what it declares, and how it is found.

A backend is any object with
  name: str
  capabilities: Capabilities
  backward(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)
      -> (dx, dphi, dalpha, dbias, dgamma)
and optionally
  forward(x, phi, alpha, bias, gamma=None) -> (h_in, h_post, h_res, inv_rms, h_mix, h_pre)
  unavailable_reason() -> str | None     (why it cannot run here, e.g. "no CUDA device")
  stats() -> dict                        (counters of this process, e.g. kernel compiles, for
                                          the run summary)
  warm_up() -> dict | None               (prepare, before a run's time budget starts, what its
                                          cases will need, e.g. compile every kernel they can
                                          reach; the statistics returned go into the summary)

Backends come from three places, in this order: the built-ins of this package, the
entry-point group ``mhc_fuzz.backends`` (value ``module:attr``, an instance or a
zero-argument factory), and ``module:attr`` targets given at run time (``--plugin``).
A source that fails to import or breaks the contract is recorded in ``Registry.errors``
with a message naming it; the other backends still load.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
from dataclasses import dataclass, field
from importlib import metadata

import torch

ENTRY_POINT_GROUP = "mhc_fuzz.backends"
BUILTIN_TARGETS = (
    "impls.golden_backend:backend",
    "impls.triton_mhc:backend",
    "impls.tilelang_mhc:backend",
)

from impls.schema import (BACKWARD_ARGS, BACKWARD_OUTPUTS, DTYPE_NAMES, DTYPES, FORWARD_ARGS,  # noqa: E402,F401
                          FORWARD_OUTPUTS, LAYOUTS, SMALL_ARGS, X_DTYPES, tensor_layout)
# Input precision of matrix products a backend may declare (rounding of the GEMM operands).
GEMM_PRECISIONS = ("fp32", "tf32x3", "tf32", "bf16", "fp16")
# What dgamma is for a call without gamma (docs/SPEC.md): "grad", the gradient with respect to
# the implicit all-ones gamma (the SPEC's convention, golden's); "zeros", exactly zero; "none", None.
DGAMMA_WITHOUT_GAMMA = ("grad", "zeros", "none")
DEVICES = ("cpu", "cuda")


class UnsupportedInputError(ValueError):
    """Raised by a backend for inputs outside its declared capabilities."""


class BackendContractError(TypeError):
    """An object registered as a backend does not satisfy the contract above."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend promises to compute correctly. The fuzzer generates only inputs
    inside these limits and checks that inputs outside them are refused."""
    devices: tuple[str, ...] = DEVICES
    x_dtypes: tuple[str, ...] = X_DTYPES
    n_values: tuple[int, ...] | None = None      # None: every n >= 1
    d_multiple: int = 1                           # D must be a multiple of this
    d_max: int | None = None
    max_tokens: int | None = None                 # largest T = B*S
    deterministic: bool = False                   # bitwise-identical results run to run
    # operand precision of its matrix products: one for all outputs, or per output as a mapping
    # {"default": p, "<output>": p, "<output>:<x dtype>": p} (most specific key wins)
    gemm_precision: str | dict = "fp32"
    has_forward: bool = False
    dgamma_without_gamma: str = "grad"            # one of DGAMMA_WITHOUT_GAMMA
    notes: str = ""
    # What the other inputs may be. The fuzzer draws inside these declarations and checks that
    # what lies outside them is refused (for the inputs named here, and gamma=None if required).
    gamma_required: bool = False                  # gamma=None must be refused
    # {input: dtypes it accepts} for inputs of SMALL_ARGS; each must include the SPEC's "fp32".
    # An input not named is fp32 only, and not probed with other dtypes.
    input_dtypes: dict = field(default_factory=dict)
    # {input: layouts it accepts} for any of the twelve arguments (names: impls.schema.LAYOUTS),
    # each including "contiguous". An input not named accepts every layout.
    input_layouts: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if not self.devices or any(d not in DEVICES for d in self.devices):
            problems.append(f"devices must be a non-empty subset of {DEVICES}, got {self.devices!r}")
        if not self.x_dtypes or any(d not in DTYPES for d in self.x_dtypes):
            problems.append(f"x_dtypes must be a non-empty subset of {tuple(DTYPES)}, got {self.x_dtypes!r}")
        if self.n_values is not None and (not self.n_values or any(
                not isinstance(v, int) or v < 1 for v in self.n_values)):
            problems.append(f"n_values must be None or positive ints, got {self.n_values!r}")
        if not isinstance(self.d_multiple, int) or self.d_multiple < 1:
            problems.append(f"d_multiple must be a positive int, got {self.d_multiple!r}")
        for key in ("d_max", "max_tokens"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                problems.append(f"{key} must be None or a positive int, got {v!r}")
        problems += _gemm_precision_problems(self.gemm_precision)
        problems += _input_problems(self.input_dtypes, SMALL_ARGS, tuple(DTYPES), "fp32", "input_dtypes")
        problems += _input_problems(self.input_layouts, BACKWARD_ARGS, LAYOUTS, "contiguous", "input_layouts")
        if self.dgamma_without_gamma not in DGAMMA_WITHOUT_GAMMA:
            problems.append(f"dgamma_without_gamma must be one of {DGAMMA_WITHOUT_GAMMA}, "
                            f"got {self.dgamma_without_gamma!r}")
        if problems:
            raise BackendContractError("invalid capabilities: " + "; ".join(problems))

    def refusal(self, *, device: str, x_dtype: str, n: int, D: int, T: int, dtypes: dict | None = None,
                layouts: dict | None = None, gamma: bool = True) -> str | None:
        """Why an input of this kind is outside the declared limits, or None if inside.
        dtypes: {input: dtype name} of the inputs other than x; layouts: {input: its layout
        names (impls.schema.layout_of)}; gamma: whether gamma is given."""
        if device not in self.devices:
            return f"device {device} not in {self.devices}"
        if x_dtype not in self.x_dtypes:
            return f"x dtype {x_dtype} not in {self.x_dtypes}"
        if self.n_values is not None and n not in self.n_values:
            return f"n={n} not in {self.n_values}"
        if D % self.d_multiple:
            return f"D={D} is not a multiple of {self.d_multiple}"
        if self.d_max is not None and D > self.d_max:
            return f"D={D} > {self.d_max}"
        if self.max_tokens is not None and T > self.max_tokens:
            return f"T={T} > {self.max_tokens}"
        if not gamma and self.gamma_required:
            return "gamma=None, but gamma is declared required"
        for name, dt in (dtypes or {}).items():
            allowed = self.dtypes_of(name, x_dtype)
            if dt not in allowed:
                return f"{name} dtype {dt} not in {allowed}"
        for name, found in (layouts or {}).items():
            allowed = self.layouts_of(name)
            bad = [lay for lay in found if lay not in allowed]
            if bad:
                return f"{name} layout {bad[0]} not in {allowed}"
        return None

    def dtypes_of(self, name: str, x_dtype: str) -> tuple:
        """The dtypes input `name` may have: x's are x_dtypes, dh_in's is x's own, the SMALL_ARGS'
        are declared (fp32 when not), the saved activations' fp32."""
        if name == "x":
            return self.x_dtypes
        if name == "dh_in":
            return (x_dtype,)
        return tuple(self.input_dtypes.get(name, ("fp32",)))

    def layouts_of(self, name: str) -> tuple:
        """The layouts input `name` may have (every one when it is not named in input_layouts)."""
        return tuple(self.input_layouts.get(name, LAYOUTS))

    def gemm_precision_of(self, output: str, x_dtype: str) -> str:
        """The declared GEMM operand precision on the path into `output` for x of `x_dtype`."""
        p = self.gemm_precision
        if isinstance(p, str):
            return p
        return p.get(f"{output}:{x_dtype}", p.get(output, p.get("default", "fp32")))

    def gemm_summary(self) -> str:
        """One line for tables: "fp32", or "dx:bf16=tf32, dx:fp16=tf32; else fp32"."""
        p = self.gemm_precision
        if isinstance(p, str):
            return p
        rest = ", ".join(f"{k}={v}" for k, v in p.items() if k != "default")
        return f"{rest}; else {p.get('default', 'fp32')}" if rest else p.get("default", "fp32")

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def _gemm_precision_problems(p) -> list:
    if isinstance(p, str):
        return [] if p in GEMM_PRECISIONS else [f"gemm_precision must be one of {GEMM_PRECISIONS}, got {p!r}"]
    if not isinstance(p, dict):
        return [f"gemm_precision must be a string or a dict, got {type(p).__name__}"]
    problems = []
    outputs = BACKWARD_OUTPUTS + FORWARD_OUTPUTS
    for key, value in p.items():
        out, _, dt = str(key).partition(":")
        if key != "default" and (out not in outputs or (dt and dt not in DTYPES)):
            problems.append(f"gemm_precision key {key!r} is not 'default', an output name {outputs} "
                            f"or '<output>:<x dtype>' with a dtype of {tuple(DTYPES)}")
        if value not in GEMM_PRECISIONS:
            problems.append(f"gemm_precision[{key!r}] must be one of {GEMM_PRECISIONS}, got {value!r}")
    return problems


def _input_problems(declared, names, values, required, key) -> list:
    if not isinstance(declared, dict):
        return [f"{key} must be a dict {{input: tuple of names}}, got {type(declared).__name__}"]
    problems = []
    for name, accepted in declared.items():
        if name not in names:
            problems.append(f"{key}: {name!r} is not one of {names}")
        elif isinstance(accepted, str) or not all(v in values for v in accepted) or required not in accepted:
            problems.append(f"{key}[{name!r}] must be a tuple of {values} that includes {required!r}, got {accepted!r}")
    return problems


def check_inputs(capabilities: Capabilities, backend_name: str, x: torch.Tensor, *others) -> None:
    """Helper for backends: raise UnsupportedInputError for inputs outside the capabilities.
    check_inputs(caps, name, x) checks x (device, dtype, shape); given all the arguments of the
    call, backward's twelve or forward's five in their order, it also checks every input's dtype
    and layout against input_dtypes/input_layouts, and gamma=None against gamma_required."""
    if x.dim() != 4:
        raise UnsupportedInputError(f"{backend_name}: x must be [B,S,n,D], got shape {tuple(x.shape)}")
    B, S, n, D = x.shape
    names = {11: BACKWARD_ARGS, 4: FORWARD_ARGS, 0: ("x",)}.get(len(others))
    if names is None:
        raise TypeError(f"check_inputs takes x alone or all {len(BACKWARD_ARGS)} backward (or "
                        f"{len(FORWARD_ARGS)} forward) arguments, got {1 + len(others)}")
    given = dict(zip(names, (x, *others)))
    tensors = {k: t for k, t in given.items() if isinstance(t, torch.Tensor)}
    reason = capabilities.refusal(
        device=x.device.type, x_dtype=DTYPE_NAMES.get(x.dtype, str(x.dtype)), n=n, D=D, T=B * S,
        dtypes={k: DTYPE_NAMES.get(t.dtype, str(t.dtype)) for k, t in tensors.items() if k != "x"},
        layouts={k: lay for k, t in tensors.items() if (lay := tensor_layout(t)) != ("contiguous",)},
        gamma=given.get("gamma", x) is not None)
    if reason:
        raise UnsupportedInputError(f"{backend_name}: unsupported input: {reason}")


def validate_backend(obj, source: str):
    """Return obj if it satisfies the contract, else raise BackendContractError naming source."""
    def fail(why):
        raise BackendContractError(f"backend from {source}: {why}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name or not name.replace("-", "_").replace(".", "_").isidentifier():
        fail(f"'name' must be a non-empty identifier-like string, got {name!r}")
    if not isinstance(getattr(obj, "capabilities", None), Capabilities):
        fail("'capabilities' must be an impls.registry.Capabilities")
    backward = getattr(obj, "backward", None)
    if not callable(backward):
        fail("'backward' must be callable")
    try:
        params = inspect.signature(backward).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 12:
            fail(f"'backward' must take the 12 arguments of the contract, takes {len(positional)}")
    if obj.capabilities.has_forward and not callable(getattr(obj, "forward", None)):
        fail("capabilities.has_forward is set but 'forward' is not callable")
    if hasattr(obj, "warm_up") and not callable(obj.warm_up):
        fail("'warm_up' must be callable")
    return obj


def unavailable_reason(backend) -> str | None:
    """Why the backend cannot run on this machine (None when it can)."""
    probe = getattr(backend, "unavailable_reason", None)
    if probe is None:
        return None
    try:
        return probe()
    except Exception as exc:  # a broken probe must not hide the other backends
        return f"availability check raised {type(exc).__name__}: {exc}"


def warm_up(backend) -> dict | None:
    """Run the backend's optional warm_up(): None when it has none, else {"seconds": wall
    time, **its statistics}, or {"seconds", "error"} when it raised (the run goes on: the
    cases then pay for what the warm-up would have prepared, and fail on what it could not)."""
    hook = getattr(backend, "warm_up", None)
    if hook is None:
        return None
    t0 = time.perf_counter()
    try:
        stats = hook() or {}
        if not isinstance(stats, dict):
            stats = {"result": repr(stats)[:100]}
    except Exception as exc:
        stats = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    return {"seconds": round(time.perf_counter() - t0, 2), **stats}


def resolve_target(target: str, source: str):
    """Import 'module:attr' and return the backend (calling a factory if needed)."""
    return resolve_loaded(load_target(target, source), source)


def load_target(target: str, source: str):
    """Import 'module:attr' and return the object it names (an instance or a factory)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BackendContractError(f"{source}: plugin target must look like 'module:attr', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise BackendContractError(f"{source}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise BackendContractError(f"{source}: {module_name!r} has no attribute {attr!r}") from exc
    return obj


@dataclass
class Registry:
    backends: dict = field(default_factory=dict)   # name -> backend
    sources: dict = field(default_factory=dict)    # name -> where it came from
    errors: dict = field(default_factory=dict)     # source -> message
    loaded: dict = field(default_factory=dict)     # source -> name of the backend it gave
    origins: dict = field(default_factory=dict)    # name -> the object its source named

    def register(self, backend, source: str = "direct", origin=None):
        """Add a backend. The same object (or the same factory) named again by a second
        source, e.g. an installed package's entry point and `--plugin` with the same target,
        is one backend, registered once; another backend with a taken name is an error."""
        validate_backend(backend, source)
        origin = backend if origin is None else origin
        name = backend.name
        if name in self.backends:
            if self.origins[name] is not origin and self.backends[name] is not backend:
                raise BackendContractError(
                    f"backend from {source}: name {name!r} already registered by {self.sources[name]}")
            self.loaded[source] = name
            return self.backends[name]
        self.backends[name] = backend
        self.sources[name] = source
        self.origins[name] = origin
        self.loaded[source] = name
        return backend

    def _add(self, target: str, source: str, loader=None):
        try:
            raw = loader() if loader else load_target(target, source)
            self.register(resolve_loaded(raw, source), source, origin=raw)
        except Exception as exc:
            self.errors[source] = str(exc) if isinstance(exc, BackendContractError) else \
                f"{source}: {type(exc).__name__}: {exc}"

    def load_builtins(self):
        for target in BUILTIN_TARGETS:
            self._add(target, f"builtin {target}")
        return self

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP):
        for ep in metadata.entry_points(group=group):
            source = f"entry point {ep.name} = {ep.value} (group {group})"
            self._add(ep.value, source, loader=ep.load)
        return self

    def load_plugin(self, target: str):
        self._add(target, f"--plugin {target}")
        return self

    def get(self, name: str):
        if name not in self.backends:
            known = ", ".join(sorted(self.backends)) or "none"
            raise KeyError(f"no backend named {name!r} (registered: {known})")
        return self.backends[name]

    def names(self):
        return list(self.backends)


def resolve_loaded(obj, source: str):
    """An instance is used as is; a zero-argument factory (a class or function) is called."""
    if not hasattr(obj, "backward") and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise BackendContractError(f"{source}: factory raised {type(exc).__name__}: {exc}") from exc
    return validate_backend(obj, source)


def default_registry(plugins=(), entry_points: bool = True) -> Registry:
    """Built-ins, then entry points, then run-time plugins."""
    reg = Registry().load_builtins()
    if entry_points:
        reg.load_entry_points()
    for target in plugins:
        reg.load_plugin(target)
    return reg
