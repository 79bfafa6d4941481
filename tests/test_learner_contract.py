"""The learner contract, over every learner ``lightning_meta`` exports (issue 15), on tiny models.

For each learner: its hyper-parameters and predictions survive ``load_from_checkpoint(weights_only=True)``;
a task's evaluation values do not depend on the other tasks of its batch; a non-finite loss stops
training before the optimizer step with the weights unchanged; ``evaluate_tasks`` gives one value per
task, the learner's selection metric among them; ``predict_task`` gives class probabilities, or
``predict`` is refused in one line.  And checkpoints written before the root class (commit e898822,
``tests/data``) load, predict as they did and resume training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from toy_learners import RandomImages

import lightning_meta
from lightning_meta import (
    ANIL,
    FIGR,
    IMAML,
    MAML,
    MANN,
    RL2,
    SNAIL,
    Baseline,
    BaselinePlusPlus,
    ConfigurationError,
    DigitsDataModule,
    DomainAdversarial,
    DomainPairDataModule,
    EnvTaskDataModule,
    FineTuningBaseline,
    HyperparameterLearner,
    MAMLPolicyGradient,
    MatchingNetwork,
    MetaGAN,
    MetaLearnerLSTM,
    MetaSGD,
    PrototypicalNetwork,
    RelationNetwork,
    Reptile,
    SiameseNetwork,
    SinusoidDataModule,
)
from lightning_meta.algorithms.learner import Learner
from lightning_meta.callbacks import GeneratedPNG
from lightning_meta.tasks import EnvTaskBatch
from lightning_meta.envs import Navigation2D, TabularMDPs
from lightning_meta.envs.family import TaskFamily
from lightning_meta.models import (
    MLP,
    Conv4,
    DCGANDiscriminator,
    DCGANGenerator,
    GaussianMLPPolicy,
    GRUPolicy,
    TaskConditionedGenerator,
)
from lightning_meta.models.relation import RelationEmbedding

DATA = Path(__file__).resolve().parent / "data"
#: exported classes that are bases to subclass, not learners to train
BASES = {"Learner", "MetaLearner", "MetricLearner", "SequenceLearner"}


def images(**kwargs: Any) -> RandomImages:
    return RandomImages(ways=3, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4,
                        test_episodes=4, **kwargs)


def supervised() -> RandomImages:
    return images(train_batches="supervised", batch_size=8)


def sines() -> SinusoidDataModule:
    return SinusoidDataModule(shots=5, queries=5, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4,
                              test_episodes=4)


def domains() -> DomainPairDataModule:
    return DomainPairDataModule("hanzi", classes=5, batch_size=8, steps_per_epoch=2, val_samples=2, test_samples=2)


def environments(family: TaskFamily, **kwargs: Any) -> EnvTaskDataModule:
    return EnvTaskDataModule(family, rollouts=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4,
                             test_episodes=4, **kwargs)


def digits() -> DigitsDataModule:
    return DigitsDataModule(train_samples=40, val_samples=20, test_samples=20, label_noise=0.25, meta_batch_size=2,
                            steps_per_epoch=2, val_runs=4, test_runs=4)


def hyper_learner() -> HyperparameterLearner:
    learner = HyperparameterLearner(MLP(64, 10, (8,)), inner_steps=3, inner_batch_size=10, learn_momentum="per_step",
                                    learn_example_weights=True)
    learner.ensure_example_weights(40)  # else created at setup, from the data's training set
    return learner


def generator_episodes() -> RandomImages:
    """One class of 4 images per training task (FIGR), 2-way evaluation episodes with 2 real queries a class."""
    return RandomImages(ways=1, shots=4, queries=0, test_ways=2, test_shots=2, test_queries=2, meta_batch_size=2,
                        episodes_per_epoch=4, val_episodes=4, test_episodes=4)


def conv(out: Any = 3, **kwargs: Any) -> Conv4:
    return Conv4(1, out, hidden_channels=4, image_size=8, **kwargs)


def embedding(**kwargs: Any) -> Conv4:
    return conv(None, batch_norm_stats="running", **kwargs)


class Case(NamedTuple):
    model: Callable[[], Learner]
    data: Callable[[], pl.LightningDataModule]


CASES: dict[str, Case] = {
    "MAML": Case(lambda: MAML(conv(), inner_lr=0.1), images),
    "MAML-sine": Case(lambda: MAML(MLP(1, 1, (8,)), inner_lr=0.05, inner_steps=2), sines),
    "ANIL": Case(lambda: ANIL(conv(), inner_lr=0.1), images),
    "MetaSGD": Case(lambda: MetaSGD(conv(), inner_lr=0.1), images),
    "IMAML": Case(lambda: IMAML(conv(), inner_lr=0.1, inner_steps=2, cg_steps=2), images),
    "Reptile": Case(lambda: Reptile(conv(), inner_lr=0.01, inner_steps=2, inner_batch_size=2), images),
    "Reptile-annealed": Case(lambda: Reptile(conv(), inner_lr=0.01, inner_steps=2, inner_batch_size=2,
                                             outer_lr_final=0.0), images),
    "MetaLearnerLSTM": Case(lambda: MetaLearnerLSTM(conv(), inner_steps=2), images),
    "PrototypicalNetwork": Case(lambda: PrototypicalNetwork(embedding()), images),
    "MatchingNetwork": Case(lambda: MatchingNetwork(embedding()), images),
    "RelationNetwork": Case(lambda: RelationNetwork(RelationEmbedding(1, hidden_channels=4, image_size=28),
                                                    relation_channels=4), lambda: images(size=28)),
    "SiameseNetwork": Case(lambda: SiameseNetwork(embedding(), feature_dim=4), images),
    "SNAIL": Case(lambda: SNAIL(embedding(), ways=3, shots=1, attention=[[4, 4], [8, 4]], tc_filters=[4]), images),
    "MANN": Case(lambda: MANN(3, embedding(), controller_size=8, memory_slots=6, memory_width=4, read_heads=2),
                 images),
    "FineTuningBaseline": Case(lambda: FineTuningBaseline(embedding(), num_classes=8, finetune_steps=2), supervised),
    "Baseline": Case(lambda: Baseline(embedding(), num_classes=8, finetune_steps=2), supervised),
    "BaselinePlusPlus": Case(lambda: BaselinePlusPlus(embedding(), num_classes=8, finetune_steps=2), supervised),
    "DomainAdversarial": Case(lambda: DomainAdversarial(Conv4(1, None, hidden_channels=4, batch_norm_stats="running"),
                                                        num_classes=5), domains),
    "MAMLPolicyGradient": Case(lambda: MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(8,)), inner_lr=0.1),
                               lambda: environments(Navigation2D(horizon=5))),
    "HyperparameterLearner": Case(hyper_learner, digits),
    "MetaGAN": Case(lambda: MetaGAN(PrototypicalNetwork(embedding()),
                                    TaskConditionedGenerator(1, 8, noise_dim=4, hidden_channels=4, encoder_channels=4)),
                    images),
    "MetaGAN-maml": Case(lambda: MetaGAN(MAML(conv(), inner_lr=0.1),
                                         TaskConditionedGenerator(1, 8, noise_dim=4, hidden_channels=4,
                                                                  encoder_channels=4)), images),
    "FIGR": Case(lambda: FIGR(DCGANGenerator(4, 1, 8, 2, 1), DCGANDiscriminator(1, 8, 2, 1), inner_steps=2,
                              samples_per_class=2), generator_episodes),
    "RL2": Case(lambda: RL2(GRUPolicy(3, num_actions=2, hidden_size=8), ppo_epochs=2, ppo_minibatches=2),
                lambda: environments(TabularMDPs(states=3, actions=2, horizon=4), episodes_per_trial=2)),
}


def test_every_exported_learner_has_a_case():
    exported = {name for name in lightning_meta.__all__
                if isinstance(getattr(lightning_meta, name), type) and issubclass(getattr(lightning_meta, name), Learner)}
    assert exported - BASES == {name.split("-")[0] for name in CASES}


# ---------------------------------------------------------------------- batches, whatever their kind
def select(value: Any, rows: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)]
    if isinstance(value, dict):  # an environment batch's task parameters
        return {key: select(v, rows) for key, v in value.items()}
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    return value  # shared by the batch's tasks: nothing, an environment family, its collection sizes


def shared(field: dataclasses.Field) -> bool:
    """Whether a batch's field belongs to all its tasks (``metadata={"shared": True}``: a run batch's data set)."""
    return bool(field.metadata.get("shared"))


def pick(batch: Any, rows: list[int]) -> Any:
    """The tasks ``rows`` of a batch (a dataclass such as ``TaskBatch``, or a tuple/list of tensors)."""
    index = torch.tensor(rows)
    if dataclasses.is_dataclass(batch):
        return type(batch)(**{f.name: getattr(batch, f.name) if shared(f) else select(getattr(batch, f.name), index)
                              for f in dataclasses.fields(batch)})
    return type(batch)(select(t, index) for t in batch)


def join(batches: list[Any]) -> Any:
    """One batch of the tasks of ``batches``, in order."""
    def cat(values: list[Any]) -> Any:
        if isinstance(values[0], torch.Tensor):
            return torch.cat(values)
        if isinstance(values[0], dict):
            return {key: cat([v[key] for v in values]) for key in values[0]}
        return sum(values, []) if isinstance(values[0], list) else values[0]

    first = batches[0]
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: getattr(first, f.name) if shared(f) else cat([getattr(b, f.name) for b in batches])
                              for f in dataclasses.fields(first)})
    return type(first)(cat(list(parts)) for parts in zip(*batches))


def size(batch: Any) -> int:
    return len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch.index)


def float_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in float_tensors(v)]
    return [value] if isinstance(value, torch.Tensor) and value.is_floating_point() else []


def first_tasks(loader: Any, count: int = 4) -> Any:
    batches = []
    for batch in loader:
        batches.append(batch)
        if sum(size(b) for b in batches) >= count:
            break
    return pick(join(batches), list(range(count)))


def evaluate(model: Learner, batch: Any) -> dict[str, torch.Tensor]:
    """``evaluate_tasks`` as validation calls it: ``eval()`` mode, gradients only if the learner needs them."""
    model.eval()
    with torch.enable_grad() if model.evaluation_needs_grad else torch.no_grad():
        return {name: value.detach() for name, value in model.evaluate_tasks(batch).items()}


def poison(batch: Any) -> None:
    """Fill a training batch's inputs with NaN, in place (the ``*_x`` fields, an environment batch's task
    parameters, or the first tensor)."""
    if isinstance(batch, EnvTaskBatch):
        inputs = float_tensors(batch.task)
    elif dataclasses.is_dataclass(batch):
        inputs = [getattr(batch, f.name) for f in dataclasses.fields(batch) if f.name.endswith("_x")]
    else:
        inputs = [batch[0]]
    for tensor in inputs:
        tensor.fill_(float("nan"))


class Poison(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        poison(batch)


# ---------------------------------------------------------------------- the contract
@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request, tmp_path_factory) -> tuple[str, Learner, pl.LightningDataModule, Path]:
    """A learner after 2 training steps, its data module (set up for fit and test) and its checkpoint."""
    name = request.param
    pl.seed_everything(0)
    model, data = CASES[name].model(), CASES[name].data()
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, data)
    path = tmp_path_factory.mktemp(name) / "model.ckpt"
    trainer.save_checkpoint(path)
    data.setup("test")
    return name, model, data, path


def test_hyper_parameters_and_predictions_survive_a_checkpoint(trained):
    name, model, data, path = trained
    loaded = type(model).load_from_checkpoint(path, weights_only=True)
    assert dict(loaded.hparams) == dict(model.hparams)
    batch = first_tasks(data.val_dataloader())
    ours, theirs = evaluate(model, batch), evaluate(loaded, batch)
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, msg=f"{name}: {key}")


def test_a_task_is_evaluated_whatever_the_rest_of_its_batch(trained):
    name, model, data, _ = trained
    batch, others = first_tasks(data.val_dataloader()), first_tasks(data.test_dataloader())
    in_batch = evaluate(model, batch)
    alone = evaluate(model, pick(batch, [2]))
    among_others = evaluate(model, join([pick(others, [0, 1]), pick(batch, [2]), pick(others, [3])]))
    for key, value in in_batch.items():
        torch.testing.assert_close(alone[key][0], value[2], rtol=1e-4, atol=1e-5, msg=f"{name}: {key} alone")
        torch.testing.assert_close(among_others[key][2], value[2], rtol=1e-4, atol=1e-5,
                                   msg=f"{name}: {key} among other tasks")


def test_evaluate_tasks_gives_one_value_per_task_and_the_selection_metric(trained):
    name, model, data, _ = trained
    metric, mode = model.resolve_selection(data)
    assert mode in ("min", "max")
    batch = first_tasks(data.val_dataloader())
    values = evaluate(model, batch)
    assert metric in values, (name, metric, sorted(values))
    for key, value in values.items():
        assert value.shape == (4,), (name, key, tuple(value.shape))
        assert torch.isfinite(value).all(), (name, key, value)


def test_predict_task_gives_probabilities_or_predict_is_refused_in_one_line(trained):
    name, model, data, _ = trained
    if not getattr(model, "needs_queries", True):  # a generator: predict writes generated images (tests/test_figr.py), no probabilities
        assert model.predict_task is None and isinstance(model.prediction_writer(), GeneratedPNG)
        return
    if model.prediction_writer() is None:
        with pytest.raises(ConfigurationError) as refusal:
            model.check_stage(data, "predict")
        assert "\n" not in str(refusal.value) and "predict" in str(refusal.value)
        return
    task = first_tasks(data.test_dataloader(), 1)
    support_x, support_y, query_x = task.support_x[0], task.support_y[0], task.query_x[0]
    if support_y.is_floating_point():
        with pytest.raises(ValueError, match="classif"):
            model.predict_task(support_x, support_y, query_x)
        return
    probabilities = model.predict_task(support_x, support_y, query_x)
    assert probabilities.shape == (len(query_x), int(support_y.max()) + 1)
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(len(query_x)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_non_finite_loss_stops_before_the_optimizer_step(name):
    pl.seed_everything(0)
    model, data = CASES[name].model(), CASES[name].data()
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, callbacks=[Poison()])
    with pytest.raises(FloatingPointError, match="not finite"):
        trainer.fit(model, data)
    for key, value in model.named_parameters():
        assert torch.equal(value, before[key]), f"{name}: {key} changed"
    assert trainer.global_step == 0 and model.optimizer_steps == [0] * len(model.optimizer_steps)


class BatchCounter(pl.Callback):
    batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_resuming_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(name, tmp_path):
    """Two epochs in one go, and the same two epochs resumed from the checkpoint ``ModelCheckpoint`` wrote after
    the third batch (mid-epoch for 2 batches per epoch): the same weights, buffers and optimizer steps, bit for bit.
    Every learner's own randomness (noise, rollouts, inner batches) must come from the batch or the checkpoint."""
    def run(folder: str, ckpt_path: Any = None) -> tuple[Learner, pl.Trainer]:
        pl.seed_everything(0)
        model, data = CASES[name].model(), CASES[name].data()
        saver = ModelCheckpoint(dirpath=tmp_path / folder, every_n_train_steps=1, save_top_k=-1, filename="{step}")
        trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[saver, counter], enable_checkpointing=True)
        torch.manual_seed(1234)  # a resumed run must take its random state from the checkpoint
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return model, trainer

    counter = BatchCounter()
    uninterrupted, trainer = run("a")
    batches, counter.batches = counter.batches, 0
    saved = sorted((tmp_path / "a").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    assert len(saved) == batches >= 4, [p.name for p in saved]
    resumed, resumed_trainer = run("b", saved[2])
    assert counter.batches == batches - 3  # it went on from the checkpoint, not from the start
    assert resumed_trainer.global_step == trainer.global_step
    assert resumed.optimizer_steps == uninterrupted.optimizer_steps
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), f"{name}: {key}"


# ---------------------------------------------------------------------- checkpoints from before the root class
def pre_change_data(name: str) -> pl.LightningDataModule:
    """The data module ``tests/data/make_pre_change_checkpoints.py`` trained the checkpoint ``name`` on."""
    spec = importlib.util.spec_from_file_location("make_pre_change_checkpoints", DATA / "make_pre_change_checkpoints.py")
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    return maker.sinusoids() if name == "maml" else maker.hanzi()


@pytest.mark.parametrize("name,cls", [("maml", MAML), ("protonet", PrototypicalNetwork)])
def test_a_checkpoint_from_before_the_root_class_loads_predicts_and_resumes(name, cls):
    path = DATA / f"pre_change_{name}.ckpt"
    expected = torch.load(DATA / f"pre_change_{name}.expected.pt", weights_only=True)
    model = cls.load_from_checkpoint(path, weights_only=True)
    model.eval()
    task = (expected["support_x"], expected["support_y"], expected["query_x"])
    if name == "maml":
        with torch.enable_grad():
            predictions = model.evaluate_task(*task, expected["query_y"])[0]
    else:
        predictions = model.predict_task(*task)
    torch.testing.assert_close(predictions.detach(), expected["predictions"], rtol=0, atol=1e-6)
    weights = {key: value.detach().clone() for key, value in model.named_parameters()}
    steps = expected["global_step"]
    trainer = quiet_trainer(max_steps=steps + 1, limit_val_batches=0)
    trainer.fit(model, pre_change_data(name), ckpt_path=path)
    assert trainer.global_step == steps + 1 and model.optimizer_steps == [steps + 1]
    assert model.batches_trained == steps + 1
    assert any(not torch.equal(value, weights[key]) for key, value in model.named_parameters())
