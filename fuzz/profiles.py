"""Settings profiles: how long each Hypothesis chunk runs and how big cases may get."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from fuzz.strategies import Limits


class ProfileError(ValueError):
    """A profile name or file is wrong; the message says which and why."""


@dataclass(frozen=True)
class Profile:
    name: str
    chunk_examples: int        # examples per Hypothesis run before a new seed is taken
    cuda: Limits               # case size limits on a GPU
    cpu: Limits                # ... and on the CPU (golden, the Triton interpreter)
    check_determinism: bool = True

    def limits(self, device: str) -> Limits:
        return self.cuda if device == "cuda" else self.cpu


PROFILES = {
    "dev": Profile("dev", 50, Limits(1 << 22, 8192, 8192), Limits(1 << 14, 256, 512)),
    "ci": Profile("ci", 25, Limits(1 << 20, 4096, 4096), Limits(1 << 12, 64, 256)),
    "nightly": Profile("nightly", 200, Limits(1 << 26, 65536, 16384), Limits(1 << 16, 1024, 2048)),
    # cases past 32-bit offsets and grid limits (fuzz/geometry.py), made and judged in token
    # chunks (fuzz/chunks.py). GPU only: on the CPU it is the nightly profile. (Each Hypothesis
    # run starts with its simplest case, the first listed: long runs repeat it less.)
    "large": Profile("large", 25, Limits((1 << 31) + (1 << 27), 1 << 23, 1 << 16, large=True),
                     Limits(1 << 16, 1024, 2048)),
}


def get_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file with the same fields."""
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        raise ProfileError(f"profile {name_or_path!r}: not one of {sorted(PROFILES)} and not a YAML file")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProfileError(f"{path}: a profile must be a mapping")
    base = PROFILES[doc.pop("base", "dev")] if doc.get("base", "dev") in PROFILES else None
    if base is None:
        raise ProfileError(f"{path}: base: must be one of {sorted(PROFILES)}")
    allowed = {"chunk_examples", "check_determinism", "cuda", "cpu"}
    for key in doc:
        if key not in allowed:
            raise ProfileError(f"{path}: {key}: unknown key (expected base or one of {sorted(allowed)})")
    values = {"name": str(path), "chunk_examples": base.chunk_examples, "cuda": base.cuda, "cpu": base.cpu,
              "check_determinism": base.check_determinism}
    if "chunk_examples" in doc:
        v = doc["chunk_examples"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ProfileError(f"{path}: chunk_examples: must be a positive integer, got {v!r}")
        values["chunk_examples"] = v
    if "check_determinism" in doc:
        if not isinstance(doc["check_determinism"], bool):
            raise ProfileError(f"{path}: check_determinism: must be true or false")
        values["check_determinism"] = doc["check_determinism"]
    for dev in ("cuda", "cpu"):
        if dev in doc:
            d = doc[dev]
            names = {f.name for f in fields(Limits)}
            if not isinstance(d, dict) or set(d) - names:
                raise ProfileError(f"{path}: {dev}: must be a mapping with keys {sorted(names)}")
            for k, v in d.items():
                if k == "large":
                    if not isinstance(v, bool):
                        raise ProfileError(f"{path}: {dev}.large: must be true or false, got {v!r}")
                elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ProfileError(f"{path}: {dev}.{k}: must be a positive integer, got {v!r}")
            values[dev] = Limits(**{**values[dev].__dict__, **d})
    return Profile(**values)
