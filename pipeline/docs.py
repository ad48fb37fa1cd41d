"""docs/params.md, generated from the params.yaml schema so that the reference cannot drift.

``python -m pipeline.docs`` rewrites it; ``tests/test_docs.py`` fails when it is stale. The
descriptions are the schema's own, the ones ``python -m pipeline --help`` prints.
"""

import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from pipeline.atomic import write_text
from pipeline.cli import STAGES
from pipeline.config import SECTIONS, _as_yaml

PARAMS_DOC = Path("docs") / "params.md"

# Where each section's behaviour is explained at length (pages beside params.md).
GUIDES = {
    "data": "datasets.md",
    "preprocess": "datasets.md#splits",
    "tune": "tuning.md",
    "train": "train-evaluate-register.md#train",
    "budget": "budget.md",
    "evaluate": "train-evaluate-register.md#evaluate",
    "register": "train-evaluate-register.md#the-promotion-gate",
    "imbalance": "train-evaluate-register.md#imbalanced-classes",
    "pretrained": "search-spaces.md#pretrained-backbones",
    "mlflow": "mlflow-ui.md",
}

_HEADER = """\
<!-- Generated from pipeline/config.py by `python -m pipeline.docs`: edit the schema, not this. -->
# params.yaml reference

Every key `params.yaml` accepts, generated from the typed schema in `pipeline/config.py`
(the same descriptions `python -m pipeline --help` prints). A key left out of the file
takes the default below; the shipped `params.yaml` sets several keys to other values
(it is sized for a 2-core CPU): `python -m pipeline --help` prints the values in force.
An unknown key, a wrong type or a value outside the allowed range stops the run before
any work with one line and exit code 2 ([how params.yaml works](configuration.md)).
"""


def render_params_doc() -> str:
    """The Markdown text of docs/params.md, from the schema's sections and fields."""
    lines = [_HEADER]
    lines.append("Sections: " + ", ".join(f"[{name}](#{name})" for name in SECTIONS) + ".")
    for name, section in SECTIONS.items():
        readers = [stage for stage, (_, keys) in STAGES.items() if _reads(keys, name)]
        lines += ["", f"## {name}", "", _escape(section.__doc__ or "")]
        lines += [
            "",
            f"Read by: {', '.join(f'`{s}`' for s in readers)}. More: {_guide_link(name)}.",
            "",
            "| key | type | default | allowed | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, field in section.model_fields.items():
            lines.append(
                f"| `{name}.{key}` | {_type_name(field.annotation)} | "
                f"`{_as_yaml(field.default)}` | {_allowed(field)} | "
                f"{_escape(field.description or '')} |"
            )
    return "\n".join(lines) + "\n"


def _guide_link(section: str) -> str:
    target = GUIDES[section]
    return f"[{target.partition('#')[0]}]({target})"


def _reads(keys: Sequence[str], section: str) -> bool:
    return any(k == section or k.startswith(section + ".") for k in keys)


def _type_name(annotation) -> str:
    """``int | None`` -> 'int or null'; ``Literal['a', 'b']`` -> '`a`, `b`'."""
    origin = get_origin(annotation)
    if origin in (types.UnionType,) or str(origin) == "typing.Union":
        return " or ".join(_type_name(arg) for arg in get_args(annotation))
    if origin is Literal:
        return ", ".join(f"`{_as_yaml(v)}`" for v in get_args(annotation))
    if origin is tuple:
        return "[" + ", ".join(_type_name(arg) for arg in get_args(annotation)) + "]"
    if annotation is type(None):
        return "null"
    return annotation.__name__


def _allowed(field: FieldInfo) -> str:
    """The range the schema enforces, e.g. '> 0, < 1'; '' where any value of the type goes."""
    bounds = []
    for rule in field.metadata:
        # pydantic's constraints (annotated_types' Gt, Ge, ..., MinLen) by their fields.
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if type(rule).__name__ == attr.capitalize():
                bounds.append(f"{sign} {getattr(rule, attr)}")
        if type(rule).__name__ == "MinLen":
            bounds.append(f"at least {rule.min_length} character")
    return ", ".join(bounds)


def _escape(text: str) -> str:
    # In a GitHub table, '|' ends a cell and '<dataset>' would be read as an HTML tag.
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace("~", "\\~")


def main(argv: Sequence[str] | None = None) -> int:
    """Write docs/params.md atomically (run from the project root)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv:
        print("usage: python -m pipeline.docs  (rewrites docs/params.md)", file=sys.stderr)
        return 2
    write_text(PARAMS_DOC, render_params_doc())
    print(f"wrote {PARAMS_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
