"""What the package offers, known without importing torch: algorithms, data modules, shipped configs.

``lightning-meta --help`` and ``lightning-meta list`` print these tables in a fraction of a second;
importing the classes themselves would load torch and Lightning first (several seconds).  So the
tables below are static, and ``tests/test_launcher.py`` fails when they drift from the package.
The shipped configs are read from disk at run time: ``lightning_meta/configs`` links to the
repository's ``configs/`` and is package data in a wheel.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lightning_meta.errors import ConfigurationError

CONFIG_DIR = (Path(__file__).parent / "configs").resolve()
"""The shipped ``*.yaml`` configs (the repository's ``configs/``, or the installed package data)."""

SUBCOMMANDS = ("fit", "validate", "test", "predict", "list")

_SUMMARY_CHARS = 60
"""A config summary longer than this is cut at its last comma within the limit."""


@dataclass(frozen=True)
class Entry:
    """One public class: its name, the ``class_path`` a config gives, and what it is in one line."""

    name: str
    class_path: str
    summary: str


ALGORITHMS: tuple[Entry, ...] = (
    Entry("MAML", "lightning_meta.MAML", "a learned initialisation adapted by gradient steps (Finn et al. 2017)"),
    Entry("MetaSGD", "lightning_meta.MetaSGD", "MAML that also learns a step size per weight (Li et al. 2017)"),
    Entry("ANIL", "lightning_meta.ANIL", "MAML adapting only the head on learned features (Raghu et al. 2020)"),
    Entry("IMAML", "lightning_meta.IMAML",
          "MAML with implicit gradients of a proximal inner problem (Rajeswaran et al. 2019)"),
    Entry("Reptile", "lightning_meta.Reptile",
          "moves the weights towards per-task fine-tuned copies (Nichol et al. 2018)"),
    Entry("PrototypicalNetwork", "lightning_meta.PrototypicalNetwork",
          "nearest class mean of support embeddings (Snell et al. 2017)"),
    Entry("MatchingNetwork", "lightning_meta.MatchingNetwork", "attention over the support set (Vinyals et al. 2016)"),
    Entry("RelationNetwork", "lightning_meta.RelationNetwork",
          "a learned relation module scores query-class pairs (Sung et al. 2018)"),
    Entry("SiameseNetwork", "lightning_meta.SiameseNetwork",
          "same/different pair scores, one-shot by best match (Koch et al. 2015)"),
    Entry("SNAIL", "lightning_meta.SNAIL",
          "attention and temporal convolutions over the support set (Mishra et al. 2018)"),
    Entry("MANN", "lightning_meta.MANN", "LSTM controller with an external memory (Santoro et al. 2016)"),
    Entry("MetaLearnerLSTM", "lightning_meta.MetaLearnerLSTM",
          "an LSTM learns to train the learner's weights (Ravi & Larochelle 2017)"),
    Entry("Baseline", "lightning_meta.Baseline",
          "pre-train a classifier, fine-tune a linear head per task (Chen et al. 2019)"),
    Entry("BaselinePlusPlus", "lightning_meta.BaselinePlusPlus",
          "Baseline with a cosine classifier head (Chen et al. 2019)"),
    Entry("DomainAdversarial", "lightning_meta.DomainAdversarial",
          "domain adaptation by gradient reversal (Ganin & Lempitsky 2015)"),
    Entry("MAMLPolicyGradient", "lightning_meta.MAMLPolicyGradient",
          "MAML for reinforcement learning, TRPO or PPO outer step (Finn et al. 2017; Rothfuss et al. 2019)"),
    Entry("HyperparameterLearner", "lightning_meta.HyperparameterLearner",
          "learns inner rates, momenta or example weights by hypergradients (Maclaurin et al. 2015)"),
    Entry("MetaGAN", "lightning_meta.MetaGAN",
          "a task-conditioned generator adds a fake class to a few-shot classifier (Zhang et al. 2018)"),
    Entry("FIGR", "lightning_meta.FIGR",
          "few-shot image generation: a WGAN-GP meta-trained with Reptile (Clouatre & Demers 2019)"),
    Entry("RL2", "lightning_meta.RL2", "a recurrent policy that learns within a trial, trained with PPO (Duan et al. 2016)"),
)

DATA_MODULES: tuple[Entry, ...] = (
    Entry("SinusoidDataModule", "lightning_meta.SinusoidDataModule", "sinusoid regression tasks, A sin(x - phase)"),
    Entry("LinearDataModule", "lightning_meta.LinearDataModule", "linear regression tasks, slope * x + intercept"),
    Entry("OmniglotDataModule", "lightning_meta.OmniglotDataModule",
          "Omniglot: 1623 handwritten characters of 50 alphabets"),
    Entry("MiniImageNetDataModule", "lightning_meta.MiniImageNetDataModule",
          "mini-ImageNet: 100 classes of 84x84 colour images"),
    Entry("TieredImageNetDataModule", "lightning_meta.TieredImageNetDataModule", "tiered-ImageNet: 351/97/160 classes (learn2learn's pickles)"),
    Entry("CIFARFSDataModule", "lightning_meta.CIFARFSDataModule", "CIFAR-FS: CIFAR-100 split 64/16/20 (Bertinetto et al.)"),
    Entry("FC100DataModule", "lightning_meta.FC100DataModule", "FC100: CIFAR-100 split 60/20/20 by super-class"),
    Entry("CUBDataModule", "lightning_meta.CUBDataModule", "CUB-200-2011 birds, Chen et al.'s 100/50/50 split"),
    Entry("AircraftDataModule", "lightning_meta.AircraftDataModule", "FGVC-Aircraft: 100 variants, Meta-Dataset's 70/15/15 split"),
    Entry("VGGFlowersDataModule", "lightning_meta.VGGFlowersDataModule", "Oxford 102 Flowers, Meta-Dataset's 71/15/16 split"),
    Entry("DTDDataModule", "lightning_meta.DTDDataModule", "Describable Textures: 47 classes, Meta-Dataset's 33/7/7 split"),
    Entry("QuickdrawDataModule", "lightning_meta.QuickdrawDataModule", "Quick, Draw! bitmaps, Meta-Dataset's 241/52/52 split"),
    Entry("FungiDataModule", "lightning_meta.FungiDataModule", "FGVCx Fungi 2018, Meta-Dataset's 994/200/200 split"),
    Entry("MetaAlbumDataModule", "lightning_meta.MetaAlbumDataModule", "a Meta-Album data set: labels.csv + info.json + images/"),
    Entry("CSVSplitDataModule", "lightning_meta.CSVSplitDataModule", "any benchmark as train/val/test CSV files (filename,label)"),
    Entry("MultiSourceDataModule", "lightning_meta.MultiSourceDataModule",
          "episodes from several sources, variable ways/shots (Meta-Dataset)"),
    Entry("ClassPartDataModule", "lightning_meta.ClassPartDataModule", "disjoint class parts of another image data module"),
    Entry("ImageFolderDataModule", "lightning_meta.ImageFolderDataModule", "any folder of class sub-folders of images"),
    Entry("NpzDataModule", "lightning_meta.NpzDataModule", "an .npz array of images [classes, samples, H, W]"),
    Entry("DomainPairDataModule", "lightning_meta.DomainPairDataModule",
          "a labelled source and an unlabelled target domain (DomainAdversarial)"),
    Entry("EnvTaskDataModule", "lightning_meta.EnvTaskDataModule",
          "reinforcement-learning tasks of a batched family (2D navigation, bandits, MDPs, gymnasium)"),
    Entry("DigitsDataModule", "lightning_meta.DigitsDataModule",
          "scikit-learn's 8x8 digits as seeded training runs (label noise)"),
)


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (file name without ``.yaml``), sorted by name."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def config_summary(path: Path) -> str:
    """A config's one-line description: the headline of its leading ``#`` comment.

    The headline is the comment's first clause (up to the first ``:``, ``;`` or end of sentence)
    without bracketed remarks such as citations: ``# MAML on sinusoid regression (Finn et al. 2017,
    Sec. 5.1): amplitude ...`` gives ``MAML on sinusoid regression``.
    """
    comment = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.startswith("#"):
                break
            comment.append(line[1:].strip())
    summary = _first_clause(" ".join(comment))
    if len(summary) > _SUMMARY_CHARS and ", " in summary[:_SUMMARY_CHARS]:
        summary = summary[: summary.rindex(", ", 0, _SUMMARY_CHARS)]
    return summary


def _first_clause(text: str) -> str:
    """``text`` up to its first ``:``, ``;`` or sentence end outside brackets, with bracketed parts dropped."""
    kept, depth = [], 0
    for i, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif depth == 0:
            ahead = text[i + 1: i + 3]
            if char in ":;" and ahead[:1] == " " or char == "." and ahead[:1] == " " and ahead[1:].isupper():
                break
            kept.append(char)
    return re.sub(r"\s+", " ", "".join(kept)).replace(" ,", ",").strip(" .,")


def find_config(name_or_path: str) -> str:
    """The config file that ``--config`` names: an existing path as is, else a shipped config.

    ``NAME`` and ``NAME.yaml`` find ``configs/NAME.yaml`` wherever the package is installed; an
    unknown name raises :class:`ConfigurationError` with the closest shipped names.
    """
    if os.path.exists(name_or_path):
        return name_or_path
    configs = shipped_configs()
    name = name_or_path.removesuffix(".yaml")
    if name in configs:
        return str(configs[name])
    close = difflib.get_close_matches(Path(name).name, configs, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else "none has a similar name."
    raise ConfigurationError(
        f"config {name_or_path!r} is neither a file nor a shipped config; {hint} "
        "(`lightning-meta list` shows the shipped configs)"
    )


def listing() -> str:
    """The algorithms, data modules and shipped configs, one line each (``lightning-meta list``)."""
    sections = (
        ("algorithms (model.class_path: lightning_meta.NAME)", [(e.name, e.summary) for e in ALGORITHMS]),
        ("data modules (data.class_path: lightning_meta.NAME)", [(e.name, e.summary) for e in DATA_MODULES]),
        (f"configs (--config NAME, from {CONFIG_DIR})",
         [(name, config_summary(path)) for name, path in shipped_configs().items()]),
    )
    width = max(len(name) for _, rows in sections for name, _ in rows) + 2
    return "\n\n".join(
        title + ":\n" + "\n".join(f"  {name:<{width}}{summary}" for name, summary in rows)
        for title, rows in sections
    )


def help_text() -> str:
    """What ``lightning-meta --help`` prints: usage, the :func:`listing` and two example commands."""
    return (
        f"usage: lightning-meta {{{','.join(SUBCOMMANDS)}}} ...\n"
        "       lightning-meta fit --config CONFIG [--model.init_args.NAME VALUE ...]\n"
        "       lightning-meta SUBCOMMAND --help\n\n"
        "Meta-learning algorithms as PyTorch Lightning modules, run from YAML configs.\n\n"
        f"{listing()}\n\n"
        "examples:\n"
        "  lightning-meta fit --config maml_sinusoid --trainer.max_epochs 5\n"
        "  lightning-meta test --config maml_sinusoid --ckpt_path runs/.../best.ckpt"
    )
