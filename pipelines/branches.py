"""Which NanoAOD branches each object needs, and how a missing one is substituted.

Feature extraction (:mod:`pipelines.features`) only ever sees *canonical* branch
names (``Jet_btagDeepC``, ``Muon_dxy``, ...). A :class:`BranchPlan`, resolved once
per input file by :func:`resolve_branches`, says how each canonical branch is
obtained in that file:

* read as is (the normal case);
* renamed or replaced by a constant, by the user (``--branch NAME=SOURCE``,
  ``--branch-map FILE.json``);
* a built-in substitute of the file's NanoAOD generation (:mod:`pipelines.profiles`):
  e.g. ``Jet_btagDeepC`` derived from B and CvB in Run 2, ``Jet_bRegCorr`` from the
  ParticleNet regression in Run 3, ``Jet_btagCMVA`` the constant -1.

Anything else missing is reported in one :class:`~flashsim.errors.InputError`
naming every missing branch and the options that supply them.

Examples
--------
>>> from pipelines.branches import resolve_branches, required_branches
>>> have = set(required_branches("jets")) - {"Jet_btagDeepC"} | {"Jet_btagDeepCvB"}
>>> plan = resolve_branches(have, ["jets"], path="old.root")
>>> [s.branch for s in plan.substitutions]
['Jet_btagDeepC']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import awkward as ak
import numpy as np

from flashsim.errors import InputError
from flashsim.layouts import JET_KIND, JETS, LAYOUTS, MUON_KIND, MUONS, OBJECTS, layout_for
from flashsim.options import FINAL_STATE, GEN_MUONS, GenMuons
from pipelines.profiles import (
    DERIVATIONS,
    GENERATION,
    PROFILES,
    RUN2,
    Profile,
    Source,
    detect_profile,
)

# ---------------------------------------------------------------------------
# What each layout reads. Copied branches fill one layout column each (the layout's
# ``copied`` targets, the kind's conditioning values); the rest are kinematics and
# matching indices of the layout's kind that several features use.
# ---------------------------------------------------------------------------

JET_VALUE_BRANCHES: dict[str, str] = JETS.copied_branches
"""Jet target column -> ``Jet_*`` branch copied for each matched jet (paper layout)."""

GENJET_VALUE_BRANCHES: dict[str, str] = {
    "MGenJet_eta": "GenJet_eta",
    "MGenJet_mass": "GenJet_mass",
    "MGenJet_phi": "GenJet_phi",
    "MGenJet_pt": "GenJet_pt",
    "MGenJet_partonFlavour": "GenJet_partonFlavour",
    "MGenJet_hadronFlavour": "GenJet_hadronFlavour",
}
"""Jet conditioning column -> ``GenJet_*`` branch of the matched GenJet (every jet layout)."""

MUON_VALUE_BRANCHES: dict[str, str] = MUONS.copied_branches
"""Muon target column -> ``Muon_*`` branch copied for each matched muon."""

PILEUP_BRANCHES: dict[str, str] = {c: c for c in MUONS.columns if c.startswith("Pileup_")}
"""Muon conditioning column -> event-level ``Pileup_*`` branch (repeated per muon)."""

JET_KINEMATICS = ("Jet_genJetIdx", "Jet_eta", "Jet_phi", "Jet_pt", "Jet_mass")
MUON_KINEMATICS = ("Muon_genPartIdx", "Muon_eta", "Muon_phi", "Muon_pt")
GENJET_KINEMATICS = ("GenJet_eta", "GenJet_phi", "GenJet_pt", "GenJet_mass")
GENPART_KINEMATICS = ("GenPart_eta", "GenPart_phi", "GenPart_pt", "GenPart_pdgId")


def _jet_gen_branches(gen_muons: GenMuons, generation: bool) -> tuple[str, ...]:
    status = ("GenPart_status",) if gen_muons == FINAL_STATE else ()
    return (*GENJET_VALUE_BRANCHES.values(), *GENPART_KINEMATICS, *status)


def _muon_gen_branches(gen_muons: GenMuons, generation: bool) -> tuple[str, ...]:
    gen = (
        *GENPART_KINEMATICS,
        "GenPart_statusFlags",
        *GENJET_KINEMATICS,
        *PILEUP_BRANCHES.values(),
    )
    # generation simulates the final-state muons (status 1) only
    return (*gen, "GenPart_status") if generation else gen


_KIND_BRANCHES = {
    JET_KIND.name: (JET_KINEMATICS, _jet_gen_branches),
    MUON_KIND.name: (MUON_KINEMATICS, _muon_gen_branches),
}
"""Per kind: the reco kinematics and index it reads, and its generator-level branches
(the conditioning) as a function of ``(gen_muons, generation)``."""


def required_branches(
    obj: str, gen_muons: GenMuons = FINAL_STATE, *, generation: bool = False
) -> tuple[str, ...]:
    """Canonical branches layout ``obj`` (``"jets"``, ``"muons"``, ...) needs, in a fixed order.

    ``generation=True``: only the generator-level (and pileup) branches that the
    conditioning of every gen-level object needs (``flashsim generate``).
    """
    layout = layout_for(obj)
    reco, gen_branches = _KIND_BRANCHES[layout.kind]
    gen = gen_branches(gen_muons, generation)
    return gen if generation else (*reco, *gen, *layout.copied_branches.values())


_VALUE_COLUMNS: dict[str, str] = {
    b: c
    for table in (
        *(layout.copied_branches for layout in LAYOUTS.values()),
        GENJET_VALUE_BRANCHES,
        PILEUP_BRANCHES,
    )
    for c, b in table.items()
}
"""Value branch -> the layout column it fills (the same name in every layout)."""

CONSTANT_ALLOWED = frozenset(
    (*(b for lay in LAYOUTS.values() for b in lay.copied_branches.values()), *PILEUP_BRANCHES)
)
"""Branches a constant may replace (per-object or per-event values, not kinematics or indices)."""

KNOWN_BRANCHES = frozenset(
    b for obj in OBJECTS for g in GEN_MUONS for b in required_branches(obj, g)
)


def column_of(branch: str) -> str | None:
    """The layout column a value branch fills (``Jet_qgl`` -> ``MJet_qgl``), else ``None``."""
    return _VALUE_COLUMNS.get(branch)


def is_target(branch: str) -> bool:
    """True when ``branch`` fills a target (reconstructed) column (of any layout)."""
    col = column_of(branch)
    return any(col in layout.target_columns for layout in LAYOUTS.values())


# ---------------------------------------------------------------------------
# Sources: how one canonical branch is obtained in one file.
# ---------------------------------------------------------------------------


def source_dict(src: Source) -> dict:
    """What the store metadata records of one substitution."""
    return {
        "branch": src.branch,
        "column": column_of(src.branch),
        "origin": src.origin,
        "profile": src.profile,
        "substitute": src.description,
        "reads": list(src.reads),
        "constant": src.constant,
    }


MAPPABLE_BRANCHES = KNOWN_BRANCHES | {r for p in PROFILES for r in p.reads()}
"""Branches a user mapping may name: those prep reads and the inputs of the substitutes."""


# ---------------------------------------------------------------------------
# User mappings (--branch NAME=SOURCE, --branch-map FILE.json)
# ---------------------------------------------------------------------------

_COLUMN_TO_BRANCH = {c: b for b, c in _VALUE_COLUMNS.items()}


def _canonical_key(key: str) -> str:
    if key in MAPPABLE_BRANCHES:
        return key
    if key in _COLUMN_TO_BRANCH:  # a layout column name, e.g. MJet_puId
        return _COLUMN_TO_BRANCH[key]
    raise InputError(
        f"Unknown branch {key!r} in the branch mapping. Map one of the NanoAOD branches "
        f"flashsim reads, e.g. {', '.join(sorted(JET_VALUE_BRANCHES.values())[:4])}, ... "
        "(docs/prep.md lists them all), or a layout column such as MJet_puId."
    )


def _parse_value(key: str, value: object) -> str | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(
            f"The mapping of {key!r} must be a branch name or a number, not {value!r}."
        )
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            if not text:
                raise InputError(f"The mapping of {key!r} is empty.") from None
            return text
    if not math.isfinite(float(value)):
        raise InputError(f"The constant for {key!r} must be finite, not {value!r}.")
    return float(value)


def normalize_branch_map(mapping: Mapping[str, object] | None) -> dict[str, str | float]:
    """Validate a user mapping ``{branch or column: branch name or number}``.

    Keys may be canonical branch names (``Jet_puId``) or layout columns
    (``MJet_puId``); values a branch name of the input file or a constant.
    Constants are only allowed for value branches, not kinematics or indices; a
    per-object branch must come from the same collection (``Jet_*`` from ``Jet_*``).
    """
    out: dict[str, str | float] = {}
    for key, value in (mapping or {}).items():
        branch = _canonical_key(str(key))
        parsed = _parse_value(str(key), value)
        if isinstance(parsed, float) and branch not in CONSTANT_ALLOWED:
            raise InputError(
                f"{branch} cannot be a constant: it is a kinematic or matching branch. "
                "Map it to another branch name instead."
            )
        collection = branch.split("_", 1)[0] + "_"
        if (
            isinstance(parsed, str)
            and collection != "Pileup_"
            and not parsed.startswith(collection)
        ):
            raise InputError(
                f"{branch} can only be mapped to another {collection} branch (the same objects "
                f"in each event), not {parsed!r}; or, for a value branch, to a constant."
            )
        out[branch] = parsed
    return out


def load_branch_map(path: str | os.PathLike) -> dict[str, str | float]:
    """Read a ``--branch-map`` JSON file: an object ``{"Jet_puId": "Jet_puIdDisc", "Jet_qgl": -1}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"Branch map {p} does not exist.") from None
    except (OSError, ValueError) as err:
        raise InputError(
            f"Branch map {p} is not valid JSON ({err}). Write an object such as "
            '{"Jet_puId": "Jet_puIdDisc", "Jet_qgl": -1}.'
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"Branch map {p} must hold a JSON object mapping branch -> source.")
    return normalize_branch_map(data)


def parse_branch_option(text: str) -> tuple[str, str | float]:
    """Parse one ``--branch NAME=SOURCE`` (``Jet_puId=Jet_puIdDisc``, ``Jet_qgl=-1``)."""
    name, sep, source = text.partition("=")
    if not sep or not name.strip():
        raise InputError(
            f"--branch {text!r} is not NAME=SOURCE; write e.g. --branch Jet_puId=Jet_puIdDisc "
            "or --branch Jet_qgl=-1."
        )
    return next(iter(normalize_branch_map({name.strip(): source}).items()))


# ---------------------------------------------------------------------------
# Resolution per file
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchPlan:
    """How every canonical branch of the requested objects is obtained in one file.

    ``profile``: the NanoAOD generation recognised in the file (:mod:`pipelines.profiles`).
    """

    sources: dict[str, Source] = field(default_factory=dict)
    profile: str = RUN2.name

    @property
    def reads(self) -> list[str]:
        """File branches to read, sorted."""
        return sorted({b for s in self.sources.values() for b in s.reads})

    @property
    def substitutions(self) -> list[Source]:
        return [s for s in self.sources.values() if s.is_substitution]

    @property
    def generation_sources(self) -> list[Source]:
        """The generation's own branches read for generation-neutral ones
        (:attr:`pipelines.profiles.Profile.names`)."""
        return [s for s in self.sources.values() if s.origin == GENERATION]


_GEN_MARKERS = ("GenJet_", "GenPart_")


def _missing_message(path: str, missing: Iterable[str], profile: Profile) -> str:
    lines = []
    for b in missing:
        derived = [s for s in profile.substitutes.get(b, ()) if s.derive]
        hint = f" (or {' and '.join(derived[0].reads)} to derive it)" if derived else ""
        lines.append(f"{b}{hint}")
    return f"{path}: {', '.join(lines)}"


class MissingBranches(InputError):
    """Raised with every missing branch of one file; prep merges these across files.

    ``strict_blocked`` maps each branch ``--strict`` refused to its built-in substitute;
    ``hint`` says why so much is missing (a layout of another NanoAOD generation).
    """

    def __init__(
        self,
        path: str,
        missing: list[str],
        strict_blocked: dict[str, str],
        profile: str,
        hint: str = "",
    ) -> None:
        self.path = path
        self.missing = missing
        self.strict_blocked = strict_blocked
        self.profile = profile
        self.hint = hint
        super().__init__(format_missing([self]))

    def __reduce__(
        self,
    ) -> tuple[type[MissingBranches], tuple[str, list[str], dict[str, str], str, str]]:
        # picklable across processes despite the custom __init__
        args = (self.path, self.missing, self.strict_blocked, self.profile, self.hint)
        return (MissingBranches, args)


def _generation_hint(path: str, objects: Iterable[str], profile: Profile) -> str:
    """Why a file lacks a layout's branches: it is not of a generation the layout reads."""
    foreign = [
        lay
        for lay in map(layout_for, objects)
        if lay.generations and profile.name not in lay.generations
    ]
    return "".join(
        f" The {lay.name} layout reads {' and '.join(lay.generations)} NanoAOD, but {path} "
        f"is {profile.title}; prepare it with the paper layouts (--layout jets,muons)."
        for lay in foreign
    )


def _profile_title(name: str) -> str:
    return next(p.title for p in PROFILES if p.name == name)


def format_missing(errors: list[MissingBranches]) -> str:
    """One paragraph naming every missing branch of every file and how to supply them."""
    missing = [e for e in errors if e.missing]
    blocked = [e for e in errors if e.strict_blocked]
    parts = []
    if missing:
        names = sorted({b for e in missing for b in e.missing})
        example = names[0]
        const_ok = [n for n in names if n in CONSTANT_ALLOWED]
        profiles = {p.name: p for p in PROFILES}
        parts.append(
            "Input NanoAOD lacks branches flashsim needs and knows no substitute for: "
            + "; ".join(_missing_message(e.path, e.missing, profiles[e.profile]) for e in missing)
            + f". Supply each one with --branch NAME=SOURCE (another branch of the file, "
            f"e.g. --branch {example}=OTHER_BRANCH"
            + (f", or a constant, e.g. --branch {const_ok[0]}=-1" if const_ok else "")
            + ") or all at once with --branch-map FILE.json "
            '({"NAME": "SOURCE_BRANCH" or number, ...}); docs/prep.md lists the branches.'
            + "".join(dict.fromkeys(e.hint for e in missing))
        )
    if blocked:
        subs = {b: d for e in blocked for b, d in e.strict_blocked.items()}
        parts.append(
            "--strict forbids the built-in substitutes these inputs need ("
            + "; ".join(
                f"{e.path} ({_profile_title(e.profile)}): {', '.join(e.strict_blocked)}"
                for e in blocked
            )
            + "). Without --strict they would be: "
            + "; ".join(f"{n}: {subs[n]}" for n in sorted(subs))
            + ". Drop --strict to accept them, or map the branches explicitly with "
            "--branch/--branch-map."
        )
    return " ".join(parts)


def _through(sub: Source, user: Mapping[str, str | float]) -> Source:
    """A built-in substitute whose inputs the user renamed (e.g. DeepCvB -> DeepFlavCvB)."""
    reads = tuple(m if isinstance(m := user.get(r), str) else r for r in sub.reads)
    if reads == sub.reads:
        return sub
    return replace(sub, reads=reads, description=f"{sub.description}; reading {', '.join(reads)}")


def _builtin(
    name: str,
    table: Mapping[str, tuple[Source, ...]],
    profile: Profile,
    have: set[str],
    user: Mapping[str, str | float],
) -> Source | None:
    """The first source for ``name`` in ``table`` (a profile's substitutes or its
    generation branches) whose inputs the file has, if any."""
    for candidate in table.get(name, ()):
        sub = _through(candidate, user)
        if set(sub.reads) <= have:
            return replace(sub, profile=profile.name)
    return None


def _user_source(name: str, value: str | float, have: set[str]) -> Source | None:
    if isinstance(value, float):
        return Source(name, constant=value, origin="user", description=f"constant {value:g} (user)")
    if value in have:
        return Source(name, reads=(value,), origin="user", description=f"branch {value} (user)")
    return None


def _needed(objects: Iterable[str], gen_muons: GenMuons, generation: bool) -> list[str]:
    needed: list[str] = []
    for obj in objects:
        needed += [
            b for b in required_branches(obj, gen_muons, generation=generation) if b not in needed
        ]
    return needed


def _check_simulation(have: set[str], path: str, generation: bool) -> None:
    if any(b.startswith(_GEN_MARKERS) for b in have):
        return
    raise InputError(
        f"{path} has no generator-level branches (no GenJet_* or GenPart_*): this looks "
        "like collision data. "
        + (
            "flashsim generate simulates reconstructed objects from generator-level "
            "ones: give it simulated (or generator-only) NanoAOD."
            if generation
            else "flashsim prep needs simulated NanoAOD, where each reconstructed jet "
            "and muon is matched to its generator-level partner."
        )
    )


def resolve_branches(
    available: Iterable[str],
    objects: Iterable[str],
    *,
    gen_muons: GenMuons = FINAL_STATE,
    branch_map: Mapping[str, str | float] | None = None,
    strict: bool = False,
    path: str = "",
    generation: bool = False,
) -> BranchPlan:
    """Decide, for one file with branches ``available``, how each needed branch is read.

    Precedence: the user's mapping, then the file's own branch, then a built-in
    substitute of the file's NanoAOD generation (:func:`pipelines.profiles.detect_profile`;
    an error under ``strict``). ``generation``: only what generation reads (see
    :func:`required_branches`).

    Raises:
        InputError: the file has no generator-level branches (collision data).
        MissingBranches: branches are missing with no substitute (or ``strict``).
    """
    have = set(available)
    _check_simulation(have, path, generation)
    profile = detect_profile(have)
    user = dict(branch_map or {})
    sources: dict[str, Source] = {}
    missing: list[str] = []
    blocked: dict[str, str] = {}
    for name in _needed(objects, gen_muons, generation):
        if name in user:
            src = _user_source(name, user[name], have)
            if src is None:
                missing.append(f"{user[name]} (mapped to {name} by the user)")
            else:
                sources[name] = src
        elif name in have:
            sources[name] = Source(name, reads=(name,))
        elif (own := _builtin(name, profile.names, profile, have, user)) is not None:
            sources[name] = own  # the generation's own branch: the layout's definition
        elif (sub := _builtin(name, profile.substitutes, profile, have, user)) is not None:
            if strict:
                blocked[name] = sub.description
            else:
                sources[name] = sub
        else:
            missing.append(name)
    if missing or blocked:
        hint = _generation_hint(path, objects, profile) if missing else ""
        raise MissingBranches(path, missing, blocked, profile.name, hint)
    return BranchPlan(sources, profile.name)


def _template(branch: str) -> str | None:
    """The branch whose shape a constant of ``branch`` takes (``None``: one per event)."""
    if branch.startswith("Jet_"):
        return "Jet_pt"
    if branch.startswith("Muon_"):
        return "Muon_pt"
    return None


def materialize(
    raw: Mapping[str, ak.Array], plan: BranchPlan, n_events: int
) -> dict[str, ak.Array]:
    """Canonical branches from one step of raw file arrays (``raw[name]`` for ``plan.reads``).

    Returns ``{canonical name: array}``: jagged for per-object branches, one value per
    event for ``Pileup_*``.
    """
    out: dict[str, ak.Array] = {}
    later = []
    for name, src in plan.sources.items():
        if src.constant is not None:
            later.append(src)
        elif src.derive is not None:
            out[name] = DERIVATIONS[src.derive](*(raw[b] for b in src.reads))
        else:
            out[name] = raw[src.reads[0]]
    for src in later:  # constants take the shape of an already materialized branch
        template = _template(src.branch)
        if template is None:
            out[src.branch] = np.full(n_events, src.constant, dtype=np.float64)
        else:
            out[src.branch] = ak.full_like(out[template], src.constant, dtype=np.float64)
    return out
