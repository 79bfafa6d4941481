"""Matching networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra 2016)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive


class MatchingSupport(NamedTuple):
    """What a matching network keeps of a support set: its (context) embeddings and labels."""

    features: Tensor  #: ``[N*K, D]``: ``g(x_i, S)`` (FCE) or the plain embeddings ``g'(x_i)``
    labels: Tensor  #: ``[N*K]``
    ways: int


class MatchingNetwork(MetricLearner):
    """Label a query by attention over the support set: ``P(y | x, S) = sum_i a(x, x_i) onehot(y_i)``.

    The attention is a softmax over the support examples of the cosine similarities between the
    query's embedding ``f(x)`` and each support embedding ``g(x_i)``, times ``temperature``:
    ``a(x, x_i) = softmax_i(temperature * cos(f(x), g(x_i)))``.  A query's class probabilities are
    the attention weights summed per class (a differentiable weighted nearest neighbour), and the
    logits returned by :meth:`classify` are their logarithms (computed as a log-sum-exp of each
    class's attention log-weights: exact, no clamping), so the cross-entropy of the logits is the
    paper's loss, ``-log P(y | x, S)``, and :meth:`probabilities` (a softmax of the logits) gives
    the attention probabilities back.

    The paper's softmax is over the plain cosine (``temperature=1``).  Cosines lie in [-1, 1] (in
    [0, 1] for the non-negative ReLU features of Conv4), so with one shot and five ways the best
    support example gets at most ``e / (e + 4) = 40%`` of the attention however good the
    embedding, the loss never saturates and training is slow: the default ``temperature=10``
    sharpens it (as cosine classifiers and ProtoNet's cosine variant do), and
    ``learn_temperature=True`` learns it (initialised at ``temperature``).  Set
    ``temperature: 1.0`` for the paper's kernel.

    Full context embeddings (``full_context_embeddings=True``, "FCE", the paper's appendix A):

    * support: a bidirectional LSTM reads the support set as a sequence,
      ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)`` (skip connection);
    * queries: an attention LSTM makes ``fce_steps`` (K) "reads" of ``g(S)``:
      ``h_hat_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})``, ``h_k = h_hat_k + f'(x)``,
      ``r_k = sum_i softmax_i(h_k . g(x_i, S)) g(x_i, S)``, starting from ``h_0 = f'(x)``,
      ``c_0 = 0``, and ``f(x, S) = h_K``.  Feeding ``[f'(x), r_{k-1}]`` as the cell's input with
      ``h_{k-1}`` as its state gives the gates the same linear function of ``(f'(x), h, r)`` as
      the paper's concatenated state ``[h, r]``.

    ``f'`` and ``g'`` are the one shared ``embedding``.  Without FCE the predictions do not depend on
    the order of the support set; with FCE they do, through the bidirectional LSTM (the paper
    accepts this; the episode samplers put the support set in class order, with classes in random
    order).  Queries are always classified independently of each other.  The LSTMs have
    ``feature_dim`` units, so ``feature_dim`` must equal the (flattened) embedding width, checked
    at the first forward pass.

    Args:
        embedding: the embedding network (see :class:`~lightning_meta.algorithms.metric.MetricLearner`);
            the paper's is ``Conv4(out_features=None, pooling="max", batch_norm_stats="running")``.
        full_context_embeddings: embed the support set and the queries in the context of the
            support set with the paper's LSTMs (see above).
        feature_dim: width of the flattened embeddings, required with ``full_context_embeddings``
            (64 for Conv4 with 64 channels on 28x28 images, 1600 on 84x84 images).
        fce_steps: number K of attention-LSTM reads of the support set for the query embeddings
            (the paper does not state the K it used).
        temperature: scale of the cosine similarities in the attention softmax (the paper's is 1).
        learn_temperature: learn the scale (as a log-parameter), starting from ``temperature``.
        Remaining arguments: see :class:`~lightning_meta.algorithms.metric.MetricLearner`.

    Reference:
        Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. "Matching Networks for One Shot
        Learning." NeurIPS 2016.

    Example::

        from lightning_meta import OmniglotDataModule
        from lightning_meta.algorithms.matching import MatchingNetwork
        from lightning_meta.models import Conv4

        embedding = Conv4(out_features=None, pooling="max", batch_norm_stats="running")
        model = MatchingNetwork(embedding, full_context_embeddings=True, feature_dim=64)
        data = OmniglotDataModule("data", split="vinyals", ways=5, shots=1, queries=15)
        pl.Trainer(max_epochs=10).fit(model, data)
    """

    def __init__(
        self,
        embedding: nn.Module,
        full_context_embeddings: bool = False,
        feature_dim: Optional[int] = None,
        fce_steps: int = 5,
        temperature: float = 10.0,
        learn_temperature: bool = False,
        embed_together: bool = False,
        **kwargs: Any,
    ):
        super().__init__(embedding, embed_together=embed_together, **kwargs)
        if not isinstance(full_context_embeddings, bool):
            raise ConfigurationError(
                f"{MODEL_ARGS}full_context_embeddings={full_context_embeddings!r} must be true or false")
        if not isinstance(learn_temperature, bool):
            raise ConfigurationError(f"{MODEL_ARGS}learn_temperature={learn_temperature!r} must be true or false")
        require_positive(MODEL_ARGS + "fce_steps", fce_steps)
        require_positive(MODEL_ARGS + "temperature", temperature, integer=False)
        if feature_dim is not None:
            require_positive(MODEL_ARGS + "feature_dim", feature_dim)
        if full_context_embeddings and feature_dim is None:
            raise ConfigurationError(
                f"{MODEL_ARGS}feature_dim is required with {MODEL_ARGS}full_context_embeddings=true (the LSTMs' width): set it "
                "to the embedding's output width, e.g. 64 for Conv4 with 64 channels and max pooling on 28x28 "
                "images, 1600 on 84x84 images")
        self.full_context_embeddings = full_context_embeddings
        self.feature_dim = feature_dim
        self.fce_steps = fce_steps
        self.learn_temperature = learn_temperature
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature, persistent=False)
        if full_context_embeddings:
            assert feature_dim is not None
            self.support_lstm = nn.LSTM(feature_dim, feature_dim, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(2 * feature_dim, feature_dim)

    @property
    def temperature(self) -> Tensor:
        """The current scale of the cosine similarities."""
        return self.log_temperature.exp()

    # ------------------------------------------------------------------ embeddings
    def embed(self, x: Tensor) -> Tensor:
        return self.flat_features(x, self.feature_dim)

    def context_support(self, support_features: Tensor) -> Tensor:
        """``g(x_i, S)``: the bidirectional LSTM over the support sequence plus the skip connection."""
        outputs, _ = self.support_lstm(support_features.unsqueeze(0))
        forward, backward = outputs[0].chunk(2, dim=-1)
        return forward + backward + support_features

    def context_queries(self, query_features: Tensor, support: Tensor) -> Tensor:
        """``f(x, S)``: ``fce_steps`` reads of the (context) support embeddings by the attention LSTM."""
        h = query_features
        c = torch.zeros_like(query_features)
        for _ in range(self.fce_steps):
            readout = (h @ support.T).softmax(-1) @ support
            h_hat, c = self.query_lstm(torch.cat([query_features, readout], -1), (h, c))
            h = h_hat + query_features
        return h

    # ------------------------------------------------------------------ the MetricLearner hooks
    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> MatchingSupport:
        features = support_features.flatten(1)
        if self.full_context_embeddings:
            features = self.context_support(features)
        return MatchingSupport(features, support_y, ways)

    def attention(self, state: MatchingSupport, query_features: Tensor) -> Tensor:
        """Attention log-weights ``[M, N*K]`` of each query over the support examples (log-softmax)."""
        query = query_features.flatten(1)
        if self.full_context_embeddings:
            query = self.context_queries(query, state.features)
        cosine = F.normalize(query, dim=1) @ F.normalize(state.features, dim=1).T
        return (self.temperature * cosine).log_softmax(-1)

    def classify(self, state: MatchingSupport, query_features: Tensor) -> Tensor:
        log_attention = self.attention(state, query_features)
        member = state.labels.unsqueeze(0) == torch.arange(state.ways, device=state.labels.device).unsqueeze(1)
        # log sum_{i in class c} a_i; a class without support examples gets the lowest finite logit
        lowest = torch.finfo(log_attention.dtype).min
        per_class = log_attention.unsqueeze(1).masked_fill(~member, lowest)  # [M, ways, N*K]
        return per_class.logsumexp(-1)
