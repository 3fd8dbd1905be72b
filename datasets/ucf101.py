"""UCF101 (CoOp layout): `ucf101/UCF-101-midframes/<Action_Name>/<video>.jpg` + split_zhou_UCF101.json.

The images are the middle frames of the videos (CoOp's UCF-101-midframes.zip). Without the split
file, one is built as CoOp does from the official lists in ucfTrainTestlist/: classInd.txt
(`<1-based label> <Action>`), trainlist01.txt (`<Action>/<video>.avi <label>`) and testlist01.txt
(`<Action>/<video>.avi`). An action is named, and its frame folder is, its CamelCase words joined by
`_` (`ApplyEyeMakeup` -> `Apply_Eye_Makeup`); a video's frame is the .jpg of the same name. A seeded
20% per class of the training videos becomes val.
"""
from __future__ import annotations

import re
from pathlib import Path

from datasets.base import DatasetConfig, label_names
from datasets.splitting import Entry, parse_lines, require_every_class, save_built_split, split_off_val


def action_name(action: str) -> str:
    """'ApplyEyeMakeup' -> 'Apply_Eye_Makeup' (CoOp's class and folder names)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    lists = root / "ucfTrainTestlist"

    def indexed(line: str) -> tuple[int, str]:
        label, action = line.split()
        return int(label) - 1, action

    classes = parse_lines(lists / "classInd.txt", root, cfg, indexed, "<label> <Action>")
    label = {action: i for i, action in classes}
    classnames = label_names(((i, action_name(a)) for i, a in classes), cfg, lists / "classInd.txt")

    def entry(line: str) -> Entry:
        action, video = line.split()[0].split("/")
        return [f"{action_name(action)}/{video.replace('.avi', '.jpg')}", label[action], action_name(action)]

    trainval = parse_lines(lists / "trainlist01.txt", root, cfg, entry, "<Action>/<video>.avi <label>")
    test = parse_lines(lists / "testlist01.txt", root, cfg, entry, "<Action>/<video>.avi")
    require_every_class(classnames, test, cfg, lists / "testlist01.txt")
    return save_built_split(root, cfg, split_off_val(trainval, test, cfg, lists / "trainlist01.txt"),
                            f"{lists}/{{classInd,trainlist01,testlist01}}.txt")
