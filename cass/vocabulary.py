"""Open vocabularies: classes, each with one or more text prompts (synonyms).

A :class:`Vocabulary` is all that the label-dependent half of CASS (``segment``) needs besides the
image features. It mirrors the official class files (one class per line, synonyms separated by
``", "``) and adds an optional *background* class that receives the pixels whose best class
probability is below the preset's threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


class VocabularyError(ValueError):
    """A vocabulary that cannot be segmented with (empty, duplicated or blank labels)."""


@dataclass(frozen=True)
class VocabularyClass:
    """One output class. ``prompts`` are the synonyms that compete for it (max over them)."""

    name: str
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise VocabularyError(f"class name must be a non-empty string, got {self.name!r}")
        prompts = tuple(self.prompts)
        if not prompts:
            raise VocabularyError(f"class {self.name!r} has no prompts")
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise VocabularyError(f"class {self.name!r} has an empty prompt in {list(prompts)!r}")
        if len(set(prompts)) != len(prompts):
            raise VocabularyError(f"class {self.name!r} lists the same prompt twice: {list(prompts)!r}")
        object.__setattr__(self, "prompts", prompts)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes; class ``i`` gets label id ``i`` in a :class:`Segmentation`.

    ``background``: index of the class that receives pixels whose best probability is below the
    threshold (the official code always uses class 0). ``None``: such pixels get label ``-1``
    ("no label").
    """

    classes: tuple[VocabularyClass, ...]
    background: int | None = None
    _queries: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _query_class: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if not classes:
            raise VocabularyError("the vocabulary is empty: give at least one class")
        seen: set[str] = set()
        dup_names = sorted({c.name for c in classes if c.name in seen or seen.add(c.name)})  # linear
        if dup_names:
            raise VocabularyError(f"duplicate class names: {dup_names}")
        owner: dict[str, str] = {}
        for cls in classes:
            for prompt in cls.prompts:
                if prompt in owner:
                    raise VocabularyError(
                        f"prompt {prompt!r} is used by two classes ({owner[prompt]!r} and {cls.name!r})")
                owner[prompt] = cls.name
        if self.background is not None and not 0 <= self.background < len(classes):
            raise VocabularyError(f"background index {self.background} is outside 0..{len(classes) - 1}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "_queries", tuple(p for c in classes for p in c.prompts))
        object.__setattr__(self, "_query_class", tuple(i for i, c in enumerate(classes) for _ in c.prompts))

    # --- views -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def queries(self) -> tuple[str, ...]:
        """Every prompt, class by class (the official ``query_words``)."""
        return self._queries

    @property
    def query_class(self) -> tuple[int, ...]:
        """Class index of each query (the official ``query_idx``)."""
        return self._query_class

    def __len__(self) -> int:
        return len(self.classes)

    # --- constructors ------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Iterable[str], background: int | None = None) -> "Vocabulary":
        """One prompt per class, the class name itself."""
        return cls(tuple(VocabularyClass(n, (n,)) for n in names), background=background)

    @classmethod
    def from_prompts(cls, classes: Sequence[tuple[str, Sequence[str]]],
                     background: int | None = None) -> "Vocabulary":
        """``[(name, [prompt, ...]), ...]``."""
        return cls(tuple(VocabularyClass(name, tuple(prompts)) for name, prompts in classes),
                   background=background)

    @classmethod
    def from_class_file(cls, text: str, background: int | None = 0) -> "Vocabulary":
        """Parse the official class-file format exactly as the official ``get_cls_idx`` does.

        One class per line; each line is split on the two-character separator ``", "`` (so
        ``"a,b"`` is a single prompt); newline characters are stripped. The class is named after
        its first prompt. ``background`` defaults to 0 like the official threshold rule.
        """
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise VocabularyError("the class file is empty")
        classes = []
        for number, line in enumerate(lines, 1):
            prompts = tuple(p.replace("\n", "").replace("\r", "") for p in line.split(", "))
            if not any(p.strip() for p in prompts):
                raise VocabularyError(f"line {number} of the class file is empty")
            classes.append(VocabularyClass(prompts[0], prompts))
        return cls(tuple(classes), background=background)

    @classmethod
    def from_spec(cls, spec: str, background: int | None = None) -> "Vocabulary":
        """Command-line form: classes separated by ``;``, synonyms by ``,`` (``"cat,kitten;dog"``)."""
        classes = []
        for part in spec.split(";"):
            prompts = tuple(p.strip() for p in part.split(","))
            if not part.strip():
                continue
            if not all(prompts):
                raise VocabularyError(f"empty synonym in {part!r} (labels were {spec!r})")
            classes.append(VocabularyClass(prompts[0], prompts))
        return cls(tuple(classes), background=background)
