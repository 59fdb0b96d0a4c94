"""The abnormality dictionary: per-organ findings with names, synonyms, positive and normal descriptions."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ctglip_sdk import organs as _organs
from ctglip_sdk.errors import ConfigError, QueryError

__all__ = ["FindingEntry", "AbnormalityDictionary"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_LIST_FIELDS = ("synonyms", "descriptors", "hedged", "positives", "negatives")
_REQUIRED = ("organ", "name", "positives", "negatives")
_ENTRY_FIELDS = set(_LIST_FIELDS) | {"organ", "name", "modifiers", "extent", "sites"}
_TOP_LISTS = ("normal_terms", "generic_terms", "ignore_terms", "default_normal", "organ_prompt_templates")
_TOP_FIELDS = set(_TOP_LISTS) | {"version", "description", "findings", "organs", "prompt_templates"}
_EXTENTS = ("focal", "diffuse")


@dataclass(frozen=True)
class FindingEntry:
    """One finding of the dictionary.

    ``synonyms`` name the finding on their own ("nephrolithiasis"); ``descriptors`` are generic words that need
    an organ from the sentence or heading ("stone", "cyst"); ``hedged`` are words that report the finding as
    uncertain ("ectasia" for an aneurysm). ``extent`` says whether a finding on a group (``lung``) concerns
    every member (``diffuse``, e.g. emphysema) or one unknown member (``focal``); ``sites`` maps a side to the
    class a sided finding belongs to (pleural effusion -> lower lobe of that side).

    Example:
        >>> e = AbnormalityDictionary.default()["renal_cyst"]
        >>> e.organ, e.name
        ('kidney', 'renal cyst')
    """

    key: str
    organ: str
    name: str
    synonyms: Tuple[str, ...]
    positives: Tuple[str, ...]
    negatives: Tuple[str, ...]
    modifiers: Dict[str, Tuple[str, ...]] = field(default_factory=dict, hash=False)
    descriptors: Tuple[str, ...] = ()
    hedged: Tuple[str, ...] = ()
    extent: str = "focal"
    sites: Dict[str, str] = field(default_factory=dict, hash=False)

    def to_dict(self) -> Dict[str, Any]:
        """The entry as stored in the JSON file (without its key)."""
        out: Dict[str, Any] = {"organ": self.organ, "name": self.name}
        for name in _LIST_FIELDS:
            out[name] = list(getattr(self, name))
        out["modifiers"] = {k: list(v) for k, v in self.modifiers.items()}
        out["extent"] = self.extent
        if self.sites:
            out["sites"] = dict(self.sites)
        return out


def _dedup(*seqs: Sequence[str]) -> Tuple[str, ...]:
    seen: Dict[str, None] = {}
    for seq in seqs:
        for s in seq:
            seen.setdefault(s, None)
    return tuple(seen)


def _covers(group: str, organ: str) -> bool:
    """True when every class of ``organ`` belongs to ``group`` (kidney_left is covered by kidney)."""
    return set(_organs.expand(organ)) <= set(_organs.expand(group))


class _Validator:
    """Checks a raw mapping and names the first bad entry as ``findings.renal_cyst.positives: ...``."""

    def __init__(self, source: Optional[PathLike]) -> None:
        self.source = source

    def fail(self, where: str, reason: str) -> None:
        raise ConfigError(f"{where}: {reason}", path=self.source)

    def strings(self, value: Any, where: str, *, required: bool) -> Tuple[str, ...]:
        ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
        if not ok or (required and not value):
            kind = "a non-empty list of strings" if required else "a list of non-empty strings"
            self.fail(where, f"expected {kind}")
        return tuple(v.strip() for v in value)

    def organ(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not _organs.is_known(value):
            close = difflib.get_close_matches(str(value), list(_organs.ORGANS) + list(_organs.GROUPS), n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            self.fail(where, f"unknown organ {value!r}; use a TotalSegmentator v1 class or group{hint}")
        return value

    def entry(self, key: Any, raw: Any) -> FindingEntry:
        where = f"findings.{key}"
        if not isinstance(key, str) or not _KEY_RE.match(key):
            self.fail(where, "finding keys must be lower_snake_case")
        if not isinstance(raw, dict):
            self.fail(where, "expected an object")
        unknown = sorted(set(raw) - _ENTRY_FIELDS)
        if unknown:
            self.fail(f"{where}.{unknown[0]}", f"unknown field; allowed: {', '.join(sorted(_ENTRY_FIELDS))}")
        for name in _REQUIRED:
            if name not in raw:
                self.fail(f"{where}.{name}", "missing required field")
        organ = self.organ(raw["organ"], f"{where}.organ")
        if not isinstance(raw["name"], str) or not raw["name"].strip():
            self.fail(f"{where}.name", "expected a non-empty string")
        lists = {n: self.strings(raw.get(n, []), f"{where}.{n}", required=n in _REQUIRED) for n in _LIST_FIELDS}
        mods = raw.get("modifiers", {})
        if not isinstance(mods, dict):
            self.fail(f"{where}.modifiers", "expected an object of lists of strings")
        modifiers = {str(k): self.strings(v, f"{where}.modifiers.{k}", required=False) for k, v in mods.items()}
        extent = raw.get("extent", "focal")
        if extent not in _EXTENTS:
            self.fail(f"{where}.extent", f"expected one of {', '.join(_EXTENTS)}, got {extent!r}")
        sites = raw.get("sites") or {}
        if not isinstance(sites, dict) or set(sites) - {"left", "right"}:
            self.fail(f"{where}.sites", "expected an object with keys 'left'/'right'")
        for side, organ_name in sites.items():
            self.organ(organ_name, f"{where}.sites.{side}")
        return FindingEntry(key=key, organ=organ, name=raw["name"].strip(), modifiers=modifiers, extent=extent,
                            sites=dict(sites), **lists)

    def document(self, raw: Any) -> Dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail("<root>", "expected a JSON object with 'version' and 'findings'")
        unknown = sorted(set(raw) - _TOP_FIELDS)
        if unknown:
            self.fail(unknown[0], f"unknown top-level field; allowed: {', '.join(sorted(_TOP_FIELDS))}")
        version = raw.get("version")
        if not isinstance(version, str) or not version.strip():
            self.fail("version", "expected a non-empty string such as '1.0.0'")
        findings = raw.get("findings")
        if not isinstance(findings, dict) or not findings:
            self.fail("findings", "expected a non-empty object of finding entries")
        out: Dict[str, Any] = {"version": version.strip(), "description": str(raw.get("description", ""))}
        out["findings"] = {k: self.entry(k, v) for k, v in findings.items()}
        for name in _TOP_LISTS:
            out[name] = self.strings(raw.get(name, []), name, required=False)
        organs_raw = raw.get("organs", {})
        if not isinstance(organs_raw, dict):
            self.fail("organs", "expected an object organ -> {'normal': [...]}")
        normals: Dict[str, Tuple[str, ...]] = {}
        for organ, spec in organs_raw.items():
            self.organ(organ, f"organs.{organ}")
            if not isinstance(spec, dict) or set(spec) - {"normal"}:
                self.fail(f"organs.{organ}", "expected an object with a 'normal' list")
            normals[organ] = self.strings(spec.get("normal", []), f"organs.{organ}.normal", required=True)
        out["organ_normals"] = normals
        templates = raw.get("prompt_templates", {})
        if not isinstance(templates, dict) or set(templates) - {"positive", "negative"}:
            self.fail("prompt_templates", "expected an object with 'positive' and 'negative' lists")
        out["prompt_templates"] = {k: self.strings(templates.get(k, []), f"prompt_templates.{k}", required=False)
                                   for k in ("positive", "negative")}
        return out


class AbnormalityDictionary:
    """Findings per organ with synonyms, descriptors and positive/negative descriptions.

    Serves training (``positives``, ``hard_negatives``), zero-shot prompts (``prompts``, ``organ_prompts``)
    and the vocabulary that :func:`ctglip_sdk.reports.parse_report` matches against. Instances are
    immutable; :meth:`merge` returns a new dictionary.

    Example:
        >>> d = AbnormalityDictionary.default()
        >>> "renal_cyst" in d, [e.key for e in d.for_organ("kidney_left")][:2]
        (True, ['renal_cyst', 'renal_stone'])
    """

    def __init__(self, data: Mapping[str, Any], *, source: Optional[PathLike] = None) -> None:
        self.version: str = data["version"]
        self.description: str = data.get("description", "")
        self._entries: Dict[str, FindingEntry] = dict(data["findings"])
        self.normal_terms: Tuple[str, ...] = tuple(data.get("normal_terms", ()))
        self.generic_terms: Tuple[str, ...] = tuple(data.get("generic_terms", ()))
        self.ignore_terms: Tuple[str, ...] = tuple(data.get("ignore_terms", ()))
        self.default_normal: Tuple[str, ...] = tuple(data.get("default_normal", ()))
        self.organ_prompt_templates: Tuple[str, ...] = tuple(data.get("organ_prompt_templates", ()))
        self.organ_normals: Dict[str, Tuple[str, ...]] = dict(data.get("organ_normals", {}))
        tpl = data.get("prompt_templates", {})
        self.prompt_templates: Dict[str, Tuple[str, ...]] = {k: tuple(tpl.get(k, ())) for k in ("positive", "negative")}
        self.source = os.fspath(source) if source is not None else None
        self._vocab: Any = None  # parser vocabulary, built on first use (ctglip_sdk.reports.vocab)
        self._lay: Any = None  # query-only copy that also reads lay words, built on first use (reports.lay)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: Optional[PathLike] = None) -> "AbnormalityDictionary":
        """Validate a mapping in the file format and build a dictionary (ConfigError names a bad entry)."""
        return cls(_Validator(source).document(raw), source=source)

    @classmethod
    def load(cls, path: PathLike) -> "AbnormalityDictionary":
        """Load and validate a dictionary JSON file.

        Example:
            >>> d = AbnormalityDictionary.load("my_findings.json")  # doctest: +SKIP
            >>> merged = AbnormalityDictionary.default().merge(d)  # doctest: +SKIP
        """
        try:
            with open(path, "r", encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise ConfigError("dictionary file not found", path=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read dictionary file: {exc.__class__.__name__}", path=path) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", path=path) from None
        return cls.from_dict(raw, source=path)

    @classmethod
    def default(cls) -> "AbnormalityDictionary":
        """The dictionary shipped with the package (cached; treat it as read-only).

        Example:
            >>> AbnormalityDictionary.default()["hydronephrosis"].name
            'hydronephrosis'
        """
        return _default_dictionary()

    def merge(self, other: "AbnormalityDictionary") -> "AbnormalityDictionary":
        """A new dictionary with ``other``'s entries added; entries with the same key are combined.

        Lists (synonyms, descriptors, positives, ...) are unioned keeping order, ``name`` and ``sites`` come from
        ``other``, and ``extent`` becomes ``diffuse`` if either says so. The organ of a shared key must agree.

        Example:
            >>> d = AbnormalityDictionary.default().merge(AbnormalityDictionary.load("mine.json"))  # doctest: +SKIP
        """
        if not isinstance(other, AbnormalityDictionary):
            raise ConfigError(f"merge() expects an AbnormalityDictionary, got {type(other).__name__}")
        entries = dict(self._entries)
        for key, new in other._entries.items():
            old = entries.get(key)
            if old is None:
                entries[key] = new
                continue
            if old.organ != new.organ:
                raise ConfigError(f"findings.{key}.organ: {new.organ!r} conflicts with {old.organ!r} of the base "
                                  "dictionary", path=other.source)
            mods = {k: _dedup(old.modifiers.get(k, ()), new.modifiers.get(k, ()))
                    for k in _dedup(old.modifiers, new.modifiers)}
            entries[key] = FindingEntry(
                key=key, organ=old.organ, name=new.name, modifiers=mods,
                extent="diffuse" if "diffuse" in (old.extent, new.extent) else "focal",
                sites={**old.sites, **new.sites},
                **{n: _dedup(getattr(old, n), getattr(new, n)) for n in _LIST_FIELDS})
        normals = dict(self.organ_normals)
        for organ, phrases in other.organ_normals.items():
            normals[organ] = _dedup(normals.get(organ, ()), phrases)
        data = {
            "version": f"{self.version}+{other.version}",
            "description": self.description,
            "findings": entries,
            "organ_normals": normals,
            "prompt_templates": {k: _dedup(self.prompt_templates[k], other.prompt_templates[k])
                                 for k in ("positive", "negative")},
            **{n: _dedup(getattr(self, n), getattr(other, n)) for n in _TOP_LISTS},
        }
        return AbnormalityDictionary(data, source=other.source)

    # ------------------------------------------------------------------ mapping protocol
    def findings(self) -> List[FindingEntry]:
        """Every entry, in file order."""
        return list(self._entries.values())

    def keys(self) -> List[str]:
        """Every finding key, in file order."""
        return list(self._entries)

    def __getitem__(self, key: str) -> FindingEntry:
        try:
            return self._entries[key]
        except KeyError:
            close = difflib.get_close_matches(str(key), list(self._entries), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise QueryError(f"unknown finding {key!r}{hint}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AbnormalityDictionary(version={self.version!r}, findings={len(self)})"

    # ------------------------------------------------------------------ per organ
    def for_organ(self, organ: str) -> List[FindingEntry]:
        """Findings that apply to ``organ``: a class resolves to its group's findings.

        Example:
            >>> [e.key for e in AbnormalityDictionary.default().for_organ("lung_lower_lobe_right")][:3]
            ['lung_nodule', 'emphysema', 'pleural_effusion']
        """
        _organs.expand(organ)  # QueryError for unknown names
        return [e for e in self._entries.values() if _covers(e.organ, organ)]

    def _organ_key(self, organ: str) -> Optional[str]:
        """The ``organs`` section entry that describes ``organ`` (itself, else the smallest covering group)."""
        if organ in self.organ_normals:
            return organ
        covering = [o for o in self.organ_normals if _covers(o, organ)]
        return min(covering, key=lambda o: len(_organs.expand(o))) if covering else None

    def normal_phrases(self, organ: str) -> List[str]:
        """Generic normal descriptions of ``organ`` (``{organ}`` filled with its display name).

        Example:
            >>> AbnormalityDictionary.default().normal_phrases("kidney_left")[0]
            'The left kidney is unremarkable.'
        """
        _organs.expand(organ)
        shown = _organs.display_name(organ)
        key = self._organ_key(organ)
        phrases = self.organ_normals.get(key, ()) if key else ()
        return [p.replace("{organ}", shown) for p in _dedup(phrases, self.default_normal)]

    # ------------------------------------------------------------------ training and prompts
    def positives(self, key: str) -> List[str]:
        """Positive descriptions of a finding (its listed descriptions, then its name)."""
        entry = self[key]
        return list(_dedup(entry.positives, (entry.name,)))

    def hard_negatives(self, key: str) -> List[str]:
        """Texts a model must not match to ``key``: its negated forms and the other findings of the same organ.

        Example:
            >>> negs = AbnormalityDictionary.default().hard_negatives("renal_cyst")
            >>> "No renal cysts." in negs and "bilateral nephrolithiasis" in negs
            True
        """
        entry = self[key]
        negated = [t.format(name=entry.name, organ=_organs.display_name(entry.organ))
                   for t in self.prompt_templates["negative"] if "{name}" in t]
        others = [p for e in self.for_organ(entry.organ) if e.key != key for p in e.positives]
        return list(_dedup(entry.negatives, negated, others))

    def prompts(self, key: str) -> Tuple[List[str], List[str]]:
        """Zero-shot prompt ensembles ``(positive_prompts, negative_prompts)`` for a finding.

        Example:
            >>> pos, neg = AbnormalityDictionary.default().prompts("splenomegaly")
            >>> "splenomegaly" in pos and "No splenomegaly." in neg
            True
        """
        entry = self[key]
        organ = _organs.display_name(entry.organ)
        pos = [t.format(name=entry.name, organ=organ) for t in self.prompt_templates["positive"]]
        neg = [t.format(name=entry.name, organ=organ) for t in self.prompt_templates["negative"]]
        return (list(_dedup(pos, entry.positives)),
                list(_dedup(neg, entry.negatives, self.normal_phrases(entry.organ))))

    def organ_prompts(self, organ: str) -> List[str]:
        """Prompts naming an organ (any of the 104 classes or a group) for organ identification.

        Example:
            >>> AbnormalityDictionary.default().organ_prompts("kidney_left")[:3]
            ['left kidney', 'the left kidney', 'a CT image of the left kidney']
        """
        _organs.expand(organ)
        shown = _organs.display_name(organ)
        return [t.replace("{organ}", shown) for t in self.organ_prompt_templates]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The dictionary in its JSON file format (``from_dict(to_dict())`` round-trips)."""
        out: Dict[str, Any] = {"version": self.version}
        if self.description:
            out["description"] = self.description
        for name in _TOP_LISTS:
            out[name] = list(getattr(self, name))
        out["prompt_templates"] = {k: list(v) for k, v in self.prompt_templates.items()}
        out["organs"] = {o: {"normal": list(p)} for o, p in self.organ_normals.items()}
        out["findings"] = {k: e.to_dict() for k, e in self._entries.items()}
        return out

    def save(self, path: PathLike) -> None:
        """Write the dictionary as JSON (atomically: temp file then rename)."""
        target = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(prefix=".dictionary-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=1, ensure_ascii=False)
                fh.write("\n")
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


@lru_cache(maxsize=1)
def _default_dictionary() -> AbnormalityDictionary:
    text = resources.files("ctglip_sdk.data").joinpath("abnormality_dictionary.json").read_text("utf-8")
    d = AbnormalityDictionary.from_dict(json.loads(text), source="<default abnormality_dictionary.json>")
    logger.debug("loaded default abnormality dictionary %s with %d findings", d.version, len(d))
    return d
