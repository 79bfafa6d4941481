"""FIGR (Clouâtre & Demers 2019): few-shot image generation, a WGAN-GP meta-trained with Reptile over classes."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.data.episodes import episode_generator
from lightning_meta.data.sequences import episode_addresses
from lightning_meta.errors import DATA_ARGS, MODEL_ARGS, ConfigurationError, require_choice, require_positive
from lightning_meta.generation_metrics import METRICS, Judge, affine_jitter, generation_scores
from lightning_meta.inner_loop import Params, Update, inner_gradients, interpolation_loss, sub_params
from lightning_meta.inner_updates import InnerOptimizer, check_inner_optimizer, inner_optimizer_rule
from lightning_meta.models.backbone import build_module
from lightning_meta.tasks import TaskBatch

#: salt of the noise generators of evaluation and prediction (distinct from the episode sampler's)
NOISE_SEED = 20190122

PenaltyNorm = Literal["image", "channel"]
#: what a generated set is compared as: FIGR adapted, its generator before adaptation, jittered supports
SOURCES = ("adapted", "unadapted", "jitter")


def to_gan(images: Tensor) -> Tensor:
    """Images in ``[0, 1]`` (the data modules' scaling) to the GAN's ``[-1, 1]`` (the authors' ``normalize_data``)."""
    return images * 2 - 1


def from_gan(images: Tensor) -> Tensor:
    """The generator's ``tanh`` output in ``[-1, 1]`` back to ``[0, 1]``."""
    return (images + 1) / 2


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, epsilon: Tensor,
                     norm: PenaltyNorm = "image") -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017), ``mean((||grad_x critic(x_hat)|| - 1)^2)`` at
    ``x_hat = epsilon * real + (1 - epsilon) * fake`` (``epsilon [B]``, one per image pair).

    ``norm="image"``: the norm of each image's whole gradient (WGAN-GP's).  ``norm="channel"``: the norm over
    the channel axis only, then the mean over pixels, as FIGR's code computes it
    (``gradients.norm(2, dim=1)`` on ``[B, C, H, W]``): per pixel for greyscale images, i.e. each pixel's
    ``|gradient|`` is pushed towards 1.  Differentiable (``create_graph``), so the critic's inner step sees it.

    Example::

        penalty = gradient_penalty(lambda x: critic(x), real, fake.detach(), torch.rand(len(real)))
    """
    shape = (-1,) + (1,) * (real.dim() - 1)
    mix = (epsilon.view(shape) * real + (1 - epsilon.view(shape)) * fake).detach().requires_grad_(True)
    with torch.enable_grad():
        scores = critic(mix)
        grads, = torch.autograd.grad(scores.sum(), mix, create_graph=True)
    norms = grads.flatten(1).norm(dim=1) if norm == "image" else grads.norm(dim=1)
    return ((norms - 1) ** 2).mean()


class FIGR(MetaLearner):
    """FIGR: a WGAN-GP generator and critic meta-trained with Reptile, so that a few inner steps on 4 images of an
    unseen class make a generator of that class.

    A task is one class and its support images (the data module's episodes with ``queries: 0``; each class of
    an episode is a task, the paper's are 1-way 4-shot).  The inner loop starts from the meta-weights
    ``theta`` of both networks and takes ``inner_steps`` (10) steps, each one critic step then one generator
    step, with the engine's functional inner optimizers (``inner_optimizer``: SGD with ``inner_lr`` 1e-3, as
    the authors' code; :func:`~lightning_meta.inner_updates.inner_optimizer_rule`), on a fresh noise batch of
    the task's size (``z`` of ``generator.z_dim`` = 100).  Losses: critic ``D(fake) - D(real) + penalty *
    GP`` (WGAN-GP, per-image gradient norm, :func:`gradient_penalty`), generator ``-D(G(z))``.  (The authors'
    code writes the same Wasserstein losses with the opposite sign convention and averages the critic's over
    real and fake images together, i.e. half of ours; their penalty takes the norm over channels, see
    :func:`gradient_penalty`.)  The outer update treats ``theta - phi`` as the gradient of both networks and
    hands it to Lightning as Reptile's surrogate :func:`~lightning_meta.inner_loop.interpolation_loss` through
    ``manual_backward``: the default optimizer is Adam with ``outer_lr`` 1e-4 per network (the authors'),
    ``--optimizer`` replaces it, and clipping, accumulation and DDP apply as for any learner.

    Evaluation (``val``/``test``): episodes of ``test_ways`` classes x ``test_shots`` (4) supports x
    ``test_queries`` (16) real held-out images.  Each class is adapted on its supports alone
    (``test_inner_steps``), generates ``samples_per_class`` images from noise fixed per episode, and the judge
    (:mod:`lightning_meta.generation_metrics`: a frozen ProtoNet from ``judge_ckpt``, else raw pixels) scores
    ``class_fidelity``, ``kid``, ``diversity`` and ``support_distance``, averaged over the episode's classes
    (logged with a 95% CI over episodes).  Baselines in the same table: ``*_unadapted`` (the meta-learned
    generator, same noise, no adaptation) and ``*_jitter`` (support images with random affine jitter), and
    ``class_fidelity_real`` (the judge's accuracy on the real held-out images).  The best checkpoint is the
    one of the highest ``val/class_fidelity``.  At test, :func:`~lightning_meta.callbacks.generated_png.write_class_grids`
    draws a grid per class of the first episodes (support, generated, real) into the run folder and W&B.

    ``predict --data.init_args.support_dir S`` adapts to each class folder of ``S`` and writes
    ``prediction_samples`` generated PNGs per class (:class:`~lightning_meta.callbacks.generated_png.GeneratedPNG`).

    Images: the data module's scaling to ``[0, 1]`` (no mean/std standardisation), mapped to the generator's
    ``[-1, 1]``; the networks' ``in_channels`` and ``image_size`` must match the data (checked before training).

    Args:
        generator: e.g. :class:`~lightning_meta.models.figr_nets.DCGANGenerator` (takes ``z [B, z_dim]``).
        discriminator: the critic, e.g. :class:`~lightning_meta.models.figr_nets.DCGANDiscriminator` (``[B, 1]``).
        inner_lr, inner_steps, test_inner_steps: inner-loop rate and steps (1e-3, 10; test default: the same).
        inner_optimizer, inner_momentum, inner_betas, inner_eps: the inner rule (default SGD, as the paper).
        penalty: the gradient-penalty weight (10).
        penalty_norm: ``"image"`` (WGAN-GP) or ``"channel"`` (the authors' code).
        samples_per_class: generated images per class at evaluation (>= 2; 16, as the real ones).
        prediction_samples: generated images per class written by ``predict``.
        judge_ckpt: a metric learner's checkpoint (``configs/protonet_hanzi_5w1s.yaml``'s ``best.ckpt``) used as
            the frozen judge; ``None``: raw pixels.
        grid_classes: classes drawn at test (0: none).
        outer_lr: Adam's rate for both networks (1e-4).

    Reference:
        Clouâtre, Demers. "FIGR: Few-shot Image Generation with Reptile." arXiv:1901.02199, 2019.
        Code: https://github.com/LuEE-C/FIGR

    Example::

        from lightning_meta.algorithms.figr import FIGR
        from lightning_meta.models.figr_nets import DCGANDiscriminator, DCGANGenerator

        model = FIGR(DCGANGenerator(100, 1, 28, 32, 2), DCGANDiscriminator(1, 28, 32, 2), judge_ckpt=None)
        data = NpzDataModule("hanzi", ways=1, shots=4, queries=0, test_ways=5, test_shots=4, test_queries=16)
        pl.Trainer(max_steps=1000, inference_mode=False).fit(model, data)
    """

    needs_queries = False
    has_batching_choice = False
    evaluation_needs_grad = True
    selection_metric = "class_fidelity"
    selection_mode = "max"
    fractions = ("class_fidelity",)
    summary_names = tuple(f"{m}{s}" for m in METRICS for s in ("", "_unadapted", "_jitter")) + ("class_fidelity_real",)
    #: FIGR generates, it does not classify: the episode gallery and ``predict_folders`` skip it
    predict_task = None  # type: ignore[assignment]

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        inner_lr: float = 1e-3,
        inner_steps: int = 10,
        test_inner_steps: Optional[int] = None,
        inner_optimizer: InnerOptimizer = "sgd",
        inner_momentum: float = 0.9,
        inner_betas: tuple[float, float] = (0.9, 0.999),
        inner_eps: float = 1e-8,
        penalty: float = 10.0,
        penalty_norm: PenaltyNorm = "image",
        samples_per_class: int = 16,
        prediction_samples: int = 16,
        judge_ckpt: Optional[str] = None,
        grid_classes: int = 8,
        outer_lr: float = 1e-4,
        **kwargs: Any,
    ):
        super().__init__(outer_lr=outer_lr, **kwargs)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps)
        if test_inner_steps is not None:
            require_positive(MODEL_ARGS + "test_inner_steps", test_inner_steps, allow_zero=True)
        self.inner_betas = check_inner_optimizer(inner_optimizer, inner_momentum, inner_betas, inner_eps)
        require_positive(MODEL_ARGS + "penalty", penalty, allow_zero=True, integer=False)
        require_choice(MODEL_ARGS + "penalty_norm", penalty_norm, PenaltyNorm)
        require_positive(MODEL_ARGS + "prediction_samples", prediction_samples)
        require_positive(MODEL_ARGS + "grid_classes", grid_classes, allow_zero=True)
        if not isinstance(samples_per_class, int) or isinstance(samples_per_class, bool) or samples_per_class < 2:
            raise ConfigurationError(f"{MODEL_ARGS}samples_per_class={samples_per_class!r} is invalid: KID and "
                                     "diversity compare pairs of generated images; give at least 2 (e.g. 16)")
        self.generator = build_module(generator)
        self.discriminator = build_module(discriminator)
        self.z_dim = self._network_size("generator", "z_dim")
        for role in ("generator", "discriminator"):
            self._network_size(role, "in_channels")
            self._network_size(role, "image_size")
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.inner_optimizer, self.inner_momentum, self.inner_eps = inner_optimizer, float(inner_momentum), inner_eps
        self.penalty, self.penalty_norm = float(penalty), penalty_norm
        self.samples_per_class, self.prediction_samples = samples_per_class, prediction_samples
        self.grid_classes = grid_classes
        self.judge_ckpt = judge_ckpt
        if judge_ckpt is not None:
            from pathlib import Path

            if not Path(judge_ckpt).expanduser().is_file():
                Judge.from_checkpoint(judge_ckpt, MODEL_ARGS + "judge_ckpt")  # raises the one-line error
        self._judge: Optional[Judge] = None
        self.grid_samples: list[dict[str, Any]] = []

    def _network_size(self, role: str, name: str) -> int:
        value = getattr(getattr(self, role), name, None)
        if not isinstance(value, int):
            raise ConfigurationError(
                f"{MODEL_ARGS}{role}: {type(getattr(self, role)).__name__} has no integer attribute {name!r}; FIGR's"
                f" networks say their sizes (lightning_meta.models.figr_nets.DCGAN{role.capitalize()})")
        return value

    # ------------------------------------------------------------------ the judge
    @property
    def judge(self) -> Judge:
        """The frozen judge of the evaluation metrics (loaded on first use)."""
        if self._judge is None:
            self._judge = (Judge.pixels() if self.judge_ckpt is None
                           else Judge.from_checkpoint(self.judge_ckpt, MODEL_ARGS + "judge_ckpt"))
        return self._judge

    @judge.setter
    def judge(self, judge: Judge) -> None:
        self._judge = judge

    # ------------------------------------------------------------------ the networks, functionally
    def generate(self, params: Params, z: Tensor) -> Tensor:
        """Images in ``[-1, 1]`` from noise ``z`` with the generator weights ``params``."""
        return functional_call(self.generator, params, (z,))

    def critic(self, params: Params, images: Tensor) -> Tensor:
        """Critic scores ``[B]`` of images in ``[-1, 1]`` with the weights ``params``."""
        return functional_call(self.discriminator, params, (images,)).flatten()

    def inner_update(self) -> Update:
        """The inner rule of both networks (fresh state per task): :func:`~lightning_meta.inner_updates.inner_optimizer_rule`."""
        return inner_optimizer_rule(self.inner_optimizer, self.inner_lr, self.inner_momentum, self.inner_betas,
                                    self.inner_eps)

    def critic_loss(self, d_params: Params, real: Tensor, fake: Tensor, epsilon: Tensor) -> Tensor:
        """``mean D(fake) - mean D(real) + penalty * GP`` (``real``, ``fake`` in ``[-1, 1]``, ``fake`` constant)."""
        scores = self.critic(d_params, torch.cat([real, fake]))
        wasserstein = scores[len(real):].mean() - scores[:len(real)].mean()
        if self.penalty == 0:
            return wasserstein
        penalty = gradient_penalty(lambda x: self.critic(d_params, x), real, fake, epsilon, self.penalty_norm)
        return wasserstein + self.penalty * penalty

    def generator_loss(self, g_params: Params, d_params: Params, z: Tensor) -> Tensor:
        """``-mean D(G(z))``."""
        return -self.critic(d_params, self.generate(g_params, z)).mean()

    def adapt(self, g_params: Params, d_params: Params, real: Tensor, steps: int,
              generator: Optional[torch.Generator] = None) -> tuple[Params, Params, Tensor, Tensor]:
        """``steps`` inner steps on the images ``real`` (in ``[-1, 1]``), each a critic step then a generator step.

        Returns the adapted (detached) weights of both networks and the critic's and the generator's losses
        per step ``[steps]``.  Noise and interpolation weights come from ``generator`` (``None``: the global
        RNG).  Nothing of ``g_params``/``d_params`` is modified.
        """
        update_g, update_d = self.inner_update(), self.inner_update()
        state_g = state_d = None
        d_losses, g_losses = [], []
        count, device = len(real), real.device
        scale = self.inner_loss_scale
        for step in range(steps):
            z = torch.randn(count, self.z_dim, generator=generator).to(device, real.dtype)
            epsilon = torch.rand(count, generator=generator).to(device, real.dtype)
            with torch.no_grad():
                fake = self.generate(g_params, z)
            grads, d_loss = inner_gradients(lambda p: self.critic_loss(p, real, fake, epsilon) * scale, d_params,
                                            "none")
            grads = {k: g / scale for k, g in grads.items()} if scale != 1.0 else grads
            d_params, state_d = update_d(d_params, grads, d_loss / scale, state_d, step)
            d_params = {k: v.detach() for k, v in d_params.items()}
            z = torch.randn(count, self.z_dim, generator=generator).to(device, real.dtype)
            grads, g_loss = inner_gradients(lambda p: self.generator_loss(p, d_params, z) * scale, g_params, "none")
            grads = {k: g / scale for k, g in grads.items()} if scale != 1.0 else grads
            g_params, state_g = update_g(g_params, grads, g_loss / scale, state_g, step)
            g_params = {k: v.detach() for k, v in g_params.items()}
            d_losses.append(d_loss.detach() / scale)
            g_losses.append(g_loss.detach() / scale)
        empty = real.new_zeros(0)
        return (g_params, d_params, torch.stack(d_losses) if d_losses else empty,
                torch.stack(g_losses) if g_losses else empty)

    def meta_weights(self) -> tuple[Params, Params]:
        """The meta-learned weights of the generator and the critic, detached."""
        return ({k: p.detach() for k, p in self.generator.named_parameters()},
                {k: p.detach() for k, p in self.discriminator.named_parameters()})

    # ------------------------------------------------------------------ training
    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Two groups, one optimizer each (Adam 1e-4, as the authors'): ``generator`` and ``discriminator``."""
        return {"generator": list(self.generator.parameters()),
                "discriminator": list(self.discriminator.parameters())}

    def resolve_selection(self, datamodule: Any) -> tuple[str, str]:
        return self.selection_metric, self.selection_mode

    def class_tasks(self, batch: TaskBatch) -> list[tuple[Tensor, torch.Generator]]:
        """The support images of every class of every episode of ``batch`` (FIGR's tasks), each with the
        generator of its noise: one per episode, seeded by ``(episode, epoch)`` and drawn class after class, so a
        resumed run and every process count draw what one uninterrupted process draws."""
        tasks = []
        for task, address in zip(batch, episode_addresses(batch, self.global_step * batch.num_tasks)):
            generator = episode_generator(NOISE_SEED, "train", address, self.current_epoch)
            for c in range(batch.ways):
                tasks.append((task.support_x[task.support_y == c], generator))
        return tasks

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        """One Reptile step of both networks over the batch's classes: ``theta - mean(phi)`` through the surrogate."""
        theta = dict(self.named_parameters())
        tasks = self.class_tasks(batch)
        d_losses, g_losses = [], []
        for i, (images, generator) in enumerate(tasks):
            g_phi, d_phi, d_loss, g_loss = self.adapt(sub_params(theta, "generator"), sub_params(theta, "discriminator"),
                                                      to_gan(images), self.inner_steps, generator)
            phi = {**{f"generator.{k}": v for k, v in g_phi.items()},
                   **{f"discriminator.{k}": v for k, v in d_phi.items()}}
            self.backpropagate(interpolation_loss(theta, phi), scale=1 / len(tasks),
                               last=i == len(tasks) - 1)
            d_losses.append(d_loss)
            g_losses.append(g_loss)
        for group in ("generator", "discriminator"):
            self.outer_step(optimizer=group)
        d_losses, g_losses = torch.stack(d_losses), torch.stack(g_losses)
        self.log_values("train", {"loss": d_losses[:, -1].mean(), "d_loss": d_losses[:, -1].mean(),
                                  "g_loss": g_losses[:, -1].mean()}, units=len(tasks), prog_bar=("d_loss", "g_loss"))
        return d_losses[:, -1].mean()

    # ------------------------------------------------------------------ evaluation
    def class_samples(self, support_x: Tensor, support_y: Tensor, count: int, generator: torch.Generator,
                      steps: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Images ``[N, count, C, H, W]`` in ``[0, 1]`` generated for each class of a support set after adapting
        to it, and from the meta-weights (the same noise for both; the unadapted images are the same for every
        class)."""
        steps = self.test_inner_steps if steps is None else steps
        theta_g, theta_d = self.meta_weights()
        ways = int(support_y.max()) + 1
        z = torch.randn(count, self.z_dim, generator=generator).to(support_x.device, support_x.dtype)
        adapted = []
        for c in range(ways):
            g_phi, _, _, _ = self.adapt(theta_g, theta_d, to_gan(support_x[support_y == c]), steps, generator)
            with torch.no_grad():
                adapted.append(from_gan(self.generate(g_phi, z)))
        with torch.no_grad():
            unadapted = from_gan(self.generate(theta_g, z))
        return torch.stack(adapted), unadapted.unsqueeze(0).expand(ways, *unadapted.shape)

    def evaluate_classes(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                         generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-class judge metrics ``{name: [N]}`` of one episode (see the class docstring), and the images
        ``{"support", "adapted", "real"}`` (``[N, n, C, H, W]``)."""
        ways = int(support_y.max()) + 1
        adapted, unadapted = self.class_samples(support_x, support_y, self.samples_per_class, generator)
        support = torch.stack([support_x[support_y == c] for c in range(ways)])
        real = torch.stack([query_x[query_y == c] for c in range(ways)])
        jitter = torch.stack([affine_jitter(s, self.samples_per_class, generator) for s in support])
        judge = self.judge

        def embed(images: Tensor) -> Tensor:
            return judge(images.flatten(0, 1)).unflatten(0, images.shape[:2])

        support_e, real_e = embed(support), embed(real)
        values: dict[str, Tensor] = {}
        for source, images in zip(SOURCES, (adapted, unadapted, jitter)):
            suffix = "" if source == "adapted" else f"_{source}"
            for name, value in generation_scores(embed(images), real_e, support_e).items():
                values[name + suffix] = value
        prototypes = support_e.mean(1)
        nearest = torch.cdist(real_e.double(), prototypes.double().expand(ways, -1, -1)).argmin(-1)
        values["class_fidelity_real"] = (nearest == torch.arange(ways, device=nearest.device)[:, None]).double().mean(1)
        return values, {"support": support, "adapted": adapted, "real": real}

    def evaluate_tasks(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Per-episode means over its classes of :meth:`evaluate_classes`' values, noise seeded per episode."""
        split = "test" if self._testing() else "val"
        results: list[dict[str, Tensor]] = []
        for b, address in enumerate(episode_addresses(batch)):
            task = batch[b]
            generator = episode_generator(NOISE_SEED, split, address)
            values, images = self.evaluate_classes(*task, generator)
            results.append({k: v.mean() for k, v in values.items()})
            if split == "test" and len(self.grid_samples) < self.grid_classes and int(batch.index[b]) >= 0:
                for c in range(images["support"].shape[0]):
                    if len(self.grid_samples) < self.grid_classes:
                        self.grid_samples.append({"episode": address, "class": c,
                                                  **{k: v[c].detach().cpu() for k, v in images.items()}})
        return {name: torch.stack([r[name] for r in results]).float() for name in results[0]}

    def _testing(self) -> bool:
        trainer = self._trainer
        return bool(trainer is not None and trainer.testing)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.grid_samples = []

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        summary = super().log_results(stage)
        if summary and stage == "test":
            rank_zero_info(f"FIGR judge: {self.judge.name}; {self.test_inner_steps} inner steps per class, "
                           f"{self.samples_per_class} generated images per class")
            if self.grid_samples and self.trainer.is_global_zero:
                from lightning_meta.callbacks.generated_png import write_class_grids

                write_class_grids(self.trainer, self.grid_samples, stage)
        return summary

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: TaskBatch, batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
        """Generated images ``[B, N, prediction_samples, C, H, W]`` in ``[0, 1]`` for each class of each support set."""
        outputs = []
        for b, address in enumerate(episode_addresses(batch)):
            task = batch[b]
            generator = episode_generator(NOISE_SEED + 1, "test", address)  # its own salt: not a test episode's noise
            with torch.enable_grad():
                adapted, _ = self.class_samples(task.support_x, task.support_y, self.prediction_samples, generator)
            outputs.append(adapted)
        return torch.stack(outputs)

    def prediction_writer(self) -> Optional[Callback]:
        """PNG files, ``generated/<class>/<i>.png`` in the run folder (:class:`~lightning_meta.callbacks.generated_png.GeneratedPNG`)."""
        from lightning_meta.callbacks.generated_png import GeneratedPNG

        return GeneratedPNG()

    # ------------------------------------------------------------------ checks
    def check_data(self, datamodule: Any, split: str) -> None:
        """The images must fit both networks (channels and size) and lie in ``[0, 1]``; evaluation episodes need
        2 real images per class (KID, diversity)."""
        super().check_data(datamodule, split)
        ways, shots, queries = datamodule.setting(split)
        if split != "train" and queries < 2:
            raise ConfigurationError(
                f"{DATA_ARGS}test_queries={queries}: FIGR's judge compares generated images with each class's real"
                " held-out images (KID, diversity need at least 2); set test_queries to 16 (the issue's protocol)")
        task = datamodule.source(split).sample(torch.Generator().manual_seed(0), ways, shots, queries)
        self.check_images(task.support_x, f"the '{split}' images")

    def check_images(self, images: Tensor, source: str) -> None:
        """Refuse images the networks cannot take, naming the network's field."""
        shape = tuple(images.shape[1:])
        for role in ("generator", "discriminator"):
            network = getattr(self, role)
            expected = (network.in_channels, network.image_size, network.image_size)
            if shape != expected:
                field = f"{MODEL_ARGS}{role}.init_args."
                name = "in_channels" if shape[:1] != expected[:1] else "image_size"
                raise ConfigurationError(
                    f"{field}{name}: the {role} makes {expected[0]}x{expected[1]}x{expected[2]} images but {source} are"
                    f" {'x'.join(map(str, shape))}: set {field}in_channels={shape[0]} and {field}image_size={shape[-1]}"
                    " (square images)")
        if images.min() < 0 or images.max() > 1:
            raise ConfigurationError(
                f"{DATA_ARGS}: {source} lie in [{float(images.min()):.2f}, {float(images.max()):.2f}], FIGR takes images"
                " scaled to [0, 1] (the generator's tanh range is mapped onto it): drop the data module's mean/std"
                " standardisation")

    def check_prediction_data(self, datamodule: Any) -> None:
        prediction_set = getattr(datamodule, "prediction_set", None)
        if prediction_set is None:
            return
        task = prediction_set()
        self.check_images(task.support_x, f"the images of data.init_args.support_dir={datamodule.support_dir!r}")
