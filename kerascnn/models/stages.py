"""Stage mappings of the backbones: which torchvision-style stage (``conv1``, ``layer1``.., or
``features.N``) a Keras layer name belongs to, and which stages ``--unfreeze`` names. Pure name
rules, no Keras import."""

from __future__ import annotations

import re
from collections.abc import Callable

from kerascnn.errors import KerascnnError

HEAD = "head"
HEAD_ALIASES = {"head": HEAD, "fc": HEAD, "classifier": HEAD}


def choose_stages(unfreeze: str, stages: list[str], model_name: str) -> list[str]:
    """The ``stages`` (in order, ``head`` last) named by ``--unfreeze``; an unknown name is an error."""
    text = unfreeze.strip().lower()
    if text == "none":
        return []
    if text == "all":
        return [s for s in stages if s != HEAD]
    chosen = []
    for item in (part.strip() for part in unfreeze.split(",") if part.strip()):
        name = HEAD_ALIASES.get(item.lower(), item)
        if name not in stages:
            raise KerascnnError(f"--unfreeze: {model_name} has no stage {item!r}; its stages: "
                                f"{', '.join(stages)} (or none, all)", option="unfreeze")
        chosen.append(name)
    return [s for s in stages if s in chosen and s != HEAD]


def resnet_stage(name: str) -> str | None:
    if name.startswith(("conv1", "bn1", "maxpool")):
        return "conv1"
    match = re.match(r"layer(\d)_", name)
    return f"layer{match.group(1)}" if match else None


def keras_resnet_stage(name: str) -> str | None:
    if name.startswith(("conv1_", "pool1_")):
        return "conv1"
    match = re.match(r"conv(\d)_", name)
    return f"layer{int(match.group(1)) - 1}" if match else None


def mobilenet_v2_stage(name: str) -> str | None:
    if name in ("Conv1", "bn_Conv1", "Conv1_relu", "Conv1_pad"):
        return "features.0"
    if name.startswith("expanded_conv_"):
        return "features.1"
    match = re.match(r"block_(\d+)_", name)
    if match:
        return f"features.{int(match.group(1)) + 1}"
    return "features.18" if name in ("Conv_1", "Conv_1_bn", "out_relu") else None


def mobilenet_v3_stage(last: int) -> Callable[[str], str | None]:
    def stage_of(name: str) -> str | None:
        if name in ("conv", "conv_bn"):
            return "features.0"
        match = re.match(r"expanded_conv_(\d+)_", name)
        if match:
            return f"features.{int(match.group(1)) + 1}"
        if name.startswith("expanded_conv_"):
            return "features.1"
        return f"features.{last}" if name in ("conv_1", "conv_1_bn") else None

    return stage_of


def efficientnet_stage(name: str) -> str | None:
    if name.startswith("stem_"):
        return "features.0"
    match = re.match(r"block(\d)[a-z]_", name)
    if match:
        return f"features.{match.group(1)}"
    return "features.8" if name.startswith("top_") else None


def features(n: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in range(n))
