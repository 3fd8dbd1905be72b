"""The synthetic forget set on disk, and how the trainer sees it.

Datagen optimises images `x` in ImageNet-normalised pixel space (SPEC §1). The trainer loads
`model_view(x)`: un-normalise, min-max rescale each image to [0, 1], CLIP-normalise. Datagen
judges acceptance on exactly that view, so every saved image is what the trainer will use.

File: `<out_dir>/<dataset>/<class>.pt` (dict of tensors + `meta`, loadable with
`torch.load(..., weights_only=True)`) and a PNG grid `<class>.png` beside it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import open_clip
import torch

from common import UserError, atomic_torch_save, file_hash, torch_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = 1


def _col(v, ref: torch.Tensor) -> torch.Tensor:
    return _constant(tuple(v), ref.dtype, ref.device)


@lru_cache(maxsize=64)
def _constant(v: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) per-channel constants, made once per device: on CUDA each new one is a blocking copy."""
    return torch.tensor(v, dtype=dtype, device=device).view(1, 3, 1, 1)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised values -> pixel values (not yet clipped to [0, 1])."""
    return x * _col(IMAGENET_STD, x) + _col(IMAGENET_MEAN, x)


def pixel_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel range of normalised values that maps to pixels in [0, 1], computed as the paper's
    code does ((0 - mean) / std, (1 - mean) / std): `lo + 1 / std` differs by one ulp on two
    channels, and many clamped steps carry that apart."""
    mean, std = _col(IMAGENET_MEAN, x), _col(IMAGENET_STD, x)
    return -mean / std, (1 - mean) / std


def model_view(x: torch.Tensor, mean, std) -> torch.Tensor:
    """What the trainer feeds the model: un-normalise, min-max rescale per image, CLIP-normalise."""
    p = unnormalise(x)
    flat = p.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    p = (p - lo) / (hi - lo).clamp_min(1e-8)
    return (p - _col(mean, x)) / _col(std, x)


def clip_norm(model: torch.nn.Module) -> tuple[tuple, tuple]:
    """The model's CLIP normalisation (mean, std), from open_clip's preprocessing config."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    return tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


def safe_name(classname: str) -> str:
    return classname.replace("/", "_")


# whose retain sets (datagen.py --retain_per_class, train.py's image-side methods): the forget classes' own
# datasets, or every dataset of the run
RETAIN_SCOPES = ("own", "all")


def synthetic_path(out_dir: str | Path, dataset: str, classname: str) -> Path:
    return Path(out_dir) / dataset / f"{safe_name(classname)}.pt"


def save_synthetic(path: Path, images: torch.Tensor, probs: torch.Tensor, steps: torch.Tensor,
                   thresholds: torch.Tensor, meta: dict) -> None:
    """Write the tensor file atomically, then a PNG grid of the images as the trainer sees them."""
    from torchvision.utils import save_image
    meta = {**meta, "format": FORMAT_VERSION, "n_images": int(len(images))}
    atomic_torch_save(path, {"images": images.cpu().float(), "probs": probs.cpu().float(),
                             "steps": steps.cpu().long(), "thresholds": thresholds.cpu().float(), "meta": meta})
    if len(images):
        p = unnormalise(images.cpu().float())
        flat = p.flatten(1)
        p = (p - flat.min(1).values.view(-1, 1, 1, 1)) / (flat.max(1).values - flat.min(1).values).view(-1, 1, 1, 1)
        if p.shape[-1] < 96:  # small images: enlarge (nearest) so the grid is readable
            p = torch.nn.functional.interpolate(p, scale_factor=96 // p.shape[-1], mode="nearest")
        tmp = path.with_suffix(".tmp.png")
        save_image(p, tmp, nrow=8, padding=2)
        tmp.replace(path.with_suffix(".png"))


def read_synthetic(path: Path) -> dict:
    """Load a synthetic-set file safely; a corrupt or foreign file is a user error naming it."""
    try:
        data = torch_load(path)
    except FileNotFoundError:
        raise UserError(f"no synthetic images at {path}: run datagen.py first (see README)") from None
    except ValueError as e:
        raise UserError(f"synthetic-image file {path} is corrupt or not ours: {e}; "
                        "delete it and rerun datagen.py") from None
    if not isinstance(data, dict) or not torch.is_tensor(data.get("images")) or not isinstance(data.get("meta"), dict):
        raise UserError(f"synthetic-image file {path} is not a datagen.py file; delete it and rerun datagen.py")
    return data


def noise_seed(meta: dict) -> int:
    """The seed of a synthetic set's starting noise (datagen --noise_seed, else --seed)."""
    return meta.get("noise_seed", meta.get("seed"))


def synthetic_problems(data: dict, model_key: str, image_size: int | None, dataset: str, classname: str,
                       class_index: int) -> list[tuple[str, str]]:
    """(what is wrong, what to do) for each reason a synthetic set is unusable for this model and class
    (image_size None: any size). The class is checked by dataset and name as well as by index: a file
    copied from another dataset's class of the same index would otherwise train on the wrong images."""
    meta, images = data["meta"], data["images"]
    problems = []
    if meta.get("model_key") != model_key:
        problems.append((f"was made by model '{meta.get('model_key')}', not '{model_key}'",
                         "rerun datagen.py for this model"))
    if images.ndim != 4 or (image_size is not None and tuple(images.shape[1:]) != (3, image_size, image_size)):
        problems.append((f"holds images of shape {tuple(images.shape[1:])}, but the model takes "
                         f"(3, {image_size}, {image_size})", "rerun datagen.py for this model"))
    if len(images) == 0:
        problems.append(("holds no images", "rerun datagen.py (lower --high_prob if no image is accepted)"))
    elif not images.is_floating_point() or not torch.isfinite(images).all():
        problems.append(("holds non-finite or non-float pixel values", "delete it and rerun datagen.py"))
    made_for = (meta.get("dataset"), meta.get("classname"))
    if made_for != (dataset, classname):
        problems.append((f"holds images of {made_for[0]}/{made_for[1]}, not {dataset}/{classname}",
                         "rerun datagen.py for this class"))
    elif meta.get("class_index") != class_index:
        problems.append((f"was made for class index {meta.get('class_index')}, not {class_index} (another class "
                         f"list of {dataset}?)", "rerun datagen.py for this class"))
    return problems


def check_synthetic(data: dict, path: Path, model_key: str, image_size: int | None, dataset: str, classname: str,
                    class_index: int) -> list[str]:
    """One line per problem that makes the synthetic set at `path` unusable for this model and class."""
    return [f"{path} {what}; {advice}"
            for what, advice in synthetic_problems(data, model_key, image_size, dataset, classname, class_index)]


def file_record(path: Path, meta: dict) -> dict:
    """Which synthetic file a run trained on, for its logs: path, content hash and noise seed."""
    return {"path": str(path), "sha1": file_hash(path), "noise_seed": noise_seed(meta)}


def augment(x: torch.Tensor, generator: torch.Generator, shift: float = 0.125, scale: float = 0.2,
            noise: float = 0.1, blur_p: float = 0.0) -> torch.Tensor:
    """Random scale (1 +- scale), shift (+- shift of the image size), optional blur, pixel noise, on
    model-ready images; each image gets its own draw (from `generator`, on its device)."""
    b = len(x)
    r = torch.rand(b, 3, generator=generator, device=generator.device).to(x.device)
    s = 1 + (r[:, 0] - 0.5) * 2 * scale
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = (r[:, 1:] - 0.5) * 4 * shift  # affine_grid units: the image spans [-1, 1]
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    if blur_p > 0:
        from torchvision.transforms.functional import gaussian_blur
        pick = (torch.rand(b, generator=generator, device=generator.device) < blur_p).to(x.device)
        x = torch.where(pick.view(-1, 1, 1, 1), gaussian_blur(x, [3, 3], [0.8, 0.8]), x)
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    return x + noise * eps
