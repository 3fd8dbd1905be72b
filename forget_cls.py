"""Which classes to forget, and the paper's per-class datagen thresholds.

FORGET_CLASSES: the paper's benchmark (SPEC §4) plus the demo world's classes.
DATAGEN_SETTINGS[arch][dataset][class] = (high_prob, sub_prob): the paper tunes the acceptance
threshold of synthetic images per class (0.6-0.99); classes not listed use datagen's defaults.
"""
from __future__ import annotations

FORGET_CLASSES: dict[str, list[str]] = {
    "StanfordDogs": ["Pekinese", "toy poodle", "Scotch terrier"],
    "StanfordCars": ["2009 Spyker C8 Coupe", "2010 Dodge Ram Pickup 3500 Crew Cab", "2011 Ford Ranger SuperCab"],
    "Caltech101": ["euphonium", "minaret", "platypus"],
    "OxfordFlowers": ["gazania", "tree mallow", "trumpet creeper"],
    # the embedded demo world
    "Digits": ["three"],
    "Shapes": ["red star"],  # its words name other classes too (blue star, red circle)
}

# The datasets evaluated together after every class (the paper evaluates its four after each one).
WORLDS: dict[str, list[str]] = {
    "benchmark": ["StanfordDogs", "StanfordCars", "Caltech101", "OxfordFlowers"],
    "demo": ["Digits", "Shapes"],
}

DATAGEN_SETTINGS: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "RN50": {
        "OxfordFlowers": {"gazania": (0.7, 0.025), "trumpet creeper": (0.7, 0.025), "tree mallow": (0.7, 0.0)},
        "StanfordCars": {c: (0.7, 0.025) for c in FORGET_CLASSES["StanfordCars"]},
        "Caltech101": {"minaret": (0.7, 0.025), "platypus": (0.7, 0.025), "euphonium": (0.75, 0.025)},
        "StanfordDogs": {"Scotch terrier": (0.7, 0.025), "toy poodle": (0.6, 0.025), "Pekinese": (0.98, 0.0)},
    },
    "ViT-B-16": {
        "StanfordDogs": {"Scotch terrier": (0.7, 0.025), "toy poodle": (0.7, 0.025), "Pekinese": (0.99, 0.025)},
        "StanfordCars": {"2010 Dodge Ram Pickup 3500 Crew Cab": (0.9, 0.025),
                         "2011 Ford Ranger SuperCab": (0.6, 0.025), "2009 Spyker C8 Coupe": (0.8, 0.025)},
        "OxfordFlowers": {"gazania": (0.9, 0.025), "tree mallow": (0.85, 0.025), "trumpet creeper": (0.6, 0.025)},
        "Caltech101": {c: (0.99, 0.025) for c in FORGET_CLASSES["Caltech101"]},
    },
    "demo": {},  # the demo uses datagen's defaults
}


def datagen_setting(arch_tag: str, dataset: str, classname: str) -> tuple[float, float] | None:
    """The paper's (high_prob, sub_prob) for a class, or None to use the command-line values."""
    return DATAGEN_SETTINGS.get(arch_tag, {}).get(dataset, {}).get(classname)


def default_eval_ds(run_ds: list[str]) -> list[str]:
    """--run_ds, then every dataset of each world it touches (case-insensitive)."""
    asked = {d.lower() for d in run_ds}
    worlds = [d for w in WORLDS.values() if asked & {x.lower() for x in w} for d in w]
    return list(dict.fromkeys(run_ds + [d for d in worlds if d.lower() not in asked]))


def resolve_targets(datasets: dict, forget_labels: str | None,
                    requested: str = "") -> tuple[list[tuple[str, str]], list[str]]:
    """(dataset, class) pairs to forget, and every problem found.

    Without `forget_labels`, each dataset's FORGET_CLASSES; with it (comma-separated names), each
    name is looked up among the classes of the given datasets. `requested`: the --run_ds text; a
    default class of a requested dataset that could not be read is not reported again.
    """
    from common import close_names
    targets, problems = [], []
    if forget_labels is None:
        for name, ds in datasets.items():
            if name not in FORGET_CLASSES:
                problems.append(f"no default forget classes for {name}: pass --forget_labels")
            for c in FORGET_CLASSES.get(name, []):
                if c in ds.classnames:
                    targets.append((name, c))
                else:
                    problems.append(f"{name} has no class '{c}'{close_names(c, ds.classnames)}")
        return targets, problems
    asked = {n.strip().lower() for n in requested.split(",")}
    given = [x.strip() for x in forget_labels.split(",") if x.strip()]
    labels = list(dict.fromkeys(given))
    problems += [f"--forget_labels names '{c}' {given.count(c)} times: give each class once" for c in labels
                 if given.count(c) > 1]
    if not labels:
        problems.append("--forget_labels names no class")
    for label in labels:
        owners = [n for n, ds in datasets.items() if label in ds.classnames]
        if owners:
            targets += [(n, label) for n in owners]
            continue
        elsewhere = [n for n, cs in FORGET_CLASSES.items() if label in cs and n not in datasets]
        if elsewhere and elsewhere[0].lower() in asked:
            continue  # its dataset was asked for but could not be read: that problem is reported already
        if elsewhere:
            problems.append(f"class '{label}' belongs to {elsewhere[0]}, which is not in --run_ds")
        else:
            every = [c for ds in datasets.values() for c in ds.classnames]
            problems.append(f"unknown class '{label}' in {', '.join(datasets) or 'no dataset'}"
                            f"{close_names(label, every)}")
    return targets, problems
