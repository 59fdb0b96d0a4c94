"""Zero-shot organ identification and finding detection with prompt ensembles and the learned temperature."""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import ConfigError, CTGlipError, QueryError
from ctglip_sdk.volume import Segmentation, Volume

__all__ = ["ZeroShotClassifier", "Detection", "OrganIdentification", "ORGAN_TEMPLATES"]

log = logging.getLogger(__name__)

#: Prompt ensemble for organ names when the dictionary offers none; ``{}`` is the display name.
ORGAN_TEMPLATES: Tuple[str, ...] = ("the {}", "a CT image of the {}", "the {} on CT", "{}",
                                    "an axial CT slice through the {}")


@dataclass(frozen=True)
class Detection:
    """Probability that ``finding`` is present in ``organ`` (2-way softmax: positive vs negative prompts)."""

    organ: str
    finding: str
    probability: float

    def to_dict(self) -> Dict[str, Any]:
        return {"organ": self.organ, "finding": self.finding, "probability": self.probability}


@dataclass(frozen=True)
class OrganIdentification:
    """The most likely of the 104 organ names for one labelled region, with the full distribution."""

    region: str
    organ: str
    probability: float
    probabilities: np.ndarray  # [104], aligned with ctglip_sdk.organs.ORGANS; sums to 1

    def top(self, k: int = 5) -> List[Tuple[str, float]]:
        """The ``k`` most likely organs with their probabilities."""
        idx = np.argsort(-self.probabilities)[:k]
        return [(vocab.ORGANS[i], float(self.probabilities[i])) for i in idx]

    def to_dict(self) -> Dict[str, Any]:
        return {"region": self.region, "organ": self.organ, "probability": self.probability,
                "top5": [{"organ": o, "probability": p} for o, p in self.top(5)]}


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _check_study(volume: Any, segmentation: Any) -> None:
    """A Volume and a Segmentation, or a QueryError saying what was passed (None gave an AttributeError)."""
    if not isinstance(volume, Volume) or not isinstance(segmentation, Segmentation):
        raise QueryError(f"expected a Volume and a Segmentation (cg.load_volume, cg.load_segmentation), got "
                         f"{type(volume).__name__} and {type(segmentation).__name__}")


def _one_field(template: Any) -> bool:
    """True for a str.format template with exactly one positional field ("the {}", "{0} on CT", "the {} {{x}}")."""
    if not isinstance(template, str):
        return False
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        template.format("organ")
    except (ValueError, IndexError, KeyError):
        return False
    return len(fields) == 1 and fields[0] in ("", "0")


class ZeroShotClassifier:
    """Zero-shot scoring of organ embeddings against text prompts (prompts are data: the dictionary).

    Prompt embeddings are cached and recomputed when the model's weights change (``weights_version``).

    Example:
        >>> zs = ZeroShotClassifier(model)                                     # doctest: +SKIP
        >>> zs.identify_organs(vol, seg)[0].organ                              # doctest: +SKIP
        'liver'
        >>> [d.to_dict() for d in zs.detect(vol, seg, findings=["liver_cyst"])]  # doctest: +SKIP
        [{'organ': 'liver', 'finding': 'liver_cyst', 'probability': 0.83}]
    """

    def __init__(self, model: Any, dictionary: Any = None, organ_templates: Sequence[str] = ORGAN_TEMPLATES,
                 calibrated: bool = True) -> None:
        if not hasattr(model, "encode_text"):
            raise ConfigError(f"ZeroShotClassifier needs a CTGlipModel (cg.load(...)), got {type(model).__name__}")
        self.model = model
        #: Apply the model's per-finding calibration (``model.calibration``) when it has one.
        self.calibrated = calibrated
        self._dictionary = dictionary
        if isinstance(organ_templates, str) or not organ_templates or not all(
                _one_field(t) for t in organ_templates):
            raise ConfigError("organ_templates: a non-empty list of strings, each with one '{}' for the organ's "
                              f"name (e.g. 'a CT image of the {{}}'), got {organ_templates!r}")
        self.organ_templates = tuple(organ_templates)
        self._cache: Dict[str, np.ndarray] = {}
        self._cache_version: Any = None
        self._organ_keys: Dict[str, Tuple[str, ...]] = {}

    # ------------------------------------------------------------------ prompts
    @property
    def dictionary(self) -> Any:
        """The abnormality dictionary (``AbnormalityDictionary.default()`` unless one was given)."""
        if self._dictionary is None:
            try:
                from ctglip_sdk.reports import AbnormalityDictionary  # type: ignore[attr-defined]
            except ImportError:
                raise ConfigError("no abnormality dictionary available: pass ZeroShotClassifier(model, "
                                  "dictionary=...)") from None
            self._dictionary = AbnormalityDictionary.default()
        return self._dictionary

    def _check_cache(self) -> None:
        version = self.model.weights_version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version

    def embed_prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts`` ``[N, D]``, served from the per-model cache where possible."""
        self._check_cache()
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            for t, v in zip(todo, self.model.encode_text(todo)):
                self._cache[t] = v
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.model.embed_dim), np.float32)

    def prompt_ensembles(self, prompt_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Mean of each list's unit prompt vectors, renormalised (CLIP prompt ensembling) -> ``[K, D]``."""
        empty = [i for i, lst in enumerate(prompt_lists) if isinstance(lst, str) or not len(lst)]
        if empty:  # a string is a list of characters here; an empty list averages to NaN
            raise QueryError(f"prompt list(s) {empty} are not non-empty lists of prompts")
        flat = [t for lst in prompt_lists for t in lst]
        emb = self.embed_prompts(flat)
        out, i = [], 0
        for lst in prompt_lists:
            m = emb[i:i + len(lst)].mean(0)
            out.append(m / max(float(np.linalg.norm(m)), 1e-12))
            i += len(lst)
        return np.stack(out).astype(np.float32)

    def organ_prompts(self, organ: str) -> List[str]:
        """Prompts naming ``organ``: the dictionary's ``organ_prompts`` when it has them, else templates."""
        try:
            # the property, not the lazily filled attribute: a fresh classifier used the templates until some
            # other call happened to load the dictionary, and its organ probabilities changed with it
            d = self.dictionary
        except ConfigError:
            d = None
        if d is not None and hasattr(d, "organ_prompts"):
            prompts = list(d.organ_prompts(organ))
            if prompts:
                return prompts
        return [t.format(vocab.display_name(organ)) for t in self.organ_templates]

    def finding_prompts(self, key: str) -> Tuple[List[str], List[str]]:
        """(positive, negative) prompts of a finding key, falling back to the entry's phrasings."""
        d = self.dictionary
        if key not in d:
            raise QueryError(f"unknown finding {key!r}; known: {', '.join(sorted(d.keys()))}")
        pos: List[str] = []
        neg: List[str] = []
        if hasattr(d, "prompts"):
            pos, neg = (list(x) for x in d.prompts(key))
        entry = d[key]
        pos = pos or list(entry.positives) or [entry.name, *entry.synonyms]
        neg = neg or list(entry.negatives)
        if not neg and hasattr(d, "normal_phrases"):
            neg = list(d.normal_phrases(entry.organ))
        return pos, neg or [f"no {entry.name}"]

    # ------------------------------------------------------------------ organs
    def _vectors(self, vectors: Any, n: Optional[int] = None) -> np.ndarray:
        """``vectors`` as float32 ``[N, embed_dim]``, finite; a QueryError names what is wrong (a NaN row used to
        score NaN silently, a wrong width failed inside numpy)."""
        try:
            arr = np.asarray(vectors, np.float32)
        except (TypeError, ValueError):
            raise QueryError(f"vectors: expected an [N, D] array of numbers, got {type(vectors).__name__}") from None
        if arr.ndim != 2 or (n is not None and arr.shape[0] != n):
            raise QueryError(f"need one vector per organ name: {n} names, vectors {arr.shape}" if n is not None
                             else f"vectors: expected an [N, D] array, got shape {arr.shape}")
        dim = int(getattr(self.model, "embed_dim", arr.shape[1]))
        if arr.shape[1] != dim:
            raise QueryError(f"vectors have {arr.shape[1]} columns, the model's embeddings {dim}")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise QueryError(f"{int(bad.sum())} vector(s) hold NaN or infinite values (rows "
                             f"{np.flatnonzero(bad)[:5].tolist()}); they cannot be scored")
        return arr

    @staticmethod
    def _organ_names(organ_names: Any) -> List[str]:
        """Organ names as the dictionary knows them: a class or group as is, a synonym ("Liver", "right kidney")
        as its one class; an unknown name is a QueryError with suggestions (it used to give no row at all)."""
        if organ_names is None or isinstance(organ_names, str):
            raise QueryError("organ_names: expected a list of organ names, one per vector")
        names = list(organ_names)
        odd = next((n for n in names if not isinstance(n, str)), None)
        if odd is not None:
            raise QueryError(f"organ_names: expected strings, got {type(odd).__name__}")
        canon: Dict[str, str] = {}
        for name in set(names):  # once per distinct name: index scoring passes one name per organ row
            if vocab.is_known(name):
                canon[name] = name
                continue
            found = vocab.lookup(name)  # QueryError with "did you mean" for a name it does not know
            if len(found) != 1:
                raise QueryError(f"organ name {name!r} names {len(found)} organs ({', '.join(found[:4])}...); give "
                                 "one class or group name per vector")
            canon[name] = found[0]
        return names if all(k == v for k, v in canon.items()) else [canon[n] for n in names]

    def identify_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Softmax over the 104 organ names for each row of ``vectors`` -> ``[N, 104]`` (rows sum to 1)."""
        arr = self._vectors(vectors)
        text = self.prompt_ensembles([self.organ_prompts(o) for o in vocab.ORGANS])
        scale = float(self.model.temperature_scale().detach().cpu())
        return _softmax(scale * arr @ text.T)

    def identify_organs(self, volume: Volume, segmentation: Segmentation) -> List[OrganIdentification]:
        """For each labelled region of ``segmentation``, the most likely organ name with probabilities."""
        _check_study(volume, segmentation)
        emb = self.model.encode_organs(volume, segmentation)
        if not emb.names:
            return []
        probs = self.identify_vectors(emb.vectors)
        best = probs.argmax(1)
        return [OrganIdentification(r, vocab.ORGANS[b], float(p[b]), p) for r, b, p in zip(emb.names, best, probs)]

    # ---------------------------------------------------------------- findings
    def findings_for(self, organ: str) -> Tuple[str, ...]:
        """Keys of the dictionary findings scored on ``organ`` (empty for an organ the dictionary does not know)."""
        if organ not in self._organ_keys:
            try:
                self._organ_keys[organ] = tuple(e.key for e in self.dictionary.for_organ(organ))
            except (KeyError, ValueError, CTGlipError):  # an organ the dictionary does not know: no findings
                self._organ_keys[organ] = ()
        return self._organ_keys[organ]

    def detect_arrays(self, organ_names: Sequence[str], vectors: np.ndarray,
                      findings: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, List[str], np.ndarray]:
        """Vectorised scoring: ``(row index, finding key, probability)`` arrays for every applicable pair.

        The probability is ``sigmoid`` of :meth:`detect_logits`.
        """
        rows, keys, logits = self.detect_logits(organ_names, vectors, findings)
        return rows, keys, (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def detect_logits(self, organ_names: Sequence[str], vectors: np.ndarray,
                      findings: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, List[str], np.ndarray]:
        """``(row index, finding key, logit)`` for every applicable pair (logits do not saturate as
        probabilities do, so calibration and ranking use them).

        Each (organ, finding) pair the dictionary allows gets ``sigmoid(s * (v.p - v.n) - c)`` = the 2-way
        softmax of the organ vector ``v`` against the averaged positive ``p`` and negative ``n`` prompt vectors,
        ``s`` the model's learned logit scale, ``c`` the finding's calibration offset (0 when the model has
        none or the classifier was made with ``calibrated=False``): a calibrated model puts each finding's
        F1-best threshold on held-out studies at probability 0.5.
        """
        organ_names = self._organ_names(organ_names)
        vectors = self._vectors(vectors, len(organ_names))
        wanted = None
        if findings is not None:
            wanted = list(dict.fromkeys([findings] if isinstance(findings, str) else findings))
            unknown = [k for k in wanted if k not in self.dictionary]
            if unknown:
                raise QueryError(f"unknown finding(s) {unknown}; known: {', '.join(sorted(self.dictionary.keys()))}")
        keys = sorted({k for o in set(organ_names) for k in self.findings_for(o) if wanted is None or k in wanted})
        if not keys or not len(organ_names):
            return np.zeros(0, np.int64), [], np.zeros(0, np.float32)
        prompts = [self.finding_prompts(k) for k in keys]
        pos = self.prompt_ensembles([p for p, _ in prompts])
        neg = self.prompt_ensembles([n for _, n in prompts])
        scale = float(self.model.temperature_scale().detach().cpu())
        logits = scale * (vectors @ (pos - neg).T)  # [N, K]
        offsets = getattr(self.model, "calibration", None) or {}
        if self.calibrated and offsets:
            logits = logits - np.asarray([offsets.get(k, 0.0) for k in keys], np.float32)
        col = {k: i for i, k in enumerate(keys)}
        applies = np.zeros(logits.shape, bool)
        for o in set(organ_names):
            cols = [col[k] for k in self.findings_for(o) if k in col]
            if cols:
                rows = [i for i, n in enumerate(organ_names) if n == o]
                applies[np.ix_(rows, cols)] = True
        r, c = np.nonzero(applies)
        return r, [keys[i] for i in c], logits[r, c].astype(np.float32)

    def detect_vectors(self, organ_names: Sequence[str], vectors: np.ndarray,
                       findings: Optional[Sequence[str]] = None) -> List[Detection]:
        """Detections for precomputed organ vectors (the index scores archives this way).

        Organ names may be classes, groups or synonyms ("right kidney"); an unknown name is a QueryError.

        Example:
            >>> emb = model.encode_organs(vol, seg)                                           # doctest: +SKIP
            >>> zs.detect_vectors(["liver"], emb.vector("liver")[None], findings=["liver_cyst"])  # doctest: +SKIP
        """
        names = self._organ_names(organ_names)
        rows, keys, prob = self.detect_arrays(names, vectors, findings)
        return [Detection(names[r], k, float(p)) for r, k, p in zip(rows.tolist(), keys, prob.tolist())]

    def detect(self, volume: Volume, segmentation: Segmentation,
               findings: Optional[Sequence[str]] = None) -> List[Detection]:
        """Encode the organs the dictionary has findings for (those present) and score them."""
        _check_study(volume, segmentation)
        present = [segmentation.labels[i] for i in sorted(segmentation.labels) if i > 0]
        organs = [o for o in present if self.findings_for(o)]
        if not organs:
            return []
        emb = self.model.encode_organs(volume, segmentation, organs=organs)
        return self.detect_vectors(emb.names, emb.vectors, findings)
