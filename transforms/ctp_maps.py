"""CT perfusion map transforms for the MS-DCNN stroke-lesion bundle (Liu et al., ISLES 2018).

* :class:`LoadCTPMaps` / :class:`LoadCTPMapsd`: the four maps (CBF, CBV, MTT, Tmax) as one
  ``(4, X, Y, Z)`` MetaTensor in :data:`CTP_MAP_ORDER`, read either from one file per map (the ISLES
  2018 layout, through the datalist) or from one stacked 4-channel NIfTI per case (MONAI Label and
  single-file users). A missing map raises :class:`ctbundles.errors.CTInputError` naming it.
* :class:`NormalizeCTPMaps` / :class:`NormalizeCTPMapsd`: each map scaled to [0, 1] by its own rule
  (:data:`DEFAULT_MAP_RULES`; the paper gives none, see the docstring for the reasons).
* :class:`LesionVolume` / :class:`LesionVolumed`: the lesion volume of a binary prediction in mm^3 and
  mL, as a report the scoring handler (``CalciumScoreHandler(report_key="lesion_volume")``) writes
  as one JSON per case and a row of the cohort CSV.

Resizing slices to 160 x 160 and back, median filtering and thresholding reuse MONAI (``Resized``,
``Invertd``, ``MedianSmoothd`` with radius (1, 1, 0), ``AsDiscreted``); the bundle configs chain them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Transform

from ctbundles.errors import CTInputError
from ctbundles.networks.ms_dcnn import CTP_MAP_ORDER

__all__ = [
    "CTP_MAP_ORDER",
    "DEFAULT_MAP_RULES",
    "MAP_KEY_ALIASES",
    "LesionVolume",
    "LesionVolumed",
    "LoadCTPMaps",
    "LoadCTPMapsd",
    "NormalizeCTPMaps",
    "NormalizeCTPMapsd",
    "normalize_map",
]

#: Item keys accepted for each map: the map name, the ISLES 2018 modality name, lower case.
MAP_KEY_ALIASES: dict[str, tuple[str, ...]] = {
    name: (name, f"CT_{name}", name.lower(), f"ct_{name.lower()}") for name in CTP_MAP_ORDER
}

#: Per-map normalisation (see :func:`normalize_map`). CBF and CBV are taken relative to the case's
#: median over perfused tissue (clinical core thresholds are relative: rCBF < 30 %), clipped at 2x;
#: MTT and Tmax are times in seconds with absolute clinical meaning (Tmax > 6 s = hypoperfusion),
#: so they keep a fixed scale, clipped at 20 s.
DEFAULT_MAP_RULES: dict[str, dict[str, Any]] = {
    "CBF": {"mode": "relative", "upper": 2.0},
    "CBV": {"mode": "relative", "upper": 2.0},
    "MTT": {"mode": "fixed", "upper": 20.0},
    "Tmax": {"mode": "fixed", "upper": 20.0},
}


def _source_name(source: Any) -> str:
    return str(source) if not isinstance(source, Mapping) else os.path.commonpath([str(v) for v in source.values()])


class LoadCTPMaps(Transform):
    """Load the four CT perfusion maps as one ``(4, X, Y, Z)`` float32 MetaTensor (order CBF, CBV, MTT, Tmax).

    ``source`` is a mapping map name -> file (the ISLES 2018 layout: one NIfTI per map, every map on
    the same grid), a list of the four files in :data:`CTP_MAP_ORDER` (the ``image`` entry of
    ``ctbundles.datasets.isles2018.build_datalist``), one path to a stacked 4-channel NIfTI (shape
    (X, Y, Z, 4), channels in :data:`CTP_MAP_ORDER`), or that image already loaded (a MetaTensor
    from ``LoadImage``, channel-last with ``original_channel_dim`` -1, or channel-first). With separate files, ``meta["filename_or_obj"]`` is the folder holding
    them (the ISLES case folder, so outputs are named after the case) and ``meta["ctp_sources"]``
    lists the files.

    Args:
        map_order: channel order of the result (and of a stacked file).
        atol: tolerance on the affine when checking that the maps share one grid (mm).

    Raises:
        CTInputError: a map is missing or unreadable, a stacked file has not 4 channels, or the maps
            lie on different grids; the message names the file and the problem.
    """

    def __init__(self, map_order: Sequence[str] = CTP_MAP_ORDER, atol: float = 1e-3) -> None:
        self.map_order = tuple(map_order)
        self.atol = atol
        self._loader = LoadImage(image_only=True, dtype=np.float32)

    def _load(self, path: Any) -> MetaTensor:
        if not os.path.exists(str(path)):
            raise CTInputError(f"{path}: file not found")
        try:
            return self._loader(str(path))
        except Exception as err:  # the readers raise many types; report the file
            raise CTInputError(f"{path}: cannot read as an image ({err})") from err

    def __call__(self, source: str | os.PathLike | Mapping[str, Any] | Sequence[Any] | torch.Tensor) -> MetaTensor:
        if isinstance(source, Mapping):
            return self._stack(source)
        if isinstance(source, (list, tuple)):
            if len(source) != len(self.map_order):
                raise CTInputError(
                    f"{_source_name(dict(enumerate(source))) if source else source}: {len(source)} map file(s) given, "
                    f"expected {len(self.map_order)} in the order {', '.join(self.map_order)}"
                )
            return self._stack(dict(zip(self.map_order, source)))
        img = source if isinstance(source, (torch.Tensor, np.ndarray)) else self._load(source)
        if not isinstance(img, MetaTensor):  # already loaded without metadata: channel-first expected
            img = MetaTensor(torch.as_tensor(img, dtype=torch.float32), meta={"original_channel_dim": 0})
        if img.ndim != 4 or img.meta.get("original_channel_dim", 0) in (None, "no_channel"):
            raise CTInputError(
                f"{source}: expected one stacked 4-channel image (X, Y, Z, {len(self.map_order)}) with maps "
                f"{', '.join(self.map_order)}, got shape {tuple(img.shape)}"
            )
        img = EnsureChannelFirst()(img)
        if img.shape[0] != len(self.map_order):
            raise CTInputError(
                f"{source}: stacked image has {img.shape[0]} channels, expected {len(self.map_order)} "
                f"({', '.join(self.map_order)})"
            )
        img.meta["ctp_map_order"] = list(self.map_order)
        return img

    def _stack(self, sources: Mapping[str, Any]) -> MetaTensor:
        missing = [m for m in self.map_order if sources.get(m) in (None, "")]
        if missing:
            raise CTInputError(f"{_source_name({k: v for k, v in sources.items() if v})}: missing CT perfusion map(s) {missing}")
        maps = [self._load(sources[m]) for m in self.map_order]
        ref = maps[0]
        for name, img in zip(self.map_order[1:], maps[1:]):
            same_shape = tuple(img.shape) == tuple(ref.shape)
            if not same_shape or not np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=self.atol):
                raise CTInputError(
                    f"{sources[name]}: map {name} is on another grid than {sources[self.map_order[0]]} "
                    f"(shape {tuple(img.shape)} vs {tuple(ref.shape)}, affine\n{np.asarray(img.affine)}\nvs\n"
                    f"{np.asarray(ref.affine)})"
                )
        if ref.ndim != 3:
            raise CTInputError(f"{sources[self.map_order[0]]}: expected a 3D map, got shape {tuple(ref.shape)}")
        meta = dict(ref.meta)
        meta["filename_or_obj"] = _source_name({m: sources[m] for m in self.map_order})
        meta["ctp_sources"] = {m: str(sources[m]) for m in self.map_order}
        meta["ctp_map_order"] = list(self.map_order)
        meta["original_channel_dim"] = 0
        data = torch.stack([torch.as_tensor(m.as_tensor(), dtype=torch.float32) for m in maps])
        return MetaTensor(data, affine=ref.affine, meta=meta)


class LoadCTPMapsd(MapTransform):
    """Dictionary version of :class:`LoadCTPMaps`, writing the stacked maps under ``keys`` (``"image"``).

    The maps are taken from the item's per-map keys when any is present (``map_keys``; by default
    each map's aliases in :data:`MAP_KEY_ALIASES`, e.g. ``"Tmax"`` or ``"CT_Tmax"``), otherwise
    ``item[key]`` is read as one stacked 4-channel file. Items that name only some maps raise
    :class:`CTInputError` naming the missing ones.

    Args:
        keys: output key (and key of a stacked file), ``"image"``.
        map_keys: map name -> item key, overriding the aliases.
        map_order: channel order.
        allow_missing_keys: passed to ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        map_keys: Mapping[str, str] | None = None,
        map_order: Sequence[str] = CTP_MAP_ORDER,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCTPMaps(map_order)
        self.map_order = tuple(map_order)
        self.map_keys = dict(map_keys) if map_keys else None

    def _find_maps(self, d: Mapping[Hashable, Any]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in self.map_order:
            candidates = (self.map_keys[name],) if self.map_keys and name in self.map_keys else MAP_KEY_ALIASES.get(name, (name,))
            for key in candidates:
                if d.get(key) not in (None, ""):
                    found[name] = d[key]
                    break
        return found

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        maps = self._find_maps(d)
        if maps:
            if len(maps) < len(self.map_order):
                missing = [m for m in self.map_order if m not in maps]
                raise CTInputError(
                    f"{_source_name(maps)}: missing CT perfusion map(s) {missing} (item keys {sorted(map(str, d))})"
                )
            d[key] = self.loader(maps)
        elif d.get(key) not in (None, ""):
            d[key] = self.loader(d[key])
        elif not self.allow_missing_keys:
            raise CTInputError(
                f"no CT perfusion input in item with keys {sorted(map(str, d))}: give '{key}' (one stacked "
                f"4-channel NIfTI) or the maps {list(self.map_order)}"
            )
        return d


def normalize_map(values: np.ndarray | torch.Tensor, mode: str, upper: float) -> torch.Tensor:
    """Scale one perfusion map to [0, 1].

    ``mode="fixed"``: ``clip(x, 0, upper) / upper`` (absolute units, e.g. seconds).
    ``mode="relative"``: ``clip(x / m, 0, upper) / upper`` with ``m`` the median of the positive
    voxels of the case (perfused tissue; ISLES maps are 0 outside the brain). A map with no positive
    voxel gives zeros.
    """
    x = torch.as_tensor(values, dtype=torch.float32)
    if upper <= 0:
        raise ValueError(f"upper must be positive, got {upper}")
    if mode == "relative":
        positive = x[x > 0]
        if positive.numel() == 0:
            return torch.zeros_like(x)
        x = x / float(np.median(positive.numpy()))
    elif mode != "fixed":
        raise ValueError(f"normalisation mode must be 'fixed' or 'relative', got {mode!r}")
    return torch.clamp(x, 0.0, upper) / upper


class NormalizeCTPMaps(Transform):
    """Normalise each channel of a stacked ``(4, X, Y, Z)`` map image by its own rule.

    The paper (section 3.1) resizes the maps but gives no intensity normalisation; the rules of
    :data:`DEFAULT_MAP_RULES` are this project's choice: CBF and CBV relative to the case median
    over perfused tissue (clipped at 2x the median), MTT and Tmax in seconds (clipped at 20 s),
    each scaled to [0, 1].

    Args:
        rules: map name -> {"mode": "fixed" | "relative", "upper": float}; defaults to
            :data:`DEFAULT_MAP_RULES`.
        map_order: channel order of the input.
    """

    def __init__(self, rules: Mapping[str, Mapping[str, Any]] | None = None, map_order: Sequence[str] = CTP_MAP_ORDER):
        self.rules = {k: dict(v) for k, v in (rules or DEFAULT_MAP_RULES).items()}
        self.map_order = tuple(map_order)
        missing = [m for m in self.map_order if m not in self.rules]
        if missing:
            raise ValueError(f"no normalisation rule for map(s) {missing}")

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        if img.shape[0] != len(self.map_order):
            raise ValueError(f"expected {len(self.map_order)} channels {self.map_order}, got shape {tuple(img.shape)}")
        out = torch.stack([normalize_map(img[i], **self.rules[m]) for i, m in enumerate(self.map_order)])
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            out.meta["ctp_normalization"] = {m: self.rules[m] for m in self.map_order}
        return out


class NormalizeCTPMapsd(MapTransform):
    """Dictionary version of :class:`NormalizeCTPMaps`."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        rules: Mapping[str, Mapping[str, Any]] | None = None,
        map_order: Sequence[str] = CTP_MAP_ORDER,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeCTPMaps(rules, map_order)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


def _spacing(img: Any, spacing: Sequence[float] | None) -> np.ndarray:
    if spacing is not None:
        return np.asarray(spacing, dtype=float)
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=float)
    raise ValueError("spacing is needed for an image without affine")


class LesionVolume(Transform):
    """Lesion volume of a binary mask (channel-first ``(1, X, Y, Z)`` or spatial ``(X, Y, Z)``).

    Returns a report ``{"volume_ml", "total_mm3", "ln_total", "n_voxels", "voxel_volume_mm3",
    "per_label": {"lesion": {...}}, "parameters": {...}, "source_image", "warnings"}``. ``total_mm3``
    and ``per_label`` follow the scoring package's volume report, so ``CalciumScoreHandler`` writes
    it (JSON per case, cohort CSV). Voxels above ``threshold`` count (0.5 on a binary mask).

    Args:
        threshold: foreground threshold.
        spacing: voxel size in mm; by default the MetaTensor's ``pixdim``.
        parameters: extra entries recorded under ``parameters`` (e.g. the post-processing used).
    """

    def __init__(self, threshold: float = 0.5, spacing: Sequence[float] | None = None, parameters: Mapping | None = None):
        self.threshold = threshold
        self.spacing = spacing
        self.parameters = dict(parameters or {})

    def __call__(self, mask: torch.Tensor | np.ndarray) -> dict[str, Any]:
        spacing = _spacing(mask, self.spacing)
        voxel_mm3 = float(np.prod(spacing[-3:]))
        n = int((torch.as_tensor(mask) > self.threshold).sum())
        total = n * voxel_mm3
        source = mask.meta.get("filename_or_obj") if isinstance(mask, MetaTensor) else None
        warnings = [] if n else ["no lesion predicted"]
        return {
            "volume_ml": total / 1000.0,
            "total_mm3": total,
            "ln_total": math.log(total + 1.0),
            "n_voxels": n,
            "voxel_volume_mm3": voxel_mm3,
            "per_label": {"lesion": {"volume_mm3": total, "ln_volume": math.log(total + 1.0), "n_voxels": n}},
            "source_image": None if source is None else str(source),
            "warnings": warnings,
            "parameters": {"threshold": self.threshold, "spacing_mm": [float(s) for s in spacing[-3:]], **self.parameters},
        }


class LesionVolumed(MapTransform):
    """Dictionary version of :class:`LesionVolume`: reads ``keys`` (``"pred"``), writes ``report_key``."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        report_key: str = "lesion_volume",
        threshold: float = 0.5,
        parameters: Mapping | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.report_key = report_key
        self.volume = LesionVolume(threshold=threshold, parameters=parameters)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.report_key] = self.volume(d[key])
        return d
