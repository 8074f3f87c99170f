"""Which attributes a run conditions on, and attribute values written by hand.

Every face source yields all of its attribute columns: CelebA's 40 for CelebA and the drawn
faces, a labels CSV's for a folder (none without one). A run picks its conditioning by name
(``data.attributes``), and the datamodule hands on only those columns, in the order given.
``Eyeglasses=1,Male=0`` is how a user asks for values on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_faces.errors import FacesError

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def parse_attribute_names(requested: Sequence[str] | str | None) -> tuple[str, ...]:
    """Attribute names as a run gives them: ``all`` (CelebA's 40), a list or ``"a,b"``, or none.

    Raises FacesError for a name given twice; which names exist is the data's to say
    (``select_attributes``).
    """
    if requested is None or requested == "" or requested == []:
        return ()
    if isinstance(requested, str):
        if requested == "all":
            return tuple(CELEBA_ATTRIBUTES)
        requested = [name.strip() for name in requested.split(",")]
    repeated = sorted({name for name in requested if list(requested).count(name) > 1})
    if repeated:
        raise FacesError(f"data.attributes names {', '.join(repeated)} more than once")
    return tuple(requested)


def select_attributes(
    requested: Sequence[str] | str | None, known: Sequence[str] = CELEBA_ATTRIBUTES, where: str = "CelebA's"
) -> tuple[str, ...]:
    """The attributes a run conditions on, checked against those its data has (``known``,
    named ``where`` in messages: CelebA's 40 unless a folder's labels say otherwise).

    Raises FacesError for an unknown or repeated name, listing the valid ones.
    """
    if requested == "all" and tuple(known) != tuple(CELEBA_ATTRIBUTES):
        raise FacesError(f"data.attributes all means CelebA's 40; {where} are {' '.join(known)}: list those you want")
    names = parse_attribute_names(requested)
    unknown = [name for name in names if name not in known]
    if unknown:
        suffix = " (or 'all')" if tuple(known) == tuple(CELEBA_ATTRIBUTES) else ""
        raise FacesError(
            f"data.attributes: unknown attribute {', '.join(unknown)}; {where} are {' '.join(known)}{suffix}"
        )
    return names


def attribute_columns(names: Sequence[str], known: Sequence[str] = CELEBA_ATTRIBUTES) -> list[int]:
    """Columns of ``names`` in the data's attribute rows (CelebA's 40 unless ``known`` says otherwise)."""
    return [list(known).index(name) for name in names]


def parse_attribute_values(text: str | None, names: Sequence[str], fractions: bool = False) -> dict[str, float]:
    """``"Eyeglasses=1,Male=0"`` -> ``{"Eyeglasses": 1.0, "Male": 0.0}``, checked against ``names``.

    Values are 0 or 1 (CelebA's attributes are binary), or with ``fractions`` any number in
    [0, 1] (a slider's position: G takes values in between); an attribute the model was not
    trained on is an error that lists those it was.
    """
    if not text:
        return {}
    values: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        number = _number(value) if sep else None
        if fractions and (number is None or not 0.0 <= number <= 1.0):
            raise FacesError(f"attribute value {item.strip()!r} is not NAME=V with V in [0, 1] (e.g. Eyeglasses=1)")
        if not fractions and (not sep or value.strip() not in ("0", "1")):
            raise FacesError(f"attribute value {item.strip()!r} is not NAME=0 or NAME=1 (e.g. Eyeglasses=1,Male=0)")
        if name not in names:
            known = " ".join(names) if names else "none: it is unconditional"
            raise FacesError(f"the model was not trained on attribute {name!r}; its attributes are {known}")
        values[name] = float(value)
    return values


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number else None  # NaN is not a position


def dataset_attributes(dataset: Dataset) -> torch.Tensor:
    """Every row of a face dataset's 40 attributes, (N, 40) float in {0, 1}, without its images.

    Reads the attribute arrays of the datasets this package makes (``attributes`` of CelebA's
    listing and of a prepared array, the drawn faces' tensors) directly; any other dataset is
    read item by item.
    """
    if isinstance(getattr(dataset, "attributes", None), torch.Tensor):
        return dataset.attributes  # type: ignore[attr-defined]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return dataset_attributes(dataset.dataset)[list(dataset.indices)]
    return torch.stack([dataset[i][1] for i in range(len(dataset))])  # type: ignore[arg-type]


# Attributes that cannot be on together: switching one on switches the others off (a face has one
# hair colour, or none when bald; a beard or moustache is not "no beard").
EXCLUSIVE = (
    ("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"),
    ("No_Beard", "Goatee"),
    ("No_Beard", "Mustache"),
)


def switch_on(rows: torch.Tensor, names: Sequence[str], name: str) -> torch.Tensor:
    """``rows`` (B, A) with attribute ``name`` set to 1 and those exclusive with it set to 0."""
    rows = rows.clone()
    rows[:, names.index(name)] = 1.0
    for group in EXCLUSIVE:
        if name in group:
            for other in group:
                if other != name and other in names:
                    rows[:, names.index(other)] = 0.0
    return rows
